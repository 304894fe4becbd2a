//! `flowplane controller`: the operator. One module per kind, each a pipeline
//! dereference -> validate -> build (pure, in `crate::render`) -> apply -> status.

pub mod cli;
pub mod conditions;
pub mod connector_binding;
pub mod data_contract;
pub mod error;
pub mod integration_flow;
pub mod leader;
pub mod metrics;
pub mod operations_cli;
pub mod optional_apis;
pub mod written_status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

pub use error::{Error, Result};
use metrics::Metrics;
use optional_apis::OptionalApis;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "flowplane-operator";

/// Operator configuration (flags or environment; the Helm chart sets them).
#[derive(clap::Args, Clone, Debug)]
pub struct OperatorConfig {
    /// Reconcile only flows whose spec.region is this region (or unset).
    #[arg(long, env = "FLOWPLANE_REGION")]
    pub region: Option<String>,
    /// NATS server with JetStream that holds the flows' queues.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://nats.flowplane-system.svc:4222"
    )]
    pub nats_url: String,
    /// NATS credentials file of the operator's own connection (mounted from a Secret); never
    /// logged. Without it, an operator with a signer issues its own user.
    #[arg(long, env = "FLOWPLANE_NATS_CREDS")]
    pub nats_creds_file: Option<PathBuf>,
    /// Directory with the flowplane NATS account's signing key (`account-signer.nk`) and the
    /// account's public key (`account.pub`), mounted from the operator's own Secret. With it,
    /// each flow gets its own NATS user in a `<flow>-nats` Secret (`queue::identity`).
    #[arg(long, env = "FLOWPLANE_NATS_SIGNER_DIR")]
    pub nats_signer_dir: Option<PathBuf>,
    /// CA bundle of the NATS server's certificate: TLS required, and copied into each flow's
    /// `<flow>-nats` Secret for its workers.
    #[arg(long, env = "FLOWPLANE_NATS_CA")]
    pub nats_ca_file: Option<PathBuf>,
    /// NATS monitoring endpoint (host:port) for KEDA's nats-jetstream scaler.
    #[arg(
        long,
        env = "FLOWPLANE_NATS_MONITORING",
        default_value = "nats.flowplane-system.svc:8222"
    )]
    pub nats_monitoring_endpoint: String,
    /// Replicas of each flow's stream, consumer, dead-letter stream and bucket when the flow's
    /// `delivery.replicas` is unset: 1 for a single nats-server, 3 (the chart's default) on a
    /// NATS cluster, 5 to ride out two lost servers.
    #[arg(
        long,
        env = "FLOWPLANE_QUEUE_REPLICAS",
        default_value_t = 1,
        value_parser = crate::api::integration_flow::parse_queue_replicas
    )]
    pub queue_replicas: u8,
    /// Most bytes of each flow's stream (and, separately, of its dead-letter stream) when the
    /// flow's `delivery.maxBytes` is unset. nats-server reserves both on every replica's server,
    /// so the flows' sum must fit its JetStream storage (docs/operations.md, "Sizing JetStream
    /// storage").
    #[arg(
        long,
        env = "FLOWPLANE_QUEUE_MAX_BYTES",
        default_value_t = crate::api::integration_flow::DEFAULT_QUEUE_MAX_BYTES,
        value_parser = crate::api::integration_flow::parse_queue_max_bytes
    )]
    pub queue_max_bytes: i64,
    /// Image of the sync workers (the operator's own image by default).
    #[arg(
        long,
        env = "FLOWPLANE_WORKER_IMAGE",
        default_value = "ghcr.io/flowplane/flowplane:0.1.0"
    )]
    pub worker_image: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FLOWPLANE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// How often a flow is re-reconciled without any event, to re-evaluate freshness (seconds);
    /// at most, with many flows: see `resync_per_second`.
    #[arg(long, env = "FLOWPLANE_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,
    /// The resyncs' budget: all flows together are resynced at most this often a second, so
    /// with more than `resync_seconds x resync_per_second` flows each one's period grows with
    /// the number of flows (10,000 flows at 10 a second: every ~17 minutes). 0: no limit.
    #[arg(long, env = "FLOWPLANE_RESYNC_PER_SECOND", default_value_t = 10.0)]
    pub resync_per_second: f64,
    /// Watch only these namespaces (comma-separated) instead of the whole cluster, for an
    /// operator granted Roles in those namespaces only.
    #[arg(long, env = "FLOWPLANE_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// What ConnectorBinding health probes may reach (the SSRF guard).
    #[command(flatten)]
    pub probe: connector_binding::policy::ProbePolicyConfig,
}

impl OperatorConfig {
    /// What a flow's queue gets where the flow says nothing.
    pub fn queue_defaults(&self) -> crate::queue::QueueDefaults {
        crate::queue::QueueDefaults {
            replicas: self.queue_replicas,
            max_bytes: self.queue_max_bytes,
        }
    }
}

/// Where a controller watches: the whole cluster, or one namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchScope {
    Cluster,
    Namespace(String),
}

impl WatchScope {
    /// One scope per watched namespace, or the cluster when none is listed.
    pub fn from_config(config: &OperatorConfig) -> Vec<WatchScope> {
        if config.watch_namespaces.is_empty() {
            return vec![WatchScope::Cluster];
        }
        let mut namespaces = config.watch_namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        namespaces.into_iter().map(WatchScope::Namespace).collect()
    }

