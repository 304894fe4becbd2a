//! The master-data repair loop on a real control plane, a real nats-server and the simulators:
//! records dead-lettered for an unknown plant, the code map fixed, a redrive requested at once
//! (while the workers roll out to the fixed table), and every record delivered exactly once
//! with none dead-lettered again. The workers are the operator's own configuration
//! (`worker.json` from the flow's ConfigMap) run in-process, one per pod; the pods are played by
//! the fake kubelet, and a pod's worker stops when the Deployment deletes the pod.

mod e2e_support;
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use e2e_support::{InProcessWorker, flow_queue, progress, start_sims};
use flowplane::api::integration_flow::CodeDrift;
use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use flowplane::queue::{QueueNames, list_dead_letters};
use flowplane::sim::erp::{ErpSeed, UNKNOWN_PLANT};
use flowplane::worker_config::WorkerConfig;
use support::{TestNamespace, apply_yaml, client, eventually, operator};

const FLOW: &str = "orders";
const ENTITY: &str = "sales-history";

/// The plant table: the simulator's four plants and 1050, which the ERP never sends.
fn code_map(knows_unknown_plant: bool) -> String {
    let extra = if knows_unknown_plant {
        format!(", \"{UNKNOWN_PLANT}\": DC-OVERFLOW")
    } else {
        String::new()
    };
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: plant-to-location}}
data: {{"1010": DC-NORTH, "1020": DC-SOUTH, "1030": DC-EAST, "1040": DC-WEST, "1050": DC-CLOSED{extra}}}
"#
    )
}

const FLOW_YAML: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders}
spec:
  source: {bindingRef: erp, entity: A_SalesOrderItem, syncMode: Incremental, cursorField: LastChangeDateTime}
  target: {bindingRef: forecasting, entity: /api/v1/sales-history/bulk-upsert, batchSize: 50}
  contract: {name: order-lines, versions: "^1"}
  schedule: {pollInterval: 1s}
  mapping:
    fields:
    - {to: salesOrder, from: SalesOrder}
    - {to: salesOrderItem, from: SalesOrderItem}
    - {to: location, from: Plant, codeMap: plants}
    codeMaps:
    - {name: plants, configMapRef: plant-to-location, onUnmapped: DeadLetter}
  deletionPolicy: Delete
"#;

/// The worker configuration the operator rendered, once its code map knows (or not) the
/// unknown plant; with the flow's NATS identity as a pod would mount it.
async fn rendered_config(client: &Client, ns: &str, knows_unknown_plant: bool) -> WorkerConfig {
    let mut config = eventually(60, "the worker configuration", || async {
        let config = support::rendered_worker_config(client, ns, FLOW).await?;
        let table = &config.mapping.code_maps.get("plants")?.entries;
        (table.contains_key(UNKNOWN_PLANT) == knows_unknown_plant).then_some(config)
    })
    .await;
    // The pod's mounted credentials are issued here the same way (e2e_support).
    config.nats_creds_file = None;
    config.nats_ca_file = None;
    config
}

async fn worker_pods(client: &Client, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("flowplane.io/flow={FLOW}")))
        .await
        .unwrap()
        .items
}

