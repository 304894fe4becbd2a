//! OData v4 target: writes a batch of records to an entity set as SAP S/4HANA, Dynamics 365 /
//! Business Central and Dataverse accept them: one `$batch` request (multipart, see
//! [`super::odata_batch`]) of independent requests, `PATCH EntitySet(key)` per record for
//! `writeMode: Upsert` (OData's upsert: update the entity with that key, or create it) and
//! `POST EntitySet` for `Append`. `Prefer: odata.continue-on-error` asks the service to answer
//! every request even after one fails.
//!
//! Each part's status decides its record alone: 2xx delivered; 408, 429 and 5xx retried later
//! (NAK); any other 4xx refused (dead-lettered with the service's error message). A request
//! the service did not answer (it stopped at an error despite the preference) is retried.
//! Batches are cut at [`MAX_PER_BATCH`] requests, the smallest limit among those services
//! (Dataverse: 1000).
//!
//! Ordering (an older change must never overwrite a newer one, with any number of workers):
//! OData has no "apply only if newer" precondition, so the target keeps order with optimistic
//! concurrency, as ERP integrations do. When the flow's source cursor field is mapped into a
//! contract field (the field that holds the source version at the target), each batch first
//! reads that field of every key (one `$batch` of `GET Set(key)?$select=field`); a key the
//! target already holds at our version or newer is not written (it counts as delivered); the
//! others are written with `If-Match: <ETag read>`, or `If-None-Match: *` where there was no
//! record, so a write that raced with another worker's gets 412 and is retried: re-read,
//! compared, written or dropped. Within a batch only the newest version of a key is sent; the
//! older ones share its fate. A service that sends no ETags gets unconditional writes after
//! the read (the race window shrinks to the read-write gap), one that refuses the read (403,
//! an unknown property to select) unconditional writes; without a mapped cursor field
//! writes are unconditional. Every request also carries the record's source version in a
//! `Flowplane-Source-Version` header, which services ignore and the ERP simulator reports.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::odata::encode;
use super::odata_batch::{
    PartRequest, PartResponse, boundary_of, decode_responses, encode_requests,
};
use super::target::{BatchOutcome, Outgoing, RejectedRecord, RetriedRecord};
use crate::api::integration_flow::WriteMode;
use crate::worker::http::{CallError, HttpClient};
use crate::worker::version::version_of;

/// Most requests in one `$batch`.
pub const MAX_PER_BATCH: usize = 1000;
/// Header carrying a record's source version.
pub const SOURCE_VERSION_HEADER: &str = "Flowplane-Source-Version";

/// An OData entity set to write to.
pub struct ODataTarget {
    batch_url: String,
    entity: String,
    key: Vec<String>,
    write_mode: WriteMode,
    /// Field holding the source version, when writes are ordered by it.
    version_field: Option<String>,
}

impl ODataTarget {
    /// Writes `entity` below the service root `url`, by the contract's primary `key`.
    /// The entity may carry the service's path below the binding URL, as SAP's service
    /// paths do (`api_purchaserequisition_2/srvd_a2x/.../0001/PurchaseReqnItem`): the
    /// `$batch` goes to that service's root and names the entity set relative to it.
    pub fn new(url: &str, entity: &str, key: &[String], write_mode: WriteMode) -> ODataTarget {
        let entity = entity.trim_matches('/');
        let (service, set) = match entity.rsplit_once('/') {
            Some((service, set)) => (format!("/{service}"), set),
            None => (String::new(), entity),
        };
        ODataTarget {
            batch_url: format!("{}{service}/$batch", url.trim_end_matches('/')),
            entity: set.to_string(),
            key: key.to_vec(),
            write_mode,
            version_field: None,
        }
    }

    /// Orders writes by the source version the target stores in `field` (see the module
    /// doc); None writes unconditionally.
    pub fn order_by(&mut self, field: Option<String>) {
        self.version_field = field;
    }

