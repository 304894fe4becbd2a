//! The JetStream side of a flow, shared by the operator (which creates and inspects it) and the
//! worker (which uses it): resource names, and the progress record workers keep in the
//! namespace's key-value bucket, under the flow's own keys, so the operator can tell whether
//! data is flowing and fresh.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::common::RetryPolicy;
use crate::api::integration_flow::{Discard, QueuePlacement};

pub mod approvals;
pub mod cli;
pub mod codes;
pub mod dead_letter_requests;
pub mod headers;
pub mod identity;
pub mod jetstream;
pub mod operations;
pub mod publish;
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
    /// Key-value bucket of the flow's namespace, shared by its flows: each flow's records
    /// (cursor, progress, codes, reviews, backfills, replays) are under its own keys,
    /// `<state_token>.<key>` (see [`jetstream::bucket`]). One bucket per namespace, not per
    /// flow: every bucket is a stream nats-server keeps files and memory for.
    /// Rendered before the namespace bucket: absent, filled from namespace and flow.
    #[serde(default)]
    pub state_bucket: String,
    /// First token of every key of the flow in `state_bucket`: unique in the namespace, one
    /// subject token, so the flow's NATS user is allowed `$KV.<state_bucket>.<state_token>.>`
    /// and nothing of its neighbours' keys.
    #[serde(default)]
    pub state_token: String,
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
            state_bucket: namespace_state_bucket(namespace),
            state_token: key_token(name),
        }
    }

    /// The namespace and name of the flow whose stream is `stream`, the inverse of
    /// [`QueueNames::for_flow`]: a namespace has no `_`, and a flow's name has none either (its
    /// `.` become `_`), so the first `_` ends the namespace. None for a name `for_flow` does not
    /// make from the pair read back.
    pub fn flow_of_stream(stream: &str) -> Option<(String, String)> {
        let (namespace, name) = stream.strip_prefix("FP_")?.split_once('_')?;
        let name = name.replace('_', ".");
        (QueueNames::for_flow(namespace, &name).stream == stream)
            .then(|| (namespace.to_string(), name))
    }

    /// The flow's own key-value bucket of releases before the namespace bucket; the operator
    /// moves its records into [`QueueNames::state_bucket`] and deletes it
    /// (see [`jetstream::ensure_queue`]).
    pub fn legacy_state_bucket(&self) -> String {
        format!("{}_STATE", self.stream)
    }

    /// Subject prefix of the flow's keys in the namespace bucket (`$KV.<bucket>.<token>.`):
    /// what the flow's NATS user may write, read by direct get, and what the operator purges
    /// when the flow goes away.
    pub fn state_key_prefix(&self) -> String {
        format!("$KV.{}.{}.", self.state_bucket, self.state_token)
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

/// The key-value bucket of a namespace's flow state. Namespaces are DNS labels (`[a-z0-9-]`), so
/// the name is distinct per namespace and never a flow's `FP_<namespace>_<flow>` stream nor a
/// binding's quota bucket (`FP_QUOTA_...`: `QUOTA` is no namespace, which is lowercase).
pub fn namespace_state_bucket(namespace: &str) -> String {
    format!("FP_STATE_{}", sanitize(namespace))
}

/// One NATS subject token for a flow's name, distinct for distinct names of any characters:
/// letters, digits and `-` stay, `.` (the subject separator, common in Kubernetes names)
/// becomes `_`, and every other byte (`_`, `=` included) becomes `=<hex>`, so no two names
/// meet. The characters used are all valid in key-value keys.
pub fn key_token(name: &str) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => token.push(char::from(byte)),
            b'.' => token.push('_'),
            other => token.push_str(&format!("={other:02X}")),
        }
    }
    token
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

/// Key of the progress record among the flow's keys.
pub const PROGRESS_KEY: &str = "progress";
/// Key of the extraction cursor among the flow's keys.
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
        assert_ne!(a.state_bucket, b.state_bucket);
        assert_eq!(a.state_bucket, "FP_STATE_team-eu");
        assert_eq!(a.state_token, "orders_history");
        assert_eq!(a.legacy_state_bucket(), "FP_team-eu_orders_history_STATE");
        assert_eq!(a.state_key_prefix(), "$KV.FP_STATE_team-eu.orders_history.");
    }

    #[test]
    fn a_flows_stream_name_reads_back_as_its_flow() {
        for (namespace, name) in [("team-a", "orders.daily"), ("team-b", "x")] {
            let stream = QueueNames::for_flow(namespace, name).stream;
            assert_eq!(
                QueueNames::flow_of_stream(&stream),
                Some((namespace.to_string(), name.to_string()))
            );
        }
        for other in ["FP_team-a", "team-a_orders", "FP_", "FP_a b_c", ""] {
            assert_eq!(QueueNames::flow_of_stream(other), None, "{other}");
        }
    }

    #[test]
    fn key_tokens_are_one_subject_token_and_never_meet() {
        let names = [
            "orders.history",
            "orders_history",
            "orders=5Fhistory",
            "orders-history",
            "a.b.c",
            "a_b.c",
            "x*y",
            "x>y",
            "x y",
            "Ünïcode",
        ];
        let tokens: std::collections::BTreeSet<String> =
            names.iter().map(|n| key_token(n)).collect();
        assert_eq!(tokens.len(), names.len(), "{tokens:?}");
        for token in &tokens {
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
            );
        }
        // A legal Kubernetes name reads as itself, but for its dots.
        assert_eq!(key_token("order-history.v2"), "order-history_v2");
    }
}
