//! Real autoscaling: KEDA v2 (built from its Go module by install-tools.sh), its operator and
//! metrics API server running against the local API server (`scripts/local-env.sh keda-up`),
//! scales a flow's worker Deployment on its consumer's lag, from minReplicas to maxReplicas and
//! back, through the HPA KEDA makes and kube-controller-manager's HPA controller. No worker
//! runs: the lag is records published to the flow's stream, then purged.

mod support;

use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use flowplane::queue::QueueNames;
use support::{
    TestNamespace, UNREACHABLE_BINDINGS, apply_yaml, client, eventually, local_env,
    minimal_contract, nats_admin, operator, operator_forbidden, replica_timeline,
};

const FLOW: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders}
spec:
  source: {bindingRef: erp, entity: A_SalesOrderItem, syncMode: FullRefresh}
  target: {bindingRef: forecasting, entity: /v1/sales-history}
  contract: {name: sales-order-lines, versions: "^1"}
  scaling: {minReplicas: 1, maxReplicas: 3, lagPerReplica: 500}
  deletionPolicy: Delete
"#;

/// Records published: four workers' worth of lag, so KEDA asks for more than maxReplicas.
const RECORDS: usize = 2000;

/// The consumer's lag as KEDA's NATS scaler reads it (pending + awaiting ack), checking on
/// each sample that the operator was never refused a request.
async fn consumer_lag(js: &async_nats::jetstream::Context, names: &QueueNames) -> String {
    assert!(
        operator_forbidden().is_empty(),
        "{:?}",
        operator_forbidden()
    );
    let lag = match js.get_stream(&names.stream).await {
        Ok(stream) => match stream.consumer_info(&names.consumer).await {
            Ok(info) => info.num_pending + info.num_ack_pending as u64,
            Err(_) => 0,
        },
        Err(_) => 0,
    };
    format!("lag={lag}")
}

#[tokio::test]
async fn keda_scales_a_flows_workers_on_consumer_lag_from_min_to_max_and_back() {
    let _keda = support::EnvAddon::up("keda");
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "keda").await;
    let dependencies = format!(
        "{UNREACHABLE_BINDINGS}---{}",
        minimal_contract("sales-order-lines", "orderId")
    );
    for doc in dependencies.split("---") {
        if doc.contains("kind: DataContract") {
            let _: DataContract = apply_yaml(&client, &ns.name, doc).await;
        } else {
            let _: ConnectorBinding = apply_yaml(&client, &ns.name, doc).await;
        }
    }
    let _: IntegrationFlow = apply_yaml(&client, &ns.name, FLOW).await;

    // KEDA is installed: a ScaledObject, the flow says KEDA scales it, and KEDA has made its HPA.
    let scaled_objects = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ));
    let so_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &scaled_objects);
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns.name);
    eventually(120, "Autoscaled=True KedaScaledObject", || async {
        let flow = flows.get("orders").await.ok()?;
        flow.status?
            .conditions
            .iter()
            .any(|c| {
                c.type_ == "Autoscaled" && c.status == "True" && c.reason == "KedaScaledObject"
            })
            .then_some(())
    })
    .await;
    eventually(
        120,
        "the ScaledObject Ready (KEDA reached the scaler)",
        || async {
            let so = so_api.get_opt("orders-worker").await.ok()??;
            so.data["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        },
    )
    .await;

    let names = QueueNames::for_flow(&ns.name, "orders");
    let js = async_nats::jetstream::new(nats_admin(&local_env().nats_url).await);
    eventually(60, "the flow's stream and consumer", || async {
        js.get_stream(&names.stream)
            .await
            .ok()?
            .consumer_info(&names.consumer)
            .await
            .ok()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let started = Instant::now();
    replica_timeline(
        ("keda", "idle"),
        120,
        started,
        (&deployments, "orders-worker"),
        async || consumer_lag(&js, &names).await,
        |r| r == 1,
    )
    .await;

    // Lag: records nobody consumes (no worker runs here).
    for i in 0..RECORDS {
        js.publish(
            format!("{}.0", names.subject),
            format!("{{\"orderId\":\"{i}\"}}").into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    replica_timeline(
        ("keda", "lag"),
        300,
        started,
        (&deployments, "orders-worker"),
        async || consumer_lag(&js, &names).await,
        |r| r == 3,
    )
    .await;

    // The lag gone, KEDA's HPA brings the workers back to minReplicas (the local
    // kube-controller-manager's scale-down stabilization is 30 s, the default 5 min).
    js.get_stream(&names.stream)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    replica_timeline(
        ("keda", "drained"),
        300,
        started,
        (&deployments, "orders-worker"),
        async || consumer_lag(&js, &names).await,
        |r| r == 1,
    )
    .await;
}
