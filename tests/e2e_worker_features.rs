//! End-to-end, on a real nats-server of the test's own: the flow's queue policy (retention,
//! dead-letter retention, dedupe window) applied to new and existing streams; the contract's
//! batch quality rules on a running flow; the OData v4 target writing `$batch` upserts to the
//! ERP simulator.

mod e2e_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e_support::*;
use flowplane::api::connector_binding::{Protocol, System};
use flowplane::api::integration_flow::{Delivery, WriteMode};
use flowplane::queue::jetstream::ensure_dead_letter_stream;
use flowplane::queue::{
    QueueError, QueueNames, QueuePolicy, ensure_queue, headers, list_dead_letters,
};
use flowplane::sim::erp::{ErpSeed, SALES_ORDER_LINES, key_of, sales_order_line};
use flowplane::sim::erp_write::{PLANNED_INDEPENDENT_REQUIREMENTS, WriteRule};
use flowplane::sim::faults::FaultSpec;
use flowplane::worker::connectors::target::{Outgoing, Target};
use flowplane::worker::metrics::Metrics;
use flowplane::worker::sample;
use flowplane::worker_config::TargetConfig;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

async fn stream_limits(js: &async_nats::jetstream::Context, name: &str) -> (Duration, Duration) {
    let mut stream = js.get_stream(name).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.config.max_age, info.config.duplicate_window)
}

/// nats-server reserves every stream's max bytes against its JetStream storage limit when it
/// creates the stream, whether or not anything is stored: flows that together ask for more
/// than the server has are refused, with an error that says what to size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_servers_storage_are_refused_with_a_sizing_error() {
    let nats = PrivateNats::start_with_file_store(100 << 20);
    let js = jetstream(&nats.url()).await;
    let sized = |max_bytes: i64| Delivery {
        max_bytes: Some(max_bytes),
        ..Delivery::default()
    };
    // 2 x 40 MiB reserved (the stream and its dead-letter stream, made once a worker asked
    // for it): 20 MiB left. The next flow's stream alone exceeds that.
    let first = QueueNames::for_flow("e2e", &unique_flow("room"));
    let policy = QueuePolicy::from_delivery(&sized(40 << 20), 100, Default::default()).unwrap();
    ensure_queue(&js, &first, &policy).await.unwrap();
    ensure_dead_letter_stream(&js, &first, &policy)
        .await
        .unwrap();

    let second = QueueNames::for_flow("e2e", &unique_flow("noroom"));
    let error = ensure_queue(&js, &second, &policy).await.unwrap_err();
    let QueueError::NoStorage { max_bytes, .. } = &error else {
        panic!("expected NoStorage, got {error}");
    };
    assert_eq!(*max_bytes, 40 << 20);
    for hint in ["delivery.maxBytes", "--queue-max-bytes", "max_file_store"] {
        assert!(error.to_string().contains(hint), "{hint} missing: {error}");
    }
    // Every pass says so the same way, so a resync does not rewrite the flow's status.
    for _ in 0..5 {
        match ensure_queue(&js, &second, &policy).await {
            Err(QueueError::NoStorage { name, .. }) => assert_eq!(name, second.stream),
            other => panic!("expected NoStorage, got {other:?}"),
        }
    }

    // The operator's default of 1 GiB does not fit at all on this server.
    let third = QueueNames::for_flow("e2e", &unique_flow("default"));
    let defaulted = QueuePolicy::from_delivery(&Delivery::default(), 100, Default::default());
    let error = ensure_queue(&js, &third, defaulted.as_ref().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, QueueError::NoStorage { max_bytes, .. } if max_bytes == 1 << 30));

    // A dead-letter stream asked for when there is no room is refused the same way (the
    // operator answers the worker with it; the record waits).
    let error = ensure_dead_letter_stream(&js, &third, &defaulted.unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, QueueError::NoStorage { name, .. } if *name == third.dead_letter_stream),
        "{error}"
    );

    // Sized within what is left (20 MiB), another flow gets its queue.
    let small = QueueNames::for_flow("e2e", &unique_flow("small"));
    let policy = QueuePolicy::from_delivery(&sized(1 << 20), 100, Default::default()).unwrap();
    ensure_queue(&js, &small, &policy).await.unwrap();
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
    let policy = QueuePolicy::from_delivery(&delivery, 100, Default::default()).unwrap();
    ensure_queue(&js, &names, &policy).await.unwrap();
    assert_eq!(
        stream_limits(&js, &names.stream).await,
        (Duration::from_secs(48 * 3600), Duration::from_secs(600))
    );
    // The dead-letter stream is made on demand (a worker's first dead letter), not with the
    // queue; then the queue's policy keeps it current.
    assert!(js.get_stream(&names.dead_letter_stream).await.is_err());
    ensure_dead_letter_stream(&js, &names, &policy)
        .await
        .unwrap();
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
    let policy = QueuePolicy::from_delivery(&changed, 100, Default::default()).unwrap();
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
    // JetStream never gives a record up (the workers dead-letter after maxDeliver), also on a
    // consumer a previous release made with a limit.
    let consumer = stream.consumer_info(&names.consumer).await.unwrap();
    assert_eq!(consumer.config.max_deliver, -1);
    let mut limited = consumer.config.clone();
    limited.max_deliver = 3;
    js.update_consumer_on_stream(limited, &names.stream)
        .await
        .unwrap();
    ensure_queue(&js, &names, &policy).await.unwrap();
    let consumer = stream.consumer_info(&names.consumer).await.unwrap();
    assert_eq!(consumer.config.max_deliver, -1);

    // Applying the same policy again changes nothing and does not fail.
    ensure_queue(&js, &names, &policy).await.unwrap();
    assert_eq!(
        stream_limits(&js, &names.stream).await,
        (Duration::from_secs(12 * 3600), Duration::from_secs(3600))
    );
}

