//! Message headers a flow's records and dead letters carry. Shared by the worker, redrive and
//! anyone reading the streams with the `nats` CLI.

use async_nats::HeaderMap;
use sha2::{Digest, Sha256};

/// JetStream's deduplication id: the record's idempotency key (primary key + source version).
pub const MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context, which records stored before the correlation id was derived from the
/// record's identity ([`trace_id`]) carry: their trace id is theirs. Nothing writes it any more.
pub const TRACEPARENT: &str = "traceparent";
/// The record's [`Envelope`], one header: `v=<version> [r=<read at>] [c=<changed at>] k=<key>`.
pub const RECORD: &str = "Flowplane-Record";
/// Before [`RECORD`], each envelope field had a header of its own. Records stored that way are
/// still read (a stream outlives a worker upgrade); nothing writes them any more.
pub const KEY: &str = "Flowplane-Key";
/// See [`KEY`].
pub const SOURCE_VERSION: &str = "Flowplane-Source-Version";
/// See [`KEY`].
pub const CHANGED_AT: &str = "Flowplane-Changed-At";
/// See [`KEY`].
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

/// The headers every record carries, as header names: a `&str` name is validated and copied
/// at every insert and lookup, which the per-record paths should not pay.
pub mod names {
    use async_nats::HeaderName;

    pub const MSG_ID: HeaderName = HeaderName::from_static(super::MSG_ID);
    pub const RECORD: HeaderName = HeaderName::from_static(super::RECORD);
}

/// The identity a stored record was published with: its `Nats-Msg-Id` without the suffix a
/// redrive adds (`<identity>/redrive/<dead-letter sequence>`), so a record and its redriven
/// copies replay as one and share one correlation id.
pub fn record_identity(msg_id: &str) -> &str {
    match msg_id.rsplit_once("/redrive/") {
        Some((identity, sequence))
            if !sequence.is_empty() && sequence.bytes().all(|b| b.is_ascii_digit()) =>
        {
            identity
        }
        _ => msg_id,
    }
}

/// A record's correlation id, what log lines show as `trace_id` and `flowplane dlq list` as
/// `traceId`: 32 hex digits of the SHA-256 of its [`record_identity`], so extraction, delivery,
/// a dead letter and every redriven or replayed copy of one record version share it without
/// carrying it. Records stored with a W3C `traceparent` header (before this) keep that
/// header's trace id.
///
/// Derived, not carried: a `traceparent` header was 55 of a record's ~230 header bytes and cost
/// the transport 9% of its throughput (BENCHMARKS.md), for an id that only correlates, since the
/// worker exports no spans. A digest rather than the identity itself, because an event's
/// identity is its publisher's message id, of any length and any characters.
pub fn trace_id(msg_id: &str, legacy_traceparent: Option<&str>) -> String {
    if let Some(trace) = legacy_traceparent.and_then(|tp| tp.split('-').nth(1)) {
        return trace.to_string();
    }
    // A replay's copy (`<identity>/replay/<request id>`) shares it too; a publisher's id that
    // merely contains the word would share one with another record: that joins log lines,
    // nothing else.
    let identity = msg_id
        .rsplit_once("/replay/")
        .map_or(msg_id, |(record, _)| record);
    let digest = Sha256::digest(record_identity(identity).as_bytes());
    hex::encode(&digest[..16])
}

/// [`trace_id`] of a message's headers.
pub fn trace_id_of(headers: Option<&HeaderMap>) -> String {
    let value = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    trace_id(value(MSG_ID).unwrap_or(""), value(TRACEPARENT))
}

/// What a flow's record carries besides its body and identity, in one header ([`RECORD`]):
/// each header costs the worker a parse and allocations per record and nats-server a larger
/// message, and four separate ones were about a quarter of the worker's CPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The record's primary key, as `value/value/...` in primary-key order.
    pub key: &'a str,
    /// The record's source version (a number that grows with each change of the key).
    pub version: u64,
    /// When the extractor read the record, Unix milliseconds.
    pub read_at: Option<i64>,
    /// When the record changed at the source, Unix milliseconds: its cursor field's value when
    /// that is a timestamp (RFC 3339 or OData v2 `/Date(ms)/`), else, for an event, when the
    /// capture stream stored it. `None` when the source gives no change time.
    pub changed_at: Option<i64>,
}

impl<'a> Envelope<'a> {
    /// The header value. The key goes last, so that it may hold any character a header may.
    pub fn to_header(&self) -> String {
        use std::fmt::Write;
        // Sized once: the numbers take at most 20 digits each.
        let mut value = String::with_capacity(72 + self.key.len());
        let _ = write!(value, "v={}", self.version);
        if let Some(ms) = self.read_at {
            let _ = write!(value, " r={ms}");
        }
        if let Some(ms) = self.changed_at {
            let _ = write!(value, " c={ms}");
        }
        let _ = write!(value, " k={}", self.key);
        value
    }

