//! Replay, backfill and explicit cursor, requested by annotation like the flow's other one-off
//! operations and acknowledged in `status.operations`; what came of each is in
//! `status.replay`, `status.backfill` and `status.cursorChange`. Values are `key=value` pairs
//! separated by commas, each with a request `id`:
//!
//! - `flowplane.io/replay: id=r1,from=2026-11-30T08:00:00Z`: the operator replays the
//!   records the flow's stream stored at or after `from` ([`crate::queue::replay`]).
//! - `flowplane.io/backfill: id=b1,from=...,to=...`: the worker holding the extractor lease
//!   re-reads the source for the window `[from, to)` of its cursor field
//!   ([`crate::queue::operations`]); the live cursor does not move.
//! - `flowplane.io/cursor: id=c1,value=...`: the cursor is set to `value`.
//!
//! Annotations are beyond the reach of a CRD's CEL rules, so a request is checked here (pure,
//! [`check_replay`], [`check_backfill`], [`check_cursor`]), and `flowplane replay|backfill|
//! cursor set` runs the same checks before it writes the annotation. A refused request is
//! acknowledged (it stays refused), reported with its reason, and the flow's
//! `OperationsAccepted` condition is False until a valid request follows.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

use crate::api::IntegrationFlow;
use crate::api::common::parse_duration;
use crate::api::connector_binding::Protocol;
use crate::api::integration_flow::{
    BackfillStatus, CursorChangeStatus, DEFAULT_MAX_BACKFILL_WINDOW, OperationState, ReplayStatus,
    SyncMode,
};
use crate::controller::Context;
use crate::controller::conditions::Desired;
use crate::queue::jetstream::bucket;
use crate::queue::operations::{BackfillRecord, BackfillState, read_backfill, request_backfill};
use crate::queue::replay::replay;
use crate::queue::{QueueNames, set_cursor};

/// Annotation asking to replay the flow's records from a time.
pub const REPLAY_ANNOTATION: &str = "flowplane.io/replay";
/// Annotation asking to re-read a window of the source.
pub const BACKFILL_ANNOTATION: &str = "flowplane.io/backfill";
/// Annotation setting the source cursor to an explicit value.
pub const CURSOR_ANNOTATION: &str = "flowplane.io/cursor";

/// Why a request is not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Short reason, e.g. `BackfillWindowTooLarge`.
    pub reason: &'static str,
    /// What is wrong and what would be accepted.
    pub message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

/// A replay to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub id: String,
    pub from: Timestamp,
}

/// A backfill to request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRequest {
    pub id: String,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// A cursor to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRequest {
    pub id: String,
    pub value: String,
}

/// The pairs of an annotation value, refusing unknown or repeated keys and missing ones.
fn pairs<'a>(
    value: &'a str,
    keys: &[&str],
    invalid: &'static str,
) -> Result<BTreeMap<&'a str, &'a str>, Refusal> {
    let mut found = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, val)) = pair.split_once('=') else {
            return Err(refuse(
                invalid,
                format!("expected {} as key=value pairs", keys.join(", ")),
            ));
        };
        let key = key.trim();
        if !keys.contains(&key) {
            return Err(refuse(
                invalid,
                format!(
                    "unknown key {:?}: the keys are {}",
                    truncated(key),
                    keys.join(", ")
                ),
            ));
        }
        if found.insert(key, val.trim()).is_some() {
            return Err(refuse(invalid, format!("{key} is given twice")));
        }
    }
    if let Some(missing) = keys.iter().find(|k| !found.contains_key(*k)) {
        return Err(refuse(invalid, format!("{missing}= is missing")));
    }
    let id = found["id"];
    let id_ok = (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        return Err(refuse(
            invalid,
            "id must be 1 to 63 letters, digits, '-' or '_', starting with a letter or digit",
        ));
    }
    Ok(found)
}

