//! What Flux (kstatus), Argo CD (our health checks in its own Lua runtime) and
//! `kubectl wait --for=condition=Ready` conclude from live objects the operator judged on the
//! real API server, for each scenario of docs/status.md: all three agree with the document.

mod support;

use std::path::Path;

use kube::Client;
use kube::api::Api;
use serde_json::Value;

use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use support::{TestNamespace, apply_yaml, client, eventually, operator};

const GOOD_CONTRACT: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: DataContract
metadata: {name: lines}
spec:
  domain: lines
  version: 1.0.0
  compatibility: Backward
  owner: {team: demand-planning}
  schema:
    primaryKey: [id]
    fields:
    - {name: id, type: String, required: true}
    - {name: quantity, type: Int, required: true}
"#;

/// 1.1.0 of the same contract changes a field's type: a breaking change under Backward.
const BREAKING_CONTRACT: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: DataContract
metadata: {name: lines}
spec:
  domain: lines
  version: 1.1.0
  compatibility: Backward
  owner: {team: demand-planning}
  schema:
    primaryKey: [id]
    fields:
    - {name: id, type: String, required: true}
    - {name: quantity, type: String, required: true}
"#;

const OPEN_BINDING: &str = "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\n\
    metadata: {name: open}\nspec: {system: Erp, protocol: Rest, endpoint: {url: \"http://127.0.0.1:1/erp\"}, auth: {type: None}}\n";

const SECRETLESS_BINDING: &str = "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\n\
    metadata: {name: secretless}\nspec: {system: Erp, protocol: Rest, endpoint: {url: \"http://127.0.0.1:1/erp\"}, \
    auth: {type: Bearer, secretRef: {name: no-such-secret}}}\n";

const TARGET_BINDING: &str = "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\n\
    metadata: {name: planning}\nspec: {system: Forecasting, protocol: Rest, endpoint: {url: \"http://127.0.0.1:1/planning\"}, auth: {type: None}}\n";

/// A flow whose references all exist; `extra` is appended to its spec.
fn flow(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {{name: {name}}}\n\
         spec:\n  source: {{bindingRef: open, entity: /orders, syncMode: FullRefresh}}\n  \
         target: {{bindingRef: planning, entity: /sales-history}}\n  \
         contract: {{name: lines, versions: \"^1\"}}\n  sla: {{freshness: 15m}}\n{extra}"
    )
}

const ORPHAN_FLOW: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orphan}
spec:
  source: {bindingRef: open, entity: /orders, syncMode: FullRefresh}
  target: {bindingRef: nowhere, entity: /sales-history}
  contract: {name: lines, versions: "^1"}
"#;

/// The verdict each tool reaches about one live object.
#[derive(Debug, PartialEq)]
struct Verdicts {
    kstatus: String,
    argocd: String,
    kubectl_wait_ready: bool,
}

async fn live(client: &Client, ns: &str, kind: &str, name: &str) -> Value {
    let object = match kind {
        "IntegrationFlow" => serde_json::to_value(
            Api::<IntegrationFlow>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap(),
        ),
        "DataContract" => serde_json::to_value(
            Api::<DataContract>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap(),
        ),
        _ => serde_json::to_value(
            Api::<ConnectorBinding>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap(),
        ),
    };
    object.unwrap()
}

fn condition_is(object: &Value, type_: &str, status: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == status)
}

/// The flow's worker pods become ready and report a delivery, as running workers would.
async fn workers_delivered(client: &Client, ns: &str, flow: &str) {
    support::fake_kubelet(client, ns, &format!("flowplane.io/flow={flow}")).await;
    let nats = support::nats_admin(&support::local_env().nats_url).await;
    let js = async_nats::jetstream::new(nats);
    let names = flowplane::queue::QueueNames::for_flow(ns, flow);
    let bucket = flowplane::queue::jetstream::bucket(&js, &names)
        .await
        .unwrap();
    let now = jiff::Timestamp::now().as_second();
    flowplane::queue::jetstream::update_progress(&bucket, |p| {
        p.last_success_unix = Some(now);
        p.delivered += 1;
    })
    .await
    .unwrap();
}

