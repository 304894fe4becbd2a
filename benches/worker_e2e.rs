//! End-to-end throughput of the worker on this machine, against the floor of the same run:
//! the raw JetStream publish + consume (with acks) of the same payloads, and against the same
//! pipeline run by Benthos. Not a test; run it through `scripts/bench-worker.sh` (it needs the
//! nats-server and the Benthos the project installs).
//!
//! The ERP and forecast simulators run as their own processes (`flowplane sim ...`), fresh
//! for each pipeline, so neither pipeline shares its runtime with them and both talk to the
//! same servers the same way.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use flowplane::sim::erp::{ErpSeed, ErpState, SALES_ORDER_LINES};
#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;
#[path = "../tests/support/mod.rs"]
mod support;
use e2e_support::{TempDir, WorkerProcess, settled};
use flowplane::queue::QueuePolicy;
use flowplane::queue::headers::{Envelope, names};
use flowplane::sim::forecast::EntityReport;
use flowplane::worker::{RunOptions, run, sample};
use flowplane::worker_config::WorkerConfig;
use futures::StreamExt;
use support::nats_cluster::{NODES, NatsCluster};
use support::tool;

struct Nats(Child, PathBuf);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// A tool the project installs (scripts/install-tools.sh), or the one `env` names.
fn start_nats() -> (Nats, String) {
    let binary = tool("nats-server");
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

/// Publishes every payload (pipelined, all acks awaited), then consumes and acks them all,
/// through stream `name` with `replicas` replicas; `servers` are the nats-server processes.
/// With `headers` (one per payload, made before the clock starts), each payload is published
/// with its headers.
async fn raw_jetstream(
    url: &str,
    (name, replicas): (&str, usize),
    payloads: &[Bytes],
    servers: &[(&'static str, u32)],
    headers: Vec<HeaderMap>,
) -> (Duration, String) {
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let subject = name.to_lowercase();
    let stream = js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{subject}.>")],
            storage: stream::StorageType::File,
            num_replicas: replicas,
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
    let mut processes = vec![("bench", std::process::id())];
    processes.extend_from_slice(servers);
    let cpu = Cpu::start(&processes);
    let started = Instant::now();
    let mut headers = headers.into_iter();
    for chunk in payloads.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (i, payload) in chunk.iter().enumerate() {
            let subject = format!("{subject}.{}", i % 16);
            let published = match headers.next() {
                Some(headers) => {
                    js.publish_with_headers(subject, headers, payload.clone())
                        .await
                }
                None => js.publish(subject, payload.clone()).await,
            };
            acks.push(published.expect("publish"));
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
    let (elapsed, cpu) = (started.elapsed(), cpu.report());
    js.delete_stream(name).await.expect("delete the raw stream");
    (elapsed, cpu)
}

/// Headers of the shape and sizes extraction gives records (`Nats-Msg-Id` = key@version, the
/// `Flowplane-Record` envelope with both times), one per record.
fn pipeline_headers(count: usize) -> Vec<HeaderMap> {
    let now = flowplane::worker::clock::now_unix_ms();
    (0..count)
        .map(|n| {
            let key = format!("{:010}/{:06}", n / 10, n % 10);
            let version = 1_704_067_200_000_000_000 + n as u64;
            let envelope = Envelope {
                key: &key,
                version,
                read_at: Some(now),
                changed_at: Some(now - 1_000),
            };
            let mut map = HeaderMap::new();
            map.insert(names::MSG_ID, HeaderValue::from(format!("{key}@{version}")));
            map.insert(names::RECORD, HeaderValue::from(envelope.to_header()));
            map
        })
        .collect()
}

/// CPU seconds (user + system) process `pid` has used so far (Linux /proc; 0 elsewhere).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name: state is field 3, utime 14, stime 15 (clock ticks).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU used by named processes between `start` and `report`.
struct Cpu(Vec<(&'static str, u32, f64)>);

impl Cpu {
    fn start(processes: &[(&'static str, u32)]) -> Cpu {
        Cpu(processes
            .iter()
            .map(|(name, pid)| (*name, *pid, cpu_seconds(*pid)))
            .collect())
    }

    fn report(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, pid, start)| format!("{name} {:.2}", cpu_seconds(*pid) - start))
            .collect();
        format!("cpu s: {}", parts.join(", "))
    }
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `flowplane sim <args>` on a free port; returns it and its base URL. The binary is
/// `FLOWPLANE_SIM_BINARY` when set: the simulators stand in for SAP and the forecast service,
/// which run elsewhere, so a comparison of worker builds (glibc, musl) keeps one simulator
/// build for all and measures only the worker's (`scripts/bench-worker.sh`, MUSL=1).
fn start_sim(args: &[&str]) -> (Process, String) {
    let binary = std::env::var_os("FLOWPLANE_SIM_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_flowplane")),
        PathBuf::from,
    );
    let mut child = Command::new(binary)
        .arg("sim")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the simulator");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let process = Process(child);
    // "... on http://127.0.0.1:PORT/odata" (or /api/v1): the base is the scheme and address.
    let url = loop {
        let line = lines
            .next()
            .expect("the simulator exited")
            .expect("simulator output");
        if let Some((_, url)) = line.split_once(" on ") {
            break url.trim().to_string();
        }
    };
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let base = url
        .trim_end_matches("/odata")
        .trim_end_matches("/api/v1")
        .to_string();
    (process, base)
}

fn start_erp(count: u32) -> (Process, String) {
    let count = count.to_string();
    start_sim(&[
        "erp",
        "--order-lines",
        &count,
        "--inventory",
        "0",
        "--returns",
        "0",
        "--page-size",
        "1000",
    ])
}

/// Writes applied by the forecast simulator at `base` to `entity`.
async fn applied(http: &reqwest::Client, base: &str, entity: &str) -> u64 {
    let Ok(response) = http
        .get(format!("{base}/admin/applied/{entity}"))
        .send()
        .await
    else {
        return 0;
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["applied"].as_u64().unwrap_or(0)
}

/// Waits until the durable `consumer` of `stream` has every one of `count` records acked and
/// the forecast simulator applied them all; returns when the last record reached the stream.
/// Fails at once when `alive` says the pipeline under test stopped.
/// Progress is watched through JetStream (cheap) and one count from the simulator, never by
/// copying the simulator's per-key report.
async fn wait_done(
    js: &jetstream::Context,
    (stream, consumer): (&str, &str),
    http: &reqwest::Client,
    (forecast, entity): (&str, &str),
    count: u64,
    started: Instant,
    alive: &mut dyn FnMut() -> bool,
) -> Option<Duration> {
    let mut extracted = None;
    let deadline = started + Duration::from_secs(600);
    let mut handle = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            Instant::now() < deadline,
            "{stream}: not done after 10 minutes"
        );
        assert!(
            alive(),
            "{stream}: the pipeline under test stopped before it was done"
        );
        // One stream lookup, then at most two small requests per tick.
        let Some(info) = &mut handle else {
            handle = js.get_stream(stream).await.ok();
            continue;
        };
        if extracted.is_none()
            && let Ok(state) = info.info().await
            && state.state.messages >= count
        {
            extracted = Some(started.elapsed());
        }
        let acked = info
            .consumer_info(consumer)
            .await
            .map(|c| {
                c.num_pending == 0 && c.num_ack_pending == 0 && c.delivered.stream_sequence >= count
            })
            .unwrap_or(false);
        if acked && applied(http, forecast, entity).await >= count {
            return extracted;
        }
    }
}

/// The benchmarked flow: the sample sales-order flow with batches of 500 and room for 10,000
/// records awaiting ack.
fn bench_flow(flow: &str, nats: &str, erp_url: &str, forecast: &str) -> WorkerConfig {
    let mut config = sample::sales_order_flow("bench", flow, nats, erp_url, forecast);
    config.target.batch_size = 500;
    config.delivery.max_ack_pending = 10_000;
    config
}

/// ERP simulator -> worker -> forecast simulator, until every record is applied.
async fn end_to_end(url: &str, count: u32, nats: u32) -> Run {
    let (erp_process, erp) = start_erp(count);
    let (forecast_process, forecast) = start_sim(&["forecast"]);
    let erp_url = format!("{erp}/odata");
    let config = bench_flow("orders", url, &erp_url, &forecast);
    let http = reqwest::Client::new();
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let cpu = Cpu::start(&[
        ("worker", std::process::id()),
        ("nats-server", nats),
        ("erp sim", erp_process.0.id()),
        ("forecast sim", forecast_process.0.id()),
    ]);
    let started = Instant::now();
    let worker = tokio::spawn(run(config.clone(), RunOptions::new("bench"), shutdown));
    // The worker acks a record only after the target accepted it.
    let extracted = wait_done(
        &js,
        (&config.queue.stream, &config.queue.consumer),
        &http,
        (&forecast, &config.target.entity),
        u64::from(count),
        started,
        &mut || !worker.is_finished(),
    )
    .await;
    let elapsed = started.elapsed();
    let cpu = cpu.report();
    let _ = stop.send(true);
    let _ = worker.await;
    Run {
        elapsed,
        extracted,
        cpu,
    }
}

/// One pipeline's run: wall time, when the last record reached the stream, CPU by process.
struct Run {
    elapsed: Duration,
    extracted: Option<Duration>,
    cpu: String,
}

/// Extraction alone (a full refresh: ERP simulator -> JetStream, acks awaited), to tell
/// where end-to-end time goes. Only with `EXTRACT_ONLY=1`.
async fn extraction_alone(url: &str, count: u32) -> Duration {
    let (_erp, erp) = start_erp(count);
    let erp_url = format!("{erp}/odata");
    let config = sample::sales_order_flow("bench", "extract", url, &erp_url, "http://127.0.0.1:9");
    let started = Instant::now();
    let report = flowplane::worker::full_refresh(config)
        .await
        .expect("full refresh");
    assert_eq!(report.read, u64::from(count));
    started.elapsed()
}

/// The same pipeline in Benthos: one stream pages through the ERP simulator (following
/// `@odata.nextLink`), maps and checks each record in Bloblang and publishes it to JetStream
/// with the same headers; a second stream consumes it (durable consumer, explicit acks after
/// the target accepted the batch) and bulk-upserts batches of 500 to the forecast simulator.
async fn benthos(url: &str, count: u32, nats: u32) -> Run {
    let (erp_process, erp) = start_erp(count);
    let (forecast_process, forecast) = start_sim(&["forecast"]);
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    js.create_stream(stream::Config {
        name: "BENTHOS".into(),
        subjects: vec!["benthos.records.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("stream");
    let dir = std::env::temp_dir().join(format!("flowplane-benthos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let entity = "benthos-sales-order-lines";
    let extract = BENTHOS_EXTRACT
        .replace("ERP_URL", &format!("{erp}/odata/{SALES_ORDER_LINES}"))
        .replace("NATS_URL", url);
    let deliver = BENTHOS_DELIVER.replace("NATS_URL", url).replace(
        "TARGET_URL",
        &format!("{forecast}/api/v1/{entity}/bulk-upsert"),
    );
    for (name, text) in [
        ("root.yaml", BENTHOS_ROOT),
        ("extract.yaml", extract.as_str()),
        ("deliver.yaml", deliver.as_str()),
    ] {
        std::fs::write(dir.join(name), text).expect("write config");
    }
    let http = reqwest::Client::new();
    let mut cpu = Cpu::start(&[
        ("nats-server", nats),
        ("erp sim", erp_process.0.id()),
        ("forecast sim", forecast_process.0.id()),
    ]);
    let started = Instant::now();
    let mut benthos = Process(
        Command::new(tool("benthos"))
            .current_dir(&dir)
            .args(["streams", "--no-api", "-o", "root.yaml"])
            .args(["extract.yaml", "deliver.yaml"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start benthos: {e} (run scripts/bench-worker.sh)")),
    );
    cpu.0.insert(0, ("benthos", benthos.0.id(), 0.0));
    let extracted = wait_done(
        &js,
        ("BENTHOS", "benthos"),
        &http,
        (&forecast, entity),
        u64::from(count),
        started,
        &mut || matches!(benthos.0.try_wait(), Ok(None)),
    )
    .await;
    let elapsed = started.elapsed();
    let cpu = cpu.report();
    drop(benthos);
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        elapsed,
        extracted,
        cpu,
    }
}

const BENTHOS_ROOT: &str = r#"
http:
  enabled: false
logger:
  level: WARN
"#;

/// ERP -> map + check -> JetStream. Bloblang does what the flow's mapping does: the same
/// fields, the two code maps (an unknown plant fails the record), the contract's patterns,
/// enum, range and date checks, the source version and the key-partitioned subject; the
/// headers are the worker's (dedupe id, key, version).
const BENTHOS_EXTRACT: &str = r#"
input:
  http_client:
    url: '${! this."@odata.nextLink" | this."@odata.deltaLink" | "ERP_URL" }'
    verb: GET
    headers:
      Accept: application/json
      OData-Version: "4.0"
      Prefer: odata.maxpagesize=1000, odata.track-changes
pipeline:
  processors:
    - mapping: root = this.value
    - unarchive:
        format: json_array
    - mapping: |
        let plants = {"1010": "DC-NORTH", "1020": "DC-SOUTH", "1030": "DC-EAST", "1040": "DC-WEST"}
        let categories = {"TAN": "Standard", "TANN": "FreeOfCharge", "REN": "Return"}
        let quantity = this.RequestedQuantity.number()
        let unit = this.RequestedQuantityUnit | "EA"
        let version = this.LastChangeDateTime.ts_parse("2006-01-02T15:04:05.999999999Z07:00").ts_unix_nano()
        let valid = if !(this.SalesOrder.re_match("^[0-9]{1,10}$") && this.SalesOrderItem.re_match("^[0-9]{1,6}$") && this.Material.length() <= 40 && $quantity >= 0 && $quantity <= 100000 && ["EA", "PC", "CS"].contains($unit) && this.NetAmount.re_match("^-?[0-9]{1,13}([.][0-9]{1,2})?$") && this.TransactionCurrency.re_match("^[A-Z]{3}$") && this.to_SalesOrder.SoldToParty.length() <= 10 && this.to_SalesOrder.CreationDate.ts_strptime("%Y-%m-%d") != null) { throw("contract violation") } else { true }
        meta key = this.SalesOrder + "/" + this.SalesOrderItem
        meta version = $version.string()
        meta partition = ((this.SalesOrder.number() * 1000 + this.SalesOrderItem.number()) % 16).string()
        root.version = $version
        root.data.salesOrder = this.SalesOrder
        root.data.salesOrderItem = this.SalesOrderItem
        root.data.sku = this.Material
        root.data.location = $plants.get(this.Plant).or(throw("unmapped plant " + this.Plant))
        root.data.orderedQuantity = $quantity
        root.data.unit = $unit
        root.data.netAmount = this.NetAmount.number()
        root.data.currency = this.TransactionCurrency
        root.data.itemCategory = $categories.get(this.SalesOrderItemCategory) | "Standard"
        root.data.customer = this.to_SalesOrder.SoldToParty
        root.data.orderDate = this.to_SalesOrder.CreationDate
        root.data.changedAt = this.LastChangeDateTime
        root.data.source = "s4"
output:
  nats_jetstream:
    urls: [NATS_URL]
    subject: benthos.records.${! @partition }
    headers:
      Nats-Msg-Id: ${! @key }@${! @version }
      Flowplane-Record: v=${! @version } k=${! @key }
"#;

/// JetStream -> batches of 500 -> bulk upsert; messages are acked once their batch is accepted.
const BENTHOS_DELIVER: &str = r#"
input:
  nats_jetstream:
    urls: [NATS_URL]
    subject: benthos.records.>
    durable: benthos
    deliver: all
    ack_wait: 30s
    max_ack_pending: 10000
output:
  http_client:
    url: TARGET_URL
    verb: POST
    headers:
      Content-Type: application/json
    batching:
      count: 500
      period: 100ms
      processors:
        - archive:
            format: json_array
        - mapping: 'root = {"key": ["salesOrder", "salesOrderItem"], "records": this}'
"#;

/// The 1-minute, 5-minute and 15-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Horizontal scaling (`WORKERS=1,2,4`): on one 3-node cluster (routes on loopback, every
/// stream with 3 replicas), each of `runs` rounds measures raw JetStream (one publisher,
/// one consumer, the same payloads) and then one flow run by each number of worker
/// processes in `workers`, each process connected to another node. Every run asserts the
/// exact counts: read = delivered + dead-lettered, every key applied once, no duplicate.
async fn scaling(payloads: &[Bytes], workers: &[usize], runs: usize) {
    const SERVERS: [&str; NODES] = ["n0", "n1", "n2"];
    let cluster = NatsCluster::start_plain();
    cluster.wait_for_jetstream().await;
    let servers: Vec<(&'static str, u32)> = (0..NODES)
        .map(|i| (SERVERS[i], cluster.pid(i).expect("node runs")))
        .collect();
    let dir = TempDir::new("bench-workers");
    let count = payloads.len() as u32;
    for run in 1..=runs {
        let load = load_average();
        let (raw, raw_cpu) = raw_jetstream(
            &cluster.url(0),
            (&format!("RAW{run}"), NODES),
            payloads,
            &servers,
            Vec::new(),
        )
        .await;
        let raw_rate = rate(count, raw);
        println!(
            "run {run}: raw JetStream R3:   {raw_rate:>10.0} records/s ({:.2}s; load {load}; {raw_cpu})",
            raw.as_secs_f64()
        );
        for &n in workers {
            let load = load_average();
            let result = workers_end_to_end(&cluster, &servers, &dir, count, n, run).await;
            let e2e_rate = rate(count, result.elapsed);
            println!(
                "run {run}: {n} worker{} end to end: {e2e_rate:>10.0} records/s ({:.2}s, {:.1}% of raw{}; load {load}; {})",
                if n == 1 { " " } else { "s" },
                result.elapsed.as_secs_f64(),
                100.0 * e2e_rate / raw_rate,
                result.extracted.map_or(String::new(), |d| format!(
                    ", all in the stream after {:.2}s",
                    d.as_secs_f64()
                )),
                result.cpu
            );
        }
    }
}

/// One flow on the cluster, `n` worker processes (`flowplane worker`), each connected to
/// another node; the flow's queue made first with three replicas, as the operator makes it.
async fn workers_end_to_end(
    cluster: &NatsCluster,
    servers: &[(&'static str, u32)],
    dir: &TempDir,
    count: u32,
    n: usize,
    run: usize,
) -> Run {
    const WORKERS: [&str; 8] = ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8"];
    assert!(n <= WORKERS.len(), "at most {} workers", WORKERS.len());
    let (erp_process, erp) = start_erp(count);
    let (forecast_process, forecast) = start_sim(&["forecast"]);
    let erp_url = format!("{erp}/odata");
    let flow = format!("scale-{n}-{run}");
    let mut config = bench_flow(&flow, &cluster.url(0), &erp_url, &forecast);
    config.delivery.replicas = NODES as u8;
    // nats-server reserves each stream's max_bytes on every replica's node against its disk:
    // 256 MiB is room enough for the run's 30,000-odd records, and the queue goes after it.
    config.delivery.max_bytes = 256 << 20;
    let js = cluster.admin(0).await;
    let policy = QueuePolicy::from_rendered(&config.delivery).expect("policy");
    flowplane::queue::ensure_queue(&js, &config.queue, &policy)
        .await
        .expect("the flow's queue");
    // No operator answers here for the dead-letter stream (made on demand): made up front.
    flowplane::queue::jetstream::ensure_dead_letter_stream(&js, &config.queue, &policy)
        .await
        .expect("the flow's dead-letter stream");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut processes: Vec<WorkerProcess> = (0..n)
        .map(|i| {
            let mut config = config.clone();
            config.nats_url = cluster.url(i % NODES);
            WorkerProcess::start_as_configured(&config, &dir.0, &format!("{flow}-{i}"))
        })
        .collect();
    let mut cpu = Cpu::start(servers);
    for (i, process) in processes.iter().enumerate() {
        cpu.0.insert(i, (WORKERS[i], process.pid(), 0.0));
    }
    cpu.0.push(("erp sim", erp_process.0.id(), 0.0));
    cpu.0.push(("forecast sim", forecast_process.0.id(), 0.0));
    let extracted = wait_done(
        &js,
        (&config.queue.stream, &config.queue.consumer),
        &http,
        (&forecast, &config.target.entity),
        u64::from(count),
        started,
        &mut || processes.iter_mut().all(WorkerProcess::running),
    )
    .await;
    let elapsed = started.elapsed();
    let peaks: Vec<String> = processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let kib = p.peak_rss_kib().unwrap_or(0);
            format!("{} {:.1}", WORKERS[i], kib as f64 / 1024.0)
        })
        .collect();
    let cpu = format!("{}; peak RSS MiB: {}", cpu.report(), peaks.join(", "));
    // Exact counts: every record read once, delivered once (none is bad), applied once.
    let progress = settled(
        &js,
        &config.queue,
        u64::from(count),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        (progress.read, progress.delivered, progress.dead_lettered),
        (u64::from(count), u64::from(count), 0),
        "{n} workers: read = delivered + dead-lettered, each once"
    );
    let report: EntityReport = http
        .get(format!(
            "{forecast}/admin/received/{}",
            config.target.entity
        ))
        .send()
        .await
        .expect("the forecast simulator's report")
        .json()
        .await
        .expect("its report");
    assert_eq!(
        report.keys.len(),
        count as usize,
        "{n} workers: every key arrived"
    );
    assert!(
        report.keys.values().all(|k| k.applied_versions.len() == 1),
        "{n} workers: every key applied exactly once"
    );
    assert_eq!(report.duplicates(), 0, "{n} workers: nothing sent twice");
    drop(processes);
    flowplane::queue::delete_queue(&js, &config.queue)
        .await
        .expect("delete the flow's queue");
    Run {
        elapsed,
        extracted,
        cpu,
    }
}

fn rate(count: u32, elapsed: Duration) -> f64 {
    f64::from(count) / elapsed.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench. `cargo test --all-targets` runs this without it, as a smoke
    // of the same code on fewer records and without Benthos, which only the benchmark's script
    // builds (install-tools.sh's opt-in set): a test run must pass on a fresh machine.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let count: u32 = std::env::var("RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 50_000 });
    let with_benthos = !smoke && std::env::var("BENTHOS_BENCH").map_or(true, |v| v != "0");
    if smoke {
        println!(
            "worker_e2e smoke: {count} records; Benthos skipped (not built by the test command; \
             scripts/bench-worker.sh builds it and runs the comparison)"
        );
    }
    flowplane::worker::http::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // The payloads the simulator serves (same seed, same records).
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
    drop(erp);
    let average = payloads.iter().map(|p| p.len()).sum::<usize>() / payloads.len().max(1);
    if let Ok(workers) = std::env::var("WORKERS") {
        let workers: Vec<usize> = workers
            .split(',')
            .map(|n| n.trim().parse().expect("WORKERS: numbers, e.g. 1,2,4"))
            .collect();
        let runs = std::env::var("RUNS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        println!("records: {count} sales order lines, {average} bytes each");
        runtime.block_on(scaling(&payloads, &workers, runs));
        return;
    }
    runtime.block_on(async {
        let (nats, url) = start_nats();
        let nats_pid = nats.0.id();
        let (raw, raw_cpu) = raw_jetstream(
            &url,
            ("RAW", 1),
            &payloads,
            &[("nats-server", nats_pid)],
            Vec::new(),
        )
        .await;
        // The same payloads with headers of the pipeline's shape and sizes: what carrying a
        // deduplication id, a trace id and the envelope costs the transport alone. Context
        // for the ratio, which stays against the floor without headers.
        let (headed, headed_cpu) = raw_jetstream(
            &url,
            ("RAWHEADERS", 1),
            &payloads,
            &[("nats-server", nats_pid)],
            pipeline_headers(payloads.len()),
        )
        .await;
        if std::env::var("EXTRACT_ONLY").is_ok_and(|v| v == "1") {
            let alone = extraction_alone(&url, count).await;
            println!(
                "extraction alone:              {:>10.0} records/s ({:.2}s)",
                rate(count, alone),
                alone.as_secs_f64()
            );
        }
        let flowplane = end_to_end(&url, count, nats_pid).await;
        let benthos = if with_benthos {
            Some(benthos(&url, count, nats_pid).await)
        } else {
            None
        };
        let raw_rate = rate(count, raw);
        let e2e_rate = rate(count, flowplane.elapsed);
        let in_stream = |extracted: Option<Duration>| {
            extracted.map_or(String::new(), |d| {
                format!(", all in the stream after {:.2}s", d.as_secs_f64())
            })
        };
        println!("records: {count} sales order lines, {average} bytes each");
        println!(
            "raw JetStream publish+consume: {raw_rate:>10.0} records/s ({:.2}s; {raw_cpu})",
            raw.as_secs_f64()
        );
        println!(
            "raw JetStream, with headers:   {:>10.0} records/s ({:.2}s; {headed_cpu})",
            rate(count, headed),
            headed.as_secs_f64()
        );
        println!(
            "flowplane worker end to end:   {e2e_rate:>10.0} records/s ({:.2}s{}; {})",
            flowplane.elapsed.as_secs_f64(),
            in_stream(flowplane.extracted),
            flowplane.cpu
        );
        if let Some(run) = &benthos {
            println!(
                "Benthos same pipeline:         {:>10.0} records/s ({:.2}s{}; {})",
                rate(count, run.elapsed),
                run.elapsed.as_secs_f64(),
                in_stream(run.extracted),
                run.cpu
            );
        }
        println!(
            "ratio flowplane / raw:         {:>10.1}%",
            100.0 * e2e_rate / raw_rate
        );
        if let Some(run) = &benthos {
            println!(
                "ratio flowplane / Benthos:     {:>10.2}x",
                e2e_rate / rate(count, run.elapsed)
            );
        }
    });
}