fn condition(flow: &IntegrationFlow, type_: &str) -> Option<(String, String, String)> {
    flow.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_during_the_rollout_of_the_fix_delivers_every_record_once() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "repair").await;
    // 300 sales order lines, every 30th bad: 5 from the unknown plant 9999, 5 with a negative
    // quantity (which this contract does not carry, so they are good records here).
    let sims = start_sims(ErpSeed {
        order_lines: 300,
        inventory: 0,
        returns: 0,
        bad_every: 30,
        page_size: 100,
    })
    .await;
    let nats_url = support::local_env().nats_url.clone();
    let names = QueueNames::for_flow(&ns.name, FLOW);
    let (js, _cleanup) = flow_queue(&nats_url, &names).await;
    for doc in support::erp_and_forecasting_bindings(&sims.erp_url, &sims.forecast_url) {
        let _: ConnectorBinding = apply_yaml(&client, &ns.name, &doc).await;
    }
    let _: DataContract = apply_yaml(
        &client,
        &ns.name,
        &support::order_lines_contract(&["{name: location, type: String, required: true}"]),
    )
    .await;
    let _: ConfigMap = apply_yaml(&client, &ns.name, &code_map(false)).await;
    let _: IntegrationFlow = apply_yaml(&client, &ns.name, FLOW_YAML).await;

    // The first pod runs the first configuration.
    let old_config = rendered_config(&client, &ns.name, false).await;
    support::fake_kubelet(&client, &ns.name, &format!("flowplane.io/flow={FLOW}")).await;
    let old_pods = worker_pods(&client, &ns.name).await;
    assert_eq!(old_pods.len(), 1);
    let old_pod = old_pods[0].name_any();
    let old_worker = InProcessWorker::start(old_config, &old_pod);
    eventually(120, "295 records delivered, 5 dead-lettered", || async {
        let p = progress(&js, &names).await;
        let applied = sims.forecast.received(ENTITY).applied();
        (p.delivered == 295 && p.dead_lettered == 5 && applied == 295).then_some(())
    })
    .await;
    let letters = list_dead_letters(&js, &names, None).await.unwrap();
    assert_eq!(letters.len(), 5, "{letters:#?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason == "UnmappedCode" && l.record["Plant"] == UNKNOWN_PLANT)
    );

    // Drift, reported from the first record of the unknown plant on: 9999 unmapped, and 1050,
    // which the ERP never sent, orphaned.
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns.name);
    let drift_is = |unmapped: Vec<String>| {
        let flows = flows.clone();
        let expected = vec![CodeDrift {
            code_map: "plants".into(),
            unmapped_count: unmapped.len() as u64,
            unmapped,
            orphaned: vec!["1050".into()],
            orphaned_count: 1,
        }];
        move || {
            let (flows, expected) = (flows.clone(), expected.clone());
            async move {
                let flow = flows.get(FLOW).await.ok()?;
                (flow.status?.code_drift == expected).then_some(())
            }
        }
    };
    eventually(
        60,
        "9999 unmapped and 1050 orphaned in status",
        drift_is(vec![UNKNOWN_PLANT.into()]),
    )
    .await;

    // The fix, and the redrive right after it: the workers still hold the old table.
    let _: ConfigMap = apply_yaml(&client, &ns.name, &code_map(true)).await;
    flows
        .patch(
            FLOW,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {
                "flowplane.io/redrive": "reason=UnmappedCode"
            }}})),
        )
        .await
        .unwrap();
    let waiting = eventually(60, "the redrive waiting for the rollout", || async {
        let flow = flows.get(FLOW).await.ok()?;
        let (status, reason, message) = condition(&flow, "Reconciling")?;
        (status == "True" && reason == "RedriveWaitsForRollout").then_some((flow, message))
    })
    .await;
    assert!(
        waiting.1.starts_with("flowplane.io/redrive=reason=UnmappedCode waits until every worker runs the new configuration"),
        "{}",
        waiting.1
    );
    assert!(
        !waiting.0.status.unwrap().operations.contains_key("redrive"),
        "not acknowledged while waiting"
    );
    // Nothing moved while the old worker could take it.
    let held = list_dead_letters(&js, &names, None).await.unwrap();
    assert_eq!(
        held.len(),
        5,
        "the dead letters stay while the rollout runs"
    );

    // The rollout: a new pod with the fixed table becomes Ready, the Deployment deletes the old
    // pod, its worker stops, and the (fake) kubelet confirms the pod is gone.
    let new_config = rendered_config(&client, &ns.name, true).await;
    let new_pod = eventually(60, "the new worker pod", || async {
        worker_pods(&client, &ns.name)
            .await
            .into_iter()
            .map(|p| p.name_any())
            .find(|name| *name != old_pod)
    })
    .await;
    let new_worker = InProcessWorker::start(new_config, &new_pod);
    support::fake_kubelet(&client, &ns.name, &format!("flowplane.io/flow={FLOW}")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually(60, "the old pod deleted by the rollout", || async {
        let pod = pods.get_opt(&old_pod).await.ok()?;
        match pod {
            Some(pod) => pod.metadata.deletion_timestamp.map(|_| ()),
            None => Some(()),
        }
    })
    .await;
    // Still held back: the old pod is terminating, its worker may hold records.
    assert_eq!(list_dead_letters(&js, &names, None).await.unwrap().len(), 5);
    old_worker.stop().await.unwrap();
    let _ = pods
        .delete(&old_pod, &DeleteParams::default().grace_period(0))
        .await;

    let flow = eventually(60, "the redrive acknowledged", || async {
        let flow = flows.get(FLOW).await.ok()?;
        let ops = &flow.status.as_ref()?.operations;
        (ops.get("redrive").map(String::as_str) == Some("reason=UnmappedCode")).then_some(flow)
    })
    .await;
    let deployment: Deployment = Api::namespaced(client.clone(), &ns.name)
        .get(&format!("{FLOW}-worker"))
        .await
        .unwrap();
    let status = deployment.status.unwrap();
    assert_eq!(
        (status.replicas, status.updated_replicas),
        (Some(1), Some(1)),
        "redriven only once the new pod alone runs"
    );
    assert_ne!(
        condition(&flow, "Reconciling").map(|c| c.1),
        Some("RedriveWaitsForRollout".to_string())
    );

    let final_progress = eventually(120, "all 300 records delivered", || async {
        let p = progress(&js, &names).await;
        let applied = sims.forecast.received(ENTITY).applied();
        (p.delivered == 300 && applied == 300).then_some(p)
    })
    .await;
    // Exactly once: read 300 = delivered 300 + 0 left dead; the 5 dead-letterings are the
    // first ones, none again.
    assert_eq!(final_progress.read, 300);
    assert_eq!(final_progress.dead_lettered, 5, "none dead-lettered again");
    assert_eq!(
        list_dead_letters(&js, &names, None).await.unwrap().len(),
        0,
        "dead-letter stream emptied"
    );
    let report = sims.forecast.received(ENTITY);
    assert_eq!(report.duplicates(), 0);
    assert!(report.keys.values().all(|k| k.applied_versions.len() == 1));
    let overflow = report
        .keys
        .values()
        .filter(|k| k.value["location"] == "DC-OVERFLOW")
        .count();
    assert_eq!(overflow, 5);
    // The table now maps every code the ERP sent; 1050 is still never sent.
    eventually(60, "no unmapped code left in status", drift_is(Vec::new())).await;
    new_worker.stop().await.unwrap();
}
