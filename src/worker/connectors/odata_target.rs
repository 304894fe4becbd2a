//! OData v4 target: writes a batch of records to an entity set as SAP S/4HANA (and SAP CAP),
//! Dynamics 365 / Business Central and Dataverse accept them: one `$batch` request
//! (multipart, see [`super::odata_batch`]) of independent requests, `PATCH EntitySet(key)` per
//! record to update it for `writeMode: Upsert` and `POST EntitySet` to create one (a new key
//! under Upsert, every record under `Append`). `Prefer: odata.continue-on-error` asks the
//! service to answer every request even after one fails.
//!
//! Each part's status decides its record alone: 2xx delivered; 408, 429 and 5xx retried later
//! (NAK); any other 4xx refused (dead-lettered with the service's error message), except the
//! answers that say how to write instead, which are acted on within the same delivery (at
//! most [`ROUNDS`] rounds, then retried later):
//! - 404 to a PATCH: there is no entity with that key. PATCH-upsert is optional (OData 4.01
//!   Part 1 section 11.4.4) and SAP CAP and RAP services do not do it, so the record is
//!   created with `POST EntitySet` (section 11.4.2);
//! - 409 to that POST: another writer created the key in between (a lost race), so it is
//!   read and written as an update. Services also answer that with other 4xx (SAP CAP: 400
//!   `ENTITY_ALREADY_EXISTS` on HANA; on sqlite even a 500, which is retried later): after a
//!   4xx to a create the key is read again, and only if there still is no record does the
//!   refusal stand;
//! - 428 Precondition Required: the service declares optimistic concurrency (Part 1 sections
//!   8.2.4 and 11.4.1.1) and takes updates only with `If-Match`, so the record's ETag is read
//!   and the write repeated with it; from then on this target reads before it writes.
//!
//! A request the service did not answer (it stopped at an error despite the preference) is
//! retried. Batches are cut at [`MAX_PER_BATCH`] requests, the smallest limit among those
//! services (Dataverse: 1000).
//!
//! CSRF: SAP services (Gateway, RAP, an approuter in front of CAP) refuse modifying requests,
//! `$batch` included, without a token fetched beforehand. Before its first `$batch` the target
//! sends `GET <service root>` with `X-CSRF-Token: Fetch` and then sends the token it got, with
//! the session cookies the token is bound to, on every `$batch`; a 403 with `X-CSRF-Token:
//! Required` (the token expired with its session) fetches a new one and sends the batch again,
//! once. A service that hands out no token gets none. Tokens and cookies are never logged.
//!
//! Ordering (an older change must never overwrite a newer one, with any number of workers):
//! OData has no "apply only if newer" precondition, so the target keeps order with optimistic
//! concurrency, as ERP integrations do. When the flow's source cursor field is mapped into a
//! contract field (the field that holds the source version at the target), each batch first
//! reads that field of every key (one `$batch` of `GET Set(key)?$select=field`); a key the
//! target already holds at our version or newer is not written (it counts as delivered); the
//! others are written with `If-Match: <ETag read>`, or created with POST where there was no
//! record, so a write that raced with another worker's gets 412 (or 409) and is retried:
//! re-read, compared, written or dropped. Within a batch only the newest version of a key is
//! sent; the older ones share its fate. A service that sends no ETags gets unconditional
//! writes after the read (the race window shrinks to the read-write gap), one that refuses
//! the read (403, an unknown property to select) unconditional writes; without a mapped
//! cursor field writes are unconditional until the service asks for preconditions (428).
//! Every request also carries the record's source version in a `Flowplane-Source-Version`
//! header, which services ignore and the ERP simulator reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::Response;
use serde_json::Value;
use tokio::sync::Mutex;

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
/// Most write rounds one delivery makes for a record (update, 428 -> read and update, 404 ->
/// create, 409 -> read and update); what is left is retried later.
pub const ROUNDS: usize = 4;
/// SAP's CSRF header.
const CSRF_HEADER: &str = "x-csrf-token";

