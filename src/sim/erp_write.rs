//! The writable side of `flowplane sim erp`: OData v4 `$batch` (multipart) with upserts by key
//! (`PATCH Set(key)`) and creates (`POST Set`: under the key in the body where the set's key
//! properties are declared, 409 when it exists), as the flow's OData target sends them, e.g.
//! forecasts written back as planned independent requirements ([`PLANNED_INDEPENDENT_REQUIREMENTS`]).
//! Every entity set but the three seeded, read-only ones takes writes.
//!
//! Like a real service it answers each request of a batch on its own, stops at the first
//! failure unless the batch says `Prefer: odata.continue-on-error`, serves `GET Set(key)` with
//! an ETag, and honours `If-Match` / `If-None-Match: *` (412 when they do not hold). Like a
//! real service the last writer wins; for tests it records the `Flowplane-Source-Version`
//! header the worker sends and counts a write of the stored version as a duplicate and a
//! write older than the stored one as stale (an ordering violation, applied all the same).
//! It also refuses
//! records by a switchable rule (`/admin/write-rule`: a field and the values the ERP does not
//! know, answered 400 with an OData error), fails single requests inside a batch
//! (`/admin/part-faults`, same shape as `/admin/faults`, which fails whole `$batch` calls), and
//! reports exactly what it received per key at `GET /admin/received/{set}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::batch::{BatchRequest, BatchResponse, parse_requests, write_responses};
use super::erp::{ErpState, INVENTORY, RETURNS, SALES_ORDER_LINES};
use super::faults::{FaultSpec, Faults, lock};
use super::forecast::{EntityReport, KeyReport};

/// The header in which flowplane's OData target sends each record's source version.
const SOURCE_VERSION_HEADER: &str = "Flowplane-Source-Version";

/// A writable entity set: planned independent requirements (the forecast, as the ERP's MRP
/// reads it).
pub const PLANNED_INDEPENDENT_REQUIREMENTS: &str = "A_PlndIndepRqmtItem";

/// The replenishment entity set: purchase requisition items proposed by the forecasting
/// platform, keyed by `proposalId` (the example flow `forecast-deltas-to-erp-replenishment`
/// writes them; a real S/4HANA numbers requisitions itself, the simulator keeps the proposal's
/// id so every proposal is traceable to one item).
pub const REPLENISHMENT_PROPOSALS: &str = "PurchaseReqnItem";

/// Records the ERP refuses: those whose `field` holds one of `values`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WriteRule {
    /// Field checked.
    pub field: String,
    /// Values refused.
    pub values: Vec<String>,
}

/// A create armed by [`ErpState::create_after_next_read`]: entity set, key, record.
type ArmedCreate = (String, String, Map<String, Value>);

/// What the simulator received and how it misbehaves on writes.
#[derive(Default)]
pub struct Writes {
    received: Mutex<BTreeMap<String, EntityReport>>,
    rule: Mutex<Option<WriteRule>>,
    /// Failures of single requests inside a batch.
    pub part_faults: Faults,
    batches: AtomicU64,
    largest: AtomicU64,
    serial: AtomicU64,
    /// Key properties of writable sets, as a service's $metadata declares them.
    keys: Mutex<BTreeMap<String, Vec<String>>>,
    /// Creates by "someone else", each right after the next read of its key finds nothing.
    creates: Mutex<Vec<ArmedCreate>>,
    /// `$batch` calls still to be answered with a multipart bomb (nothing written).
    bombs: AtomicU64,
    /// Answers sent as bombs.
    bombs_sent: AtomicU64,
}

impl ErpState {
    /// Everything written to `set` so far.
    pub fn received(&self, set: &str) -> EntityReport {
        lock(&self.writes.received)
            .get(set)
            .cloned()
            .unwrap_or_default()
    }

    /// `$batch` requests that reached the handler (not failed by `/admin/faults`).
    pub fn batches(&self) -> u64 {
        self.writes.batches.load(Ordering::Relaxed)
    }

