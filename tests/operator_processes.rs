//! The operator as separate `flowplane controller` processes, as a cluster runs it: one per
//! region reconciling only its region's flows, and two replicas of which only the Lease holder
//! reconciles, the other taking over when the leader dies.
//!
//! Each scenario uses its own region, so the operators of one never touch the other's flows.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use flowplane::api::IntegrationFlow;
use support::{TestNamespace, apply_yaml, client, eventually, local_env};

const REFERENCES: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: erp}
spec: {system: Erp, protocol: OData, endpoint: {url: "http://127.0.0.1:9/odata"}}
---
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: forecasting}
spec: {system: Forecasting, protocol: Rest, endpoint: {url: "http://127.0.0.1:9/api"}}
---
apiVersion: flowplane.io/v1alpha1
kind: DataContract
metadata: {name: orders}
spec:
  domain: orders
  version: 1.0.0
  owner: {team: planning}
  schema:
    primaryKey: [id]
    fields:
    - {name: id, type: String, required: true}
"#;

fn flow_yaml(name: &str, region: &str) -> String {
    format!(
        r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata:
  name: {name}
  # Handled by the reconciling operator, which says so in an Event under its own name.
  annotations: {{flowplane.io/redrive: "1"}}
spec:
  region: {region}
  source: {{bindingRef: erp, entity: Orders, syncMode: FullRefresh}}
  target: {{bindingRef: forecasting, entity: /v1/orders}}
  contract: {{name: orders}}
"#
    )
}

fn apply_references(namespace: &str) {
    let (ok, _, err) = support::kubectl(
        &["apply", "--server-side", "-n", namespace, "-f", "-"],
        Some(REFERENCES),
    );
    assert!(ok, "{err}");
}

/// A `flowplane controller` process, killed when dropped.
struct OperatorProcess {
    child: Child,
    metrics_url: String,
}

impl OperatorProcess {
    fn start(identity: &str, args: &[&str]) -> OperatorProcess {
        let env = local_env();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_flowplane"))
            .arg("controller")
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", &env.kubeconfig)
            .env("NATS_URL", &env.nats_url)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start flowplane controller");
        OperatorProcess {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// Reconciles this process ran (all kinds), from its own /metrics.
    async fn reconciles(&self) -> Option<f64> {
        let text = reqwest::get(&self.metrics_url)
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("flowplane_operator_reconciles_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the flow's status is at its generation.
async fn reconciled(flows: &Api<IntegrationFlow>, name: &str) {
    eventually(90, &format!("flow {name} reconciled"), || async {
        let flow = flows.get(name).await.ok()?;
        (flow.status.as_ref()?.observed_generation == flow.metadata.generation).then_some(())
    })
    .await;
}

/// The operator instances (POD_NAME) that published events about a flow (the redrive
/// annotation's OperationHandled, at least).
async fn reporters(client: &Client, namespace: &str, flow: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut instances: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(flow))
        .filter_map(|e| e.reporting_instance)
        .collect();
    instances.sort();
    instances.dedup();
    instances
}

#[tokio::test]
async fn each_regional_operator_reconciles_only_its_regions_flows() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "regions").await;
    apply_references(&ns.name);
    apply_yaml::<IntegrationFlow>(&client, &ns.name, &flow_yaml("north", "region-north")).await;
    apply_yaml::<IntegrationFlow>(&client, &ns.name, &flow_yaml("south", "region-south")).await;
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns.name);

    let _north = OperatorProcess::start("operator-north", &["--region", "region-north"]);
    reconciled(&flows, "north").await;
    // The north operator has long since seen the south flow too: it must have left it alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let south = flows.get("south").await.unwrap();
    assert!(
        south.status.is_none() && south.finalizers().is_empty(),
        "another region's flow was touched: {:?}",
        south.status
    );

    let _south = OperatorProcess::start("operator-south", &["--region", "region-south"]);
    reconciled(&flows, "south").await;
    assert_eq!(
        reporters(&client, &ns.name, "north").await,
        ["operator-north"]
    );
    assert_eq!(
        reporters(&client, &ns.name, "south").await,
        ["operator-south"]
    );
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_the_other_replica_takes_over() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "replicas").await;
    apply_references(&ns.name);
    let region = "region-replicas";
    let replica = |identity: &str| {
        OperatorProcess::start(
            identity,
            &[
                "--region",
                region,
                "--leader-election",
                "--lease-namespace",
                &ns.name,
                "--lease-seconds",
                "3",
            ],
        )
    };
    let mut replicas = vec![replica("replica-a"), replica("replica-b")];
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let leader = eventually(60, "a lease holder", || async {
        leases
            .get("flowplane-operator")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    let (leading, following) = if leader == "replica-a" {
        (0, 1)
    } else {
        (1, 0)
    };

    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns.name);
    apply_yaml::<IntegrationFlow>(&client, &ns.name, &flow_yaml("first", region)).await;
    reconciled(&flows, "first").await;
    assert_eq!(
        reporters(&client, &ns.name, "first").await,
        [leader.as_str()]
    );
    // A follower runs no controller at all (its only writes are attempts at the Lease).
    assert_eq!(
        replicas[following].reconciles().await,
        Some(0.0),
        "a follower must not reconcile"
    );

    // The leader dies without releasing the Lease; the follower takes over once it expires.
    let _dead = replicas.remove(leading);
    drop(_dead);
    let survivor = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    eventually(60, "the follower holds the lease", || async {
        let holder = leases
            .get("flowplane-operator")
            .await
            .ok()?
            .spec?
            .holder_identity?;
        (holder == survivor).then_some(())
    })
    .await;
    apply_yaml::<IntegrationFlow>(&client, &ns.name, &flow_yaml("second", region)).await;
    reconciled(&flows, "second").await;
    assert_eq!(
        reporters(&client, &ns.name, "second").await,
        [survivor.to_string()]
    );
}
