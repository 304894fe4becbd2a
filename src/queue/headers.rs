//! Message headers a flow's records and dead letters carry. Shared by the worker, redrive and
//! anyone reading the streams with the `nats` CLI.

/// JetStream's deduplication id: the record's idempotency key (primary key + source version).
pub const MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context: the record's correlation id, from extraction to the target or the DLQ.
pub const TRACEPARENT: &str = "traceparent";
/// The record's primary key, as `value/value/...` in primary-key order.
pub const KEY: &str = "Flowplane-Key";
/// The record's source version (a number that grows with each change of the key).
pub const SOURCE_VERSION: &str = "Flowplane-Source-Version";
/// When the record changed at the source, Unix milliseconds: its cursor field's value when
/// that is a timestamp (RFC 3339 or OData v2 `/Date(ms)/`), else, for an event, when the
/// capture stream stored it. Absent when the source gives no change time.
pub const CHANGED_AT: &str = "Flowplane-Changed-At";
/// When the extractor read the record, Unix milliseconds.
pub const READ_AT: &str = "Flowplane-Read-At";
/// Why a record was dead-lettered: a short, bounded reason such as `ContractViolation`.
pub const REASON: &str = "Flowplane-Reason";
/// The human-readable detail of the reason (never contains credentials).
pub const DETAIL: &str = "Flowplane-Detail";
/// The pipeline stage that dead-lettered the record (map, validate, deliver, approval).
pub const STAGE: &str = "Flowplane-Stage";
/// Subject the record had in the flow's stream, so redrive puts it back in its partition.
pub const ORIGINAL_SUBJECT: &str = "Flowplane-Original-Subject";
/// Sequence the record had in the flow's stream.
pub const ORIGINAL_SEQUENCE: &str = "Flowplane-Original-Sequence";
/// Times the record was delivered to a worker before it was dead-lettered.
pub const DELIVERIES: &str = "Flowplane-Deliveries";
/// On a dead letter cut to its first 64 KiB (a record larger than the flow takes): the size
/// of the record the source sent, in bytes.
pub const TRUNCATED: &str = "Flowplane-Truncated";
/// On a record a replay republished: the replay's request id. A later replay skips such
/// copies (it replays the records the flow received, not earlier replays of them).
pub const REPLAY: &str = "Flowplane-Replay";
