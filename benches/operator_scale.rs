//! Operator at scale (run by scripts/bench-operator.sh, not a test): applies N flows and
//! reports the time until every flow's children exist and its status has the current
//! observedGeneration with QueueReady=True, against a plain server-side-apply loop of the same object count in the
//! same run (the floor); then write requests during 60 s of idleness and the operator's peak RSS.
//!
//! Environment: KUBECONFIG, FLOWPLANE_BIN (release binary), NATS_URL, FLOWS (default 1000);
//! SKIP_FLOOR=1 measures the operator alone (no floor phase, so no ratio): at 10,000 flows the
//! floor's 70,000 objects and their deletion take longer than the operator's run.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use serde::Deserialize;

use flowplane::api::IntegrationFlow;
use flowplane::api::integration_flow::IntegrationFlowStatus;
use flowplane::controller::conditions::Desired;
use flowplane::controller::integration_flow::dereference::QueueState;
use flowplane::controller::integration_flow::status;
use flowplane::queue::StreamHealth;
use flowplane::render::scaling::Autoscaler;

const CONCURRENCY: usize = 16;
/// Each flow stream's bound: 10,000 flows' 20,000 streams reserve 320 GiB of the local
/// environment's 1 TB.
const QUEUE_MAX_BYTES: u64 = 16 << 20;

/// The bindings and contract every flow uses.
fn references() -> Vec<serde_json::Value> {
    vec![
        json!({"apiVersion": "flowplane.io/v1alpha1", "kind": "ConnectorBinding", "metadata": {"name": "erp"},
            "spec": {"system": "Erp", "protocol": "OData", "endpoint": {"url": "http://127.0.0.1:9/odata"}}}),
        json!({"apiVersion": "flowplane.io/v1alpha1", "kind": "ConnectorBinding", "metadata": {"name": "forecasting"},
            "spec": {"system": "Forecasting", "protocol": "Rest", "endpoint": {"url": "http://127.0.0.1:9/api"}}}),
        json!({"apiVersion": "flowplane.io/v1alpha1", "kind": "DataContract", "metadata": {"name": "orders"},
            "spec": {"domain": "orders", "version": "1.0.0", "owner": {"team": "bench"},
                     "schema": {"primaryKey": ["id"], "fields": [{"name": "id", "type": "String", "required": true}, {"name": "qty", "type": "Int"}]}}}),
    ]
}

/// Every child the operator would apply for the flows, by `flowplane render`'s builders,
/// without owner references (their flows do not exist in the floor's namespace).
fn rendered_children(
    references: &[serde_json::Value],
    flows: usize,
    namespace: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let manifests = references
        .iter()
        .cloned()
        .chain((0..flows).map(flow))
        .map(|m| serde_json::to_string(&m))
        .collect::<Result<Vec<_>, _>>()?
        .join("\n---\n");
    let file = std::env::temp_dir().join(format!("flowplane-bench-{}.yaml", std::process::id()));
    std::fs::write(&file, manifests)?;
    // As the operator the benchmark starts runs: default image, this environment's NATS.
    let args = flowplane::render::cli::RenderArgs {
        files: vec![file.clone()],
        keda: false,
        external_metrics: false,
        prometheus_operator: false,
        worker_image: "ghcr.io/flowplane/flowplane:0.1.0".into(),
        nats_url: std::env::var("NATS_URL")?,
        nats_identity: true,
        nats_tls: true,
        queue_replicas: 1,
        queue_max_bytes: flowplane::api::integration_flow::DEFAULT_QUEUE_MAX_BYTES,
        nats_account: "$G".into(),
        namespace: namespace.into(),
    };
    let rendered = flowplane::render::cli::render(&args);
    std::fs::remove_file(&file)?;
    let mut children = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered?) {
        let mut object = serde_json::Value::deserialize(doc)?;
        if object.is_null() {
            continue;
        }
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("ownerReferences");
        }
        children.push(object);
    }
    Ok(children)
}

