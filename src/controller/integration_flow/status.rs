//! Status: the conditions and figures of a flow, computed purely from what reconcile saw, so
//! the same world always gives the same status (and no write).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;

use crate::api::IntegrationFlow;
use crate::api::common::parse_duration;
use crate::api::data_contract::ContractSla;
use crate::api::integration_flow::{
    CodeDrift, IntegrationFlowStatus, PendingApproval, QueueStatus, ReplicaStatus, RouteCounts,
    SyncStatus,
};
use crate::controller::conditions::{Desired, merge};
use crate::queue::QueueError;
use crate::queue::approvals::PendingReview;
use crate::render::labels::{worker_selector_string, workers_name};
use crate::render::scaling::{Autoscaler, LAG_METRIC, fixed_replicas};
use crate::worker_config::OTHER_KEY;

use super::dereference::QueueState;

/// Freshness used when the flow sets no SLA.
const DEFAULT_FRESHNESS_SECS: u64 = 3600;

/// What reconcile learned, as input to the status.
pub struct Observed<'a> {
    pub flow: &'a IntegrationFlow,
    pub bindings: Desired,
    pub contract: Desired,
    /// The contract's freshness SLA: its `errorAfter` makes the flow not Fresh too.
    pub contract_sla: Option<ContractSla>,
    /// Contract version the workers run (from the applied configuration).
    pub contract_version: Option<String>,
    /// A spec problem that blocks the flow: (reason, message).
    pub blocked: Option<(&'static str, String)>,
    /// Queue readiness: Ok(state) or why the queue cannot be made or read.
    pub queue: Result<QueueState, QueueProblem>,
    pub deployment: Option<&'a Deployment>,
    /// What sets the worker count, as rendered for the cluster's APIs.
    pub autoscaler: Autoscaler,
    pub operations: BTreeMap<String, String>,
    /// Replay, backfill and cursor changes as handled.
    pub reports: super::operations::Reports,
    /// A requested redrive held back until every worker runs the applied configuration, and why.
    pub redrive_waits: Option<String>,
    /// Reviews parked by the workers, undecided.
    pub pending_approvals: Vec<PendingApproval>,
    /// Deltas per route, from the decision audit (approval flows).
    pub routes: Option<RouteCounts>,
    /// Unmapped and orphaned codes per code map.
    pub code_drift: Vec<CodeDrift>,
    pub now: Timestamp,
}

fn workers(flow: &IntegrationFlow, deployment: Option<&Deployment>) -> (i32, i32, Desired, bool) {
    let name = workers_name(flow);
    let Some(deployment) = deployment else {
        return (
            0,
            0,
            Desired::new(
                "WorkersAvailable",
                false,
                "DeploymentMissing",
                format!("Deployment {name} does not exist yet"),
            ),
            true,
        );
    };
    let desired = deployment.spec.replicas.unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let rolled_out = status.observed_generation == deployment.metadata.generation
        && updated >= desired
        && status.replicas.unwrap_or(0) <= desired;
    let condition = if flow.spec.suspend {
        Desired::new(
            "WorkersAvailable",
            false,
            "Suspended",
            "the flow is suspended; workers are scaled to zero",
        )
    } else if available >= 1 {
        Desired::new(
            "WorkersAvailable",
            true,
            "WorkersAvailable",
            format!("{available} of {desired} workers available"),
        )
    } else {
        Desired::new(
            "WorkersAvailable",
            false,
            "NoWorkerAvailable",
            format!("Deployment {name}: 0 of {desired} workers available"),
        )
    };
    (desired, ready, condition, !rolled_out)
}

/// Who sets the worker count and, without an autoscaler, why: informational, never blocks
/// Ready.
fn autoscaled(flow: &IntegrationFlow, autoscaler: Autoscaler) -> Desired {
    let scaling = &flow.spec.scaling;
    let (min, max) = (scaling.min_replicas, scaling.max_replicas);
    let fixed = fixed_replicas(flow, autoscaler).unwrap_or_default();
    let (status, reason, message) = match autoscaler {
        Autoscaler::ScaledObject => (
            true,
            "KedaScaledObject",
            format!(
                "KEDA scales the workers from {min} to {max} on consumer lag, {} pending records per worker",
                scaling.lag_per_replica
            ),
        ),
        Autoscaler::HorizontalPodAutoscaler => (
            true,
            "HorizontalPodAutoscaler",
            format!(
                "HorizontalPodAutoscaler {} scales the workers from {} to {max} on the external metric {LAG_METRIC}",
                workers_name(flow),
                min.max(1)
            ),
        ),
        Autoscaler::NoMetricsApi => (
            false,
            "ExternalMetricsUnavailable",
            format!(
                "the cluster serves no external.metrics.k8s.io (neither KEDA nor a metrics adapter is installed), so an autoscaler could never read the lag: {fixed} fixed workers (spec.scaling.minReplicas, at least one)"
            ),
        ),
        Autoscaler::None if flow.spec.suspend => {
            (false, "Suspended", "the flow is suspended".to_string())
        }
        Autoscaler::None if scaling.replicas.is_some() => (
            false,
            "FixedReplicas",
            format!("spec.scaling.replicas sets {fixed} workers"),
        ),
        Autoscaler::None => (
            false,
            "FixedReplicas",
            format!("minReplicas = maxReplicas: {fixed} workers"),
        ),
    };
    Desired::new("Autoscaled", status, reason, message)
}

