//! The worker's Prometheus metrics and its `/metrics`, `/healthz` and `/readyz` endpoints.
//! Labels are bounded: the flow (constant per process), the dead-letter reason, the task, the
//! target and the latency's basis (fixed sets), and the freshnessBy field's values (declared
//! codes only, at most `maxValues` plus `_other`: see `key_freshness`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::transform::Reason;

/// Label of the dead-letter counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// One of [`Reason::as_str`].
    pub reason: &'static str,
}

/// Label of the task restart counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    /// `extractor` or `consumer`.
    pub task: &'static str,
}

/// Label of the per-value freshness gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    /// The freshnessBy field.
    pub key_field: String,
    /// A declared code, or `_other`.
    pub key: String,
}

/// Label of the failed-delivery counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// `target` (the flow's target) or `escalation` (approval.escalateTo).
    pub target: &'static str,
}

/// Label of the end-to-end latency: what the clock starts at.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinceLabel {
    /// `change` (the record's change timestamp from the source's cursor field) or `read`
    /// (when the extractor read it: the source has no change timestamp).
    pub since: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn end_to_end_histogram() -> Histogram {
    // 10 ms to about 90 minutes.
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

/// Everything the worker counts.
pub struct Metrics {
    registry: Registry,
    /// Records read from the source.
    pub read: Counter,
    /// Records delivered to the target.
    pub delivered: Counter,
    /// Records the flow's stream dropped as already stored (same `Nats-Msg-Id`).
    pub duplicates: Counter,
    /// Records moved to the dead-letter stream, by reason.
    pub dead_lettered: Family<ReasonLabel, Counter>,
    /// Calls retried after a transient failure, and records redelivered (NAKed).
    pub retried: Counter,
    /// Calls slowed by the client-side rate limit or answered 429 by the system.
    pub throttled: Counter,
    /// Quality rules with action Alert that failed (the record was delivered).
    pub quality_alerts: Counter,
    /// Time to map, validate and deliver one batch.
    pub batch_seconds: Histogram,
    /// Unix time of the flow's last delivered batch: by this worker, or as the flow's progress
    /// record says (any worker, before a restart); 0 until the flow has delivered anything.
    pub last_success: Gauge,
    /// Records waiting in the flow's consumer.
    pub lag: Gauge,
    /// Unix time the oldest record still in the flow's dead-letter stream was dead-lettered;
    /// 0 while the stream is empty (a redrive removes what it takes back).
    pub oldest_dead_letter: Gauge,
    /// Supervised tasks restarted after they failed, by task.
    pub task_restarts: Family<TaskLabel, Counter>,
    /// 1 while the target refuses the binding's access (401, 403, 404 of a whole request).
    pub target_refused: Gauge,
    /// Unix time of the last delivery per value of the freshnessBy field.
    pub key_last_success: Family<KeyLabel, Gauge>,
    /// Unix time the oldest review still pending was parked; 0 when none.
    pub oldest_pending_review: Gauge,
    /// Records a target refused for good or that used up their deliveries to it (dead-lettered
    /// at delivery): replenishment proposals that did not post, in a forecast -> ERP flow.
    pub delivery_failed: Family<TargetLabel, Counter>,
    /// Seconds from a record's source change (or read) to its delivery.
    pub end_to_end_seconds: HistogramFamily<SinceLabel>,
    ready: AtomicBool,
    /// Why the worker is not ready, by what says so (`target`, a task): reasons only.
    not_ready: Mutex<BTreeMap<&'static str, String>>,
    /// Consecutive failures of a task without a success between them.
    failing: Mutex<BTreeMap<&'static str, u32>>,
}

impl Metrics {
    /// Counts a record a target will never take: the flow's own target, or (`escalation`) the
    /// one its approval rules escalate to.
    pub fn count_delivery_failed(&self, escalation: bool) {
        let target = if escalation { "escalation" } else { "target" };
        self.delivery_failed
            .get_or_create(&TargetLabel { target })
            .inc();
    }
    /// Metrics labelled with the flow they belong to.
    pub fn new(namespace: &str, flow: &str) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix_and_labels(
            "flowplane_worker",
            [
                ("namespace".into(), namespace.to_string().into()),
                ("flow".into(), flow.to_string().into()),
            ]
            .into_iter(),
        );
        let read = Counter::default();
        let delivered = Counter::default();
        let duplicates = Counter::default();
        let dead_lettered = Family::<ReasonLabel, Counter>::default();
        let retried = Counter::default();
        let throttled = Counter::default();
        let quality_alerts = Counter::default();
        let batch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let last_success = Gauge::default();
        let lag = Gauge::default();
        let oldest_dead_letter = Gauge::default();
        let task_restarts = Family::<TaskLabel, Counter>::default();
        let target_refused = Gauge::default();
        let key_last_success = Family::<KeyLabel, Gauge>::default();
        let oldest_pending_review = Gauge::default();
        let delivery_failed = Family::<TargetLabel, Counter>::default();
        let end_to_end_seconds: HistogramFamily<SinceLabel> =
            Family::new_with_constructor(end_to_end_histogram);
        registry.register(
            "key_last_success_timestamp_seconds",
            "Unix time of the last delivery per value of the flow's freshnessBy field (from its progress record: survives restarts)",
            key_last_success.clone(),
        );
        registry.register(
            "oldest_pending_review_timestamp_seconds",
            "Unix time the oldest forecast delta still waiting for a planner's decision was parked; 0 when none",
            oldest_pending_review.clone(),
        );
        registry.register(
            "records_delivery_failed",
            "Records a target refused for good or that used up their deliveries (dead-lettered at delivery)",
            delivery_failed.clone(),
        );
        registry.register(
            "end_to_end_latency_seconds",
            "Seconds from a record's change at the source (since=change: its change timestamp; since=read: when it was read) to its delivery",
            end_to_end_seconds.clone(),
        );
        registry.register(
            "task_restarts",
            "Supervised tasks (extractor, consume loops) restarted after they failed",
            task_restarts.clone(),
        );
        registry.register(
            "target_refused",
            "1 while the target refuses the binding's access (401, 403, 404)",
            target_refused.clone(),
        );
        registry.register("records_read", "Records read from the source", read.clone());
        registry.register(
            "records_delivered",
            "Records delivered to the target",
            delivered.clone(),
        );
        registry.register(
            "records_duplicate",
            "Records the flow's stream dropped as already stored (same Nats-Msg-Id)",
            duplicates.clone(),
        );
        registry.register(
            "records_dead_lettered",
            "Records moved to the dead-letter stream",
            dead_lettered.clone(),
        );
        registry.register(
            "records_retried",
            "Retried calls and redelivered records",
            retried.clone(),
        );
        registry.register(
            "requests_throttled",
            "Calls slowed by rate limits or 429s",
            throttled.clone(),
        );
        registry.register(
            "quality_alerts",
            "Alert-only quality rule violations",
            quality_alerts.clone(),
        );
        registry.register(
            "batch_latency_seconds",
            "Time to map, validate and deliver one batch",
            batch_seconds.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the flow's last delivered batch (from its progress record: survives restarts); 0 before the first",
            last_success.clone(),
        );
        registry.register(
            "oldest_dead_letter_timestamp_seconds",
            "Unix time the oldest record in the flow's dead-letter stream was dead-lettered; 0 when none",
            oldest_dead_letter.clone(),
        );
        registry.register(
            "lag_records",
            "Records waiting in the flow's consumer",
            lag.clone(),
        );
        for reason in Reason::ALL {
            // Every reason shows from the start, at zero.
            let _ = dead_lettered.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        let _ = delivery_failed.get_or_create(&TargetLabel { target: "target" });
        Arc::new(Metrics {
            registry,
            read,
            delivered,
            duplicates,
            dead_lettered,
            retried,
            throttled,
            quality_alerts,
            batch_seconds,
            last_success,
            lag,
            oldest_dead_letter,
            task_restarts,
            target_refused,
            key_last_success,
            oldest_pending_review,
            delivery_failed,
            end_to_end_seconds,
            ready: AtomicBool::new(false),
            not_ready: Mutex::new(BTreeMap::new()),
            failing: Mutex::new(BTreeMap::new()),
        })
    }

    /// Counts one dead letter.
    pub fn dead_letter(&self, reason: Reason) {
        self.dead_lettered
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Raises the last-success time to `unix` (from the progress record) if that is newer.
    pub fn observe_last_success(&self, unix: Option<i64>) {
        if let Some(unix) = unix {
            self.last_success.set(self.last_success.get().max(unix));
        }
    }

    /// Raises the last delivery of each value of the freshnessBy field `field` to what the
    /// flow's progress record holds.
    pub fn observe_key_success(&self, field: &str, recorded: &BTreeMap<String, i64>) {
        for (key, unix) in recorded {
            let gauge = self.key_last_success.get_or_create(&KeyLabel {
                key_field: field.to_string(),
                key: key.clone(),
            });
            gauge.set(gauge.get().max(*unix));
        }
    }

    /// Marks the worker ready (connected, queue ensured) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the worker not ready because of `what` (`Some(reason)`), or clears that.
    pub fn set_not_ready(&self, what: &'static str, reason: Option<String>) {
        let mut map = self.not_ready.lock().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(reason) => map.insert(what, reason),
            None => map.remove(what),
        };
    }

    /// A supervised task failed and is restarted: counted, and the worker is not ready until
    /// it runs again.
    pub fn task_failed(&self, task: &'static str, reason: String) {
        self.task_restarts.get_or_create(&TaskLabel { task }).inc();
        *self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(task)
            .or_default() += 1;
        self.set_not_ready(task, Some(reason));
    }

    /// A supervised task runs (again).
    pub fn task_running(&self, task: &'static str) {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task);
        self.set_not_ready(task, None);
    }

    /// `None` when ready, else why not.
    pub fn readiness(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("starting or stopping".into());
        }
        let map = self.not_ready.lock().unwrap_or_else(|p| p.into_inner());
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(what, why)| format!("{what}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// `None` while alive; else why a restart of the pod may help (a task failed
    /// [`LIVENESS_FAILURES`] times in a row).
    pub fn liveness(&self) -> Option<String> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing
            .iter()
            .find(|(_, n)| **n >= LIVENESS_FAILURES)
            .map(|(task, n)| format!("{task} failed {n} times in a row"))
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Consecutive failures of a task after which `/healthz` fails (the kubelet restarts the pod).
pub const LIVENESS_FAILURES: u32 = 10;

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.liveness() {
                    None => (StatusCode::OK, "ok".to_string()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not alive: {why}")),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.readiness() {
                    None => (StatusCode::OK, "ready".to_string()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                }
            }),
        )
        .with_state(metrics)
}
