//! `flowplane sim portal`: the supplier-collaboration portal of the example
//! (`examples/base/bindings/supplier-portal.yaml`), as far as flowplane's flows use it.
//!
//! - `PUT|POST /v1/collaboration/{collection}`: a batch of records, as a JSON array or NDJSON
//!   (`Content-Type: application/x-ndjson`), e.g. `forecasts` (the published forecast) and
//!   `forecast-exceptions` (replenishment changes too large to apply, escalated by the approval
//!   rules). A request needs `Authorization: Bearer <token>` (any non-empty token: the portal's
//!   token check is not what the demo shows; 401 without one). A request repeating an
//!   `Idempotency-Key` already taken is answered 200 and not applied again (counted as a replay).
//! - `GET /status`: health.
//! - `GET /admin/received/{collection}`: requests, records, distinct records (by content) and
//!   duplicates (the same record again), and the distinct records themselves, so tests can
//!   check that nothing arrived twice.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::faults::lock;

/// What one collection received.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CollectionReport {
    /// Requests applied (replays not included).
    pub requests: u64,
    /// Records in them.
    pub records: u64,
    /// Records whose content arrived before.
    pub duplicates: u64,
    /// Requests answered from an earlier `Idempotency-Key`.
    pub replays: u64,
    /// Distinct records, as canonical JSON text.
    pub distinct: BTreeSet<String>,
}

/// What the portal received; share it with tests through `Arc`.
#[derive(Default)]
pub struct PortalState {
    collections: Mutex<BTreeMap<String, CollectionReport>>,
    idempotency_keys: Mutex<HashSet<String>>,
}

impl PortalState {
    /// An empty portal.
    pub fn new() -> Arc<PortalState> {
        Arc::new(PortalState::default())
    }

    /// What `collection` received so far.
    pub fn received(&self, collection: &str) -> CollectionReport {
        lock(&self.collections)
            .get(collection)
            .cloned()
            .unwrap_or_default()
    }
}

/// The portal's routes.
pub fn router(state: Arc<PortalState>) -> Router {
    Router::new()
        .route("/v1/collaboration/{collection}", put(take).post(take))
        .route("/status", get(|| async { "ok" }))
        .route("/admin/received/{collection}", get(received))
        .with_state(state)
}

/// Serves the portal on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<PortalState>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn take(
    State(state): State<Arc<PortalState>>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| !token.trim().is_empty());
    if !bearer {
        return refuse(StatusCode::UNAUTHORIZED, "a Bearer token is required");
    }
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let records: Result<Vec<Value>, serde_json::Error> = if ndjson {
        body.split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(serde_json::from_slice)
            .collect()
    } else {
        serde_json::from_slice(&body)
    };
    let records = match records {
        Ok(records) if records.iter().all(Value::is_object) => records,
        Ok(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "every record must be a JSON object",
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("not a batch of records: {e}"),
            );
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|key| format!("{collection}/{key}"));
    let mut collections = lock(&state.collections);
    let report = collections.entry(collection).or_default();
    if let Some(key) = key
        && !lock(&state.idempotency_keys).insert(key)
    {
        report.replays += 1;
        return Json(json!({"accepted": records.len(), "replay": true})).into_response();
    }
    report.requests += 1;
    for record in &records {
        report.records += 1;
        if !report.distinct.insert(record.to_string()) {
            report.duplicates += 1;
        }
    }
    Json(json!({"accepted": records.len()})).into_response()
}

async fn received(
    State(state): State<Arc<PortalState>>,
    Path(collection): Path<String>,
) -> Json<CollectionReport> {
    Json(state.received(&collection))
}
