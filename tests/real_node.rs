//! The real-node tier: the image built by scripts/build-image.sh, a kubelet with containerd and
//! runc (`scripts/local-env.sh up --with-node`, an environment of its own so the rest of the
//! suite keeps its node-less control plane), the operator installed by the Helm chart as a pod,
//! and the example flows' workers as pods in a namespace that enforces the restricted Pod
//! Security profile. Data moves from the ERP simulator through NATS to the forecasting
//! simulator and is counted there, exactly, while the workers are scaled, deleted mid-run and
//! rolled by a Secret rotation; deleting the flow removes its pods.
//!
//! It assumes what local-env.sh gives in node mode: NATS at $NATS_URL on the bridge address,
//! with TLS and per-flow users (the chart gets the account's signing key and the CA), and the
//! API server on the same address.

mod e2e_support;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e_support::eventually;
use flowplane::sim::erp::{ErpSeed, ErpState, SALES_ORDER_LINES, sales_order_line};
use flowplane::sim::faults::FaultSpec;
use flowplane::sim::forecast::ForecastState;
use serde_json::Value;

const NS: &str = "flowplane-eu";
const OPERATOR_NS: &str = "flowplane-system";
const ORDERS: &str = "order-history-to-forecasting";
const ENTITY: &str = "sales-history";
const LINES: u32 = 600;
const BAD_EVERY: u32 = 30;
const MORE_LINES: u32 = 400;

/// The node environment: started by this test, stopped when it ends (pass or fail).
struct NodeEnv {
    state: PathBuf,
    vars: HashMap<String, String>,
}

impl NodeEnv {
    fn up() -> NodeEnv {
        // Beside the suite's environment, never in it: its pods would land on this node.
        let base = std::env::var("FLOWPLANE_STATE").unwrap_or_else(|_| {
            let name = std::env::var("FLOWPLANE_ENV_NAME").unwrap_or_else(|_| "default".into());
            support::cache_dir()
                .join("run")
                .join(name)
                .display()
                .to_string()
        });
        let state = PathBuf::from(format!("{base}-node"));
        let out = Command::new("bash")
            .arg(support::repo_root().join("scripts/local-env.sh"))
            .args(["up", "--with-node"])
            .env("FLOWPLANE_STATE", &state)
            .output()
            .expect("run scripts/local-env.sh up --with-node");
        // Stopped on drop from here on, even when `up` failed half-way.
        let mut env = NodeEnv {
            state,
            vars: HashMap::new(),
        };
        assert!(
            out.status.success(),
            "scripts/local-env.sh up --with-node failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = String::from_utf8_lossy(&out.stdout).trim().to_string();
        env.vars = std::fs::read_to_string(&file)
            .expect("read the node env file")
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        env
    }

    fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the node env file"))
    }

    /// kubectl against the node environment; stdout, or a failure naming the command.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.try_kubectl(args, stdin);
        assert!(ok, "kubectl {} failed: {err}", args.join(" "));
        out
    }

    fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        run(
            Command::new(support::tool("kubectl"))
                .arg("--kubeconfig")
                .arg(self.var("KUBECONFIG"))
                .args(args),
            stdin,
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all, None)).expect("kubectl JSON")
    }

    /// The object, or None while it does not exist (or kubectl fails).
    fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let (ok, out, _) = self.try_kubectl(&all, None);
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    }
}

impl Drop for NodeEnv {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(support::repo_root().join("scripts/local-env.sh"))
            .arg("down")
            .env("FLOWPLANE_STATE", &self.state)
            .status();
    }
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The simulators, in this process, on the bridge address (where pods can reach them).
struct Sims {
    erp: std::sync::Arc<ErpState>,
    forecast: std::sync::Arc<ForecastState>,
    erp_url: String,
    forecast_url: String,
    portal_url: String,
}

