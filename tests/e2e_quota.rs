//! One quota per binding across the cluster: three workers of two flows write to one target
//! binding, and what its server sees is counted there (a small counting server of the test's
//! own; the rate is measured where it matters, at the server). The quota's state lives in the
//! binding's NATS key-value bucket, on a real nats-server.

mod e2e_support;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use e2e_support::*;
use flowplane::api::ConnectorBinding;
use flowplane::api::connector_binding::{BodyEnvelope, QuotaState, RateLimit, RestWrite};
use flowplane::controller::connector_binding::status::quota_usage;
use flowplane::queue::{list_dead_letters, read_quota};
use flowplane::sim::erp::ErpSeed;
use flowplane::worker::sample;
use flowplane::worker_config::WorkerConfig;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);
/// Sales order lines in the ERP simulator; each of the two flows delivers every one.
const LINES: u32 = 150;

/// Every request the counting server answered: when, to which path, the records it carried.
#[derive(Default)]
struct Seen {
    requests: Vec<(Instant, String, Vec<String>)>,
    /// Answer the request with this number (counting from 1) with 429 and `Retry-After: 3`.
    throttle_at: Option<usize>,
    /// When that 429 went out.
    throttled: Option<Instant>,
    arrived: usize,
}

type Log = Arc<Mutex<Seen>>;

async fn counting_server() -> (String, Log) {
    let log = Log::default();
    let router = Router::new()
        .route(
            "/ingest/{flow}",
            post(
                |State(log): State<Log>, Path(flow): Path<String>, body: String| async move {
                    let records: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
                    let records = records.iter().map(Value::to_string).collect();
                    let mut log = log.lock().unwrap();
                    log.arrived += 1;
                    if log.throttle_at == Some(log.arrived) {
                        log.throttled = Some(Instant::now());
                        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3")], "{}");
                    }
                    log.requests.push((Instant::now(), flow, records));
                    (StatusCode::OK, [("retry-after", "0")], "{}")
                },
            ),
        )
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, log)
}

/// A flow from the ERP simulator to `/ingest/<path>` on the counting server, one record per
/// request, through the target binding `binding` with `limit`.
fn flow(
    nats: &str,
    erp: &str,
    server: &str,
    path: &str,
    binding: &str,
    limit: &RateLimit,
) -> WorkerConfig {
    let mut config = sample::sales_order_flow("e2e", &unique_flow(path), nats, erp, server);
    config.target.endpoint.binding = binding.into();
    config.target.endpoint.rate_limit = Some(limit.clone());
    config.target.entity = format!("/ingest/{path}");
    config.target.batch_size = 1;
    config.target.rest = Some(RestWrite {
        body: BodyEnvelope::JsonArray,
        ..RestWrite::default()
    });
    config
}

fn binding(name: &str, limit: &RateLimit) -> ConnectorBinding {
    let mut binding: ConnectorBinding = serde_yaml::from_str(&format!(
        "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\n\
         metadata: {{name: {name}, namespace: e2e}}\n\
         spec: {{system: Forecasting, protocol: Rest, endpoint: {{url: 'http://planner.test'}}}}\n"
    ))
    .unwrap();
    binding.spec.rate_limit = Some(limit.clone());
    binding
}

/// Records each path received, and how often each record arrived.
fn received(log: &Log) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut by_path: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for (_, path, records) in &log.lock().unwrap().requests {
        for record in records {
            *by_path
                .entry(path.clone())
                .or_default()
                .entry(record.clone())
                .or_default() += 1;
        }
    }
    by_path
}

fn requests(log: &Log) -> usize {
    log.lock().unwrap().requests.len()
}

/// Both paths have every line exactly once.
fn every_line_once(log: &Log) -> bool {
    let by_path = received(log);
    ["a", "b"].iter().all(|path| {
        by_path
            .get(*path)
            .is_some_and(|r| r.len() == LINES as usize && r.values().all(|n| *n == 1))
    })
}

async fn sims() -> Sims {
    start_sims(ErpSeed {
        order_lines: LINES,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    })
    .await
}

/// Two flows, `a` and `b`, from the ERP simulator to the counting server through one target
/// binding with `limit`. Fields drop in order: the queues are removed before the server stops.
struct TwoFlows {
    _cleanup: [QueueCleanup; 2],
    a: WorkerConfig,
    b: WorkerConfig,
    binding: String,
    log: Log,
    _sims: Sims,
    nats: PrivateNats,
}

