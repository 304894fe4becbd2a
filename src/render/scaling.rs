//! Autoscaling on queue lag: a KEDA ScaledObject (nats-jetstream trigger) when KEDA is
//! installed, otherwise an autoscaling/v2 HorizontalPodAutoscaler on the workers' lag metric
//! when the cluster serves `external.metrics.k8s.io`, otherwise none: an HPA that can never
//! read its metric only warns (`FailedGetExternalMetric`) every 15 s and never scales, so the
//! workers run a fixed count instead and the flow's status says why.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::DynamicObject;
use serde_json::json;

use super::optional_kinds;
use crate::api::IntegrationFlow;
use crate::worker_config::WorkerConfig;

use super::RenderSettings;
use super::labels::{flow_name, metadata, workers_name};

/// Metric the workers export with the flow's consumer lag (pending records).
pub const LAG_METRIC: &str = "flowplane_worker_lag_records";

/// A flow wants an autoscaler when it is running, not scaled to a fixed count (`kubectl
/// scale`), and its replica range is a range.
pub fn wants_autoscaling(flow: &IntegrationFlow) -> bool {
    let scaling = &flow.spec.scaling;
    !flow.spec.suspend && scaling.replicas.is_none() && scaling.min_replicas < scaling.max_replicas
}

/// What sets a flow's worker count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Autoscaler {
    /// KEDA's ScaledObject (KEDA reads the lag from NATS itself).
    ScaledObject,
    /// An HPA on the external lag metric, read through the cluster's metrics adapter.
    HorizontalPodAutoscaler,
    /// The flow wants autoscaling but nothing could serve it its metric: a fixed count.
    NoMetricsApi,
    /// The flow asks for a fixed count (suspended, `kubectl scale`, or min = max).
    None,
}

pub fn autoscaler(flow: &IntegrationFlow, settings: &RenderSettings) -> Autoscaler {
    if !wants_autoscaling(flow) {
        Autoscaler::None
    } else if settings.keda {
        Autoscaler::ScaledObject
    } else if settings.external_metrics {
        Autoscaler::HorizontalPodAutoscaler
    } else {
        Autoscaler::NoMetricsApi
    }
}

/// The worker count the operator sets when no autoscaler owns it: HPAs cannot scale to zero
/// and neither can a fixed count that stands in for one, so a flow that wants autoscaling
/// without a metrics API runs at least one worker.
pub fn fixed_replicas(flow: &IntegrationFlow, autoscaler: Autoscaler) -> Option<i32> {
    let scaling = &flow.spec.scaling;
    match autoscaler {
        _ if flow.spec.suspend => Some(0),
        Autoscaler::ScaledObject | Autoscaler::HorizontalPodAutoscaler => None,
        Autoscaler::NoMetricsApi => Some(scaling.min_replicas.max(1)),
        Autoscaler::None => Some(scaling.replicas.unwrap_or(scaling.min_replicas)),
    }
}

fn scale_target(flow: &IntegrationFlow) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": workers_name(flow)})
}

/// Without KEDA the HPA reads the lag metric through a metrics adapter (e.g. prometheus-adapter);
/// HPAs cannot scale to zero, so the floor is at least one worker.
pub fn horizontal_pod_autoscaler(flow: &IntegrationFlow) -> HorizontalPodAutoscaler {
    let scaling = &flow.spec.scaling;
    let spec = json!({
        "scaleTargetRef": scale_target(flow),
        "minReplicas": scaling.min_replicas.max(1),
        "maxReplicas": scaling.max_replicas,
        "metrics": [{
            "type": "External",
            "external": {
                "metric": {"name": LAG_METRIC, "selector": {"matchLabels": {"flow": flow_name(flow)}}},
                "target": {"type": "AverageValue", "averageValue": scaling.lag_per_replica.to_string()}
            }
        }]
    });
    HorizontalPodAutoscaler {
        metadata: metadata(flow, workers_name(flow), "worker"),
        spec: super::workload::typed(spec),
        status: None,
    }
}

pub fn scaled_object(
    flow: &IntegrationFlow,
    config: &WorkerConfig,
    settings: &RenderSettings,
) -> DynamicObject {
    let scaling = &flow.spec.scaling;
    let mut object = DynamicObject::new(&workers_name(flow), &optional_kinds::scaled_object());
    object.metadata = metadata(flow, workers_name(flow), "worker");
    object.data = json!({"spec": {
        "scaleTargetRef": {"name": workers_name(flow)},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "triggers": [{
            "type": "nats-jetstream",
            "metadata": {
                "natsServerMonitoringEndpoint": settings.nats_monitoring_endpoint,
                "account": settings.nats_account,
                "stream": config.queue.stream,
                "consumer": config.queue.consumer,
                "lagThreshold": scaling.lag_per_replica.to_string()
            }
        }]
    }});
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(scaling: &str) -> IntegrationFlow {
        serde_yaml::from_str(&format!(
            "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {{name: f, namespace: n}}\nspec:\n  source: {{bindingRef: a, entity: x, syncMode: FullRefresh}}\n  target: {{bindingRef: b, entity: y}}\n  contract: {{name: c}}\n  scaling: {scaling}\n"
        ))
        .unwrap()
    }

    fn settings(keda: bool, external_metrics: bool) -> RenderSettings {
        RenderSettings {
            worker_image: "i".into(),
            nats_url: "nats://n".into(),
            nats_identity: false,
            nats_tls: false,
            nats_monitoring_endpoint: "n:8222".into(),
            nats_account: "$G".into(),
            queue_defaults: Default::default(),
            keda,
            external_metrics,
            prometheus_operator: false,
        }
    }

    #[test]
    fn without_a_metrics_api_a_flow_runs_its_minimum_and_gets_no_autoscaler() {
        let ranged = flow("{minReplicas: 0, maxReplicas: 4}");
        let none = autoscaler(&ranged, &settings(false, false));
        assert_eq!(none, Autoscaler::NoMetricsApi);
        assert_eq!(fixed_replicas(&ranged, none), Some(1), "never zero workers");
        let two = flow("{minReplicas: 2, maxReplicas: 4}");
        assert_eq!(
            fixed_replicas(&two, autoscaler(&two, &settings(false, false))),
            Some(2)
        );

        let hpa = autoscaler(&ranged, &settings(false, true));
        assert_eq!(hpa, Autoscaler::HorizontalPodAutoscaler);
        assert_eq!(fixed_replicas(&ranged, hpa), None);
        // KEDA brings its own metrics server; its CRD decides.
        assert_eq!(
            autoscaler(&ranged, &settings(true, false)),
            Autoscaler::ScaledObject
        );
        assert_eq!(
            autoscaler(&ranged, &settings(true, true)),
            Autoscaler::ScaledObject
        );
    }

    #[test]
    fn a_fixed_count_or_a_suspended_flow_wants_no_autoscaler() {
        let scaled = flow("{minReplicas: 1, maxReplicas: 4, replicas: 3}");
        let choice = autoscaler(&scaled, &settings(true, true));
        assert_eq!(choice, Autoscaler::None);
        assert_eq!(fixed_replicas(&scaled, choice), Some(3));
        let mut suspended = flow("{minReplicas: 1, maxReplicas: 4}");
        suspended.spec.suspend = true;
        let choice = autoscaler(&suspended, &settings(false, true));
        assert_eq!(fixed_replicas(&suspended, choice), Some(0));
    }
}
