//! Alert rules of a flow: freshness (the flow's SLA and its contract's warnAfter/errorAfter,
//! and per value of its freshnessBy field), error ratio, dead letters and their age, failed
//! deliveries, the age of pending reviews, quality rules with action Alert, lag growth,
//! throttling and workers down. A PrometheusRule + ServiceMonitor with the Prometheus Operator, otherwise a
//! ConfigMap holding a rule file for a plain Prometheus.
//!
//! Freshness reads `flowplane_worker_last_success_timestamp_seconds`, which each worker takes
//! from the flow's progress record (shared by the workers, kept across restarts), so a rollout
//! of a quiet flow does not look like a flow that stopped delivering. A flow that has never
//! delivered exports 0, which the freshness rules ignore: FlowplaneFlowNoData fires instead
//! once its workers have reported nothing for the flow's freshness SLA (status: `NoDataYet`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use serde::Serialize;
use serde_json::json;

use super::optional_kinds;
use crate::api::IntegrationFlow;
use crate::api::common::parse_duration;
use crate::api::data_contract::QualityAction;
use crate::api::integration_flow::RESERVED_ALERT_LABELS;
use crate::worker_config::OTHER_KEY;

use super::ResolvedContract;
use super::labels::{flow_name, metadata, namespace, rules_name, worker_selector, workers_name};
use super::scaling::LAG_METRIC;

/// File name of the rule file in the rules ConfigMap.
pub const RULES_FILE: &str = "flowplane-rules.yaml";

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<AlertRule>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct AlertRule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Default freshness when the flow sets no SLA.
const DEFAULT_FRESHNESS_SECS: u64 = 3600;

/// The freshness metric, its never-delivered zero left out.
const LAST_SUCCESS: &str = "flowplane_worker_last_success_timestamp_seconds";
/// The freshness per value of the flow's freshnessBy field.
const KEY_LAST_SUCCESS: &str = "flowplane_worker_key_last_success_timestamp_seconds";
/// Review timeout when the flow sets none (as the worker's).
const DEFAULT_REVIEW_TIMEOUT_SECS: u64 = 24 * 3600;

/// How long a freshness-style condition must hold before its alert fires: a quarter of the
/// threshold it measures, 1m at most (a scrape or two at the Prometheus Operator's 30s) and
/// 5s at least. A fixed minute would double the time to detection of a 60s SLA.
fn hold_for(threshold_secs: u64) -> String {
    match threshold_secs / 4 {
        60.. => "1m".to_string(),
        secs => format!("{}s", secs.max(5)),
    }
}

