//! When a requested redrive may run. Dead letters are moved back only once every worker runs
//! the configuration this reconcile applied: a redrive asked for right after a fix (a code map
//! edited, a contract published) would otherwise be consumed by workers that still hold the old
//! table and go straight back to the dead-letter stream. Workers read their configuration once,
//! at start (worker.json, one hashed document, one way to change it: a rollout), so "every
//! worker runs it" is "the Deployment finished rolling out, no old or terminating pod left".

use k8s_openapi::api::apps::v1::Deployment;

use crate::api::IntegrationFlow;
use crate::render::labels::workers_name;

use super::REDRIVE_ANNOTATION;

/// Short name under which status.operations acknowledges a redrive.
const OPERATION: &str = "redrive";

/// The redrive annotation's value when it asks for a redrive not acknowledged yet.
pub fn requested(flow: &IntegrationFlow) -> Option<&str> {
    let value = flow
        .metadata
        .annotations
        .as_ref()?
        .get(REDRIVE_ANNOTATION)?;
    let acknowledged = flow
        .status
        .as_ref()
        .and_then(|s| s.operations.get(OPERATION));
    (acknowledged != Some(value)).then_some(value.as_str())
}

/// Why a redrive has to wait, or None when every worker runs the applied configuration.
/// `blocked` is the spec problem that kept this reconcile from applying the configuration.
pub fn wait_reason(
    flow: &IntegrationFlow,
    blocked: Option<&(&'static str, String)>,
    deployment: Option<&Deployment>,
) -> Option<String> {
    if let Some((reason, _)) = blocked {
        return Some(format!(
            "the flow is stalled ({reason}): its workers still run the last applied \
             configuration, which may not hold the fix"
        ));
    }
    // No Deployment: no worker runs any configuration; the one created next runs this one.
    let deployment = deployment?;
    let desired = deployment.spec.replicas.unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let old = status.replicas.unwrap_or(0) - updated;
    // Pods being deleted are not in `replicas`; an old one may still hold records until its
    // worker has stopped (it stops fetching on SIGTERM).
    let terminating = status.terminating_replicas.unwrap_or(0);
    if observed && updated >= desired && old <= 0 && terminating == 0 {
        return None;
    }
    let name = workers_name(flow);
    Some(if observed {
        format!(
            "waits until every worker runs the new configuration: Deployment {name} has \
             {updated} of {desired} workers updated, {old} old and {terminating} terminating"
        )
    } else {
        format!(
            "waits until every worker runs the new configuration: Deployment {name} has not started rolling it out"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    fn flow(annotation: Option<&str>, acknowledged: Option<&str>) -> IntegrationFlow {
        let mut f: IntegrationFlow = serde_yaml::from_str(
            "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {name: orders, namespace: n}\nspec:\n  source: {bindingRef: a, entity: x, syncMode: FullRefresh}\n  target: {bindingRef: b, entity: y}\n  contract: {name: c}\n",
        )
        .unwrap();
        if let Some(value) = annotation {
            f.metadata.annotations =
                Some([(REDRIVE_ANNOTATION.to_string(), value.to_string())].into());
        }
        if let Some(value) = acknowledged {
            let mut status = crate::api::integration_flow::IntegrationFlowStatus::default();
            status.operations.insert(OPERATION.into(), value.into());
            f.status = Some(status);
        }
        f
    }

    fn deployment(
        generation: i64,
        observed: i64,
        desired: i32,
        (replicas, updated, terminating): (i32, i32, Option<i32>),
    ) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(generation);
        d.spec = DeploymentSpec {
            replicas: Some(desired),
            ..Default::default()
        };
        d.status = Some(DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            terminating_replicas: terminating,
            ..Default::default()
        });
        d
    }

    #[test]
    fn a_redrive_is_requested_until_its_value_is_acknowledged() {
        assert_eq!(requested(&flow(None, None)), None);
        assert_eq!(
            requested(&flow(Some("reason=UnmappedCode"), None)),
            Some("reason=UnmappedCode")
        );
        assert_eq!(requested(&flow(Some("2"), Some("1"))), Some("2"));
        assert_eq!(requested(&flow(Some("1"), Some("1"))), None);
    }

    #[test]
    fn a_redrive_waits_for_every_old_and_terminating_worker_to_go() {
        let f = flow(Some("1"), None);
        // Rolled out: every worker runs the applied configuration.
        assert_eq!(
            wait_reason(&f, None, Some(&deployment(3, 3, 2, (2, 2, Some(0))))),
            None
        );
        assert_eq!(
            wait_reason(&f, None, Some(&deployment(3, 3, 2, (2, 2, None)))),
            None
        );
        // No Deployment, or suspended (zero workers): nothing old runs.
        assert_eq!(wait_reason(&f, None, None), None);
        assert_eq!(
            wait_reason(&f, None, Some(&deployment(4, 4, 0, (0, 0, None)))),
            None
        );
        // The new template not yet seen by the Deployment controller.
        let message = wait_reason(&f, None, Some(&deployment(4, 3, 2, (2, 2, Some(0))))).unwrap();
        assert!(
            message.contains("has not started rolling it out"),
            "{message}"
        );
        // Half way: one new, one old.
        let message = wait_reason(&f, None, Some(&deployment(4, 4, 2, (2, 1, Some(0))))).unwrap();
        assert!(
            message.ends_with("orders-worker has 1 of 2 workers updated, 1 old and 0 terminating"),
            "{message}"
        );
        // Every pod new, but an old one still shutting down.
        let message = wait_reason(&f, None, Some(&deployment(4, 4, 2, (2, 2, Some(1))))).unwrap();
        assert!(
            message.ends_with("2 of 2 workers updated, 0 old and 1 terminating"),
            "{message}"
        );
        // Surge: three pods for two desired, one of them old.
        assert!(wait_reason(&f, None, Some(&deployment(4, 4, 2, (3, 2, None)))).is_some());
        // A stalled flow did not apply the fix.
        let blocked = ("CodeMapNotFound", "code map x".to_string());
        let message =
            wait_reason(&f, Some(&blocked), Some(&deployment(3, 3, 2, (2, 2, None)))).unwrap();
        assert!(message.contains("stalled (CodeMapNotFound)"), "{message}");
    }
}