const TIMEOUT: Duration = Duration::from_secs(120);

/// A record whose deliveries all end without an outcome (the workers holding it died, or
/// overran ackWait) is dead-lettered, with its reason and delivery count, on the delivery after
/// maxDeliver. Had JetStream stopped delivering it, it would be gone from the flow unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_deliveries_all_end_without_an_outcome_is_dead_lettered() {
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed::empty()).await;
    let mut config = sample::sales_order_flow(
        "e2e",
        &unique_flow("maxdeliver"),
        &nats.url(),
        &sims.erp_url,
        &sims.forecast_url,
    );
    config.delivery.max_deliver = 2;
    config.delivery.ack_wait = "1s".into();
    let js = jetstream(&nats.url()).await;
    let names = config.queue.clone();
    let policy = QueuePolicy::from_rendered(&config.delivery).unwrap();
    ensure_queue(&js, &names, &policy).await.unwrap();
    ensure_dead_letter_stream(&js, &names, &policy)
        .await
        .unwrap();
    // A record in the flow's stream as workers before the `Flowplane-Record` header stored it
    // (one header per field, and a W3C `traceparent`): still read, so the dead letter below
    // has its key and the trace id its log lines had.
    let mut record_headers = async_nats::HeaderMap::new();
    record_headers.insert(headers::MSG_ID, "1000001/10@1");
    record_headers.insert(
        headers::TRACEPARENT,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    record_headers.insert(headers::KEY, "1000001/10");
    record_headers.insert(headers::SOURCE_VERSION, "1");
    let record = serde_json::to_vec(&sample::order_line("1010", "5")).unwrap();
    js.publish_with_headers(
        format!("{}.0", names.subject),
        record_headers,
        record.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Two workers take it and die holding it: fetched, never acked.
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(&names.stream)
        .await
        .unwrap()
        .get_consumer(&names.consumer)
        .await
        .unwrap();
    for attempt in 1..=2 {
        let message = eventually(TIMEOUT, "a delivery", || {
            let consumer = consumer.clone();
            async move {
                let mut batch = consumer
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await
                    .ok()?;
                batch.next().await?.ok()
            }
        })
        .await;
        assert_eq!(message.info().unwrap().delivered, attempt);
    }

    // A worker now: the record comes a third time and goes to the dead-letter stream.
    let worker = InProcessWorker::start(config.clone(), "maxdeliver");
    let letters = eventually(TIMEOUT, "the dead letter", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let letters = list_dead_letters(&js, &names, None).await.ok()?;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    assert_eq!(
        (
            letter.reason.as_str(),
            letter.deliveries,
            letter.key.as_str()
        ),
        ("MaxDeliveries", 3, "1000001/10")
    );
    assert_eq!(letter.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert!(
        letter
            .detail
            .starts_with("2 deliveries ended without an outcome"),
        "{}",
        letter.detail
    );
    assert_eq!(letter.record["RequestedQuantity"], "5");
    assert_eq!(sims.forecast.applied(&config.target.entity), 0);
    eventually(TIMEOUT, "the dead letter in the flow's progress", || {
        let js = js.clone();
        let names = names.clone();
        async move { (progress(&js, &names).await.dead_lettered == 1).then_some(()) }
    })
    .await;
    worker.stop().await.unwrap();
}

/// Batch quality rules on a real flow: a NullRatio rule that allows no nulls dead-letters
/// exactly the records without the field; a FailBatch rule keeps the whole batch of a bad
/// record from the target and dead-letters it, so every record is in exactly one place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_quality_rules_dead_letter_offenders_and_fail_batches_whole() {
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed {
        order_lines: 300,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    })
    .await;
    // Every 10th line loses its customer; line 150 orders far too much.
    for i in (3..300).step_by(10) {
        let mut line = sales_order_line(i, None);
        line["to_SalesOrder"]
            .as_object_mut()
            .unwrap()
            .remove("SoldToParty");
        sims.erp.upsert(SALES_ORDER_LINES, line);
    }
    let mut huge = sales_order_line(150, None);
    huge.insert("RequestedQuantity".into(), json!("5000"));
    sims.erp.upsert(SALES_ORDER_LINES, huge);
    let huge_key = "1000015/10";

    let flow = unique_flow("quality");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats.url(), &sims.erp_url, &sims.forecast_url);
    config.contract.quality = serde_json::from_value(json!([
        {"name": "customer-known", "check": "NullRatio", "field": "customer", "maxRatio": 0.0, "action": "DeadLetter"},
        {"name": "no-huge-orders", "check": "Range", "field": "orderedQuantity", "max": 1000.0, "action": "FailBatch"},
        {"name": "one-row-per-line", "check": "DuplicateKeys", "action": "DeadLetter"}
    ]))
    .unwrap();
    let names = config.queue.clone();
    let js = jetstream(&nats.url()).await;
    let entity = config.target.entity.clone();
    let worker = InProcessWorker::start(config, "quality-a");
    let progress = eventually(
        TIMEOUT,
        "all 300 records delivered or dead-lettered",
        || {
            let js = js.clone();
            let names = names.clone();
            async move {
                let p = progress(&js, &names).await;
                (p.read == 300 && p.delivered + p.dead_lettered == 300).then_some(p)
            }
        },
    )
    .await;
    worker.stop().await.unwrap();

    let report = sims.forecast.received(&entity);
    let letters = list_dead_letters(&js, &names, None).await.unwrap();
    assert_eq!(letters.len() as u64, progress.dead_lettered);
    assert_eq!(report.applied(), progress.delivered);
    let dead: BTreeSet<&str> = letters.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(dead.len(), letters.len(), "each record dead-lettered once");
    // Every record is in exactly one place.
    for line in sims.erp.all(SALES_ORDER_LINES) {
        let key = key_of(SALES_ORDER_LINES, &line);
        let delivered = report.keys.contains_key(&key);
        assert_ne!(
            delivered,
            dead.contains(key.as_str()),
            "{key} is at the target or in the DLQ"
        );
        if line["to_SalesOrder"].get("SoldToParty").is_none() {
            assert!(
                !delivered,
                "{key} has no customer and must not be delivered"
            );
        }
    }
    assert!(letters.iter().all(|l| l.reason == "QualityRule"));
    let no_customer: Vec<_> = letters
        .iter()
        .filter(|l| l.detail.contains("\"customer-known\""))
        .collect();
    assert!(
        no_customer
            .iter()
            .all(|l| l.stage == "quality" && l.detail.contains("have no \"customer\""))
    );
    let culprit = letters.iter().find(|l| l.key == huge_key).unwrap();
    assert!(
        culprit.detail.contains("\"no-huge-orders\""),
        "{}",
        culprit.detail
    );
    let collateral: Vec<_> = letters
        .iter()
        .filter(|l| {
            l.detail
                .starts_with(&format!("batch failed: record {huge_key}"))
        })
        .collect();
    assert!(
        !collateral.is_empty(),
        "the batch of line {huge_key} is dead-lettered with it: {letters:#?}"
    );
    assert!(collateral.iter().all(|l| l.stage == "quality"));
    // 30 without customer; those in the failed batch carry the batch's detail instead.
    let without_customer_in_batch = collateral
        .iter()
        .filter(|l| l.record["to_SalesOrder"].get("SoldToParty").is_none())
        .count();
    assert_eq!(no_customer.len() + without_customer_in_batch, 30);
    assert_eq!(
        letters.len(),
        30 + 1 + collateral.len() - without_customer_in_batch
    );
}

