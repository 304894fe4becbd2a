//! Source change -> forecasting platform latency on the local stack: the ERP simulator stamps
//! each change with the wall-clock time it happened (`LastChangeDateTime`), a real worker
//! process polls it (OData incremental, `pollInterval` 1s: the smallest a flow may set),
//! publishes to the local environment's nats-server, consumes, maps, validates and upserts
//! into the forecasting simulator; the clock stops when the simulator has applied that
//! change's version. Not a test (no timing assertions): it prints every run's p50 / p99 / max
//! and the median of the runs' p99, and the p99 bucket of the worker's own
//! `flowplane_worker_end_to_end_latency_seconds{since="change"}` histogram as a cross-check.
//!
//! `cargo bench --bench latency` (with `scripts/local-env.sh up`'s environment);
//! `RUNS` (default 5) runs of `CHANGES` (default 100) changes, one every `SPACING_MS` (50).

#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_support::{
    QueueCleanup, TempDir, WorkerProcess, jetstream, settled, start_sims, unique_flow,
};
use flowplane::sim::erp::{ErpSeed, SALES_ORDER_LINES};
use flowplane::worker::sample;
use serde_json::json;

const SEED: u32 = 100;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The `q`-quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The worker histogram's cumulative buckets (since="change"): (le, count).
async fn histogram(port: u16) -> Vec<(String, f64)> {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("flowplane_worker_end_to_end_latency_seconds_bucket")
                && l.contains(r#"since="change""#)
        })
        .filter_map(|l| {
            let le = l.split(r#"le=""#).nth(1)?.split('"').next()?.to_string();
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// The upper bound of the bucket holding the p99 of what the histogram counted since
/// `before` (the seed records, changed in the simulator's 2024, are left out).
fn histogram_p99(before: &[(String, f64)], after: &[(String, f64)]) -> Option<String> {
    let counted: Vec<(&str, f64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (le.as_str(), count - earlier)
        })
        .collect();
    let total = counted.last()?.1;
    counted
        .iter()
        .find(|(_, count)| *count >= 0.99 * total)
        .map(|(le, _)| format!("<= {le} s ({total} records)"))
}

fn main() {
    let runs = env_number("RUNS", 5);
    let changes = env_number("CHANGES", 100);
    let spacing = Duration::from_millis(env_number("SPACING_MS", 50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let env = support::local_env();
        let sims = start_sims(ErpSeed {
            order_lines: SEED,
            inventory: 0,
            returns: 0,
            bad_every: 0,
            page_size: 100,
        })
        .await;
        sims.erp.stamp_wall_clock();
        let name = unique_flow("latency");
        let mut config =
            sample::sales_order_flow("bench", &name, &env.nats_url, &sims.erp_url, &sims.forecast_url);
        config.source.poll_interval = "1s".into();
        let _cleanup = QueueCleanup {
            url: env.nats_url.clone(),
            names: config.queue.clone(),
        };
        let dir = TempDir::new(&name);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let _worker = WorkerProcess::start_logging(
            &config,
            &dir.0,
            "w1",
            "warn",
            &dir.0.join("w1.log"),
            format!("127.0.0.1:{port}").parse().unwrap(),
        );
        let js = jetstream(&env.nats_url).await;
        settled(&js, &config.queue, u64::from(SEED), Duration::from_secs(120)).await;
        let seeded = histogram(port).await;
        println!(
            "source change -> forecasting platform: ERP simulator (OData, pollInterval 1s) -> worker process -> nats-server -> forecast simulator; {runs} runs of {changes} changes, one every {} ms",
            spacing.as_millis()
        );
        let mut p99s = Vec::new();
        for run in 1..=runs {
            // version (change time in ns) -> change time (ms)
            let mut pending: BTreeMap<u64, i64> = BTreeMap::new();
            let mut latencies = Vec::new();
            let mut next = tokio::time::Instant::now();
            let mut sent = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while (sent < changes || !pending.is_empty()) && tokio::time::Instant::now() < deadline {
                if sent < changes && tokio::time::Instant::now() >= next {
                    let line = (sent % u64::from(SEED)) as u32;
                    let key = format!("{}/{}", 1_000_000 + line / 10, (line % 10 + 1) * 10);
                    let fields = json!({"RequestedQuantity": format!("{}", 1 + (run * 7 + sent) % 40)});
                    let stamp = sims
                        .erp
                        .update(SALES_ORDER_LINES, &key, fields.as_object().unwrap().clone())
                        .expect("seeded line");
                    let at: jiff::Timestamp = stamp.parse().unwrap();
                    pending.insert(at.as_nanosecond() as u64, at.as_millisecond());
                    sent += 1;
                    next += spacing;
                }
                let received = sims.forecast.received("sales-order-lines");
                let arrived = now_ms();
                for key in received.keys.values() {
                    for version in &key.applied_versions {
                        if let Some(changed) = pending.remove(version) {
                            latencies.push(arrived - changed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(pending.is_empty(), "run {run}: {} changes never arrived", pending.len());
            latencies.sort_unstable();
            let (p50, p99, max) = (
                quantile(&latencies, 0.5),
                quantile(&latencies, 0.99),
                *latencies.last().unwrap(),
            );
            p99s.push(p99);
            println!(
                "run {run}: {} changes  p50 {p50} ms  p99 {p99} ms  max {max} ms  (load {})",
                latencies.len(),
                std::fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .split(' ')
                    .next()
                    .unwrap_or("?")
            );
        }
        p99s.sort_unstable();
        println!(
            "median p99 over {runs} runs: {} ms (target < 5000 ms); worker histogram p99 {}",
            p99s[p99s.len() / 2],
            histogram_p99(&seeded, &histogram(port).await).unwrap_or_else(|| "unavailable".into())
        );
    });
}
