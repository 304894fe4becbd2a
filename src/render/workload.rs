//! The workers: configuration ConfigMap, Deployment, Service, PodDisruptionBudget,
//! NetworkPolicy and the CronJob of the scheduled full refresh.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::IntegrationFlow;
use crate::api::connector_binding::AuthType;
use crate::worker_config::{CONFIG_DIR, CONFIG_FILE, NATS_DIR, WorkerConfig};

use super::labels::{
    CONFIG_HASH_ANNOTATION, FLOW_LABEL, RESTARTED_AT_ANNOTATION, config_map_name, cron_job_name,
    flow_name, metadata, nats_secret_name, worker_selector, workers_name,
};
use super::worker_config::{ca_dir, secret_dir};
use super::{FlowInputs, RenderError};

/// Port of the worker's /metrics, /healthz and /readyz.
pub const METRICS_PORT: i32 = 9090;
/// Annotation on the worker pod template: the mounted Secrets' revisions.
pub const SECRETS_REVISION_ANNOTATION: &str = "flowplane.io/secrets-revision";
/// Annotation on the flow asking for a rolling restart of its workers (any new value).
pub const RESTART_ANNOTATION: &str = "flowplane.io/restart";
/// Non-root user of the distroless-style image.
const WORKER_UID: i64 = 65532;

/// Builds a typed object from JSON; the shapes here are ours, so a failure is a bug we report
/// instead of panicking.
pub(super) fn typed<T: DeserializeOwned>(value: Value) -> T {
    match serde_json::from_value(value) {
        Ok(v) => v,
        Err(e) => unreachable!("rendered object does not match its Kubernetes type: {e}"),
    }
}

pub fn config_map(flow: &IntegrationFlow, config: &WorkerConfig) -> Result<ConfigMap, RenderError> {
    let json = serde_json::to_string_pretty(config).map_err(|e| RenderError {
        message: e.to_string(),
    })?;
    Ok(ConfigMap {
        metadata: metadata(flow, config_map_name(flow), "worker"),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), json)])),
        ..ConfigMap::default()
    })
}

/// The bindings whose Secrets the workers mount (source, target, escalation; once each).
fn mounted_bindings<'a>(inputs: &FlowInputs<'a>) -> Vec<&'a crate::api::ConnectorBinding> {
    let mut bindings = vec![inputs.source, inputs.target];
    bindings.extend(inputs.escalation);
    bindings.dedup_by_key(|b| b.metadata.name.clone());
    bindings
}

/// The mounted bindings' Secret revisions (from their status), in the pod template so that
/// rotating a Secret in place rolls the workers that read it at start.
fn secrets_revision(inputs: &FlowInputs<'_>) -> Option<String> {
    let revisions: Vec<String> = mounted_bindings(inputs)
        .into_iter()
        .filter_map(|b| {
            let revision = b.status.as_ref()?.secret_revision.as_ref()?;
            Some(format!(
                "{}={revision}",
                b.metadata.name.as_deref().unwrap_or_default()
            ))
        })
        .collect();
    (!revisions.is_empty()).then(|| revisions.join(","))
}