/// Why a flow's queue cannot be made or read: QueueReady's reason and message.
#[derive(Debug)]
pub struct QueueProblem {
    pub reason: &'static str,
    pub message: String,
}

impl QueueProblem {
    /// NATS or the flow's queue policy failed in a way the flow's owner cannot size away.
    pub fn unavailable(message: String) -> QueueProblem {
        QueueProblem {
            reason: "QueueUnavailable",
            message,
        }
    }
}

impl From<QueueError> for QueueProblem {
    fn from(error: QueueError) -> QueueProblem {
        match error {
            QueueError::NoStorage { .. } => QueueProblem {
                reason: "StorageExhausted",
                message: error.to_string(),
            },
            _ => QueueProblem::unavailable(error.to_string()),
        }
    }
}

fn freshness(
    flow: &IntegrationFlow,
    contract_sla: Option<&ContractSla>,
    queue: &Result<QueueState, QueueProblem>,
    now: Timestamp,
) -> Desired {
    let limit = flow_freshness_secs(flow);
    // The data domain's promise, the same threshold as FlowplaneContractFreshnessBreached.
    let error_after = contract_sla
        .and_then(|s| parse_duration(&s.freshness.error_after).ok())
        .map(|d| d.as_secs());
    let Ok(state) = queue else {
        return Desired::new(
            "Fresh",
            false,
            "ProgressUnknown",
            "the queue's progress record cannot be read",
        );
    };
    match state.progress.last_success_unix {
        None => Desired::new(
            "Fresh",
            false,
            "NoDataYet",
            "no batch has been delivered yet",
        ),
        Some(last) => {
            let age = now.as_second().saturating_sub(last).max(0) as u64;
            match error_after {
                _ if age > limit => Desired::new(
                    "Fresh",
                    false,
                    "Stale",
                    format!("last delivery is older than the {limit}s freshness SLA"),
                ),
                Some(error_after) if age > error_after => Desired::new(
                    "Fresh",
                    false,
                    "ContractFreshnessBreached",
                    format!(
                        "last delivery is older than the DataContract's sla.freshness.errorAfter ({error_after}s)"
                    ),
                ),
                Some(error_after) => Desired::new(
                    "Fresh",
                    true,
                    "Fresh",
                    format!(
                        "last delivery within the {limit}s freshness SLA and the DataContract's errorAfter ({error_after}s)"
                    ),
                ),
                None => Desired::new(
                    "Fresh",
                    true,
                    "Fresh",
                    format!("last delivery within the {limit}s freshness SLA"),
                ),
            }
        }
    }
}

/// Most stale freshnessBy values status lists.
const STALE_KEYS_SHOWN: usize = 20;

/// The freshnessBy values (declared codes, not `_other`) whose last delivery is older than
/// the flow's freshness SLA, oldest first: what `FlowplaneKeyStale` fires for.
fn stale_keys(
    flow: &IntegrationFlow,
    last_by: &BTreeMap<String, i64>,
    now: Timestamp,
) -> Vec<String> {
    let limit = flow_freshness_secs(flow) as i64;
    let mut stale: Vec<(&i64, &String)> = last_by
        .iter()
        .filter(|(key, at)| key.as_str() != OTHER_KEY && now.as_second() - **at > limit)
        .map(|(key, at)| (at, key))
        .collect();
    stale.sort();
    stale
        .into_iter()
        .take(STALE_KEYS_SHOWN)
        .map(|(_, key)| key.clone())
        .collect()
}

fn flow_freshness_secs(flow: &IntegrationFlow) -> u64 {
    flow.spec
        .sla
        .as_ref()
        .and_then(|s| parse_duration(&s.freshness).ok())
        .map(|d| d.as_secs())
        .unwrap_or(DEFAULT_FRESHNESS_SECS)
}

