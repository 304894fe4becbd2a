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
/// A Secret or ConfigMap name (RFC 1123 subdomain: dot-separated DNS labels).
pub const SECRET_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A Kubernetes object name (RFC 1123 label: it also names the children and NATS streams).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A key of a Secret or ConfigMap as the API server takes it, without `.`, `..` or a leading
/// `..` (the key becomes a file name where the Secret is mounted).
pub const SECRET_KEY_PATTERN: &str = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$";
/// Free text that lands in logs, alerts or ConfigMaps: no control characters (C0 with CR/LF,
/// DEL, C1) and no Unicode line or paragraph separators.
pub const TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x{9f}\x{2028}\x{2029}]*$";
/// A path or entity below a binding URL (or a NATS subject, or a file pattern): no whitespace
/// or control characters, no query (`?`), fragment (`#`), percent-escapes or backslashes.
/// `.`/`..` segments and a leading `//` are refused by [`path_rule`].
pub const PATH_PATTERN: &str = r"^[^\x00-\x20\x7f-\x{9f}\x{2028}\x{2029}?#%\\]+$";

/// Longest duration string: enough for "1h30m15s500ms".
pub const DURATION_MAX_LENGTH: u32 = 32;

use kube::core::{Message, Rule};

/// CEL rule: a duration field lies within `min..=max` (the API server reads it with CEL's
/// `duration()`, which takes the spelling [`DURATION_PATTERN`] allows).
pub fn duration_within(field: &str, min: &str, max: &str) -> Rule {
    Rule::new(format!(
        "duration(self) >= duration('{min}') && duration(self) <= duration('{max}')"
    ))
    .message(Message::Message(format!(
        "{field} must be at least {min} and at most {max}"
    )))
}

/// CEL rule: a path has no `.` or `..` segment (traversal out of the binding's base path or
/// drop directory) and starts neither with `//` nor with a scheme (`https:`): either would name
/// another host to a URL resolver.
pub fn path_rule(field: &str) -> Rule {
    Rule::new(
        "!self.matches('(^|/)[.][.]?(/|$)') && !self.startsWith('//') && !self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*:')",
    )
    .message(Message::Message(format!(
        "{field} must not contain '.' or '..' segments or start with '//' or a URL scheme: it is a path below the binding"
    )))
}

/// CEL rule: a regular expression compiles (RE2, the syntax of CEL's `matches()` and close to
/// the worker's regex crate). `matches()` fails on a bad expression, which fails the rule.
pub fn regex_rule(field: &str) -> Rule {
    Rule::new("''.matches(self) == ''.matches(self)").message(Message::Message(format!(
        "{field} must be a valid regular expression (RE2 syntax)"
    )))
}

/// CEL rule: a URL parses (Kubernetes CEL URL library) and names a host; a file:// URL names an
/// absolute directory instead. The host is matched on the URL text (a DNS name or a bracketed
/// IPv6 address): Go's parser (the API server) and the url crate (offline `validate_cel`)
/// disagree on hosts such as `https:///x`, and a regex on `getHostname()` costs more than the
/// API server's budget allows.
pub fn url_with_host(field: &str) -> Rule {
    Rule::new(
        "isURL(self) && (self.startsWith('file://') ? self.startsWith('file:///') : (self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://(\\\\[[0-9a-fA-F:.]+\\\\]|([a-zA-Z0-9_]([-a-zA-Z0-9_]{0,61}[a-zA-Z0-9_])?[.])*[a-zA-Z0-9_]([-a-zA-Z0-9_]{0,61}[a-zA-Z0-9_])?[.]?)(:[0-9]{1,5})?(/|$)') && url(self).getHostname() != '' && (url(self).getPort() == '' || (int(url(self).getPort()) >= 1 && int(url(self).getPort()) <= 65535))))",
    )
    .message(Message::Message(format!(
        "{field} must be an absolute URL with a host (a DNS name or an IP address) and a port in 1..65535 if any (file:///<absolute directory> for file drops)"
    )))
}

/// CEL rule: a URL carries no user-info (credentials come from Secrets only, and the URL is
/// copied into the worker ConfigMap), no query or fragment (paths and queries are added per
/// flow), and no `.`/`..` segments.
pub fn url_without_credentials(field: &str) -> Rule {
    Rule::new(
        "!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@') && !self.contains('?') && !self.contains('#') && !self.matches('/[.][.]?(/|$)') && !self.lowerAscii().matches('%(2e|[01][0-9a-f]|7f)')",
    )
    .message(Message::Message(format!(
        "{field} must not carry user-info (user:password@: credentials come from auth.secretRef), a query, a fragment, '.'/'..' segments (also percent-encoded) or percent-encoded control characters"
    )))
}

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
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub key: String,
}

/// How calls to an external system survive slowness and failure. A binding sets the defaults;
/// a flow may override any part for its own traffic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resilience {
    /// Timeout of one request, e.g. "30s": at least 100ms, at most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("resilience.timeout", "100ms", "1h"))]
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
    /// At least 1ms, at most 1h.
    #[serde(default = "default_initial_backoff")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("retry.initialBackoff", "1ms", "1h"))]
    pub initial_backoff: String,
    /// Upper bound of one backoff delay, e.g. "1m"; at most 24h.
    #[serde(default = "default_max_backoff")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("retry.maxBackoff", "1ms", "24h"))]
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
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    /// How long the breaker stays open before a trial call, e.g. "30s"; 1s to 24h.
    #[serde(default = "default_open_for")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("circuitBreaker.openFor", "1s", "24h"))]
    pub open_for: String,
}

fn default_failure_threshold() -> u32 {
    5
}
fn default_open_for() -> String {
    "30s".into()
}

/// Freshness thresholds: how old the newest delivered data may be.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.warnAfter) < duration(self.errorAfter)").message("sla.freshness.warnAfter must be shorter than sla.freshness.errorAfter: the warning comes before the error").field_path(".warnAfter"))]
pub struct Freshness {
    /// Data older than this raises a warning, e.g. "15m"; 1m to 8760h.
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("sla.freshness.warnAfter", "1m", "8760h"))]
    pub warn_after: String,
    /// Data older than this makes the flow not Fresh and fires the critical alert, e.g. "1h";
    /// 1m to 8760h, and longer than `warnAfter`.
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("sla.freshness.errorAfter", "1m", "8760h"))]
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
