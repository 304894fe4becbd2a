//! The DataContract controller on a real control plane, with the whole operator in-process:
//! versions are published into status and the history ConfigMap, compatible versions roll the
//! flows in range, breaking ones and edits of published versions are refused while flows keep
//! their last good version, and a new major starts a new line that flows pinned to it follow.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::Api;

use flowplane::api::data_contract::DataContractStatus;
use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use support::{TestNamespace, apply_yaml, client, eventually, operator};

const BINDINGS: [&str; 2] = [
    "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {name: erp}\n\
     spec: {system: Erp, protocol: Rest, endpoint: {url: \"http://127.0.0.1:1/erp\"}, auth: {type: None}}\n",
    "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {name: planning}\n\
     spec: {system: Forecasting, protocol: Rest, endpoint: {url: \"http://127.0.0.1:1/planning\"}, auth: {type: None}}\n",
];

/// The order-lines contract at `version` with `extra` field lines appended.
fn contract(version: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: flowplane.io/v1alpha1
kind: DataContract
metadata: {{name: order-lines}}
spec:
  domain: order-lines
  version: {version}
  compatibility: Backward
  owner: {{team: demand-planning}}
  schema:
    primaryKey: [orderId, line]
    fields:
    - {{name: orderId, type: String, required: true}}
    - {{name: line, type: Int, required: true}}
    - {{name: quantity, type: Decimal, precision: 15, scale: 3, nullable: true}}
{extra}"#
    )
}

const NOTE: &str = "    - {name: note, type: String, nullable: true}\n";
const PRICE: &str = "    - {name: price, type: Decimal, precision: 12, scale: 2, required: true}\n";

fn flow_yaml(name: &str, versions: &str) -> String {
    format!(
        r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {{name: {name}}}
spec:
  source: {{bindingRef: erp, entity: /orders, syncMode: FullRefresh}}
  target: {{bindingRef: planning, entity: /sales-history}}
  contract: {{name: order-lines, versions: "{versions}"}}
  scaling: {{minReplicas: 1, maxReplicas: 2, lagPerReplica: 500}}
  deletionPolicy: Delete
"#
    )
}

fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The contract's status once the controller has checked its current generation.
async fn checked(client: &Client, ns: &str, what: &str) -> (DataContract, DataContractStatus) {
    let api: Api<DataContract> = Api::namespaced(client.clone(), ns);
    eventually(60, what, || async {
        let dc = api.get("order-lines").await.ok()?;
        let status = dc.status.clone()?;
        (status.observed_generation == dc.metadata.generation
            && status
                .conditions
                .iter()
                .all(|c| c.observed_generation == dc.metadata.generation)
            && !status.conditions.is_empty())
        .then_some((dc, status))
    })
    .await
}

/// A fresh namespace (dropped with the returned guard) with order-lines 1.0.0 published.
async fn with_1_0_0_published(
    client: &Client,
    prefix: &str,
) -> (TestNamespace, DataContractStatus) {
    operator();
    let ns = TestNamespace::new(client, prefix).await;
    let _: DataContract = apply_yaml(client, &ns.name, &contract("1.0.0", "")).await;
    let (_, published) = checked(client, &ns.name, "1.0.0 published").await;
    assert_eq!(versions(&published), ["1.0.0"]);
    (ns, published)
}

fn versions(status: &DataContractStatus) -> Vec<&str> {
    status.history.iter().map(|h| h.version.as_str()).collect()
}

/// The contract version in a flow's worker ConfigMap.
async fn worker_contract_version(client: &Client, ns: &str, flow: &str) -> Option<String> {
    Some(
        support::rendered_worker_config(client, ns, flow)
            .await?
            .contract
            .version,
    )
}

/// Waits until the flow runs `version` (status and worker ConfigMap) and returns the flow.
async fn flow_runs(client: &Client, ns: &str, name: &str, version: &str) -> IntegrationFlow {
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), ns);
    eventually(90, &format!("flow {name} running {version}"), || async {
        let flow = flows.get(name).await.ok()?;
        let running = flow.status.as_ref()?.contract_version.as_deref()? == version;
        let configured =
            worker_contract_version(client, ns, name).await.as_deref() == Some(version);
        (running && configured).then_some(flow)
    })
    .await
}

async fn config_hash(client: &Client, ns: &str, flow: &str) -> String {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&format!("{flow}-worker"))
        .await
        .unwrap();
    deployment
        .spec
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()["flowplane.io/config-hash"]
        .clone()
}

