//! Backfill requests in the flow's bucket, where the operator (which accepted the request) and
//! the worker holding the extractor lease (which alone reads the source) meet. The request and
//! its outcome are one record, `backfill.<id>`; the key `backfill` names the request to run.
//! An id is used once: the operator creates the record only when it is absent.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::QueueNames;
use super::jetstream::{QueueError, bucket, bucket_error};

/// Key naming the backfill the extractor should run.
pub const BACKFILL_KEY: &str = "backfill";

/// Key of one backfill's record.
pub fn backfill_key(id: &str) -> String {
    format!("backfill.{id}")
}

/// Where a backfill stands in the bucket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackfillState {
    /// Accepted by the operator; no worker has run it yet.
    Requested,
    /// Read to the end of its window.
    Done,
    /// The pass failed; `message` says why. Not retried (request it again with a new id).
    Failed,
}

/// One backfill: the window of the source's cursor field to re-read, and what came of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackfillRecord {
    /// Request id.
    pub id: String,
    /// Window start, inclusive (RFC 3339).
    pub from: String,
    /// Window end, exclusive (RFC 3339).
    pub to: String,
    /// Where it stands.
    pub state: BackfillState,
    /// Records read from the source.
    #[serde(default)]
    pub read: u64,
    /// Records stored in the flow's stream.
    #[serde(default)]
    pub published: u64,
    /// Records the stream already held.
    #[serde(default)]
    pub duplicates: u64,
    /// Records dead-lettered at extraction.
    #[serde(default)]
    pub dead_lettered: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The record of backfill `id`, if any.
pub async fn read_backfill(
    store: &kv::Store,
    id: &str,
) -> Result<Option<BackfillRecord>, QueueError> {
    let value = store
        .get(backfill_key(id))
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Requests a backfill: creates its record (state `Requested`) and names it in
/// [`BACKFILL_KEY`]. Returns the record already there when the id was used before, without
/// requesting anything.
pub async fn request_backfill(
    js: &jetstream::Context,
    names: &QueueNames,
    record: &BackfillRecord,
) -> Result<BackfillRecord, QueueError> {
    let store = bucket(js, names).await?;
    if let Some(existing) = read_backfill(&store, &record.id).await? {
        return Ok(existing);
    }
    write_backfill(&store, record).await?;
    store
        .put(BACKFILL_KEY, Bytes::from(record.id.clone()))
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    Ok(record.clone())
}

/// Writes a backfill's record (its outcome, by the worker).
pub async fn write_backfill(store: &kv::Store, record: &BackfillRecord) -> Result<(), QueueError> {
    store
        .put(
            backfill_key(&record.id),
            Bytes::from(serde_json::to_vec(record).unwrap_or_default()),
        )
        .await
        .map(|_| ())
        .map_err(|e| bucket_error(&store.name, e))
}

/// The backfill waiting for the extractor, if one is.
pub async fn pending_backfill(store: &kv::Store) -> Result<Option<BackfillRecord>, QueueError> {
    let Some(id) = store
        .get(BACKFILL_KEY)
        .await
        .map_err(|e| bucket_error(&store.name, e))?
    else {
        return Ok(None);
    };
    let id = String::from_utf8_lossy(&id).into_owned();
    Ok(read_backfill(store, &id)
        .await?
        .filter(|r| r.state == BackfillState::Requested))
}
