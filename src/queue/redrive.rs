//! Listing and redriving a flow's dead letters. A dead letter keeps the original record (body)
//! and its original headers plus the reason; redrive publishes it back to the subject it came
//! from with a fresh deduplication id (the original id may still be inside the dedupe window)
//! and then deletes it from the dead-letter stream. A crash between the two redrives it twice;
//! delivery is conditional on the source version, so the second copy changes nothing.

use async_nats::HeaderMap;
use async_nats::jetstream;
use serde::Serialize;

use super::QueueNames;
use super::headers::{self, Envelope};
use super::jetstream::{QueueError, dead_letter_stream, stream_error};

/// One dead letter as `flowplane dlq list` shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Sequence in the dead-letter stream.
    pub sequence: u64,
    /// Short reason, e.g. `UnmappedCode`.
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
    /// Stage that gave up on the record.
    pub stage: String,
    /// Times the record was delivered to a worker before it was dead-lettered.
    pub deliveries: u64,
    /// Primary key of the record.
    pub key: String,
    /// The record's correlation id, as log lines show it (`headers::trace_id`).
    pub trace_id: String,
    /// The original record.
    pub record: serde_json::Value,
}

/// What a redrive did.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    /// Dead letters published back to the flow's stream (and removed from the DLQ).
    pub redriven: u64,
    /// Dead letters left alone because their reason did not match.
    pub skipped: u64,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// Walks the dead-letter stream from its first to its last message (as of the call).
async fn for_each_dead_letter<F, Fut>(
    js: &jetstream::Context,
    names: &QueueNames,
    mut visit: F,
) -> Result<(), QueueError>
where
    F: FnMut(jetstream::message::StreamMessage) -> Fut,
    Fut: std::future::Future<Output = Result<(), QueueError>>,
{
    let Some(stream) = dead_letter_stream(js, names).await? else {
        return Ok(());
    };
    let state = stream.cached_info().state.clone();
    if state.messages == 0 {
        return Ok(());
    }
    for sequence in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(sequence).await {
            Ok(message) => visit(message).await?,
            // Deleted (already redriven) or expired: nothing to do.
            Err(_) => continue,
        }
    }
    Ok(())
}

/// The flow's dead letters, oldest first, optionally only those with reason `reason`.
pub async fn list_dead_letters(
    js: &jetstream::Context,
    names: &QueueNames,
    reason: Option<&str>,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut letters = Vec::new();
    for_each_dead_letter(js, names, |message| {
        let letter = DeadLetter {
            sequence: message.sequence,
            reason: header(&message.headers, headers::REASON),
            detail: header(&message.headers, headers::DETAIL),
            stage: header(&message.headers, headers::STAGE),
            deliveries: header(&message.headers, headers::DELIVERIES)
                .parse()
                .unwrap_or(0),
            key: Envelope::of(Some(&message.headers)).key.to_string(),
            trace_id: headers::trace_id_of(Some(&message.headers)),
            record: serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
            }),
        };
        if reason.is_none_or(|r| r == letter.reason) {
            letters.push(letter);
        }
        async { Ok(()) }
    })
    .await?;
    Ok(letters)
}

/// Moves dead letters back to the flow's stream: all of them, or those whose reason is
/// `reason`. This is what the `flowplane.io/redrive` annotation and `flowplane dlq redrive` do.
pub async fn redrive(
    js: &jetstream::Context,
    names: &QueueNames,
    reason: Option<&str>,
) -> Result<RedriveReport, QueueError> {
    let mut report = RedriveReport::default();
    let Some(dead_letters) = dead_letter_stream(js, names).await? else {
        return Ok(report);
    };
    let mut moved = Vec::new();
    for_each_dead_letter(js, names, |message| {
        let matches = reason.is_none_or(|r| header(&message.headers, headers::REASON) == r);
        if matches {
            moved.push(message);
        } else {
            report.skipped += 1;
        }
        async { Ok(()) }
    })
    .await?;
    for message in moved {
        let mut republished = headers::for_copy_of(&message.headers);
        let original_id = header(&message.headers, headers::MSG_ID);
        republished.insert(
            headers::MSG_ID,
            // From the record's identity, so a copy redriven again has one suffix, not two.
            format!(
                "{}/redrive/{}",
                headers::record_identity(&original_id),
                message.sequence
            )
            .as_str(),
        );
        let subject = match header(&message.headers, headers::ORIGINAL_SUBJECT) {
            s if s.starts_with(&names.subject) => s,
            _ => super::jetstream::partition_subject(names, 0),
        };
        js.publish_with_headers(subject, republished, message.payload.clone())
            .await
            .map_err(|e| stream_error(&names.stream, e))?
            .await
            .map_err(|e| stream_error(&names.stream, e))?;
        dead_letters
            .delete_message(message.sequence)
            .await
            .map_err(|e| stream_error(&names.dead_letter_stream, e))?;
        report.redriven += 1;
    }
    Ok(report)
}