/// The pod spec shared by the workers and the refresh CronJob.
fn pod_spec(inputs: &FlowInputs<'_>, args: &[&str], restart_policy: &str) -> PodSpec {
    let flow = inputs.flow;
    let mut volumes = vec![json!({"name": "config", "configMap": {"name": config_map_name(flow)}})];
    let mut mounts = vec![json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true})];
    for binding in mounted_bindings(inputs) {
        let name = binding.metadata.name.clone().unwrap_or_default();
        if let (true, Some(secret)) = (
            binding.spec.auth.type_ != AuthType::None,
            &binding.spec.auth.secret_ref,
        ) {
            let volume = format!("secret-{name}");
            volumes.push(json!({"name": volume, "secret": {"secretName": secret.name, "defaultMode": 0o440}}));
            mounts.push(json!({"name": volume, "mountPath": secret_dir(&name), "readOnly": true}));
        }
        if let Some(ca) = &binding.spec.endpoint.ca_secret_ref {
            let volume = format!("ca-{name}");
            volumes.push(json!({"name": volume, "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": ca.key}]}}));
            mounts.push(json!({"name": volume, "mountPath": ca_dir(&name), "readOnly": true}));
        }
    }
    if let Some(drops) = &flow.spec.drop_volume {
        volumes.push(json!({"name": "drops", "persistentVolumeClaim": {"claimName": drops.claim_name, "readOnly": drops.read_only}}));
        mounts.push(
            json!({"name": "drops", "mountPath": drops.mount_path, "readOnly": drops.read_only}),
        );
    }
    if inputs.settings.nats_identity {
        // The flow's own NATS user (and the server's CA), never in the ConfigMap.
        volumes.push(json!({"name": "nats", "secret": {"secretName": nats_secret_name(flow), "defaultMode": 0o440}}));
        mounts.push(json!({"name": "nats", "mountPath": NATS_DIR, "readOnly": true}));
    }
    typed(json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "restartPolicy": restart_policy,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "containers": [{
            "name": "worker",
            "image": inputs.settings.worker_image,
            "args": args,
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"memory": inputs.flow.spec.limits.memory}
            },
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "volumeMounts": mounts
        }],
        "volumes": volumes
    }))
}

/// The worker Deployment. `replicas` is left out (`None`) when an autoscaler owns it, so the
/// two never fight over the field (`scaling::fixed_replicas` decides).
pub fn deployment(inputs: &FlowInputs<'_>, config_hash: &str, replicas: Option<i32>) -> Deployment {
    let flow = inputs.flow;
    let config_path = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let mut pod = pod_spec(inputs, &["worker", "--config", &config_path], "Always");
    if let Some(container) = pod.containers.first_mut() {
        let probe =
            |path: &str| json!({"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": 10});
        container.liveness_probe = Some(typed(probe("/healthz")));
        container.readiness_probe = Some(typed(probe("/readyz")));
    }
    let mut annotations =
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string())]);
    if let Some(revision) = secrets_revision(inputs) {
        annotations.insert(SECRETS_REVISION_ANNOTATION.to_string(), revision);
    }
    if let Some(restart) = flow
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTART_ANNOTATION))
    {
        annotations.insert(RESTARTED_AT_ANNOTATION.to_string(), restart.clone());
    }
    let mut labels = super::labels::labels(flow, "worker");
    labels.extend(worker_selector(flow));
    let mut spec = json!({
        "selector": {"matchLabels": worker_selector(flow)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": pod
        }
    });
    if let Some(replicas) = replicas {
        spec["replicas"] = json!(replicas);
    }
    Deployment {
        metadata: metadata(flow, workers_name(flow), "worker"),
        spec: typed(spec),
        status: None,
    }
}

/// The workers' metrics endpoint for Prometheus (ServiceMonitor). Headless: scrapers find the
/// pods through its EndpointSlices, so a flow costs no cluster IP and no kube-proxy rules,
/// and creating thousands of them does not queue on the apiserver's IP allocator.
pub fn service(flow: &IntegrationFlow) -> Service {
    Service {
        metadata: metadata(flow, workers_name(flow), "worker"),
        spec: Some(typed(json!({
            "clusterIP": "None",
            "selector": worker_selector(flow),
            "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]
        }))),
        status: None,
    }
}

/// One worker may be evicted at a time; with a single replica a drain is still possible, and
/// so it is when no worker is ready (AlwaysAllow: an unready worker protects no data, and the
/// default would let a flow whose workers all fail block every node drain).
pub fn pod_disruption_budget(flow: &IntegrationFlow) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(flow, workers_name(flow), "worker"),
        spec: Some(typed(json!({
            "maxUnavailable": 1,
            "selector": {"matchLabels": worker_selector(flow)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow"
        }))),
        status: None,
    }
}

