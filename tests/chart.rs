//! The Helm chart (`charts/flowplane`): its copies of the CRDs and the dashboard stay in sync,
//! `helm lint` passes, `helm template` renders what a production install needs, the values
//! schema refuses bad values, the rendered objects apply to the real control plane, and the
//! chart's ServiceAccount is granted exactly what the operator's code calls (and not more).
//!
//! helm is built by `scripts/install-tools.sh` into `~/.cache/flowplane/bin`.

mod support;

use std::path::{Path, PathBuf};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;

use support::{KUBE_VERSION, helm};

fn chart_dir() -> PathBuf {
    support::repo_root().join("charts/flowplane")
}

/// `helm template` of the chart as release `release` in `namespace` with extra `--set`s.
fn template(release: &str, namespace: &str, sets: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ];
    for set in sets {
        args.push("--set");
        args.push(set);
    }
    let (ok, out, err) = helm(&args);
    if ok { Ok(out) } else { Err(err) }
}

fn documents(rendered: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn files_in(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let root = support::repo_root();
    let generated = files_in(&root.join("crds"));
    let in_chart = files_in(&chart_dir().join("crds"));
    assert!(!generated.is_empty());
    let names = |f: &[(String, String)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&in_chart),
        names(&generated),
        "charts/flowplane/crds must hold exactly the files of crds/; run: cp crds/*.yaml charts/flowplane/crds/"
    );
    for ((name, chart), (_, crd)) in in_chart.iter().zip(&generated) {
        assert!(
            chart == crd,
            "charts/flowplane/crds/{name} differs from crds/{name}; run: cp crds/*.yaml charts/flowplane/crds/"
        );
    }
}

#[test]
fn chart_dashboard_is_the_deploy_dashboard_and_covers_every_metric() {
    let root = support::repo_root();
    let deploy = std::fs::read_to_string(root.join("deploy/grafana/flowplane-dashboard.json"))
        .expect("deploy/grafana/flowplane-dashboard.json");
    let chart = std::fs::read_to_string(chart_dir().join("dashboards/flowplane-dashboard.json"))
        .expect("charts/flowplane/dashboards/flowplane-dashboard.json");
    assert!(
        deploy == chart,
        "the chart's dashboard differs from deploy/grafana's; run: python3 deploy/grafana/generate.py"
    );
    let dashboard: Value = serde_json::from_str(&deploy).expect("dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for metric in [
        "flowplane_worker_records_read_total",
        "flowplane_worker_records_delivered_total",
        "flowplane_worker_records_duplicate_total",
        "flowplane_worker_records_dead_lettered_total",
        "flowplane_worker_requests_throttled_total",
        "flowplane_worker_records_retried_total",
        "flowplane_worker_last_success_timestamp_seconds",
        "flowplane_worker_lag_records",
        "flowplane_worker_batch_latency_seconds_bucket",
        "flowplane_operator_reconciles_total",
        "flowplane_operator_reconcile_errors_total",
        "flowplane_operator_reconcile_duration_seconds_bucket",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no dashboard panel shows {metric}"
        );
    }
    // Per reason for dead letters, per namespace/flow for the workers.
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("by (namespace, flow, reason)"))
    );
}

#[test]
fn helm_lint_passes() {
    let (ok, out, err) = helm(&["lint", "--strict", chart_dir().to_str().unwrap()]);
    assert!(ok, "helm lint failed:\n{out}\n{err}");
    let (ok, out, err) = helm(&[
        "lint",
        "--strict",
        chart_dir().to_str().unwrap(),
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "nats.credentials.existingSecret=nats-creds",
    ]);
    assert!(ok, "helm lint with every option failed:\n{out}\n{err}");
}

