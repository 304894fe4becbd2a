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
pub mod key_freshness;
pub mod lease;
pub mod metrics;
pub mod progress;
pub mod quality;
pub mod quota;
pub mod redact;
pub mod resilience;
pub mod sample;
pub mod transform;
pub mod version;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use clap::Args;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::queue::jetstream::{
    QueuePolicy, bucket, ensure_dead_letter_stream, ensure_queue, legacy_bucket_pending,
};
use crate::worker_config::WorkerConfig;
use connectors::target::Target;
use metrics::Metrics;
use progress::ProgressDeltas;
use transform::Plan;

/// A lock whose holder panicked still guards plain bookkeeping (sets, counters, lists) in a
/// usable state: keep using it rather than fail every later caller.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

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
        let client = config
            .nats_access()
            .options()
            .await?
            .retry_on_initial_connect()
            .connect(config.nats_url.as_str())
            .await?;
        let js = jetstream::new(client);
        // Upgraded from the per-flow bucket: its records are moved into the namespace bucket by
        // the operator, in the pass that rolled this worker out (the flow's own user may not),
        // and must be before this worker reads a cursor there; it waits meanwhile.
        while legacy_bucket_pending(&js, &config.queue).await? {
            tracing::info!("waiting for the operator to move the flow's state to its namespace");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        // The operator creates the queue with the flow's full policy; a worker only creates
        // what is missing (so tests and a worker started first work) and never overrides it.
        // Where no operator made the queue, none may answer for the dead-letter stream
        // either (it is made on demand), so that one is made here too.
        if js.get_stream(&config.queue.stream).await.is_err()
            || bucket(&js, &config.queue).await.is_err()
        {
            let policy = QueuePolicy::from_rendered(&config.delivery)
                .map_err(|e| anyhow::anyhow!("worker configuration: {e}"))?;
            ensure_queue(&js, &config.queue, &policy).await?;
            ensure_dead_letter_stream(&js, &config.queue, &policy).await?;
        }
        let store = bucket(&js, &config.queue).await?;
        let metrics = Metrics::new(&config.namespace, &config.flow);
        let key_cap = config
            .freshness_by
            .as_ref()
            .map_or(0, |f| f.max_values as usize);
        Ok(Flow {
            js,
            store,
            plan: Arc::new(plan),
            config: Arc::new(config),
            metrics,
            progress: Arc::new(ProgressDeltas::with_key_cap(key_cap)),
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
    target
        .http
        .limit_bodies(flow.config.limits.max_response_bytes as usize);
    quota::SharedQuota::attach(
        &target.http,
        &flow.js,
        &flow.config.namespace,
        &flow.config.target.endpoint,
    )
    .await?;
    let target = Arc::new(target);
    let mut tasks = tokio::task::JoinSet::new();
    let extractor = Arc::new(flow.extractor());
    let store = flow.store.clone();
    let worker_id = options.worker_id.clone();
    let lease_ttl = options.lease_ttl;
    tasks.spawn(supervise(
        "extractor",
        flow.metrics.clone(),
        shutdown.clone(),
        move |stop| {
            let extractor = extractor.clone();
            let lease = lease::Lease::new(store.clone(), worker_id.clone(), lease_ttl);
            async move { extractor.run(lease, stop).await }
        },
    ));
    let approval = match &flow.config.approval {
        Some(config) => {
            let escalate = match &config.escalate_to {
                Some(to) => {
                    let mut escalate =
                        Target::new(to, flow.plan.key_names(), flow.metrics.clone())?;
                    escalate.order_by(version_field.clone());
                    quota::SharedQuota::attach(
                        &escalate.http,
                        &flow.js,
                        &flow.config.namespace,
                        &to.endpoint,
                    )
                    .await?;
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
    let key_freshness = flow
        .config
        .freshness_by
        .as_ref()
        .map(|f| Arc::new(key_freshness::KeyFreshness::new(f)));
    // Freshness per value, like the flow's: from the progress record, whichever worker
    // delivered.
    let observe_keys = |progress: &crate::queue::FlowProgress| {
        if let Some(keys) = &key_freshness {
            keys.observe(&progress.last_success_by);
            flow.metrics
                .observe_key_success(keys.field(), &progress.last_success_by);
        }
    };
    let consumer = Arc::new(consume::Consumer {
        js: flow.js.clone(),
        names: names.clone(),
        plan: flow.plan.clone(),
        target,
        batch_size: flow.config.target.batch_size.max(1) as usize,
        fetch_max_bytes: flow.config.limits.fetch_max_bytes as usize,
        max_deliver: i64::from(flow.config.delivery.max_deliver),
        redelivery: resilience::Backoff::new(&flow.config.delivery.retry),
        metrics: flow.metrics.clone(),
        progress: flow.progress.clone(),
        store: flow.store.clone(),
        approval,
        ack_wait: crate::api::common::parse_duration(&flow.config.delivery.ack_wait)
            .unwrap_or(Duration::from_secs(30)),
        shutdown: shutdown.clone(),
        key_freshness: key_freshness.clone(),
        held: Default::default(),
    });
    for _ in 0..options.concurrency.max(1) {
        let consumer = consumer.clone();
        tasks.spawn(supervise(
            "consumer",
            flow.metrics.clone(),
            shutdown.clone(),
            move |stop| {
                let consumer = consumer.clone();
                async move {
                    consumer.run(stop).await;
                    Ok(())
                }
            },
        ));
    }
    // Freshness is the flow's, not this process's: a new worker starts from the last delivery
    // any worker recorded, so a rollout of a quiet flow does not look stale.
    match crate::queue::jetstream::read_json_entry::<crate::queue::FlowProgress>(
        &flow.store,
        crate::queue::PROGRESS_KEY,
    )
    .await
    {
        Ok((progress, _)) => {
            flow.metrics
                .observe_last_success(progress.last_success_unix);
            observe_keys(&progress);
        }
        Err(e) => tracing::warn!(error = %e, "progress record not read; freshness starts unknown"),
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
        // The exception queue's age: what waits longest for a fix and a redrive.
        if let Ok(dead) = flow.js.get_stream(&names.dead_letter_stream).await {
            let state = &dead.cached_info().state;
            flow.metrics.oldest_dead_letter.set(if state.messages == 0 {
                0
            } else {
                state.first_timestamp.unix_timestamp()
            });
        }
        match flow.progress.flush(&flow.store, &version).await {
            // Also what other workers of the flow delivered.
            Ok(Some(progress)) => {
                flow.metrics
                    .observe_last_success(progress.last_success_unix);
                observe_keys(&progress);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "progress not written; retrying"),
        }
        if let Some(codes) = flow.plan.take_new_codes()
            && let Err(e) = crate::queue::codes::add_observed_codes(&flow.store, &codes).await
        {
            flow.plan.keep_new_codes();
            tracing::warn!(error = %e, "observed codes not written; retrying");
        }
    }
    flow.metrics.set_ready(false);
    while tasks.join_next().await.is_some() {}
    flow.progress.flush(&flow.store, &version).await?;
    Ok(())
}

/// Runs the task `start` makes until `shutdown`, restarting it with backoff (1 s doubling to
/// 30 s, reset once it ran [`HEALTHY_RUN`]) when it fails or panics: each restart is counted
/// (`flowplane_worker_task_restarts_total{task}`), /readyz says which task is restarting and
/// why, and /healthz fails once it failed [`metrics::LIVENESS_FAILURES`] times in a row.
async fn supervise<F, Fut>(
    task: &'static str,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    start: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut delay = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        // A supervisor that is dropped (its worker aborted) takes its task along, so no task
        // outlives the worker holding the lease or a half-read page.
        let mut handle = AbortOnDropHandle::new(tokio::spawn(start(shutdown.clone())));
        let outcome = tokio::select! {
            outcome = &mut handle => outcome,
            _ = tokio::time::sleep(HEALTHY_RUN) => {
                // Running a while again: no longer failing in a row.
                metrics.task_running(task);
                handle.await
            }
        };
        if *shutdown.borrow() {
            return;
        }
        let why = match outcome {
            Ok(Ok(())) => "stopped unexpectedly".to_string(),
            Ok(Err(e)) => format!("failed: {e:#}"),
            Err(e) if e.is_panic() => "panicked".to_string(),
            Err(e) => format!("ended: {e}"),
        };
        if started.elapsed() > HEALTHY_RUN {
            delay = Duration::from_secs(1);
        }
        tracing::error!(task, reason = %why, retry_in_ms = delay.as_millis() as u64, "task restarting");
        metrics.task_failed(task, format!("{task} {why}; restarting"));
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
        metrics.set_not_ready(task, None);
    }
}

/// How long a restarted task must run to count as healthy again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A task that fails, panics, then runs is restarted twice, counted, and the worker is not
    /// ready while it waits to restart.
    #[tokio::test(start_paused = true)]
    async fn a_failing_or_panicking_task_is_restarted_with_backoff_and_counted() {
        let metrics = Metrics::new("ns", "flow");
        metrics.set_ready(true);
        let (stop, shutdown) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let supervised = tokio::spawn(supervise(
            "extractor",
            metrics.clone(),
            shutdown,
            move |mut stop| {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match run {
                        0 => anyhow::bail!("source gone"),
                        1 => panic!("a bug"),
                        _ => {
                            let _ = stop.changed().await;
                            Ok(())
                        }
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let why = metrics.readiness().expect("not ready while restarting");
        assert!(why.contains("extractor failed: source gone"), "{why}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(metrics.readiness(), None);
        assert!(metrics.encode().contains("flowplane_worker_task_restarts_total{namespace=\"ns\",flow=\"flow\",task=\"extractor\"} 2"), "{}", metrics.encode());
        assert_eq!(metrics.liveness(), None);
        stop.send(true).unwrap();
        supervised.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "not restarted at shutdown");
    }
}
