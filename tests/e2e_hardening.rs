//! End-to-end data-plane hardening (issue 14): a target that refuses the binding's access for
//! a while, oversized, too deep and invalid records at the source, a `$batch` bomb from a
//! target, and the worker's log output. Exact counts throughout: every record read is at the
//! target or in the dead-letter stream, never both, never neither.

mod e2e_support;
mod support;

use std::time::Duration;

use e2e_support::*;
use flowplane::sim::erp::ErpSeed;
use flowplane::sim::faults::FaultSpec;
use flowplane::worker::{RunOptions, run, sample};
use tokio::sync::watch;

const TIMEOUT: Duration = Duration::from_secs(120);

fn seed(lines: u32) -> ErpSeed {
    ErpSeed {
        order_lines: lines,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    }
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn readyz(addr: std::net::SocketAddr) -> (u16, String) {
    match reqwest::get(format!("http://{addr}/readyz")).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// An expired token: the target answers 401 for a while, then takes records again. Nothing is
/// dead-lettered, the worker is not ready meanwhile with the reason (and says so in the flow's
/// progress record), and afterwards every record arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_401_for_a_while_dead_letters_nothing_and_is_not_ready_meanwhile() {
    flowplane::worker::http::install_crypto_provider();
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(300)).await;
    sims.forecast.faults.set(FaultSpec {
        status: Some(401),
        ..Default::default()
    });
    let flow = unique_flow("refused");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    // Few deliveries: a refusal that used one up per trial call would dead-letter soon.
    config.delivery.max_deliver = 3;
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let js = jetstream(&nats_url).await;
    let names = config.queue.clone();
    let entity = config.target.entity.clone();
    let listen = free_port();
    let (stop, shutdown) = watch::channel(false);
    let options = RunOptions {
        lease_ttl: Duration::from_secs(3),
        listen: Some(listen),
        ..RunOptions::new("refused-a")
    };
    let worker = tokio::spawn(run(with_flow_identity(config), options, shutdown));

    let started = std::time::Instant::now();
    let why = eventually(
        TIMEOUT,
        "the worker to say the target refuses access",
        || async move {
            let (status, body) = readyz(listen).await;
            (status == 503 && body.contains("target refuses access: HTTP 401")).then_some(body)
        },
    )
    .await;
    assert!(why.contains("Secret"), "{why}");
    eventually(
        TIMEOUT,
        "the progress record to say delivery is held",
        || {
            let js = js.clone();
            let names = names.clone();
            async move {
                let p = progress(&js, &names).await;
                p.blocked.filter(|b| b.contains("401")).map(|_| ())
            }
        },
    )
    .await;
    // Several trial calls are refused while the records wait.
    eventually(TIMEOUT, "8 refused calls", || {
        let failed = sims.forecast.faults.failed();
        async move { (failed >= 8).then_some(()) }
    })
    .await;
    let p = progress(&js, &names).await;
    assert_eq!(p.dead_lettered, 0, "no record is dead-lettered for a 401");
    assert_eq!(p.delivered, 0);

    // The token is valid again.
    sims.forecast.faults.clear();
    let report = eventually(TIMEOUT, "all 300 records after recovery", || {
        let report = sims.forecast.received(&entity);
        async move { (report.applied() >= 300).then_some(report) }
    })
    .await;
    assert_eq!(report.keys.len(), 300);
    let p = eventually(
        TIMEOUT,
        "progress to show 300 delivered, nothing held",
        || {
            let js = js.clone();
            let names = names.clone();
            async move {
                let p = progress(&js, &names).await;
                (p.delivered == 300 && p.blocked.is_none()).then_some(p)
            }
        },
    )
    .await;
    assert_eq!((p.read, p.dead_lettered), (300, 0));
    let (status, body) = readyz(listen).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < TIMEOUT);
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
}