    /// Answers the next `calls` `$batch` calls with a 200 whose body is multiparts nested
    /// `depth` deep (about 40 bytes a level), writing nothing: a hostile or broken service.
    pub fn answer_batches_with_bombs(&self, calls: u64) {
        self.writes.bombs.store(calls, Ordering::Relaxed);
    }

    /// `$batch` calls answered with a bomb so far.
    pub fn bombs_sent(&self) -> u64 {
        self.writes.bombs_sent.load(Ordering::Relaxed)
    }

    /// Failures of single requests inside a batch (`/admin/faults` fails whole batches).
    pub fn part_faults(&self) -> &Faults {
        &self.writes.part_faults
    }

    /// Most requests one `$batch` carried.
    pub fn largest_batch(&self) -> u64 {
        self.writes.largest.load(Ordering::Relaxed)
    }

    /// Sets (or with None clears) the rule of records the ERP refuses.
    pub fn refuse(&self, rule: Option<WriteRule>) {
        *lock(&self.writes.rule) = rule;
    }

    /// Declares the key properties of writable entity set `set`: a `POST Set` then creates
    /// the entity under the key its body carries (409 when that key exists), as a real
    /// service does; without a declaration a POST appends under a serial number.
    pub fn declare_keys(&self, set: &str, fields: &[&str]) {
        lock(&self.writes.keys).insert(
            set.to_string(),
            fields.iter().map(|f| f.to_string()).collect(),
        );
    }

    /// Arms a lost race: the next `GET Set(key)` of `key` (values joined by `/`) that finds
    /// nothing answers 404 and then someone else creates `record` under that key, so whoever
    /// read creates a key that is taken by then (409).
    pub fn create_after_next_read(&self, set: &str, key: &str, record: Map<String, Value>) {
        lock(&self.writes.creates).push((set.to_string(), key.to_string(), record));
    }

