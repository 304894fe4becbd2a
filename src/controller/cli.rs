//! `flowplane controller`: process setup around [`super::run`]: logging, the HTTP endpoints,
//! and leader election when several replicas run.

use std::time::Duration;

use kube::Client;

use super::leader::LeaderElector;
use super::metrics::Metrics;
use super::{Context, OperatorConfig};

/// A client that counts the write requests it sends, so "a settled operator writes nothing"
/// is visible in production as `flowplane_operator_kube_write_requests_total`.
async fn counting_client(
    writes: prometheus_client::metrics::counter::Counter,
    config: kube::Config,
) -> anyhow::Result<Client> {
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        if req.method() != http::Method::GET {
            writes.inc();
            tracing::debug!(method = %req.method(), path = req.uri().path(), "kube write");
        }
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub operator: OperatorConfig,
    /// Run only while holding the Lease (for more than one replica).
    #[arg(long, env = "FLOWPLANE_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "flowplane-system")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "flowplane-operator")]
    pub lease_name: String,
    /// How long a lease lasts without renewal (seconds).
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
}

pub fn main(args: ControllerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let metrics = Metrics::default();
            let config = kube::Config::infer().await?;
            let mut operator = args.operator;
            // Health probes never reach the API server at the address this client uses.
            operator.probe.api_server_urls = vec![config.cluster_url.to_string()];
            let client = counting_client(metrics.kube_writes.clone(), config).await?;
            let ctx = Context::with_metrics(client.clone(), operator, metrics).await?;
            tokio::spawn(super::serve_http(ctx.clone()));
            tracing::info!(region = ?ctx.config.region, "flowplane operator starting");
            if !args.leader_election {
                return super::run(ctx).await;
            }
            let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("flowplane-{}", std::process::id()));
            let elector = LeaderElector::new(
                client,
                &args.lease_namespace,
                &args.lease_name,
                &identity,
                Duration::from_secs(args.lease_seconds),
            );
            elector.acquire().await;
            tracing::info!(%identity, "leading");
            tokio::select! {
                result = super::run(ctx) => result,
                () = elector.keep_renewing() => anyhow::bail!("lost the leader lease; exiting so no two replicas write"),
            }
        })
}
