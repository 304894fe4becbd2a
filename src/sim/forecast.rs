//! `flowplane sim forecast`: a demand-planning platform's bulk-ingest REST API.
//!
//! `POST /api/v1/{entity}/bulk-upsert` with `{"key": [fields], "records": [{"version": n,
//! "data": {...}}]}` upserts each record by its key, conditionally on its source version: a
//! newer version is applied, the same version is an idempotent no-op (counted as a duplicate),
//! an older one is ignored (counted as stale). That version precondition is how the flow keeps
//! a key's changes in source order with many workers and redeliveries. Records without their
//! key fields are rejected per item (`rejected: [{index, reason}]`), as bulk APIs do.
//!
//! `GET /admin/received/{entity}` reports exactly what arrived, per key: writes applied,
//! duplicates, stale writes, the applied versions and the last value, plus request totals, so
//! tests can check exactly-once delivery; `GET /admin/applied/{entity}` is just the count.
//! `/admin/faults` switches latency, 5xx and 429s for every entity, `/admin/faults/{entity}` for
//! one (a single ingest endpoint down while the others work). What the platform publishes (replenishment
//! proposals, the published forecast) is served by [`super::planning`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::faults::{FaultSpec, Faults, lock};

/// A bulk upsert request.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BulkUpsert {
    /// Fields that identify a record.
    pub key: Vec<String>,
    /// Records in the order they are to be applied.
    pub records: Vec<VersionedRecord>,
}

/// One record with the version of the source change it carries.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct VersionedRecord {
    /// Source version; only a higher version replaces the stored one.
    pub version: u64,
    /// The record.
    pub data: Value,
}

/// The answer to a bulk upsert.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkResult {
    /// Records that changed the stored state.
    pub applied: u64,
    /// Records whose version was already stored.
    pub duplicates: u64,
    /// Records older than the stored version.
    pub stale: u64,
    /// Records refused, by index in the request.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

/// A record the target refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Index in the request's `records`.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// What one key received.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyReport {
    /// Versions applied, in the order they were applied.
    pub applied_versions: Vec<u64>,
    /// Writes of a version already stored.
    pub duplicates: u64,
    /// Writes older than the stored version.
    pub stale: u64,
    /// The stored record.
    pub value: Value,
}

/// What one entity received.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityReport {
    /// Bulk requests that reached the handler (not failed by injected faults).
    pub requests: u64,
    /// Records in those requests.
    pub records: u64,
    /// Per key.
    pub keys: BTreeMap<String, KeyReport>,
}

impl EntityReport {
    /// Writes applied over all keys.
    pub fn applied(&self) -> u64 {
        self.keys
            .values()
            .map(|k| k.applied_versions.len() as u64)
            .sum()
    }

    /// Redundant writes (same version again) over all keys.
    pub fn duplicates(&self) -> u64 {
        self.keys.values().map(|k| k.duplicates).sum()
    }
}

/// The simulator's received data and faults; share it with tests through `Arc`.
#[derive(Default)]
pub struct ForecastState {
    entities: Mutex<BTreeMap<String, Entity>>,
    /// Switchable misbehaviour.
    pub faults: Faults,
    /// Switchable misbehaviour of one entity's endpoint, by entity.
    entity_faults: Mutex<HashMap<String, Arc<Faults>>>,
    /// Replenishment proposals it publishes (`super::planning`).
    pub proposals: super::planning::Proposals,
}

/// What one entity received, as stored: each key's value stays the JSON text that arrived
/// (parsed only when a report is asked for), so the simulator spends little CPU per record
/// on the machine it shares with the pipeline under test.
#[derive(Default)]
struct Entity {
    requests: u64,
    records: u64,
    applied: u64,
    keys: HashMap<String, StoredKey>,
}

struct StoredKey {
    applied_versions: Vec<u64>,
    duplicates: u64,
    stale: u64,
    value: Box<RawValue>,
}

