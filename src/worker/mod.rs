//! The data plane: `flowplane worker` moves one flow's records from its source through
//! JetStream to its target.
//!
//! Every replica runs the same tasks: an extractor that only works while it holds the flow's
//! extractor lease (so the source is read once per flow), several consume loops on the flow's
//! shared durable consumer, a progress flusher, and the metrics/health server.

pub mod approval;
pub mod clock;
pub mod connectors;
pub mod consume;
pub mod dead_letter;
pub mod extract;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod progress;
pub mod quality;
pub mod resilience;
pub mod sample;
pub mod trace;
pub mod transform;
pub mod version;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use clap::Args;
use tokio::sync::watch;

use crate::queue::jetstream::{QueuePolicy, bucket, ensure_queue};
use crate::worker_config::WorkerConfig;
use connectors::target::Target;
use metrics::Metrics;
use progress::ProgressDeltas;
use transform::Plan;

/// `flowplane worker`
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The worker configuration (worker.json from the flow's ConfigMap).
    #[arg(long, default_value = "/etc/flowplane/worker.json")]
    pub config: PathBuf,
    /// Re-read the whole source once, publish with deduplication, print a report and exit
    /// (the scheduled full refresh).
    #[arg(long)]
    pub full_refresh: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Name of this worker in the extractor lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub worker_id: Option<String>,
    /// Consume loops in this worker.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Name in the extractor lease.
    pub worker_id: String,
    /// Where to serve metrics and health; None serves nothing (tests).
    pub listen: Option<SocketAddr>,
    /// Consume loops.
    pub concurrency: usize,
    /// How long the extractor lease lasts without renewal.
    pub lease_ttl: Duration,
}