async fn start_sims(host: &str) -> Sims {
    let erp = ErpState::new(&ErpSeed {
        order_lines: LINES,
        inventory: 0,
        returns: 0,
        bad_every: BAD_EVERY,
        page_size: 100,
    });
    let forecast = ForecastState::new();
    // The loop's flows have something to read (their counts are checked in tests/e2e_loop.rs).
    forecast.proposals.publish(20);
    let erp_listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let forecast_listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let portal_listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let sims = Sims {
        erp: erp.clone(),
        forecast: forecast.clone(),
        erp_url: format!("http://{}/odata", erp_listener.local_addr().unwrap()),
        forecast_url: format!("http://{}", forecast_listener.local_addr().unwrap()),
        portal_url: format!("http://{}", portal_listener.local_addr().unwrap()),
    };
    tokio::spawn(async move { flowplane::sim::erp::serve(erp_listener, erp).await });
    tokio::spawn(async move { flowplane::sim::forecast::serve(forecast_listener, forecast).await });
    tokio::spawn(async move {
        flowplane::sim::portal::serve(portal_listener, flowplane::sim::portal::PortalState::new())
            .await
    });
    sims
}

/// The worker pods of `flow` not being deleted: (name, phase, ready).
fn worker_pods(env: &NodeEnv, flow: &str) -> Vec<(String, String, bool)> {
    let selector = format!("flowplane.io/flow={flow},app.kubernetes.io/component=worker");
    env.json(&["get", "pods", "-n", NS, "-l", &selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["status"]["phase"].as_str().unwrap_or("").to_string(),
                ready,
            )
        })
        .collect()
}

/// Waits until `flow` has exactly `count` worker pods, all Running and Ready; their names.
async fn workers_ready(env: &NodeEnv, flow: &str, count: usize, what: &str) -> BTreeSet<String> {
    eventually(Duration::from_secs(180), what, || async {
        let pods = worker_pods(env, flow);
        (pods.len() == count
            && pods
                .iter()
                .all(|(_, phase, ready)| phase == "Running" && *ready))
        .then(|| pods.into_iter().map(|(name, _, _)| name).collect())
    })
    .await
}

async fn delivered_exactly(sims: &Sims, applied: u64, what: &str) {
    eventually(Duration::from_secs(180), what, || async {
        let report = sims.forecast.received(ENTITY);
        (report.applied() >= applied).then_some(())
    })
    .await;
    let report = sims.forecast.received(ENTITY);
    assert_eq!(
        report.applied(),
        applied,
        "{what}: records applied at the simulator"
    );
    assert_eq!(report.duplicates(), 0, "{what}: no record arrived twice");
}

fn demo_manifests(env: &NodeEnv, sims: &Sims) -> String {
    let rendered = env.kubectl(
        &[
            "kustomize",
            &repo("examples/overlays/demo").display().to_string(),
        ],
        None,
    );
    rendered
        .replace("http://127.0.0.1:18081/odata", &sims.erp_url)
        .replace("http://127.0.0.1:18082", &sims.forecast_url)
        .replace("http://127.0.0.1:18083", &sims.portal_url)
        .replace("nats://127.0.0.1:14222", env.var("NATS_URL"))
}

fn repo(path: &str) -> PathBuf {
    support::repo_root().join(path)
}

fn restricted_namespace(env: &NodeEnv, name: &str) {
    env.kubectl(&["create", "namespace", name], None);
    env.kubectl(
        &[
            "label",
            "namespace",
            name,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ],
        None,
    );
}

