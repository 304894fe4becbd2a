//! Forecast deltas parked for review, in the flow's key-value bucket: `review.<id>` holds the
//! parked record, `decision.<id>` a planner's decision. The workers act on decisions and
//! timeouts (see `worker::approval`); the operator (status.pendingApprovals and the
//! `flowplane.io/approve|reject` annotations) and `flowplane review` use [`list_pending`] and
//! [`decide`]. The id is derived from the record's key and source version, so a redelivered
//! record is parked once.
//!
//! The decision audit: every forecast delta's route is kept under `audit.<route>.<id>`
//! ([`RouteRecord`]: who decided and when), written by the workers when they route a delta or
//! carry out a review. The route is in the key, so [`route_counts`] counts from the subject
//! list alone; a redelivered delta overwrites its record, so the counts stay exact.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::QueueNames;
use super::jetstream::{DELETE_MARKER_TTL, QueueError, bucket, bucket_error};

/// Key prefix of parked records.
pub const REVIEW_PREFIX: &str = "review.";
/// Key prefix of decisions.
pub const DECISION_PREFIX: &str = "decision.";
/// Key prefix of the decision audit.
pub const AUDIT_PREFIX: &str = "audit.";

/// A planner's decision on a parked delta.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Deliver the record to the flow's target.
    Approve,
    /// Drop it (dead-lettered with reason `ReviewRejected`).
    Reject,
}

/// A decision as stored under `decision.<id>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    /// What was decided.
    pub decision: Decision,
    /// The Kubernetes user whose request set the decision annotation (stamped by the chart's
    /// MutatingAdmissionPolicy, never typed); None from `flowplane review`, which has no
    /// Kubernetes identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When the operator recorded it, Unix seconds.
    pub decided_at: i64,
}

/// The route a forecast delta took.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Route {
    /// Delivered by the rules, without review.
    Applied,
    /// Reviewed and approved.
    Approved,
    /// Reviewed and rejected (dead-lettered).
    Rejected,
    /// Sent to the escalation target by the rules.
    Escalated,
    /// Nobody decided in time: the flow's `onTimeout` was carried out.
    TimedOut,
}

impl Route {
    /// Every route, in the order status and docs show them.
    pub const ALL: [Route; 5] = [
        Route::Applied,
        Route::Approved,
        Route::Rejected,
        Route::Escalated,
        Route::TimedOut,
    ];

    /// The route's name in bucket keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Applied => "applied",
            Route::Approved => "approved",
            Route::Rejected => "rejected",
            Route::Escalated => "escalated",
            Route::TimedOut => "timedOut",
        }
    }
}

/// One delta's route in the decision audit, as stored under `audit.<route>.<id>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRecord {
    /// Review id (derived from key and source version, also for deltas never reviewed).
    pub id: String,
    /// Primary key of the record.
    pub key: String,
    /// The route taken.
    pub route: Route,
    /// Delta in percent (None when infinite).
    pub delta_percent: Option<f64>,
    /// Who decided (approved and rejected routes; see [`DecisionRecord::decided_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When the decision was recorded, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<i64>,
    /// When a worker took the route, Unix seconds.
    pub at: i64,
}

/// Bucket key of a delta's route.
pub fn audit_key(route: Route, id: &str) -> String {
    format!("{AUDIT_PREFIX}{}.{id}", route.as_str())
}

/// A pending review as the operator's status and `flowplane review list` show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingReview {
    /// Review id (for approve/reject).
    pub id: String,
    /// Primary key of the record.
    pub key: String,
    /// Delta in percent (infinite when the baseline is 0 or missing, shown as null in JSON).
    pub delta_percent: f64,
    /// When the review times out, Unix seconds.
    pub expires: i64,
    /// A decision recorded but not yet carried out by a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionRecord>,
}

/// Who is carrying out a decision or timeout right now (so workers do not act twice).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// Worker id.
    pub holder: String,
    /// Unix ms after which another worker may take over.
    pub until_unix_ms: i64,
}

