//! Switchable misbehaviour shared by the simulators: latency, and failing requests with a
//! status (5xx, or 429 with `Retry-After`) either for the next N requests or until cleared.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// What the admin endpoint sets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    /// Added to every request.
    #[serde(default)]
    pub latency_ms: u64,
    /// Status every affected request fails with (e.g. 500, 503, 429); none means healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How many requests fail; none means every request until the faults are cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `Retry-After` seconds sent with 429 and 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// The current faults and how many requests they failed.
#[derive(Default)]
pub struct Faults {
    spec: Mutex<FaultSpec>,
    failed: std::sync::atomic::AtomicU64,
}

impl Faults {
    /// Replaces the faults.
    pub fn set(&self, spec: FaultSpec) {
        *lock(&self.spec) = spec;
    }

    /// Back to healthy.
    pub fn clear(&self) {
        self.set(FaultSpec::default());
    }

    /// Requests failed on purpose so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies latency, then decides whether this request fails; `Some` is the response to send.
    pub async fn intercept(&self) -> Option<Response> {
        let (latency, failure) = {
            let mut spec = lock(&self.spec);
            let failure = match (spec.status, spec.count) {
                (Some(_), Some(0)) => None,
                (Some(status), Some(n)) => {
                    spec.count = Some(n - 1);
                    Some((status, spec.retry_after_secs))
                }
                (Some(status), None) => Some((status, spec.retry_after_secs)),
                (None, _) => None,
            };
            (spec.latency_ms, failure)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let (status, retry_after) = failure?;
        self.failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, "simulated failure").into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        Some(response)
    }
}

/// A poisoned lock only means another request panicked; the data is still usable for a sim.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