#[test]
fn helm_template_renders_a_production_install() {
    let rendered = template(
        "fp",
        "flowplane-system",
        &[
            "region=eu-west-1",
            "nats.credentials.existingSecret=nats-creds",
        ],
    )
    .unwrap();
    let docs = documents(&rendered);
    let deployment = find(&docs, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "controller");
    assert!(args.contains(&"--leader-election"), "{args:?}");
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
            .clone()
    };
    assert_eq!(
        env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(env("FLOWPLANE_REGION")["value"], "eu-west-1");
    assert_eq!(
        env("FLOWPLANE_NATS_CREDS")["value"],
        "/var/run/flowplane/nats/nats.creds"
    );
    assert_eq!(env("FLOWPLANE_HTTP_ADDR")["value"], "0.0.0.0:8080");
    assert!(
        env("NATS_URL")["value"]
            .as_str()
            .unwrap()
            .starts_with("nats://")
    );
    assert!(env("FLOWPLANE_WORKER_IMAGE")["value"].is_string());
    // Least privilege by default: the release namespace alone is watched.
    assert_eq!(
        env("FLOWPLANE_WATCH_NAMESPACES")["value"],
        "flowplane-system"
    );
    assert_eq!(env("FLOWPLANE_PROBE_MIN_INTERVAL_SECONDS")["value"], "10");
    // A whole number of bytes the operator's flag takes (Helm reads YAML numbers as floats).
    let max_bytes = env("FLOWPLANE_QUEUE_MAX_BYTES")["value"].clone();
    assert_eq!(
        flowplane::api::integration_flow::parse_queue_max_bytes(max_bytes.as_str().unwrap()),
        Ok(1 << 30),
        "{max_bytes}"
    );
    assert_eq!(env("FLOWPLANE_RESYNC_PER_SECOND")["value"], "10");
    assert_eq!(env("FLOWPLANE_KUBE_API_CONCURRENCY")["value"], "16");
    // The credentials are a mounted file, never an environment value.
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "nats-creds");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert!(container["resources"]["requests"]["memory"].is_string());

    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ] {
        assert_eq!(find(&docs, kind).len(), 1, "{kind}");
    }
    assert_eq!(find(&docs, "ValidatingAdmissionPolicy").len(), 2);
    assert_eq!(find(&docs, "ValidatingAdmissionPolicyBinding").len(), 2);
    assert_eq!(find(&docs, "MutatingAdmissionPolicy").len(), 1);
    assert_eq!(find(&docs, "MutatingAdmissionPolicyBinding").len(), 1);
    // By default: the operator's rules in a Role of the release namespace, the leader-election
    // Role, and a Role naming the `kubernetes` Service in `default`; the ClusterRole only reads
    // CRDs, ServiceCIDRs and Nodes.
    let roles = find(&docs, "Role");
    let placed: Vec<(&str, &str)> = roles
        .iter()
        .map(|r| {
            (
                r["metadata"]["namespace"].as_str().unwrap(),
                r["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            ("flowplane-system", "fp-flowplane"),
            ("default", "fp-flowplane-api-server-addresses"),
            ("flowplane-system", "fp-flowplane-leader-election"),
        ]
    );
    assert_eq!(roles[1]["rules"][0]["resourceNames"][0], "kubernetes");
    let cluster_rules: Vec<&str> = find(&docs, "ClusterRole")[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resources"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        cluster_rules,
        ["customresourcedefinitions", "servicecidrs", "nodes"]
    );

    // Cluster-wide mode, opted into: the operator's rules in the ClusterRole, no Role of them.
    let wide = documents(&template("fp", "flowplane-system", &["clusterWide=true"]).unwrap());
    assert!(
        find(&wide, "ClusterRole")[0]["rules"]
            .as_array()
            .unwrap()
            .len()
            > 3
    );
    assert_eq!(find(&wide, "Role").len(), 2);
    let env = &find(&wide, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        !env.to_string().contains("FLOWPLANE_WATCH_NAMESPACES"),
        "{env}"
    );
    let both = template(
        "fp",
        "flowplane-system",
        &["clusterWide=true", "watchNamespaces={a}"],
    );
    assert!(
        both.as_ref()
            .is_err_and(|e| e.contains("leave watchNamespaces empty")),
        "{both:?}"
    );
    assert!(find(&docs, "ServiceMonitor").is_empty());
    assert!(find(&docs, "ConfigMap").is_empty());

    // One replica: no leader election, no PDB.
    let single = documents(
        &template(
            "fp",
            "flowplane-system",
            &["replicaCount=1", "leaderElection.enabled=false"],
        )
        .unwrap(),
    );
    assert!(find(&single, "PodDisruptionBudget").is_empty());
    let args = &find(&single, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args.as_array().unwrap().len(), 1, "{args}");

    // Namespace-scoped RBAC: a Role per listed namespace, the ClusterRole only reads CRDs.
    let scoped = documents(
        &template(
            "fp",
            "flowplane-system",
            &[
                "watchNamespaces={team-a,team-b}",
                "serviceMonitor.enabled=true",
                "grafanaDashboard.enabled=true",
            ],
        )
        .unwrap(),
    );
    let roles = find(&scoped, "Role");
    let namespaces: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    // The release namespace keeps only the leader-election Role: it is not watched.
    assert_eq!(
        namespaces,
        ["team-a", "team-b", "default", "flowplane-system"]
    );
    let cluster_role = find(&scoped, "ClusterRole")[0];
    assert_eq!(cluster_role["rules"].as_array().unwrap().len(), 3);
    assert_eq!(find(&scoped, "ServiceMonitor").len(), 1);
    let dashboard = find(&scoped, "ConfigMap")[0];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = dashboard["data"]["flowplane-dashboard.json"]
        .as_str()
        .unwrap();
    serde_json::from_str::<Value>(json).expect("dashboard JSON survives templating");
}

#[test]
fn values_schema_rejects_bad_values_with_a_clear_message() {
    for (set, expected) in [
        (
            "replicaCount=zero",
            "at '/replicaCount': got string, want integer",
        ),
        (
            "replicaCount=0",
            "at '/replicaCount': minimum: got 0, want 1",
        ),
        ("region=EU_West", "at '/region'"),
        ("image.tag=2", "at '/image/tag': got number, want string"),
        ("nats.url=localhost:4222", "at '/nats/url'"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0'"),
        ("ssrf.denyCIDRs={10.0.0.0}", "at '/ssrf/denyCIDRs/0'"),
        ("ssrf.minIntervalSeconds=0", "at '/ssrf/minIntervalSeconds'"),
    ] {
        let err = template("fp", "flowplane-system", &[set])
            .expect_err(&format!("--set {set} must be refused"));
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(expected),
            "--set {set}: expected {expected:?} in:\n{err}"
        );
    }
}

/// Applies the rendered chart (server-side) into a throwaway namespace labelled for the
/// restricted Pod Security level; returns the namespace, release and the rendered text.
async fn install_rendered(client: &kube::Client, prefix: &str) -> (support::TestNamespace, String) {
    let ns = support::TestNamespace::new(client, prefix).await;
    let (ok, _, err) = support::kubectl(
        &[
            "label",
            "namespace",
            &ns.name,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted",
        ],
        None,
    );
    assert!(ok, "{err}");
    // Cluster-scoped names derive from the release: one release per namespace.
    let release = ns.name.clone();
    let rendered = template(
        &release,
        &ns.name,
        &["nats.credentials.existingSecret=nats-creds"],
    )
    .unwrap();
    let (ok, out, err) = support::kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=helm-test",
            "-f",
            "-",
        ],
        Some(&rendered),
    );
    assert!(ok, "applying the rendered chart failed:\n{out}\n{err}");
    assert!(
        !err.contains("would violate PodSecurity"),
        "the operator's pod violates the restricted Pod Security level:\n{err}"
    );
    (ns, release)
}