/// A parked review as status shows it (expiry in RFC 3339; an infinite delta, from a zero
/// baseline, as the largest finite number so the status stays valid JSON).
pub fn pending_approval(review: PendingReview) -> PendingApproval {
    PendingApproval {
        expires: Timestamp::from_second(review.expires)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        delta_percent: if review.delta_percent.is_finite() {
            review.delta_percent
        } else {
            f64::MAX
        },
        id: review.id,
        key: review.key,
    }
}

/// Builds the flow's status. `Ready` means data flows and is fresh; when it is False its
/// reason and message are those of the first blocking condition.
pub fn build(observed: Observed<'_>) -> IntegrationFlowStatus {
    let flow = observed.flow;
    let generation = flow.metadata.generation;
    let (desired, ready_replicas, workers_condition, rolling) = workers(flow, observed.deployment);
    let queue_condition = match &observed.queue {
        Ok(state) => match state.health.problem() {
            Some(problem) if state.health.leader.is_none() => {
                Desired::new("QueueReady", false, "NoStreamLeader", problem)
            }
            Some(problem) => Desired::new("QueueReady", false, "ReplicaLost", problem),
            None => Desired::new(
                "QueueReady",
                true,
                "QueueReady",
                format!(
                    "stream, consumer and dead-letter stream exist; {} replica(s), none lost",
                    state.health.replicas
                ),
            ),
        },
        Err(problem) => Desired::new("QueueReady", false, problem.reason, problem.message.clone()),
    };
    let fresh = freshness(
        flow,
        observed.contract_sla.as_ref(),
        &observed.queue,
        observed.now,
    );
    let autoscaled = autoscaled(flow, observed.autoscaler);
    let running_contract = observed.contract_version.is_some();
    let stalled = match &observed.blocked {
        Some((reason, message)) => Desired::new("Stalled", true, *reason, message.clone()),
        None => Desired::new("Stalled", false, "NotStalled", ""),
    };
    let reconciling = if let Some(message) = &observed.redrive_waits {
        Desired::new(
            "Reconciling",
            true,
            "RedriveWaitsForRollout",
            message.clone(),
        )
    } else if rolling && observed.blocked.is_none() && !flow.spec.suspend {
        Desired::new(
            "Reconciling",
            true,
            "RollingOut",
            format!("Deployment {} is rolling out", workers_name(flow)),
        )
    } else {
        Desired::new("Reconciling", false, "Settled", "")
    };
    let ready = if flow.spec.suspend {
        Desired::new("Ready", false, "Suspended", "the flow is suspended")
    } else if let Some((reason, message)) = &observed.blocked {
        Desired::new("Ready", false, *reason, message.clone())
    } else if !running_contract && !observed.contract.status {
        Desired::new(
            "Ready",
            false,
            observed.contract.reason.clone(),
            observed.contract.message.clone(),
        )
    } else {
        // With no contract running yet but a usable one chosen, what blocks is further down.
        // A lost replica does not: the majority still takes and serves every record, and
        // QueueReady=False says the queue tolerates no further loss.
        [
            &observed.bindings,
            &queue_condition,
            &workers_condition,
            &fresh,
        ]
        .into_iter()
        .find(|c| !c.status && c.reason != "ReplicaLost")
        .map(|c| {
            Desired::new(
                "Ready",
                false,
                c.reason.clone(),
                format!("{}: {}", c.type_, c.message),
            )
        })
        .unwrap_or_else(|| {
            Desired::new(
                "Ready",
                true,
                "DataFlowing",
                "workers are available and data is fresh",
            )
        })
    };
    let previous = flow
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut desired_conditions = vec![
        ready,
        reconciling,
        stalled,
        observed.contract,
        observed.bindings,
        queue_condition,
        workers_condition,
        fresh,
        autoscaled,
    ];
    desired_conditions.extend(observed.reports.condition());
    let conditions = merge(previous, &desired_conditions, generation, observed.now);
    let sync = observed.queue.as_ref().ok().map(|q| SyncStatus {
        last_success_time: q
            .progress
            .last_success_unix
            .and_then(|s| Timestamp::from_second(s).ok())
            .map(|t| t.to_string()),
        lag: q.lag,
        dead_letters: q.dead_letters,
        delivered: q.progress.delivered,
        duplicates: q.progress.duplicates,
        replayed: q.progress.replayed,
        cursor: q.progress.cursor.clone(),
        blocked: q.progress.blocked.clone(),
        stale_keys: stale_keys(flow, &q.progress.last_success_by, observed.now),
    });
    IntegrationFlowStatus {
        observed_generation: generation,
        conditions,
        contract_version: observed.contract_version,
        replicas: desired,
        ready_replicas,
        workers: Some(format!("{ready_replicas}/{desired}")),
        selector: Some(worker_selector_string(flow)),
        sync,
        queue: observed.queue.as_ref().ok().map(|q| QueueStatus {
            replicas: q.health.replicas.min(usize::from(u8::MAX)) as u8,
            leader: q.health.leader.clone(),
            followers: q
                .health
                .followers
                .iter()
                .map(|(name, state)| ReplicaStatus {
                    name: name.clone(),
                    state: state.as_str().to_string(),
                })
                .collect(),
        }),
        pending_approvals: observed.pending_approvals,
        routes: observed.routes,
        operations: observed.operations,
        code_drift: observed.code_drift,
        replay: observed.reports.replay,
        backfill: observed.reports.backfill,
        cursor_change: observed.reports.cursor_change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Freshness;
    use crate::queue::FlowProgress;

    #[test]
    fn a_stream_without_room_is_its_own_reason_and_other_queue_errors_are_unavailable() {
        let no_room = QueueProblem::from(QueueError::NoStorage {
            name: "FP_eu_orders".into(),
            max_bytes: 1 << 30,
            message: "insufficient storage resources available".into(),
        });
        assert_eq!(no_room.reason, "StorageExhausted");
        assert!(
            no_room.message.contains("1073741824 bytes"),
            "{}",
            no_room.message
        );
        let down = QueueProblem::from(QueueError::Stream {
            name: "FP_eu_orders".into(),
            message: "timed out".into(),
        });
        assert_eq!(down.reason, "QueueUnavailable");
    }

    fn flow() -> IntegrationFlow {
        serde_yaml::from_str(
            r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders, namespace: eu}
spec:
  source: {bindingRef: erp, entity: A_SalesOrderItem, syncMode: FullRefresh}
  target: {bindingRef: forecasting, entity: /v1/sales}
  contract: {name: sales-order-lines}
  sla: {freshness: 3h}
"#,
        )
        .unwrap()
    }

    fn delivered_ago(secs: i64, now: Timestamp) -> Result<QueueState, QueueProblem> {
        Ok(QueueState {
            progress: FlowProgress {
                last_success_unix: Some(now.as_second() - secs),
                ..FlowProgress::default()
            },
            lag: 0,
            dead_letters: 0,
            health: Default::default(),
        })
    }

    #[test]
    fn the_contracts_error_after_makes_the_flow_not_fresh() {
        let now = Timestamp::now();
        let sla = ContractSla {
            freshness: Freshness {
                warn_after: "30m".into(),
                error_after: "2h".into(),
            },
        };
        // Inside both: Fresh.
        let fresh = freshness(&flow(), Some(&sla), &delivered_ago(3600, now), now);
        assert!(fresh.status, "{fresh:?}");
        // Past errorAfter (2h), inside the flow's own 3h: not Fresh, and says why.
        let breached = freshness(&flow(), Some(&sla), &delivered_ago(2 * 3600 + 60, now), now);
        assert!(!breached.status);
        assert_eq!(breached.reason, "ContractFreshnessBreached");
        assert!(
            breached.message.contains("errorAfter (7200s)"),
            "{}",
            breached.message
        );
        // Without the contract's SLA the same age is within the flow's.
        assert!(freshness(&flow(), None, &delivered_ago(2 * 3600 + 60, now), now).status);
        // Past the flow's own SLA: Stale.
        let stale = freshness(&flow(), Some(&sla), &delivered_ago(4 * 3600, now), now);
        assert_eq!((stale.status, stale.reason.as_str()), (false, "Stale"));
    }

    #[test]
    fn stale_keys_are_the_declared_values_past_the_sla_oldest_first() {
        let now = Timestamp::now();
        let at = |ago: i64| now.as_second() - ago;
        let last_by = BTreeMap::from([
            ("DC-EAST".to_string(), at(60)),
            ("DC-WEST".to_string(), at(4 * 3600)),
            ("DC-NORTH".to_string(), at(5 * 3600)),
            (OTHER_KEY.to_string(), at(9 * 3600)),
        ]);
        assert_eq!(
            stale_keys(&flow(), &last_by, now),
            vec!["DC-NORTH", "DC-WEST"]
        );
    }
}
