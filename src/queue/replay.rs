//! Replaying a flow's records from a point in time: an ordered consumer on the flow's stream
//! with `DeliverPolicy::ByStartTime` reads every record the stream stored at or after `from`
//! (up to its last record when the replay started), and each is published to the stream again
//! for the workers, with its key and source version as it had them. The target therefore sees
//! a replayed record as an upsert of a version it holds already (a no-op, counted as a
//! duplicate by a versioned target) unless it lost it.
//!
//! One replay per request id: a copy's `Nats-Msg-Id` is `<record identity>/replay/<id>`, so
//! the stream drops a second copy of one record within one request (a record stored twice, as
//! its original and its redriven copy; a replay run again after an operator crash, within the
//! dedupe window), and the operator keeps a record per id in the flow's bucket
//! (`replay.<id>`) and never runs an id it finished. Copies made by earlier replays carry
//! [`headers::REPLAY`] and are skipped: a replay sends what the flow received, once.

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::QueueNames;
use super::headers;
use super::jetstream::{QueueError, bucket, bucket_error, stream_error, update_progress};

/// Publishes awaited together (bounds what a large replay holds in flight).
const ACK_BATCH: usize = 256;

/// What a replay did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Records stored again in the flow's stream.
    pub replayed: u64,
    /// Records the stream dropped as copies of one already replayed by this request.
    pub duplicates: u64,
    /// Copies made by earlier replays, left out.
    pub skipped: u64,
    /// Whether the replay ran to its end (a record per id in the bucket says so).
    #[serde(default)]
    pub done: bool,
}

/// Key of a replay's record in the flow's bucket.
pub fn replay_key(id: &str) -> String {
    format!("replay.{id}")
}

/// The report of the replay `id` when one ran to its end, from the flow's bucket.
pub async fn finished_replay(
    js: &jetstream::Context,
    names: &QueueNames,
    id: &str,
) -> Result<Option<ReplayReport>, QueueError> {
    let store = bucket(js, names).await?;
    let entry = store
        .get(replay_key(id))
        .await
        .map_err(|e| bucket_error(&names.state_bucket, e))?;
    Ok(entry
        .and_then(|value| serde_json::from_slice::<ReplayReport>(&value).ok())
        .filter(|report| report.done))
}

/// Replays the records the flow's stream stored at or after `from_unix_ns` as request `id`,
/// records the report under `replay.<id>` and adds the replayed count to the progress record.
/// A request already finished is not run again: its report is returned.
pub async fn replay(
    js: &jetstream::Context,
    names: &QueueNames,
    id: &str,
    from_unix_ns: i128,
) -> Result<ReplayReport, QueueError> {
    if let Some(report) = finished_replay(js, names, id).await? {
        return Ok(report);
    }
    let start_time = async_nats::datetime::from_nanos(from_unix_ns)
        .map_err(|e| stream_error(&names.stream, format!("replay start: {e}")))?;
    let mut stream = js
        .get_stream(&names.stream)
        .await
        .map_err(|e| stream_error(&names.stream, e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| stream_error(&names.stream, e))?
        .state
        .last_sequence;
    let mut report = ReplayReport::default();
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            description: Some(format!("flowplane replay {id}")),
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| stream_error(&names.stream, e))?;
    // Nothing stored at or after `from`: the consumer would wait for the next record.
    if ordered.cached_info().num_pending > 0 {
        let mut messages = ordered
            .messages()
            .await
            .map_err(|e| stream_error(&names.stream, e))?;
        let mut acks = Vec::with_capacity(ACK_BATCH);
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| stream_error(&names.stream, e))?;
            let info = message.info().map_err(|e| stream_error(&names.stream, e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if sequence > last {
                break;
            }
            let original = message.headers.clone().unwrap_or_default();
            if original.get(headers::REPLAY).is_some() {
                report.skipped += 1;
            } else {
                let identity = original
                    .get(headers::MSG_ID)
                    .map(|v| headers::record_identity(v.as_str()).to_string())
                    .unwrap_or_else(|| format!("sequence-{sequence}"));
                let mut copy = headers::for_copy_of(&original);
                copy.insert(headers::MSG_ID, format!("{identity}/replay/{id}").as_str());
                copy.insert(headers::REPLAY, id);
                let payload: Bytes = message.payload.clone();
                acks.push(
                    js.publish_with_headers(message.subject.clone(), copy, payload)
                        .await
                        .map_err(|e| stream_error(&names.stream, e))?,
                );
            }
            if acks.len() >= ACK_BATCH {
                settle(&mut acks, &mut report, names).await?;
            }
            if sequence >= last || pending == 0 {
                break;
            }
        }
        settle(&mut acks, &mut report, names).await?;
    }
    report.done = true;
    let store = bucket(js, names).await?;
    store
        .put(
            replay_key(id),
            Bytes::from(serde_json::to_vec(&report).unwrap_or_default()),
        )
        .await
        .map_err(|e| bucket_error(&names.state_bucket, e))?;
    let replayed = report.replayed;
    update_progress(&store, |p| p.replayed += replayed).await?;
    Ok(report)
}

async fn settle(
    acks: &mut Vec<async_nats::jetstream::context::PublishAckFuture>,
    report: &mut ReplayReport,
    names: &QueueNames,
) -> Result<(), QueueError> {
    for ack in acks.drain(..) {
        if ack
            .await
            .map_err(|e| stream_error(&names.stream, e))?
            .duplicate
        {
            report.duplicates += 1;
        } else {
            report.replayed += 1;
        }
    }
    Ok(())
}
