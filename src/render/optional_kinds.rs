//! The kinds of the optional APIs whose objects render builds (KEDA's ScaledObject, the
//! Prometheus Operator's PrometheusRule and ServiceMonitor). Whether they are installed is the
//! controller's to find out and comes in through `RenderSettings`.

use kube::api::{ApiResource, GroupVersionKind};

pub fn scaled_object() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ))
}
pub fn prometheus_rule() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "PrometheusRule",
    ))
}
pub fn service_monitor() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "ServiceMonitor",
    ))
}