    /// Carries out one request of a batch.
    async fn write(&self, request: &BatchRequest) -> BatchResponse {
        let answer = |status: u16, body: Vec<u8>| BatchResponse {
            content_id: request.content_id.clone(),
            status,
            headers: if body.is_empty() {
                vec![("OData-Version".into(), "4.0".into())]
            } else {
                vec![
                    ("OData-Version".into(), "4.0".into()),
                    ("Content-Type".into(), "application/json".into()),
                ]
            },
            body,
        };
        let error = |status: u16, message: &str| {
            answer(
                status,
                serde_json::to_vec(
                    &json!({"error": {"code": status.to_string(), "message": message}}),
                )
                .unwrap_or_default(),
            )
        };
        if let Some(failure) = self.writes.part_faults.intercept().await {
            let mut response = error(failure.status().as_u16(), "simulated failure");
            if let Some(after) = failure.headers().get("retry-after")
                && let Ok(after) = after.to_str()
            {
                response
                    .headers
                    .push(("Retry-After".into(), after.to_string()));
            }
            return response;
        }
        let path = request.url.split('?').next().unwrap_or_default();
        let (set, predicate) = match path.split_once('(') {
            Some((set, rest)) => match rest.strip_suffix(')') {
                Some(predicate) => (set, Some(predicate)),
                None => return error(400, &format!("malformed resource path {:?}", request.url)),
            },
            None => (path, None),
        };
        let set = set.trim_start_matches('/');
        if [SALES_ORDER_LINES, INVENTORY, RETURNS].contains(&set) {
            return error(405, &format!("entity set {set} is read-only"));
        }
        if let ("GET", Some(predicate)) = (request.method.as_str(), predicate) {
            let key = match parse_key(predicate, &Map::new()) {
                Ok(key) => key,
                Err(message) => return error(400, &message),
            };
            let mut received = lock(&self.writes.received);
            let Some(stored) = received.get(set).and_then(|r| r.keys.get(&key)) else {
                let mut creates = lock(&self.writes.creates);
                if let Some(at) = creates.iter().position(|(s, k, _)| s == set && *k == key) {
                    let (_, _, record) = creates.remove(at);
                    let stored = received
                        .entry(set.to_string())
                        .or_default()
                        .keys
                        .entry(key.clone())
                        .or_default();
                    stored.applied_versions.push(1);
                    stored.value = Value::Object(record);
                }
                return error(404, &format!("no {set} with key {key}"));
            };
            let etag = etag_of(stored);
            let mut body = stored.value.clone();
            if let Value::Object(fields) = &mut body {
                fields.insert("@odata.etag".into(), Value::String(etag.clone()));
            }
            drop(received);
            let mut response = answer(200, serde_json::to_vec(&body).unwrap_or_default());
            response.headers.push(("ETag".into(), etag));
            return response;
        }
        let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(&request.body) else {
            return error(400, "the request body is not a JSON object");
        };
        let key = match (request.method.as_str(), predicate) {
            ("PATCH", Some(predicate)) => match parse_key(predicate, &record) {
                Ok(key) => key,
                Err(message) => return error(400, &message),
            },
            ("POST", None) => match lock(&self.writes.keys).get(set) {
                Some(fields) => {
                    let mut values = Vec::with_capacity(fields.len());
                    for field in fields {
                        match record.get(field) {
                            Some(Value::String(v)) => values.push(v.clone()),
                            Some(Value::Number(n)) => values.push(n.to_string()),
                            _ => return error(400, &format!("key property {field} is missing")),
                        }
                    }
                    values.join("/")
                }
                None => format!(
                    "#{}",
                    self.writes.serial.fetch_add(1, Ordering::Relaxed) + 1
                ),
            },
            (method, _) => {
                return error(
                    405,
                    &format!(
                        "{method} {} is not supported: GET and PATCH Set(key) read and upsert, POST Set creates",
                        request.url
                    ),
                );
            }
        };
        if let Some(rule) = lock(&self.writes.rule).as_ref()
            && let Some(value) = record.get(&rule.field).and_then(Value::as_str)
            && rule.values.iter().any(|v| v == value)
        {
            return error(
                400,
                &format!("{} {value:?} does not exist in this ERP", rule.field),
            );
        }
        let version = request
            .header(SOURCE_VERSION_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut received = lock(&self.writes.received);
        let report = received.entry(set.to_string()).or_default();
        // Preconditions, checked and applied under one lock, as a database would.
        let current = report.keys.get(&key).map(etag_of);
        let refused = match (
            request.header("if-match"),
            request.header("if-none-match"),
            &current,
        ) {
            (Some(_), _, None) => true,
            (Some(tag), _, Some(current)) => tag != "*" && tag != current,
            (None, Some("*"), Some(_)) => true,
            _ => false,
        };
        if request.method == "POST" && current.is_some() {
            drop(received);
            return error(409, &format!("{set} {key} already exists"));
        }
        if refused {
            drop(received);
            return error(
                412,
                &format!("{set} {key} changed since it was read (ETag now {current:?})"),
            );
        }
        report.requests += 1;
        report.records += 1;
        let stored = report.keys.entry(key).or_default();
        let last = stored.applied_versions.last().copied();
        let version = version.unwrap_or_else(|| last.map_or(1, |v| v + 1));
        // Like a real ERP: the last writer wins. A write older than the stored version is
        // applied all the same and counted as stale: the ordering violation tests look for.
        if last == Some(version) {
            stored.duplicates += 1;
        } else {
            if last.is_some_and(|last| last > version) {
                stored.stale += 1;
            }
            stored.applied_versions.push(version);
        }
        stored.value = Value::Object(record.clone());
        drop(received);
        if request.method == "POST" {
            answer(201, serde_json::to_vec(&record).unwrap_or_default())
        } else {
            answer(204, Vec::new())
        }
    }
}

/// The entity tag of a stored record: changes with every write.
fn etag_of(stored: &KeyReport) -> String {
    format!(
        "W/\"{}\"",
        stored.applied_versions.len() as u64 + stored.duplicates
    )
}

/// The key a predicate names, values joined by `/`: `('a')`, `(42)`, `(K1='a',K2=10)`. Key
/// properties the body carries must agree with it.
fn parse_key(predicate: &str, body: &Map<String, Value>) -> Result<String, String> {
    let text = percent_decode(predicate)?;
    let mut values = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let (name, after) = match rest.find(['=', '\'', ',']) {
            Some(at) if rest.as_bytes()[at] == b'=' => (Some(&rest[..at]), &rest[at + 1..]),
            _ => (None, rest),
        };
        let (value, after) = if let Some(quoted) = after.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().map(|(_, c)| *c) == Some('\'') {
                        value.push('\'');
                        chars.next();
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    value.push(c);
                }
            }
            let end = end.ok_or_else(|| format!("unterminated string in key ({text})"))?;
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        if let Some(name) = name {
            let name = name.trim();
            let in_body = match body.get(name) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
                None => None,
            };
            if in_body.is_some_and(|b| b != value) {
                return Err(format!(
                    "key property {name} in the body differs from the URL ({text})"
                ));
            }
        }
        values.push(value);
        rest = after.strip_prefix(',').unwrap_or(after);
        if !after.is_empty() && !after.starts_with(',') {
            return Err(format!("malformed key predicate ({text})"));
        }
    }
    if values.is_empty() {
        return Err("empty key predicate".into());
    }
    Ok(values.join("/"))
}