/// The worker's log never carries record values or credentials, only keys and reasons: a
/// worker process logging everything (debug) moves a flow with a bad record (an unknown plant,
/// quoted in its dead letter's detail) to a target it authenticates to with a Bearer token;
/// neither the plant code nor the token appears in its output, the key and reason do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_log_carries_keys_and_reasons_never_record_values() {
    flowplane::worker::http::install_crypto_provider();
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(50)).await;
    const PLANT: &str = "PLANT-SECRET-7Q4Z";
    sims.erp
        .update(
            flowplane::sim::erp::SALES_ORDER_LINES,
            "1000000/10",
            serde_json::json!({"Plant": PLANT})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
    let flow = unique_flow("logs");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    let dir = TempDir::new("logs");
    const TOKEN: &str = "tok-SECRET-91XK";
    std::fs::write(dir.0.join("token"), TOKEN).unwrap();
    config.target.endpoint.auth = flowplane::api::connector_binding::AuthType::Bearer;
    config.target.endpoint.secret_dir = Some(dir.0.display().to_string());
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let js = jetstream(&nats_url).await;
    let names = config.queue.clone();
    let log = dir.0.join("worker.log");
    let _worker =
        WorkerProcess::start_logging(&config, &dir.0, "logs-a", "debug", &log, free_port());
    let p = eventually(TIMEOUT, "49 delivered and 1 dead-lettered", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let p = progress(&js, &names).await;
            (p.delivered + p.dead_lettered == 50).then_some(p)
        }
    })
    .await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (50, 49, 1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("record dead-lettered") && text.contains("UnmappedCode"),
        "the log shows the dead letter by key and reason: {text}"
    );
    assert!(text.contains("1000000"), "the key is logged: {text}");
    for secret in [PLANT, TOKEN] {
        assert!(!text.contains(secret), "the log carries {secret}");
    }
}

/// A 5 MiB record (five times NATS's max payload) and a record nested 300 deep sit among 200
/// good ones at the ERP. Before, the first failed every extraction pass forever and the
/// second made the whole page unreadable. Now both are dead-lettered at extraction with their
/// reason and the pass goes on: 198 delivered + 2 dead letters = 200 read, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_record_and_a_too_deep_record_are_dead_lettered_at_extraction() {
    flowplane::worker::http::install_crypto_provider();
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(200)).await;
    let big = "x".repeat(5 * 1024 * 1024);
    sims.erp
        .update(
            flowplane::sim::erp::SALES_ORDER_LINES,
            "1000005/10",
            serde_json::json!({"Material": big})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
    let mut deep = serde_json::json!(1);
    for _ in 0..300 {
        deep = serde_json::json!([deep]);
    }
    sims.erp
        .update(
            flowplane::sim::erp::SALES_ORDER_LINES,
            "1000007/30",
            serde_json::json!({"Material": deep})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
    let flow = unique_flow("limits");
    let config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let js = jetstream(&nats_url).await;
    let names = config.queue.clone();
    let entity = config.target.entity.clone();
    let started = std::time::Instant::now();
    // A worker process, to measure its memory.
    let dir = TempDir::new("limits");
    let worker = WorkerProcess::start_logging(
        &config,
        &dir.0,
        "limits-a",
        "warn",
        &dir.0.join("worker.log"),
        free_port(),
    );
    let p = eventually(TIMEOUT, "198 delivered and 2 dead-lettered", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let p = progress(&js, &names).await;
            (p.delivered + p.dead_lettered >= 200).then_some(p)
        }
    })
    .await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (200, 198, 2));
    assert_eq!(sims.forecast.received(&entity).keys.len(), 198);
    // The dead letters carry their reasons; the big one is cut, with its size.
    let letters = flowplane::queue::redrive::list_dead_letters(&js, &names, None)
        .await
        .unwrap();
    let mut reasons: Vec<_> = letters
        .iter()
        .map(|l| (l.key.clone(), l.reason.clone()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("1000005/10".to_string(), "RecordTooLarge".to_string()),
            ("1000007/30".to_string(), "Malformed".to_string()),
        ]
    );
    // Passes go on: nothing more is dead-lettered on later (inclusive) passes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = progress(&js, &names).await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (200, 198, 2));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let peak = worker.peak_rss_kib().expect("the worker's peak RSS");
    eprintln!("worker peak RSS with a 5 MiB record: {} MiB", peak / 1024);
    assert!(
        peak < 256 * 1024,
        "within the default memory limit: {peak} KiB"
    );
}