/// CPU time of the processes that share the machine: the control plane and NATS (pid files
/// of scripts/local-env.sh), and the operator once started.
struct CpuAccount {
    processes: Vec<(String, u32)>,
    last: HashMap<String, f64>,
}

impl CpuAccount {
    fn new() -> anyhow::Result<Self> {
        let state = std::path::PathBuf::from(std::env::var("FLOWPLANE_STATE")?);
        let mut processes = Vec::new();
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "nats-server",
        ] {
            let pid = std::fs::read_to_string(state.join(format!("{name}.pid")))?;
            processes.push((name.to_string(), pid.trim().parse()?));
        }
        let mut account = CpuAccount {
            processes,
            last: HashMap::new(),
        };
        account.since_last()?;
        Ok(account)
    }

    fn add(&mut self, name: &str, pid: u32) {
        self.processes.push((name.to_string(), pid));
        self.last.insert(name.to_string(), 0.0);
    }

    /// CPU seconds each process used since the previous call (control plane first).
    fn since_last(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        let mut used = Vec::new();
        for (name, pid) in &self.processes {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            // Fields after the command name: utime and stime are the 12th and 13th.
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
            let seconds = ticks / 100.0;
            let before = self.last.insert(name.clone(), seconds).unwrap_or(0.0);
            used.push((name.clone(), seconds - before));
        }
        Ok(used)
    }
}

/// The apiserver's own account of its request time, by verb and resource, and of the watch
/// events it sent, by resource (from its /metrics), so a phase's cost can be attributed.
async fn apiserver_request_seconds(client: &Client) -> anyhow::Result<RequestFigures> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut figures = RequestFigures::new();
    for line in text.lines() {
        // The histogram's sum is the handler time, its count the number of requests; for
        // watch events, the bytes sent and the number of events.
        let (labels, is_count, is_watch_event) =
            if let Some(l) = line.strip_prefix("apiserver_request_duration_seconds_sum{") {
                (l, false, false)
            } else if let Some(l) = line.strip_prefix("apiserver_request_duration_seconds_count{") {
                (l, true, false)
            } else if let Some(l) = line.strip_prefix("apiserver_watch_events_sizes_sum{") {
                (l, false, true)
            } else if let Some(l) = line.strip_prefix("apiserver_watch_events_total{") {
                (l, true, true)
            } else {
                continue;
            };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches(['"', '}']).to_string())
                .unwrap_or_default()
        };
        let (verb, resource, subresource) =
            (label("verb"), label("resource"), label("subresource"));
        if verb == "WATCH" || verb == "CONNECT" {
            continue; // long-running: their duration is how long they stayed open
        }
        let key = match (is_watch_event, subresource.as_str()) {
            // Labelled by resource in recent releases, by kind before.
            (true, _) if resource.is_empty() => format!("{WATCH_EVENTS}{}", label("kind")),
            (true, _) => format!("{WATCH_EVENTS}{resource}"),
            (false, "") => format!("{verb} {resource}"),
            (false, sub) => format!("{verb} {resource}/{sub}"),
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0.0);
        let entry = figures.entry(key).or_insert((0.0, 0.0));
        if is_count {
            entry.1 += value;
        } else {
            entry.0 += value;
        }
    }
    Ok(figures)
}

/// Per verb and resource: handler seconds and requests; per watched resource (keys starting with
/// [`WATCH_EVENTS`]): watch event bytes and events; as kube-apiserver counted them.
type RequestFigures = HashMap<String, (f64, f64)>;

const WATCH_EVENTS: &str = "watch events of ";

/// The differences between two readings, per key: (amount, count).
fn differences(before: &RequestFigures, after: &RequestFigures) -> Vec<(String, f64, f64)> {
    after
        .iter()
        .map(|(k, (amount, count))| {
            let (a0, c0) = before.get(k).copied().unwrap_or((0.0, 0.0));
            (k.clone(), amount - a0, count - c0)
        })
        .collect()
}

