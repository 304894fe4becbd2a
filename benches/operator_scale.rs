//! Operator at scale (run by scripts/bench-operator.sh, not a test): applies N flows and
//! reports the time until every flow's children exist and its status has the current
//! observedGeneration, against a plain server-side-apply loop of the same object count in the
//! same run (the floor); then write requests during 60 s of idleness and the operator's peak RSS.
//!
//! Environment: KUBECONFIG, FLOWPLANE_BIN (release binary), NATS_URL, FLOWS (default 1000).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use flowplane::api::IntegrationFlow;

const CONCURRENCY: usize = 16;
/// Children per flow: ConfigMap, Deployment, Service, PDB, NetworkPolicy, HPA, rules ConfigMap.
const CHILDREN_PER_FLOW: usize = 7;

fn flow(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "flowplane.io/v1alpha1", "kind": "IntegrationFlow",
        "metadata": {"name": format!("flow-{i:04}")},
        "spec": {
            "source": {"bindingRef": "erp", "entity": format!("Entity{i}"), "syncMode": "FullRefresh"},
            "target": {"bindingRef": "forecasting", "entity": "/v1/ingest"},
            "contract": {"name": "orders", "versions": "^1"},
            "scaling": {"minReplicas": 1, "maxReplicas": 3}
        }
    })
}

async fn apply(client: &Client, ns: &str, value: serde_json::Value) -> anyhow::Result<()> {
    let object: kube::api::DynamicObject = serde_json::from_value(value)?;
    let types = object.types.clone().unwrap();
    let gvk = kube::api::GroupVersionKind::try_from(&types)?;
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let name = object.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&object),
    )
    .await?;
    Ok(())
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}}))?,
    )
    .await?;
    Ok(())
}

/// Write requests the operator has sent so far, from its own /metrics.
async fn operator_writes(metrics_url: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(metrics_url).await?.text().await?;
    text.lines()
        .find(|l| l.starts_with("flowplane_operator_kube_write_requests_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no write counter in {metrics_url}"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn peak_rss_mib(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs benches without `--bench`; this one needs its script.
    if !std::env::args().any(|a| a == "--bench") {
        println!("operator_scale: skipped outside `cargo bench` (run scripts/bench-operator.sh)");
        return Ok(());
    }
    let flows: usize = std::env::var("FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bin = std::env::var("FLOWPLANE_BIN")?;
    let client = Client::try_default().await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();

    // Floor: the same number of objects by a plain server-side-apply loop.
    let floor_ns = format!("bench-floor-{stamp}");
    namespace(&client, &floor_ns).await?;
    let objects = flows * CHILDREN_PER_FLOW;
    let start = Instant::now();
    stream::iter(0..objects)
        .map(|i| {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("floor-{i:05}")}, "data": {"worker.json": "{}"}});
            apply(&client, &floor_ns, cm)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let floor = start.elapsed();

    // The operator, as its own process.
    let ns = format!("bench-{stamp}");
    namespace(&client, &ns).await?;
    let port = free_port()?;
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let mut operator = Command::new(&bin)
        .args([
            "controller",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--resync-seconds",
            "60",
        ])
        .env(
            "RUST_LOG",
            std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()?;
    apply(&client, &ns, json!({"apiVersion": "flowplane.io/v1alpha1", "kind": "ConnectorBinding", "metadata": {"name": "erp"},
        "spec": {"system": "Erp", "protocol": "OData", "endpoint": {"url": "http://127.0.0.1:9/odata"}}})).await?;
    apply(&client, &ns, json!({"apiVersion": "flowplane.io/v1alpha1", "kind": "ConnectorBinding", "metadata": {"name": "forecasting"},
        "spec": {"system": "Forecasting", "protocol": "Rest", "endpoint": {"url": "http://127.0.0.1:9/api"}}})).await?;
    apply(&client, &ns, json!({"apiVersion": "flowplane.io/v1alpha1", "kind": "DataContract", "metadata": {"name": "orders"},
        "spec": {"domain": "orders", "version": "1.0.0", "owner": {"team": "bench"},
                 "schema": {"primaryKey": ["id"], "fields": [{"name": "id", "type": "String", "required": true}, {"name": "qty", "type": "Int"}]}}})).await?;
    let start = Instant::now();
    stream::iter(0..flows)
        .map(|i| apply(&client, &ns, flow(i)))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let flows_api: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=flowplane");
    let deadline = Instant::now() + Duration::from_secs(1800);
    let operator_time = loop {
        let listed = flows_api.list(&ListParams::default()).await?;
        let current = listed
            .items
            .iter()
            .filter(|f| {
                f.status.as_ref().and_then(|s| s.observed_generation) == f.metadata.generation
            })
            .count();
        let deployed = deployments.list_metadata(&managed).await?.items.len();
        let configs = config_maps.list_metadata(&managed).await?.items.len();
        // Worker configuration and rules per flow, plus the contract's history ConfigMap.
        if current == flows && deployed == flows && configs > 2 * flows {
            break start.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not settled: {current} statuses, {deployed} deployments, {configs} configmaps"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Quiet: the reconciles that owned-object events queue up (Deployment status from
    // kube-controller-manager, and so on) drain; wait until no write for 20 s (at most 10 min).
    let quiet_start = Instant::now();
    let mut last = operator_writes(&metrics_url).await?;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(20) {
        anyhow::ensure!(
            quiet_start.elapsed() < Duration::from_secs(600),
            "the operator never went quiet"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = operator_writes(&metrics_url).await?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let time_to_quiet = quiet_start.elapsed() - Duration::from_secs(20);
    // Idle: count the operator's writes for 60 s. (The apiserver's own counters would include
    // kube-controller-manager updating every HPA's status.)
    let before = operator_writes(&metrics_url).await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let idle_writes = operator_writes(&metrics_url).await? - before;
    let rss = peak_rss_mib(&operator);
    let reconcile_figures = reqwest::get(&metrics_url).await?.text().await?;
    operator.kill().ok();
    operator.wait().ok();

    println!("flows:                                  {flows}");
    println!(
        "objects applied by the operator:        {} children + {flows} statuses",
        flows * CHILDREN_PER_FLOW
    );
    println!(
        "operator: all children + current status {:.1} s",
        operator_time.as_secs_f64()
    );
    println!(
        "floor: plain SSA loop of {objects} objects  {:.1} s (concurrency {CONCURRENCY})",
        floor.as_secs_f64()
    );
    println!(
        "ratio operator / floor:                 {:.2}",
        operator_time.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "then until no write for 20 s:           {:.1} s",
        time_to_quiet.as_secs_f64()
    );
    println!("operator write requests in 60 s idle:   {idle_writes}");
    println!("operator peak RSS:                      {rss:.1} MiB");
    println!("the operator's own reconcile figures, for where the time went:");
    reconcile_figures
        .lines()
        .filter(|l| l.contains("IntegrationFlow") && !l.contains("_bucket"))
        .for_each(|l| println!("  {l}"));
    Ok(())
}