/// At most 64 characters of user input, for a message.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The id of an annotation value, for the report of a refused request (empty when it has
/// none that could be an id).
fn id_of(value: &str) -> String {
    value
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("id="))
        .next()
        .filter(|id| {
            id.len() <= 63
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_default()
        .to_string()
}

fn timestamp(key: &str, text: &str, invalid: &'static str) -> Result<Timestamp, Refusal> {
    text.parse::<Timestamp>().map_err(|_| {
        refuse(
            invalid,
            format!(
                "{key}={:?} is not an RFC 3339 time such as 2026-11-30T08:00:00Z",
                truncated(text)
            ),
        )
    })
}

/// Checks a replay request against the time now and the stream's retention: a start in the
/// future would replay nothing, one before the retention asks for records the stream no
/// longer holds.
pub fn check_replay(
    value: &str,
    now: Timestamp,
    retention: Duration,
) -> Result<ReplayRequest, Refusal> {
    const INVALID: &str = "ReplayInvalid";
    let pairs = pairs(value, &["id", "from"], INVALID)?;
    let from = timestamp("from", pairs["from"], INVALID)?;
    if from > now {
        return Err(refuse(
            "ReplayFromInFuture",
            format!("from={from} is in the future: there is nothing to replay yet"),
        ));
    }
    let oldest = now
        .checked_sub(SignedDuration::try_from(retention).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN);
    if from < oldest {
        return Err(refuse(
            "ReplayBeyondRetention",
            format!(
                "from={from} is before the flow's stream retention (delivery.retention, {}s): from must be at or after {oldest}",
                retention.as_secs()
            ),
        ));
    }
    Ok(ReplayRequest {
        id: pairs["id"].to_string(),
        from,
    })
}

/// What a flow's source lets a backfill or a cursor change do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFacts<'a> {
    pub sync_mode: SyncMode,
    pub has_cursor_field: bool,
    /// The source binding's protocol, when the binding exists.
    pub protocol: Option<Protocol>,
    /// The cursor the extractor resumes from now (a delta link says nothing of the type).
    pub cursor: Option<&'a str>,
    /// Whether the cursor field holds times (true) or numbers (false), from the contract
    /// field it is mapped to, when that says.
    pub cursor_is_time: Option<bool>,
}

/// Checks a backfill request: a window of an Incremental OData or REST source's cursor
/// field, `from` before `to`, not after now, no longer than `max_window`, after 1970.
pub fn check_backfill(
    value: &str,
    now: Timestamp,
    max_window: Duration,
    source: SourceFacts<'_>,
) -> Result<BackfillRequest, Refusal> {
    const INVALID: &str = "BackfillInvalid";
    let pairs = pairs(value, &["id", "from", "to"], INVALID)?;
    let from = timestamp("from", pairs["from"], INVALID)?;
    let to = timestamp("to", pairs["to"], INVALID)?;
    if source.sync_mode != SyncMode::Incremental || !source.has_cursor_field {
        return Err(refuse(
            "BackfillUnsupported",
            "a backfill reads a window of the source's cursor field: the flow must be Incremental with source.cursorField",
        ));
    }
    if !matches!(source.protocol, Some(Protocol::OData | Protocol::Rest)) {
        return Err(refuse(
            "BackfillUnsupported",
            "only OData and REST sources can read a window of their cursor field",
        ));
    }
    if source.cursor_is_time == Some(false)
        || source.cursor.is_some_and(|c| c.parse::<u64>().is_ok())
    {
        return Err(refuse(
            "BackfillUnsupported",
            "the flow's cursor field holds numbers, not times: a window of times cannot be read from it",
        ));
    }
    if from < Timestamp::UNIX_EPOCH {
        return Err(refuse(
            INVALID,
            format!("from={from} is before 1970-01-01T00:00:00Z"),
        ));
    }
    if from >= to {
        return Err(refuse(
            INVALID,
            format!("from={from} must be before to={to}"),
        ));
    }
    if to > now {
        return Err(refuse(
            "BackfillWindowInFuture",
            format!("to={to} is in the future: the live cursor reads what is new"),
        ));
    }
    let span = to.duration_since(from);
    let max = SignedDuration::try_from(max_window).unwrap_or(SignedDuration::MAX);
    if span > max {
        return Err(refuse(
            "BackfillWindowTooLarge",
            format!(
                "the window is {}s long, more than source.maxBackfillWindow ({}s): split it into smaller windows",
                span.as_secs(),
                max_window.as_secs()
            ),
        ));
    }
    Ok(BackfillRequest {
        id: pairs["id"].to_string(),
        from,
        to,
    })
}