fn cleanup_cluster_scoped(release: &str) {
    let name = format!("{release}-flowplane");
    let _ = support::kubectl(
        &[
            "delete",
            "clusterrole,clusterrolebinding",
            &name,
            "--ignore-not-found",
        ],
        None,
    );
    let addresses = format!("{name}-api-server-addresses");
    let _ = support::kubectl(
        &[
            "delete",
            "role,rolebinding",
            "-n",
            "default",
            &addresses,
            "--ignore-not-found",
        ],
        None,
    );
    for policy in [
        "operator-writes-flowplane-objects",
        "operator-pod-templates",
    ] {
        let _ = support::kubectl(
            &[
                "delete",
                "validatingadmissionpolicy,validatingadmissionpolicybinding",
                &format!("{name}-{policy}"),
                "--ignore-not-found",
            ],
            None,
        );
    }
    let _ = support::kubectl(
        &[
            "delete",
            "mutatingadmissionpolicy,mutatingadmissionpolicybinding",
            &format!("{name}-stamp-decider"),
            "--ignore-not-found",
        ],
        None,
    );
}

#[tokio::test]
async fn rendered_chart_applies_to_the_control_plane() {
    let client = support::client().await;
    // The CRD upgrade step the chart README documents.
    let crds = chart_dir().join("crds");
    let (ok, out, err) = support::kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        ok,
        "kubectl apply --server-side -f crds/ failed:\n{out}\n{err}"
    );

    let (ns, release) = install_rendered(&client, "chart").await;
    cleanup_cluster_scoped(&release);
    let (ok, out, err) = support::kubectl(
        &[
            "get",
            "deployment,service,serviceaccount,networkpolicy,poddisruptionbudget,role,rolebinding",
            "-n",
            &ns.name,
            "-o",
            "name",
        ],
        None,
    );
    assert!(ok, "{err}");
    for object in [
        "deployment.apps/",
        "service/",
        "serviceaccount/",
        "networkpolicy.networking.k8s.io/",
        "poddisruptionbudget.policy/",
        "role.rbac.authorization.k8s.io/",
        "rolebinding.rbac.authorization.k8s.io/",
    ] {
        assert!(out.contains(object), "no {object} in:\n{out}");
    }

    // The namespace-scoped variant and every optional object, checked by the apiserver.
    let scoped = template(
        "fp-scoped",
        &ns.name,
        &[
            &format!("watchNamespaces={{{}}}", ns.name),
            "grafanaDashboard.enabled=true",
            "region=eu-west-1",
        ],
    )
    .unwrap();
    let (ok, out, err) = support::kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&scoped),
    );
    assert!(
        ok,
        "the namespace-scoped chart does not apply:\n{out}\n{err}"
    );
}

