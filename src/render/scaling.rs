//! Autoscaling on queue lag: a KEDA ScaledObject (nats-jetstream trigger) when KEDA is
//! installed, otherwise an autoscaling/v2 HorizontalPodAutoscaler on the workers' lag metric.

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

/// A flow is autoscaled when it is running, not scaled to a fixed count (`kubectl scale`), and
/// its replica range is a range.
pub fn autoscaled(flow: &IntegrationFlow) -> bool {
    let scaling = &flow.spec.scaling;
    !flow.spec.suspend && scaling.replicas.is_none() && scaling.min_replicas < scaling.max_replicas
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
                "account": "$G",
                "stream": config.queue.stream,
                "consumer": config.queue.consumer,
                "lagThreshold": scaling.lag_per_replica.to_string()
            }
        }]
    }});
    object
}