/// What a cursor value is, for the check that a new one has the type of the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CursorKind {
    Number,
    Time,
}

fn cursor_kind(value: &str) -> Option<CursorKind> {
    if value.parse::<u64>().is_ok() {
        Some(CursorKind::Number)
    } else if value.parse::<Timestamp>().is_ok() {
        Some(CursorKind::Time)
    } else {
        None
    }
}

/// Checks a cursor request: an Incremental flow; for OData and REST a number or an RFC 3339
/// time (not in the future), of the same type as the cursor in place; for files a file name.
pub fn check_cursor(
    value: &str,
    now: Timestamp,
    source: SourceFacts<'_>,
) -> Result<CursorRequest, Refusal> {
    const INVALID: &str = "CursorInvalid";
    let pairs = pairs(value, &["id", "value"], INVALID)?;
    let cursor = pairs["value"];
    if source.sync_mode != SyncMode::Incremental {
        return Err(refuse(
            "CursorUnsupported",
            "only an Incremental flow reads from a cursor (a full refresh reads everything, an event flow its capture stream)",
        ));
    }
    if source.protocol == Some(Protocol::Files) {
        let name_ok = (1..=255).contains(&cursor.len())
            && cursor != "."
            && cursor != ".."
            && !cursor
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control());
        if !name_ok {
            return Err(refuse(
                INVALID,
                "a Files source's cursor is the name of the last file read: 1 to 255 characters, no '/' or control characters",
            ));
        }
    } else {
        let Some(kind) = cursor_kind(cursor) else {
            return Err(refuse(
                INVALID,
                format!(
                    "value={:?} is neither a number nor an RFC 3339 time: the cursor is a value of source.cursorField",
                    truncated(cursor)
                ),
            ));
        };
        let field_kind = source.cursor_is_time.map(|time| {
            if time {
                CursorKind::Time
            } else {
                CursorKind::Number
            }
        });
        if let Some(current) = field_kind.or_else(|| source.cursor.and_then(cursor_kind))
            && current != kind
        {
            return Err(refuse(
                INVALID,
                format!(
                    "value={:?} is a {}, but the flow's cursor is a {}",
                    truncated(cursor),
                    if kind == CursorKind::Time {
                        "time"
                    } else {
                        "number"
                    },
                    if current == CursorKind::Time {
                        "time"
                    } else {
                        "number"
                    },
                ),
            ));
        }
        if kind == CursorKind::Time && cursor.parse::<Timestamp>().is_ok_and(|t| t > now) {
            return Err(refuse(
                INVALID,
                format!(
                    "value={cursor} is in the future: every change until then would be skipped"
                ),
            ));
        }
    }
    Ok(CursorRequest {
        id: pairs["id"].to_string(),
        value: cursor.to_string(),
    })
}

/// What status shows of the three operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reports {
    pub replay: Option<ReplayStatus>,
    pub backfill: Option<BackfillStatus>,
    pub cursor_change: Option<CursorChangeStatus>,
    /// `OperationsAccepted`: whether the last request handled was accepted (False naming it
    /// and its reason when refused); absent on a flow that never had one.
    pub accepted: Option<Desired>,
}

impl Reports {
    /// What the flow's status says now.
    pub fn previous(flow: &IntegrationFlow) -> Reports {
        let status = flow.status.clone().unwrap_or_default();
        let accepted = status
            .conditions
            .iter()
            .find(|c| c.type_ == ACCEPTED)
            .map(|c| Desired::new(ACCEPTED, c.status == "True", &c.reason, &c.message));
        Reports {
            replay: status.replay,
            backfill: status.backfill,
            cursor_change: status.cursor_change,
            accepted,
        }
    }