    /// An API for namespaced objects of kind `K` in this scope.
    pub fn api<K>(&self, client: &Client) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            WatchScope::Cluster => kube::Api::all(client.clone()),
            WatchScope::Namespace(ns) => kube::Api::namespaced(client.clone(), ns),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub jetstream: async_nats::jetstream::Context,
    /// Issues each flow's NATS user; None when the NATS server has no authentication.
    pub nats_signer: Option<Arc<crate::queue::identity::AccountSigner>>,
    /// The NATS server's CA bundle (PEM), handed to each flow's workers.
    pub nats_ca: Option<String>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub optional_apis: OptionalApis,
    /// What this process last applied, so a settled system makes no writes.
    pub applied: integration_flow::apply::AppliedCache,
    /// The API server's addresses and Service ranges health probes never reach.
    pub probe_cluster: connector_binding::policy::ClusterAddresses,
    /// When each binding was last probed (the minimum interval).
    pub recent_probes: connector_binding::policy::RecentProbes,
    /// The flows every watch scope holds, for the resync period.
    pub watched_flows: integration_flow::resync::WatchedFlows,
    /// The statuses this process wrote that its watch caches may not show yet.
    pub written_statuses: written_status::WrittenStatuses,
}

impl Context {
    pub async fn new(client: Client, config: OperatorConfig) -> anyhow::Result<Arc<Context>> {
        Self::with_metrics(client, config, Metrics::default()).await
    }

    /// As [`Context::new`], with metrics the caller already wired (e.g. into the client).
    pub async fn with_metrics(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
    ) -> anyhow::Result<Arc<Context>> {
        let nats_signer = match &config.nats_signer_dir {
            Some(dir) => Some(Arc::new(crate::queue::identity::AccountSigner::load(dir)?)),
            None => None,
        };
        let nats_ca = match &config.nats_ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("reading the NATS CA bundle {}: {e}", path.display())
            })?),
            None => None,
        };
        let access = crate::queue::identity::NatsAccess {
            url: config.nats_url.clone(),
            creds_file: config.nats_creds_file.clone(),
            ca_file: config.nats_ca_file.clone(),
            inbox_prefix: Some(crate::queue::identity::OPERATOR_INBOX_PREFIX.into()),
        };
        let mut options = access
            .options()
            .await?
            .name("flowplane-operator")
            // Start even when NATS is down: flows then report QueueReady=False instead of
            // the whole operator crash-looping.
            .retry_on_initial_connect();
        if let (None, Some(signer)) = (&config.nats_creds_file, &nats_signer) {
            let creds = signer.issue(
                "flowplane-operator",
                &crate::queue::identity::operator_permissions(),
            )?;
            options = options.credentials(&creds)?;
        }
        let nats = options
            .connect(config.nats_url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", config.nats_url))?;
        let reporter = Reporter {
            controller: "flowplane-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Ok(Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            optional_apis: OptionalApis::new(client.clone()),
            client,
            config,
            jetstream: async_nats::jetstream::new(nats),
            nats_signer,
            nats_ca,
            metrics,
            applied: Default::default(),
            probe_cluster: Default::default(),
            recent_probes: Default::default(),
            watched_flows: Default::default(),
            written_statuses: Default::default(),
        }))
    }
}

/// Publishes a Kubernetes Event about `object` (on transitions only; callers decide). Event
/// notes are capped at the 1 kB the API allows; a failure to publish never fails a reconcile.
pub async fn publish_event<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: kube::runtime::events::EventType,
    reason: &str,
    note: String,
) {
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish event");
    }
}

/// Publishes a condition change as an Event: Normal when `healthy`, else Warning, with the
/// condition's reason and "Type is Status: message" as the note.
pub async fn publish_condition_event<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    changed: &crate::api::common::Condition,
    healthy: bool,
) {
    let type_ = if healthy {
        kube::runtime::events::EventType::Normal
    } else {
        kube::runtime::events::EventType::Warning
    };
    let note = format!(
        "{} is {}: {}",
        changed.type_, changed.status, changed.message
    );
    publish_event(ctx, object, type_, &changed.reason, note).await;
}

/// Server-side applies `status` to the status subresource of `object` under the operator's
/// field manager, and remembers it as stored ([`written_status`]). Callers compare before
/// calling: an unchanged status is never written.
pub async fn apply_status<K>(ctx: &Context, object: &K, status: &K::Status) -> Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + kube::core::object::HasStatus
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::Status: serde::Serialize + Clone + Send + Sync + 'static,
{
    use kube::ResourceExt;
    let api: kube::Api<K> =
        kube::Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let stored = api
        .patch_status(
            &object.name_any(),
            &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(&patch),
        )
        .await?;
    ctx.written_statuses.record(&stored);
    Ok(())
}

/// Events carry at most 1 kB of note; longer ones are cut at a character boundary.
fn truncate(mut note: String) -> String {
    const NOTE_LIMIT: usize = 1000;
    if note.len() > NOTE_LIMIT {
        let mut cut = NOTE_LIMIT - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

/// Runs every controller, once per watch scope, until one stops (which only happens on
/// shutdown).
pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let scopes = WatchScope::from_config(&ctx.config);
    tracing::info!(?scopes, "watching");
    let controllers = scopes.into_iter().map(|scope| {
        let ctx = ctx.clone();
        Box::pin(async move {
            tokio::select! {
                () = integration_flow::run(ctx.clone(), &scope) => {},
                () = data_contract::run(ctx.clone(), &scope) => {},
                () = connector_binding::run(ctx.clone(), &scope) => {},
            }
        })
    });
    futures::future::select_all(controllers).await;
    Ok(())
}

/// /metrics, /healthz and /readyz (served by leader and followers alike).
pub async fn serve_http(ctx: Arc<Context>) -> anyhow::Result<()> {
    use axum::routing::get;
    let metrics = ctx.metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.encode())),
        )
        .route("/healthz", get(|| std::future::ready("ok")))
        .route("/readyz", get(|| std::future::ready("ok")));
    let listener = tokio::net::TcpListener::bind(ctx.config.http_addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
