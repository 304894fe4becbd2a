//! The JetStream side of a flow, shared by the operator (which creates and inspects it) and the
//! worker (which uses it): resource names, and the progress record workers keep in the
//! key-value bucket so the operator can tell whether data is flowing and fresh.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::common::RetryPolicy;
use crate::api::integration_flow::{Discard, QueuePlacement};

pub mod approvals;
pub mod cli;
pub mod codes;
pub mod headers;
pub mod identity;
pub mod jetstream;
pub mod operations;
pub mod quota;
pub mod redrive;
pub mod replay;
pub mod replication;
pub mod settled;

pub use jetstream::{
    QueueDefaults, QueueError, QueuePolicy, delete_queue, ensure_capture, ensure_queue,
    read_progress, reset_cursor, set_cursor,
};
pub use quota::{QuotaState, binding_quota_bucket, read_quota};
pub use redrive::{DeadLetter, RedriveReport, list_dead_letters, redrive};
pub use replication::{REPLICA_LOST_AFTER, ReplicaState, StreamHealth, stream_health};
pub use settled::SettledSequences;

/// Names of one flow's JetStream resources. Deterministic from namespace and name, so the
/// operator, the workers and a person at a terminal all find the same objects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueNames {
    /// Stream holding the flow's raw records.
    pub stream: String,
    /// Subject prefix of the stream; records go to `<subject>.<partition>`.
    pub subject: String,
    /// Durable pull consumer shared by the flow's workers.
    pub consumer: String,
    /// Stream holding dead letters (with their reason in headers).
    pub dead_letter_stream: String,
    /// Subject of the dead-letter stream.
    pub dead_letter_subject: String,
    /// Key-value bucket holding the cursor and the progress record.
    pub kv_bucket: String,
}

impl QueueNames {
    /// JetStream names allow `[A-Za-z0-9_-]`; Kubernetes names add `.`, which we map to `_`.
    pub fn for_flow(namespace: &str, name: &str) -> QueueNames {
        let id = format!("{}_{}", sanitize(namespace), sanitize(name));
        QueueNames {
            stream: format!("FP_{id}"),
            subject: format!("flowplane.{id}.records"),
            consumer: "workers".to_string(),
            dead_letter_stream: format!("FP_{id}_DLQ"),
            dead_letter_subject: format!("flowplane.{id}.dead"),
            kv_bucket: format!("FP_{id}_STATE"),
        }
    }

    /// Stream on the source's NATS server that captures an event flow's source subject, so
    /// events published while no worker runs wait there (see [`jetstream::ensure_capture`]).
    pub fn capture_stream(&self) -> String {
        format!("{}_CAPTURE", self.stream)
    }

    /// Prefix of the reply inboxes of the flow's connections (async-nats `custom_inbox_prefix`):
    /// the flow's user may subscribe only under it, so no other flow reads its replies.
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX.{}", self.stream)
    }

    /// The flow's durable consumer on the capture stream: the flow's stream name, unique per
    /// flow, so flows sharing one capture stream each read every event.
    pub fn capture_consumer(&self) -> String {
        self.stream.clone()
    }
}

fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Key of the progress record in the flow's bucket.
pub const PROGRESS_KEY: &str = "progress";
/// Key of the extraction cursor in the flow's bucket.
pub const CURSOR_KEY: &str = "cursor";

