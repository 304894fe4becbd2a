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
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
    let names = config.queue.clone();
    let entity = config.target.entity.clone();
    let listen = free_port();
    let limits = config.clone();
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
    // The worker ran in this process (its readiness is read from it): this peak bounds its own.
    let peak = peak_rss_kib("/proc/self/status").expect("this process's peak RSS");
    eprintln!(
        "test process peak RSS (the worker ran in it, beside the simulators and other tests): {} MiB (limit {})",
        peak / 1024,
        limits.limits.memory
    );
    assert!(peak < memory_limit_kib(&limits), "{peak} KiB");
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
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
    let names = config.queue.clone();
    let log = dir.0.join("worker.log");
    let worker =
        WorkerProcess::start_logging(&config, &dir.0, "logs-a", "debug", &log, free_port());
    let p = settled(&js, &names, 50, TIMEOUT).await;
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
    assert_peak_rss_within_limit(&worker, &config, "debug logging");
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
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
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
    let p = settled(&js, &names, 200, TIMEOUT).await;
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
    assert_peak_rss_within_limit(&worker, &config, "a 5 MiB record");
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
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
    let names = config.queue.clone();
    let started = std::time::Instant::now();
    let dir = TempDir::new("bomb");
    let worker = WorkerProcess::start(&config, &dir.0, "bomb-a");
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
    assert_peak_rss_within_limit(&worker, &config, "5 nested multipart bombs");
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

/// The flow's worker memory limit (`limits.memory`, a Kubernetes quantity in Ki, Mi or Gi), in
/// KiB.
fn memory_limit_kib(config: &flowplane::worker_config::WorkerConfig) -> u64 {
    let memory = &config.limits.memory;
    let (number, unit) = memory.split_at(memory.len() - 2);
    let factor = match unit {
        "Ki" => 1,
        "Mi" => 1024,
        "Gi" => 1024 * 1024,
        other => panic!("limits.memory {memory:?}: unit {other:?}"),
    };
    number.parse::<u64>().expect("limits.memory is a number") * factor
}

/// Prints the worker process's peak resident memory (VmHWM of /proc/<pid>/status: the most it
/// held at any moment since it started) and asserts it stayed under the flow's memory limit,
/// as the container's would have to.
fn assert_peak_rss_within_limit(
    worker: &WorkerProcess,
    config: &flowplane::worker_config::WorkerConfig,
    under: &str,
) {
    let peak = worker.peak_rss_kib().expect("the worker's peak RSS");
    let limit = memory_limit_kib(config);
    eprintln!(
        "worker peak RSS under {under}: {} MiB (limit {})",
        peak / 1024,
        config.limits.memory
    );
    assert!(
        peak < limit,
        "{peak} KiB is over limits.memory {}",
        config.limits.memory
    );
}

/// A REST source, written here so a record can carry bytes no JSON library writes: order lines
/// as a JSON array, those changed at or after `since` (inclusive, as the worker's incremental
/// restart expects), at most `limit` of them while it honours the page size, all otherwise.
struct RestOrders {
    /// (LastChangeDateTime, the record's bytes), in change order.
    records: Vec<(String, Vec<u8>)>,
    honours_limit: std::sync::atomic::AtomicBool,
    requests: std::sync::atomic::AtomicU64,
    /// The `limit` the last request asked for.
    asked: std::sync::Mutex<Option<String>>,
}

impl RestOrders {
    /// `n` sales order lines of the ERP simulator's seed, each changed a second after the one
    /// before; `mangle` may change any record's bytes.
    fn new(n: u32, mangle: impl Fn(u32, &mut Vec<u8>)) -> RestOrders {
        let records = (0..n)
            .map(|i| {
                let mut record = flowplane::sim::erp::sales_order_line(i, None);
                let changed = format!(
                    "2024-01-01T{:02}:{:02}:{:02}Z",
                    i / 3600,
                    i / 60 % 60,
                    i % 60
                );
                record.insert("LastChangeDateTime".into(), changed.clone().into());
                let mut bytes = serde_json::to_vec(&record).unwrap();
                mangle(i, &mut bytes);
                (changed, bytes)
            })
            .collect();
        RestOrders {
            records,
            honours_limit: true.into(),
            requests: 0.into(),
            asked: Default::default(),
        }
    }

