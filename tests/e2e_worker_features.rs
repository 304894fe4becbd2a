//! End-to-end, on a real nats-server of the test's own: the flow's queue policy (retention,
//! dead-letter retention, dedupe window) applied to new and existing streams.

mod e2e_support;

use std::time::Duration;

use e2e_support::*;
use flowplane::api::integration_flow::Delivery;
use flowplane::queue::{QueueNames, QueuePolicy, ensure_queue};

async fn stream_limits(js: &async_nats::jetstream::Context, name: &str) -> (Duration, Duration) {
    let mut stream = js.get_stream(name).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.config.max_age, info.config.duplicate_window)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_policy_creates_the_streams_and_updates_them_in_place() {
    let nats = PrivateNats::start();
    let js = jetstream(&nats.url()).await;
    let names = QueueNames::for_flow("e2e", &unique_flow("policy"));
    let delivery = Delivery {
        retention: "48h".into(),
        dead_letter_retention: "720h".into(),
        dedupe_window: "10m".into(),
        ..Delivery::default()
    };
    let policy = QueuePolicy::from_delivery(&delivery, 100).unwrap();
    ensure_queue(&js, &names, &policy).await.unwrap();
    assert_eq!(
        stream_limits(&js, &names.stream).await,
        (Duration::from_secs(48 * 3600), Duration::from_secs(600))
    );
    assert_eq!(
        stream_limits(&js, &names.dead_letter_stream).await.0,
        Duration::from_secs(720 * 3600)
    );

    // A record in the stream survives the update: the stream is changed, not recreated.
    js.publish(format!("{}.0", names.subject), "kept".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let changed = Delivery {
        retention: "12h".into(),
        dead_letter_retention: "24h".into(),
        dedupe_window: "1h".into(),
        max_deliver: 3,
        ..delivery
    };
    let policy = QueuePolicy::from_delivery(&changed, 100).unwrap();
    ensure_queue(&js, &names, &policy).await.unwrap();
    assert_eq!(
        stream_limits(&js, &names.stream).await,
        (Duration::from_secs(12 * 3600), Duration::from_secs(3600))
    );
    assert_eq!(
        stream_limits(&js, &names.dead_letter_stream).await.0,
        Duration::from_secs(24 * 3600)
    );
    let mut stream = js.get_stream(&names.stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let consumer = stream.consumer_info(&names.consumer).await.unwrap();
    assert_eq!(consumer.config.max_deliver, 3);

    // Applying the same policy again changes nothing and does not fail.
    ensure_queue(&js, &names, &policy).await.unwrap();
    assert_eq!(
        stream_limits(&js, &names.stream).await,
        (Duration::from_secs(12 * 3600), Duration::from_secs(3600))
    );
}