fn helm_install(env: &NodeEnv) {
    let image = env.var("FLOWPLANE_IMAGE");
    let (repository, tag) = image.rsplit_once(':').expect("image name:tag");
    let api = env.var("KUBECONFIG").to_string();
    let server = std::fs::read_to_string(&api)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server: https://")
                .map(str::to_string)
        })
        .expect("server in kubeconfig");
    let (api_host, api_port) = server.rsplit_once(':').unwrap();
    let nats = env.var("NATS_URL");
    let monitoring = env.var("NATS_MONITOR_URL").trim_start_matches("http://");
    // NATS with auth and TLS: the account's signing key (the operator issues its own user and
    // one per flow) and the server's CA, as `flowplane nats-bootstrap` and local-env made them.
    let signer_dir = PathBuf::from(env.var("FLOWPLANE_NATS_SIGNER_DIR"));
    let file = |name: &str| format!("--from-file={name}={}", signer_dir.join(name).display());
    env.kubectl(
        &[
            "create",
            "secret",
            "generic",
            "flowplane-nats-signer",
            "-n",
            OPERATOR_NS,
            &file("account-signer.nk"),
            &file("account.pub"),
        ],
        None,
    );
    let ca = format!("--from-file=ca.crt={}", env.var("FLOWPLANE_NATS_CA"));
    env.kubectl(
        &[
            "create",
            "secret",
            "generic",
            "flowplane-nats-ca",
            "-n",
            OPERATOR_NS,
            &ca,
        ],
        None,
    );
    let node_ip = env.var("FLOWPLANE_NODE_IP");
    // No kube-proxy: the operator reaches the API server on the bridge address, not through
    // the kubernetes Service's cluster IP. The simulators' health checks go to the node's own
    // address, which the SSRF guard refuses unless allowed.
    let values = format!(
        "replicaCount: 1\n\
         image: {{repository: {repository}, tag: {tag}, pullPolicy: Never}}\n\
         nats: {{url: \"{nats}\", monitoringEndpoint: \"{monitoring}\", queueReplicas: 1, \
         accountSigner: {{existingSecret: flowplane-nats-signer}}, \
         ca: {{existingSecret: flowplane-nats-ca, key: ca.crt}}}}\n\
         watchNamespaces: [{NS}]\n\
         ssrf: {{allowCIDRs: [\"{node_ip}/32\"]}}\n\
         resyncSeconds: 10\n\
         extraEnv:\n\
         - {{name: KUBERNETES_SERVICE_HOST, value: \"{api_host}\"}}\n\
         - {{name: KUBERNETES_SERVICE_PORT, value: \"{api_port}\"}}\n"
    );
    let values_file = env.state.join("chart-values.yaml");
    std::fs::write(&values_file, values).unwrap();
    let (ok, out, err) = run(
        Command::new(support::tool("helm"))
            .arg("--kubeconfig")
            .arg(env.var("KUBECONFIG"))
            .args(["install", "flowplane"])
            .arg(repo("charts/flowplane"))
            .args(["-n", OPERATOR_NS, "--wait", "--timeout", "180s", "-f"])
            .arg(&values_file),
        None,
    );
    if !ok {
        let pods = env
            .try_kubectl(&["describe", "pods", "-n", OPERATOR_NS], None)
            .1;
        let logs = env
            .try_kubectl(
                &[
                    "logs",
                    "-n",
                    OPERATOR_NS,
                    "-l",
                    "app.kubernetes.io/name=flowplane",
                    "--tail",
                    "30",
                ],
                None,
            )
            .1;
        panic!("helm install failed: {out}{err}\n{pods}\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_and_the_flows_run_as_real_pods_and_move_data_exactly_once() {
    let env = NodeEnv::up();
    let node_ip = env.var("FLOWPLANE_NODE_IP").to_string();

    // The operator, installed by the chart from the image built by scripts/build-image.sh,
    // acting only in the flows' namespace (made first: the chart's Role lives there).
    restricted_namespace(&env, OPERATOR_NS);
    restricted_namespace(&env, NS);
    helm_install(&env);
    let operator = env.json(&[
        "get",
        "pods",
        "-n",
        OPERATOR_NS,
        "-l",
        "app.kubernetes.io/name=flowplane",
    ]);
    let operator = &operator["items"][0];
    assert_eq!(
        operator["spec"]["containers"][0]["image"],
        env.var("FLOWPLANE_IMAGE")
    );
    assert_eq!(operator["spec"]["nodeName"], env.var("FLOWPLANE_NODE_NAME"));
    // kubectl logs goes through the API server to the kubelet on the bridge address.
    let name = operator["metadata"]["name"].as_str().unwrap();
    let logs = env.kubectl(&["logs", "-n", OPERATOR_NS, name], None);
    assert!(!logs.trim().is_empty(), "the operator pod's log is empty");

    // The example flows, pointed at the simulators, in a restricted namespace.
    let sims = start_sims(&node_ip).await;
    env.kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&demo_manifests(&env, &sims)),
    );
    env.kubectl(
        &[
            "apply",
            "--server-side",
            "-n",
            NS,
            "-f",
            &repo("examples/local-secrets").display().to_string(),
        ],
        None,
    );
    let flows: Vec<String> = env.json(&["get", "integrationflows", "-n", NS])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(flows.contains(&ORDERS.to_string()), "flows: {flows:?}");
    // As many as each flow's Deployment wants (minReplicas: without a metrics API there is no
    // autoscaler), every one Ready.
    for flow in &flows {
        eventually(
            Duration::from_secs(180),
            &format!("{flow}'s worker pods Running and Ready"),
            || async {
                let deployment =
                    env.try_json(&["get", "deployment", &format!("{flow}-worker"), "-n", NS])?;
                let wanted = deployment["spec"]["replicas"].as_u64()? as usize;
                let pods = worker_pods(&env, flow);
                (wanted > 0
                    && pods.len() == wanted
                    && pods
                        .iter()
                        .all(|(_, phase, ready)| phase == "Running" && *ready))
                .then_some(())
            },
        )
        .await;
    }

    // ERP -> NATS -> forecasting: every good line once; every bad one dead-lettered.
    let good = u64::from(LINES - LINES / BAD_EVERY);
    delivered_exactly(&sims, good, "the first extraction").await;
    let dead_letters = || async {
        let flow = env.json(&["get", "integrationflow", ORDERS, "-n", NS]);
        flow["status"]["sync"]["deadLetters"].as_u64()
    };
    let bad = u64::from(LINES / BAD_EVERY);
    eventually(
        Duration::from_secs(60),
        "the dead letters in the flow's status",
        || async { (dead_letters().await == Some(bad)).then_some(()) },
    )
    .await;

    // kubectl scale sets the number of worker pods.
    env.kubectl(&["scale", "iflow", ORDERS, "-n", NS, "--replicas=2"], None);
    let before = workers_ready(&env, ORDERS, 2, "two worker pods after kubectl scale").await;

    // A worker pod deleted while records are on their way: nothing lost, nothing twice.
    sims.forecast.faults.set(FaultSpec {
        latency_ms: 1500,
        ..FaultSpec::default()
    });
    for i in LINES..LINES + MORE_LINES {
        sims.erp
            .upsert(SALES_ORDER_LINES, sales_order_line(i, None));
    }
    eventually(
        Duration::from_secs(120),
        "the new lines starting to arrive",
        || async { (sims.forecast.received(ENTITY).applied() > good).then_some(()) },
    )
    .await;
    let victim = before.iter().next().unwrap().clone();
    println!(
        "deleting worker pod {victim} with {} of {} records applied",
        sims.forecast.received(ENTITY).applied(),
        good + u64::from(MORE_LINES)
    );
    env.kubectl(&["delete", "pod", &victim, "-n", NS, "--wait=false"], None);
    sims.forecast.faults.clear();
    delivered_exactly(
        &sims,
        good + u64::from(MORE_LINES),
        "after deleting a worker pod mid-run",
    )
    .await;
    let after_delete = workers_ready(&env, ORDERS, 2, "the deleted worker replaced").await;
    assert!(!after_delete.contains(&victim));

    // Rotating the ERP binding's Secret in place rolls the workers that mount it.
    env.kubectl(
        &[
            "patch",
            "secret",
            "erp-s4-communication-user",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"stringData":{"password":"rotated"}}"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(180),
        "new worker pods after the Secret rotation",
        || async {
            let pods = worker_pods(&env, ORDERS);
            (pods.len() == 2
                && pods.iter().all(|(name, phase, ready)| {
                    !after_delete.contains(name) && phase == "Running" && *ready
                }))
            .then_some(())
        },
    )
    .await;

    // Deleting the flow removes its pods.
    env.kubectl(&["delete", "iflow", ORDERS, "-n", NS], None);
    let selector = format!("flowplane.io/flow={ORDERS}");
    eventually(Duration::from_secs(120), "the flow's pods gone", || async {
        let pods = env.json(&["get", "pods", "-n", NS, "-l", &selector]);
        pods["items"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
}
