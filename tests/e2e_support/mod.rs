//! Helpers of the worker end-to-end tests: the simulators in-process, workers in-process or as
//! child processes, a private nats-server that can be restarted, and polling with deadlines.
#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowplane::queue::{FlowProgress, QueueNames};
use flowplane::sim::erp::{ErpSeed, ErpState, SALES_ORDER_LINES};
use flowplane::sim::forecast::ForecastState;
use flowplane::worker::{RunOptions, run};
use flowplane::worker_config::WorkerConfig;
use tokio::sync::watch;

/// Changes the sales order lines `keys` `updates` times in bursts (round-robin, quantity
/// `round * 1000 + i`), letting extraction passes land between bursts so intermediate versions
/// flow too; returns each key's newest quantity.
pub async fn update_in_bursts<'k>(
    erp: &ErpState,
    keys: &[&'k str],
    round: u32,
    updates: u32,
) -> Vec<(&'k str, u32)> {
    let mut newest = Vec::new();
    for i in 0..updates {
        let key = keys[i as usize % keys.len()];
        let quantity = round * 1000 + i;
        let change = serde_json::json!({"RequestedQuantity": quantity.to_string()});
        erp.update(SALES_ORDER_LINES, key, change.as_object().unwrap().clone())
            .unwrap();
        if i % 6 == 5 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        newest.push((key, quantity));
    }
    keys.iter()
        .map(|k| (*k, newest.iter().rev().find(|(key, _)| key == k).unwrap().1))
        .collect()
}

