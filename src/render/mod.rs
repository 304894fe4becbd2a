//! Pure builders: a validated flow and what it references -> the Kubernetes objects the
//! operator applies for it. No API calls here, so `flowplane render` and the unit tests see
//! exactly what the controller would apply.

pub mod alerts;
pub mod cli;
pub mod labels;
pub mod optional_kinds;
pub mod scaling;
pub mod worker_config;
pub mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::DynamicObject;

use crate::api::data_contract::{ContractSla, QualityRule, RecordSchema};
use crate::api::{ConnectorBinding, IntegrationFlow};
use crate::worker_config::WorkerConfig;

/// Settings of the operator that shape what it renders.
#[derive(Clone, Debug)]
pub struct RenderSettings {
    pub worker_image: String,
    pub nats_url: String,
    /// The operator issues each flow its own NATS user into the flow's `<flow>-nats` Secret,
    /// which the workers mount (see `queue::identity`).
    pub nats_identity: bool,
    /// That Secret also holds the CA of the NATS server's certificate: TLS required.
    pub nats_tls: bool,
    /// host:port of the NATS monitoring endpoint, for KEDA's nats-jetstream scaler.
    pub nats_monitoring_endpoint: String,
    /// What a flow's queue gets where the flow says nothing (the operator's `--queue-replicas`
    /// and `--queue-max-bytes`).
    pub queue_defaults: crate::queue::QueueDefaults,
    /// The NATS account the flows' streams live in, as the monitoring endpoint names it: the
    /// flowplane account's public key (`A...`) in operator mode, `$G` without accounts.
    pub nats_account: String,
    /// Which optional APIs are installed.
    pub keda: bool,
    /// The cluster serves `external.metrics.k8s.io` (a metrics adapter, or KEDA's): an HPA
    /// on the lag metric can read it.
    pub external_metrics: bool,
    pub prometheus_operator: bool,
}

/// The contract version a flow runs, resolved by the controller.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedContract {
    pub name: String,
    pub version: String,
    pub schema_hash: String,
    pub schema: RecordSchema,
    pub quality: Vec<QualityRule>,
    /// The contract's freshness SLA (from its current spec: an SLA belongs to the domain, not
    /// to a schema version), alerted on in the flow's rules.
    pub sla: Option<ContractSla>,
}

/// Everything a flow's children are built from.
pub struct FlowInputs<'a> {
    pub flow: &'a IntegrationFlow,
    pub contract: &'a ResolvedContract,
    pub source: &'a ConnectorBinding,
    pub target: &'a ConnectorBinding,
    pub escalation: Option<&'a ConnectorBinding>,
    /// Code-map name -> table, read from the referenced ConfigMaps.
    pub code_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub settings: &'a RenderSettings,
}

/// A problem with the inputs that only the user can fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    pub message: String,
}

/// The children of one flow. `None` means "must not exist" (and is pruned).
#[derive(Debug, Clone)]
pub struct Children {
    pub worker_config: WorkerConfig,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub pod_disruption_budget: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    pub cron_job: Option<CronJob>,
    pub horizontal_pod_autoscaler: Option<HorizontalPodAutoscaler>,
    pub scaled_object: Option<DynamicObject>,
    pub prometheus_rule: Option<DynamicObject>,
    pub service_monitor: Option<DynamicObject>,
    pub rules_config_map: Option<ConfigMap>,
}

/// Builds every child of a flow.
pub fn children(inputs: &FlowInputs<'_>) -> Result<Children, RenderError> {
    let worker_config = worker_config::build(inputs)?;
    let config_map = workload::config_map(inputs.flow, &worker_config)?;
    let config_hash = labels::config_hash(&config_map);
    let autoscaler = scaling::autoscaler(inputs.flow, inputs.settings);
    let (horizontal_pod_autoscaler, scaled_object) = match autoscaler {
        scaling::Autoscaler::ScaledObject => (
            None,
            Some(scaling::scaled_object(
                inputs.flow,
                &worker_config,
                inputs.settings,
            )),
        ),
        scaling::Autoscaler::HorizontalPodAutoscaler => {
            (Some(scaling::horizontal_pod_autoscaler(inputs.flow)), None)
        }
        scaling::Autoscaler::NoMetricsApi | scaling::Autoscaler::None => (None, None),
    };
    let rules = alerts::rule_groups(inputs.flow, inputs.contract);
    let (prometheus_rule, service_monitor, rules_config_map) =
        if inputs.settings.prometheus_operator {
            (
                Some(alerts::prometheus_rule(inputs.flow, &rules)),
                Some(alerts::service_monitor(inputs.flow)),
                None,
            )
        } else {
            (
                None,
                None,
                Some(alerts::rules_config_map(inputs.flow, &rules)),
            )
        };
    Ok(Children {
        deployment: workload::deployment(
            inputs,
            &config_hash,
            scaling::fixed_replicas(inputs.flow, autoscaler),
        ),
        service: workload::service(inputs.flow),
        pod_disruption_budget: workload::pod_disruption_budget(inputs.flow),
        network_policy: workload::network_policy(inputs),
        cron_job: workload::cron_job(inputs, &config_hash),
        config_map,
        worker_config,
        horizontal_pod_autoscaler,
        scaled_object,
        prometheus_rule,
        service_monitor,
        rules_config_map,
    })
}
