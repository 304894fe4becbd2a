//! The operator's own metrics: reconciles, errors by kind, duration.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// One code map of one flow.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeMapLabels {
    pub namespace: String,
    pub flow: String,
    pub code_map: String,
}

/// The watch that raised a reconcile request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub kind: &'static str,
    pub trigger: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    /// Codes the source sent that a flow's code map does not map (status.codeDrift).
    pub unmapped_codes: Family<CodeMapLabels, Gauge>,
    /// Codes of a flow's code map the source has not sent since the flow started.
    pub orphaned_codes: Family<CodeMapLabels, Gauge>,
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
        let unmapped_codes = Family::<CodeMapLabels, Gauge>::default();
        let orphaned_codes = Family::<CodeMapLabels, Gauge>::default();
        registry.register(
            "flow_unmapped_codes",
            "Codes the source sent that the flow's code map does not map",
            unmapped_codes.clone(),
        );
        registry.register(
            "flow_orphaned_codes",
            "Codes of the flow's code map the source has not sent since the flow started",
            orphaned_codes.clone(),
        );
        Metrics {
            unmapped_codes,
            orphaned_codes,
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
    fn code_drift_is_exported_per_flow_and_code_map() {
        let metrics = Metrics::default();
        let labels = CodeMapLabels {
            namespace: "eu".into(),
            flow: "orders".into(),
            code_map: "plants".into(),
        };
        metrics.unmapped_codes.get_or_create(&labels).set(1);
        metrics.orphaned_codes.get_or_create(&labels).set(2);
        let text = metrics.encode();
        for line in [
            r#"flowplane_operator_flow_unmapped_codes{namespace="eu",flow="orders",code_map="plants"} 1"#,
            r#"flowplane_operator_flow_orphaned_codes{namespace="eu",flow="orders",code_map="plants"} 2"#,
        ] {
            assert!(text.contains(line), "{text}");
        }
    }

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
