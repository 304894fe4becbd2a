//! `flowplane render -f FILE...`: the objects the operator would apply for the given manifests,
//! offline, for GitOps previews and CI diffs. Refuses what the apiserver would refuse (CEL
//! rules) and what the controller would refuse (contract problems), with the same messages.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;
use serde::Serialize;

use crate::api::{ConnectorBinding, DataContract, IntegrationFlow};
use crate::contract::canonical::schema_hash;
use crate::contract::validate::validate_contract;

use super::{FlowInputs, RenderSettings, ResolvedContract};

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// Manifest files (multi-document YAML): flows plus the contracts, bindings and code-map
    /// ConfigMaps they reference.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Render as if KEDA were installed (a ScaledObject for each autoscaled flow).
    #[arg(long)]
    pub keda: bool,
    /// Render as if the cluster served `external.metrics.k8s.io` (a metrics adapter): an HPA on
    /// the lag metric where KEDA is not installed. Without either, autoscaled flows run
    /// `minReplicas` workers and get no autoscaler, as the operator does.
    #[arg(long)]
    pub external_metrics: bool,
    /// Render as if the Prometheus Operator were installed (PrometheusRule + ServiceMonitor).
    #[arg(long)]
    pub prometheus_operator: bool,
    /// Worker image.
    #[arg(long, default_value = "ghcr.io/flowplane/flowplane:0.1.0")]
    pub worker_image: String,
    /// NATS URL the workers get.
    #[arg(long, default_value = "nats://nats.flowplane-system.svc:4222")]
    pub nats_url: String,
    /// Render as an operator that issues each flow its own NATS user (`<flow>-nats` Secret).
    #[arg(long)]
    pub nats_identity: bool,
    /// ... and whose NATS server requires TLS (the CA in the same Secret).
    #[arg(long, requires = "nats_identity")]
    pub nats_tls: bool,
    /// Replicas of a flow's queue when the flow sets none, as the operator's `--queue-replicas`.
    #[arg(long, default_value_t = 1, value_parser = crate::api::integration_flow::parse_queue_replicas)]
    pub queue_replicas: u8,
    /// Most bytes of a flow's stream when the flow sets none, as the operator's
    /// `--queue-max-bytes`.
    #[arg(long, default_value_t = crate::api::integration_flow::DEFAULT_QUEUE_MAX_BYTES, value_parser = crate::api::integration_flow::parse_queue_max_bytes)]
    pub queue_max_bytes: i64,
    /// The NATS account the flows' streams live in, for KEDA's scaler: the flowplane account's
    /// public key (`A...`) in operator mode.
    #[arg(long, default_value = "$G")]
    pub nats_account: String,
    /// Namespace for manifests that name none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
}

#[derive(Default)]
struct Manifests {
    flows: Vec<IntegrationFlow>,
    contracts: BTreeMap<(String, String), DataContract>,
    bindings: BTreeMap<(String, String), ConnectorBinding>,
    config_maps: BTreeMap<(String, String), ConfigMap>,
}

fn key(ns: &Option<String>, name: &Option<String>, default_ns: &str) -> (String, String) {
    (
        ns.clone().unwrap_or_else(|| default_ns.to_string()),
        name.clone().unwrap_or_default(),
    )
}

fn load(args: &RenderArgs) -> anyhow::Result<Manifests> {
    let mut m = Manifests::default();
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let what = |e: serde_yaml::Error| anyhow::anyhow!("{}: {kind}: {e}", file.display());
            match kind.as_str() {
                "IntegrationFlow" => {
                    let mut flow: IntegrationFlow = serde_yaml::from_value(value).map_err(what)?;
                    flow.metadata
                        .namespace
                        .get_or_insert_with(|| args.namespace.clone());
                    flow.validate_cel().map_err(|e| {
                        anyhow::anyhow!(
                            "IntegrationFlow {}: {e}",
                            flow.metadata.name.clone().unwrap_or_default()
                        )
                    })?;
                    m.flows.push(flow);
                }
                "DataContract" => {
                    let dc: DataContract = serde_yaml::from_value(value).map_err(what)?;
                    dc.validate_cel().map_err(|e| {
                        anyhow::anyhow!(
                            "DataContract {}: {e}",
                            dc.metadata.name.clone().unwrap_or_default()
                        )
                    })?;
                    m.contracts.insert(
                        key(&dc.metadata.namespace, &dc.metadata.name, &args.namespace),
                        dc,
                    );
                }
                "ConnectorBinding" => {
                    let cb: ConnectorBinding = serde_yaml::from_value(value).map_err(what)?;
                    cb.validate_cel().map_err(|e| {
                        anyhow::anyhow!(
                            "ConnectorBinding {}: {e}",
                            cb.metadata.name.clone().unwrap_or_default()
                        )
                    })?;
                    m.bindings.insert(
                        key(&cb.metadata.namespace, &cb.metadata.name, &args.namespace),
                        cb,
                    );
                }
                "ConfigMap" => {
                    let cm: ConfigMap = serde_yaml::from_value(value).map_err(what)?;
                    m.config_maps.insert(
                        key(&cm.metadata.namespace, &cm.metadata.name, &args.namespace),
                        cm,
                    );
                }
                _ => {}
            }
        }
    }
    Ok(m)
}