/// The largest request-time differences between two readings, each with its request count.
fn top_request_seconds(before: &RequestFigures, after: &RequestFigures) -> String {
    let mut spent: Vec<_> = differences(before, after)
        .into_iter()
        .filter(|(k, seconds, _)| !k.starts_with(WATCH_EVENTS) && *seconds > 0.05)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    spent
        .iter()
        .take(8)
        .map(|(k, seconds, count)| format!("{k} {seconds:.1} s ({count:.0})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resources the apiserver sent the most watch events of between two readings (to every
/// watcher: kube-controller-manager's informers, and the operator's in its phase), with bytes.
fn top_watch_events(before: &RequestFigures, after: &RequestFigures) -> String {
    let mut sent: Vec<_> = differences(before, after)
        .into_iter()
        .filter_map(|(k, bytes, events)| {
            let kind = k.strip_prefix(WATCH_EVENTS)?.to_string();
            (events > 0.0).then_some((kind, bytes, events))
        })
        .collect();
    sent.sort_by(|a, b| b.2.total_cmp(&a.2));
    sent.iter()
        .take(8)
        .map(|(kind, bytes, events)| format!("{kind} {events:.0} ({:.1} MiB)", bytes / 1048576.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn flow(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "flowplane.io/v1alpha1", "kind": "IntegrationFlow",
        "metadata": {"name": format!("flow-{i:04}")},
        "spec": {
            "source": {"bindingRef": "erp", "entity": format!("Entity{i}"), "syncMode": "FullRefresh"},
            "target": {"bindingRef": "forecasting", "entity": "/v1/ingest"},
            "contract": {"name": "orders", "versions": "^1"},
            "scaling": {"minReplicas": 1, "maxReplicas": 3}
        }
    })
}

async fn apply(client: &Client, ns: &str, value: serde_json::Value) -> anyhow::Result<()> {
    let object: kube::api::DynamicObject = serde_json::from_value(value)?;
    let types = object.types.clone().unwrap();
    let gvk = kube::api::GroupVersionKind::try_from(&types)?;
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let name = object.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&object),
    )
    .await?;
    Ok(())
}

/// The floor phase's two clocks: the operator's children alone, and everything the operator
/// phase's clock covers.
struct Floor {
    /// When it started, for matching profiles taken meanwhile (`PROFILE=1`).
    started_unix: u64,
    children: Duration,
    same_objects: Duration,
    /// From the same start until kube-controller-manager has every Deployment's status
    /// current ([`deployments_updated`]), and the CPU each process used after
    /// `same_objects` until then.
    controllers_done: Duration,
    controllers_tail_cpu: HashMap<String, f64>,
    /// The apiserver's request figures at `controllers_done`: the tail's requests, as the
    /// operator phase's are printed.
    requests_at_controllers_done: RequestFigures,
}

/// The objects of flow `i` besides its children, as the operator phase has them: the flow
/// (applied by the benchmark there), its NATS user Secret (the operator's `<flow>-nats`, same
/// labels and sizes, placeholder bytes) and its status (built by the operator's status function
/// for the state of a settled flow of this benchmark), by server-side apply.
async fn apply_rest_of_flow(client: &Client, ns: &str, i: usize) -> anyhow::Result<()> {
    let name = format!("flow-{i:04}");
    apply(client, ns, flow(i)).await?;
    apply(
        client,
        ns,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-nats"), "labels": {
                "app.kubernetes.io/component": "nats", "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": "flowplane", "app.kubernetes.io/name": "flowplane-worker",
                "flowplane.io/flow": name}},
            "type": "Opaque",
            "data": {"ca.crt": "A".repeat(1536), "user.creds": "A".repeat(3700)}
        }),
    )
    .await?;
    let status = json!({
        "apiVersion": "flowplane.io/v1alpha1", "kind": "IntegrationFlow",
        "status": settled_status(ns, i)?,
    });
    Api::<IntegrationFlow>::namespaced(client.clone(), ns)
        .patch_status(
            &name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(())
}

