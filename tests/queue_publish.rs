//! A page published with its acks on one subscription (`queue::publish`, what extraction
//! uses), against the real nats-server of the local environment: JetStream's answers are
//! counted exactly (stored, dropped as a duplicate `Nats-Msg-Id`), and a record JetStream
//! refuses, or a subject no stream takes, fails the page instead of being counted.

mod support;

use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use flowplane::queue::publish::{PageAcks, PagePublish};
use std::time::Duration;

fn with_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

#[tokio::test]
async fn a_pages_acks_count_stored_and_duplicates_and_a_refusal_fails_it() {
    let env = support::local_env();
    let client = support::nats_admin(&env.nats_url).await;
    let js = jetstream::new(client.clone());
    let name = format!("PAGEPUBLISH_{}", std::process::id());
    let subject = format!("pagepublish.{}", std::process::id());
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{subject}.>")],
        max_message_size: 256,
        ..Default::default()
    })
    .await
    .unwrap();
    let to = |partition: u32| Subject::from(format!("{subject}.{partition}"));
    let idle = Duration::from_secs(5);

    // An empty page is settled at once.
    let empty = PagePublish::new(client.clone());
    assert_eq!(empty.acks(idle).await.unwrap(), PageAcks::default());

    // Five records, two of them again under an identity already stored.
    let mut page = PagePublish::new(client.clone());
    for (partition, id) in [(0, "a@1"), (1, "b@1"), (0, "a@1"), (2, "c@1"), (1, "b@1")] {
        page.publish(to(partition), with_id(id), Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    let acks = page.acks(idle).await.unwrap();
    assert_eq!(
        acks,
        PageAcks {
            stored: 3,
            duplicates: 2
        }
    );
    let mut stream = js.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3);

    // A record larger than the stream takes: the page fails with JetStream's reason.
    let mut page = PagePublish::new(client.clone());
    page.publish(to(0), with_id("d@1"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    page.publish(to(0), with_id("e@1"), Bytes::from(vec![b'x'; 1024]))
        .await
        .unwrap();
    let refused = page.acks(idle).await.unwrap_err().to_string();
    assert!(
        refused.starts_with("JetStream refused a record") && refused.contains("size"),
        "{refused}"
    );
    assert_eq!(stream.info().await.unwrap().state.messages, 4);

    // A subject no stream takes: no responders, not an ack to wait 5 s for.
    let mut page = PagePublish::new(client.clone());
    page.publish(
        Subject::from(format!("nostream.{}", std::process::id())),
        with_id("f@1"),
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let lost = page.acks(idle).await.unwrap_err().to_string();
    assert!(lost.contains("no responders"), "{lost}");
    assert!(started.elapsed() < idle, "{:?}", started.elapsed());

    js.delete_stream(&name).await.unwrap();
}
