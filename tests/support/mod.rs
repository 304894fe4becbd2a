//! Test harness: a real control plane and nats-server (started once per machine by
//! `scripts/local-env.sh up`, reused while alive), a client, and throwaway namespaces.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

pub mod nats_cluster;

/// The running local environment.
pub struct LocalEnv {
    pub kubeconfig: PathBuf,
    pub nats_url: String,
    /// Credentials of a user with the operator's rights (all flows' queues).
    pub nats_creds: PathBuf,
    /// CA of the NATS server's certificate (TLS required).
    pub nats_ca: PathBuf,
    /// The flowplane account's signing key and public key, as in the operator's Secret.
    pub nats_signer_dir: PathBuf,
    /// Prometheus' HTTP API (loopback).
    pub prometheus_url: String,
    /// Where Prometheus finds what to scrape (file_sd: one JSON file per process).
    pub prometheus_targets: PathBuf,
    /// Where Prometheus reads rule files from (on `scripts/local-env.sh reload-rules`).
    pub prometheus_rules: PathBuf,
    /// host:port of nats-server's HTTP monitoring endpoint (KEDA's scaler reads `/jsz`).
    pub nats_monitoring_endpoint: String,
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts (or finds) the local control plane and NATS; once per test process.
pub fn local_env() -> &'static LocalEnv {
    static ENV: OnceLock<LocalEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        // SAFETY: before any thread of the test reads the environment (first call, at start).
        unsafe { std::env::set_var("FLOWPLANE_BIN", env!("CARGO_BIN_EXE_flowplane")) };
        let env_file = script(&["local-env.sh", "up"]).trim().to_string();
        let vars = read_env_file(Path::new(&env_file));
        let kubeconfig = PathBuf::from(&vars["KUBECONFIG"]);
        LocalEnv {
            kubeconfig,
            nats_url: vars["NATS_URL"].clone(),
            nats_creds: PathBuf::from(&vars["NATS_CREDS"]),
            nats_ca: PathBuf::from(&vars["NATS_CA"]),
            nats_signer_dir: PathBuf::from(&vars["FLOWPLANE_NATS_SIGNER_DIR"]),
            prometheus_url: vars["PROMETHEUS_URL"].clone(),
            prometheus_targets: PathBuf::from(&vars["FLOWPLANE_PROMETHEUS_TARGETS"]),
            prometheus_rules: PathBuf::from(&vars["FLOWPLANE_PROMETHEUS_RULES"]),
            nats_monitoring_endpoint: vars["NATS_MONITOR_URL"]
                .trim_start_matches("http://")
                .to_string(),
        }
    })
}

/// A JetStream context as an administrator on `url`: the local environment's NATS (auth and
/// TLS) with its admin credentials, any other (a test's private server) anonymously.
pub async fn nats_admin(url: &str) -> async_nats::Client {
    let env = local_env();
    let access = if url == env.nats_url {
        flowplane::queue::identity::NatsAccess {
            url: url.to_string(),
            creds_file: Some(env.nats_creds.clone()),
            ca_file: Some(env.nats_ca.clone()),
            inbox_prefix: Some(flowplane::queue::identity::OPERATOR_INBOX_PREFIX.into()),
        }
    } else {
        flowplane::queue::identity::NatsAccess {
            url: url.to_string(),
            ..Default::default()
        }
    };
    access.connect().await.expect("connect to NATS")
}

/// Makes the local environment's Prometheus read its rule files again.
pub fn reload_prometheus_rules() {
    script(&["local-env.sh", "reload-rules"]);
}

/// Runs `scripts/<args[0]> args[1..]`; its standard output, or a failure with its errors.
fn script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(args[0]))
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "scripts/{} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where install-tools.sh caches what it builds: `$FLOWPLANE_CACHE`, else ~/.cache/flowplane.
pub fn cache_dir() -> PathBuf {
    std::env::var("FLOWPLANE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flowplane"))
}