    /// Sends the records (in `$batch` requests of at most [`MAX_PER_BATCH`]).
    pub async fn deliver(
        &self,
        http: &HttpClient,
        records: &[Outgoing<'_>],
    ) -> Result<BatchOutcome, CallError> {
        let mut outcome = BatchOutcome::default();
        // Newest version per key (the first of equal ones); the others are superseded by it.
        let mut newest: HashMap<String, usize> = HashMap::new();
        let mut predicates = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            match self.key_predicate(record.data) {
                Ok(predicate) => {
                    let slot = newest.entry(predicate.clone()).or_insert(index);
                    if records[*slot].version < record.version {
                        *slot = index;
                    }
                    predicates.push(Some(predicate));
                }
                Err(reason) => {
                    outcome.rejected.push(RejectedRecord { index, reason });
                    predicates.push(None);
                }
            }
        }
        let mut writes = Vec::with_capacity(newest.len());
        let mut superseded = Vec::new();
        for (index, predicate) in predicates.iter().enumerate() {
            let Some(predicate) = predicate else { continue };
            let winner = newest[predicate];
            if winner == index {
                writes.push((index, predicate.as_str(), Precondition::None));
            } else {
                superseded.push((index, winner));
            }
        }
        if let (Some(field), WriteMode::Upsert) = (&self.version_field, self.write_mode) {
            writes = self
                .read_current(http, field, writes, records, &mut outcome)
                .await?;
        }
        let requests: Vec<PartRequest> = writes
            .iter()
            .enumerate()
            .map(|(n, (index, predicate, precondition))| {
                self.request(n, predicate, &records[*index], precondition)
            })
            .collect();
        let answers = self.exchange(http, &requests).await?;
        for ((index, _, precondition), answer) in writes.iter().zip(answers) {
            match answer.map(|a| (a.status, a)) {
                Some((200..=299, _)) => {}
                Some((412, answer)) if *precondition != Precondition::None => {
                    outcome.retry.push(RetriedRecord {
                        index: *index,
                        reason: format!(
                            "written by someone else since it was read: {}",
                            error_message(&answer.body)
                        ),
                        after: None,
                    })
                }
                other => judge(*index, other.map(|(_, a)| a), "", &mut outcome),
            }
        }
        // A superseded record shares the fate of the version that replaced it.
        for (index, winner) in superseded {
            let version = records[winner].version;
            if let Some(r) = outcome.rejected.iter().find(|r| r.index == winner) {
                let reason = format!(
                    "superseded by version {version} of the same key, which was refused: {}",
                    r.reason
                );
                outcome.rejected.push(RejectedRecord { index, reason });
            } else if let Some(r) = outcome.retry.iter().find(|r| r.index == winner) {
                let retried = RetriedRecord {
                    index,
                    reason: r.reason.clone(),
                    after: r.after,
                };
                outcome.retry.push(retried);
            }
        }
        Ok(outcome)
    }

