//! The ConnectorBinding controller on a real control plane, with the whole operator
//! in-process: Secret problems are named (never their values), creating the Secret makes the
//! binding and its flows Ready without a manual step, a Secret of another namespace cannot
//! even be written down, and the health probe follows an endpoint that goes down and back.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use support::{TestNamespace, apply_yaml, client, eventually, kubectl, operator};

const MANAGER: &str = "flowplane-tests";

fn condition(conditions: &[Condition], type_: &str) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until binding `name`'s condition `type_` has `status` at its current generation;
/// returns (reason, message) and the binding.
async fn binding_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String, ConnectorBinding) {
    let api: Api<ConnectorBinding> = Api::namespaced(client.clone(), ns);
    eventually(60, &format!("binding {name} {type_}={status}"), || async {
        let binding = api.get(name).await.ok()?;
        let s = binding.status.as_ref()?;
        if s.observed_generation != binding.metadata.generation {
            return None;
        }
        let (st, reason, message) = condition(&s.conditions, type_)?;
        (st == status).then_some((reason, message, binding))
    })
    .await
}

/// A credential Secret, opted in as bindings require.
fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.labels = Some(BTreeMap::from([(
        "flowplane.io/credential".to_string(),
        "true".to_string(),
    )]));
    secret.string_data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    secret
}

const ERP: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: erp}
spec:
  system: Erp
  protocol: OData
  endpoint: {url: "http://127.0.0.1:1/odata"}
  auth: {type: Basic, secretRef: {name: erp-user}}
"#;

const PLANNING: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: planning}
spec: {system: Forecasting, protocol: Rest, endpoint: {url: "http://127.0.0.1:1/api"}}
"#;

const FLOW: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders}
spec:
  source: {bindingRef: erp, entity: A_SalesOrderItem, syncMode: FullRefresh}
  target: {bindingRef: planning, entity: /sales-history}
  contract: {name: order-lines, versions: "^1"}
  deletionPolicy: Delete
"#;

async fn bindings_ready(client: &Client, ns: &str, status: &str) -> String {
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), ns);
    eventually(90, &format!("flow BindingsReady={status}"), || async {
        let flow = flows.get("orders").await.ok()?;
        let (st, _, message) = condition(&flow.status?.conditions, "BindingsReady")?;
        (st == status).then_some(message)
    })
    .await
}

#[tokio::test]
async fn secret_problems_are_named_and_creating_the_secret_makes_binding_and_flow_ready() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "binding-secret").await;
    let ns = ns.name.as_str();
    let _: ConnectorBinding = apply_yaml(&client, ns, ERP).await;
    let _: ConnectorBinding = apply_yaml(&client, ns, PLANNING).await;
    let _: DataContract = apply_yaml(
        &client,
        ns,
        &support::minimal_contract("order-lines", "orderId"),
    )
    .await;
    let _: IntegrationFlow = apply_yaml(&client, ns, FLOW).await;

    // No Secret at all.
    let (reason, message, _) =
        binding_condition(&client, ns, "erp", "SecretResolved", "False").await;
    assert_eq!(reason, "SecretNotFound", "{message}");
    assert!(
        message.contains("Secret erp-user") && message.contains(ns),
        "{message}"
    );
    let (reason, _, _) = binding_condition(&client, ns, "erp", "Ready", "False").await;
    assert_eq!(reason, "SecretNotFound");
    let flow_message = bindings_ready(&client, ns, "False").await;
    assert!(
        flow_message.contains("ConnectorBinding erp") && flow_message.contains("erp-user"),
        "{flow_message}"
    );
    // The binding without credentials is Ready.
    binding_condition(&client, ns, "planning", "Ready", "True").await;

    // A Secret that lacks a key: named, and no value ever shows up in status.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .patch(
            "erp-user",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret("erp-user", &[("username", "s3cr3t-user")])),
        )
        .await
        .unwrap();
    let api: Api<ConnectorBinding> = Api::namespaced(client.clone(), ns);
    let message = eventually(60, "SecretKeyMissing", || async {
        let b = api.get("erp").await.ok()?;
        let (_, reason, message) = condition(&b.status?.conditions, "SecretResolved")?;
        (reason == "SecretKeyMissing").then_some(message)
    })
    .await;
    assert!(message.contains("lacks key password"), "{message}");
    let status = serde_json::to_string(&api.get("erp").await.unwrap().status).unwrap();
    assert!(
        !status.contains("s3cr3t"),
        "a Secret value leaked: {status}"
    );
    let flow_message = eventually(60, "the flow to name the missing key", || async {
        let message = bindings_ready(&client, ns, "False").await;
        message.contains("password").then_some(message)
    })
    .await;
    assert!(flow_message.contains("SecretKeyMissing"), "{flow_message}");

    // Completing the Secret: binding and flow follow without any manual step.
    secrets
        .patch(
            "erp-user",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret(
                "erp-user",
                &[("username", "s3cr3t-user"), ("password", "s3cr3t-pass")],
            )),
        )
        .await
        .unwrap();
    let (_, message, binding) = binding_condition(&client, ns, "erp", "Ready", "True").await;
    assert!(!message.contains("s3cr3t"), "{message}");
    let (_, message) = condition(&binding.status.unwrap().conditions, "SecretResolved")
        .map(|(_, r, m)| (r, m))
        .unwrap();
    assert!(message.contains("username, password"), "{message}");
    bindings_ready(&client, ns, "True").await;
}