/// The status the operator writes for flow `i` once its queue is made and before its worker
/// is available, built by the operator's own status function from that world.
fn settled_status(ns: &str, i: usize) -> anyhow::Result<IntegrationFlowStatus> {
    let name = format!("flow-{i:04}");
    let mut applied: IntegrationFlow = serde_json::from_value(flow(i))?;
    applied.metadata.namespace = Some(ns.to_string());
    applied.metadata.generation = Some(1);
    let deployment = Deployment {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}-worker")),
            generation: Some(1),
            ..Default::default()
        },
        spec: k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: Some(1),
            ..Default::default()
        },
        status: None,
    };
    Ok(status::build(status::Observed {
        flow: &applied,
        bindings: Desired::new(
            "BindingsReady",
            true,
            "BindingsReady",
            "all bindings are ready",
        ),
        contract: Desired::new(
            "ContractCompatible",
            true,
            "Compatible",
            "running DataContract orders 1.0.0",
        ),
        contract_sla: None,
        contract_version: Some("1.0.0".into()),
        blocked: None,
        queue: Ok(QueueState {
            health: StreamHealth {
                replicas: 1,
                leader: Some("N".repeat(56)),
                followers: Vec::new(),
            },
            ..Default::default()
        }),
        deployment: Some(&deployment),
        autoscaler: Autoscaler::NoMetricsApi,
        operations: Default::default(),
        reports: Default::default(),
        redrive_waits: None,
        pending_approvals: Vec::new(),
        routes: None,
        code_drift: Vec::new(),
        now: k8s_openapi::jiff::Timestamp::now(),
    }))
}

/// The label of everything the operator (and the floor) makes.
const MANAGED: &str = "app.kubernetes.io/managed-by=flowplane";

/// Where `settled` reads the operator's figures for its progress lines.
struct Progress {
    metrics_url: String,
    pid: u32,
}

/// Returns once every flow's status has its current observedGeneration and QueueReady=True,
/// and its Deployment and its two ConfigMaps (worker configuration, rules) exist, plus the
/// contract's history. The flows are watched; the children are listed (metadata only) once
/// the flows are current: a flow's status is written after its children are applied, so
/// watching them too only cost the apiserver two more watchers in this phase alone.
async fn settled(
    client: Client,
    ns: String,
    flows: usize,
    progress_of: Progress,
) -> anyhow::Result<()> {
    let mut flow_events = watcher(
        Api::<IntegrationFlow>::namespaced(client.clone(), &ns),
        Default::default(),
    )
    .applied_objects()
    .map_ok(|f| {
        // Current, and with its queue: a flow whose queue could not be made is not settled.
        let status = f.status.as_ref();
        let current = status.and_then(|s| s.observed_generation) == f.metadata.generation
            && status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "QueueReady" && c.status == "True")
            });
        (f.name_any(), current)
    })
    .boxed();
    let mut current = HashMap::new();
    // How far it got, every 30 s on stderr: at 10,000 flows a run that does not converge in
    // the time limit has no other figures.
    let started = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(30));
    progress.tick().await;
    loop {
        let seen = tokio::select! {
            seen = flow_events.try_next() => seen?,
            _ = progress.tick() => {
                let metrics = reqwest::get(&progress_of.metrics_url).await?.text().await?;
                let resyncs = metrics
                    .lines()
                    .find(|l| l.contains(r#"trigger="resync""#))
                    .and_then(|l| l.rsplit(' ').next())
                    .unwrap_or("0")
                    .to_string();
                eprintln!(
                    "  [{:>5.0} s, load {}] flows seen {}, current {}; operator: {} reconciles ({} resyncs), peak RSS {:.1} MiB",
                    started.elapsed().as_secs_f64(),
                    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').next().unwrap_or(""),
                    current.len(),
                    current.values().filter(|c| **c).count(),
                    flow_reconciles(&metrics),
                    resyncs,
                    peak_rss_mib_of(progress_of.pid),
                );
                continue;
            }
        };
        let Some((name, is_current)) = seen else {
            anyhow::bail!("the flows' watch ended before they settled")
        };
        current.insert(name, is_current);
        if current.values().filter(|c| **c).count() == flows {
            break;
        }
    }
    let managed = ListParams::default().labels(MANAGED);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    loop {
        let made = (
            deployments.list_metadata(&managed).await?.items.len(),
            config_maps.list_metadata(&managed).await?.items.len(),
        );
        if made.0 == flows && made.1 > 2 * flows {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "every flow is current, but only {} Deployments and {} ConfigMaps exist",
            made.0,
            made.1
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}}))?,
    )
    .await?;
    Ok(())
}