fn percent_decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{text:?} is not UTF-8"))
}

/// The write endpoints, merged into the simulator's router.
pub fn routes() -> Router<Arc<ErpState>> {
    Router::new()
        .route("/odata/$batch", post(batch))
        .route("/admin/received/{set}", get(received))
        .route("/admin/write-rule", post(set_rule).delete(clear_rule))
        .route(
            "/admin/part-faults",
            post(set_part_faults).delete(clear_part_faults),
        )
}

async fn batch(
    State(state): State<Arc<ErpState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(failure) = state.faults.intercept().await {
        return failure;
    }
    if state
        .writes
        .bombs
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        state.writes.bombs_sent.fetch_add(1, Ordering::Relaxed);
        return nested_bomb(BOMB_DEPTH);
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let requests = match parse_requests(content_type, &body) {
        Ok(requests) => requests,
        Err(message) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"code": "400", "message": message}})),
            )
                .into_response();
        }
    };
    state.writes.batches.fetch_add(1, Ordering::Relaxed);
    state
        .writes
        .largest
        .fetch_max(requests.len() as u64, Ordering::Relaxed);
    let continue_on_error = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.contains("odata.continue-on-error"));
    let mut responses = Vec::with_capacity(requests.len());
    for request in &requests {
        let response = state.write(request).await;
        let failed = response.status >= 400;
        responses.push(response);
        if failed && !continue_on_error {
            break;
        }
    }
    let boundary = format!("batchresponse_{:016x}", rand::random::<u64>());
    (
        [
            (
                "content-type",
                format!("multipart/mixed; boundary={boundary}"),
            ),
            ("odata-version", "4.0".to_string()),
        ],
        write_responses(&boundary, &responses),
    )
        .into_response()
}

/// Nesting of a bomb: about 800 KB, which overflowed a 2 MiB stack in a recursive reader.
const BOMB_DEPTH: usize = 20_000;

/// A `$batch` answer of multiparts nested `depth` deep.
fn nested_bomb(depth: usize) -> Response {
    let mut body = String::with_capacity(depth * 64);
    for level in 0..depth {
        body.push_str(&format!(
            "--n{level}x\r\nContent-Type: multipart/mixed; boundary=n{}x\r\n\r\n",
            level + 1
        ));
    }
    for level in (0..depth).rev() {
        body.push_str(&format!("\r\n--n{level}x--\r\n"));
    }
    (
        [
            ("content-type", "multipart/mixed; boundary=n0x".to_string()),
            ("odata-version", "4.0".to_string()),
        ],
        body,
    )
        .into_response()
}