#[tokio::test]
async fn a_secret_in_another_namespace_cannot_be_referenced() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "binding-xns").await;
    // Nothing in the schema can name another namespace ...
    let crd = serde_json::to_value(<ConnectorBinding as kube::CustomResourceExt>::crd()).unwrap();
    let secret_ref = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["auth"]["properties"]["secretRef"];
    let properties: Vec<&String> = secret_ref["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(properties, ["name"]);
    // ... and the apiserver refuses a manifest that tries.
    let manifest = r#"
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: erp}
spec:
  system: Erp
  protocol: OData
  endpoint: {url: "https://erp.example.com/odata"}
  auth: {type: Basic, secretRef: {name: erp-user, namespace: shared-credentials}}
"#;
    let (ok, out, err) = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            MANAGER,
            "-n",
            &ns.name,
            "-f",
            "-",
        ],
        Some(manifest),
    );
    assert!(!ok, "accepted: {out}");
    assert!(
        err.contains("spec.auth.secretRef.namespace"),
        "error does not name the field: {err}"
    );
}

/// A local HTTP endpoint whose health answer can be switched between 200 and 503.
async fn endpoint(up: Arc<AtomicBool>) -> std::net::SocketAddr {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/api/healthz",
        axum::routing::get(move || {
            let up = up.clone();
            async move {
                if up.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    // The one loopback address the test operator's probe policy allows.
    let listener = tokio::net::TcpListener::bind((support::PROBE_ALLOWED_HOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn a_probe_flips_reachable_when_the_endpoint_goes_down_and_comes_back() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "binding-probe").await;
    let ns = ns.name.as_str();
    let up = Arc::new(AtomicBool::new(true));
    let addr = endpoint(up.clone()).await;
    let _: ConnectorBinding = apply_yaml(
        &client,
        ns,
        &format!(
            "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {{name: wms}}\n\
             spec:\n  system: Warehouse\n  protocol: Rest\n  endpoint: {{url: \"http://{addr}/api\"}}\n  \
             healthCheck: {{path: /healthz, interval: 1s, timeout: 2s}}\n"
        ),
    )
    .await;
    let api: Api<ConnectorBinding> = Api::namespaced(client.clone(), ns);

    // Up: reachable.
    let (_, message, binding) = binding_condition(&client, ns, "wms", "Reachable", "True").await;
    assert!(message.contains("HTTP 200"), "{message}");
    let probe = binding.status.as_ref().unwrap().last_probe.clone().unwrap();
    assert!(probe.reachable);
    assert_eq!(probe.status_code, Some(200));
    binding_condition(&client, ns, "wms", "Ready", "True").await;

    // Identical probes (one a second) write nothing: the object does not change.
    let version = api.get("wms").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        api.get("wms").await.unwrap().metadata.resource_version,
        version,
        "a repeated identical probe rewrote the status"
    );

    // Down (5xx): not reachable, not Ready, and lastProbe.since moves.
    up.store(false, Ordering::SeqCst);
    let (reason, message, binding) =
        binding_condition(&client, ns, "wms", "Reachable", "False").await;
    assert_eq!(reason, "Unreachable");
    assert!(message.contains("HTTP 503"), "{message}");
    let down = binding.status.as_ref().unwrap().last_probe.clone().unwrap();
    assert_eq!((down.reachable, down.status_code), (false, Some(503)));
    assert_ne!(down.since, probe.since);
    let (reason, _, _) = binding_condition(&client, ns, "wms", "Ready", "False").await;
    assert_eq!(reason, "Unreachable");

    // Back: reachable and Ready again.
    up.store(true, Ordering::SeqCst);
    let (_, _, binding) = binding_condition(&client, ns, "wms", "Reachable", "True").await;
    let back = binding.status.unwrap().last_probe.unwrap();
    assert!(back.reachable);
    assert_ne!(back.since, down.since);
    binding_condition(&client, ns, "wms", "Ready", "True").await;
}

/// The SSRF guard on the real API server: bindings whose health check points at loopback (by
/// address and by name), cloud metadata, the API server itself and a Service's ClusterIP are
/// refused by policy, say which rule refused and nothing about the network, and a listener on
/// such an address sees no connection at all.
#[tokio::test]
async fn probes_of_internal_addresses_are_refused_by_policy_and_never_sent() {
    use k8s_openapi::api::core::v1::Service;
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "binding-ssrf").await;
    let ns = ns.name.as_str();

    // Listeners on loopback that count every connection they are offered: 127.0.0.1 (also
    // the local API server's host) and 127.0.0.3.
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut ports = Vec::new();
    for host in ["127.0.0.1", "127.0.0.3"] {
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((_socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let service: Service = apply_yaml(
        &client,
        ns,
        "apiVersion: v1\nkind: Service\nmetadata: {name: internal}\n\
         spec: {ports: [{port: 80}], selector: {app: internal}}\n",
    )
    .await;
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let api_server = support::admin_config().await.cluster_url.to_string();
    let api_server = api_server.trim_end_matches('/');

    // (binding, URL, the rules that may refuse it). Here the API server listens on 127.0.0.1,
    // so its rule refuses that whole address first.
    let api_rule = "Kubernetes API server";
    let cases = [
        (
            "loopback",
            format!("http://127.0.0.3:{}/api", ports[1]),
            vec!["loopback"],
        ),
        (
            "api-host",
            format!("http://127.0.0.1:{}/api", ports[0]),
            vec![api_rule],
        ),
        (
            "localhost",
            format!("http://localhost:{}/api", ports[0]),
            vec!["loopback", api_rule],
        ),
        (
            "metadata",
            "http://169.254.169.254/latest".to_string(),
            vec!["link-local"],
        ),
        ("apiserver", api_server.to_string(), vec![api_rule]),
        (
            "service",
            format!("http://{cluster_ip}/api"),
            vec!["Service range"],
        ),
    ];
    for (name, url, _) in &cases {
        let _: ConnectorBinding = apply_yaml(
            &client,
            ns,
            &format!(
                "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {{name: {name}}}\n\
                 spec:\n  system: Other\n  protocol: Rest\n  endpoint: {{url: \"{url}\"}}\n  \
                 healthCheck: {{path: /healthz, interval: 1s, timeout: 2s}}\n"
            ),
        )
        .await;
    }
    for (name, url, rules) in &cases {
        let (reason, message, binding) =
            binding_condition(&client, ns, name, "Reachable", "False").await;
        assert_eq!(reason, "RefusedByPolicy", "{name}: {message}");
        assert!(
            message.contains("refused by policy") && rules.iter().any(|r| message.contains(r)),
            "{name}: {message}"
        );
        // Nothing about the network: no address, port, resolver or socket error.
        let host = reqwest::Url::parse(url)
            .unwrap()
            .host_str()
            .unwrap()
            .to_string();
        for leak in [
            host.as_str(),
            "connection",
            "refused:",
            "TLS",
            "DNS",
            "timed out",
        ] {
            assert!(!message.contains(leak), "{name} echoes {leak:?}: {message}");
        }
        let status = binding.status.unwrap();
        assert!(
            status.last_probe.is_none(),
            "{name}: {:?}",
            status.last_probe
        );
        let (stalled, stalled_reason, _) = condition(&status.conditions, "Stalled").unwrap();
        assert_eq!(
            (stalled.as_str(), stalled_reason.as_str()),
            ("True", "RefusedByPolicy")
        );
        let (ready, _, _) = condition(&status.conditions, "Ready").unwrap();
        assert_eq!(ready, "False", "{name}");
    }
    // Several reconciles later, still not a single connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

/// Secrets are opted in: a Secret with every key a binding needs, but without the label
/// `flowplane.io/credential: "true"`, leaves the binding not Ready with reason
/// SecretNotOptedIn (its values are never read); labelling it makes the binding Ready.
#[tokio::test]
async fn an_unlabelled_secret_is_refused_as_a_credential() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "binding-optin").await;
    let ns = ns.name.as_str();
    let mut unlabelled = secret(
        "erp-user",
        &[("username", "s3cr3t-user"), ("password", "s3cr3t-pass")],
    );
    unlabelled.metadata.labels = None;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(&Default::default(), &unlabelled)
        .await
        .unwrap();
    let _: ConnectorBinding = apply_yaml(&client, ns, ERP).await;

    let (reason, message, binding) =
        binding_condition(&client, ns, "erp", "SecretResolved", "False").await;
    assert_eq!(reason, "SecretNotOptedIn", "{message}");
    assert!(
        message.contains("Secret erp-user")
            && message.contains("flowplane.io/credential: \"true\""),
        "{message}"
    );
    let status = binding.status.unwrap();
    assert_eq!(
        condition(&status.conditions, "Ready").unwrap().1,
        "SecretNotOptedIn"
    );
    assert_eq!(condition(&status.conditions, "Stalled").unwrap().0, "True");
    assert!(!serde_json::to_string(&status).unwrap().contains("s3cr3t"));

    // Opting in is all it takes.
    secrets
        .patch(
            "erp-user",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"labels": {"flowplane.io/credential": "true"}}
            })),
        )
        .await
        .unwrap();
    binding_condition(&client, ns, "erp", "Ready", "True").await;
}

