//! End-to-end: ERP simulator -> worker -> JetStream -> forecast simulator, on a real
//! nats-server. Exactly-once arrival, dead letters with reasons, read = delivered +
//! dead-lettered, incremental changes, and redrive after a code-map fix.

mod e2e_support;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_support::*;
use flowplane::queue::{list_dead_letters, redrive};
use flowplane::sim::erp::{ErpSeed, SALES_ORDER_LINES, key_of};
use flowplane::worker::sample;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

fn seed() -> ErpSeed {
    ErpSeed {
        order_lines: 600,
        inventory: 0,
        returns: 0,
        bad_every: 30,
        page_size: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_once_bad_ones_are_dead_lettered_and_redrive_recovers_them() {
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed()).await;
    let flow = unique_flow("exact");
    let config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    let names = config.queue.clone();
    let (js, _cleanup) = flow_queue(&nats_url, &names).await;
    let entity = config.target.entity.clone();

    let worker = InProcessWorker::start(config.clone(), "w1");
    // 600 lines, every 30th bad: 10 with plant 9999 (unmapped), 10 with quantity -3.
    let report = eventually(
        TIMEOUT,
        "580 records at the target and 20 dead letters",
        || {
            let forecast = sims.forecast.clone();
            let js = js.clone();
            let names = names.clone();
            let entity = entity.clone();
            async move {
                let report = forecast.received(&entity);
                let progress = progress(&js, &names).await;
                (report.applied() == 580
                    && progress.dead_lettered == 20
                    && progress.delivered == 580)
                    .then_some(report)
            }
        },
    )
    .await;

    // Exactly once, with the content the mapping promises.
    assert_eq!(report.duplicates(), 0, "no record was delivered twice");
    let source: BTreeMap<String, Value> = sims
        .erp
        .all(SALES_ORDER_LINES)
        .into_iter()
        .map(|r| (key_of(SALES_ORDER_LINES, &r), Value::Object(r)))
        .collect();
    for (key, arrived) in &report.keys {
        assert_eq!(arrived.applied_versions.len(), 1, "{key} applied once");
        let original = &source[key];
        let value = &arrived.value;
        assert_eq!(value["sku"], original["Material"]);
        assert_eq!(
            value["orderedQuantity"].to_string(),
            original["RequestedQuantity"].as_str().unwrap()
        );
        assert_eq!(value["customer"], original["to_SalesOrder"]["SoldToParty"]);
        assert_eq!(value["changedAt"], original["LastChangeDateTime"]);
        assert_eq!(value["source"], "s4");
        let expected_location = match original["Plant"].as_str().unwrap() {
            "1010" => "DC-NORTH",
            "1020" => "DC-SOUTH",
            "1030" => "DC-EAST",
            _ => "DC-WEST",
        };
        assert_eq!(value["location"], expected_location);
    }

    // Dead letters carry reason, stage, detail, the original record and the correlation id.
    let letters = list_dead_letters(&js, &names, None).await.unwrap();
    assert_eq!(letters.len(), 20);
    let unmapped: Vec<_> = letters
        .iter()
        .filter(|l| l.reason == "UnmappedCode")
        .collect();
    let invalid: Vec<_> = letters
        .iter()
        .filter(|l| l.reason == "QualityRule" || l.reason == "ContractViolation")
        .collect();
    assert_eq!((unmapped.len(), invalid.len()), (10, 10), "{letters:#?}");
    for letter in &unmapped {
        assert_eq!(letter.record["Plant"], "9999");
        assert_eq!(letter.stage, "translate");
        assert!(
            letter.detail.contains("plant-to-location"),
            "{}",
            letter.detail
        );
        assert!(
            letter.trace_id.len() == 32 && letter.trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "trace id: {}",
            letter.trace_id
        );
    }
    // Derived from each record's identity: ten records, ten ids.
    let traces: std::collections::HashSet<&str> =
        unmapped.iter().map(|l| l.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 10, "{traces:?}");
    for letter in &invalid {
        assert_eq!(letter.record["RequestedQuantity"], "-3");
        assert!(
            letter.detail.contains("orderedQuantity"),
            "{}",
            letter.detail
        );
    }

    let progress_now = progress(&js, &names).await;
    assert_eq!(
        progress_now.read,
        progress_now.delivered + progress_now.dead_lettered
    );
    assert!(progress_now.last_success_unix.is_some());
    assert!(progress_now.cursor.is_some());

    // Incremental: changes made after the first pass arrive, as new versions.
    for key in ["1000001/10", "1000002/20"] {
        sims.erp
            .update(
                SALES_ORDER_LINES,
                key,
                json!({"RequestedQuantity": "42"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
    }
    eventually(TIMEOUT, "the two updates at the target", || {
        let report = sims.forecast.received(&entity);
        async move {
            ["1000001/10", "1000002/20"]
                .iter()
                .all(|k| {
                    report.keys[*k].value["orderedQuantity"] == 42
                        && report.keys[*k].applied_versions.len() == 2
                })
                .then_some(())
        }
    })
    .await;
    worker.stop().await.unwrap();

    // Fix the code map (the operator would roll the workers with the new table), redrive.
    let mut fixed = config.clone();
    fixed
        .mapping
        .code_maps
        .insert("plant-to-location".into(), sample::plant_to_location(true));
    let worker = InProcessWorker::start(fixed, "w2");
    let moved = redrive(&js, &names, Some("UnmappedCode")).await.unwrap();
    assert_eq!((moved.redriven, moved.skipped), (10, 10));
    eventually(
        TIMEOUT,
        "the formerly unmapped records at the target",
        || {
            let report = sims.forecast.received(&entity);
            async move {
                let overflow = report
                    .keys
                    .values()
                    .filter(|k| k.value["location"] == "DC-OVERFLOW")
                    .count();
                (overflow == 10).then_some(())
            }
        },
    )
    .await;
    let letters = list_dead_letters(&js, &names, None).await.unwrap();
    assert_eq!(
        letters.len(),
        10,
        "only the invalid quantities stay dead-lettered"
    );
    assert!(letters.iter().all(|l| l.reason != "UnmappedCode"));

    // Redriven and refused again, twice: each record keeps its correlation id.
    let traces: std::collections::BTreeSet<String> =
        letters.iter().map(|l| l.trace_id.clone()).collect();
    assert_eq!(traces.len(), 10, "{traces:?}");
    let mut last_sequence = letters.iter().map(|l| l.sequence).max().unwrap();
    for round in 1..=2 {
        let moved = redrive(&js, &names, None).await.unwrap();
        assert_eq!((moved.redriven, moved.skipped), (10, 0), "redrive {round}");
        let again = eventually(
            TIMEOUT,
            "the invalid quantities dead-lettered again",
            || {
                let (js, names) = (js.clone(), names.clone());
                async move {
                    let letters = list_dead_letters(&js, &names, None).await.ok()?;
                    (letters.len() == 10 && letters.iter().all(|l| l.sequence > last_sequence))
                        .then_some(letters)
                }
            },
        )
        .await;
        let again_traces: std::collections::BTreeSet<String> =
            again.iter().map(|l| l.trace_id.clone()).collect();
        assert_eq!(again_traces, traces, "redrive {round}");
        last_sequence = again.iter().map(|l| l.sequence).max().unwrap();
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refresh_rereads_everything_and_only_changes_get_through() {
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(ErpSeed {
        order_lines: 200,
        bad_every: 0,
        ..seed()
    })
    .await;
    let flow = unique_flow("refresh");
    let config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let entity = config.target.entity.clone();
    let worker = InProcessWorker::start(config.clone(), "refresh-a");
    eventually(TIMEOUT, "the first 200 records", || {
        let report = sims.forecast.received(&entity);
        async move { (report.applied() == 200).then_some(()) }
    })
    .await;
    worker.stop().await.unwrap();

    // Two changes the incremental worker has not seen; then the CronJob's full refresh.
    for key in ["1000003/10", "1000004/10"] {
        sims.erp
            .update(
                SALES_ORDER_LINES,
                key,
                json!({"RequestedQuantity": "7"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
    }
    let dir = TempDir::new("refresh");
    let path = dir.0.join("worker.json");
    let refresh = e2e_support::with_flow_identity(config.clone());
    std::fs::write(&path, serde_json::to_vec(&refresh).unwrap()).unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_flowplane"))
        .args(["worker", "--full-refresh", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        report,
        json!({"read": 200, "published": 2, "duplicates": 198})
    );

    let worker = InProcessWorker::start(config, "refresh-b");
    let report = eventually(TIMEOUT, "the two changes at the target", || {
        let report = sims.forecast.received(&entity);
        async move { (report.applied() == 202).then_some(report) }
    })
    .await;
    assert_eq!(report.keys["1000003/10"].value["orderedQuantity"], 7);
    assert_eq!(report.duplicates(), 0);
    worker.stop().await.unwrap();
}
