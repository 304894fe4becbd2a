//! Names, labels and owner references shared by every child of a flow.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::api::IntegrationFlow;

pub const FLOW_LABEL: &str = "flowplane.io/flow";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "flowplane";
/// Pod-template annotation whose change rolls the workers.
pub const CONFIG_HASH_ANNOTATION: &str = "flowplane.io/config-hash";
/// Pod-template annotation carrying the last handled `flowplane.io/restart` value.
pub const RESTARTED_AT_ANNOTATION: &str = "flowplane.io/restarted-at";

pub fn flow_name(flow: &IntegrationFlow) -> String {
    flow.metadata.name.clone().unwrap_or_default()
}

pub fn namespace(flow: &IntegrationFlow) -> String {
    flow.metadata.namespace.clone().unwrap_or_default()
}

/// Name of the worker Deployment, Service, PDB, NetworkPolicy and autoscaler.
pub fn workers_name(flow: &IntegrationFlow) -> String {
    format!("{}-worker", flow_name(flow))
}
pub fn config_map_name(flow: &IntegrationFlow) -> String {
    format!("{}-worker-config", flow_name(flow))
}
/// The flow's NATS credentials Secret (user creds and the server's CA), issued by the operator.
pub fn nats_secret_name(flow: &IntegrationFlow) -> String {
    format!("{}-nats", flow_name(flow))
}
pub fn cron_job_name(flow: &IntegrationFlow) -> String {
    format!("{}-refresh", flow_name(flow))
}
pub fn rules_name(flow: &IntegrationFlow) -> String {
    format!("{}-alerts", flow_name(flow))
}

/// Labels every child carries; the `managed-by` + flow labels are what pruning selects on.
pub fn labels(flow: &IntegrationFlow, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "flowplane-worker".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), flow_name(flow)),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (COMPONENT_LABEL.to_string(), component.to_string()),
        (FLOW_LABEL.to_string(), flow_name(flow)),
    ])
}

/// Labels selecting a flow's worker pods.
pub fn worker_selector(flow: &IntegrationFlow) -> BTreeMap<String, String> {
    BTreeMap::from([
        (FLOW_LABEL.to_string(), flow_name(flow)),
        (COMPONENT_LABEL.to_string(), "worker".to_string()),
    ])
}

/// The selector as the scale subresource reports it.
pub fn worker_selector_string(flow: &IntegrationFlow) -> String {
    worker_selector(flow)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of a child: name, namespace, labels and the flow as controlling owner. A flow read
/// from the API has a uid; a flow read from a file (`flowplane render`) has none, and its
/// children get no owner reference, since the API server refuses one without a uid: so the
/// preview can be applied as it is (objects applied that way are not deleted with the flow).
pub fn metadata(flow: &IntegrationFlow, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(flow)),
        labels: Some(labels(flow, component)),
        owner_references: flow.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// Hash of the worker configuration; in the pod template so a change rolls the workers.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    format!("{:x}", hasher.finalize())[..16].to_string()
}
