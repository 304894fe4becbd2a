//! The operator's own metrics: reconciles, errors by kind, duration.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub kind: &'static str,
    pub trigger: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconcile requests by the watch that raised them (before the queue merges requests
    /// for the same object), to see what makes reconciles grow with the number of objects.
    pub triggers: Family<TriggerLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<KindLabels, Histogram>,
    /// Write requests (anything but GET) the operator's client sent to the apiserver.
    pub kube_writes: Counter,
    pub registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flowplane_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let triggers = Family::<TriggerLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register(
            "reconcile_triggers",
            "Reconcile requests raised, by kind and the watch that raised them",
            triggers.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by kind and error class",
            errors.clone(),
        );
        let kube_writes = Counter::default();
        registry.register(
            "kube_write_requests",
            "Write requests sent to the Kubernetes API (a settled operator sends none)",
            kube_writes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, by kind",
            duration.clone(),
        );
        Metrics {
            kube_writes,
            reconciles,
            triggers,
            errors,
            duration,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile(&self, kind: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    /// Counts `requests` reconcile requests of `kind` raised by the watch named `trigger`.
    pub fn triggered(&self, kind: &'static str, trigger: &'static str, requests: usize) {
        self.triggers
            .get_or_create(&TriggerLabels { kind, trigger })
            .inc_by(requests as u64);
    }

    pub fn error(&self, kind: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { kind, error })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&KindLabels { kind: self.kind })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_and_durations_are_exported_by_kind() {
        let metrics = Metrics::default();
        drop(metrics.reconcile("IntegrationFlow"));
        metrics.error("IntegrationFlow", "kube");
        let text = metrics.encode();
        assert!(
            text.contains(r#"flowplane_operator_reconciles_total{kind="IntegrationFlow"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"flowplane_operator_reconcile_errors_total{kind="IntegrationFlow",error="kube"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"flowplane_operator_reconcile_duration_seconds_count{kind="IntegrationFlow"} 1"#
            ),
            "{text}"
        );
    }
}