async fn two_flows(limit: &RateLimit) -> TwoFlows {
    let nats = PrivateNats::start();
    let sims = sims().await;
    let (server, log) = counting_server().await;
    let binding = unique_flow("planner");
    let a = flow(&nats.url(), &sims.erp_url, &server, "a", &binding, limit);
    let b = flow(&nats.url(), &sims.erp_url, &server, "b", &binding, limit);
    let _cleanup = [a.clone(), b.clone()].map(|c| QueueCleanup {
        url: nats.url(),
        names: c.queue,
    });
    TwoFlows {
        _cleanup,
        a,
        b,
        binding,
        log,
        _sims: sims,
        nats,
    }
}

/// Waits until both paths have every line once, then stops the workers.
async fn deliver_every_line(log: &Log, workers: [InProcessWorker; 3]) {
    eventually(TIMEOUT, "every line at both paths", || async {
        every_line_once(log).then_some(())
    })
    .await;
    for worker in workers {
        worker.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_of_two_flows_share_one_binding_rate() {
    let limit = RateLimit {
        requests_per_second: 50,
        burst: 5,
        max_concurrent: 4,
        requests_per_day: None,
    };
    // Bound whole: a pattern taking only some fields would drop the simulators and the
    // queues' cleanup at once.
    let flows = two_flows(&limit).await;
    let (a, b) = (flows.a.clone(), flows.b.clone());
    let (planner, log, nats) = (&flows.binding, &flows.log, &flows.nats);
    let workers = [
        InProcessWorker::start(a.clone(), "a-1"),
        InProcessWorker::start(a.clone(), "a-2"),
        InProcessWorker::start(b.clone(), "b-1"),
    ];
    deliver_every_line(log, workers).await;

    let times: Vec<Instant> = log.lock().unwrap().requests.iter().map(|r| r.0).collect();
    let span = times[times.len() - 1].duration_since(times[0]);
    // The most requests any one second saw, and the average.
    let busiest = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    println!(
        "{} requests from 3 workers of 2 flows in {:.2} s at the server: {:.1} requests/s on average, at most {busiest} in any one second (limit 50/s, burst 5)",
        times.len(),
        span.as_secs_f64(),
        times.len() as f64 / span.as_secs_f64()
    );
    assert_eq!(times.len(), 2 * LINES as usize, "one request per record");
    // A token bucket of rate r and burst b lets at most b + r * t requests through in any
    // time t; half a second allows for requests arriving closer together than they were sent
    // on a busy machine (one limiter per worker would have sent them in about 2 s).
    let bound = 5.0 + 50.0 * (span.as_secs_f64() + 0.5);
    assert!(
        times.len() as f64 <= bound,
        "{} requests in {:?}: more than 50/s together",
        times.len(),
        span
    );
    let js = jetstream(&nats.url()).await;
    for config in [&a, &b] {
        let p = progress(&js, &config.queue).await;
        assert_eq!((p.read, p.delivered, p.dead_lettered), (150, 150, 0));
    }
    let state = read_quota(&js, "e2e", planner).await.unwrap().unwrap();
    assert_eq!(state.used_today, 2 * u64::from(LINES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_daily_quota_workers_stop_say_so_and_lose_nothing() {
    let mut limit = RateLimit {
        requests_per_second: 100,
        burst: 10,
        max_concurrent: 4,
        requests_per_day: Some(100),
    };
    // Bound whole: a pattern taking only some fields would drop the simulators and the
    // queues' cleanup at once.
    let flows = two_flows(&limit).await;
    let (a, b) = (flows.a.clone(), flows.b.clone());
    let (planner, log, nats) = (&flows.binding, &flows.log, &flows.nats);
    let js = jetstream(&nats.url()).await;
    let workers = [
        InProcessWorker::start(a.clone(), "a-1"),
        InProcessWorker::start(a.clone(), "a-2"),
        InProcessWorker::start(b.clone(), "b-1"),
    ];
    // Both flows say why they stopped (status.sync.blocked comes from this record).
    for config in [&a, &b] {
        let blocked = eventually(TIMEOUT, "the flow to say the quota is used up", || {
            let js = js.clone();
            let names = config.queue.clone();
            async move { progress(&js, &names).await.blocked }
        })
        .await;
        assert!(blocked.contains("daily quota"), "{blocked}");
    }
    // The binding's status, as the binding controller builds it from the shared record.
    let state = read_quota(&js, "e2e", planner).await.unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let usage = quota_usage(&binding(planner, &limit), state.as_ref(), now).unwrap();
    assert_eq!(usage.state, QuotaState::Exhausted);
    assert_eq!((usage.used_today, usage.requests_per_day), (100, Some(100)));
    assert!(usage.message.unwrap().contains("used up"));
    // Held, not lost, not sent: exactly the day's quota reached the server, nothing is
    // dead-lettered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(requests(log), 100);
    for config in [&a, &b] {
        assert_eq!(progress(&js, &config.queue).await.dead_lettered, 0);
    }
    for worker in workers {
        worker.stop().await.unwrap();
    }

    // The quota is raised (the binding's workers are rolled with the new limit): the rest
    // arrives, each record once.
    limit.requests_per_day = Some(1000);
    let raised = |mut config: WorkerConfig| {
        config.target.endpoint.rate_limit = Some(limit.clone());
        config
    };
    let (a, b) = (raised(a), raised(b));
    let workers = [
        InProcessWorker::start(a.clone(), "a-3"),
        InProcessWorker::start(b.clone(), "b-2"),
        InProcessWorker::start(b.clone(), "b-3"),
    ];
    eventually(TIMEOUT, "every line at both paths", || async {
        every_line_once(log).then_some(())
    })
    .await;
    for config in [&a, &b] {
        eventually(TIMEOUT, "the flow to deliver again", || {
            let js = js.clone();
            let names = config.queue.clone();
            async move {
                let p = progress(&js, &names).await;
                (p.delivered == u64::from(LINES) && p.blocked.is_none()).then_some(p)
            }
        })
        .await;
    }
    for worker in workers {
        worker.stop().await.unwrap();
    }
    assert_eq!(requests(log), 2 * LINES as usize);
    for config in [&a, &b] {
        let p = progress(&js, &config.queue).await;
        assert_eq!((p.read, p.delivered, p.dead_lettered), (150, 150, 0));
        assert!(
            list_dead_letters(&js, &config.queue, None)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let state = read_quota(&js, "e2e", planner).await.unwrap();
    let usage = quota_usage(&binding(planner, &limit), state.as_ref(), now).unwrap();
    assert_eq!(usage.state, QuotaState::Available);
    assert_eq!(usage.used_today, 2 * u64::from(LINES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_pauses_every_worker_of_the_binding() {
    let limit = RateLimit {
        requests_per_second: 50,
        burst: 5,
        max_concurrent: 4,
        requests_per_day: None,
    };
    let flows = two_flows(&limit).await;
    let (a, b, log) = (&flows.a, &flows.b, &flows.log);
    log.lock().unwrap().throttle_at = Some(40);
    let workers = [
        InProcessWorker::start(a.clone(), "a-1"),
        InProcessWorker::start(b.clone(), "b-1"),
        InProcessWorker::start(b.clone(), "b-2"),
    ];
    deliver_every_line(log, workers).await;
    let log = log.lock().unwrap();
    let throttled = log.throttled.expect("the 429 was sent");
    // Requests that took their token before the pause was stored may still arrive just after
    // the 429; from a second on, none until the 3 s are over, from any of the three workers.
    let during: Vec<Duration> = log
        .requests
        .iter()
        .map(|r| r.0)
        .filter(|t| *t > throttled)
        .map(|t| t.duration_since(throttled))
        .filter(|d| *d >= Duration::from_secs(1) && *d < Duration::from_millis(2900))
        .collect();
    println!(
        "{} requests after the 429; first at +{:?}",
        log.requests.iter().filter(|r| r.0 > throttled).count(),
        log.requests
            .iter()
            .filter(|r| r.0 > throttled)
            .map(|r| r.0.duration_since(throttled))
            .min()
    );
    assert!(during.is_empty(), "requests during the pause: {during:?}");
    assert_eq!(
        log.requests.len(),
        2 * LINES as usize,
        "the refused one sent again, once"
    );
}
