//! `flowplane controller`: process setup around [`super::run`]: logging, the HTTP endpoints,
//! and leader election when several replicas run.

use std::time::Duration;

use kube::Client;

use super::leader::LeaderElector;
use super::metrics::Metrics;
use super::{Context, OperatorConfig};

/// A client that counts the write requests it sends, so "a settled operator writes nothing"
/// is visible in production as `flowplane_operator_kube_write_requests_total`. With
/// `in_flight`, at most that many requests are sent at once and the rest wait in the client's
/// queue (a watch holds its place only until its response starts).
fn counting_client(
    writes: prometheus_client::metrics::counter::Counter,
    config: kube::Config,
    in_flight: Option<u16>,
) -> anyhow::Result<Client> {
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        if req.method() != http::Method::GET {
            writes.inc();
            tracing::debug!(method = %req.method(), path = req.uri().path(), "kube write");
        }
        req
    });
    let layers = tower::ServiceBuilder::new().layer(count).option_layer(
        in_flight.map(|limit| tower::limit::ConcurrencyLimitLayer::new(usize::from(limit))),
    );
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layers)
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
    /// Requests to the Kubernetes API in flight at once, at most; the rest wait in the
    /// operator. Thousands of flows reconciling at once (each applying its children together)
    /// otherwise crowd the API server's other clients out: at 10,000 new flows
    /// kube-controller-manager fell behind on the workers' Deployments by thousands. The lease
    /// is renewed outside this limit.
    #[arg(
        long,
        env = "FLOWPLANE_KUBE_API_CONCURRENCY",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub kube_api_concurrency: u16,
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
            // Only a replica that elects a leader renews a Lease, outside the request limit.
            let lease_client = args
                .leader_election
                .then(|| counting_client(metrics.kube_writes.clone(), config.clone(), None))
                .transpose()?;
            let client = counting_client(
                metrics.kube_writes.clone(),
                config,
                Some(args.kube_api_concurrency),
            )?;
            let ctx = Context::with_metrics(client.clone(), operator, metrics).await?;
            tokio::spawn(super::serve_http(ctx.clone()));
            tracing::info!(region = ?ctx.config.region, "flowplane operator starting");
            let Some(lease_client) = lease_client else {
                return super::run(ctx).await;
            };
            let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("flowplane-{}", std::process::id()));
            let elector = LeaderElector::new(
                lease_client,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;

    use super::*;

    /// The most requests a stand-in API server had at once, of `requests` sent together
    /// through a client built with `in_flight` (each answer takes 50 ms).
    async fn most_at_once(in_flight: Option<u16>, requests: usize) -> usize {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counted_now, counted_most) = (now.clone(), most.clone());
        let app = axum::Router::new().fallback(move || {
            let (now, most) = (counted_now.clone(), counted_most.clone());
            async move {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "x", "namespace": "default"}
                }))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = kube::Config::new(url.parse().expect("a URL"));
        let client = counting_client(Default::default(), config, in_flight).expect("a client");
        let config_maps: Api<ConfigMap> = Api::namespaced(client, "default");
        let answers = futures::future::join_all((0..requests).map(|_| config_maps.get("x"))).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn the_operators_client_sends_at_most_its_limit_at_once() {
        assert_eq!(most_at_once(Some(4), 20).await, 4);
        // Without the limit the same requests do go out together.
        assert!(most_at_once(None, 20).await > 4);
    }
}