/// Whether kube-controller-manager has brought a worker Deployment's status up to date:
/// observed at its generation, with its replicas made.
fn is_updated(d: &Deployment) -> bool {
    let wanted = d.spec.replicas.unwrap_or(1);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation >= d.metadata.generation
            && s.replicas.unwrap_or(0) == wanted
            && s.updated_replicas.unwrap_or(0) == wanted
    })
}

/// Returns once kube-controller-manager has brought all `expected` worker Deployments of `ns`
/// up to date, watching them from the end of a phase's applies. Both phases wait so; listing
/// every Deployment every 5 s instead cost the apiserver about 0.9 CPU-seconds a list at 10,000
/// flows, and more lists the longer a phase's tail (65 in an operator run against 31).
/// Returns when that was.
async fn deployments_updated(
    client: Client,
    ns: String,
    expected: usize,
) -> anyhow::Result<Instant> {
    let mut events = watcher(
        Api::<Deployment>::namespaced(client, &ns),
        watcher::Config::default().labels(MANAGED),
    )
    .applied_objects()
    .boxed();
    let (mut seen, mut behind) = (HashSet::new(), HashSet::new());
    while let Some(deployment) = events.try_next().await? {
        let name = deployment.name_any();
        if is_updated(&deployment) {
            behind.remove(&name);
        } else {
            behind.insert(name.clone());
        }
        seen.insert(name);
        if seen.len() == expected && behind.is_empty() {
            return Ok(Instant::now());
        }
    }
    anyhow::bail!("the Deployments' watch ended before kube-controller-manager was done")
}

/// Write requests the operator has sent so far, from its own /metrics.
async fn operator_writes(metrics_url: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(metrics_url).await?.text().await?;
    text.lines()
        .find(|l| l.starts_with("flowplane_operator_kube_write_requests_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no write counter in {metrics_url}"))
}