impl RunOptions {
    /// Defaults for a worker called `worker_id`.
    pub fn new(worker_id: &str) -> RunOptions {
        RunOptions {
            worker_id: worker_id.to_string(),
            listen: None,
            concurrency: 4,
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// The parts every mode shares: a NATS connection, the flow's queue, the compiled plan.
struct Flow {
    js: jetstream::Context,
    store: async_nats::jetstream::kv::Store,
    plan: Arc<Plan>,
    config: Arc<WorkerConfig>,
    metrics: Arc<Metrics>,
    progress: Arc<ProgressDeltas>,
}

impl Flow {
    async fn connect(config: WorkerConfig) -> anyhow::Result<Flow> {
        let plan = Plan::compile(&config.mapping, &config.contract)
            .map_err(|e| anyhow::anyhow!("worker configuration: {e}"))?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(config.nats_url.as_str())
            .await?;
        let js = jetstream::new(client);
        // The operator creates the queue with the flow's full policy; a worker only creates
        // what is missing (so tests and a worker started first work) and never overrides it.
        if js.get_stream(&config.queue.stream).await.is_err()
            || js.get_key_value(&config.queue.kv_bucket).await.is_err()
        {
            let policy = QueuePolicy::from_rendered(&config.delivery)
                .map_err(|e| anyhow::anyhow!("worker configuration: {e}"))?;
            ensure_queue(&js, &config.queue, &policy).await?;
        }
        let store = bucket(&js, &config.queue).await?;
        let metrics = Metrics::new(&config.namespace, &config.flow);
        Ok(Flow {
            js,
            store,
            plan: Arc::new(plan),
            config: Arc::new(config),
            metrics,
            progress: Arc::new(ProgressDeltas::default()),
        })
    }

    fn extractor(&self) -> extract::Extractor {
        extract::Extractor {
            js: self.js.clone(),
            names: self.config.queue.clone(),
            plan: self.plan.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            progress: self.progress.clone(),
            store: self.store.clone(),
        }
    }
}

/// Runs a worker until `shutdown` turns true.
pub async fn run(
    config: WorkerConfig,
    options: RunOptions,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let flow = Flow::connect(config).await?;
    let names = flow.config.queue.clone();
    if let Some(listen) = options.listen {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let router = metrics::router(flow.metrics.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }
    let version_field = flow.config.version_field();
    let mut target = Target::new(
        &flow.config.target,
        flow.plan.key_names(),
        flow.metrics.clone(),
    )?;
    target.order_by(version_field.clone());
    let target = Arc::new(target);
    let mut tasks = tokio::task::JoinSet::new();
    let extractor = flow.extractor();
    let lease = lease::Lease::new(
        flow.store.clone(),
        options.worker_id.clone(),
        options.lease_ttl,
    );
    let stop = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = extractor.run(lease, stop).await {
            tracing::error!(error = %e, "extractor stopped");
        }
    });
    let approval = match &flow.config.approval {
        Some(config) => {
            let escalate = match &config.escalate_to {
                Some(to) => {
                    let mut escalate =
                        Target::new(to, flow.plan.key_names(), flow.metrics.clone())?;
                    escalate.order_by(version_field.clone());
                    Some(Arc::new(escalate))
                }
                None => None,
            };
            let approvals = Arc::new(approval::Approvals::new(
                config,
                escalate,
                flow.store.clone(),
            )?);
            let resolver = approval::Resolver {
                worker_id: options.worker_id.clone(),
                js: flow.js.clone(),
                names: names.clone(),
                target: target.clone(),
                metrics: flow.metrics.clone(),
                progress: flow.progress.clone(),
            };
            tasks.spawn(approvals.clone().run(resolver, shutdown.clone()));
            Some(approvals)
        }
        None => None,
    };
    let consumer = Arc::new(consume::Consumer {
        js: flow.js.clone(),
        names: names.clone(),
        plan: flow.plan.clone(),
        target,
        batch_size: flow.config.target.batch_size.max(1) as usize,
        max_deliver: i64::from(flow.config.delivery.max_deliver),
        redelivery: resilience::Backoff::new(&flow.config.delivery.retry),
        metrics: flow.metrics.clone(),
        progress: flow.progress.clone(),
        approval,
        ack_wait: crate::api::common::parse_duration(&flow.config.delivery.ack_wait)
            .unwrap_or(Duration::from_secs(30)),
        shutdown: shutdown.clone(),
    });
    for _ in 0..options.concurrency.max(1) {
        let consumer = consumer.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move { consumer.run(stop).await });
    }
    flow.metrics.set_ready(true);
    tracing::info!(flow = %flow.config.flow, namespace = %flow.config.namespace, worker = %options.worker_id, "worker running");

    // Progress and lag, about once a second, until shutdown; then a last flush.
    let mut stop = shutdown.clone();
    let version = flow.config.contract.version.clone();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while !*stop.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {}
        }
        if let Ok(stream) = flow.js.get_stream(&names.stream).await
            && let Ok(info) = stream.consumer_info(&names.consumer).await
        {
            let lag = info.num_pending + info.num_ack_pending as u64;
            flow.metrics.lag.set(lag as i64);
            flow.progress.set_lag(lag);
        }
        if let Err(e) = flow.progress.flush(&flow.store, &version).await {
            tracing::warn!(error = %e, "progress not written; retrying");
        }
    }
    flow.metrics.set_ready(false);
    while tasks.join_next().await.is_some() {}
    flow.progress.flush(&flow.store, &version).await?;
    Ok(())
}

/// The full-refresh run of the CronJob.
pub async fn full_refresh(config: WorkerConfig) -> anyhow::Result<extract::RefreshReport> {
    let flow = Flow::connect(config).await?;
    let report = flow.extractor().full_refresh().await?;
    flow.progress
        .flush(&flow.store, &flow.config.contract.version)
        .await?;
    Ok(report)
}

/// `flowplane worker`: logs as JSON, stops on SIGTERM or Ctrl-C.
pub fn run_cli(args: WorkerArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let config = WorkerConfig::load(&args.config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        if args.full_refresh {
            let report = full_refresh(config).await?;
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = stop.send(true);
        });
        let worker_id = args
            .worker_id
            .unwrap_or_else(|| format!("worker-{}", std::process::id()));
        let options = RunOptions {
            listen: Some(args.listen),
            concurrency: args.concurrency,
            ..RunOptions::new(&worker_id)
        };
        run(config, options, shutdown).await
    })
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