/// An external binary from the tools directory: `$FLOWPLANE_TOOLS`, which the test command
/// fills with exactly install-tools.sh's default set (so a tool cached here but not built on a
/// fresh machine is not found here either), else the cache. Every test starts its external
/// binaries through this function; scripts/check-tools.sh holds the names to that set.
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("FLOWPLANE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join("bin"));
    let path = dir.join(name);
    if !path.exists() {
        script(&["install-tools.sh"]);
    }
    assert!(
        path.exists(),
        "{name} is not in {} (is it in install-tools.sh's DEFAULT_TOOLS?)",
        dir.display()
    );
    path
}

fn read_env_file(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).expect("read env file");
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The admin's (`system:masters`) configuration of the local control plane.
pub async fn admin_config() -> Config {
    let env = local_env();
    let kubeconfig = Kubeconfig::read_from(&env.kubeconfig).expect("read kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig to config")
}

/// An admin client for the local control plane, with the flowplane CRDs installed and
/// Established. Test setup uses it; the operator does not (see [`operator_config`]).
pub async fn client() -> Client {
    let client = Client::try_from(admin_config().await).expect("client");
    install_crds(&client).await;
    client
}

/// Kubernetes version the chart is rendered for.
pub const KUBE_VERSION: &str = "v1.37.2";
/// Namespace of the chart "release" whose ServiceAccount the in-process operator runs as.
pub const OPERATOR_NAMESPACE: &str = "flowplane-tests-system";
/// Name of that ServiceAccount (and of the chart's ClusterRole and bindings).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "flowplane-tests";

/// The worker image the in-process operator deploys, which the chart's admission policy is
/// rendered to allow.
pub const WORKER_IMAGE_REPOSITORY: &str = "flowplane";
pub const WORKER_IMAGE_TAG: &str = "test";
pub const WORKER_IMAGE: &str = "flowplane:test";

/// The user the API server sees for the chart's ServiceAccount.
pub fn operator_user() -> String {
    format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}")
}

/// Runs the verdicts tool (tests/verdicts) with `args` on `input`; one (status, message) per
/// line it prints.
fn verdicts(args: &[&str], input: &str) -> Vec<(String, String)> {
    use std::io::Write;
    let mut child = Command::new(tool("flowplane-verdicts"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn flowplane-verdicts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "flowplane-verdicts {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (status, message) = line.split_once('\t').unwrap_or((line, ""));
            (status.to_string(), message.to_string())
        })
        .collect()
}

/// What kstatus (sigs.k8s.io/cli-utils, what Flux waits on) says of each object: its status
/// (Current, InProgress, Failed, ...) and message.
pub fn kstatus(objects: &[serde_json::Value]) -> Vec<(String, String)> {
    verdicts(&["kstatus"], &serde_json::to_string(objects).unwrap())
}

/// The health Argo CD computes for `object` with the health script, in Argo CD's Lua runtime.
pub fn argocd_health(
    script: &Path,
    object: &serde_json::Value,
    open_libs: bool,
) -> (String, String) {
    let script = script.to_string_lossy();
    let mut args = vec!["argocd", script.as_ref()];
    if open_libs {
        args.push("--open-libs");
    }
    verdicts(&args, &object.to_string()).remove(0)
}