/// An OData target answers `$batch` calls with multiparts nested 20,000 deep (~800 KB, which
/// overflowed the worker's stack before): the answer is refused quickly as transient, the
/// records are sent again, and once the target answers properly all 100 arrive, none
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_with_a_nested_multipart_bomb_is_survived_with_exact_counts() {
    use flowplane::api::connector_binding::{Protocol, System};
    flowplane::worker::http::install_crypto_provider();
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(100)).await;
    sims.erp.answer_batches_with_bombs(5);
    let flow = unique_flow("bomb");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    config.target.endpoint =
        sample::endpoint("erp-pir", System::Erp, Protocol::OData, &sims.erp_url);
    config.target.entity = flowplane::sim::erp_write::PLANNED_INDEPENDENT_REQUIREMENTS.into();
    sims.erp.declare_keys(
        flowplane::sim::erp_write::PLANNED_INDEPENDENT_REQUIREMENTS,
        &["salesOrder", "salesOrderItem"],
    );
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let js = jetstream(&nats_url).await;
    let names = config.queue.clone();
    let started = std::time::Instant::now();
    let worker = InProcessWorker::start(config, "bomb-a");
    let p = eventually(TIMEOUT, "100 delivered after 5 bombs", || {
        let js = js.clone();
        let names = names.clone();
        let sent = sims.erp.bombs_sent();
        async move {
            let p = progress(&js, &names).await;
            (sent == 5 && p.delivered + p.dead_lettered >= 100).then_some(p)
        }
    })
    .await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (100, 100, 0));
    let report = sims
        .erp
        .received(flowplane::sim::erp_write::PLANNED_INDEPENDENT_REQUIREMENTS);
    assert_eq!(report.keys.len(), 100);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    worker.stop().await.unwrap();
}

/// A rotated Secret: the endpoint refuses the old token (401); the client opens its breaker at
/// once (no retries spent on it), and its next call after the breaker's wait reads the token
/// file again, carries the new token and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_read_again_from_the_secret_file() {
    use flowplane::api::connector_binding::{AuthType, Protocol, System};
    use flowplane::worker::http::{CallError, HttpClient};
    flowplane::worker::http::install_crypto_provider();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let router = axum::Router::new().route(
        "/ping",
        axum::routing::get({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    seen.lock().unwrap().push(auth.clone());
                    if auth == "Bearer new-token" {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::UNAUTHORIZED
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = TempDir::new("rotate");
    std::fs::write(dir.0.join("token"), "old-token").unwrap();
    let mut endpoint = sample::endpoint("target", System::Forecasting, Protocol::Rest, &url);
    endpoint.auth = AuthType::Bearer;
    endpoint.secret_dir = Some(dir.0.display().to_string());
    let metrics = flowplane::worker::metrics::Metrics::new("ns", "flow");
    let http = HttpClient::new(&endpoint, metrics).unwrap();
    let ping = format!("{url}/ping");
    match http.send(|c| c.get(&ping)).await {
        Err(CallError::Refused { status: 401, .. }) => {}
        other => panic!("expected a refusal, got {:?}", other.map(|r| r.status())),
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "a refusal is not retried");
    assert!(
        !http.breaker.open_remaining().is_zero(),
        "the breaker is open"
    );
    // The Secret is rotated; the kubelet updates the file.
    std::fs::write(dir.0.join("token"), "new-token").unwrap();
    tokio::time::sleep(http.breaker.open_remaining()).await;
    let answer = http.send(|c| c.get(&ping)).await.unwrap().status().as_u16();
    assert_eq!(answer, 200);
    assert_eq!(seen.lock().unwrap().last().unwrap(), "Bearer new-token");
}