    /// Reads what the service holds for each key (one `$batch` of GETs): a record whose
    /// stored version is as new as ours or newer is not written (it counts as delivered);
    /// the others are written on the condition that nobody writes in between (`If-Match` the
    /// ETag read, `If-None-Match: *` where there was no record).
    async fn read_current<'p>(
        &self,
        http: &HttpClient,
        field: &str,
        writes: Vec<(usize, &'p str, Precondition)>,
        records: &[Outgoing<'_>],
        outcome: &mut BatchOutcome,
    ) -> Result<Vec<(usize, &'p str, Precondition)>, CallError> {
        let reads: Vec<PartRequest> = writes
            .iter()
            .enumerate()
            .map(|(n, (_, predicate, _))| PartRequest {
                content_id: Some((n + 1).to_string()),
                method: "GET".into(),
                url: format!("{}{predicate}?$select={}", self.entity, encode(field)),
                headers: vec![("Accept".into(), "application/json".into())],
                body: Vec::new(),
            })
            .collect();
        let answers = self.exchange(http, &reads).await?;
        let mut conditional = Vec::with_capacity(writes.len());
        for ((index, predicate, _), answer) in writes.into_iter().zip(answers) {
            match answer.as_ref().map(|a| a.status) {
                Some(404) => conditional.push((index, predicate, Precondition::IfNoneMatch)),
                Some(200..=299) => {
                    let answer = answer.as_ref().map(|a| (&a.body, a.header("etag")));
                    let Some((body, etag)) = answer else { continue };
                    let stored: Option<Value> = serde_json::from_slice(body).ok();
                    let stored_version = stored
                        .as_ref()
                        .and_then(|s| s.get(field))
                        .and_then(version_of);
                    if stored_version.is_some_and(|v| v >= records[index].version) {
                        tracing::debug!(
                            key = predicate,
                            "the target holds this version or a newer one; not written"
                        );
                        continue;
                    }
                    let etag = etag.map(str::to_string).or_else(|| {
                        stored
                            .as_ref()
                            .and_then(|s| s.get("@odata.etag"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    });
                    let precondition = etag.map_or(Precondition::None, Precondition::IfMatch);
                    conditional.push((index, predicate, precondition));
                }
                None | Some(408 | 429 | 500..=599) => {
                    judge(index, answer, "reading the stored record: ", outcome)
                }
                Some(status) => {
                    // The service will not say (no read permission, no such property to
                    // select): write as an unordered target would rather than refuse data.
                    tracing::debug!(
                        key = predicate,
                        status,
                        "reading the stored version refused; writing unconditionally"
                    );
                    conditional.push((index, predicate, Precondition::None));
                }
            }
        }
        Ok(conditional)
    }

    /// Sends `requests` in `$batch` calls of at most [`MAX_PER_BATCH`]; the answer to each
    /// request (None when the service did not answer it).
    async fn exchange(
        &self,
        http: &HttpClient,
        requests: &[PartRequest],
    ) -> Result<Vec<Option<PartResponse>>, CallError> {
        let mut out = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(MAX_PER_BATCH) {
            out.extend(self.exchange_one(http, chunk).await?);
        }
        Ok(out)
    }

    async fn exchange_one(
        &self,
        http: &HttpClient,
        requests: &[PartRequest],
    ) -> Result<Vec<Option<PartResponse>>, CallError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let boundary = format!("batch_flowplane_{:016x}", rand::random::<u64>());
        let body = Bytes::from(encode_requests(&boundary, requests));
        let content_type = format!("multipart/mixed; boundary={boundary}");
        let response = http
            .send(|client| {
                client
                    .post(&self.batch_url)
                    .header("content-type", &content_type)
                    .header("accept", "multipart/mixed")
                    .header("odata-version", "4.0")
                    .header("odata-maxversion", "4.0")
                    .header("prefer", "odata.continue-on-error")
                    .body(body.clone())
            })
            .await?;
        let answer_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response
            .bytes()
            .await
            .map_err(|e| CallError::Transient(format!("reading the $batch response: {e}")))?;
        if boundary_of(&answer_type).is_none() {
            return Err(CallError::Transient(format!(
                "the $batch response is {answer_type:?}, not multipart/mixed"
            )));
        }
        let mut answers: Vec<Option<PartResponse>> = decode_responses(&answer_type, &text)
            .map_err(|e| CallError::Transient(format!("the $batch response: {e}")))?
            .into_iter()
            .map(Some)
            .collect();
        // Match by Content-ID where the service echoes it, by position otherwise.
        let by_id: HashMap<String, usize> = answers
            .iter()
            .enumerate()
            .filter_map(|(n, a)| Some((a.as_ref()?.content_id.clone()?, n)))
            .collect();
        Ok(requests
            .iter()
            .enumerate()
            .map(|(position, request)| {
                let slot = match request.content_id.as_ref().and_then(|id| by_id.get(id)) {
                    Some(&n) => Some(n),
                    None if by_id.is_empty() => Some(position),
                    None => None,
                };
                slot.and_then(|n| answers.get_mut(n).and_then(Option::take))
            })
            .collect())
    }

    fn request(
        &self,
        n: usize,
        predicate: &str,
        record: &Outgoing<'_>,
        precondition: &Precondition,
    ) -> PartRequest {
        let (method, url) = match self.write_mode {
            WriteMode::Upsert => ("PATCH", format!("{}{predicate}", self.entity)),
            WriteMode::Append => ("POST", self.entity.clone()),
        };
        let mut headers = vec![
            ("Content-Type".into(), "application/json".into()),
            ("Accept".into(), "application/json".into()),
            (SOURCE_VERSION_HEADER.into(), record.version.to_string()),
        ];
        match precondition {
            Precondition::None => {}
            Precondition::IfMatch(etag) => headers.push(("If-Match".into(), etag.clone())),
            Precondition::IfNoneMatch => headers.push(("If-None-Match".into(), "*".into())),
        }
        PartRequest {
            content_id: Some((n + 1).to_string()),
            method: method.into(),
            url,
            headers,
            body: record.data.to_vec(),
        }
    }

    /// `('v')` for one key field, `(a='v',b=5)` for several; strings quoted with `'`
    /// doubled, numbers and booleans bare, everything percent-encoded.
    fn key_predicate(&self, data: &[u8]) -> Result<String, String> {
        let record: serde_json::Map<String, Value> = serde_json::from_slice(data)
            .map_err(|e| format!("the mapped record is not a JSON object: {e}"))?;
        let mut parts = Vec::with_capacity(self.key.len());
        for field in &self.key {
            let literal = match record.get(field) {
                Some(Value::String(s)) => format!("'{}'", encode(&s.replace('\'', "''"))),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => return Err(format!("key field {field:?} has no value")),
            };
            parts.push(if self.key.len() == 1 {
                literal
            } else {
                format!("{field}={literal}")
            });
        }
        Ok(format!("({})", parts.join(",")))
    }
}

/// The condition a write is sent on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Precondition {
    /// Unconditional (no version field, or the service sends no ETags).
    None,
    /// Only if the record still has this ETag.
    IfMatch(String),
    /// Only if there is still no record with the key.
    IfNoneMatch,
}

/// Files one answer under delivered (2xx), retry (none, 408, 429, 5xx) or refused (4xx).
fn judge(index: usize, answer: Option<PartResponse>, context: &str, outcome: &mut BatchOutcome) {
    let Some(answer) = answer else {
        outcome.retry.push(RetriedRecord {
            index,
            reason: format!("{context}the service did not answer this request of the $batch"),
            after: None,
        });
        return;
    };
    match answer.status {
        200..=299 => {}
        408 | 429 | 500..=599 => outcome.retry.push(RetriedRecord {
            index,
            reason: format!(
                "{context}HTTP {} {}",
                answer.status,
                error_message(&answer.body)
            ),
            after: answer
                .header("retry-after")
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        }),
        status => outcome.rejected.push(RejectedRecord {
            index,
            reason: format!("{context}HTTP {status}: {}", error_message(&answer.body)),
        }),
    }
}

/// The message of an OData error body (`{"error": {"message": ...}}`), or the body.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(|m| match m {
            Value::String(s) => Some(s.clone()),
            // OData v2 style: {"error": {"message": {"value": ...}}}
            other => other
                .get("value")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    message
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
        .chars()
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_predicates_quote_strings_and_name_composite_keys() {
        let one = ODataTarget::new(
            "http://erp/odata/",
            "/Set",
            &["id".into()],
            WriteMode::Upsert,
        );
        assert_eq!(one.batch_url, "http://erp/odata/$batch");
        let sap = ODataTarget::new(
            "https://erp/sap/opu/odata4/sap",
            "api_pr_2/srvd_a2x/sap/purchaserequisition/0001/PurchaseReqnItem",
            &["id".into()],
            WriteMode::Upsert,
        );
        assert_eq!(
            sap.batch_url,
            "https://erp/sap/opu/odata4/sap/api_pr_2/srvd_a2x/sap/purchaserequisition/0001/$batch"
        );
        assert_eq!(sap.entity, "PurchaseReqnItem");
        assert_eq!(
            one.key_predicate(br#"{"id":"O'Neil 1"}"#).unwrap(),
            "('O%27%27Neil%201')"
        );
        assert_eq!(one.key_predicate(br#"{"id":42}"#).unwrap(), "(42)");
        assert!(
            one.key_predicate(br#"{"other":1}"#)
                .unwrap_err()
                .contains("\"id\"")
        );
        let two = ODataTarget::new(
            "http://erp/odata",
            "Set",
            &["order".into(), "item".into()],
            WriteMode::Upsert,
        );
        assert_eq!(
            two.key_predicate(br#"{"item":10,"order":"1000001"}"#)
                .unwrap(),
            "(order='1000001',item=10)"
        );
        let request = two.request(
            0,
            "(order='1',item=10)",
            &Outgoing {
                version: 7,
                data: b"{}",
            },
            &Precondition::IfMatch("W/\"3\"".into()),
        );
        assert_eq!(request.header("if-match"), Some("W/\"3\""));
        assert_eq!(
            (request.method.as_str(), request.url.as_str()),
            ("PATCH", "Set(order='1',item=10)")
        );
        assert_eq!(request.header(SOURCE_VERSION_HEADER), Some("7"));
    }

    #[test]
    fn error_messages_come_from_odata_error_bodies() {
        assert_eq!(
            error_message(br#"{"error":{"code":"400","message":"Plant unknown"}}"#),
            "Plant unknown"
        );
        assert_eq!(
            error_message(br#"{"error":{"message":{"lang":"en","value":"v2 style"}}}"#),
            "v2 style"
        );
        assert_eq!(error_message(b"plain"), "plain");
    }
}
