//! `flowplane render`: the objects the operator would apply, offline, for GitOps previews.

mod support;

use std::path::PathBuf;
use std::process::Command;

fn base_files() -> Vec<PathBuf> {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/base");
    let mut files = Vec::new();
    for dir in ["bindings", "contracts", "codemaps", "flows"] {
        for entry in std::fs::read_dir(base.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files
}

fn render(files: &[PathBuf], extra: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowplane"));
    cmd.arg("render").args(extra);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(yaml: &str, kind: &str) -> usize {
    yaml.lines()
        .filter(|l| *l == format!("kind: {kind}"))
        .count()
}

#[test]
fn renders_every_child_of_every_example_flow() {
    let (ok, out, err) = render(&base_files(), &["-n", "demo"]);
    assert!(ok, "{err}");
    assert_eq!(count(&out, "Deployment"), 6);
    // Without KEDA or a metrics adapter no autoscaler could read the lag: none, and every
    // worker Deployment has a fixed count.
    assert_eq!(count(&out, "HorizontalPodAutoscaler"), 0);
    assert_eq!(count(&out, "ScaledObject"), 0);
    assert_eq!(out.matches("\n  replicas: ").count(), 6);
    assert!(count(&out, "CronJob") >= 1);
    assert!(out.contains("flowplane.io/config-hash"));

    let (ok, out, err) = render(&base_files(), &["--external-metrics"]);
    assert!(ok, "{err}");
    assert_eq!(count(&out, "HorizontalPodAutoscaler"), 6);
    assert_eq!(count(&out, "ScaledObject"), 0);
    assert_eq!(out.matches("\n  replicas: ").count(), 0);

    let (ok, out, err) = render(&base_files(), &["--keda", "--prometheus-operator"]);
    assert!(ok, "{err}");
    assert_eq!(count(&out, "ScaledObject"), 6);
    assert_eq!(count(&out, "HorizontalPodAutoscaler"), 0);
    assert_eq!(count(&out, "PrometheusRule"), 6);
    assert_eq!(count(&out, "ServiceMonitor"), 6);
}

#[test]
fn refuses_a_flow_whose_references_are_missing_or_invalid() {
    let flows: Vec<PathBuf> = base_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/flows/"))
        .collect();
    let (ok, _, err) = render(&flows, &[]);
    assert!(!ok);
    assert!(
        err.contains("DataContract") && err.contains("is not among the given manifests"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("flowplane-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad-flow.yaml");
    std::fs::write(
        &bad,
        "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {name: bad}\nspec:\n  source: {bindingRef: a, entity: x, syncMode: Incremental}\n  target: {bindingRef: b, entity: y}\n  contract: {name: c}\n",
    )
    .unwrap();
    let (ok, _, err) = render(&[bad], &[]);
    assert!(!ok);
    assert!(
        err.contains("cursorField"),
        "the CEL rule's message, as the apiserver gives it: {err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_preview_applies_as_it_is_on_a_real_api_server() {
    // Children of a flow read from a file carry no owner reference (the API server refuses one
    // without a uid), so `flowplane render | kubectl apply` works.
    let namespace = format!("render-apply-{}", std::process::id());
    let (ok, _, err) = support::kubectl(&["create", "namespace", &namespace], None);
    assert!(ok, "{err}");
    let (ok, out, err) = render(&base_files(), &["-n", &namespace]);
    assert!(ok, "{err}");
    assert!(!out.contains("ownerReferences"), "{out}");
    let (ok, applied, err) = support::kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&out),
    );
    let _ = support::kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
    assert!(ok, "kubectl apply refused the rendered children: {err}");
    // Every rendered object was accepted (the ConfigMap, Deployment, ... of all five flows).
    assert_eq!(
        applied.lines().count(),
        out.lines().filter(|l| l.starts_with("kind: ")).count(),
        "{applied}"
    );
}

#[test]
fn every_pod_of_a_flow_is_inside_its_network_policy_and_drains_are_never_blocked() {
    let (ok, out, err) = render(&base_files(), &[]);
    assert!(ok, "{err}");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let of_kind = |kind: &str| -> Vec<&serde_yaml::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let selects = |policy: &serde_yaml::Value, labels: &serde_yaml::Value| {
        policy["spec"]["podSelector"]["matchLabels"]
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| labels[k] == *v)
    };
    let policies = of_kind("NetworkPolicy");
    let cron_jobs = of_kind("CronJob");
    assert!(!cron_jobs.is_empty());
    for cron_job in cron_jobs {
        let labels = &cron_job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"];
        assert!(
            policies.iter().any(|p| selects(p, labels)),
            "no NetworkPolicy selects the pods of {:?}",
            cron_job["metadata"]["name"]
        );
    }
    for deployment in of_kind("Deployment") {
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert!(policies.iter().any(|p| selects(p, labels)));
    }
    let budgets = of_kind("PodDisruptionBudget");
    assert_eq!(budgets.len(), 6);
    for budget in budgets {
        assert_eq!(budget["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    }
}

/// The worker.json of each flow in a render of examples/base, by flow name.
fn worker_configs() -> std::collections::BTreeMap<String, serde_json::Value> {
    let (ok, out, err) = render(&base_files(), &["-n", "demo"]);
    assert!(ok, "{err}");
    let mut configs = std::collections::BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&out) {
        let doc = serde_yaml::Value::deserialize(doc).unwrap();
        if let Some(json) = doc["data"]["worker.json"].as_str() {
            let config: serde_json::Value = serde_json::from_str(json).unwrap();
            configs.insert(config["flow"].as_str().unwrap().to_string(), config);
        }
    }
    assert_eq!(configs.len(), 6);
    configs
}

use serde::Deserialize;

#[test]
fn rest_settings_come_from_the_flow_else_the_binding() {
    let configs = worker_configs();
    // The forecasting binding's rest.write and OAuth2 settings.
    let orders = &configs["order-history-to-forecasting"];
    assert_eq!(
        orders["target"]["rest"],
        serde_json::json!({"method": "POST", "body": "Object", "recordsKey": "records",
            "idempotencyKeyHeader": "Idempotency-Key"})
    );
    assert_eq!(orders["target"]["entity"], "/v2/ingest/sales-history");
    let endpoint = &orders["target"]["endpoint"];
    assert_eq!(endpoint["clientAuthentication"], "ClientSecretBasic");
    assert_eq!(endpoint["audience"], "https://api.forecast.example.io");
    // An OData source has no REST settings.
    assert!(orders["source"].get("rest").is_none());
    // The flow's own settings replace the bindings' as a whole.
    let forecasts = &configs["forecasts-to-supplier-portal"];
    assert_eq!(forecasts["source"]["rest"]["pagination"], "Page");
    assert_eq!(forecasts["source"]["rest"]["pageSize"], 5000);
    assert!(forecasts["source"]["rest"].get("nextLink").is_none());
    assert_eq!(forecasts["target"]["rest"]["body"], "Ndjson");
    assert_eq!(forecasts["target"]["rest"]["method"], "POST");
    // The binding's read settings; the escalation target keeps its own binding's writes.
    let deltas = &configs["forecast-deltas-to-erp-replenishment"];
    assert_eq!(deltas["source"]["rest"]["pagination"], "NextLink");
    assert_eq!(deltas["source"]["rest"]["nextLink"], "/links/next");
    assert!(
        deltas["target"].get("rest").is_none(),
        "the ERP target is OData"
    );
    assert_eq!(
        deltas["approval"]["escalateTo"]["rest"],
        serde_json::json!({"method": "PUT", "body": "JsonArray",
            "idempotencyKeyHeader": "Idempotency-Key"})
    );
}

/// `spec.limits.memory` is the worker containers' memory limit (default 256Mi), and the
/// limits reach the worker configuration.
#[test]
fn the_flow_limits_set_the_worker_memory_limit_and_reach_worker_json() {
    let (ok, out, err) = render(&base_files(), &["-n", "demo"]);
    assert!(ok, "{err}");
    assert!(out.contains("memory: 256Mi"), "the default limit");
    let dir = std::env::temp_dir().join(format!("fp-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<PathBuf> = base_files()
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("/flows/"))
        .collect();
    let flow = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/base/flows/order-history-to-forecasting.yaml"),
    )
    .unwrap();
    let flow = flow.replacen(
        "spec:\n",
        "spec:\n  limits:\n    memory: 1Gi\n    maxRecordBytes: 4096\n",
        1,
    );
    let path = dir.join("flow.yaml");
    std::fs::write(&path, flow).unwrap();
    files.push(path);
    let (ok, out, err) = render(&files, &["-n", "demo"]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok, "{err}");
    assert!(out.contains("memory: 1Gi"), "{out}");
    assert!(!out.contains("memory: 256Mi"));
    let config = out
        .lines()
        .find(|l| l.contains("maxRecordBytes"))
        .expect("worker.json carries the limits");
    assert!(config.contains("4096"), "{config}");
}

/// Worker egress is denied by default: each flow's NetworkPolicy allows out only DNS (the
/// kube-dns pods), NATS and each of its bindings' endpoints and token URLs, by port, and by
/// address where the URL names an IP.
#[test]
fn worker_egress_allows_only_dns_nats_and_the_flows_endpoints() {
    // The ERP at an IP address, NATS too; the forecasting platform (and its token URL) by name.
    let dir = std::env::temp_dir().join(format!("flowplane-egress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = base_files()
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap().replace(
                "https://erp.example.com/sap/opu/odata4/sap",
                "https://10.20.30.40:8443/sap/opu/odata4/sap",
            );
            let copy = dir.join(file.file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            copy
        })
        .collect();
    let (ok, out, err) = render(&files, &["--nats-url", "nats://10.96.0.42:4222"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "{err}");
    let policy = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .find(|d| {
            d["kind"] == "NetworkPolicy"
                && d["metadata"]["name"] == "order-history-to-forecasting-worker"
        })
        .unwrap();
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(
        policy["spec"]["egress"],
        serde_json::json!([
            {
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
                }],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
            },
            // The forecasting platform and its token URL, by name: port only.
            {"ports": [{"protocol": "TCP", "port": 443}]},
            {"to": [{"ipBlock": {"cidr": "10.20.30.40/32"}}], "ports": [{"protocol": "TCP", "port": 8443}]},
            {"to": [{"ipBlock": {"cidr": "10.96.0.42/32"}}], "ports": [{"protocol": "TCP", "port": 4222}]}
        ])
    );
}

/// A Files binding on a local directory: the flow's `dropVolume` is mounted into the worker
/// pods, and a directory outside it is refused with the reason (the workers would not see it).
#[test]
fn a_file_drop_directory_is_mounted_from_the_flows_drop_volume() {
    let dir = std::env::temp_dir().join(format!("render-drops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/base");
    let binding = dir.join("binding.yaml");
    let flow_with = |mount: &str| {
        let text = std::fs::read_to_string(base.join("flows/order-history-to-planning-drops.yaml"))
            .unwrap()
            .replace(
                "  schedule:\n",
                &format!("  dropVolume:\n    claimName: planning-drops\n    mountPath: {mount}\n  schedule:\n"),
            );
        let path = dir.join(format!("flow-{}.yaml", mount.replace('/', "_")));
        std::fs::write(&path, text).unwrap();
        path
    };
    std::fs::write(
        &binding,
        "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {name: planning-drops}\n\
         spec: {system: Forecasting, protocol: Files, endpoint: {url: 'file:///drops/inbound'}}\n",
    )
    .unwrap();
    let mut files: Vec<PathBuf> = ["bindings/erp-s4.yaml", "contracts/sales-order-lines.yaml"]
        .iter()
        .map(|f| base.join(f))
        .collect();
    files.extend(
        std::fs::read_dir(base.join("codemaps"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    files.push(binding);

    let mut inside = files.clone();
    inside.push(flow_with("/drops"));
    let (ok, out, err) = render(&inside, &["-n", "demo"]);
    assert!(ok, "{err}");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "drops")
        .expect("the drop volume");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        "planning-drops"
    );
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "drops")
        .expect("mounted into the worker");
    assert_eq!(mount["mountPath"], "/drops");

    let mut outside = files;
    outside.push(flow_with("/elsewhere"));
    let (ok, _, err) = render(&outside, &["-n", "demo"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(
        err.contains("/drops/inbound") && err.contains("dropVolume"),
        "{err}"
    );
}

/// `observability.freshnessBy` reaches worker.json with the codes its values may take (the
/// values of the code map that translates the field), adds FlowplaneKeyStale to the rules,
/// and a field whose values would be free record values is refused.
#[test]
fn freshness_by_a_key_field_takes_only_declared_codes() {
    let configs = worker_configs();
    let inventory = &configs["inventory-events-to-forecasting"];
    assert_eq!(
        inventory["freshnessBy"],
        serde_json::json!({
            "field": "location",
            "codes": ["DE-DUS-DC", "DE-HAM-DC", "NL-RTM-DC", "PL-POZ-XD",
                      "US-ATL-DC", "US-CHI-DC", "US-DAL-DC", "US-RNO-XD"],
            "maxValues": 50,
        })
    );
    let (ok, out, err) = render(&base_files(), &["-n", "demo"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.matches("alert: FlowplaneKeyStale").count(),
        1,
        "only the inventory flow"
    );

    // onHandQuantity: a number of the record, neither an Enum nor translated by a code map.
    let dir = std::env::temp_dir().join(format!("fp-freshness-by-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<PathBuf> = base_files()
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("/flows/"))
        .collect();
    let flow = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/base/flows/inventory-events-to-forecasting.yaml"),
    )
    .unwrap()
    .replace("field: location", "field: onHandQuantity");
    let path = dir.join("flow.yaml");
    std::fs::write(&path, flow).unwrap();
    files.push(path);
    let (ok, _, err) = render(&files, &["-n", "demo"]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!ok);
    assert!(
        err.contains("freshnessBy.field \"onHandQuantity\" is neither an Enum field"),
        "{err}"
    );
}