    /// Reads a [`RECORD`] value; `None` when it is not one.
    pub fn parse(value: &'a str) -> Option<Envelope<'a>> {
        let mut envelope = Envelope::default();
        let mut rest = value;
        loop {
            if let Some(key) = rest.strip_prefix("k=") {
                envelope.key = key;
                return Some(envelope);
            }
            let (field, after) = rest.split_once(' ')?;
            let (name, number) = field.split_once('=')?;
            match name {
                "v" => envelope.version = number.parse().ok()?,
                "r" => envelope.read_at = Some(number.parse().ok()?),
                "c" => envelope.changed_at = Some(number.parse().ok()?),
                _ => return None,
            }
            rest = after;
        }
    }

    /// A record message's envelope: its [`RECORD`] header, else the separate headers records
    /// stored before it carry; empty fields where neither says.
    pub fn of(headers: Option<&'a HeaderMap>) -> Envelope<'a> {
        let Some(headers) = headers else {
            return Envelope::default();
        };
        if let Some(envelope) = headers
            .get(names::RECORD)
            .and_then(|v| Envelope::parse(v.as_str()))
        {
            return envelope;
        }
        let value = |name: &str| headers.get(name).map(|v| v.as_str());
        Envelope {
            key: value(KEY).unwrap_or(""),
            version: value(SOURCE_VERSION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            read_at: value(READ_AT).and_then(|v| v.parse().ok()),
            changed_at: value(CHANGED_AT).and_then(|v| v.parse().ok()),
        }
    }

    /// The same record without its times: what a redriven or replayed copy carries (its wait
    /// in the dead-letter stream, or since its first delivery, is not latency).
    pub fn untimed(self) -> Envelope<'a> {
        Envelope {
            read_at: None,
            changed_at: None,
            ..self
        }
    }
}

/// The headers a copy of a stored record starts from when it is published again (redrive,
/// replay): its key and version, without times, and a `traceparent` if it was stored with one;
/// the caller adds the copy's own `Nats-Msg-Id`.
pub fn for_copy_of(original: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::new();
    if let Some(value) = original.get(TRACEPARENT) {
        copy.insert(TRACEPARENT, value.as_str());
    }
    let envelope = Envelope::of(Some(original)).untimed();
    copy.insert(names::RECORD, envelope.to_header().as_str());
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_reads_back_as_written_whatever_its_key_holds() {
        for key in ["1000001/10", "", "with space/and k= inside", "k=1 v=2"] {
            let envelope = Envelope {
                key,
                version: 42,
                read_at: Some(1_764_547_200_000),
                changed_at: None,
            };
            assert_eq!(Envelope::parse(&envelope.to_header()), Some(envelope));
            let untimed = envelope.untimed();
            assert_eq!(untimed.to_header(), format!("v=42 k={key}"));
            assert_eq!(Envelope::parse(&untimed.to_header()), Some(untimed));
        }
        let changed = Envelope {
            key: "A",
            version: 7,
            read_at: Some(2),
            changed_at: Some(1),
        };
        assert_eq!(changed.to_header(), "v=7 r=2 c=1 k=A");
        assert_eq!(Envelope::parse("v=7 r=2 c=1 k=A"), Some(changed));
    }

    #[test]
    fn a_copy_has_the_identity_and_the_trace_id_of_its_record() {
        assert_eq!(record_identity("4711/10@5/redrive/17"), "4711/10@5");
        assert_eq!(record_identity("4711/10@5"), "4711/10@5");
        // A key that merely contains the word is left alone.
        assert_eq!(record_identity("a/redrive/b@5"), "a/redrive/b@5");
        assert_eq!(record_identity("a@5/redrive/"), "a@5/redrive/");
        let trace = trace_id("4711/10@5", None);
        assert_eq!(trace.len(), 32);
        assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(trace_id("4711/10@5/redrive/17", None), trace);
        assert_eq!(trace_id("4711/10@5/replay/r1/redrive/3", None), trace);
        assert_ne!(trace_id("4711/10@6", None), trace);
        let legacy = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        assert_eq!(
            trace_id("4711/10@5", Some(legacy)),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, "4711/10@5/replay/r1");
        assert_eq!(trace_id_of(Some(&headers)), trace);
        headers.insert(TRACEPARENT, legacy);
        assert_eq!(
            trace_id_of(Some(&headers)),
            "0af7651916cd43dd8448eb211c80319c"
        );
    }

    #[test]
    fn a_value_that_is_not_an_envelope_is_refused_not_guessed() {
        for value in ["", "v=1", "v=x k=A", "q=1 k=A", "v=1 r= k=A", "garbage"] {
            assert_eq!(Envelope::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn records_stored_before_the_envelope_header_are_read_from_their_own_headers() {
        let mut legacy = HeaderMap::new();
        legacy.insert(KEY, "1000001/10");
        legacy.insert(SOURCE_VERSION, "3");
        legacy.insert(READ_AT, "5");
        assert_eq!(
            Envelope::of(Some(&legacy)),
            Envelope {
                key: "1000001/10",
                version: 3,
                read_at: Some(5),
                changed_at: None,
            }
        );
        let mut both = legacy.clone();
        both.insert(RECORD, "v=4 k=B");
        assert_eq!(Envelope::of(Some(&both)).key, "B");
        assert_eq!(Envelope::of(None), Envelope::default());
    }
}