    /// The `OperationsAccepted` condition.
    pub fn condition(&self) -> Option<Desired> {
        self.accepted.clone()
    }

    fn handled(
        &mut self,
        annotation: &str,
        value: &str,
        state: OperationState,
        reason: Option<&str>,
        message: &str,
    ) {
        self.accepted = Some(if state == OperationState::Refused {
            Desired::new(
                ACCEPTED,
                false,
                reason.unwrap_or_default(),
                format!("{annotation}={value} refused: {message}"),
            )
        } else {
            Desired::new(
                ACCEPTED,
                true,
                "Accepted",
                format!("{annotation}={value} accepted"),
            )
        });
    }
}

/// Type of the condition saying whether the last request was accepted.
const ACCEPTED: &str = "OperationsAccepted";

fn backfill_status(record: &BackfillRecord) -> BackfillStatus {
    BackfillStatus {
        id: record.id.clone(),
        from: Some(record.from.clone()),
        to: Some(record.to.clone()),
        state: match record.state {
            BackfillState::Requested => OperationState::Requested,
            BackfillState::Done => OperationState::Done,
            BackfillState::Failed => OperationState::Failed,
        },
        reason: None,
        message: record.message.clone(),
        read: record.read,
        published: record.published,
        duplicates: record.duplicates,
        dead_lettered: record.dead_lettered,
    }
}