/// The rules of a flow that runs `contract`.
pub fn rule_groups(flow: &IntegrationFlow, contract: &ResolvedContract) -> Vec<RuleGroup> {
    let name = flow_name(flow);
    let ns = namespace(flow);
    let selector = format!(r#"namespace="{ns}",flow="{name}""#);
    let sla = flow.spec.sla.as_ref();
    let freshness_secs = sla
        .and_then(|s| parse_duration(&s.freshness).ok())
        .map(|d| d.as_secs())
        .unwrap_or(DEFAULT_FRESHNESS_SECS);
    let max_error_ratio = sla.map(|s| s.max_error_ratio).unwrap_or(0.01);
    let max_dead_letters = sla.map(|s| s.max_dead_letters).unwrap_or(0);
    let lag_ceiling =
        u64::from(flow.spec.scaling.lag_per_replica) * flow.spec.scaling.max_replicas.max(1) as u64;
    // The flow's own labels go last, so they win over `alerting.labels` even where admission
    // was bypassed (admission refuses RESERVED_ALERT_LABELS there).
    let mut labels: BTreeMap<String, String> = flow
        .spec
        .alerting
        .iter()
        .flat_map(|a| a.labels.clone())
        .filter(|(k, _)| !RESERVED_ALERT_LABELS.contains(&k.as_str()))
        .collect();
    labels.insert("namespace".to_string(), ns.clone());
    labels.insert("flow".to_string(), name.clone());
    let rule =
        |alert: &str, expr: String, for_: &str, severity: &str, summary: String, runbook: &str| {
            AlertRule {
                alert: alert.to_string(),
                expr,
                for_: for_.to_string(),
                labels: {
                    let mut l = labels.clone();
                    l.insert("severity".to_string(), severity.to_string());
                    l
                },
                annotations: BTreeMap::from([
                    ("summary".to_string(), summary),
                    ("runbook".to_string(), runbook.to_string()),
                ]),
            }
        };
    let stale_after =
        |secs: u64| format!("time() - max({LAST_SUCCESS}{{{selector}}} > 0) > {secs}");
    let mut rules = vec![
        rule(
            "FlowplaneFlowStale",
            stale_after(freshness_secs),
            // The metric survives restarts (it comes from the progress record), so waiting
            // only covers a scrape or two, not a rollout.
            &hold_for(freshness_secs),
            "critical",
            format!("Flow {ns}/{name} has delivered nothing for more than {freshness_secs}s"),
            "Check the flow's Fresh and WorkersAvailable conditions, the source binding's Reachable condition and the worker logs.",
        ),
        rule(
            "FlowplaneFlowNoData",
            format!("max({LAST_SUCCESS}{{{selector}}}) == 0"),
            // Running workers that report no delivery at all, for as long as the SLA allows.
            &format!("{freshness_secs}s"),
            "warning",
            format!(
                "Flow {ns}/{name} has delivered nothing since it was created, for more than {freshness_secs}s"
            ),
            "Check the flow's Fresh condition (NoDataYet), the source binding's Reachable condition and the worker logs; a source without any data yet is expected to clear this once it has some.",
        ),
        rule(
            "FlowplaneErrorRatioHigh",
            format!(
                "sum(rate(flowplane_worker_records_dead_lettered_total{{{selector}}}[15m])) / clamp_min(sum(rate(flowplane_worker_records_read_total{{{selector}}}[15m])), 1e-9) > {max_error_ratio}"
            ),
            "15m",
            "warning",
            format!("More than {max_error_ratio} of flow {ns}/{name}'s records fail"),
            "List the dead letters with `flowplane dlq list`; fix the code map or contract, then redrive.",
        ),
        rule(
            "FlowplaneDeadLetters",
            format!(
                "sum(increase(flowplane_worker_records_dead_lettered_total{{{selector}}}[24h])) > {max_dead_letters}"
            ),
            "5m",
            "warning",
            format!("Flow {ns}/{name} dead-lettered more than {max_dead_letters} records in 24h"),
            "Inspect with `flowplane dlq list`, fix the cause, then annotate the flow with flowplane.io/redrive.",
        ),
        rule(
            "FlowplaneDeadLetterAged",
            format!(
                "time() - min(flowplane_worker_oldest_dead_letter_timestamp_seconds{{{selector}}} > 0) > {freshness_secs}"
            ),
            "1m",
            "warning",
            format!(
                "A record of flow {ns}/{name} has waited in the dead-letter stream for more than {freshness_secs}s (the flow's freshness SLA): its data is stale at the target"
            ),
            "Inspect with `flowplane dlq list`, fix the cause, then annotate the flow with flowplane.io/redrive; the redrive removes what it takes back.",
        ),
        rule(
            "FlowplaneFlowFailing",
            // Calls or records retried while nothing reached the target: a source or target
            // outage, seen before the flow's data is older than its SLA. The 1m windows need
            // two scrapes in them (the ServiceMonitor scrapes every 30s).
            format!(
                "sum(increase(flowplane_worker_records_retried_total{{{selector}}}[1m])) > 0 unless sum(increase(flowplane_worker_records_delivered_total{{{selector}}}[1m])) > 0"
            ),
            &hold_for(freshness_secs),
            "critical",
            format!("Flow {ns}/{name}'s workers retry failing calls and deliver nothing"),
            "The source or target binding fails: check its Reachable condition, `kubectl get iflow <flow> -o jsonpath='{.status.sync.blocked}'` and the worker logs (5xx, timeouts, an open circuit breaker); records are retried with backoff, and those that used up delivery.maxDeliver are dead-lettered MaxDeliveries: redrive them once it answers again.",
        ),
        rule(
            "FlowplaneLagGrowing",
            format!(
                "max({LAG_METRIC}{{{selector}}}) > {lag_ceiling} and deriv(max({LAG_METRIC}{{{selector}}})[15m:1m]) > 0"
            ),
            "15m",
            "warning",
            format!("Flow {ns}/{name} falls behind beyond what its maximum workers absorb"),
            "Raise scaling.maxReplicas or the target's rateLimit, or check the target's latency.",
        ),
        rule(
            "FlowplaneThrottled",
            format!("sum(rate(flowplane_worker_requests_throttled_total{{{selector}}}[5m])) > 0"),
            "15m",
            "info",
            format!("Flow {ns}/{name} is being throttled (HTTP 429) by an endpoint"),
            "Lower the binding's rateLimit or ask the system owner for a higher quota.",
        ),
        rule(
            "FlowplaneWorkersDown",
            format!(
                r#"absent(up{{namespace="{ns}",service="{}"}} == 1)"#,
                workers_name(flow)
            ),
            "10m",
            "critical",
            format!("No worker of flow {ns}/{name} is up"),
            "Check the flow's WorkersAvailable condition and the worker pods' events.",
        ),
    ];
    // The flow's target will never take these records: in a forecast -> ERP flow (one with
    // approval routing), replenishment proposals that did not post, so the ERP will not
    // replenish what the plan asks for.
    let proposals = flow.spec.approval.is_some();
    rules.push(rule(
        "FlowplaneDeliveryFailed",
        format!(
            "sum by (target) (increase(flowplane_worker_records_delivery_failed_total{{{selector}}}[15m])) > 0"
        ),
        "0m",
        if proposals { "critical" } else { "warning" },
        if proposals {
            format!(
                "Replenishment proposals of flow {ns}/{name} failed to post to the {{{{ $labels.target }}}} and were dead-lettered"
            )
        } else {
            format!(
                "Records of flow {ns}/{name} failed to post to the {{{{ $labels.target }}}} and were dead-lettered"
            )
        },
        "List them with `flowplane dlq list` (reason TargetRejected or MaxDeliveries, stage deliver or approval); fix the target's cause, then redrive.",
    ));
    if let Some(approval) = &flow.spec.approval {
        // Half the review timeout gone: time to decide before onTimeout decides instead.
        let timeout = approval
            .review_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .map(|d| d.as_secs())
            .unwrap_or(DEFAULT_REVIEW_TIMEOUT_SECS);
        let review_sla = (timeout / 2).max(60);
        rules.push(rule(
            "FlowplaneReviewAged",
            format!(
                "time() - min(flowplane_worker_oldest_pending_review_timestamp_seconds{{{selector}}} > 0) > {review_sla}"
            ),
            "1m",
            "warning",
            format!(
                "A forecast delta of flow {ns}/{name} has waited for a planner's decision for more than {review_sla}s (half its {timeout}s review timeout)"
            ),
            "List the pending reviews with `flowplane review list` and approve or reject them (annotation on the flow), before approval.onTimeout decides.",
        ));
    }
    if let Some(by) = flow
        .spec
        .observability
        .as_ref()
        .and_then(|o| o.freshness_by.as_ref())
    {
        // One value (one warehouse) stale while the flow as a whole is fresh; when the whole
        // flow is stale, FlowplaneFlowStale says so once instead of once per value.
        rules.push(rule(
            "FlowplaneKeyStale",
            format!(
                r#"(time() - max by (key_field, key) ({KEY_LAST_SUCCESS}{{{selector},key!="{OTHER_KEY}"}} > 0) > {freshness_secs}) and on() (time() - max({LAST_SUCCESS}{{{selector}}} > 0) <= {freshness_secs})"#
            ),
            "1m",
            "critical",
            format!(
                "Flow {ns}/{name} has delivered nothing for {} {{{{ $labels.key }}}} for more than {freshness_secs}s while it delivers for others",
                by.field
            ),
            "Check the source for that value (e.g. the warehouse's system or its interface job), and the flow's status.sync.staleKeys; the other values are flowing, so the flow itself works.",
        ));
    }
    let contract_name = &contract.name;
    if let Some(sla) = &contract.sla {
        let thresholds = [
            (
                "FlowplaneContractFreshnessWarning",
                &sla.freshness.warn_after,
                "warning",
                "warnAfter",
            ),
            (
                "FlowplaneContractFreshnessBreached",
                &sla.freshness.error_after,
                "critical",
                "errorAfter",
            ),
        ];
        for (alert, after, severity, field) in thresholds {
            // Admission refuses an unparsable duration; one that slipped past makes no rule.
            let Ok(after) = parse_duration(after) else {
                continue;
            };
            let secs = after.as_secs();
            rules.push(rule(
                alert,
                stale_after(secs),
                &hold_for(secs),
                severity,
                format!(
                    "Flow {ns}/{name} has delivered no {contract_name} data for more than {secs}s (the DataContract's sla.freshness.{field})"
                ),
                "Check the flow's Fresh and WorkersAvailable conditions and the source binding's Reachable condition; the contract's owner is who to tell.",
            ));
        }
    }
    if contract
        .quality
        .iter()
        .any(|q| q.action == QualityAction::Alert)
    {
        rules.push(rule(
            "FlowplaneQualityAlert",
            format!("sum(increase(flowplane_worker_quality_alerts_total{{{selector}}}[15m])) > 0"),
            "0m",
            "warning",
            format!(
                "Flow {ns}/{name} delivered records that fail a quality rule of DataContract {contract_name} with action Alert"
            ),
            "The records were delivered; check the source data against the contract's Alert rules and tell the contract's owner.",
        ));
    }
    vec![RuleGroup {
        name: format!("flowplane-{ns}-{name}"),
        rules,
    }]
}

/// The rule file as Prometheus reads it.
pub fn rule_file(groups: &[RuleGroup]) -> String {
    serde_yaml::to_string(&json!({ "groups": groups })).unwrap_or_default()
}

pub fn rules_config_map(flow: &IntegrationFlow, groups: &[RuleGroup]) -> ConfigMap {
    let mut meta = metadata(flow, rules_name(flow), "alerts");
    // Picked up by sidecars that load rule files (e.g. the kube-prometheus stack's).
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert("prometheus_rule".into(), "1".into());
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(
            RULES_FILE.to_string(),
            rule_file(groups),
        )])),
        ..ConfigMap::default()
    }
}

pub fn prometheus_rule(flow: &IntegrationFlow, groups: &[RuleGroup]) -> DynamicObject {
    let mut object = DynamicObject::new(&rules_name(flow), &optional_kinds::prometheus_rule());
    object.metadata = metadata(flow, rules_name(flow), "alerts");
    object.data = json!({ "spec": { "groups": groups } });
    object
}

pub fn service_monitor(flow: &IntegrationFlow) -> DynamicObject {
    let mut object = DynamicObject::new(&workers_name(flow), &optional_kinds::service_monitor());
    object.metadata = metadata(flow, workers_name(flow), "worker");
    object.data = json!({ "spec": {
        "selector": {"matchLabels": worker_selector(flow)},
        "endpoints": [{"port": "metrics", "interval": "30s"}]
    }});
    object
}

#[cfg(test)]
mod tests {
    use super::hold_for;

    #[test]
    fn freshness_alerts_wait_a_quarter_of_their_threshold_between_5s_and_a_minute() {
        assert_eq!(hold_for(3600), "1m");
        assert_eq!(hold_for(240), "1m");
        assert_eq!(hold_for(60), "15s");
        assert_eq!(hold_for(20), "5s");
        assert_eq!(hold_for(0), "5s");
    }
}