    fn key(i: u32) -> String {
        let record = flowplane::sim::erp::sales_order_line(i, None);
        flowplane::sim::erp::key_of(flowplane::sim::erp::SALES_ORDER_LINES, &record)
    }

    /// Serves `/orders` on a free port; the URL of the service.
    async fn serve(self: &std::sync::Arc<Self>) -> String {
        use axum::extract::{Query, State};
        use std::collections::HashMap;
        use std::sync::atomic::Ordering;
        async fn orders(
            State(source): State<std::sync::Arc<RestOrders>>,
            Query(query): Query<HashMap<String, String>>,
        ) -> impl axum::response::IntoResponse {
            source.requests.fetch_add(1, Ordering::Relaxed);
            *source.asked.lock().unwrap() = query.get("limit").cloned();
            let limit = match source.honours_limit.load(Ordering::Relaxed) {
                true => query
                    .get("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(usize::MAX),
                false => usize::MAX,
            };
            let since = query.get("since").cloned().unwrap_or_default();
            let page: Vec<&[u8]> = source
                .records
                .iter()
                .filter(|(changed, _)| *changed >= since)
                .take(limit)
                .map(|(_, bytes)| bytes.as_slice())
                .collect();
            let body = [b"[".as_slice(), &page.join(b",".as_slice()), b"]"].concat();
            ([("content-type", "application/json")], body)
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/orders", axum::routing::get(orders))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

/// The sample flow reading `/orders` of a [`RestOrders`] at `url`.
fn rest_orders_flow(
    flow: &str,
    nats_url: &str,
    url: &str,
    forecast_url: &str,
) -> flowplane::worker_config::WorkerConfig {
    use flowplane::api::connector_binding::{Protocol, System};
    let mut config = sample::sales_order_flow("e2e", flow, nats_url, url, forecast_url);
    config.source.endpoint = sample::endpoint("orders-api", System::Erp, Protocol::Rest, url);
    config.source.entity = "orders".into();
    config
}

/// A source record with bytes that are not UTF-8 inside one of its strings, on a page of 100:
/// serde_json refused the whole page (every pass failed, forever). Now that record is
/// dead-lettered at extraction (Malformed, with the bytes the source sent) and the others flow:
/// 99 delivered + 1 dead letter = 100 read, on every later pass too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_invalid_utf8_is_dead_lettered_and_the_page_flows() {
    flowplane::worker::http::install_crypto_provider();
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(0)).await;
    let source = std::sync::Arc::new(RestOrders::new(100, |i, bytes| {
        if i == 41 {
            let at = bytes.windows(9).position(|w| w == b"MAT-00041").unwrap();
            bytes.splice(at + 4..at + 6, [0xFF, 0xC3]);
        }
    }));
    let url = source.serve().await;
    let flow = unique_flow("utf8");
    let config = rest_orders_flow(&flow, &nats_url, &url, &sims.forecast_url);
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
    let names = config.queue.clone();
    let entity = config.target.entity.clone();
    let dir = TempDir::new("utf8");
    let worker = WorkerProcess::start(&config, &dir.0, "utf8-a");
    let p = settled(&js, &names, 100, TIMEOUT).await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (100, 99, 1));
    let received = sims.forecast.received(&entity);
    assert_eq!(received.keys.len(), 99);
    let letters = flowplane::queue::redrive::list_dead_letters(&js, &names, None)
        .await
        .unwrap();
    let letters: Vec<_> = letters
        .iter()
        .map(|l| (l.key.clone(), l.reason.clone()))
        .collect();
    assert_eq!(
        letters,
        vec![(RestOrders::key(41), "Malformed".to_string())]
    );
    // Later passes read the page again (inclusive cursor): nothing more is counted.
    let requests = source.requests.load(std::sync::atomic::Ordering::Relaxed);
    eventually(TIMEOUT, "3 more passes", || {
        let now = source.requests.load(std::sync::atomic::Ordering::Relaxed);
        async move { (now >= requests + 3).then_some(()) }
    })
    .await;
    let p = progress(&js, &names).await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (100, 99, 1));
    assert_peak_rss_within_limit(&worker, &config, "a record with invalid UTF-8");
}