/// Handles the replay, backfill and cursor annotations whose values differ from those
/// acknowledged in `acknowledged` (and acknowledges them there), and follows a requested
/// backfill to its outcome. A request that failed for want of NATS is retried on the next
/// pass; a refused one is not.
pub async fn handle(
    flow: &IntegrationFlow,
    ctx: &Context,
    names: &QueueNames,
    source: SourceFacts<'_>,
    acknowledged: &mut BTreeMap<String, String>,
) -> Reports {
    let mut reports = Reports::previous(flow);
    let annotations = flow.metadata.annotations.clone().unwrap_or_default();
    let now = Timestamp::now();
    let new = |key: &str| {
        annotations
            .get(key)
            .filter(|value| {
                acknowledged.get(key.trim_start_matches("flowplane.io/")) != Some(*value)
            })
            .cloned()
    };
    let (replay_value, backfill_value, cursor_value) = (
        new(REPLAY_ANNOTATION),
        new(BACKFILL_ANNOTATION),
        new(CURSOR_ANNOTATION),
    );

    if let Some(value) = replay_value {
        let retention = parse_duration(&flow.spec.delivery.retention).unwrap_or(Duration::MAX);
        let outcome = match check_replay(&value, now, retention) {
            Err(refusal) => Ok(ReplayStatus {
                id: id_of(&value),
                from: None,
                state: OperationState::Refused,
                reason: Some(refusal.reason.to_string()),
                message: Some(refusal.message),
                replayed: 0,
                duplicates: 0,
            }),
            Ok(request) => replay(
                &ctx.jetstream,
                names,
                &request.id,
                request.from.as_nanosecond(),
            )
            .await
            .map(|report| ReplayStatus {
                id: request.id.clone(),
                from: Some(request.from.to_string()),
                state: OperationState::Done,
                reason: None,
                message: Some(format!(
                    "{} records the stream stored at or after {} sent to the workers again; {} copies of earlier replays left out",
                    report.replayed, request.from, report.skipped
                )),
                replayed: report.replayed,
                duplicates: report.duplicates,
            })
            .map_err(|e| e.to_string()),
        };
        if let Some(status) = conclude(
            flow,
            ctx,
            acknowledged,
            REPLAY_ANNOTATION,
            &value,
            outcome,
            |s| (s.state, s.message.clone()),
        )
        .await
        {
            reports.handled(
                REPLAY_ANNOTATION,
                &value,
                status.state,
                status.reason.as_deref(),
                status.message.as_deref().unwrap_or_default(),
            );
            reports.replay = Some(status);
        }
    }

    if let Some(value) = backfill_value {
        let max_window = flow
            .spec
            .source
            .max_backfill_window
            .as_deref()
            .and_then(|w| parse_duration(w).ok())
            .or_else(|| parse_duration(DEFAULT_MAX_BACKFILL_WINDOW).ok())
            .unwrap_or(Duration::ZERO);
        let outcome = match check_backfill(&value, now, max_window, source) {
            Err(refusal) => Ok(BackfillStatus {
                id: id_of(&value),
                from: None,
                to: None,
                state: OperationState::Refused,
                reason: Some(refusal.reason.to_string()),
                message: Some(refusal.message),
                read: 0,
                published: 0,
                duplicates: 0,
                dead_lettered: 0,
            }),
            Ok(request) => {
                let record = BackfillRecord {
                    id: request.id.clone(),
                    from: request.from.to_string(),
                    to: request.to.to_string(),
                    state: BackfillState::Requested,
                    read: 0,
                    published: 0,
                    duplicates: 0,
                    dead_lettered: 0,
                    message: None,
                };
                request_backfill(&ctx.jetstream, names, &record)
                    .await
                    .map(|record| backfill_status(&record))
                    .map_err(|e| e.to_string())
            }
        };
        if let Some(status) = conclude(
            flow,
            ctx,
            acknowledged,
            BACKFILL_ANNOTATION,
            &value,
            outcome,
            |s| (s.state, s.message.clone()),
        )
        .await
        {
            reports.handled(
                BACKFILL_ANNOTATION,
                &value,
                status.state,
                status.reason.as_deref(),
                status.message.as_deref().unwrap_or_default(),
            );
            reports.backfill = Some(status);
        }
    }
    // A requested backfill: its outcome, once the worker recorded it.
    if let Some(waiting) = reports
        .backfill
        .as_ref()
        .filter(|b| b.state == OperationState::Requested)
        && let Ok(store) = bucket(&ctx.jetstream, names).await
        && let Ok(Some(record)) = read_backfill(&store, &waiting.id).await
    {
        reports.backfill = Some(backfill_status(&record));
    }

    if let Some(value) = cursor_value {
        let outcome = match check_cursor(&value, now, source) {
            Err(refusal) => Ok(CursorChangeStatus {
                id: id_of(&value),
                value: None,
                previous: None,
                state: OperationState::Refused,
                reason: Some(refusal.reason.to_string()),
                message: Some(refusal.message),
            }),
            Ok(request) => set_cursor(&ctx.jetstream, names, &request.value)
                .await
                .map(|previous| CursorChangeStatus {
                    message: Some(format!(
                        "cursor set to {} (was {}) by request {}",
                        request.value,
                        previous
                            .as_deref()
                            .unwrap_or("none: the start of the source"),
                        request.id
                    )),
                    id: request.id,
                    value: Some(request.value),
                    previous,
                    state: OperationState::Done,
                    reason: None,
                })
                .map_err(|e| e.to_string()),
        };
        if let Some(status) = conclude(
            flow,
            ctx,
            acknowledged,
            CURSOR_ANNOTATION,
            &value,
            outcome,
            |s| (s.state, s.message.clone()),
        )
        .await
        {
            reports.handled(
                CURSOR_ANNOTATION,
                &value,
                status.state,
                status.reason.as_deref(),
                status.message.as_deref().unwrap_or_default(),
            );
            reports.cursor_change = Some(status);
        }
    }
    reports
}

