//! The worker's Prometheus metrics and its `/metrics`, `/healthz` and `/readyz` endpoints.
//! Labels are bounded: the flow (constant per process) and the dead-letter reason (a fixed set).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Unix time of the last delivered batch.
    pub last_success: Gauge,
    /// Records waiting in the flow's consumer.
    pub lag: Gauge,
    ready: AtomicBool,
}

impl Metrics {
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
            "Unix time of the last delivered batch",
            last_success.clone(),
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
            ready: AtomicBool::new(false),
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

    /// Marks the worker ready (connected, queue ensured) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

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
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(metrics)
}
