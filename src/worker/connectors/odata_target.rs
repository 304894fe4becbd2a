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
//! Ordering: OData has no standard "apply only if newer" precondition (`If-Match` takes the
//! service's ETag, not our source version), so within a batch only the newest version of a
//! key is sent (the older ones are superseded and count as delivered), and every request
//! carries the record's source version in a `Flowplane-Source-Version` header that services
//! ignore and the ERP simulator honours. Across batches of several workers the last writer
//! wins at a real ERP; run one worker (scaling.maxReplicas 1) where that matters.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::odata::encode;
use super::odata_batch::{PartRequest, boundary_of, decode_responses, encode_requests};
use super::target::{BatchOutcome, Outgoing, RejectedRecord, RetriedRecord};
use crate::api::integration_flow::WriteMode;
use crate::worker::http::{CallError, HttpClient};

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
}

impl ODataTarget {
    /// Writes `entity` below the service root `url`, by the contract's primary `key`.
    pub fn new(url: &str, entity: &str, key: &[String], write_mode: WriteMode) -> ODataTarget {
        ODataTarget {
            batch_url: format!("{}/$batch", url.trim_end_matches('/')),
            entity: entity.trim_matches('/').to_string(),
            key: key.to_vec(),
            write_mode,
        }
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
        let mut requests = Vec::with_capacity(newest.len());
        let mut indexes = Vec::with_capacity(newest.len());
        let mut superseded = Vec::new();
        for (index, predicate) in predicates.iter().enumerate() {
            let Some(predicate) = predicate else { continue };
            let winner = newest[predicate];
            if winner == index {
                requests.push(self.request(requests.len(), predicate, &records[index]));
                indexes.push(index);
            } else {
                superseded.push((index, winner));
            }
        }
        for (chunk, chunk_indexes) in requests
            .chunks(MAX_PER_BATCH)
            .zip(indexes.chunks(MAX_PER_BATCH))
        {
            self.send(http, chunk, chunk_indexes, &mut outcome).await?;
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

    async fn send(
        &self,
        http: &HttpClient,
        requests: &[PartRequest],
        indexes: &[usize],
        outcome: &mut BatchOutcome,
    ) -> Result<(), CallError> {
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
        let answers = decode_responses(&answer_type, &text)
            .map_err(|e| CallError::Transient(format!("the $batch response: {e}")))?;
        // Match by Content-ID where the service echoes it, by position otherwise.
        let by_id: HashMap<&str, usize> = answers
            .iter()
            .enumerate()
            .filter_map(|(n, a)| a.content_id.as_deref().map(|id| (id, n)))
            .collect();
        for (position, (request, &index)) in requests.iter().zip(indexes).enumerate() {
            let answer = match request.content_id.as_deref().and_then(|id| by_id.get(id)) {
                Some(&n) => answers.get(n),
                None if by_id.is_empty() => answers.get(position),
                None => None,
            };
            let Some(answer) = answer else {
                outcome.retry.push(RetriedRecord {
                    index,
                    reason: "the service did not answer this request of the $batch".into(),
                    after: None,
                });
                continue;
            };
            match answer.status {
                200..=299 => {}
                408 | 429 | 500..=599 => outcome.retry.push(RetriedRecord {
                    index,
                    reason: format!("HTTP {} {}", answer.status, error_message(&answer.body)),
                    after: answer
                        .header("retry-after")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs),
                }),
                status => outcome.rejected.push(RejectedRecord {
                    index,
                    reason: format!("HTTP {status}: {}", error_message(&answer.body)),
                }),
            }
        }
        Ok(())
    }

    fn request(&self, n: usize, predicate: &str, record: &Outgoing<'_>) -> PartRequest {
        let (method, url) = match self.write_mode {
            WriteMode::Upsert => ("PATCH", format!("{}{predicate}", self.entity)),
            WriteMode::Append => ("POST", self.entity.clone()),
        };
        PartRequest {
            content_id: Some((n + 1).to_string()),
            method: method.into(),
            url,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Accept".into(), "application/json".into()),
                (SOURCE_VERSION_HEADER.into(), record.version.to_string()),
            ],
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
        );
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
