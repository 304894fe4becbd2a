//! End-to-end throughput of the worker on this machine, against the floor of the same run:
//! the raw JetStream publish + consume (with acks) of the same payloads. Not a test; run it
//! through `scripts/bench-worker.sh` (it needs the nats-server the project installs).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use flowplane::sim::erp::{ErpSeed, ErpState, SALES_ORDER_LINES};
use flowplane::sim::forecast::ForecastState;
use flowplane::worker::{RunOptions, run, sample};
use futures::StreamExt;

struct Nats(Child, PathBuf);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn start_nats() -> (Nats, String) {
    let binary = std::env::var("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/flowplane/bin/nats-server")
        });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let store = std::env::temp_dir().join(format!("flowplane-bench-{}", std::process::id()));
    let child = Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {}: {e} (run scripts/install-tools.sh)",
                binary.display()
            )
        });
    let nats = Nats(child, store);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (nats, format!("nats://127.0.0.1:{port}"))
}

/// Publishes every payload (pipelined, all acks awaited), then consumes and acks them all.
async fn raw_jetstream(url: &str, payloads: &[Bytes]) -> Duration {
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let stream = js
        .create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let started = Instant::now();
    for chunk in payloads.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (i, payload) in chunk.iter().enumerate() {
            acks.push(
                js.publish(format!("raw.{}", i % 16), payload.clone())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("ack");
        }
    }
    let mut messages = consumer.messages().await.expect("messages");
    let mut seen = 0;
    while seen < payloads.len() {
        let message = messages.next().await.expect("message").expect("message ok");
        message.ack().await.expect("ack");
        seen += 1;
    }
    started.elapsed()
}

/// ERP simulator -> worker -> forecast simulator, until every record is applied.
async fn end_to_end(url: &str, erp: std::sync::Arc<ErpState>, count: u64) -> Duration {
    let forecast = ForecastState::new();
    let erp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let forecast_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let erp_url = format!("http://{}/odata", erp_listener.local_addr().expect("addr"));
    let forecast_url = format!("http://{}", forecast_listener.local_addr().expect("addr"));
    tokio::spawn(flowplane::sim::erp::serve(erp_listener, erp));
    tokio::spawn(flowplane::sim::forecast::serve(
        forecast_listener,
        forecast.clone(),
    ));
    let mut config = sample::sales_order_flow("bench", "orders", url, &erp_url, &forecast_url);
    config.target.batch_size = 500;
    config.delivery.max_ack_pending = 10_000;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let worker = tokio::spawn(run(config.clone(), RunOptions::new("bench"), shutdown));
    // Progress is watched through JetStream (cheap), not by cloning the forecast simulator's
    // report every tick: that clone holds the simulator's lock and cost as much CPU as the
    // worker. The worker acks a record only after the target accepted it, so "every record
    // acked" is checked against the target's own count before the clock stops.
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let mut extracted = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(mut stream) = js.get_stream(&config.queue.stream).await else {
            continue;
        };
        if extracted.is_none()
            && let Ok(info) = stream.info().await
            && info.state.messages >= count
        {
            extracted = Some(started.elapsed());
        }
        let acked = stream
            .consumer_info(&config.queue.consumer)
            .await
            .map(|c| {
                c.num_pending == 0 && c.num_ack_pending == 0 && c.delivered.stream_sequence >= count
            })
            .unwrap_or(false);
        if acked && forecast.received(&config.target.entity).applied() >= count {
            break;
        }
    }
    let elapsed = started.elapsed();
    if let Some(extracted) = extracted {
        println!(
            "  (worker: all records in the stream after {:.2}s)",
            extracted.as_secs_f64()
        );
    }
    let _ = stop.send(true);
    let _ = worker.await;
    elapsed
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let count: u32 = std::env::var("RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (_nats, url) = start_nats();
        let erp = ErpState::new(&ErpSeed {
            order_lines: count,
            inventory: 0,
            returns: 0,
            bad_every: 0,
            page_size: 1000,
        });
        let payloads: Vec<Bytes> = erp
            .all(SALES_ORDER_LINES)
            .into_iter()
            .map(|r| Bytes::from(serde_json::to_vec(&r).expect("json")))
            .collect();
        let average = payloads.iter().map(|p| p.len()).sum::<usize>() / payloads.len().max(1);
        let raw = raw_jetstream(&url, &payloads).await;
        let e2e = end_to_end(&url, erp, u64::from(count)).await;
        let raw_rate = f64::from(count) / raw.as_secs_f64();
        let e2e_rate = f64::from(count) / e2e.as_secs_f64();
        println!("records: {count} sales order lines, {average} bytes each");
        println!(
            "raw JetStream publish+consume: {raw_rate:>10.0} records/s ({:.2}s)",
            raw.as_secs_f64()
        );
        println!(
            "worker end to end:             {e2e_rate:>10.0} records/s ({:.2}s)",
            e2e.as_secs_f64()
        );
        println!(
            "ratio end-to-end / raw:        {:>10.1}%",
            100.0 * e2e_rate / raw_rate
        );
    });
}