async fn history_keys(client: &Client, ns: &str) -> Vec<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("order-lines-contract-history")
        .await
        .unwrap();
    cm.data.unwrap_or_default().into_keys().collect()
}

#[tokio::test]
async fn contract_versions_gate_flow_rollouts() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "contract-gate").await;
    let ns = ns.name.as_str();
    for binding in BINDINGS {
        let _: ConnectorBinding = apply_yaml(&client, ns, binding).await;
    }

    // 1.0.0: the first version of line 1 is published.
    let _: DataContract = apply_yaml(&client, ns, &contract("1.0.0", "")).await;
    let (dc, status) = checked(&client, ns, "1.0.0 checked").await;
    assert_eq!(
        condition(&status.conditions, "Compatible").unwrap().0,
        "True",
        "{status:?}"
    );
    assert_eq!(condition(&status.conditions, "Ready").unwrap().0, "True");
    assert_eq!(versions(&status), ["1.0.0"]);
    assert_eq!(status.latest_good_version.as_deref(), Some("1.0.0"));
    let history: ConfigMap = Api::namespaced(client.clone(), ns)
        .get("order-lines-contract-history")
        .await
        .unwrap();
    let labels = history.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "flowplane");
    let owner = &history.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(owner.uid.as_str())),
        ("DataContract", dc.metadata.uid.as_deref())
    );
    assert_eq!(history_keys(&client, ns).await, ["1.0.0.json"]);

    let _: IntegrationFlow = apply_yaml(&client, ns, &flow_yaml("orders", "^1")).await;
    flow_runs(&client, ns, "orders", "1.0.0").await;

    // 1.1.0 adds an optional field: Backward compatible, the flow rolls to it.
    let _: DataContract = apply_yaml(&client, ns, &contract("1.1.0", NOTE)).await;
    let (_, status) = checked(&client, ns, "1.1.0 checked").await;
    assert_eq!(
        condition(&status.conditions, "Compatible").unwrap().0,
        "True",
        "{status:?}"
    );
    assert_eq!(versions(&status), ["1.0.0", "1.1.0"], "{status:#?}");
    assert_eq!(status.latest_good_version.as_deref(), Some("1.1.0"));
    let first_seen = status.history[0].first_seen.clone();
    flow_runs(&client, ns, "orders", "1.1.0").await;
    let hash = config_hash(&client, ns, "orders").await;

    // 1.2.0 adds a required field: breaking. The contract says so, the flow stays on 1.1.0.
    let _: DataContract =
        apply_yaml(&client, ns, &contract("1.2.0", &format!("{NOTE}{PRICE}"))).await;
    let (_, status) = checked(&client, ns, "1.2.0 checked").await;
    let (compatible, reason, _) = condition(&status.conditions, "Compatible").unwrap();
    assert_eq!(
        (compatible.as_str(), reason.as_str()),
        ("False", "BreakingChange")
    );
    assert!(
        status.breaks.iter().any(|b| b.starts_with("field price: ")),
        "{:?}",
        status.breaks
    );
    assert_eq!(versions(&status), ["1.0.0", "1.1.0"]);
    assert_eq!(
        status.history[0].first_seen, first_seen,
        "firstSeen is set once"
    );
    assert_eq!(status.latest_good_version.as_deref(), Some("1.1.0"));
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), ns);
    let message = eventually(60, "the flow to report the refused contract", || async {
        let flow = flows.get("orders").await.ok()?;
        let (status, reason, message) = condition(&flow.status?.conditions, "ContractCompatible")?;
        (status == "False" && reason == "ContractIncompatible").then_some(message)
    })
    .await;
    assert!(message.contains("field price"), "{message}");
    assert!(message.contains("running 1.1.0"), "{message}");
    let flow = flow_runs(&client, ns, "orders", "1.1.0").await;
    assert_eq!(
        flow.status.unwrap().contract_version.as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        config_hash(&client, ns, "orders").await,
        hash,
        "the workers must not roll"
    );
    assert_eq!(
        history_keys(&client, ns).await,
        ["1.0.0.json", "1.1.0.json"]
    );

    // 2.0.0 makes the breaking change a new major: a new line, compatible by definition.
    let _: DataContract =
        apply_yaml(&client, ns, &contract("2.0.0", &format!("{NOTE}{PRICE}"))).await;
    let (_, status) = checked(&client, ns, "2.0.0 checked").await;
    assert_eq!(
        condition(&status.conditions, "Compatible").unwrap().0,
        "True",
        "{status:?}"
    );
    assert!(status.breaks.is_empty(), "{:?}", status.breaks);
    assert_eq!(versions(&status), ["1.0.0", "1.1.0", "2.0.0"]);
    assert_eq!(status.latest_good_version.as_deref(), Some("2.0.0"));
    // The flow on ^1 keeps 1.1.0 and says why; a flow pinned to ^2 runs 2.0.0.
    let message = eventually(60, "the ^1 flow to report 2.0.0 out of range", || async {
        let flow = flows.get("orders").await.ok()?;
        let (_, reason, message) = condition(&flow.status?.conditions, "ContractCompatible")?;
        (reason == "VersionOutOfRange").then_some(message)
    })
    .await;
    assert!(message.contains("running 1.1.0"), "{message}");
    assert_eq!(config_hash(&client, ns, "orders").await, hash);
    let _: IntegrationFlow = apply_yaml(&client, ns, &flow_yaml("orders-v2", "^2")).await;
    flow_runs(&client, ns, "orders-v2", "2.0.0").await;
    flow_runs(&client, ns, "orders", "1.1.0").await;
}