/// ERP simulator (OData source) -> worker -> ERP simulator (OData target, `$batch` upserts):
/// every good record arrives exactly once, the ones the ERP refuses (400 inside a batch) are
/// dead-lettered with its message, and single requests failing with 503 and then 429 inside
/// batches, and whole calls failing with 500, are retried until they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erp_to_erp_over_odata_batches_arrives_exactly_once() {
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed {
        order_lines: 600,
        inventory: 0,
        returns: 0,
        bad_every: 30,
        page_size: 100,
    })
    .await;
    sims.erp.refuse(Some(WriteRule {
        field: "location".into(),
        values: vec!["DC-WEST".into()],
    }));
    sims.erp.part_faults().set(FaultSpec {
        status: Some(503),
        count: Some(30),
        ..FaultSpec::default()
    });
    let flow = unique_flow("odata");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats.url(), &sims.erp_url, &sims.forecast_url);
    config.target.endpoint =
        sample::endpoint("erp-pir", System::Erp, Protocol::OData, &sims.erp_url);
    config.target.entity = PLANNED_INDEPENDENT_REQUIREMENTS.into();
    // New keys are created with POST, which takes the key from the body.
    sims.erp.declare_keys(
        PLANNED_INDEPENDENT_REQUIREMENTS,
        &["salesOrder", "salesOrderItem"],
    );
    config.target.batch_size = 100;
    let names = config.queue.clone();
    let js = jetstream(&nats.url()).await;
    let listen = free_listen_addr();
    let worker = InProcessWorker::start_listening(config, "odata-a", Some(listen));

    eventually(TIMEOUT, "the 30 failing requests used up", || {
        let failed = sims.erp.part_faults().failed();
        async move { (failed >= 30).then_some(()) }
    })
    .await;
    sims.erp.part_faults().set(FaultSpec {
        status: Some(429),
        count: Some(20),
        retry_after_secs: Some(1),
        ..FaultSpec::default()
    });
    // And whole calls (reads of the source and $batch writes alike) failing with 500s.
    sims.erp.faults.set(FaultSpec {
        status: Some(500),
        count: Some(8),
        ..FaultSpec::default()
    });
    // New lines after the faults are armed, so batches meet them however fast the first 600
    // went through.
    for i in 600..700 {
        sims.erp
            .upsert(SALES_ORDER_LINES, sales_order_line(i, None));
    }
    let progress = eventually(
        TIMEOUT,
        "all 700 records delivered or dead-lettered",
        || {
            let js = js.clone();
            let names = names.clone();
            let failed = sims.erp.part_faults().failed() + sims.erp.faults.failed();
            async move {
                let p = progress(&js, &names).await;
                (failed >= 58 && p.read == 700 && p.delivered + p.dead_lettered == 700).then_some(p)
            }
        },
    )
    .await;
    // Settle: late redeliveries must not change anything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The proposals the ERP refused, counted as failed posts (FlowplaneDeliveryFailed).
    let failed_posts = scrape(
        listen,
        &format!(
            r#"flowplane_worker_records_delivery_failed_total{{namespace="e2e",flow="{flow}",target="target"}}"#
        ),
    )
    .await;
    // Every delivered record timed from its change at the source: the envelope header carried
    // the change time from extraction to delivery.
    let metrics = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let timed_since_change: Option<f64> = metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("flowplane_worker_end_to_end_latency_seconds_count{")?;
        let (labels, value) = rest.split_once("} ")?;
        labels
            .contains(r#"since="change""#)
            .then(|| value.parse().ok())?
    });
    worker.stop().await.unwrap();

    let report = sims.erp.received(PLANNED_INDEPENDENT_REQUIREMENTS);
    let letters = list_dead_letters(&js, &names, None).await.unwrap();
    let refused: BTreeSet<&str> = letters
        .iter()
        .filter(|l| l.reason == "TargetRejected")
        .map(|l| l.key.as_str())
        .collect();
    let mut expected_refused = 0;
    let mut expected_delivered = 0;
    for line in sims.erp.all(SALES_ORDER_LINES) {
        let key = key_of(SALES_ORDER_LINES, &line);
        let bad = line["Plant"] == "9999" || line["RequestedQuantity"] == "-3";
        if bad {
            assert!(!report.keys.contains_key(&key), "{key} is invalid");
        } else if line["Plant"] == "1040" {
            expected_refused += 1;
            assert!(refused.contains(key.as_str()), "{key} refused by the ERP");
            assert!(!report.keys.contains_key(&key));
        } else {
            expected_delivered += 1;
            let arrived = &report.keys[&key];
            assert_eq!(
                arrived.applied_versions.len(),
                1,
                "{key} applied exactly once"
            );
            assert_eq!(arrived.value["sku"], line["Material"]);
            assert_eq!(arrived.value["changedAt"], line["LastChangeDateTime"]);
        }
    }
    assert_eq!(report.keys.len(), expected_delivered);
    assert_eq!(refused.len(), expected_refused);
    assert_eq!(progress.delivered, expected_delivered as u64);
    assert_eq!(progress.dead_lettered, 20 + expected_refused as u64);
    assert_eq!(failed_posts, Some(expected_refused as f64));
    assert_eq!(timed_since_change, Some(expected_delivered as f64));
    for letter in letters.iter().filter(|l| l.reason == "TargetRejected") {
        assert_eq!(letter.stage, "deliver");
        assert!(
            letter.detail.contains("HTTP 400")
                && letter.detail.contains("\"DC-WEST\" does not exist"),
            "{}",
            letter.detail
        );
    }
    assert!(letters.iter().all(|l| l.reason != "MaxDeliveries"));
    assert!(
        sims.erp.largest_batch() >= 20,
        "records travel together in $batch requests (at most {} in one)",
        sims.erp.largest_batch()
    );
}