/// IntegrationFlow reconciles run so far, from the operator's /metrics text.
fn flow_reconciles(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(r#"flowplane_operator_reconciles_total{kind="IntegrationFlow"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn peak_rss_mib(child: &Child) -> f64 {
    peak_rss_mib_of(child.id())
}

fn peak_rss_mib_of(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs benches without `--bench`; this one needs its script.
    if !std::env::args().any(|a| a == "--bench") {
        println!("operator_scale: skipped outside `cargo bench` (run scripts/bench-operator.sh)");
        return Ok(());
    }
    let flows: usize = std::env::var("FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bin = std::env::var("FLOWPLANE_BIN")?;
    let client = Client::try_default().await?;
    let stamp = unix_now();

    let references = references();
    let mut cpu = CpuAccount::new()?;
    let requests_at_start = apiserver_request_seconds(&client).await?;

    // Floor: the very objects the operator makes of these flows (rendered offline by the same
    // builders, owner references dropped), applied by a plain server-side-apply loop.
    let skip_floor = std::env::var("SKIP_FLOOR").is_ok_and(|v| v == "1");
    let floor_ns = format!("bench-floor-{stamp}");
    let children = rendered_children(&references, flows, &floor_ns)?;
    let objects = children.len();
    let (floor, floor_cpu, requests_after_floor) = if skip_floor {
        (None, HashMap::new(), requests_at_start.clone())
    } else {
        namespace(&client, &floor_ns).await?;
        let start = Instant::now();
        let started_unix = unix_now();
        stream::iter(children)
            .map(|object| apply(&client, &floor_ns, object))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let children_floor = start.elapsed();
        // Then the rest of what the operator phase's clock covers: the flows themselves (the
        // benchmark creates them in that phase), each flow's NATS user Secret and its status.
        // Reported as a second floor beside the children-only one, which stays the figure
        // comparable with earlier runs.
        stream::iter(0..flows)
            .map(|i| apply_rest_of_flow(&client, &floor_ns, i))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let same_objects = start.elapsed();
        let floor_cpu: HashMap<String, f64> = cpu.since_last()?.into_iter().collect();
        let requests_after_floor = apiserver_request_seconds(&client).await?;
        // kube-controller-manager's work on these Deployments (a ReplicaSet, a Pod, status
        // updates) goes on after the applies return; the operator phase's clock runs longer
        // and contains more of it. Timed the same way for both phases, for a third ratio.
        let controllers_done = tokio::time::timeout(
            Duration::from_secs(1800),
            deployments_updated(client.clone(), floor_ns.clone(), flows),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "kube-controller-manager did not update the floor's Deployments in 30 min"
            )
        })??
        .duration_since(start);
        let controllers_tail_cpu: HashMap<String, f64> = cpu.since_last()?.into_iter().collect();
        let floor = Floor {
            started_unix,
            children: children_floor,
            same_objects,
            controllers_done,
            controllers_tail_cpu,
            requests_at_controllers_done: apiserver_request_seconds(&client).await?,
        };
        // Gone before the operator starts, so kube-controller-manager's work on the floor's
        // Deployments and autoscalers does not load the operator's run.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces.delete(&floor_ns, &Default::default()).await?;
        while namespaces.get_opt(&floor_ns).await?.is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (Some(floor), floor_cpu, requests_after_floor)
    };
    cpu.since_last()?;
    let requests_before_operator = apiserver_request_seconds(&client).await?;

    // The operator, as its own process.
    let ns = format!("bench-{stamp}");
    namespace(&client, &ns).await?;
    let port = free_port()?;
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let mut operator = Command::new(&bin)
        .args([
            "controller",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--resync-seconds",
            "60",
            // nats-server reserves each stream's maxBytes against its max_file_store (1 TB in
            // the local environment): at the 1 GiB default, 2 streams a flow, only ~500 flows'
            // queues fit, and the rest stayed QueueReady=False (StorageExhausted).
            "--queue-max-bytes",
            &QUEUE_MAX_BYTES.to_string(),
        ])
        .env(
            "RUST_LOG",
            std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()?;
    cpu.add("operator", operator.id());
    for reference in references {
        apply(&client, &ns, reference).await?;
    }
    // Watched, not polled: listing 1,000 flows every half second would load the apiserver the
    // operator is measured against.
    let settled = tokio::spawn(settled(
        client.clone(),
        ns.clone(),
        flows,
        Progress {
            metrics_url: metrics_url.clone(),
            pid: operator.id(),
        },
    ));
    let start = Instant::now();
    let started_unix = unix_now();
    stream::iter(0..flows)
        .map(|i| apply(&client, &ns, flow(i)))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    tokio::time::timeout(Duration::from_secs(1800), settled).await???;
    let operator_time = start.elapsed();
    let settled_figures = reqwest::get(&metrics_url).await?.text().await?;
    let operator_cpu: HashMap<String, f64> = cpu.since_last()?.into_iter().collect();
    let requests_after_operator = apiserver_request_seconds(&client).await?;

    // Quiet: the reconciles that owned-object events queue up (Deployment status from
    // kube-controller-manager, and so on) drain; wait until kube-controller-manager has
    // brought every worker Deployment's status up to date and the operator has then written
    // nothing for 20 s (at most 10 min, or 0.2 s per flow: kube-controller-manager's own rate
    // limit sets the pace). A lull in the operator's writes alone is not the end: at 20
    // requests/s, kube-controller-manager was still updating Deployments after 20 s without an
    // operator write, and the operator's status reports of that counted as idle writes.
    let quiet_limit = Duration::from_secs(600).max(Duration::from_millis(200) * flows as u32);
    let quiet_start = Instant::now();
    let mut last = operator_writes(&metrics_url).await?;
    let mut quiet_since = Instant::now();
    let mut controllers = Some(tokio::spawn(deployments_updated(
        client.clone(),
        ns.clone(),
        flows,
    )));
    let mut controllers_done = operator_time;
    // What the processes did, and which requests were made, after the operator settled until
    // kube-controller-manager was done: the tail the floor's clock has too.
    let mut operator_tail_cpu = HashMap::new();
    let mut requests_at_controllers_done = requests_after_operator.clone();
    while controllers.is_some() || quiet_since.elapsed() < Duration::from_secs(20) {
        anyhow::ensure!(
            quiet_start.elapsed() < quiet_limit,
            "the operator never went quiet (kube-controller-manager done: {})",
            controllers.is_none()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(watching) = controllers.take_if(|w| w.is_finished()) {
            controllers_done = watching.await??.duration_since(start);
            quiet_since = Instant::now();
            operator_tail_cpu = cpu.since_last()?.into_iter().collect();
            requests_at_controllers_done = apiserver_request_seconds(&client).await?;
        }
        let now = operator_writes(&metrics_url).await?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let time_to_quiet = quiet_start.elapsed() - Duration::from_secs(20);
    // Idle: count the operator's writes for 60 s. (The apiserver's own counters would include
    // kube-controller-manager updating every HPA's status.)
    let before = operator_writes(&metrics_url).await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let idle_writes = operator_writes(&metrics_url).await? - before;
    let rss = peak_rss_mib(&operator);
    let reconcile_figures = reqwest::get(&metrics_url).await?.text().await?;
    operator.kill().ok();
    operator.wait().ok();

    println!("flows:                                  {flows}");
    println!("objects applied by the operator:        {objects} children + {flows} statuses");
    println!(
        "operator: all children + current status {:.1} s",
        operator_time.as_secs_f64()
    );
    match &floor {
        Some(floor) => {
            println!(
                "floor: plain SSA loop of the same {objects} objects  {:.1} s (concurrency {CONCURRENCY})",
                floor.children.as_secs_f64()
            );
            println!(
                "ratio operator / floor:                 {:.2}",
                operator_time.as_secs_f64() / floor.children.as_secs_f64()
            );
            println!(
                "floor of the same objects (+ {flows} flows, Secrets, statuses): {:.1} s",
                floor.same_objects.as_secs_f64()
            );
            println!(
                "ratio operator / floor of the same objects: {:.2}",
                operator_time.as_secs_f64() / floor.same_objects.as_secs_f64()
            );
            let tail_cpu = |name: &str| floor.controllers_tail_cpu.get(name).copied();
            println!(
                "both clocks until kube-controller-manager has every Deployment's status current: floor {:.1} s (+{:.1} s after its applies; CPU s then: kube-controller-manager {:.1}, kube-apiserver {:.1}), operator {:.1} s (+{:.1} s)",
                floor.controllers_done.as_secs_f64(),
                (floor.controllers_done - floor.same_objects).as_secs_f64(),
                tail_cpu("kube-controller-manager").unwrap_or(f64::NAN),
                tail_cpu("kube-apiserver").unwrap_or(f64::NAN),
                controllers_done.as_secs_f64(),
                (controllers_done - operator_time).as_secs_f64(),
            );
            println!(
                "ratio operator / floor, both until the Deployments are updated: {:.2}",
                controllers_done.as_secs_f64() / floor.controllers_done.as_secs_f64()
            );
        }
        None => println!("floor: skipped (SKIP_FLOOR=1), no ratio"),
    }
    println!(
        "then until no write for 20 s:           {:.1} s",
        time_to_quiet.as_secs_f64()
    );
    println!("operator write requests in 60 s idle:   {idle_writes}");
    println!("operator peak RSS:                      {rss:.1} MiB");
    // What else grows with the flows: NATS holds three streams and a consumer per flow.
    for (name, pid) in &cpu.processes {
        if name != "operator" {
            println!("  {name} peak RSS: {:.1} MiB", peak_rss_mib_of(*pid));
        }
    }
    println!("CPU seconds by process, floor phase | operator phase (until settled):");
    for (name, _) in &cpu.processes {
        let operator_seconds = operator_cpu.get(name).copied().unwrap_or(0.0);
        match floor_cpu.get(name) {
            Some(floor_seconds) => {
                println!("  {name:<24} {floor_seconds:>7.1} | {operator_seconds:>7.1}")
            }
            None => println!("  {name:<24} {:>7} | {operator_seconds:>7.1}", "-"),
        }
    }
    if let Some(floor) = &floor {
        println!(
            "CPU seconds by process after the last apply until kube-controller-manager is done, floor | operator:"
        );
        for (name, _) in &cpu.processes {
            let seconds = |tail: &HashMap<String, f64>| tail.get(name).copied().unwrap_or(0.0);
            println!(
                "  {name:<24} {:>7.1} | {:>7.1}",
                seconds(&floor.controllers_tail_cpu),
                seconds(&operator_tail_cpu)
            );
        }
    }
    // The four stretches each printer reports: (label, reading at its start, at its end).
    let mut stretches = vec![("floor:   ", &requests_at_start, &requests_after_floor)];
    if let Some(floor) = &floor {
        stretches.push((
            "floor, after its applies until kube-controller-manager was done:",
            &requests_after_floor,
            &floor.requests_at_controllers_done,
        ));
    }
    stretches.push((
        "operator:",
        &requests_before_operator,
        &requests_after_operator,
    ));
    stretches.push((
        "operator, after it settled until kube-controller-manager was done:",
        &requests_after_operator,
        &requests_at_controllers_done,
    ));
    type Printer = fn(&RequestFigures, &RequestFigures) -> String;
    let printers: [(&str, Printer); 2] = [
        (
            "apiserver request seconds (requests) by verb and resource (wall time in handlers, top 8):",
            top_request_seconds,
        ),
        (
            "apiserver watch events sent, by resource (top 8):",
            top_watch_events,
        ),
    ];
    for (title, printer) in printers {
        println!("{title}");
        for (label, before, after) in &stretches {
            println!("  {label} {}", printer(before, after));
        }
    }
    // For scripts/bench-operator.sh to pick the profiles taken in each phase (PROFILE=1).
    if let Some(floor) = &floor {
        println!(
            "phase window (unix seconds): floor {} {}",
            floor.started_unix,
            floor.started_unix + floor.controllers_done.as_secs()
        );
    }
    println!(
        "phase window (unix seconds): operator {started_unix} {}",
        started_unix + controllers_done.as_secs()
    );
    println!(
        "IntegrationFlow reconciles per flow:    {:.2} until settled, {:.2} at the end",
        flow_reconciles(&settled_figures) / flows as f64,
        flow_reconciles(&reconcile_figures) / flows as f64
    );
    println!("the operator's own reconcile figures until settled, for where the time went:");
    settled_figures
        .lines()
        .filter(|l| l.contains("IntegrationFlow") && !l.contains("_bucket"))
        .for_each(|l| println!("  {l}"));
    println!("and at the end (after the quiet wait and 60 s idle, with its resyncs):");
    reconcile_figures
        .lines()
        .filter(|l| l.contains("IntegrationFlow") && !l.contains("_bucket"))
        .for_each(|l| println!("  {l}"));
    Ok(())
}
