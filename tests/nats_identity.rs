//! One NATS identity per flow, against the real nats-server of the local environment (operator
//! mode, TLS required): a flow's user, issued as the operator issues it, reaches its own queue
//! and nothing of another flow's; anonymous and plaintext connections are refused.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use async_nats::{Event, ServerError};
use bytes::Bytes;
use flowplane::queue::QueueNames;
use flowplane::queue::approvals::forget_review;
use flowplane::queue::identity::{AccountSigner, NatsAccess, flow_permissions};
use flowplane::queue::jetstream::{
    QueuePolicy, bucket, ensure_dead_letter_stream, ensure_queue, partition_subject,
};
use futures::StreamExt;
use tokio::sync::mpsc;

/// A flow in a namespace of its own, with its queue made by the administrator and its user's
/// credentials written to a file, as the operator writes them into the flow's Secret.
struct Flow {
    names: QueueNames,
    creds: PathBuf,
}

async fn flow(namespace: &str, name: &str, admin: &jetstream::Context) -> Flow {
    let env = support::local_env();
    let names = QueueNames::for_flow(namespace, name);
    ensure_queue(admin, &names, &QueuePolicy::default())
        .await
        .expect("admin makes the queue");
    // As the operator does on the worker's first dead letter.
    ensure_dead_letter_stream(admin, &names, &QueuePolicy::default())
        .await
        .expect("admin makes the dead-letter stream");
    let signer = AccountSigner::load(&env.nats_signer_dir).unwrap();
    let creds = signer
        .issue(
            &format!("{namespace}/{name}"),
            &flow_permissions(&names, None, &[]),
        )
        .unwrap();
    let path = std::env::temp_dir().join(format!("{}.creds", names.stream));
    std::fs::write(&path, creds).unwrap();
    Flow { names, creds: path }
}

/// Connects as `flow`'s user; server errors (permission violations) arrive on the channel.
async fn connect_as(flow: &Flow) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let env = support::local_env();
    let (tx, rx) = mpsc::unbounded_channel();
    let access = NatsAccess {
        url: env.nats_url.clone(),
        creds_file: Some(flow.creds.clone()),
        ca_file: Some(env.nats_ca.clone()),
        inbox_prefix: Some(flow.names.inbox_prefix()),
    };
    let client = access
        .options()
        .await
        .unwrap()
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(message)) = event {
                    let _ = tx.send(message);
                }
            }
        })
        .connect(env.nats_url.as_str())
        .await
        .expect("the flow's user connects");
    (client, rx)
}

/// Waits for nats-server's permission violation naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, action: &str, subject: &str) {
    let expected = format!("permissions violation for {action} to \"{subject}\"");
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = errors.recv().await {
            if message.to_lowercase().starts_with(&expected.to_lowercase()) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "nats-server did not refuse: {expected}");
}