/// The flow's pods (workers and the full-refresh CronJob's) accept traffic only on the
/// workers' metrics port. Egress stays open: the endpoints are external systems whose
/// addresses the operator cannot know.
/// The workers' (and refresh jobs') NetworkPolicy: metrics scrapes in; out, only DNS (the
/// kube-dns pods), NATS and each binding's endpoint (and OAuth2 token URL) by port, narrowed
/// to the address where the URL names an IP. NetworkPolicy has no host names: an endpoint
/// named by DNS is allowed on its port to any address (docs/security.md).
pub fn network_policy(inputs: &FlowInputs<'_>) -> NetworkPolicy {
    let flow = inputs.flow;
    let dns = json!({
        "to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
        }],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    });
    let mut urls = vec![inputs.settings.nats_url.as_str()];
    let mut bindings = vec![inputs.source, inputs.target];
    bindings.extend(inputs.escalation);
    for binding in bindings {
        urls.push(&binding.spec.endpoint.url);
        urls.extend(binding.spec.auth.token_url.as_deref());
    }
    let mut destinations: Vec<(Option<String>, u16)> =
        urls.into_iter().filter_map(egress_destination).collect();
    destinations.sort();
    destinations.dedup();
    let mut egress = vec![dns];
    egress.extend(destinations.into_iter().map(|(cidr, port)| {
        let ports = json!([{"protocol": "TCP", "port": port}]);
        match cidr {
            Some(cidr) => json!({"to": [{"ipBlock": {"cidr": cidr}}], "ports": ports}),
            None => json!({"ports": ports}),
        }
    }));
    NetworkPolicy {
        metadata: metadata(flow, workers_name(flow), "worker"),
        spec: Some(typed(json!({
            "podSelector": {"matchLabels": {FLOW_LABEL: flow_name(flow)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": METRICS_PORT}]}],
            "egress": egress
        }))),
    }
}

/// Where a worker connects for `url`: the address as a CIDR when the URL names an IP, and the
/// port (the scheme's default when none is given). `None` for URLs that open no connection
/// (file://) or that do not parse (admission refuses those).
fn egress_destination(url: &str) -> Option<(Option<String>, u16)> {
    let url = url::Url::parse(url).ok()?;
    let port = url.port().or(match url.scheme() {
        "http" => Some(80),
        "https" => Some(443),
        "nats" | "tls" => Some(4222),
        "sftp" => Some(22),
        _ => None,
    })?;
    // nats:// and tls:// are not special schemes to the URL parser: their IP hosts come as
    // names, so the host is read as an address here.
    let host = url.host_str()?;
    let cidr = match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(std::net::IpAddr::V4(ip)) => Some(format!("{ip}/32")),
        Ok(std::net::IpAddr::V6(ip)) => Some(format!("{ip}/128")),
        Err(_) => None,
    };
    Some((cidr, port))
}

/// The scheduled full refresh, when the flow sets a cron.
pub fn cron_job(inputs: &FlowInputs<'_>, config_hash: &str) -> Option<CronJob> {
    let flow = inputs.flow;
    let schedule = flow.spec.schedule.as_ref()?;
    let cron = schedule.cron.as_ref()?;
    let config_path = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let pod = pod_spec(
        inputs,
        &["worker", "--config", &config_path, "--full-refresh"],
        "Never",
    );
    let mut spec = json!({
        "schedule": cron,
        "suspend": flow.spec.suspend,
        "concurrencyPolicy": "Forbid",
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {"spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {
                    "labels": super::labels::labels(flow, "refresh"),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash}
                },
                "spec": pod
            }
        }}
    });
    if let Some(zone) = &schedule.time_zone {
        spec["timeZone"] = json!(zone);
    }
    Some(CronJob {
        metadata: metadata(flow, cron_job_name(flow), "refresh"),
        spec: typed(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_is_by_port_and_by_address_only_where_the_url_names_one() {
        for (url, expected) in [
            ("https://erp.example.com/odata", Some((None, 443))),
            ("http://erp.example.com:8080", Some((None, 8080))),
            (
                "http://10.20.30.40:8000/api",
                Some((Some("10.20.30.40/32"), 8000)),
            ),
            (
                "https://[2001:db8::7]/api",
                Some((Some("2001:db8::7/128"), 443)),
            ),
            ("nats://nats.flowplane-system.svc", Some((None, 4222))),
            ("tls://10.0.0.9:4443", Some((Some("10.0.0.9/32"), 4443))),
            ("file:///drop/orders", None),
            ("not a url", None),
        ] {
            assert_eq!(
                egress_destination(url),
                expected.map(|(cidr, port)| (cidr.map(str::to_string), port)),
                "{url}"
            );
        }
    }
}