async fn received(
    State(state): State<Arc<ErpState>>,
    Path(set): Path<String>,
) -> Json<EntityReport> {
    Json(state.received(&set))
}

async fn set_rule(State(state): State<Arc<ErpState>>, Json(rule): Json<WriteRule>) -> StatusCode {
    state.refuse(Some(rule));
    StatusCode::NO_CONTENT
}

async fn clear_rule(State(state): State<Arc<ErpState>>) -> StatusCode {
    state.refuse(None);
    StatusCode::NO_CONTENT
}

async fn set_part_faults(
    State(state): State<Arc<ErpState>>,
    Json(spec): Json<FaultSpec>,
) -> StatusCode {
    state.writes.part_faults.set(spec);
    StatusCode::NO_CONTENT
}

async fn clear_part_faults(State(state): State<Arc<ErpState>>) -> StatusCode {
    state.writes.part_faults.clear();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::erp::ErpSeed;

    /// A `$batch` body of `requests`, written as an OData client writes one.
    fn batch_body(boundary: &str, requests: &[BatchRequest]) -> Vec<u8> {
        let mut out = Vec::new();
        for request in requests {
            out.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Type: application/http\r\n\r\n{} {} HTTP/1.1\r\n",
                    request.method, request.url
                )
                .as_bytes(),
            );
            for (name, value) in &request.headers {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&request.body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        out
    }

    /// The status of each part of a batch response, read by a MIME parser.
    fn statuses(content_type: &str, body: &[u8]) -> Vec<u16> {
        let mut message = format!("Content-Type: {content_type}\r\n\r\n").into_bytes();
        message.extend_from_slice(body);
        mailparse::parse_mail(&message)
            .unwrap()
            .subparts
            .iter()
            .map(|part| {
                let raw = part.get_body_raw().unwrap();
                let line = String::from_utf8_lossy(&raw[..12]).into_owned();
                line["HTTP/1.1 ".len()..].parse().unwrap()
            })
            .collect()
    }

    fn patch(id: &str, url: &str, version: u64, body: Value) -> BatchRequest {
        BatchRequest {
            content_id: Some(id.into()),
            method: "PATCH".into(),
            url: url.into(),
            headers: vec![(SOURCE_VERSION_HEADER.into(), version.to_string())],
            body: serde_json::to_vec(&body).unwrap(),
        }
    }

    #[test]
    fn key_predicates_parse_like_odata_writes_them() {
        let body = Map::new();
        assert_eq!(parse_key("'A%27%27B'", &body).unwrap(), "A'B");
        assert_eq!(parse_key("order='1',item=10", &body).unwrap(), "1/10");
        assert_eq!(parse_key("order='a,b',item='x'", &body).unwrap(), "a,b/x");
        assert!(parse_key("order='1", &body).is_err());
        let body: Map<String, Value> = serde_json::from_value(json!({"order": "2"})).unwrap();
        assert!(
            parse_key("order='1'", &body)
                .unwrap_err()
                .contains("differs")
        );
    }

    #[tokio::test]
    async fn batches_upsert_by_key_with_versions_refusals_and_part_faults() {
        let state = ErpState::new(&ErpSeed {
            order_lines: 0,
            inventory: 0,
            returns: 0,
            ..ErpSeed::default()
        });
        state.refuse(Some(WriteRule {
            field: "plant".into(),
            values: vec!["9999".into()],
        }));
        let set = PLANNED_INDEPENDENT_REQUIREMENTS;
        let requests = vec![
            patch(
                "1",
                &format!("{set}(product='P1',plant='1010')"),
                5,
                json!({"plant": "1010", "qty": 1}),
            ),
            patch(
                "2",
                &format!("{set}(product='P1',plant='1010')"),
                5,
                json!({"plant": "1010", "qty": 1}),
            ),
            patch(
                "3",
                &format!("{set}(product='P1',plant='1010')"),
                4,
                json!({"plant": "1010", "qty": 0}),
            ),
            patch(
                "4",
                &format!("{set}(product='P2',plant='9999')"),
                1,
                json!({"plant": "9999"}),
            ),
            patch("5", &format!("{SALES_ORDER_LINES}('1')"), 1, json!({})),
            patch(
                "6",
                &format!("{set}(product='P3',plant='1020')"),
                1,
                json!({"plant": "1020"}),
            ),
        ];
        let mut responses = Vec::new();
        for request in &requests {
            responses.push(state.write(request).await.status);
        }
        assert_eq!(responses, vec![204, 204, 204, 400, 405, 204]);
        let report = state.received(set);
        let p1 = &report.keys["P1/1010"];
        // The older write is applied (last writer wins) and counted as stale.
        assert_eq!(
            (p1.applied_versions.clone(), p1.duplicates, p1.stale),
            (vec![5, 4], 1, 1)
        );
        assert_eq!(p1.value["qty"], 0);
        // Reads carry the ETag; preconditions are checked against it.
        let read = state
            .write(&BatchRequest {
                method: "GET".into(),
                url: format!("{set}(product='P1',plant='1010')?$select=qty"),
                headers: vec![],
                body: vec![],
                content_id: None,
            })
            .await;
        assert_eq!(read.status, 200);
        let etag = read.header("etag").unwrap().to_string();
        assert_eq!(etag, "W/\"3\"");
        let body: Value = serde_json::from_slice(&read.body).unwrap();
        assert_eq!(body["@odata.etag"], etag.as_str());
        let url = format!("{set}(product='P1',plant='1010')");
        let mut conditional = patch("7", &url, 9, json!({"qty": 9}));
        conditional
            .headers
            .push(("If-Match".into(), "W/\"1\"".into()));
        assert_eq!(state.write(&conditional).await.status, 412);
        conditional.headers.pop();
        conditional.headers.push(("If-Match".into(), etag));
        assert_eq!(state.write(&conditional).await.status, 204);
        let mut create_only = patch("8", &url, 10, json!({}));
        create_only
            .headers
            .push(("If-None-Match".into(), "*".into()));
        assert_eq!(state.write(&create_only).await.status, 412);
        create_only.url = format!("{set}(product='P9',plant='1010')");
        assert_eq!(state.write(&create_only).await.status, 204);
        // POST creates under the body's key once the set's keys are declared; 409 if taken.
        state.declare_keys(set, &["product", "plant"]);
        let mut create = patch("9", set, 11, json!({"product": "P8", "plant": "1010"}));
        create.method = "POST".into();
        assert_eq!(state.write(&create).await.status, 201);
        assert_eq!(state.write(&create).await.status, 409);
        assert!(state.received(set).keys.contains_key("P8/1010"));

        assert!(!report.keys.contains_key("P2/9999"));
        state.writes.part_faults.set(FaultSpec {
            status: Some(503),
            count: Some(1),
            retry_after_secs: Some(2),
            ..FaultSpec::default()
        });
        let failed = state.write(&requests[5]).await;
        assert_eq!(failed.status, 503);
        assert_eq!(failed.header("retry-after"), Some("2"));
        // Through the HTTP handler: a multipart response, in order, continuing after errors.
        let body = batch_body("b", &requests[2..5]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "multipart/mixed; boundary=b".parse().unwrap(),
        );
        headers.insert("prefer", "odata.continue-on-error".parse().unwrap());
        let response = batch(State(state.clone()), headers.clone(), body.clone().into()).await;
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(statuses(&content_type, &bytes), vec![204, 400, 405]);
        headers.remove("prefer");
        let response = batch(State(state.clone()), headers, body.into()).await;
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            statuses(&content_type, &bytes).len(),
            2,
            "stops at the first error"
        );
        assert_eq!(state.batches(), 2);
    }
}