impl Entity {
    fn report(&self) -> EntityReport {
        EntityReport {
            requests: self.requests,
            records: self.records,
            keys: self
                .keys
                .iter()
                .map(|(key, stored)| {
                    let report = KeyReport {
                        applied_versions: stored.applied_versions.clone(),
                        duplicates: stored.duplicates,
                        stale: stored.stale,
                        value: serde_json::from_str(stored.value.get()).unwrap_or_default(),
                    };
                    (key.clone(), report)
                })
                .collect(),
        }
    }
}

/// A bulk upsert as it arrives, the records' data left as JSON text.
#[derive(Deserialize)]
struct RawBulkUpsert<'a> {
    key: Vec<String>,
    #[serde(borrow)]
    records: Vec<RawVersionedRecord<'a>>,
}

#[derive(Deserialize)]
struct RawVersionedRecord<'a> {
    version: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl ForecastState {
    /// An empty simulator.
    pub fn new() -> Arc<ForecastState> {
        Arc::new(ForecastState::default())
    }

    /// Everything `entity` received so far.
    pub fn received(&self, entity: &str) -> EntityReport {
        lock(&self.entities)
            .get(entity)
            .map(Entity::report)
            .unwrap_or_default()
    }

    /// Writes applied to `entity` so far: `received(entity).applied()` without copying the
    /// per-key report (benchmarks poll this).
    pub fn applied(&self, entity: &str) -> u64 {
        lock(&self.entities)
            .get(entity)
            .map(|e| e.applied)
            .unwrap_or(0)
    }

    /// Forgets everything received.
    pub fn reset(&self) {
        lock(&self.entities).clear();
    }

    /// Applies a bulk upsert.
    pub fn apply(&self, entity: &str, request: BulkUpsert) -> BulkResult {
        let records: Vec<(u64, Box<RawValue>)> = request
            .records
            .into_iter()
            .map(|r| {
                let json = serde_json::value::to_raw_value(&r.data)
                    .unwrap_or_else(|_| unreachable!("a Value serialises"));
                (r.version, json)
            })
            .collect();
        let records = records.iter().map(|(v, json)| (*v, json.as_ref()));
        self.apply_json(entity, &request.key, records)
    }

    /// Applies a bulk upsert whose records' data is JSON text (what the HTTP handler does
    /// after fault injection).
    fn apply_json<'a>(
        &self,
        entity: &str,
        key_fields: &[String],
        records: impl ExactSizeIterator<Item = (u64, &'a RawValue)>,
    ) -> BulkResult {
        let mut entities = lock(&self.entities);
        let report = entities.entry(entity.to_string()).or_default();
        report.requests += 1;
        report.records += records.len() as u64;
        let mut result = BulkResult::default();
        for (index, (version, data)) in records.enumerate() {
            let key = match record_key(key_fields, data) {
                Ok(key) => key,
                Err(reason) => {
                    result.rejected.push(Rejection { index, reason });
                    continue;
                }
            };
            match report.keys.get_mut(&key) {
                Some(stored) => match stored.applied_versions.last() {
                    Some(last) if *last == version => {
                        stored.duplicates += 1;
                        result.duplicates += 1;
                    }
                    Some(last) if *last > version => {
                        stored.stale += 1;
                        result.stale += 1;
                    }
                    _ => {
                        stored.applied_versions.push(version);
                        stored.value = data.to_owned();
                        report.applied += 1;
                        result.applied += 1;
                    }
                },
                None => {
                    let stored = StoredKey {
                        applied_versions: vec![version],
                        duplicates: 0,
                        stale: 0,
                        value: data.to_owned(),
                    };
                    report.keys.insert(key, stored);
                    report.applied += 1;
                    result.applied += 1;
                }
            }
        }
        result
    }
}

fn record_key(fields: &[String], data: &RawValue) -> Result<String, String> {
    if fields.is_empty() {
        return Err("the request names no key fields".into());
    }
    let data: serde_json::Map<String, Value> = serde_json::from_str(data.get()).unwrap_or_default();
    let mut parts = Vec::with_capacity(fields.len());
    for field in fields {
        match data.get(field) {
            Some(Value::String(s)) => parts.push(s.clone()),
            Some(Value::Null) | None => return Err(format!("key field {field:?} is missing")),
            Some(other) => parts.push(other.to_string()),
        }
    }
    Ok(parts.join("/"))
}

