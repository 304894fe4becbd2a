//! Dead-lettering: the original record (body and headers) goes to the flow's dead-letter
//! stream with the reason, the detail and the stage; only once JetStream has stored it is the
//! original terminated, so a record is never in neither place.

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;

use super::transform::Reason;
use crate::queue::dead_letter_requests::ask_for_dead_letter_stream;
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
    store_dead_letter(js, names, entry, message.payload.clone()).await?;
    message
        .ack_with(AckKind::Term)
        .await
        .map_err(|e| anyhow::anyhow!("terminating dead-lettered record: {e}"))?;
    Ok(())
}

/// Stores one dead letter and returns JetStream's acknowledgement. A flow's dead-letter stream
/// is made on demand: its first dead letter finds none (no stream takes the subject), asks the
/// operator for it and is published again. Until the operator answers the call fails, and the
/// caller keeps the record (it waits in the flow's stream, or its page is read again).
pub async fn store_dead_letter(
    js: &jetstream::Context,
    names: &QueueNames,
    entry: HeaderMap,
    payload: Bytes,
) -> anyhow::Result<PublishAck> {
    let publish = |entry, payload| async {
        js.publish_with_headers(names.dead_letter_subject.clone(), entry, payload)
            .await?
            .await
    };
    match publish(entry.clone(), payload.clone()).await {
        Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
            ask_for_dead_letter_stream(&js.client(), names)
                .await
                .map_err(|e| anyhow::anyhow!("the flow has no dead-letter stream yet: {e}"))?;
            tracing::info!("the operator made the flow's dead-letter stream");
            publish(entry, payload)
                .await
                .map_err(|e| anyhow::anyhow!("dead letter not stored: {e}"))
        }
        stored => stored.map_err(|e| anyhow::anyhow!("dead letter not stored: {e}")),
    }
}
