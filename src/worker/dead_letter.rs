//! Dead-lettering: the original record (body and headers) goes to the flow's dead-letter
//! stream with the reason, the detail and the stage; only once JetStream has stored it is the
//! original terminated, so a record is never in neither place.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};

use super::transform::Reason;
use crate::queue::{QueueNames, headers};

/// Moves `message` to the dead-letter stream and terminates it in the flow's consumer.
pub async fn dead_letter(
    js: &jetstream::Context,
    names: &QueueNames,
    message: &jetstream::Message,
    reason: Reason,
    stage: &str,
    detail: &str,
) -> anyhow::Result<()> {
    let mut entry = HeaderMap::new();
    if let Some(original) = &message.headers {
        // A record stored before the envelope header keeps its separate ones.
        for name in [
            headers::MSG_ID,
            headers::TRACEPARENT,
            headers::RECORD,
            headers::KEY,
            headers::SOURCE_VERSION,
        ] {
            if let Some(value) = original.get(name) {
                entry.insert(name, value.as_str());
            }
        }
    }
    entry.insert(headers::REASON, reason.as_str());
    // Header values are one line; details can quote record values.
    let detail: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    entry.insert(headers::DETAIL, detail.as_str());
    entry.insert(headers::STAGE, stage);
    entry.insert(headers::ORIGINAL_SUBJECT, message.subject.as_str());
    if let Ok(info) = message.info() {
        entry.insert(
            headers::ORIGINAL_SEQUENCE,
            info.stream_sequence.to_string().as_str(),
        );
        entry.insert(headers::DELIVERIES, info.delivered.to_string().as_str());
    }
    js.publish_with_headers(
        names.dead_letter_subject.clone(),
        entry,
        message.payload.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("publishing dead letter: {e}"))?
    .await
    .map_err(|e| anyhow::anyhow!("dead letter not stored: {e}"))?;
    message
        .ack_with(AckKind::Term)
        .await
        .map_err(|e| anyhow::anyhow!("terminating dead-lettered record: {e}"))?;
    Ok(())
}