/// The ingest API and its admin endpoints.
pub fn router(state: Arc<ForecastState>) -> Router {
    Router::new()
        .route("/api/v1/{entity}/bulk-upsert", post(bulk_upsert))
        .route("/healthz", get(|| async { "ok" }))
        .route("/admin/received/{entity}", get(received))
        .route("/admin/applied/{entity}", get(applied))
        .route("/admin/reset", post(reset))
        .route("/admin/faults", post(set_faults).delete(clear_faults))
        .route(
            "/admin/faults/{entity}",
            post(set_entity_faults).delete(clear_entity_faults),
        )
        .merge(super::planning::routes())
        .with_state(state)
}

/// Serves the simulator on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ForecastState>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

async fn bulk_upsert(
    State(state): State<Arc<ForecastState>>,
    Path(entity): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(failure) = state.faults.intercept().await {
        return failure;
    }
    let entity_faults = lock(&state.entity_faults).get(&entity).cloned();
    if let Some(faults) = entity_faults
        && let Some(failure) = faults.intercept().await
    {
        return failure;
    }
    match serde_json::from_slice::<RawBulkUpsert>(&body) {
        Ok(request) => {
            let records = request.records.iter().map(|r| (r.version, r.data));
            Json(state.apply_json(&entity, &request.key, records)).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("not a bulk upsert: {e}")})),
        )
            .into_response(),
    }
}

async fn received(
    State(state): State<Arc<ForecastState>>,
    Path(entity): Path<String>,
) -> Json<EntityReport> {
    Json(state.received(&entity))
}

async fn applied(
    State(state): State<Arc<ForecastState>>,
    Path(entity): Path<String>,
) -> Json<Value> {
    Json(json!({"applied": state.applied(&entity)}))
}

async fn reset(State(state): State<Arc<ForecastState>>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

async fn set_faults(
    State(state): State<Arc<ForecastState>>,
    Json(spec): Json<FaultSpec>,
) -> StatusCode {
    state.faults.set(spec);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(state): State<Arc<ForecastState>>) -> StatusCode {
    state.faults.clear();
    StatusCode::NO_CONTENT
}

async fn set_entity_faults(
    State(state): State<Arc<ForecastState>>,
    Path(entity): Path<String>,
    Json(spec): Json<FaultSpec>,
) -> StatusCode {
    let faults = Faults::default();
    faults.set(spec);
    lock(&state.entity_faults).insert(entity, Arc::new(faults));
    StatusCode::NO_CONTENT
}

async fn clear_entity_faults(
    State(state): State<Arc<ForecastState>>,
    Path(entity): Path<String>,
) -> StatusCode {
    lock(&state.entity_faults).remove(&entity);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, qty: u64) -> VersionedRecord {
        VersionedRecord {
            version,
            data: json!({"order": "1", "item": "10", "qty": qty}),
        }
    }

    #[test]
    fn upserts_apply_only_newer_versions() {
        let state = ForecastState::new();
        let key = vec!["order".to_string(), "item".to_string()];
        let result = state.apply(
            "lines",
            BulkUpsert {
                key: key.clone(),
                records: vec![record(2, 20), record(1, 10), record(2, 20), record(3, 30)],
            },
        );
        assert_eq!((result.applied, result.stale, result.duplicates), (2, 1, 1));
        let rejected = state.apply(
            "lines",
            BulkUpsert {
                key,
                records: vec![VersionedRecord {
                    version: 9,
                    data: json!({"order": "1"}),
                }],
            },
        );
        assert_eq!(rejected.rejected.len(), 1);
        let report = state.received("lines");
        assert_eq!(report.keys["1/10"].applied_versions, vec![2, 3]);
        assert_eq!(report.keys["1/10"].value["qty"], 30);
        assert_eq!((report.requests, report.records), (2, 5));
        assert_eq!(state.applied("lines"), 2);
        assert_eq!(state.applied("other"), 0);
    }
}