/// Acknowledges a handled (or refused) request with an event saying what happened, or leaves
/// it unacknowledged after a failure (event `OperationFailed`), to be retried.
async fn conclude<S>(
    flow: &IntegrationFlow,
    ctx: &Context,
    acknowledged: &mut BTreeMap<String, String>,
    annotation: &str,
    value: &str,
    outcome: Result<S, String>,
    summary: impl Fn(&S) -> (OperationState, Option<String>),
) -> Option<S> {
    let publish = |kind, reason: &'static str, note: String| async move {
        crate::controller::publish_event(ctx, flow, kind, reason, note).await;
    };
    match outcome {
        Ok(status) => {
            let (state, message) = summary(&status);
            let message = message.unwrap_or_default();
            let (kind, reason) = match state {
                OperationState::Refused => (EventType::Warning, "OperationRefused"),
                _ if annotation == CURSOR_ANNOTATION => (EventType::Normal, "CursorSet"),
                _ => (EventType::Normal, "OperationHandled"),
            };
            publish(kind, reason, format!("{annotation}={value}: {message}")).await;
            acknowledged.insert(
                annotation.trim_start_matches("flowplane.io/").to_string(),
                value.to_string(),
            );
            Some(status)
        }
        Err(e) => {
            publish(
                EventType::Warning,
                "OperationFailed",
                format!("{annotation}={value}: {e}"),
            )
            .await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-30T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn week() -> Duration {
        Duration::from_secs(168 * 3600)
    }

    fn odata(cursor: Option<&str>) -> SourceFacts<'_> {
        SourceFacts {
            sync_mode: SyncMode::Incremental,
            has_cursor_field: true,
            protocol: Some(Protocol::OData),
            cursor,
            cursor_is_time: None,
        }
    }

    #[test]
    fn a_replay_starts_within_the_retention_and_not_in_the_future() {
        let ok = check_replay("id=r1,from=2026-11-30T08:00:00Z", now(), week()).unwrap();
        assert_eq!(ok.id, "r1");
        assert_eq!(ok.from.to_string(), "2026-11-30T08:00:00Z");
        let reason = |v: &str| check_replay(v, now(), week()).unwrap_err().reason;
        assert_eq!(
            reason("id=r1,from=2999-01-01T00:00:00Z"),
            "ReplayFromInFuture"
        );
        assert_eq!(
            reason("id=r1,from=1970-01-01T00:00:00Z"),
            "ReplayBeyondRetention"
        );
        assert_eq!(reason("id=r1,from=yesterday"), "ReplayInvalid");
        assert_eq!(reason("from=2026-11-30T08:00:00Z"), "ReplayInvalid");
        assert_eq!(
            reason("id=r1,id=r2,from=2026-11-30T08:00:00Z"),
            "ReplayInvalid"
        );
        assert_eq!(reason("id=a.b,from=2026-11-30T08:00:00Z"), "ReplayInvalid");
        assert_eq!(
            reason("id=r1,from=2026-11-30T08:00:00Z,to=x"),
            "ReplayInvalid"
        );
    }

    #[test]
    fn a_backfill_window_is_bounded_and_in_the_past() {
        let max = Duration::from_secs(744 * 3600);
        let ok = check_backfill(
            "id=b1,from=2024-01-01T00:00:00Z,to=2024-01-02T00:00:00Z",
            now(),
            max,
            odata(Some("2024-03-01T00:00:00Z")),
        )
        .unwrap();
        assert_eq!(
            (ok.from.to_string(), ok.to.to_string()),
            ("2024-01-01T00:00:00Z".into(), "2024-01-02T00:00:00Z".into())
        );
        let refusal = |v: &str, facts| check_backfill(v, now(), max, facts).unwrap_err();
        let too_big = refusal(
            "id=b1,from=2024-01-01T00:00:00Z,to=2025-01-01T00:00:00Z",
            odata(None),
        );
        assert_eq!(too_big.reason, "BackfillWindowTooLarge");
        assert!(too_big.message.contains("2678400s"), "{}", too_big.message);
        for (value, reason) in [
            (
                "id=b1,from=2026-12-01T00:00:00Z,to=2026-12-02T00:00:00Z",
                "BackfillWindowInFuture",
            ),
            (
                "id=b1,from=2024-01-02T00:00:00Z,to=2024-01-01T00:00:00Z",
                "BackfillInvalid",
            ),
            (
                "id=b1,from=1969-12-31T00:00:00Z,to=1970-01-01T00:00:00Z",
                "BackfillInvalid",
            ),
            (
                "id=b1,from=0001-01-01T00:00:00Z,to=0001-01-02T00:00:00Z",
                "BackfillInvalid",
            ),
            (
                "id=b1,from=2024-01-01,to=2024-01-02T00:00:00Z",
                "BackfillInvalid",
            ),
        ] {
            assert_eq!(refusal(value, odata(None)).reason, reason, "{value}");
        }
        let window = "id=b1,from=2024-01-01T00:00:00Z,to=2024-01-02T00:00:00Z";
        assert_eq!(
            refusal(window, odata(Some("42"))).reason,
            "BackfillUnsupported"
        );
        let files = SourceFacts {
            protocol: Some(Protocol::Files),
            ..odata(None)
        };
        assert_eq!(refusal(window, files).reason, "BackfillUnsupported");
        let full = SourceFacts {
            sync_mode: SyncMode::FullRefresh,
            ..odata(None)
        };
        assert_eq!(refusal(window, full).reason, "BackfillUnsupported");
    }

    #[test]
    fn a_cursor_has_the_type_of_the_cursor_in_place() {
        let time = Some("2024-01-01T00:00:00.099Z");
        let ok = check_cursor("id=c1,value=2024-01-01T00:00:00.050Z", now(), odata(time)).unwrap();
        assert_eq!(ok.value, "2024-01-01T00:00:00.050Z");
        let reason = |v: &str, facts| check_cursor(v, now(), facts).unwrap_err();
        let wrong = reason("id=c1,value=42", odata(time));
        assert_eq!(wrong.reason, "CursorInvalid");
        assert!(
            wrong
                .message
                .contains("is a number, but the flow's cursor is a time"),
            "{}",
            wrong.message
        );
        assert_eq!(
            reason("id=c1,value=2024-01-01T00:00:00Z", odata(Some("7"))).reason,
            "CursorInvalid"
        );
        assert_eq!(
            reason("id=c1,value=0 or 1 eq 1", odata(None)).reason,
            "CursorInvalid"
        );
        assert_eq!(
            reason("id=c1,value=2999-01-01T00:00:00Z", odata(None)).reason,
            "CursorInvalid"
        );
        // The contract's type of the cursor field decides, also behind a delta link.
        let typed = SourceFacts {
            cursor_is_time: Some(true),
            ..odata(Some("delta:http://x/S?$deltatoken=1"))
        };
        assert_eq!(reason("id=c1,value=42", typed).reason, "CursorInvalid");
        // Any type while the cursor is a delta link or unset and the contract does not say.
        assert!(
            check_cursor(
                "id=c1,value=42",
                now(),
                odata(Some("delta:http://x/S?$deltatoken=1"))
            )
            .is_ok()
        );
        let files = SourceFacts {
            protocol: Some(Protocol::Files),
            ..odata(None)
        };
        assert!(check_cursor("id=c1,value=orders-0042.csv", now(), files).is_ok());
        assert_eq!(reason("id=c1,value=../etc", files).reason, "CursorInvalid");
        let events = SourceFacts {
            sync_mode: SyncMode::Events,
            ..odata(None)
        };
        assert_eq!(reason("id=c1,value=42", events).reason, "CursorUnsupported");
    }

    #[test]
    fn the_condition_says_whether_the_last_request_was_accepted() {
        let mut reports = Reports::default();
        assert!(reports.condition().is_none());
        reports.handled(
            REPLAY_ANNOTATION,
            "id=r1,from=x",
            OperationState::Refused,
            Some("ReplayInvalid"),
            "bad",
        );
        let condition = reports.condition().unwrap();
        assert!(!condition.status);
        assert_eq!(condition.reason, "ReplayInvalid");
        assert_eq!(
            condition.message,
            "flowplane.io/replay=id=r1,from=x refused: bad"
        );
        reports.handled(
            CURSOR_ANNOTATION,
            "id=c1,value=1",
            OperationState::Done,
            None,
            "set",
        );
        assert!(reports.condition().unwrap().status);
    }
}