/// The binding's `status.quota` is what its workers used, read from the shared record in
/// NATS: the binding controller creates the bucket, workers take from it, status shows the
/// day's use and an exhausted daily quota.
#[tokio::test]
async fn a_rate_limited_binding_shows_its_quota_use_in_status() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "binding-quota").await;
    let _: ConnectorBinding = apply_yaml(
        &client,
        &ns.name,
        r#"
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: planning}
spec:
  system: Forecasting
  protocol: Rest
  endpoint: {url: "http://127.0.0.1:1/api"}
  rateLimit: {requestsPerSecond: 100, burst: 10, requestsPerDay: 3}
"#,
    )
    .await;
    let api: Api<ConnectorBinding> = Api::namespaced(client.clone(), &ns.name);
    let quota = |state: &'static str, used: u64| {
        let api = api.clone();
        async move {
            let binding = api.get("planning").await.ok()?;
            let quota = binding.status?.quota?;
            let wanted = serde_json::to_value(quota.state).ok()? == state;
            (wanted && quota.used_today == used).then_some(quota)
        }
    };
    let fresh = eventually(60, "status.quota Available, nothing used", || {
        quota("Available", 0)
    })
    .await;
    assert_eq!(fresh.requests_per_day, Some(3));

    // Three requests' worth taken by a worker's quota client, on the operator's NATS.
    let nats = support::nats_admin(&support::local_env().nats_url).await;
    let js = async_nats::jetstream::new(nats);
    let mut endpoint = flowplane::worker::sample::endpoint(
        "planning",
        flowplane::api::connector_binding::System::Forecasting,
        flowplane::api::connector_binding::Protocol::Rest,
        "http://127.0.0.1:1/api",
    );
    endpoint.rate_limit = api.get("planning").await.unwrap().spec.rate_limit;
    let shared = flowplane::worker::quota::SharedQuota::open(&js, &ns.name, &endpoint)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        shared.acquire().await.unwrap();
    }
    assert!(
        shared.acquire().await.is_err(),
        "the day's quota is used up"
    );
    // A label change wakes the controller now rather than at its 30 s re-read.
    api.patch(
        "planning",
        &PatchParams::apply(MANAGER),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    let used = eventually(60, "status.quota Exhausted, 3 used", || {
        quota("Exhausted", 3)
    })
    .await;
    assert!(used.message.unwrap().contains("used up"));
    assert!(used.until.is_some());
}
