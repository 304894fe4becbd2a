//! End-to-end, on a real nats-server of the test's own: an event-driven flow (warehouse events
//! on a NATS subject -> worker -> forecast simulator). Every event of a key arrives, in order,
//! under steady traffic that never lets an extraction pass end (issue 14: 116 of 200 events
//! were dropped as duplicates of an older event of their key); a republished event (same
//! `Nats-Msg-Id`) is applied once and counted as a duplicate; events published while no worker
//! runs wait in the capture stream and all arrive after the restart.

mod e2e_support;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use e2e_support::*;
use flowplane::api::connector_binding::{Protocol, System};
use flowplane::api::integration_flow::SyncMode;
use flowplane::queue::{QueueNames, ensure_capture};
use flowplane::sim::erp::ErpSeed;
use flowplane::worker::sample;
use flowplane::worker_config::WorkerConfig;
use futures::StreamExt;
use serde_json::json;

// How long the events may take to arrive after the last is published: ~2 s on a quiet box, but
// once more than 45 s in CI, where the three tests' nats-servers, simulators and workers share
// 2 cores (a deadline, not a speed claim: the figures asserted are exact either way).
const TIMEOUT: Duration = Duration::from_secs(90);
const KEYS: u32 = 50;

/// A stock-event flow: sales-order-line shaped events on `wms.<flow>.stock.<plant>`, no cursor
/// field (the order of events is the capture stream's), into the forecast simulator.
fn event_flow(nats_url: &str, forecast_url: &str, prefix: &str) -> WorkerConfig {
    let flow = unique_flow(prefix);
    let mut config = sample::sales_order_flow("e2e", &flow, nats_url, "unused", forecast_url);
    config.source.endpoint = sample::endpoint("wms", System::Warehouse, Protocol::Nats, nats_url);
    config.source.entity = format!("wms.{flow}.stock.>");
    config.source.sync_mode = SyncMode::Events;
    config.source.cursor_field = None;
    config
}

fn subject(config: &WorkerConfig) -> String {
    config.source.entity.replace('>', "1010")
}

/// Event `quantity` for key `order/10`.
fn event(order: u32, quantity: u32) -> bytes::Bytes {
    let mut line = sample::order_line("1010", &quantity.to_string());
    line["SalesOrder"] = json!(order.to_string());
    serde_json::to_vec(&line).unwrap().into()
}

fn key(order: u32) -> String {
    format!("{order}/10")
}