/// A flow name no other test run uses.
pub fn unique_flow(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Both simulators, served on free loopback ports for the test's lifetime.
pub struct Sims {
    pub erp: Arc<ErpState>,
    pub forecast: Arc<ForecastState>,
    pub erp_url: String,
    pub forecast_url: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sims {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub async fn start_sims(seed: ErpSeed) -> Sims {
    let erp = ErpState::new(&seed);
    let forecast = ForecastState::new();
    let erp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forecast_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let erp_url = format!("http://{}/odata", erp_listener.local_addr().unwrap());
    let forecast_url = format!("http://{}", forecast_listener.local_addr().unwrap());
    let tasks = vec![
        tokio::spawn({
            let erp = erp.clone();
            async move {
                let _ = flowplane::sim::erp::serve(erp_listener, erp).await;
            }
        }),
        tokio::spawn({
            let forecast = forecast.clone();
            async move {
                let _ = flowplane::sim::forecast::serve(forecast_listener, forecast).await;
            }
        }),
    ];
    Sims {
        erp,
        forecast,
        erp_url,
        forecast_url,
        tasks,
    }
}

/// A worker running as a task of the test; stopped (gracefully) on drop.
pub struct InProcessWorker {
    stop: watch::Sender<bool>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessWorker {
    pub fn start(config: WorkerConfig, id: &str) -> InProcessWorker {
        InProcessWorker::start_listening(config, id, None)
    }

    /// Like [`InProcessWorker::start`], serving /metrics and health on `listen`.
    pub fn start_listening(
        config: WorkerConfig,
        id: &str,
        listen: Option<std::net::SocketAddr>,
    ) -> InProcessWorker {
        let (stop, shutdown) = watch::channel(false);
        let options = RunOptions {
            lease_ttl: Duration::from_secs(3),
            listen,
            ..RunOptions::new(id)
        };
        let handle = tokio::spawn(run(with_flow_identity(config), options, shutdown));
        InProcessWorker {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops gracefully and returns the worker's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("worker stops within 60s")
            .expect("worker task")
    }
}

impl Drop for InProcessWorker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// A worker as a child process of the real binary; killed on drop.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub fn start(config: &WorkerConfig, dir: &std::path::Path, id: &str) -> WorkerProcess {
        Self::start_as_configured(&with_flow_identity(config.clone()), dir, id)
    }

    /// Like [`WorkerProcess::start`], with `config` as it is: on a server other than the
    /// local environment's, without starting that environment.
    pub fn start_as_configured(
        config: &WorkerConfig,
        dir: &std::path::Path,
        id: &str,
    ) -> WorkerProcess {
        let path = dir.join(format!("{id}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flowplane"))
            .args(["worker", "--config"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--worker-id", id])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start worker process");
        WorkerProcess { child }
    }

    /// Like [`WorkerProcess::start`], logging at `filter` (RUST_LOG) to the file `log` (the
    /// worker logs JSON lines to stdout), serving health on `listen`.
    pub fn start_logging(
        config: &WorkerConfig,
        dir: &std::path::Path,
        id: &str,
        filter: &str,
        log: &std::path::Path,
        listen: std::net::SocketAddr,
    ) -> WorkerProcess {
        let path = dir.join(format!("{id}.json"));
        let config = with_flow_identity(config.clone());
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flowplane"))
            .args(["worker", "--config"])
            .arg(&path)
            .args(["--listen", &listen.to_string(), "--worker-id", id])
            .env("RUST_LOG", filter)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start worker process");
        WorkerProcess { child }
    }

    /// Whether the process still runs (it has not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, in KiB (Linux: VmHWM of /proc/<pid>/status).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(&format!("/proc/{}/status", self.child.id()))
    }

    /// SIGKILL: no graceful shutdown, no final flush, unacked messages left behind.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Peak resident memory (VmHWM) of the process whose `/proc/<pid>/status` is `status`, in
/// KiB (`/proc/self/status`: this test process, with whatever runs in it).
pub fn peak_rss_kib(status: &str) -> Option<u64> {
    std::fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A free loopback address for a worker's /metrics.
pub fn free_listen_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The value of the series of `/metrics` on `listen` whose line starts with `series` (name
/// and labels as the worker writes them, e.g. `name{a="b"}`), or None.
pub async fn scrape(listen: std::net::SocketAddr, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_flow(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `dir/name` in one step (Prometheus watches the directory).
pub fn write_atomically(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A nats-server of the test's own, restartable on the same port and store.
pub struct PrivateNats {
    child: Option<Child>,
    pub port: u16,
    store: TempDir,
    /// JetStream's file storage limit in bytes (its `max_file_store`); None: nats-server's
    /// default, 75% of the free disk.
    max_file_store: Option<u64>,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        PrivateNats::start_with(None)
    }

    /// A server whose JetStream may use at most `bytes` of disk.
    pub fn start_with_file_store(bytes: u64) -> PrivateNats {
        PrivateNats::start_with(Some(bytes))
    }

    fn start_with(max_file_store: Option<u64>) -> PrivateNats {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = PrivateNats {
            child: None,
            port,
            store: TempDir::new("nats-store"),
            max_file_store,
        };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(crate::support::tool("nats-server"));
        if let Some(bytes) = self.max_file_store {
            let conf = self.store.0.join("limits.conf");
            std::fs::write(&conf, format!("jetstream {{ max_file_store: {bytes} }}\n")).unwrap();
            command.arg("-c").arg(conf);
        }
        let child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (run scripts/install-tools.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start in 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// JetStream as an administrator (see [`crate::support::nats_admin`]).
pub async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(crate::support::nats_admin(url).await)
}

/// A worker configuration as a pod gets it on the local environment's NATS (auth and TLS): the
/// flow's own user, issued with the account signing key exactly as the operator issues it
/// (`queue::identity::flow_permissions`), in a credentials file, and the server's CA; the
/// flow's queue (and an event flow's capture stream on this server) made by an administrator
/// first, as the operator makes them, since the flow's user may not create streams. A
/// configuration for another (private, anonymous) server is returned as it is.
pub fn with_flow_identity(mut config: WorkerConfig) -> WorkerConfig {
    use flowplane::api::connector_binding::Protocol;
    use flowplane::queue::identity::{AccountSigner, flow_permissions, same_server};
    let env = crate::support::local_env();
    if config.nats_url != env.nats_url || config.nats_creds_file.is_some() {
        return config;
    }
    let event_subject = (config.source.endpoint.protocol == Protocol::Nats
        && same_server(&config.source.endpoint.url, &config.nats_url))
    .then(|| config.source.entity.clone());
    let signer = AccountSigner::load(&env.nats_signer_dir).expect("the account signer");
    let quota_buckets: Vec<String> = std::iter::once(&config.target)
        .chain(
            config
                .approval
                .iter()
                .filter_map(|a| a.escalate_to.as_ref()),
        )
        .map(|target| &target.endpoint)
        .chain([&config.source.endpoint])
        .map(|endpoint| {
            flowplane::queue::binding_quota_bucket(&config.namespace, &endpoint.binding)
        })
        .collect();
    let permissions = flow_permissions(&config.queue, event_subject.as_deref(), &quota_buckets);
    let user = format!("{}/{}", config.namespace, config.flow);
    let creds = signer
        .issue(&user, &permissions)
        .expect("issue the flow's user");
    let dir = std::env::temp_dir().join("flowplane-test-creds");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.creds", config.queue.stream));
    std::fs::write(&path, creds).unwrap();
    config.nats_creds_file = Some(path.display().to_string());
    config.nats_ca_file = Some(env.nats_ca.display().to_string());
    let (url, names) = (config.nats_url.clone(), config.queue.clone());
    let policy = flowplane::queue::QueuePolicy::from_rendered(&config.delivery).unwrap();
    // Runs inside the test's runtime: the queue is made from a thread with its own.
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let js = jetstream(&url).await;
            flowplane::queue::ensure_queue(&js, &names, &policy)
                .await
                .expect("make the flow's queue");
            // No operator answers here for the dead-letter stream (made on demand on the
            // flow's first dead letter, which its user may not make itself): made up front.
            flowplane::queue::jetstream::ensure_dead_letter_stream(&js, &names, &policy)
                .await
                .expect("make the flow's dead-letter stream");
            if let Some(subject) = event_subject {
                flowplane::queue::ensure_capture(
                    &js,
                    &names,
                    &subject,
                    policy.retention,
                    Some(&policy),
                )
                .await
                .expect("make the flow's capture stream");
            }
        })
    })
    .join()
    .unwrap();
    config
}

/// Polls `check` every 200ms until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn progress(js: &async_nats::jetstream::Context, names: &QueueNames) -> FlowProgress {
    flowplane::queue::read_progress(js, names)
        .await
        .unwrap_or_default()
}

/// Waits up to `timeout` until `records` records of the flow are delivered or dead-lettered,
/// and returns its progress then (the caller asserts the exact split).
pub async fn settled(
    js: &async_nats::jetstream::Context,
    names: &QueueNames,
    records: u64,
    timeout: Duration,
) -> FlowProgress {
    eventually(
        timeout,
        &format!("{records} records delivered or dead-lettered"),
        || async move {
            let p = progress(js, names).await;
            (p.delivered + p.dead_lettered >= records).then_some(p)
        },
    )
    .await
}

/// An administrator's JetStream on the NATS at `url`, and a guard that deletes the flow's
/// queue (`names`) when the test ends.
pub async fn flow_queue(
    url: &str,
    names: &QueueNames,
) -> (async_nats::jetstream::Context, QueueCleanup) {
    let cleanup = QueueCleanup {
        url: url.to_string(),
        names: names.clone(),
    };
    (jetstream(url).await, cleanup)
}

/// Deletes the flow's JetStream resources when the test ends.
pub struct QueueCleanup {
    pub url: String,
    pub names: QueueNames,
}

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        let url = self.url.clone();
        let names = self.names.clone();
        // Drop runs inside the test's runtime: clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                runtime.block_on(async {
                    {
                        let js = jetstream(&url).await;
                        let _ = flowplane::queue::delete_queue(&js, &names).await;
                    }
                });
            }
        })
        .join();
    }
}