fn judged(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

async fn verdicts(ns: &str, kind: &str, object: &Value) -> Verdicts {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/argocd/resource_customizations/flowplane.io")
        .join(kind)
        .join("health.lua");
    let name = object["metadata"]["name"].as_str().unwrap();
    let (ready, _, _) = support::kubectl(
        &[
            "wait",
            "-n",
            ns,
            &format!("{}.flowplane.io/{name}", kind.to_lowercase()),
            "--for=condition=Ready",
            "--timeout=0s", // check once: the object is judged already
        ],
        None,
    );
    Verdicts {
        kstatus: support::kstatus(std::slice::from_ref(object)).remove(0).0,
        argocd: support::argocd_health(&script, object, false).0,
        kubectl_wait_ready: ready,
    }
}

fn expect(kstatus: &str, argocd: &str, ready: bool) -> Verdicts {
    Verdicts {
        kstatus: kstatus.into(),
        argocd: argocd.into(),
        kubectl_wait_ready: ready,
    }
}

#[tokio::test]
async fn kstatus_argo_cd_and_kubectl_wait_agree_with_the_status_contract() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "verdicts").await;
    let _: DataContract = apply_yaml(&client, &ns.name, GOOD_CONTRACT).await;
    let _: ConnectorBinding = apply_yaml(&client, &ns.name, OPEN_BINDING).await;
    let _: ConnectorBinding = apply_yaml(&client, &ns.name, SECRETLESS_BINDING).await;
    let _: IntegrationFlow = apply_yaml(&client, &ns.name, ORPHAN_FLOW).await;
    let _: ConnectorBinding = apply_yaml(&client, &ns.name, TARGET_BINDING).await;
    for (name, extra) in [
        ("healthy", ""),
        ("rolling", ""),
        ("paused", "  suspend: true\n"),
    ] {
        let _: IntegrationFlow = apply_yaml(&client, &ns.name, &flow(name, extra)).await;
    }

    let mut failures = Vec::new();
    let mut check = |what: &str, got: Verdicts, want: Verdicts| {
        if got != want {
            failures.push(format!("{what}: want {want:?}, got {got:?}"));
        }
    };
    // Each scenario once the operator has judged the object's current generation (and, where
    // given, once it shows the condition the scenario is about).
    let settled =
        |kind: &'static str, name: &'static str, shows: Option<(&'static str, &'static str)>| {
            let (client, ns) = (client.clone(), ns.name.clone());
            async move {
                eventually(
                    60,
                    &format!("{kind} {name} judged, showing {shows:?}"),
                    || async {
                        let object = live(&client, &ns, kind, name).await;
                        let shows = shows
                            .is_none_or(|(type_, status)| condition_is(&object, type_, status));
                        (judged(&object) && shows).then_some(object)
                    },
                )
                .await
            }
        };

    let contract = settled("DataContract", "lines", None).await;
    check(
        "valid contract",
        verdicts(&ns.name, "DataContract", &contract).await,
        expect("Current", "Healthy", true),
    );
    let binding = settled("ConnectorBinding", "open", None).await;
    check(
        "binding without credentials or health check",
        verdicts(&ns.name, "ConnectorBinding", &binding).await,
        expect("Current", "Healthy", true),
    );
    let binding = settled("ConnectorBinding", "secretless", None).await;
    check(
        "binding whose Secret does not exist",
        verdicts(&ns.name, "ConnectorBinding", &binding).await,
        expect("Failed", "Degraded", false),
    );
    let flow = settled("IntegrationFlow", "orphan", None).await;
    check(
        "flow naming a binding that does not exist",
        verdicts(&ns.name, "IntegrationFlow", &flow).await,
        expect("Failed", "Degraded", false),
    );

    // Deployed, and no worker available yet (no node runs them here): not done.
    let rolling = settled(
        "IntegrationFlow",
        "rolling",
        Some(("WorkersAvailable", "False")),
    )
    .await;
    check(
        "flow whose workers are not available yet",
        verdicts(&ns.name, "IntegrationFlow", &rolling).await,
        expect("InProgress", "Progressing", false),
    );
    let paused = settled("IntegrationFlow", "paused", Some(("Ready", "False"))).await;
    check(
        "suspended flow (kstatus has no suspended state: InProgress; see docs/status.md)",
        verdicts(&ns.name, "IntegrationFlow", &paused).await,
        expect("InProgress", "Suspended", false),
    );
    // Healthy: its workers ran (pods marked ready by the test, as a node would) and delivered.
    settled("IntegrationFlow", "healthy", Some(("QueueReady", "True"))).await;
    workers_delivered(&client, &ns.name, "healthy").await;
    let healthy = settled("IntegrationFlow", "healthy", Some(("Ready", "True"))).await;
    check(
        "flow with workers available and fresh data",
        verdicts(&ns.name, "IntegrationFlow", &healthy).await,
        expect("Current", "Healthy", true),
    );

    let _: DataContract = apply_yaml(&client, &ns.name, BREAKING_CONTRACT).await;
    let contract = settled("DataContract", "lines", None).await;
    check(
        "breaking contract version",
        verdicts(&ns.name, "DataContract", &contract).await,
        expect("Failed", "Degraded", false),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