async fn allowed(
    client: &kube::Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

/// Whether `user` may get the object `name` of `group`/`resource` in `namespace`.
async fn allowed_named(
    client: &kube::Client,
    user: &str,
    group: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("get".into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

/// Every API call in src/controller and src/render, as (verb, group, resource).
const OPERATOR_NEEDS: &[(&str, &str, &str)] = &[
    ("get", "flowplane.io", "integrationflows"),
    ("list", "flowplane.io", "integrationflows"),
    ("watch", "flowplane.io", "integrationflows"),
    ("patch", "flowplane.io", "integrationflows"),
    ("update", "flowplane.io", "integrationflows/finalizers"),
    ("patch", "flowplane.io", "integrationflows/status"),
    ("get", "flowplane.io", "datacontracts"),
    ("list", "flowplane.io", "datacontracts"),
    ("watch", "flowplane.io", "datacontracts"),
    ("patch", "flowplane.io", "datacontracts/status"),
    ("get", "flowplane.io", "connectorbindings"),
    ("list", "flowplane.io", "connectorbindings"),
    ("watch", "flowplane.io", "connectorbindings"),
    ("patch", "flowplane.io", "connectorbindings/status"),
    ("get", "", "configmaps"),
    ("list", "", "configmaps"),
    ("watch", "", "configmaps"),
    ("create", "", "configmaps"),
    ("patch", "", "configmaps"),
    ("delete", "", "configmaps"),
    ("get", "", "secrets"),
    ("list", "", "secrets"),
    ("watch", "", "secrets"),
    // Each flow's own NATS user, `<flow>-nats`, owned by the flow (deleted with it).
    ("create", "", "secrets"),
    ("patch", "", "secrets"),
    ("get", "apps", "deployments"),
    ("list", "apps", "deployments"),
    ("watch", "apps", "deployments"),
    ("create", "apps", "deployments"),
    ("patch", "apps", "deployments"),
    ("get", "", "services"),
    ("create", "", "services"),
    ("patch", "", "services"),
    ("get", "policy", "poddisruptionbudgets"),
    ("create", "policy", "poddisruptionbudgets"),
    ("patch", "policy", "poddisruptionbudgets"),
    ("get", "networking.k8s.io", "networkpolicies"),
    ("create", "networking.k8s.io", "networkpolicies"),
    ("patch", "networking.k8s.io", "networkpolicies"),
    ("get", "batch", "cronjobs"),
    ("list", "batch", "cronjobs"),
    ("watch", "batch", "cronjobs"),
    ("create", "batch", "cronjobs"),
    ("patch", "batch", "cronjobs"),
    ("delete", "batch", "cronjobs"),
    ("get", "autoscaling", "horizontalpodautoscalers"),
    ("list", "autoscaling", "horizontalpodautoscalers"),
    ("watch", "autoscaling", "horizontalpodautoscalers"),
    ("create", "autoscaling", "horizontalpodautoscalers"),
    ("patch", "autoscaling", "horizontalpodautoscalers"),
    ("delete", "autoscaling", "horizontalpodautoscalers"),
    ("get", "keda.sh", "scaledobjects"),
    ("create", "keda.sh", "scaledobjects"),
    ("patch", "keda.sh", "scaledobjects"),
    ("delete", "keda.sh", "scaledobjects"),
    ("get", "monitoring.coreos.com", "prometheusrules"),
    ("create", "monitoring.coreos.com", "prometheusrules"),
    ("patch", "monitoring.coreos.com", "prometheusrules"),
    ("delete", "monitoring.coreos.com", "prometheusrules"),
    ("get", "monitoring.coreos.com", "servicemonitors"),
    ("create", "monitoring.coreos.com", "servicemonitors"),
    ("patch", "monitoring.coreos.com", "servicemonitors"),
    ("delete", "monitoring.coreos.com", "servicemonitors"),
    ("create", "events.k8s.io", "events"),
    ("patch", "events.k8s.io", "events"),
];

/// What the operator never does; a grant of any of these would be a privilege it does not need.
const OPERATOR_MUST_NOT: &[(&str, &str, &str)] = &[
    ("update", "", "secrets"),
    ("delete", "", "secrets"),
    ("create", "", "pods"),
    ("delete", "", "pods"),
    ("create", "", "pods/exec"),
    ("delete", "apps", "deployments"),
    ("update", "apps", "deployments"),
    ("delete", "", "services"),
    ("create", "flowplane.io", "integrationflows"),
    ("delete", "flowplane.io", "integrationflows"),
    ("update", "flowplane.io", "datacontracts"),
    ("delete", "flowplane.io", "connectorbindings"),
    ("create", "rbac.authorization.k8s.io", "rolebindings"),
    ("create", "", "serviceaccounts/token"),
    ("create", "", "events"),
];

#[tokio::test]
async fn service_account_is_granted_what_the_operator_calls_and_nothing_else() {
    let client = support::client().await;
    let (ns, release) = install_rendered(&client, "chart-rbac").await;
    let user = format!("system:serviceaccount:{}:{release}-flowplane", ns.name);
    // By default the operator watches its own namespace only.
    let watched = Some(ns.name.as_str());
    let elsewhere = Some("some-team");

    let mut missing = vec![];
    for &(verb, group, resource) in OPERATOR_NEEDS {
        if !allowed(&client, &user, verb, group, resource, watched).await {
            missing.push(format!("{verb} {group}/{resource}"));
        }
    }
    for (verb, group, resource) in [
        ("get", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("list", "networking.k8s.io", "servicecidrs"),
        ("list", "", "nodes"),
    ] {
        if !allowed(&client, &user, verb, group, resource, None).await {
            missing.push(format!("{verb} {group}/{resource}"));
        }
    }
    for (group, resource) in [("", "services"), ("discovery.k8s.io", "endpointslices")] {
        if !allowed_named(&client, &user, group, resource, "default", "kubernetes").await {
            missing.push(format!("get {group}/{resource} kubernetes in default"));
        }
    }
    // The Lease: in the release namespace only.
    for verb in ["get", "create", "update"] {
        if !allowed(
            &client,
            &user,
            verb,
            "coordination.k8s.io",
            "leases",
            Some(&ns.name),
        )
        .await
        {
            missing.push(format!("{verb} leases in {}", ns.name));
        }
    }

    let mut excess = vec![];
    for &(verb, group, resource) in OPERATOR_MUST_NOT {
        if allowed(&client, &user, verb, group, resource, watched).await {
            excess.push(format!("{verb} {group}/{resource}"));
        }
    }
    // Nothing at all outside the watched namespaces.
    for &(verb, group, resource) in OPERATOR_NEEDS {
        if allowed(&client, &user, verb, group, resource, elsewhere).await {
            excess.push(format!(
                "{verb} {group}/{resource} in an unwatched namespace"
            ));
        }
    }
    for resource in ["services", "secrets", "configmaps"] {
        if allowed(&client, &user, "list", "", resource, Some("default")).await {
            excess.push(format!("list {resource} in default"));
        }
    }
    for verb in ["create", "patch", "update", "delete"] {
        if allowed(
            &client,
            &user,
            verb,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
        )
        .await
        {
            excess.push(format!("{verb} customresourcedefinitions"));
        }
    }
    if allowed(
        &client,
        &user,
        "update",
        "coordination.k8s.io",
        "leases",
        elsewhere,
    )
    .await
    {
        excess.push("update leases outside the release namespace".into());
    }
    if allowed(
        &client,
        &user,
        "delete",
        "coordination.k8s.io",
        "leases",
        Some(&ns.name),
    )
    .await
    {
        excess.push("delete leases".into());
    }
    cleanup_cluster_scoped(&release);
    assert!(
        missing.is_empty(),
        "the chart does not grant what the operator calls: {missing:?}"
    );
    assert!(
        excess.is_empty(),
        "the chart grants what the operator never calls: {excess:?}"
    );
}

fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> Option<String> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => None,
        other => Some(format!("{what}: expected 403 Forbidden, got {other:?}")),
    }
}

/// The identity the in-process operator of every controller test runs as (the chart's
/// ServiceAccount, impersonated): granted what the operator calls, refused what it never does.
#[tokio::test]
async fn the_operator_identity_is_refused_what_the_chart_does_not_grant() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

    let admin = support::client().await;
    let ns = support::TestNamespace::new(&admin, "denied").await;
    let operator = support::operator_client().await;

    // Granted: what every controller reads, and its own Lease.
    Api::<flowplane::api::IntegrationFlow>::all(operator.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("the operator lists IntegrationFlows cluster-wide");
    Api::<Secret>::namespaced(operator.clone(), &ns.name)
        .list(&ListParams::default().limit(1))
        .await
        .expect("the operator reads Secrets (binding credentials are checked)");
    Api::<Lease>::namespaced(operator.clone(), support::OPERATOR_NAMESPACE)
        .get_opt("flowplane-operator")
        .await
        .expect("the operator reads its Lease in its own namespace");

    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stolen"}, "stringData": {"k": "v"}
    }))
    .unwrap();
    let lease: Lease =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "elsewhere"}})).unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}
    }))
    .unwrap();
    let role: ClusterRole =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "escalate"}, "rules": []}))
            .unwrap();
    let post = PostParams::default();
    let problems: Vec<String> = [
        // It creates Secrets (each flow's NATS user) but never deletes or replaces one.
        refused(
            "delete a Secret",
            Api::<Secret>::namespaced(operator.clone(), &ns.name)
                .delete("stolen", &DeleteParams::default())
                .await,
        ),
        refused(
            "replace a Secret",
            Api::<Secret>::namespaced(operator.clone(), &ns.name)
                .replace("stolen", &post, &secret)
                .await,
        ),
        refused(
            "create a Pod",
            Api::<Pod>::namespaced(operator.clone(), &ns.name)
                .create(&post, &pod)
                .await,
        ),
        refused(
            "delete a Deployment",
            Api::<Deployment>::namespaced(operator.clone(), &ns.name)
                .delete("workers", &DeleteParams::default())
                .await,
        ),
        refused(
            "delete a Namespace",
            Api::<Namespace>::all(operator.clone())
                .delete(&ns.name, &DeleteParams::default())
                .await,
        ),
        refused(
            "create a ClusterRole",
            Api::<ClusterRole>::all(operator.clone())
                .create(&post, &role)
                .await,
        ),
        refused(
            "patch a CustomResourceDefinition",
            Api::<CustomResourceDefinition>::all(operator.clone())
                .patch(
                    "integrationflows.flowplane.io",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
                )
                .await,
        ),
        refused(
            "create a Lease outside the operator's namespace",
            Api::<Lease>::namespaced(operator.clone(), &ns.name)
                .create(&post, &lease)
                .await,
        ),
        refused(
            "delete an IntegrationFlow",
            Api::<flowplane::api::IntegrationFlow>::namespaced(operator.clone(), &ns.name)
                .delete("any", &DeleteParams::default())
                .await,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // The namespace is still there: the refusal was real.
    Api::<Namespace>::all(admin.clone())
        .get(&ns.name)
        .await
        .expect("namespace survives");
}

/// A worker-like Deployment as the operator would write it, with the parts a compromised
/// operator would change: labels, image and a privileged container.
fn deployment(
    name: &str,
    managed_by: &str,
    image: &str,
    privileged: bool,
) -> k8s_openapi::api::apps::v1::Deployment {
    let security = if privileged {
        serde_json::json!({"privileged": true, "capabilities": {"drop": ["ALL"]}})
    } else {
        serde_json::json!({"allowPrivilegeEscalation": false, "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": managed_by}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "worker", "image": image, "securityContext": security}]
                }
            }
        }
    }))
    .unwrap()
}