/// Runs helm; returns (success, stdout, stderr).
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tool("helm"))
        .args(args)
        .output()
        .expect("spawn helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Renders the chart's ServiceAccount, RBAC and admission policy (`helm template` in the
/// explicit cluster-wide mode, since tests make namespaces of their own; the worker image
/// [`WORKER_IMAGE`]) and applies them as admin; once per test process (server-side apply, so
/// concurrent test binaries agree). Every request of the in-process operator then passes the
/// chart's RBAC and its ValidatingAdmissionPolicy, or the test fails.
pub fn install_operator_rbac() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let namespace =
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OPERATOR_NAMESPACE}\n");
        let apply = [
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=flowplane-tests",
            "-f",
            "-",
        ];
        let (ok, out, err) = kubectl(&apply, Some(&namespace));
        assert!(ok, "create {OPERATOR_NAMESPACE}:\n{out}\n{err}");
        let chart = repo_root().join("charts/flowplane");
        let (ok, rendered, err) = helm(&[
            "template",
            OPERATOR_SERVICE_ACCOUNT,
            chart.to_str().unwrap(),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--set",
            &format!("fullnameOverride={OPERATOR_SERVICE_ACCOUNT}"),
            "--set",
            "clusterWide=true",
            "--set",
            &format!("worker.image.repository={WORKER_IMAGE_REPOSITORY}"),
            "--set",
            &format!("worker.image.tag={WORKER_IMAGE_TAG}"),
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/admission-policy.yaml",
        ]);
        assert!(ok, "helm template of the chart's RBAC failed:\n{err}");
        assert!(rendered.contains("kind: ClusterRole\n"), "{rendered}");
        assert!(
            rendered.contains("kind: ValidatingAdmissionPolicy\n"),
            "{rendered}"
        );
        let (ok, out, err) = kubectl(&apply, Some(&rendered));
        assert!(ok, "applying the chart's RBAC failed:\n{out}\n{err}");
    });
}

/// The configuration the operator runs with in tests: the admin's credentials impersonating
/// the chart's ServiceAccount (user and the groups the API server gives a ServiceAccount), so
/// every request is authorized by the chart's RBAC and nothing else.
pub async fn operator_config() -> Config {
    install_operator_rbac();
    let mut config = admin_config().await;
    config.auth_info.impersonate = Some(operator_user());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{OPERATOR_NAMESPACE}"),
        "system:authenticated".into(),
    ]);
    config
}

/// A client with the chart's ServiceAccount permissions (see [`operator_config`]).
pub async fn operator_client() -> Client {
    Client::try_from(operator_config().await).expect("client")
}

/// Applies the generated CRDs (server-side apply) and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("flowplane-tests").force();
    for crd in flowplane::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established in 30s"))
        .unwrap();
    }
}

/// A namespace of its own for one test, deleted (by the namespace controller) on drop.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "{prefix}-{:x}{:x}{}",
            std::process::id() % 0xffff,
            nanos % 0xfffff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([("flowplane.io/test".to_string(), "true".to_string())].into());
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    // Drop is synchronous and the client's connection task lives on the test's runtime, which
    // is blocked here; kubectl deletes without it. The namespace controller finishes the job.
    fn drop(&mut self) {
        // Pods bound by the fake kubelet would wait forever for a kubelet to confirm.
        let _ = kubectl(
            &[
                "delete",
                "pods",
                "--all",
                "-n",
                &self.name,
                "--grace-period=0",
                "--force",
            ],
            None,
        );
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// Server-side applies one object from YAML into `namespace` (field manager `flowplane-tests`).
/// ConnectorBindings `erp` (OData) and `forecasting` (REST) at a port nothing answers: for
/// tests of the operator, where no data moves.
pub const UNREACHABLE_BINDINGS: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: erp}
spec: {system: Erp, protocol: OData, endpoint: {url: "http://127.0.0.1:9/odata"}}
---
apiVersion: flowplane.io/v1alpha1
kind: ConnectorBinding
metadata: {name: forecasting}
spec: {system: Forecasting, protocol: Rest, endpoint: {url: "http://127.0.0.1:9/api"}}
"#;