/// Sends a JetStream API request the user may not make and waits for the refusal; the request
/// itself never gets an answer.
async fn refused_request(
    client: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    subject: String,
    body: &str,
) {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(
            subject.clone(),
            inbox,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .await
        .unwrap();
    refused(errors, "publish", &subject).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), replies.next())
            .await
            .is_err(),
        "{subject} was answered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flows_user_reaches_its_own_queue_and_nothing_of_another_flows() {
    let env = support::local_env();
    let admin = jetstream::new(support::nats_admin(&env.nats_url).await);
    let unique = std::process::id();
    let a = flow(&format!("team-a-{unique}"), "orders", &admin).await;
    let b = flow(&format!("team-b-{unique}"), "orders", &admin).await;

    // B's data, written by the administrator: a record, a dead letter, a cursor.
    admin
        .publish(partition_subject(&b.names, 0), "b-record".into())
        .await
        .unwrap()
        .await
        .unwrap();
    admin
        .publish(b.names.dead_letter_subject.clone(), "b-dead".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let b_bucket = bucket(&admin, &b.names).await.unwrap();
    b_bucket.put("cursor", "b-cursor".into()).await.unwrap();

    let (client, mut errors) = connect_as(&a).await;
    let js = jetstream::new(client.clone());

    // Its own queue works: publish a record, fetch it from the shared consumer, ack it; keep
    // a cursor in its bucket; read its dead-letter stream.
    js.publish(partition_subject(&a.names, 3), "a-record".into())
        .await
        .unwrap()
        .await
        .expect("publish to its own stream");
    let stream = js.get_stream(&a.names.stream).await.unwrap();
    let workers: consumer::PullConsumer = stream.get_consumer(&a.names.consumer).await.unwrap();
    let mut batch = workers
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.expect("its own record").unwrap();
    assert_eq!(message.payload, "a-record");
    message.ack().await.unwrap();
    let a_bucket: kv::Store = bucket(&js, &a.names).await.unwrap();
    a_bucket.put("cursor", "a-cursor".into()).await.unwrap();
    assert_eq!(
        a_bucket.get("cursor").await.unwrap(),
        Some(Bytes::from("a-cursor"))
    );
    js.get_stream(&a.names.dead_letter_stream)
        .await
        .expect("its own dead-letter stream");
    assert!(errors.try_recv().is_err(), "its own queue raised an error");

    // B's subjects: no subscribing (records, dead letters, key-value updates, B's replies).
    for subject in [
        format!("{}.>", b.names.subject),
        b.names.dead_letter_subject.clone(),
        format!("{}>", b.names.state_key_prefix()),
        format!("{}.>", b.names.inbox_prefix()),
        ">".to_string(),
    ] {
        let _sub = client.subscribe(subject.clone()).await.unwrap();
        refused(&mut errors, "subscription", &subject).await;
    }
    // No publishing into B's stream or dead letters, nor writing B's bucket.
    for subject in [
        partition_subject(&b.names, 0),
        b.names.dead_letter_subject.clone(),
        format!("{}cursor", b.names.state_key_prefix()),
    ] {
        client
            .publish(subject.clone(), "from a".into())
            .await
            .unwrap();
        refused(&mut errors, "publish", &subject).await;
    }
    // No JetStream API on B's resources: fetch from B's consumer, purge or delete B's stream,
    // read B's bucket and dead letters, list streams, create streams (which could capture
    // B's subjects), nor even its own stream's configuration.
    let (bs, dlq, kvs) = (
        &b.names.stream,
        &b.names.dead_letter_stream,
        format!("KV_{}", b.names.state_bucket),
    );
    for (subject, body) in [
        (
            format!("$JS.API.CONSUMER.MSG.NEXT.{bs}.{}", b.names.consumer),
            r#"{"batch":1}"#,
        ),
        (
            format!("$JS.API.CONSUMER.INFO.{bs}.{}", b.names.consumer),
            "",
        ),
        (format!("$JS.API.STREAM.PURGE.{bs}"), "{}"),
        (format!("$JS.API.STREAM.DELETE.{bs}"), ""),
        (format!("$JS.API.STREAM.INFO.{bs}"), ""),
        (format!("$JS.API.STREAM.MSG.GET.{dlq}"), r#"{"seq":1}"#),
        (
            format!("$JS.API.CONSUMER.CREATE.{dlq}"),
            r#"{"stream_name":"x","config":{}}"#,
        ),
        (
            format!(
                "$JS.API.DIRECT.GET.{kvs}.{}cursor",
                b.names.state_key_prefix()
            ),
            "",
        ),
        (
            format!("$JS.API.STREAM.MSG.GET.{kvs}"),
            r#"{"last_by_subj":"x"}"#,
        ),
        (format!("$JS.API.STREAM.PURGE.{kvs}"), "{}"),
        ("$JS.API.STREAM.NAMES".to_string(), "{}"),
        ("$JS.API.STREAM.LIST".to_string(), "{}"),
        ("$JS.API.STREAM.CREATE.STEAL".to_string(), "{}"),
        (format!("$JS.API.STREAM.UPDATE.{}", a.names.stream), "{}"),
        (format!("$JS.API.STREAM.DELETE.{}", a.names.stream), ""),
    ] {
        refused_request(&client, &mut errors, subject, body).await;
    }

    // No consumer of its own anywhere: nats-server accepts a push consumer delivering to a
    // subject its creator may not publish to, so a consumer on A's own bucket delivering to
    // B's subject would write into B's stream (seen with nats-server 2.15.2 when this was
    // allowed). So creating consumers is refused, on its own streams too.
    let a_state = format!("KV_{}", a.names.state_bucket);
    for subject in [
        format!("$JS.API.CONSUMER.CREATE.{a_state}"),
        format!("$JS.API.CONSUMER.CREATE.{a_state}.x.>"),
        format!("$JS.API.CONSUMER.CREATE.{}.x", a.names.stream),
    ] {
        refused_request(
            &client,
            &mut errors,
            subject,
            r#"{"config":{"deliver_subject":"flowplane.elsewhere"}}"#,
        )
        .await;
    }

    // B's data is untouched.
    let mut b_stream = admin.get_stream(&b.names.stream).await.unwrap();
    assert_eq!(b_stream.info().await.unwrap().state.messages, 1);
    let mut b_dlq = admin.get_stream(&b.names.dead_letter_stream).await.unwrap();
    assert_eq!(b_dlq.info().await.unwrap().state.messages, 1);
    assert_eq!(
        b_bucket.get("cursor").await.unwrap(),
        Some(Bytes::from("b-cursor"))
    );

    for flow in [&a, &b] {
        flowplane::queue::delete_queue(&admin, &flow.names)
            .await
            .unwrap();
        let _ = std::fs::remove_file(&flow.creds);
    }
}

/// Two flows of one namespace share its state bucket; each flow's user reaches its own keys
/// and none of its neighbour's: no get (direct get by subject, direct get or message get by
/// body), put, delete, purge or watch of them, and no smuggling another key into a request on
/// its own. The neighbour is named so its token starts with the first flow's name.
#[tokio::test(flavor = "multi_thread")]
async fn flows_of_one_namespace_reach_only_their_own_keys_in_its_bucket() {
    let env = support::local_env();
    let admin = jetstream::new(support::nats_admin(&env.nats_url).await);
    let namespace = format!("team-s-{}", std::process::id());
    let a = flow(&namespace, "orders", &admin).await;
    let b = flow(&namespace, "orders.eu", &admin).await;
    assert_eq!(a.names.state_bucket, b.names.state_bucket);
    let kvs = format!("KV_{}", a.names.state_bucket);
    let (ap, bp) = (a.names.state_key_prefix(), b.names.state_key_prefix());

    // B's records, as B's workers write them.
    let b_store = bucket(&admin, &b.names).await.unwrap();
    let b_cursor = b_store.put("cursor", "b-cursor".into()).await.unwrap();
    b_store.put("progress", "b-progress".into()).await.unwrap();
    b_store.put("review.42", "b-review".into()).await.unwrap();

    let (client, mut errors) = connect_as(&a).await;
    let js = jetstream::new(client.clone());

    // Its own keys work, with every operation the workers use.
    let own = bucket(&js, &a.names).await.unwrap();
    let revision = own.create("cursor", "a-1".into()).await.unwrap();
    own.update("cursor", "a-2".into(), revision).await.unwrap();
    assert_eq!(own.get("cursor").await.unwrap(), Some(Bytes::from("a-2")));
    own.put("review.7", "a-review".into()).await.unwrap();
    own.delete("review.7").await.unwrap();
    // A carried-out review's keys go for good: the workers' expiring delete markers.
    forget_review(&js, &own, "7").await;
    assert_eq!(own.get("review.7").await.unwrap(), None);
    let review_subjects = format!("{ap}review.>");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let listed = own.stream.info_with_subjects(review_subjects.clone()).await;
            let subjects: Vec<(String, usize)> =
                futures::TryStreamExt::try_collect(listed.unwrap())
                    .await
                    .unwrap();
            if subjects.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the review's markers expire");
    assert_eq!(own.get("progress").await.unwrap(), None, "B's progress");
    assert!(errors.try_recv().is_err(), "its own keys raised an error");

    // A rollup sent on its own key (with `all`, it would drop every key of the stream, B's
    // too: no subject permission reaches a header) is refused by the bucket.
    for rollup in ["all", "sub"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", rollup);
        let stored = js
            .publish_with_headers(format!("{ap}cursor"), headers, "x".into())
            .await
            .unwrap()
            .await;
        assert!(stored.is_err(), "a rollup {rollup} was stored");
    }
    assert_eq!(own.get("cursor").await.unwrap(), Some(Bytes::from("a-2")));
    // Through the store the operator names for B, nothing of B's comes back.
    let b_view = bucket(&js, &b.names).await.unwrap();
    assert!(b_view.get("cursor").await.is_err(), "read B's cursor");
    refused(
        &mut errors,
        "publish",
        &format!("$JS.API.DIRECT.GET.{kvs}.{bp}cursor"),
    )
    .await;
    assert!(b_view.watch("cursor").await.is_err(), "watched B's cursor");

    // Each way to B's keys, refused by nats-server and never answered.
    let last_of_b = format!(r#"{{"last_by_subj":"{bp}cursor"}}"#);
    let b_filter = format!(r#"{{"filter":"{bp}>"}}"#);
    let watch_b = format!(r#"{{"config":{{"filter_subject":"{bp}>"}}}}"#);
    for (subject, body) in [
        // get
        (format!("$JS.API.DIRECT.GET.{kvs}.{bp}cursor"), ""),
        (format!("$JS.API.DIRECT.GET.{kvs}.{bp}>"), ""),
        (format!("$JS.API.DIRECT.GET.{kvs}"), last_of_b.as_str()),
        (format!("$JS.API.STREAM.MSG.GET.{kvs}"), last_of_b.as_str()),
        (format!("$JS.API.STREAM.MSG.GET.{kvs}"), r#"{"seq":1}"#),
        // put and delete: a key's write and its delete or purge marker are all publishes to
        // the key's subject
        (format!("{bp}cursor"), "from a"),
        // delete by sequence, and purge with B's keys in the filter
        (format!("$JS.API.STREAM.MSG.DELETE.{kvs}"), r#"{"seq":1}"#),
        (format!("$JS.API.STREAM.PURGE.{kvs}"), b_filter.as_str()),
        // watch: consumers with B's keys as filter, in the subject or only in the body
        (
            format!("$JS.API.CONSUMER.CREATE.{kvs}.watch.{bp}>"),
            watch_b.as_str(),
        ),
        (format!("$JS.API.CONSUMER.CREATE.{kvs}"), watch_b.as_str()),
        // and its own keys' watch too: no consumers for a flow's user (see above)
        (format!("$JS.API.CONSUMER.CREATE.{kvs}.watch.{ap}>"), "{}"),
    ] {
        refused_request(&client, &mut errors, subject, body).await;
    }
    // B's key updates cannot be subscribed to either.
    let _sub = client.subscribe(format!("{bp}>")).await.unwrap();
    refused(&mut errors, "subscription", &format!("{bp}>")).await;

    // A request on its own key carrying B's record's sequence in the body gets A's key or
    // nothing: nats-server reads the key from the subject.
    let answer = client
        .request(
            format!("$JS.API.DIRECT.GET.{kvs}.{ap}cursor"),
            Bytes::from(format!(r#"{{"seq":{b_cursor}}}"#)),
        )
        .await
        .expect("its own direct get is answered");
    assert_ne!(answer.payload, "b-cursor");
    assert!(
        !answer
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Subject"))
            .is_some_and(|s| s.as_str().starts_with(&bp)),
        "answered with B's record"
    );

    // What a flow's user does see of its neighbours (docs/security.md): the names of their
    // keys, from the stream's subject list (STREAM.INFO, which opening the bucket needs, takes
    // its filter in the body). Never a value, as above.
    let stream = js.get_stream(&kvs).await.unwrap();
    let names: Vec<(String, usize)> = futures::TryStreamExt::try_collect(
        stream.info_with_subjects(format!("{bp}>")).await.unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(names.len(), 3);

    // B's records are untouched.
    for (key, value) in [
        ("cursor", "b-cursor"),
        ("progress", "b-progress"),
        ("review.42", "b-review"),
    ] {
        assert_eq!(b_store.get(key).await.unwrap(), Some(Bytes::from(value)));
    }

    // Deleting A purges A's keys only; the namespace's bucket stays for B.
    flowplane::queue::delete_queue(&admin, &a.names)
        .await
        .unwrap();
    let a_after = bucket(&admin, &a.names).await.unwrap();
    assert_eq!(a_after.get("cursor").await.unwrap(), None);
    let state = admin.get_stream(&kvs).await.unwrap();
    let left: Vec<(String, usize)> =
        futures::TryStreamExt::try_collect(state.info_with_subjects(">").await.unwrap())
            .await
            .unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|(subject, _)| subject.starts_with(&bp)));
    assert_eq!(
        b_store.get("cursor").await.unwrap(),
        Some(Bytes::from("b-cursor"))
    );

    flowplane::queue::delete_queue(&admin, &b.names)
        .await
        .unwrap();
    admin.delete_key_value(&b.names.state_bucket).await.unwrap();
    for flow in [&a, &b] {
        let _ = std::fs::remove_file(&flow.creds);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_and_plaintext_connections_are_refused() {
    let env = support::local_env();
    // TLS with the right CA but no credentials.
    let anonymous = NatsAccess {
        url: env.nats_url.clone(),
        ca_file: Some(env.nats_ca.clone()),
        ..Default::default()
    }
    .connect()
    .await;
    let error = anonymous
        .expect_err("an anonymous client is refused")
        .to_string();
    assert!(
        error.to_lowercase().contains("authorization"),
        "refused for another reason: {error}"
    );

    // Plaintext: the server announces TLS as required and drops a client that speaks NATS
    // without it.
    let address = env.nats_url.trim_start_matches("nats://").to_string();
    let outcome = tokio::task::spawn_blocking(move || {
        let stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        let mut writer = stream;
        let _ = writer.write_all(b"CONNECT {\"verbose\":false,\"tls_required\":false}\r\nPING\r\n");
        let mut rest = String::new();
        while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {}
        (info, rest)
    })
    .await
    .unwrap();
    assert!(
        outcome.0.contains("\"tls_required\":true"),
        "server info: {}",
        outcome.0
    );
    assert!(
        !outcome.1.contains("PONG"),
        "a plaintext client got an answer: {}",
        outcome.1
    );
}