/// The chart's default install on the real API server, as its own ServiceAccount
/// (impersonated): nothing outside the watched namespace (no Secret read, no Deployment
/// created), and inside it the ValidatingAdmissionPolicy refuses what a compromised operator
/// would try: another image, a privileged pod template, an object not labelled as flowplane's.
#[tokio::test]
async fn the_default_service_account_is_confined_to_its_namespace_and_the_admission_policy() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ListParams;

    let admin = support::client().await;
    let (ns, release) = install_rendered(&admin, "chart-confined").await;
    let other = support::TestNamespace::new(&admin, "chart-unwatched").await;
    let rendered = documents(
        &template(
            &release,
            &ns.name,
            &["nats.credentials.existingSecret=nats-creds"],
        )
        .unwrap(),
    );
    let worker_image = find(&rendered, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        [0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "FLOWPLANE_WORKER_IMAGE")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let mut config = support::admin_config().await;
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{}:{release}-flowplane",
        ns.name
    ));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{}", ns.name),
        "system:authenticated".into(),
    ]);
    let operator = kube::Client::try_from(config).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };

    // Outside the watched namespace: refused by RBAC.
    let outside = Api::<Secret>::namespaced(operator.clone(), &other.name);
    let mut problems: Vec<String> = [
        refused(
            "list Secrets in an unwatched namespace",
            outside.list(&ListParams::default()).await,
        ),
        refused(
            "get a Secret in an unwatched namespace",
            outside.get("anything").await,
        ),
        refused(
            "create a Deployment in an unwatched namespace",
            Api::<Deployment>::namespaced(operator.clone(), &other.name)
                .create(
                    &dry_run,
                    &deployment("w", "flowplane", &worker_image, false),
                )
                .await,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();

    // Inside: what the operator does is allowed ...
    Api::<Secret>::namespaced(operator.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .expect("the operator reads Secrets in its watched namespace");
    let inside = Api::<Deployment>::namespaced(operator.clone(), &ns.name);
    inside
        .create(
            &dry_run,
            &deployment("w", "flowplane", &worker_image, false),
        )
        .await
        .expect("a worker Deployment of the configured image is allowed");
    // ... and the admission policy refuses the rest (it takes effect within seconds of
    // being applied).
    for (what, object, says) in [
        (
            "another image",
            deployment("w", "flowplane", "attacker/miner:latest", false),
            "may only run the worker image",
        ),
        (
            "a privileged pod template",
            deployment("w", "flowplane", &worker_image, true),
            "must not be privileged",
        ),
        (
            "an object not labelled as flowplane's",
            deployment("w", "someone-else", &worker_image, false),
            "may only write objects labelled",
        ),
    ] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let outcome = loop {
            let outcome = inside.create(&dry_run, &object).await;
            if outcome.is_err() || std::time::Instant::now() > deadline {
                break outcome;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        };
        match outcome {
            Err(kube::Error::Api(status))
                if status.code == 403
                    && status.message.contains("ValidatingAdmissionPolicy")
                    && status.message.contains(says) => {}
            other => problems.push(format!(
                "{what}: expected the admission policy's refusal ({says}), got {other:?}"
            )),
        }
    }
    cleanup_cluster_scoped(&release);
    assert!(problems.is_empty(), "{problems:#?}");
}
