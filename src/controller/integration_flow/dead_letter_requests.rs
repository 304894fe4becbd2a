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
use kube::runtime::reflector::{ObjectRef, Store};

use super::{in_region, queue_policy};
use crate::api::IntegrationFlow;
use crate::controller::{Context, publish_event};
use crate::queue::QueueNames;
use crate::queue::dead_letter_requests::{Answer, DEAD_LETTER_REQUESTS, requested_stream};
use crate::queue::jetstream::{dead_letter_stream, ensure_dead_letter_stream};
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
                        answer(&ctx, &client, &flows, request)
                    })
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "cannot take requests for dead-letter streams"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn answer(
    ctx: &Context,
    client: &async_nats::Client,
    flows: &Store<IntegrationFlow>,
    request: async_nats::Message,
) {
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
            "the flow's dead-letter stream is in place for its workers"
        );
    }
    let answer = Answer { error: made.err() };
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    if let Err(e) = client.publish(reply, body.into()).await {
        tracing::debug!(error = %e, "could not answer a request for a dead-letter stream");
    }
}

/// The flow whose stream is `stream`, looked up directly: a request costs no scan of every
/// flow, however many a flow's user sends.
fn flow_of_stream(flows: &Store<IntegrationFlow>, stream: &str) -> Option<Arc<IntegrationFlow>> {
    let (namespace, name) = QueueNames::flow_of_stream(stream)?;
    flows.get(&ObjectRef::new(&name).within(&namespace))
}

async fn make(ctx: &Context, flow: &IntegrationFlow) -> Result<(), String> {
    if flow.metadata.deletion_timestamp.is_some() {
        return Err("the flow is being deleted".into());
    }
    let names = QueueNames::for_flow(&namespace(flow), &flow_name(flow));
    // Already there (another worker asked first): one cheap lookup, where creating it again
    // would have nats-server check it against every stream of the account. Its policy is the
    // flow's reconcile's to keep (`ensure_queue`).
    if dead_letter_stream(&ctx.jetstream, &names)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    // The stream's bounds are the flow's queue's; its ack limits unused.
    let policy = queue_policy(flow, ctx, 1)?;
    ensure_dead_letter_stream(&ctx.jetstream, &names, &policy)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;

    fn flow(ns: &str, name: &str) -> IntegrationFlow {
        let mut flow: IntegrationFlow = serde_json::from_value(serde_json::json!({
            "apiVersion": "flowplane.io/v1alpha1",
            "kind": "IntegrationFlow",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "source": {"bindingRef": "erp", "entity": "A", "syncMode": "Incremental"},
                "target": {"bindingRef": "fc", "entity": "/v1/x"},
                "contract": {"name": "c", "versions": "^1"}
            }
        }))
        .expect("a flow");
        flow.metadata.uid = Some(format!("{ns}/{name}"));
        flow
    }

    #[test]
    fn a_stream_name_finds_its_flow_and_no_other() {
        let (store, mut writer) = reflector::store();
        for (ns, name) in [
            ("team-a", "orders.daily"),
            ("team-a", "orders"),
            ("team-b", "x"),
        ] {
            writer.apply_watcher_event(&Event::Apply(flow(ns, name)));
        }
        let found = |stream: &str| flow_of_stream(&store, stream).map(|f| flow_name(&f));
        assert_eq!(
            found("FP_team-a_orders_daily").as_deref(),
            Some("orders.daily")
        );
        assert_eq!(found("FP_team-a_orders").as_deref(), Some("orders"));
        assert_eq!(found("FP_team-b_x").as_deref(), Some("x"));
        for unknown in [
            "FP_team-a_missing",
            "FP_team-c_x",
            "FP_team-a",
            "team-a_orders",
            "",
        ] {
            assert_eq!(found(unknown), None, "{unknown}");
        }
    }
}