/// A parked record, as stored under `review.<id>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParkedReview {
    /// Review id.
    pub id: String,
    /// Primary key of the record.
    pub key: String,
    /// Source version of the record.
    pub version: u64,
    /// Delta in percent (None when infinite).
    pub delta_percent: Option<f64>,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// When it was parked, Unix seconds (absent in reviews parked by earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_unix: Option<i64>,
    /// The mapped, validated record (what the target receives).
    pub record: serde_json::Value,
    /// The original record as it was in the flow's stream (what a dead letter keeps).
    pub original: String,
    /// Subject the record had in the flow's stream.
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// The W3C `traceparent` of a record stored with one (before the correlation id was
    /// derived from its identity, `headers::trace_id`); empty for any other. Still written,
    /// empty, because workers of the release before require the field.
    #[serde(default)]
    pub traceparent: String,
    /// Set while a worker carries out the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

impl ParkedReview {
    /// The record's correlation id (`headers::trace_id`).
    pub fn trace_id(&self) -> String {
        let legacy = Some(self.traceparent.as_str()).filter(|tp| !tp.is_empty());
        super::headers::trace_id(&self.msg_id, legacy)
    }

    /// The delta with infinity restored.
    pub fn delta(&self) -> f64 {
        self.delta_percent.unwrap_or(f64::INFINITY)
    }
}

/// Deterministic review id of a record: FNV-1a 64 of key and source version, in hex.
pub fn review_id(key: &str, version: u64) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key
        .bytes()
        .chain([0u8])
        .chain(version.to_string().into_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Bucket key of a parked record.
pub fn review_key(id: &str) -> String {
    format!("{REVIEW_PREFIX}{id}")
}

/// Bucket key of a decision.
pub fn decision_key(id: &str) -> String {
    format!("{DECISION_PREFIX}{id}")
}

/// Ids of all parked records in the bucket (a deleted one too: [`read_parked`] says None).
/// Listed from the subjects of the bucket's stream (`STREAM.INFO` with a subject filter), not
/// with `keys()`, whose consumer a flow's NATS user may not create (`queue::identity`).
pub async fn parked_ids(store: &kv::Store) -> Result<Vec<String>, QueueError> {
    let prefix = format!("{}{REVIEW_PREFIX}", store.prefix);
    let subjects: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| bucket_error(&store.name, e))?
        .try_collect()
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    let mut ids: Vec<String> = subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Drops a carried-out review's keys from the bucket for good, so review listings
/// ([`parked_ids`]) do not grow with every review ever made: a delete marker that expires after
/// [`DELETE_MARKER_TTL`] takes the place of each key's last entry (the bucket keeps one per key).
/// Published by hand: async-nats gives a TTL only to a purge, which is a rollup, and the
/// namespace bucket refuses rollups (see `jetstream::ensure_state_bucket`). Best effort: a
/// marker left behind only costs a read in later listings.
pub async fn forget_review(js: &jetstream::Context, store: &kv::Store, id: &str) {
    for key in [review_key(id), decision_key(id)] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        let ttl = DELETE_MARKER_TTL.as_secs().to_string();
        headers.insert(async_nats::header::NATS_MESSAGE_TTL, ttl.as_str());
        let subject = format!("{}{key}", store.prefix);
        let stored = match js
            .publish_with_headers(subject, headers, Bytes::new())
            .await
        {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::debug!(error = %e, "review marker kept");
        }
    }
}

/// A parked record and its revision, None when absent.
pub async fn read_parked(
    store: &kv::Store,
    id: &str,
) -> Result<Option<(ParkedReview, u64)>, QueueError> {
    let entry = store
        .entry(review_key(id))
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    Ok(match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            serde_json::from_slice(&entry.value)
                .ok()
                .map(|p| (p, entry.revision))
        }
        _ => None,
    })
}

/// The decision recorded for `id`, if any.
pub async fn read_decision(
    store: &kv::Store,
    id: &str,
) -> Result<Option<DecisionRecord>, QueueError> {
    let entry = store
        .entry(decision_key(id))
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    Ok(match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            serde_json::from_slice(&entry.value).ok()
        }
        _ => None,
    })
}