/// An OData entity set to write to.
pub struct ODataTarget {
    service_root: String,
    batch_url: String,
    entity: String,
    key: Vec<String>,
    write_mode: WriteMode,
    /// Field holding the source version, when writes are ordered by it.
    version_field: Option<String>,
    /// The service answered 428: every update needs `If-Match`, so read before writing.
    preconditions_required: AtomicBool,
    /// The CSRF token and its session, once fetched.
    csrf: Mutex<Option<Csrf>>,
}

/// What the service handed out for CSRF protection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Csrf {
    /// The token (None: the service uses none).
    token: Option<String>,
    /// The session cookies the token is bound to (`name=value; ...`).
    cookies: Option<String>,
}

/// How a record is written in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Write {
    /// `PATCH Set(key)`, with `If-Match` when an ETag is known.
    Update(Option<String>),
    /// `POST Set`: create (a new key, or `Append`).
    Create,
}

/// What a record needs in the next round.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Update without a precondition.
    Update,
    /// Read the stored record (version, ETag), then update, create or skip. With a reason:
    /// the service refused to create it, and if there still is no record, that stands.
    Read(Option<String>),
    /// Create.
    Create,
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
        let service_root = format!("{}{service}/", url.trim_end_matches('/'));
        ODataTarget {
            batch_url: format!("{service_root}$batch"),
            service_root,
            entity: set.to_string(),
            key: key.to_vec(),
            write_mode,
            version_field: None,
            preconditions_required: AtomicBool::new(false),
            csrf: Mutex::new(None),
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
        let first = match self.write_mode {
            WriteMode::Append => Step::Create,
            WriteMode::Upsert
                if self.version_field.is_some()
                    || self.preconditions_required.load(Ordering::Relaxed) =>
            {
                Step::Read(None)
            }
            WriteMode::Upsert => Step::Update,
        };
        let mut pending: Vec<(usize, &str, Step)> = Vec::with_capacity(newest.len());
        let mut superseded = Vec::new();
        for (index, predicate) in predicates.iter().enumerate() {
            let Some(predicate) = predicate else { continue };
            let winner = newest[predicate];
            if winner == index {
                pending.push((index, predicate.as_str(), first.clone()));
            } else {
                superseded.push((index, winner));
            }
        }
        for round in 1..=ROUNDS {
            if pending.is_empty() {
                break;
            }
            let mut writes = Vec::with_capacity(pending.len());
            let mut reads = Vec::new();
            for (index, predicate, step) in pending.drain(..) {
                match step {
                    Step::Update => writes.push((index, predicate, Write::Update(None))),
                    Step::Create => writes.push((index, predicate, Write::Create)),
                    Step::Read(refused) => reads.push((index, predicate, refused)),
                }
            }
            if !reads.is_empty() {
                writes.extend(
                    self.read_current(http, reads, records, &mut outcome)
                        .await?,
                );
            }
            let requests: Vec<PartRequest> = writes
                .iter()
                .enumerate()
                .map(|(n, (index, predicate, write))| {
                    self.request(n, predicate, &records[*index], write)
                })
                .collect();
            let answers = self.exchange(http, &requests).await?;
            for ((index, predicate, write), answer) in writes.into_iter().zip(answers) {
                let next = match (answer.as_ref().map(|a| a.status), &write) {
                    (Some(200..=299), _) => continue,
                    // No entity with this key, and no PATCH-upsert (optional, 11.4.4):
                    // create it (11.4.2).
                    (Some(404), Write::Update(_)) if self.write_mode == WriteMode::Upsert => {
                        Step::Create
                    }
                    // Created by someone else since we read: a lost race; update it.
                    (Some(409), Write::Create) if self.write_mode == WriteMode::Upsert => {
                        Step::Read(None)
                    }
                    // Services answer a create of an existing key with other 4xx too (CAP on
                    // HANA: 400 ENTITY_ALREADY_EXISTS): read again to tell a lost race from a
                    // refusal of the record.
                    (Some(status @ 400..=499), Write::Create)
                        if self.write_mode == WriteMode::Upsert && !matches!(status, 408 | 429) =>
                    {
                        let body = answer.as_ref().map(|a| error_message(&a.body));
                        Step::Read(Some(format!("HTTP {status}: {}", body.unwrap_or_default())))
                    }
                    // Optimistic concurrency declared (8.2.4, 11.4.1.1): If-Match required.
                    (Some(428), Write::Update(None)) => {
                        if !self.preconditions_required.swap(true, Ordering::Relaxed) {
                            tracing::info!(
                                entity = %self.entity,
                                "the service requires If-Match on updates; reading ETags before writing"
                            );
                        }
                        Step::Read(None)
                    }
                    (Some(412), Write::Update(Some(_))) => {
                        let reason = format!(
                            "written by someone else since it was read: {}",
                            answer
                                .as_ref()
                                .map(|a| error_message(&a.body))
                                .unwrap_or_default()
                        );
                        outcome.retry.push(RetriedRecord {
                            index,
                            reason,
                            after: None,
                        });
                        continue;
                    }
                    _ => {
                        judge(index, answer, "", &mut outcome);
                        continue;
                    }
                };
                if round == ROUNDS {
                    if let Step::Read(Some(reason)) = next {
                        outcome.rejected.push(RejectedRecord { index, reason });
                        continue;
                    }
                    let status = answer.map_or(0, |a| a.status);
                    outcome.retry.push(RetriedRecord {
                        index,
                        reason: format!(
                            "HTTP {status} after {ROUNDS} rounds of writes in one delivery"
                        ),
                        after: None,
                    });
                } else {
                    pending.push((index, predicate, next));
                }
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
    /// the others are updated on the condition that nobody writes in between (`If-Match` the
    /// ETag read), or created where there was no record.
    async fn read_current<'p>(
        &self,
        http: &HttpClient,
        keys: Vec<(usize, &'p str, Option<String>)>,
        records: &[Outgoing<'_>],
        outcome: &mut BatchOutcome,
    ) -> Result<Vec<(usize, &'p str, Write)>, CallError> {
        // The version field, or (to learn the ETag only) the key.
        let select = match &self.version_field {
            Some(field) => encode(field),
            None => encode(&self.key.join(",")),
        };
        let reads: Vec<PartRequest> = keys
            .iter()
            .enumerate()
            .map(|(n, (_, predicate, _))| PartRequest {
                content_id: Some((n + 1).to_string()),
                method: "GET".into(),
                url: format!("{}{predicate}?$select={select}", self.entity),
                headers: vec![("Accept".into(), "application/json".into())],
                body: Vec::new(),
            })
            .collect();
        let answers = self.exchange(http, &reads).await?;
        let mut writes = Vec::with_capacity(keys.len());
        for ((index, predicate, refused), answer) in keys.into_iter().zip(answers) {
            match answer.as_ref().map(|a| a.status) {
                // Still no record after the service refused to create it: the refusal stands.
                Some(404) if let Some(reason) = refused => {
                    outcome.rejected.push(RejectedRecord { index, reason })
                }
                Some(404) => writes.push((index, predicate, Write::Create)),
                Some(200..=299) => {
                    let answer = answer.as_ref().map(|a| (&a.body, a.header("etag")));
                    let Some((body, etag)) = answer else { continue };
                    let stored: Option<Value> = serde_json::from_slice(body).ok();
                    let stored_version = self
                        .version_field
                        .as_deref()
                        .and_then(|field| stored.as_ref()?.get(field))
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
                    writes.push((index, predicate, Write::Update(etag)));
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
                    writes.push((index, predicate, Write::Update(None)));
                }
            }
        }
        Ok(writes)
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

    /// The CSRF token and cookies to send: fetched on first use, and again when `stale` (the
    /// ones a request was just refused with) are still the current ones.
    async fn csrf(&self, http: &HttpClient, stale: Option<&Csrf>) -> Result<Csrf, CallError> {
        let mut current = self.csrf.lock().await;
        if let Some(csrf) = current.as_ref()
            && stale != Some(csrf)
        {
            return Ok(csrf.clone());
        }
        let response = http
            .send_keeping(
                |client| {
                    client
                        .get(&self.service_root)
                        .header(CSRF_HEADER, "Fetch")
                        .header("accept", "application/json")
                        .header("odata-version", "4.0")
                },
                // A service root we may not read: there is no token to have then.
                |_| true,
            )
            .await?;
        let token = response
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| {
                response.status().is_success()
                    && !t.eq_ignore_ascii_case("required")
                    && !t.eq_ignore_ascii_case("unsafe")
            })
            .map(str::to_string);
        let cookies: Vec<&str> = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next())
            .map(str::trim)
            .filter(|c| c.contains('='))
            .collect();
        let csrf = Csrf {
            cookies: (token.is_some() && !cookies.is_empty()).then(|| cookies.join("; ")),
            token,
        };
        tracing::debug!(
            url = %self.service_root,
            token = csrf.token.is_some(),
            "fetched the service's CSRF token"
        );
        *current = Some(csrf.clone());
        Ok(csrf)
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
        let mut csrf = self.csrf(http, None).await?;
        let mut refreshed = false;
        let response = loop {
            let response = http
                .send_keeping(
                    |client| {
                        let mut request = client
                            .post(&self.batch_url)
                            .header("content-type", &content_type)
                            .header("accept", "multipart/mixed")
                            .header("odata-version", "4.0")
                            .header("odata-maxversion", "4.0")
                            .header("prefer", "odata.continue-on-error")
                            .body(body.clone());
                        if let Some(token) = &csrf.token {
                            request = request.header(CSRF_HEADER, token);
                        }
                        if let Some(cookies) = &csrf.cookies {
                            request = request.header(reqwest::header::COOKIE, cookies);
                        }
                        request
                    },
                    csrf_required,
                )
                .await?;
            if !csrf_required(&response) {
                break response;
            }
            if refreshed {
                return Err(CallError::Permanent {
                    status: 403,
                    body: "the service refuses the CSRF token it has just handed out".into(),
                });
            }
            // The token expired with its session: fetch a new one, send once more.
            tracing::info!(url = %self.batch_url, "CSRF token refused; fetching a new one");
            csrf = self.csrf(http, Some(&csrf)).await?;
            refreshed = true;
        };
        let answer_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = http.read_body(response).await?;
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
        write: &Write,
    ) -> PartRequest {
        let (method, url) = match write {
            Write::Update(_) => ("PATCH", format!("{}{predicate}", self.entity)),
            Write::Create => ("POST", self.entity.clone()),
        };
        let mut headers = vec![
            ("Content-Type".into(), "application/json".into()),
            ("Accept".into(), "application/json".into()),
            (SOURCE_VERSION_HEADER.into(), record.version.to_string()),
        ];
        if let Write::Update(Some(etag)) = write {
            headers.push(("If-Match".into(), etag.clone()));
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

/// A 403 that asks for a (new) CSRF token: SAP's `X-CSRF-Token: Required`.
fn csrf_required(response: &Response) -> bool {
    response.status() == reqwest::StatusCode::FORBIDDEN
        && response
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("required"))
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
        // The CSRF token is fetched from the service root, not from the binding URL.
        assert_eq!(
            sap.service_root,
            "https://erp/sap/opu/odata4/sap/api_pr_2/srvd_a2x/sap/purchaserequisition/0001/"
        );
        assert_eq!(one.service_root, "http://erp/odata/");
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
                key: "1/10",
                version: 7,
                data: b"{}",
            },
            &Write::Update(Some("W/\"3\"".into())),
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