/// An optional part of the local environment (`scripts/local-env.sh <name>-up`, e.g. `keda`,
/// `adapter`) for the life of a test; `<name>-down` on drop, whatever happened, so the other
/// tiers see a cluster without it.
pub struct EnvAddon(&'static str);

impl EnvAddon {
    pub fn up(name: &'static str) -> EnvAddon {
        local_env();
        let addon = EnvAddon(name);
        addon.script("up");
        addon
    }

    fn script(&self, action: &str) {
        let command = format!("{}-{action}", self.0);
        let out = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/local-env.sh"))
            .arg(&command)
            .output()
            .expect("run scripts/local-env.sh");
        assert!(
            out.status.success(),
            "local-env.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for EnvAddon {
    fn drop(&mut self) {
        self.script("down");
    }
}

/// The bindings of an order-lines flow on the simulators: `erp` (OData) and `forecasting`
/// (REST, versioned upserts), one YAML document each.
pub fn erp_and_forecasting_bindings(erp_url: &str, forecast_url: &str) -> [String; 2] {
    [
        format!(
            "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {{name: erp}}\nspec: {{system: Erp, protocol: OData, endpoint: {{url: \"{erp_url}\"}}}}\n"
        ),
        format!(
            "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {{name: forecasting}}\nspec:\n  system: Forecasting\n  protocol: Rest\n  endpoint: {{url: \"{forecast_url}\"}}\n  rest: {{write: {{method: POST, body: VersionedUpsert}}}}\n"
        ),
    ]
}

/// The worker configuration the operator rendered for `flow` (its `<flow>-worker-config`
/// ConfigMap), if there is one yet.
pub async fn rendered_worker_config(
    client: &Client,
    ns: &str,
    flow: &str,
) -> Option<flowplane::worker_config::WorkerConfig> {
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&format!("{flow}-worker-config"))
        .await
        .ok()??;
    serde_json::from_str(cm.data?.get(flowplane::worker_config::CONFIG_FILE)?).ok()
}

/// The smallest DataContract `name` (and domain) 1.0.0: one required String field `key`, the
/// primary key.
pub fn minimal_contract(name: &str, key: &str) -> String {
    format!(
        r#"
apiVersion: flowplane.io/v1alpha1
kind: DataContract
metadata: {{name: {name}}}
spec:
  domain: {name}
  version: 1.0.0
  owner: {{team: demand-planning}}
  schema:
    primaryKey: [{key}]
    fields:
    - {{name: {key}, type: String, required: true}}
"#
    )
}

/// Samples the lag (`sample` says it as text) and the replicas of `deployment` every 5 s,
/// printing each sample as `{label} timeline: ...`, until `done` holds for the replica count;
/// fails after `secs`. The autoscaling tiers' record of lag and workers over time.
pub async fn replica_timeline(
    (label, phase): (&str, &str),
    secs: u64,
    started: std::time::Instant,
    deployment: (&Api<k8s_openapi::api::apps::v1::Deployment>, &str),
    sample: impl AsyncFn() -> String,
    done: impl Fn(i32) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let lag = sample().await;
        let replicas = deployment
            .0
            .get(deployment.1)
            .await
            .ok()
            .and_then(|d| d.spec.replicas)
            .unwrap_or(0);
        println!(
            "{label} timeline: t={:>4}s phase={phase} {lag} replicas={replicas}",
            started.elapsed().as_secs()
        );
        if done(replicas) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{phase}: {replicas} workers after {secs}s"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The order-lines contract the end-to-end tiers share: keyed by sales order and item, other
/// source fields ignored, with `extra_fields` (YAML list items, one per line) after the key.
pub fn order_lines_contract(extra_fields: &[&str]) -> String {
    let mut fields = String::from(
        "    - {name: salesOrder, type: String, required: true}\n    - {name: salesOrderItem, type: String, required: true}\n",
    );
    for field in extra_fields {
        fields.push_str(&format!("    - {field}\n"));
    }
    format!(
        r#"
apiVersion: flowplane.io/v1alpha1
kind: DataContract
metadata: {{name: order-lines}}
spec:
  domain: sales-order-lines
  version: 1.0.0
  owner: {{team: demand-planning}}
  schema:
    primaryKey: [salesOrder, salesOrderItem]
    additionalFields: Ignore
    fields:
{fields}"#
    )
}

/// A contract of `examples/base/contracts/` as the flow controller resolves it.
pub fn example_contract(file: &str) -> flowplane::render::ResolvedContract {
    let text =
        std::fs::read_to_string(repo_root().join("examples/base/contracts").join(file)).unwrap();
    let dc: flowplane::api::DataContract = serde_yaml::from_str(&text).unwrap();
    flowplane::render::ResolvedContract {
        name: dc.metadata.name.clone().unwrap(),
        version: dc.spec.version.clone(),
        schema_hash: flowplane::contract::canonical::schema_hash(&dc.spec.schema),
        schema: dc.spec.schema.clone(),
        quality: dc.spec.quality.clone(),
        sla: dc.spec.sla.clone(),
    }
}

pub async fn apply_yaml<K>(client: &Client, namespace: &str, yaml: &str) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object: K = serde_yaml::from_str(yaml).unwrap();
    let name = object.meta().name.clone().unwrap();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply("flowplane-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}

/// Runs kubectl against the local control plane; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let env = local_env();
    let mut cmd = Command::new(tool("kubectl"));
    cmd.arg("--kubeconfig").arg(&env.kubeconfig).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The operator, running in-process on a runtime of its own (so it outlives each test's
/// runtime), once per test binary, against the local control plane and NATS, with the chart's
/// ServiceAccount permissions ([`operator_config`]), not as admin. `writes` counts every
/// non-GET request its client makes.
pub struct Operator {
    pub writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The most recent write requests (method and path), to explain a failing count.
    pub recent_writes: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    /// Every request the API server's authorizer refused (method, path and message): what
    /// the chart's RBAC does not grant but the operator tried.
    pub forbidden: Forbidden,
}

/// Requests refused by RBAC, shared with the client's service stack.
pub type Forbidden = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The operator's requests the API server refused (empty when no operator runs here).
pub fn operator_forbidden() -> Vec<String> {
    OPERATOR
        .get()
        .map(|o| o.forbidden.lock().unwrap().clone())
        .unwrap_or_default()
}

/// A tower layer that records every request the API server's authorizer refused (403 with
/// "cannot <verb> resource"), with the refusal. A 403 from admission (e.g. creating in a
/// namespace being terminated, which happens when a test's namespace goes away under the
/// operator) is not an RBAC refusal and is not recorded.
#[derive(Clone)]
pub struct RecordForbidden(pub Forbidden);

impl<S> tower::Layer<S> for RecordForbidden {
    type Service = RecordForbiddenService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordForbiddenService {
            inner,
            log: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RecordForbiddenService<S> {
    inner: S,
    log: Forbidden,
}

type MaybeRead<B> = http_body_util::Either<B, http_body_util::Full<bytes::Bytes>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RecordForbiddenService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
{
    type Response = http::Response<MaybeRead<ResBody>>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        use http_body_util::BodyExt;
        let what = format!("{} {}", req.method(), req.uri());
        let log = self.log.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if response.status() != http::StatusCode::FORBIDDEN {
                return Ok(response.map(http_body_util::Either::Left));
            }
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            if text.contains("cannot ") && !text.contains("being terminated") {
                let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| text.into_owned());
                log.lock().unwrap().push(format!("{what}: {message}"));
            }
            Ok(http::Response::from_parts(
                parts,
                http_body_util::Either::Right(http_body_util::Full::new(bytes)),
            ))
        })
    }
}

static OPERATOR: OnceLock<Operator> = OnceLock::new();

/// The one loopback address the in-process operator's health probes may reach (an explicit
/// allow, as local development needs; see docs/security.md).
pub const PROBE_ALLOWED_HOST: &str = "127.0.0.2";

pub fn operator() -> &'static Operator {
    OPERATOR.get_or_init(|| {
        let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = writes.clone();
        let recent_writes =
            std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let recent = recent_writes.clone();
        let forbidden = Forbidden::default();
        let record_forbidden = RecordForbidden(forbidden.clone());
        let env = local_env();
        let nats_url = env.nats_url.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // CRDs are the installer's business (admin); the operator only reads them.
                install_crds(&Client::try_from(admin_config().await).unwrap()).await;
                let config = operator_config().await;
                let api_server_url = config.cluster_url.to_string();
                let count = tower::util::MapRequestLayer::new(
                    move |req: http::Request<kube::client::Body>| {
                        if req.method() != http::Method::GET {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let mut recent = recent.lock().unwrap();
                            recent.push_back(format!("{} {}", req.method(), req.uri().path()));
                            if recent.len() > 20 {
                                recent.pop_front();
                            }
                        }
                        req
                    },
                );
                let client = kube::client::ClientBuilder::try_from(config)
                    .unwrap()
                    .with_layer(&count)
                    .with_layer(&record_forbidden)
                    .build();
                let settings = flowplane::controller::OperatorConfig {
                    region: None,
                    nats_url,
                    nats_creds_file: None,
                    nats_signer_dir: Some(env.nats_signer_dir.clone()),
                    nats_ca_file: Some(env.nats_ca.clone()),
                    nats_monitoring_endpoint: env.nats_monitoring_endpoint.clone(),
                    worker_image: WORKER_IMAGE.into(),
                    http_addr: "127.0.0.1:0".parse().unwrap(),
                    resync_seconds: 5,
                    resync_per_second: 10.0,
                    queue_replicas: 1,
                    queue_max_bytes: flowplane::api::integration_flow::DEFAULT_QUEUE_MAX_BYTES,
                    watch_namespaces: Vec::new(),
                    // Health probes reach loopback only at 127.0.0.2, where the probe tests
                    // listen ([`PROBE_ALLOWED_HOST`]): every other loopback address, the API
                    // server and the Service range stay refused, as in a cluster.
                    probe: flowplane::controller::connector_binding::policy::ProbePolicyConfig {
                        allow_cidrs: vec![format!("{PROBE_ALLOWED_HOST}/32").parse().unwrap()],
                        deny_cidrs: Vec::new(),
                        min_interval_seconds: 1,
                        api_server_urls: vec![api_server_url],
                    },
                };
                let ctx = flowplane::controller::Context::new(client, settings)
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                flowplane::controller::run(ctx).await.unwrap();
            });
        });
        ready_rx.recv().expect("operator started");
        Operator {
            writes,
            recent_writes,
            forbidden,
        }
    })
}