fn print<T: Serialize>(out: &mut String, object: &T) -> anyhow::Result<()> {
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(object)?);
    Ok(())
}

/// Renders every flow; returns the YAML stream.
pub fn render(args: &RenderArgs) -> anyhow::Result<String> {
    let m = load(args)?;
    let settings = RenderSettings {
        worker_image: args.worker_image.clone(),
        nats_url: args.nats_url.clone(),
        nats_identity: args.nats_identity,
        nats_tls: args.nats_identity && args.nats_tls,
        nats_monitoring_endpoint: "nats.flowplane-system.svc:8222".into(),
        queue_defaults: crate::queue::QueueDefaults {
            replicas: args.queue_replicas,
            max_bytes: args.queue_max_bytes,
        },
        nats_account: args.nats_account.clone(),
        keda: args.keda,
        external_metrics: args.external_metrics,
        prometheus_operator: args.prometheus_operator,
    };
    let mut out = String::new();
    for flow in &m.flows {
        let ns = flow.metadata.namespace.clone().unwrap_or_default();
        let name = flow.metadata.name.clone().unwrap_or_default();
        let find_binding = |binding: &str| {
            m.bindings
                .get(&(ns.clone(), binding.to_string()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "flow {name}: ConnectorBinding {binding} is not among the given manifests"
                    )
                })
        };
        let dc = m
            .contracts
            .get(&(ns.clone(), flow.spec.contract.name.clone()))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "flow {name}: DataContract {} is not among the given manifests",
                    flow.spec.contract.name
                )
            })?;
        let problems = validate_contract(&dc.spec);
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::bail!(
                "DataContract {}: {}",
                flow.spec.contract.name,
                list.join("; ")
            );
        }
        let range = semver::VersionReq::parse(&flow.spec.contract.versions)?;
        let version = semver::Version::parse(&dc.spec.version)?;
        if !range.matches(&version) {
            anyhow::bail!(
                "flow {name}: DataContract {} {version} is outside the flow's range {range}",
                flow.spec.contract.name
            );
        }
        let contract = ResolvedContract {
            name: flow.spec.contract.name.clone(),
            version: dc.spec.version.clone(),
            schema_hash: schema_hash(&dc.spec.schema),
            schema: dc.spec.schema.clone(),
            quality: dc.spec.quality.clone(),
            sla: dc.spec.sla.clone(),
        };
        let mut code_maps = BTreeMap::new();
        for map in flow.spec.mapping.iter().flat_map(|m| &m.code_maps) {
            let cm = m
                .config_maps
                .get(&(ns.clone(), map.config_map_ref.clone()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "flow {name}: ConfigMap {} is not among the given manifests",
                        map.config_map_ref
                    )
                })?;
            code_maps.insert(map.name.clone(), cm.data.clone().unwrap_or_default());
        }
        let escalation = match flow
            .spec
            .approval
            .as_ref()
            .and_then(|a| a.escalate_to.as_ref())
        {
            Some(to) => Some(find_binding(&to.binding_ref)?),
            None => None,
        };
        let inputs = FlowInputs {
            flow,
            contract: &contract,
            source: find_binding(&flow.spec.source.binding_ref)?,
            target: find_binding(&flow.spec.target.binding_ref)?,
            escalation,
            code_maps,
            settings: &settings,
        };
        let c = super::children(&inputs).map_err(|e| anyhow::anyhow!("flow {name}: {e}"))?;
        print(&mut out, &c.config_map)?;
        print(&mut out, &c.deployment)?;
        print(&mut out, &c.service)?;
        print(&mut out, &c.pod_disruption_budget)?;
        print(&mut out, &c.network_policy)?;
        if let Some(o) = &c.cron_job {
            print(&mut out, o)?;
        }
        if let Some(o) = &c.horizontal_pod_autoscaler {
            print(&mut out, o)?;
        }
        for o in [&c.scaled_object, &c.prometheus_rule, &c.service_monitor]
            .into_iter()
            .flatten()
        {
            print(&mut out, o)?;
        }
        if let Some(o) = &c.rules_config_map {
            print(&mut out, o)?;
        }
    }
    Ok(out)
}
