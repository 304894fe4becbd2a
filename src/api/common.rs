//! Types shared by the three kinds: conditions, durations, secret references, resilience policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// API group of every flowplane kind.
pub const GROUP: &str = "flowplane.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get flowplane` lists all three kinds.
pub const CATEGORY: &str = "flowplane";

/// Durations are Go/Kubernetes duration strings such as "500ms", "30s", "5m", "2h" or "1h30m"
/// (no days: CEL's `duration()` in the admission rules reads the same spelling).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// A Secret name (RFC 1123 subdomain).
pub const SECRET_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
/// A Kubernetes object name (RFC 1123 label: it also names the children and NATS streams).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Parses a duration written as [`DURATION_PATTERN`] allows. The schema already refuses other
/// spellings at admission; offline commands get the same answer here: the shape is checked
/// against the same pattern, the arithmetic is jiff's (its "friendly" duration format).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    static SHAPE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(DURATION_PATTERN)
            .unwrap_or_else(|e| unreachable!("DURATION_PATTERN is a valid regex: {e}"))
    });
    if !SHAPE.is_match(text) {
        return Err(format!(
            "{text:?} is not a duration like 30s, 5m, 2h, 1h30m or 250ms"
        ));
    }
    let duration: jiff::SignedDuration = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    std::time::Duration::try_from(duration).map_err(|e| format!("{text:?}: {e}"))
}

/// A reference to a Secret in the object's own namespace. Cross-namespace references are not
/// expressible on purpose: a flow may only use credentials its namespace owns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME_PATTERN))]
    pub name: String,
}

/// A single key of a Secret in the object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME_PATTERN))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// How calls to an external system survive slowness and failure. A binding sets the defaults;
/// a flow may override any part for its own traffic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resilience {
    /// Timeout of one request, e.g. "30s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Retries of transient failures (timeouts, 5xx, 429) with exponential backoff and full jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Stops calling a failing system for a while instead of hammering it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// Retry with exponential backoff and full jitter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.initialBackoff) <= duration(self.maxBackoff)").message("retry.initialBackoff must not exceed retry.maxBackoff"))]
pub struct RetryPolicy {
    /// Attempts in total, the first one included.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Delay before the first retry, e.g. "500ms"; doubled on each retry up to `maxBackoff`.
    #[serde(default = "default_initial_backoff")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub initial_backoff: String,
    /// Upper bound of one backoff delay, e.g. "1m".
    #[serde(default = "default_max_backoff")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_backoff: String,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> String {
    "500ms".into()
}
fn default_max_backoff() -> String {
    "1m".into()
}

/// A circuit breaker: after `failureThreshold` consecutive failures no call is made for `openFor`,
/// then one trial call decides whether to close again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    /// How long the breaker stays open before a trial call, e.g. "30s".
    #[serde(default = "default_open_for")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub open_for: String,
}

fn default_failure_threshold() -> u32 {
    5
}
fn default_open_for() -> String {
    "30s".into()
}

/// Freshness thresholds: how old the newest delivered data may be.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Freshness {
    /// Data older than this raises a warning, e.g. "15m".
    #[schemars(pattern(DURATION_PATTERN))]
    pub warn_after: String,
    /// Data older than this makes the flow not Fresh and fires the critical alert, e.g. "1h".
    #[schemars(pattern(DURATION_PATTERN))]
    pub error_after: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_kubernetes_spells_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("168h"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("7d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s30").is_err());
        assert!(parse_duration("1 h").is_err());
    }
}