/// The flow's pending reviews, ordered by id.
pub async fn list_pending(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<Vec<PendingReview>, QueueError> {
    let store = bucket(js, names).await?;
    let mut pending = Vec::new();
    for id in parked_ids(&store).await? {
        if let Some((parked, _)) = read_parked(&store, &id).await? {
            pending.push(PendingReview {
                decision: read_decision(&store, &id).await?,
                id: parked.id.clone(),
                key: parked.key.clone(),
                delta_percent: parked.delta(),
                expires: parked.expires,
            });
        }
    }
    Ok(pending)
}

/// Records a decision on review `id` by `decided_by` (now) for the workers, which carry it
/// out within seconds. An id that is not pending (unknown, or already carried out) is an
/// error naming it. Deciding again overwrites an earlier decision not yet carried out.
pub async fn decide(
    js: &jetstream::Context,
    names: &QueueNames,
    id: &str,
    decision: Decision,
    decided_by: Option<&str>,
) -> Result<(), QueueError> {
    let store = bucket(js, names).await?;
    if read_parked(&store, id).await?.is_none() {
        return Err(bucket_error(
            &names.state_bucket,
            format!("no pending review {id}"),
        ));
    }
    let record = DecisionRecord {
        decision,
        decided_by: decided_by.map(str::to_string),
        decided_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default(),
    };
    let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
    store
        .put(decision_key(id), value)
        .await
        .map_err(|e| bucket_error(&names.state_bucket, e))?;
    Ok(())
}

/// Records a delta's route (a second record of the same delta and route overwrites the first).
pub async fn record_route(store: &kv::Store, record: &RouteRecord) -> Result<(), QueueError> {
    let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
    store
        .put(audit_key(record.route, &record.id), value)
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    Ok(())
}

/// The audit's bucket keys (without the bucket's prefix), from the stream's subjects.
async fn audit_keys(store: &kv::Store) -> Result<Vec<String>, QueueError> {
    let subjects: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(format!("{}{AUDIT_PREFIX}>", store.prefix))
        .await
        .map_err(|e| bucket_error(&store.name, e))?
        .try_collect()
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    let mut keys: Vec<String> = subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&store.prefix).map(str::to_string))
        .collect();
    keys.sort();
    Ok(keys)
}

/// How many deltas took each route (routes none took are absent).
pub async fn route_counts(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<std::collections::BTreeMap<Route, u64>, QueueError> {
    let store = bucket(js, names).await?;
    let mut counts = std::collections::BTreeMap::new();
    for key in audit_keys(&store).await? {
        if let Some(route) = Route::ALL
            .into_iter()
            .find(|r| key.starts_with(&format!("{AUDIT_PREFIX}{}.", r.as_str())))
        {
            *counts.entry(route).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Every delta's route, ordered by route and id.
pub async fn list_routes(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<Vec<RouteRecord>, QueueError> {
    let store = bucket(js, names).await?;
    let mut records = Vec::new();
    for key in audit_keys(&store).await? {
        let entry = store
            .entry(key)
            .await
            .map_err(|e| bucket_error(&store.name, e))?;
        if let Some(entry) = entry
            && entry.operation == kv::Operation::Put
            && let Ok(record) = serde_json::from_slice(&entry.value)
        {
            records.push(record);
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_valid_keys_and_differ_by_version() {
        let a = review_id("SKU-1/DC-NORTH", 7);
        assert_eq!(a, review_id("SKU-1/DC-NORTH", 7));
        assert_ne!(a, review_id("SKU-1/DC-NORTH", 8));
        assert_ne!(a, review_id("SKU-1/DC-SOUTH", 7));
        assert_eq!(a.len(), 16);
        assert!(
            review_key(&a)
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.')
        );
    }

    #[test]
    fn decisions_round_trip() {
        let text = serde_json::to_string(&Decision::Approve).unwrap();
        assert_eq!(text, "\"Approve\"");
        assert_eq!(
            serde_json::from_str::<Decision>("\"Reject\"").unwrap(),
            Decision::Reject
        );
    }

    #[test]
    fn audit_keys_name_the_route_and_are_valid_keys() {
        let id = review_id("SKU-1/DC-NORTH", 7);
        assert_eq!(
            audit_key(Route::TimedOut, &id),
            format!("audit.timedOut.{id}")
        );
        for route in Route::ALL {
            let key = audit_key(route, &id);
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
            assert_eq!(
                serde_json::to_string(&route).unwrap(),
                format!("\"{}\"", route.as_str())
            );
        }
    }
}