/// `limits.maxPageRecords`: the worker asks for pages no larger (`limit=20` here), and a source
/// that sends more anyway is refused whole, as transient (the source ignores the page size,
/// no record is at fault): nothing is read or dead-lettered and the log says why. Once the
/// source honours the page size, all 60 records arrive: 60 read = 60 delivered + 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_max_page_records_is_refused_until_the_source_pages_smaller() {
    use std::sync::atomic::Ordering;
    flowplane::worker::http::install_crypto_provider();
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed(0)).await;
    let source = std::sync::Arc::new(RestOrders::new(60, |_, _| {}));
    source.honours_limit.store(false, Ordering::Relaxed);
    let url = source.serve().await;
    let flow = unique_flow("pagesize");
    let mut config = rest_orders_flow(&flow, &nats_url, &url, &sims.forecast_url);
    config.limits.max_page_records = 20;
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
    let names = config.queue.clone();
    let entity = config.target.entity.clone();
    let dir = TempDir::new("pagesize");
    let log = dir.0.join("worker.log");
    let worker =
        WorkerProcess::start_logging(&config, &dir.0, "pagesize-a", "warn", &log, free_port());
    eventually(TIMEOUT, "3 refused pages", || {
        let requests = source.requests.load(Ordering::Relaxed);
        async move { (requests >= 3).then_some(()) }
    })
    .await;
    assert_eq!(source.asked.lock().unwrap().as_deref(), Some("20"));
    let p = progress(&js, &names).await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (0, 0, 0));
    let why = eventually(TIMEOUT, "the log to name the limit", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            text.contains("more than limits.maxPageRecords (20)")
                .then_some(text)
        }
    })
    .await;
    assert!(why.contains("a page of 60 records"), "{why}");

    source.honours_limit.store(true, Ordering::Relaxed);
    let p = settled(&js, &names, 60, TIMEOUT).await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (60, 60, 0));
    assert_eq!(sims.forecast.received(&entity).keys.len(), 60);
    assert_peak_rss_within_limit(&worker, &config, "pages over maxPageRecords");
}

/// `limits.maxResponseBytes` (64 KiB here): a record of 70 KB, under `maxRecordBytes`, makes
/// the last page of the ERP's answer too large to read. Every other record arrives (199), none
/// is dead-lettered, and the pass is retried with the reason in the log; once the record is
/// small again at the source, it arrives too: 200 read = 200 delivered + 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_max_response_bytes_is_refused_until_it_fits() {
    flowplane::worker::http::install_crypto_provider();
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(ErpSeed {
        page_size: 50,
        ..seed(200)
    })
    .await;
    let order_lines = flowplane::sim::erp::SALES_ORDER_LINES;
    // Changed last, so it is on the last page.
    let big = serde_json::json!({"Material": "x".repeat(70_000)});
    sims.erp
        .update(order_lines, "1000012/30", big.as_object().unwrap().clone())
        .unwrap();
    let flow = unique_flow("response");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    config.limits.max_response_bytes = 64 * 1024;
    let (js, _cleanup) = flow_queue(&nats_url, &config.queue).await;
    let names = config.queue.clone();
    let entity = config.target.entity.clone();
    let dir = TempDir::new("response");
    let log = dir.0.join("worker.log");
    let worker =
        WorkerProcess::start_logging(&config, &dir.0, "response-a", "warn", &log, free_port());
    eventually(TIMEOUT, "199 delivered", || {
        let js = js.clone();
        let names = names.clone();
        async move { (progress(&js, &names).await.delivered >= 199).then_some(()) }
    })
    .await;
    let requests = sims.erp.requests();
    eventually(TIMEOUT, "3 more source requests", || {
        let now = sims.erp.requests();
        async move { (now >= requests + 3).then_some(()) }
    })
    .await;
    let p = progress(&js, &names).await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (199, 199, 0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("more than limits.maxResponseBytes (65536)"),
        "{text}"
    );

    let fixed = serde_json::json!({"Material": "MAT-00012"});
    sims.erp
        .update(
            order_lines,
            "1000012/30",
            fixed.as_object().unwrap().clone(),
        )
        .unwrap();
    let p = settled(&js, &names, 200, TIMEOUT).await;
    assert_eq!((p.read, p.delivered, p.dead_lettered), (200, 200, 0));
    assert_eq!(sims.forecast.received(&entity).keys.len(), 200);
    assert_peak_rss_within_limit(&worker, &config, "a response over maxResponseBytes");
}