#[tokio::test]
async fn editing_a_published_version_is_refused() {
    let client = client().await;
    let (ns, published) = with_1_0_0_published(&client, "contract-edit").await;
    let ns = ns.name.as_str();
    let stored = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("order-lines-contract-history")
        .await
        .unwrap()
        .data
        .unwrap();

    // Same version, another schema.
    let _: DataContract = apply_yaml(&client, ns, &contract("1.0.0", NOTE)).await;
    let (_, status) = checked(&client, ns, "the edit checked").await;
    let (compatible, reason, message) = condition(&status.conditions, "Compatible").unwrap();
    assert_eq!(
        (compatible.as_str(), reason.as_str()),
        ("False", "PublishedVersionChanged"),
        "{message}"
    );
    assert!(message.contains("immutable"), "{message}");
    assert_eq!(status.breaks, [message]);
    assert_eq!(
        status.history, published.history,
        "the history is untouched"
    );
    assert_eq!(status.latest_good_version.as_deref(), Some("1.0.0"));
    let now_stored = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("order-lines-contract-history")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(now_stored, stored, "the published schema is untouched");

    // The refusal is a Warning event on the contract.
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    eventually(30, "a PublishedVersionChanged Warning event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("PublishedVersionChanged")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("order-lines")
            })
            .then_some(())
    })
    .await;

    // Putting the published schema back is accepted again.
    let _: DataContract = apply_yaml(&client, ns, &contract("1.0.0", "")).await;
    let (_, status) = checked(&client, ns, "the revert checked").await;
    assert_eq!(
        condition(&status.conditions, "Compatible").unwrap().0,
        "True"
    );
    assert!(status.breaks.is_empty());
    assert_eq!(status.history, published.history);
}

#[tokio::test]
async fn an_invalid_schema_is_not_ready_with_a_precise_message() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "contract-invalid").await;
    let ns = ns.name.as_str();
    // A default below its own field's minimum: admission checks a default's spelling against
    // the type, not its bounds; the controller does.
    let bad = "    - {name: unit, type: Int, minimum: 1, default: \"0\"}\n";
    let _: DataContract = apply_yaml(&client, ns, &contract("1.0.0", bad)).await;
    let (_, status) = checked(&client, ns, "the invalid contract checked").await;
    let (ready, reason, message) = condition(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "InvalidSchema")
    );
    assert!(message.contains("schema.fields[unit].default"), "{message}");
    assert_eq!(
        condition(&status.conditions, "Compatible").unwrap().0,
        "Unknown"
    );
    assert!(status.history.is_empty());
}

#[tokio::test]
async fn a_deleted_history_config_map_is_made_again_at_once() {
    let client = client().await;
    let (ns, _) = with_1_0_0_published(&client, "contract-history").await;
    let ns = ns.name.as_str();
    let keys = history_keys(&client, ns).await;
    assert!(!keys.is_empty());

    // The controller watches its history ConfigMaps (and only those): a deletion is acted on
    // within seconds, not at the ten-minute resync.
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    config_maps
        .delete("order-lines-contract-history", &Default::default())
        .await
        .unwrap();
    let made_again = eventually(30, "the history ConfigMap made again", || async {
        let cm = config_maps
            .get_opt("order-lines-contract-history")
            .await
            .ok()??;
        cm.metadata.deletion_timestamp.is_none().then_some(cm)
    })
    .await;
    let mut again: Vec<String> = made_again.data.unwrap_or_default().into_keys().collect();
    again.sort();
    let mut before = keys;
    before.sort();
    assert_eq!(again, before);
}
