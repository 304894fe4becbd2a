//! End-to-end under failure: a worker killed mid-run, nats-server restarted mid-run, a target
//! failing with 500s then 429s, and several worker processes racing on bursts of updates.
//! After recovery nothing is lost and nothing is applied twice at the target.

mod e2e_support;
mod support;

use std::time::Duration;

use e2e_support::*;
use flowplane::sim::erp::ErpSeed;
use flowplane::sim::faults::FaultSpec;
use flowplane::sim::forecast::EntityReport;
use flowplane::worker::sample;

const TIMEOUT: Duration = Duration::from_secs(180);

fn seed(lines: u32) -> ErpSeed {
    ErpSeed {
        order_lines: lines,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    }
}

fn assert_exactly_once(report: &EntityReport, keys: usize) {
    assert_eq!(report.keys.len(), keys, "every key arrived");
    for (key, arrived) in &report.keys {
        assert_eq!(
            arrived.applied_versions.len(),
            1,
            "{key} applied exactly once"
        );
    }
}

async fn wait_applied(sims: &Sims, entity: &str, at_least: u64, what: &str) -> EntityReport {
    eventually(TIMEOUT, what, || {
        let report = sims.forecast.received(entity);
        async move { (report.applied() >= at_least).then_some(report) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_and_restarted_loses_and_duplicates_nothing() {
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(2000)).await;
    // Slow target, so the kill lands mid-run.
    sims.forecast.faults.set(FaultSpec {
        latency_ms: 30,
        ..Default::default()
    });
    let flow = unique_flow("kill");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    config.target.batch_size = 50;
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let dir = TempDir::new("kill");
    let entity = config.target.entity.clone();

    let mut first = WorkerProcess::start(&config, &dir.0, "kill-a");
    wait_applied(&sims, &entity, 200, "some records before the kill").await;
    first.kill();
    let before = sims.forecast.received(&entity).applied();
    assert!(
        before < 2000,
        "the kill happened mid-run ({before} applied)"
    );

    let _second = WorkerProcess::start(&config, &dir.0, "kill-b");
    let report = wait_applied(&sims, &entity, 2000, "all 2000 records after the restart").await;
    // Settle: late redeliveries must not change anything.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report_after = sims.forecast.received(&entity);
    assert_eq!(report.applied(), report_after.applied());
    assert_exactly_once(&report_after, 2000);
    eprintln!(
        "redundant deliveries absorbed by the version check: {}",
        report_after.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_mid_run_loses_and_duplicates_nothing() {
    // The local NATS is shared; this test restarts one of its own.
    let _ = support::local_env();
    let mut nats = PrivateNats::start();
    let sims = start_sims(seed(2000)).await;
    sims.forecast.faults.set(FaultSpec {
        latency_ms: 30,
        ..Default::default()
    });
    let flow = unique_flow("natsrestart");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats.url(), &sims.erp_url, &sims.forecast_url);
    config.target.batch_size = 50;
    let entity = config.target.entity.clone();

    let worker = InProcessWorker::start(config, "nr-a");
    wait_applied(&sims, &entity, 200, "some records before the restart").await;
    nats.restart();
    let report = wait_applied(&sims, &entity, 2000, "all 2000 records after the restart").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(report.applied(), sims.forecast.received(&entity).applied());
    assert_exactly_once(&sims.forecast.received(&entity), 2000);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_with_500s_then_429s_gets_everything_once_after_recovery() {
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(500)).await;
    sims.forecast.faults.set(FaultSpec {
        status: Some(500),
        ..Default::default()
    });
    let flow = unique_flow("outage");
    let config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
    let names = config.queue.clone();
    let entity = config.target.entity.clone();

    let worker = InProcessWorker::start(config, "outage-a");
    eventually(TIMEOUT, "15 failed requests (500)", || {
        let failed = sims.forecast.faults.failed();
        async move { (failed >= 15).then_some(()) }
    })
    .await;
    sims.forecast.faults.set(FaultSpec {
        status: Some(429),
        count: Some(10),
        retry_after_secs: Some(1),
        ..Default::default()
    });
    eventually(TIMEOUT, "the 429s to be used up", || {
        let failed = sims.forecast.faults.failed();
        async move { (failed >= 25).then_some(()) }
    })
    .await;
    let report = wait_applied(&sims, &entity, 500, "all 500 records after recovery").await;
    assert_exactly_once(&report, 500);
    assert_eq!(report.duplicates(), 0, "failed requests applied nothing");
    let progress = eventually(TIMEOUT, "progress to show 500 delivered", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let p = progress(&js, &names).await;
            (p.delivered == 500).then_some(p)
        }
    })
    .await;
    assert_eq!(
        progress.dead_lettered, 0,
        "nothing gave up during the outage"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_worker_processes_a_burst_of_updates_ends_with_the_newest_value() {
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(20)).await;
    let flow = unique_flow("burst");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    // Small batches and many consumers, so updates of one key spread over workers.
    config.target.batch_size = 3;
    config.source.poll_interval = "50ms".into();
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let dir = TempDir::new("burst");
    let entity = config.target.entity.clone();
    let _workers: Vec<WorkerProcess> = (0..3)
        .map(|i| WorkerProcess::start(&config, &dir.0, &format!("burst-{i}")))
        .collect();
    wait_applied(&sims, &entity, 20, "the initial 20 records").await;

    let keys = ["1000000/10", "1000000/20", "1000001/10"];
    for round in 0..6u32 {
        let expected = update_in_bursts(&sims.erp, &keys, round, 60).await;
        eventually(
            TIMEOUT,
            &format!("round {round}: newest values at the target"),
            || {
                let report = sims.forecast.received(&entity);
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
        // Late deliveries of older versions must not overwrite the newest afterwards.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = sims.forecast.received(&entity);
        for (key, quantity) in &expected {
            assert_eq!(
                report.keys[*key].value["orderedQuantity"], *quantity,
                "round {round}, {key}"
            );
            let versions = &report.keys[*key].applied_versions;
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{key} applied in source order"
            );
        }
    }
}