/// What the workers report about a flow's data. Written by workers after each delivered batch,
/// read by the operator for the `Fresh` condition and the sync figures in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FlowProgress {
    /// Unix seconds of the last batch delivered to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_unix: Option<i64>,
    /// Records read from the source since the flow started, each counted once: re-reads that
    /// JetStream drops as duplicates (an incremental pass starts at its cursor's timestamp,
    /// inclusively) are not counted again.
    #[serde(default)]
    pub read: u64,
    /// Records delivered to the target, each counted once: a record JetStream delivers again
    /// after its outcome was recorded (an ack lost in a stream leader's failover) is not sent
    /// or counted again (see [`settled`]).
    #[serde(default)]
    pub delivered: u64,
    /// Records moved to the dead-letter stream, each counted once as `delivered`.
    #[serde(default)]
    pub dead_lettered: u64,
    /// Records the flow's stream dropped because a record with the same identity
    /// (`Nats-Msg-Id`) was already stored: a re-read, a redelivered source event, a publisher's
    /// retry. Not data lost: the first copy was stored.
    #[serde(default)]
    pub duplicates: u64,
    /// Records replays republished to the flow's stream (written by the operator when a
    /// replay is done), so that read + replayed = delivered + dead-lettered (+ in flight).
    #[serde(default)]
    pub replayed: u64,
    /// Source cursor (or delta token) the extractor resumes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Contract version the worker validated with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_version: Option<String>,
    /// Records waiting in the flow's consumer (pending plus unacknowledged) when last sampled.
    #[serde(default)]
    pub lag: u64,
    /// Why delivery is held, as the last worker to see it wrote it (the target refuses the
    /// binding's access: 401, 403, 404 of the collection), or why extraction cannot go on (a
    /// source link to another origin); none while records flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Stream sequences of the records counted in `delivered` and `dead_lettered` (or parked
    /// for review), so a record delivered again is neither sent nor counted twice.
    #[serde(default, skip_serializing_if = "SettledSequences::is_empty")]
    pub settled: SettledSequences,
    /// The last flush each worker process wrote: a flush whose write went through while its
    /// reply was lost (a bucket leader's failover) is not added a second time when retried.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flushes: BTreeMap<String, FlushMark>,
    /// Unix seconds of the last delivery per value of the flow's `freshnessBy` field (declared
    /// codes only, at most its `maxValues` plus `_other`); empty without one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub last_success_by: BTreeMap<String, i64>,
}

/// One worker process's last flush of progress.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushMark {
    /// The flush's number; each process counts from 1.
    pub number: u64,
    /// Unix seconds it was written; marks older than [`FLUSH_MARK_KEPT_SECS`] are dropped.
    pub unix: i64,
}

/// How long a worker's flush mark is kept after its last flush: far longer than a retry
/// takes, short enough that workers long gone do not pile up in the record.
pub const FLUSH_MARK_KEPT_SECS: i64 = 600;

/// Queue policy with durations as written in the flow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryConfig {
    /// Deliveries before dead-lettering.
    pub max_deliver: u32,
    /// Ack wait.
    pub ack_wait: String,
    /// Redelivery backoff.
    pub retry: RetryPolicy,
    /// Most unacknowledged records in flight across workers.
    pub max_ack_pending: u32,
    /// How long records stay in the flow's stream (for a worker that creates the queue).
    #[serde(default = "default_retention")]
    pub retention: String,
    /// How long dead letters stay.
    #[serde(default = "default_dead_letter_retention")]
    pub dead_letter_retention: String,
    /// Window in which a republished idempotency key is dropped.
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window: String,
    /// Replicas of the flow's streams, consumer and bucket (the flow's, else the operator's
    /// default, resolved at render time).
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// Most bytes of the flow's stream and, separately, of its dead-letter stream.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: i64,
    /// What the flow's stream does when full.
    #[serde(default)]
    pub discard: Discard,
    /// Where the replicas go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<QueuePlacement>,
}

// Configurations rendered before these fields existed get the flow defaults.
fn default_retention() -> String {
    crate::api::integration_flow::Delivery::default().retention
}
fn default_dead_letter_retention() -> String {
    crate::api::integration_flow::Delivery::default().dead_letter_retention
}
fn default_dedupe_window() -> String {
    crate::api::integration_flow::Delivery::default().dedupe_window
}
// Configurations rendered before replication existed ran on one server.
fn default_replicas() -> u8 {
    1
}
fn default_max_bytes() -> i64 {
    crate::api::integration_flow::DEFAULT_QUEUE_MAX_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_jetstream_names_and_distinct_per_flow() {
        let a = QueueNames::for_flow("team-eu", "orders.history");
        assert_eq!(a.stream, "FP_team-eu_orders_history");
        assert!(
            a.stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
        let b = QueueNames::for_flow("team-us", "orders.history");
        assert_ne!(a.stream, b.stream);
        assert_ne!(a.kv_bucket, b.kv_bucket);
    }
}
