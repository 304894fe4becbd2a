//! A Pod built from the worker pod template is admitted (server-side dry run) in a namespace
//! that enforces Pod Security "restricted"; a weakened one is refused there, so the test can fail.

mod support;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};

use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use flowplane::contract::canonical::schema_hash;
use flowplane::render::{self, FlowInputs, RenderSettings, ResolvedContract};
use support::{TestNamespace, client, eventually};

fn load<T: serde::de::DeserializeOwned>(path: &str) -> Vec<T> {
    let text = std::fs::read_to_string(support::repo_root().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| T::deserialize(doc).ok())
        .collect()
}

fn worker_pod(namespace: &str) -> Pod {
    let flow: IntegrationFlow =
        load("examples/base/flows/order-history-to-forecasting.yaml").remove(0);
    let contracts: Vec<DataContract> = load("examples/base/contracts/sales-order-lines.yaml");
    let bindings: Vec<ConnectorBinding> =
        std::fs::read_dir(support::repo_root().join("examples/base/bindings"))
            .unwrap()
            .flat_map(|e| {
                load::<ConnectorBinding>(
                    e.unwrap()
                        .path()
                        .strip_prefix(support::repo_root())
                        .unwrap()
                        .to_str()
                        .unwrap(),
                )
            })
            .collect();
    let find = |name: &str| {
        bindings
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(name))
            .unwrap()
    };
    let contract = &contracts[0];
    let resolved = ResolvedContract {
        name: contract.metadata.name.clone().unwrap(),
        version: contract.spec.version.clone(),
        schema_hash: schema_hash(&contract.spec.schema),
        schema: contract.spec.schema.clone(),
        quality: contract.spec.quality.clone(),
        sla: contract.spec.sla.clone(),
    };
    let settings = RenderSettings {
        worker_image: "flowplane:test".into(),
        nats_url: "nats://127.0.0.1:4222".into(),
        nats_identity: true,
        nats_tls: true,
        nats_monitoring_endpoint: "127.0.0.1:8222".into(),
        queue_defaults: Default::default(),
        nats_account: "$G".into(),
        keda: false,
        external_metrics: false,
        prometheus_operator: false,
    };
    let code_maps = flow
        .spec
        .mapping
        .iter()
        .flat_map(|m| &m.code_maps)
        .map(|c| (c.name.clone(), Default::default()))
        .collect();
    let children = render::children(&FlowInputs {
        flow: &flow,
        contract: &resolved,
        source: find(&flow.spec.source.binding_ref),
        target: find(&flow.spec.target.binding_ref),
        escalation: None,
        code_maps,
        settings: &settings,
    })
    .unwrap();
    let template = children.deployment.spec.template;
    let mut pod = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        status: None,
    };
    pod.metadata.name = Some("worker-dry-run".into());
    pod.metadata.namespace = Some(namespace.into());
    pod
}

#[tokio::test]
async fn worker_pods_pass_pod_security_restricted() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "psa").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = serde_json::json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    // The ServiceAccount admission plugin needs the namespace's default ServiceAccount.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    eventually(60, "default ServiceAccount", || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let pod = worker_pod(&ns.name);
    if let Err(e) = pods.create(&dry_run, &pod).await {
        panic!("worker pod refused under restricted: {e}");
    }

    let mut weakened = pod.clone();
    let container = &mut weakened.spec.as_mut().unwrap().containers[0];
    container
        .security_context
        .as_mut()
        .unwrap()
        .allow_privilege_escalation = Some(true);
    let refused = pods
        .create(&dry_run, &weakened)
        .await
        .expect_err("a weakened pod must be refused");
    assert!(refused.to_string().contains("restricted"), "{refused}");
}