/// Several workers write bursts of updates of the same keys to an OData target that, like a
/// real ERP, lets the last writer win, while some writes fail and are retried late: reads,
/// ETags and If-Match keep every key at its newest version and never let an older change
/// overwrite a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_never_overwrite_a_newer_value_at_an_odata_target() {
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed {
        order_lines: 20,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    })
    .await;
    let flow = unique_flow("odataburst");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats.url(), &sims.erp_url, &sims.forecast_url);
    config.target.endpoint =
        sample::endpoint("erp-pir", System::Erp, Protocol::OData, &sims.erp_url);
    config.target.entity = PLANNED_INDEPENDENT_REQUIREMENTS.into();
    // New keys are created with POST, which takes the key from the body.
    sims.erp.declare_keys(
        PLANNED_INDEPENDENT_REQUIREMENTS,
        &["salesOrder", "salesOrderItem"],
    );
    // Small batches and many consumers, so updates of one key spread over workers.
    config.target.batch_size = 3;
    config.source.poll_interval = "50ms".into();
    let _workers: Vec<InProcessWorker> = (0..3)
        .map(|i| InProcessWorker::start(config.clone(), &format!("odata-burst-{i}")))
        .collect();
    let set = PLANNED_INDEPENDENT_REQUIREMENTS;
    eventually(TIMEOUT, "the initial 20 records", || {
        let report = sims.erp.received(set);
        async move { (report.keys.len() == 20).then_some(()) }
    })
    .await;

    let keys = ["1000000/10", "1000000/20", "1000001/10"];
    for round in 0..4u32 {
        // Some writes fail and come back later, after newer versions of their key: the
        // classic way an older change overwrites a newer one.
        sims.erp.part_faults().set(FaultSpec {
            status: Some(503),
            count: Some(8),
            ..FaultSpec::default()
        });
        let expected = update_in_bursts(&sims.erp, &keys, round, 45).await;
        eventually(
            TIMEOUT,
            &format!("round {round}: newest values at the ERP"),
            || {
                let report = sims.erp.received(set);
                let expected = expected.clone();
                async move {
                    expected
                        .iter()
                        .all(|(key, quantity)| {
                            report.keys[*key].value["orderedQuantity"] == *quantity
                        })
                        .then_some(())
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = sims.erp.received(set);
        for (key, quantity) in &expected {
            let stored = &report.keys[*key];
            assert_eq!(
                stored.value["orderedQuantity"], *quantity,
                "round {round}, {key}"
            );
            assert_eq!(
                stored.stale, 0,
                "{key}: no older version written after a newer one"
            );
            assert!(
                stored.applied_versions.windows(2).all(|w| w[0] < w[1]),
                "{key} written in source order: {:?}",
                stored.applied_versions
            );
        }
    }
}

/// A new key is created with POST; when someone else created it between the target's read
/// and its POST (409), the target reads it and writes its newer version as an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_lost_to_another_writer_is_written_as_an_update() {
    let sims = start_sims(ErpSeed::empty()).await;
    let set = PLANNED_INDEPENDENT_REQUIREMENTS;
    sims.erp
        .declare_keys(set, &["salesOrder", "salesOrderItem"]);
    let theirs = json!({"salesOrder": "1000001", "salesOrderItem": "10", "orderedQuantity": 1});
    sims.erp
        .create_after_next_read(set, "1000001/10", theirs.as_object().unwrap().clone());
    let config = TargetConfig {
        endpoint: sample::endpoint("erp-pir", System::Erp, Protocol::OData, &sims.erp_url),
        entity: set.into(),
        write_mode: WriteMode::Upsert,
        batch_size: 10,
        rest: None,
        files: None,
    };
    let key = ["salesOrder".to_string(), "salesOrderItem".to_string()];
    let mut target = Target::new(&config, &key, Metrics::new("e2e", "lost-create")).unwrap();
    target.order_by(Some("changedAt".into()));
    let ours = |item: &str| {
        serde_json::to_vec(&json!({"salesOrder": "1000001", "salesOrderItem": item,
            "orderedQuantity": 2, "changedAt": "2024-03-01T12:00:00.001Z"}))
        .unwrap()
    };
    let (a, b) = (ours("10"), ours("20"));
    let version = 1_709_294_400_001_000_000;
    let records = [
        Outgoing {
            key: "a",
            version,
            data: &a,
        },
        Outgoing {
            key: "b",
            version,
            data: &b,
        },
    ];
    let outcome = target.deliver(&records).await.unwrap();
    assert!(
        outcome.rejected.is_empty() && outcome.retry.is_empty(),
        "{outcome:?}"
    );
    let report = sims.erp.received(set);
    // Theirs (version 1), then ours over it; the other key simply created.
    assert_eq!(report.keys["1000001/10"].applied_versions, vec![1, version]);
    assert_eq!(report.keys["1000001/10"].value["orderedQuantity"], 2);
    assert_eq!(report.keys["1000001/20"].applied_versions, vec![version]);
}

/// `flowplane render` of the example flows: each worker configuration carries its flow's
/// queue policy (what a worker that starts first creates the queue with), its mapping compiles
/// with the contract's batch rules, and its target is one the worker can write to.
#[test]
fn every_example_flow_renders_a_worker_configuration_with_its_queue_policy() {
    use flowplane::api::IntegrationFlow;
    use flowplane::worker::transform::Plan;
    use flowplane::worker_config::WorkerConfig;

    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/base");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flowplane"));
    command.args(["render", "-n", "demo"]);
    let mut flows = Vec::new();
    for dir in ["bindings", "contracts", "codemaps", "flows"] {
        for entry in std::fs::read_dir(base.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if dir == "flows" {
                let flow: IntegrationFlow =
                    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                flows.push(flow);
            }
            command.arg("-f").arg(path);
        }
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut configs = Vec::new();
    for doc in serde_yaml::Deserializer::from_slice(&out.stdout) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if let Some(text) = value["data"]["worker.json"].as_str() {
            configs.push(serde_json::from_str::<WorkerConfig>(text).unwrap());
        }
    }
    assert_eq!(configs.len(), flows.len());
    for flow in &flows {
        let name = flow.metadata.name.as_deref().unwrap();
        let config = configs.iter().find(|c| c.flow == name).unwrap();
        let rendered = QueuePolicy::from_rendered(&config.delivery).unwrap();
        let wanted =
            QueuePolicy::from_delivery(&flow.spec.delivery, 1, Default::default()).unwrap();
        assert_eq!(
            (
                rendered.retention,
                rendered.dead_letter_retention,
                rendered.dedupe_window
            ),
            (
                wanted.retention,
                wanted.dead_letter_retention,
                wanted.dedupe_window
            ),
            "{name}"
        );
        assert_eq!(rendered.ack_wait, wanted.ack_wait, "{name}");
        assert_eq!(
            config.delivery.max_deliver, flow.spec.delivery.max_deliver,
            "{name}"
        );
        Plan::compile(&config.mapping, &config.contract).unwrap();
        assert!(
            matches!(
                config.target.endpoint.protocol,
                Protocol::OData | Protocol::Rest | Protocol::Files
            ),
            "{name}: target protocol {:?}",
            config.target.endpoint.protocol
        );
    }
    // The forecast feedback flow writes to the ERP over OData, ordered by its version field.
    let feedback = configs
        .iter()
        .find(|c| c.flow == "forecast-deltas-to-erp-replenishment")
        .unwrap();
    assert_eq!(feedback.target.endpoint.protocol, Protocol::OData);
    assert!(feedback.version_field().is_some());
}