/// Waits until the extractor has its capture consumer: from then on nothing published is lost.
async fn capture_ready(js: &async_nats::jetstream::Context, config: &WorkerConfig) {
    let names = config.queue.clone();
    eventually(TIMEOUT, "the capture stream and consumer", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            js.get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                names.capture_consumer(),
                names.capture_stream(),
            )
            .await
            .ok()
            .map(|_| ())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_key_arrives_in_order_and_a_republished_one_once() {
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed::default()).await;
    let config = event_flow(&nats.url(), &sims.forecast_url, "events");
    let entity = config.target.entity.clone();
    let js = jetstream(&nats.url()).await;
    let client = support::nats_admin(&nats.url()).await;
    let worker = InProcessWorker::start(config.clone(), "events-a");
    capture_ready(&js, &config).await;

    // 1,000 events at 50/s over 50 keys: every key changes once a second, 20 times, while the
    // extractor never sees a quiet window.
    let subject = subject(&config);
    let mut sent: BTreeMap<String, (u32, u32)> = BTreeMap::new(); // key -> (events, newest)
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..1000u32 {
        tick.tick().await;
        let order = 2_000_000 + i % KEYS;
        client
            .publish(subject.clone(), event(order, i))
            .await
            .unwrap();
        let entry = sent.entry(key(order)).or_default();
        *entry = (entry.0 + 1, i);
    }
    // One event its publisher sends twice (a retry after a lost ack), same Nats-Msg-Id.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "wms-adjustment-77");
    for _ in 0..2 {
        client
            .publish_with_headers(subject.clone(), headers.clone(), event(3_000_000, 77))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client.flush().await.unwrap();

    let report = eventually(TIMEOUT, "1,001 events applied, 1 duplicate counted", || {
        let report = sims.forecast.received(&entity);
        let js = js.clone();
        let names = config.queue.clone();
        async move {
            let progress = progress(&js, &names).await;
            (report.applied() == 1001 && progress.duplicates == 1 && progress.delivered == 1001)
                .then_some(report)
        }
    })
    .await;
    for (key, (events, newest)) in &sent {
        let arrived = &report.keys[key];
        assert_eq!(
            arrived.applied_versions.len() as u32,
            *events,
            "{key}: every event applied, none stale: {arrived:?}"
        );
        assert!(arrived.applied_versions.is_sorted(), "{key} in order");
        assert_eq!(arrived.value["orderedQuantity"], *newest, "{key}");
        assert_eq!((arrived.stale, arrived.duplicates), (0, 0), "{key}");
    }
    let republished = &report.keys[&key(3_000_000)];
    assert_eq!(republished.applied_versions.len(), 1, "{republished:?}");
    assert_eq!(report.keys.len(), KEYS as usize + 1);
    // `read` counts what entered the flow's stream (read = delivered + dead letters); the
    // republished event is counted as the one duplicate, not read twice.
    let progress = progress(&js, &config.queue).await;
    assert_eq!(
        (progress.read, progress.delivered, progress.duplicates),
        (1001, 1001, 1)
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_no_worker_runs_arrive_after_the_restart() {
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed::default()).await;
    let config = event_flow(&nats.url(), &sims.forecast_url, "events-down");
    let entity = config.target.entity.clone();
    let js = jetstream(&nats.url()).await;
    let client = support::nats_admin(&nats.url()).await;
    let subject = subject(&config);
    let publish = |from: u32, to: u32| {
        let client = client.clone();
        let subject = subject.clone();
        async move {
            for i in from..to {
                client
                    .publish(subject.clone(), event(2_000_000 + i % KEYS, i))
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
        }
    };

    let worker = InProcessWorker::start(config.clone(), "down-a");
    capture_ready(&js, &config).await;
    publish(0, 100).await;
    // Delivered, not necessarily applied: a burst puts both events of a key in the stream
    // back to back, and a batch of the newer one may overtake the older (which is then stale).
    eventually(TIMEOUT, "the first 100 events delivered", || {
        let js = js.clone();
        let names = config.queue.clone();
        async move { (progress(&js, &names).await.delivered == 100).then_some(()) }
    })
    .await;
    worker.stop().await.unwrap();
    let before = sims.forecast.received(&entity);

    // No worker runs: a rollout, a crash, the lease between holders.
    publish(100, 400).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut capture = js.get_stream(config.queue.capture_stream()).await.unwrap();
    assert_eq!(capture.info().await.unwrap().state.messages, 300);
    assert_eq!(sims.forecast.received(&entity), before, "nothing moved");

    let worker = InProcessWorker::start(config.clone(), "down-b");
    let report = eventually(TIMEOUT, "all 400 events delivered", || {
        let report = sims.forecast.received(&entity);
        let js = js.clone();
        let names = config.queue.clone();
        async move {
            let progress = progress(&js, &names).await;
            (progress.delivered == 400).then_some(report)
        }
    })
    .await;
    // Each key got its 8 events: applied, or (a batch overtaken by a newer one of the same
    // key) refused as stale; never missing, never twice. The newest value won.
    for k in 0..KEYS {
        let arrived = &report.keys[&key(2_000_000 + k)];
        let newest = 400 - KEYS + k;
        assert_eq!(
            arrived.applied_versions.len() as u64 + arrived.stale,
            8,
            "{arrived:?}"
        );
        assert_eq!(arrived.duplicates, 0);
        assert_eq!(arrived.value["orderedQuantity"], newest);
    }
    // Acked events leave the capture stream (interest retention).
    eventually(TIMEOUT, "an empty capture stream", || {
        let js = js.clone();
        let name = config.queue.capture_stream();
        async move {
            let mut capture = js.get_stream(name).await.ok()?;
            (capture.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await;
    let progress_now = progress(&js, &config.queue).await;
    assert_eq!((progress_now.read, progress_now.duplicates), (400, 0));

    // The capture stream removed behind the worker's back: the extractor ensures it again.
    js.delete_stream(config.queue.capture_stream())
        .await
        .unwrap();
    capture_ready(&js, &config).await;
    publish(400, 450).await;
    eventually(
        TIMEOUT,
        "the 50 events after the capture was made anew",
        || {
            let js = js.clone();
            let names = config.queue.clone();
            async move { (progress(&js, &names).await.delivered == 450).then_some(()) }
        },
    )
    .await;
    worker.stop().await.unwrap();
}

/// JetStream refuses two streams over one subject: a second flow on the same events reads the
/// first one's capture stream through a consumer of its own, and each flow gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flows_on_one_subject_share_the_capture_stream_and_each_reads_every_event() {
    let nats = PrivateNats::start();
    let js = jetstream(&nats.url()).await;
    let subject = format!("wms.{}.returns", unique_flow("shared"));
    let first = QueueNames::for_flow("e2e", &unique_flow("first"));
    let second = QueueNames::for_flow("e2e", &unique_flow("second"));
    let retention = Duration::from_secs(3600);
    let a = ensure_capture(&js, &first, &subject, retention, None)
        .await
        .unwrap();
    let b = ensure_capture(&js, &second, &subject, retention, None)
        .await
        .unwrap();
    assert_eq!(a.cached_info().stream_name, first.capture_stream());
    assert_eq!(b.cached_info().stream_name, first.capture_stream());
    // Again, as every new lease holder does: nothing changes.
    ensure_capture(&js, &first, &subject, retention, None)
        .await
        .unwrap();
    for i in 0..3 {
        js.publish(subject.clone(), format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for consumer in [&a, &b] {
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        let mut read = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            read.push(String::from_utf8(message.payload.to_vec()).unwrap());
            message.double_ack().await.unwrap();
        }
        assert_eq!(read, ["0", "1", "2"]);
    }
}
