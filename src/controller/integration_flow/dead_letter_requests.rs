//! The operator's side of dead-letter streams made on demand (`queue::dead_letter_requests`):
//! it answers a worker's request for its flow's dead-letter stream by making the stream with
//! the flow's policy. A request names the flow's stream; only the flow's own NATS user may send
//! it. Operators that do not manage the flow (another region, another watch scope, a flow
//! being deleted) stay silent or refuse; a failure is also a Warning event on the flow, as the
//! worker only logs it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;

use super::in_region;
use crate::api::IntegrationFlow;
use crate::controller::{Context, publish_event};
use crate::queue::QueueNames;
use crate::queue::dead_letter_requests::{Answer, DEAD_LETTER_REQUESTS, requested_stream};
use crate::queue::jetstream::{QueuePolicy, ensure_dead_letter_stream};
use crate::render::labels::{flow_name, namespace};

/// Requests answered at once: each is a stream creation, rare and short.
const CONCURRENT_REQUESTS: usize = 4;

/// Answers requests for as long as the operator runs; subscribes again when NATS was gone.
pub async fn serve(ctx: Arc<Context>, flows: Store<IntegrationFlow>) {
    let client = ctx.jetstream.client();
    loop {
        match client.subscribe(DEAD_LETTER_REQUESTS).await {
            Ok(requests) => {
                requests
                    .for_each_concurrent(CONCURRENT_REQUESTS, |request| {
                        answer(&ctx, &flows, request)
                    })
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "cannot take requests for dead-letter streams"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn answer(ctx: &Context, flows: &Store<IntegrationFlow>, request: async_nats::Message) {
    let Some(reply) = request.reply.clone() else {
        return;
    };
    let Some(flow) = requested_stream(request.subject.as_str())
        .and_then(|stream| flow_of_stream(flows, stream))
        .filter(|flow| in_region(flow, ctx.config.region.as_deref()))
    else {
        // Not a flow of this operator: another one may answer.
        return;
    };
    let made = make(ctx, &flow).await;
    if let Err(message) = &made {
        publish_event(
            ctx,
            &*flow,
            EventType::Warning,
            "DeadLetterStreamNotMade",
            format!("a worker has records to dead-letter, which wait: {message}"),
        )
        .await;
    } else {
        tracing::info!(
            namespace = namespace(&flow),
            flow = flow_name(&flow),
            "made the flow's dead-letter stream"
        );
    }
    let answer = Answer { error: made.err() };
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    if let Err(e) = ctx.jetstream.client().publish(reply, body.into()).await {
        tracing::debug!(error = %e, "could not answer a request for a dead-letter stream");
    }
}

/// The flow whose stream is `stream`. A scan of the operator's flows: requests are rare (one
/// per flow's first dead letter), and a flow's stream name cannot be turned back into its
/// namespace and name.
fn flow_of_stream(flows: &Store<IntegrationFlow>, stream: &str) -> Option<Arc<IntegrationFlow>> {
    flows
        .state()
        .into_iter()
        .find(|flow| QueueNames::for_flow(&namespace(flow), &flow_name(flow)).stream == stream)
}

async fn make(ctx: &Context, flow: &IntegrationFlow) -> Result<(), String> {
    if flow.metadata.deletion_timestamp.is_some() {
        return Err("the flow is being deleted".into());
    }
    // The stream's bounds are the flow's queue's; its ack limits unused.
    let policy = QueuePolicy::from_delivery(&flow.spec.delivery, 1, ctx.config.queue_defaults())
        .map_err(|e| format!("spec.{e}"))?;
    let names = QueueNames::for_flow(&namespace(flow), &flow_name(flow));
    ensure_dead_letter_stream(&ctx.jetstream, &names, &policy)
        .await
        .map_err(|e| e.to_string())
}