/// Polls `check` until it returns Some, or fails the test after `secs` seconds with `what`.
/// Also fails as soon as the API server has refused any request of the in-process operator:
/// the operator runs with the chart's RBAC, and every scenario must pass within it.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let forbidden = operator_forbidden();
        assert!(
            forbidden.is_empty(),
            "the chart's RBAC (charts/flowplane/templates/rbac.yaml) refused the operator's \
             requests while waiting for {what}: {forbidden:?}"
        );
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Does what a kubelet would for the pods matching `selector` in `namespace`: binds them to a
/// fake Node and reports them Running and Ready. Waits until at least one such pod exists.
pub async fn fake_kubelet(client: &Client, namespace: &str, selector: &str) {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::ListParams;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "fake-node", "labels": {"kubernetes.io/hostname": "fake-node"}}
    }))
    .unwrap();
    nodes
        .patch(
            "fake-node",
            &PatchParams::apply("fake-kubelet").force(),
            &Patch::Apply(&node),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = eventually(60, "worker pods", || async {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        (!list.items.is_empty()).then_some(list)
    })
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap();
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .is_none()
        {
            let binding = serde_json::json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": "fake-node"}
            });
            let request = http::Request::post(format!(
                "/api/v1/namespaces/{namespace}/pods/{name}/binding"
            ))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&binding).unwrap())
            .unwrap();
            client.request_text(request).await.unwrap();
        }
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| serde_json::json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}}))
            .collect();
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now}
            ],
            "containerStatuses": containers,
            "startTime": now
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
}
