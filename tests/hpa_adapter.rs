//! The HPA fallback, for real: a cluster without KEDA whose `external.metrics.k8s.io` is served
//! by prometheus-adapter (built from its Go module by install-tools.sh, run by
//! `scripts/local-env.sh adapter-up`) over the environment's Prometheus, which scrapes a real
//! worker process. The operator renders the flow's HorizontalPodAutoscaler on the workers' lag
//! gauge; kube-controller-manager's HPA controller scales the worker Deployment from
//! minReplicas to maxReplicas while the target is down, and back once the worker has delivered
//! everything. Counts stay exact: read = delivered, nothing dead-lettered.

mod e2e_support;
mod support;

use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Api;
use serde_json::json;

use e2e_support::{TempDir, WorkerProcess, flow_queue, progress, start_sims, write_atomically};
use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use flowplane::queue::QueueNames;
use flowplane::sim::erp::ErpSeed;
use flowplane::sim::faults::FaultSpec;
use support::{
    TestNamespace, apply_yaml, client, eventually, local_env, operator, replica_timeline,
};

const RECORDS: u32 = 2000;
const ENTITY: &str = "sales-history";

/// 2,000 records at 500 a worker ask for four workers: capped at three. Deliveries are many,
/// so records wait out the target's outage instead of being dead-lettered.
const FLOW: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders}
spec:
  source: {bindingRef: erp, entity: A_SalesOrderItem, syncMode: Incremental, cursorField: LastChangeDateTime}
  target: {bindingRef: forecasting, entity: /api/v1/sales-history/bulk-upsert, batchSize: 100}
  contract: {name: order-lines, versions: "^1"}
  schedule: {pollInterval: 1s}
  mapping:
    fields:
    - {to: salesOrder, from: SalesOrder}
    - {to: salesOrderItem, from: SalesOrderItem}
  delivery: {maxDeliver: 1000}
  scaling: {minReplicas: 1, maxReplicas: 3, lagPerReplica: 500}
  deletionPolicy: Delete
"#;

/// The lag as the HPA reads it: from the aggregated external metrics API, through
/// prometheus-adapter and Prometheus.
async fn served_lag(client: &kube::Client, ns: &str) -> Option<i64> {
    let request = http::Request::get(format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/flowplane_worker_lag_records?labelSelector=flow%3Dorders"
    ))
    .body(Vec::new())
    .ok()?;
    let list: serde_json::Value = client.request(request).await.ok()?;
    let value = list["items"].as_array()?.first()?["value"]
        .as_str()?
        .to_string();
    // A quantity: "2k", "1500", "500m".
    let (number, scale) = match value.strip_suffix('k') {
        Some(n) => (n, 1000.0),
        None => match value.strip_suffix('m') {
            Some(n) => (n, 0.001),
            None => (value.as_str(), 1.0),
        },
    };
    Some((number.parse::<f64>().ok()? * scale).round() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_hpa_scales_on_the_workers_lag_through_prometheus_adapter() {
    flowplane::worker::http::install_crypto_provider();
    let _adapter = support::EnvAddon::up("adapter");
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "hpa").await;
    let sims = start_sims(ErpSeed {
        order_lines: RECORDS,
        ..ErpSeed::empty()
    })
    .await;
    // The target is down from the start: the lag builds up.
    sims.forecast.faults.set(FaultSpec {
        status: Some(503),
        retry_after_secs: Some(1),
        ..Default::default()
    });
    let names = QueueNames::for_flow(&ns.name, "orders");
    let (js, _cleanup) = flow_queue(&local_env().nats_url, &names).await;
    for doc in support::erp_and_forecasting_bindings(&sims.erp_url, &sims.forecast_url) {
        let _: ConnectorBinding = apply_yaml(&client, &ns.name, &doc).await;
    }
    let _: DataContract = apply_yaml(&client, &ns.name, &support::order_lines_contract(&[])).await;
    let _: IntegrationFlow = apply_yaml(&client, &ns.name, FLOW).await;

    // No KEDA, external metrics served: the flow gets an HPA on the lag metric.
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns.name);
    eventually(120, "Autoscaled=True HorizontalPodAutoscaler", || async {
        let flow = flows.get("orders").await.ok()?;
        flow.status?
            .conditions
            .iter()
            .any(|c| {
                c.type_ == "Autoscaled"
                    && c.status == "True"
                    && c.reason == "HorizontalPodAutoscaler"
            })
            .then_some(())
    })
    .await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    assert!(hpas.get_opt("orders-worker").await.unwrap().is_some());

    // One real worker process (no kubelet runs pods here), scraped by Prometheus.
    let mut config = eventually(60, "the worker configuration", || {
        support::rendered_worker_config(&client, &ns.name, "orders")
    })
    .await;
    config.nats_creds_file = None;
    config.nats_ca_file = None;
    let dir = TempDir::new("hpa");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _worker = WorkerProcess::start_logging(
        &config,
        &dir.0,
        "hpa-worker",
        "warn",
        &dir.0.join("worker.log"),
        listen,
    );
    let target_file = format!("hpa-{}.json", ns.name);
    write_atomically(
        &local_env().prometheus_targets,
        &target_file,
        &json!([{"targets": [listen.to_string()], "labels": {"service": "orders-worker"}}])
            .to_string(),
    );
    let _targets = TargetFile(target_file);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let sample_served_lag = async || {
        format!(
            "served_lag={}",
            served_lag(&client, &ns.name)
                .await
                .map_or("-".into(), |l| l.to_string())
        )
    };
    let started = Instant::now();
    replica_timeline(
        ("hpa", "lag"),
        300,
        started,
        (&deployments, "orders-worker"),
        &sample_served_lag,
        |r| r == 3,
    )
    .await;
    let served = served_lag(&client, &ns.name).await.unwrap_or(0);
    assert!(
        served > 1500,
        "the HPA scaled on a lag the adapter did not serve: {served}"
    );
    // Asked from another namespace with the same selector, the adapter serves nothing: it adds
    // the namespace of the request to its query.
    assert_eq!(served_lag(&client, "default").await, None);

    // The target back: the worker delivers everything, the lag falls to 0 and the HPA brings
    // the workers back to minReplicas (the local kube-controller-manager's scale-down
    // stabilization is 30 s, the default 5 min).
    sims.forecast.faults.set(FaultSpec::default());
    replica_timeline(
        ("hpa", "drained"),
        300,
        started,
        (&deployments, "orders-worker"),
        &sample_served_lag,
        |r| r == 1,
    )
    .await;
    let p = progress(&js, &names).await;
    assert_eq!(
        (p.read, p.delivered, p.dead_lettered),
        (u64::from(RECORDS), u64::from(RECORDS), 0)
    );
    assert_eq!(sims.forecast.received(ENTITY).applied(), u64::from(RECORDS));
}

/// Removes the worker's Prometheus target file when the test ends.
struct TargetFile(String);

impl Drop for TargetFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(local_env().prometheus_targets.join(&self.0));
    }
}
