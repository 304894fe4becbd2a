//! The pure half of the ConnectorBinding controller: conditions and `lastProbe` from what the
//! reconcile found (Secret key names, never values) and what the probe answered.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::api::ConnectorBinding;
use crate::api::connector_binding::{
    AuthType, ConnectorBindingStatus, ProbeResult, QuotaState as QuotaUsageState, QuotaUsage,
};
use crate::controller::conditions::{Desired, merge};
use crate::controller::data_contract::plan::mark_unknown;
use crate::queue::QuotaState;

/// The label a Secret must carry, with value "true", before a binding may use it.
pub const CREDENTIAL_LABEL: &str = "flowplane.io/credential";

/// Whether a Secret with these labels opted in to be a binding's credential.
pub fn opted_in(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(CREDENTIAL_LABEL))
        .is_some_and(|v| v == "true")
}

/// What the reconcile found of one referenced Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretState {
    Missing,
    /// It exists but lacks the opt-in label (its values were not read).
    NotOptedIn,
    /// The keys that hold a non-empty value.
    Keys(BTreeSet<String>),
}

/// One key the binding needs from a Secret, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub secret: String,
    pub key: String,
    pub purpose: String,
}

/// Every Secret key the binding needs: the auth type's keys and the CA bundle's key.
pub fn needed_keys(binding: &ConnectorBinding) -> Result<Vec<Needed>, String> {
    let spec = &binding.spec;
    let mut needed = Vec::new();
    let auth = spec.auth.type_;
    if auth != AuthType::None {
        let Some(secret) = &spec.auth.secret_ref else {
            return Err(format!(
                "auth type {auth:?} needs auth.secretRef naming a Secret with the keys {}",
                auth.required_secret_keys().join(", ")
            ));
        };
        needed.extend(auth.required_secret_keys().iter().map(|key| Needed {
            secret: secret.name.clone(),
            key: (*key).to_string(),
            purpose: format!("auth type {auth:?}"),
        }));
    }
    if let Some(ca) = &spec.endpoint.ca_secret_ref {
        needed.push(Needed {
            secret: ca.name.clone(),
            key: ca.key.clone(),
            purpose: "endpoint.caSecretRef".to_string(),
        });
    }
    Ok(needed)
}

/// Names of the Secrets the binding references (all in its own namespace).
pub fn referenced_secrets(binding: &ConnectorBinding) -> BTreeSet<String> {
    let spec = &binding.spec;
    spec.auth
        .secret_ref
        .iter()
        .map(|s| s.name.clone())
        .chain(spec.endpoint.ca_secret_ref.iter().map(|s| s.name.clone()))
        .collect()
}

/// The digest that changes when a referenced Secret is replaced or rotated: over each found
/// Secret's (name, UID, resourceVersion), never its data, so status says nothing of the values.
/// `None` when no referenced Secret exists.
pub fn secret_revision(found: &[(String, String, String)]) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let mut hasher = Sha256::new();
    for (name, uid, version) in found {
        for part in [name, uid, version] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
    }
    Some(format!("{:x}", hasher.finalize())[..16].to_string())
}

/// `SecretResolved` from the Secrets found (name -> state).
pub fn secret_resolved(
    binding: &ConnectorBinding,
    found: &BTreeMap<String, SecretState>,
) -> Desired {
    let namespace = binding.metadata.namespace.clone().unwrap_or_default();
    let needed = match needed_keys(binding) {
        Ok(needed) => needed,
        Err(message) => return Desired::new("SecretResolved", false, "SecretRefMissing", message),
    };
    if needed.is_empty() {
        return Desired::new(
            "SecretResolved",
            true,
            "NoSecretNeeded",
            "auth type None and no CA bundle: no Secret is referenced",
        );
    }
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    let by_secret: BTreeMap<&str, Vec<&Needed>> =
        needed.iter().fold(BTreeMap::new(), |mut acc, n| {
            acc.entry(n.secret.as_str()).or_default().push(n);
            acc
        });
    for (secret, wants) in &by_secret {
        let purposes = purposes(wants);
        match found.get(*secret) {
            None | Some(SecretState::Missing) => problems.push((
                "SecretNotFound",
                format!(
                    "Secret {secret} (needed by {purposes}) does not exist in namespace {namespace}"
                ),
            )),
            Some(SecretState::NotOptedIn) => problems.push((
                "SecretNotOptedIn",
                format!(
                    "Secret {secret} (needed by {purposes}) is not labelled \
                     {CREDENTIAL_LABEL}: \"true\"; a binding may only use Secrets that opted in"
                ),
            )),
            Some(SecretState::Keys(keys)) => {
                let missing: Vec<&Needed> = wants
                    .iter()
                    .copied()
                    .filter(|n| !keys.contains(&n.key))
                    .collect();
                if !missing.is_empty() {
                    problems.push((
                        "SecretKeyMissing",
                        format!(
                            "Secret {secret} lacks {} {} (needed by {}); a key with an empty value counts as missing",
                            if missing.len() == 1 { "key" } else { "keys" },
                            missing
                                .iter()
                                .map(|n| n.key.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            self::purposes(&missing)
                        ),
                    ));
                }
            }
        }
    }
    match problems.first() {
        Some((reason, _)) => Desired::new(
            "SecretResolved",
            false,
            *reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => Desired::new(
            "SecretResolved",
            true,
            "SecretResolved",
            by_secret
                .iter()
                .map(|(secret, wants)| {
                    format!(
                        "Secret {secret} has {}",
                        wants
                            .iter()
                            .map(|n| n.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

fn purposes(wants: &[&Needed]) -> String {
    let mut purposes: Vec<&str> = wants.iter().map(|n| n.purpose.as_str()).collect();
    purposes.dedup();
    purposes.join(" and ")
}

/// What one probe (with its retries) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub reachable: bool,
    pub status_code: Option<u16>,
    pub message: String,
}

/// The probe's part of the status: not configured, not possible (why), or done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    NotConfigured,
    NotPossible {
        reason: &'static str,
        message: String,
    },
    Done(ProbeOutcome),
    /// Not probed, and will not be until the spec or the operator's policy changes (the
    /// SSRF guard refused the target; see [`super::policy`]).
    Refused {
        reason: &'static str,
        message: String,
    },
}

/// `lastProbe` after `outcome`: `since` moves only when reachability flips, so identical
/// probes leave the status as it was.
pub fn last_probe(
    previous: Option<&ProbeResult>,
    outcome: &ProbeOutcome,
    now: Timestamp,
) -> ProbeResult {
    let since = match previous {
        Some(p) if p.reachable == outcome.reachable => p.since.clone(),
        _ => now.to_string(),
    };
    ProbeResult {
        reachable: outcome.reachable,
        status_code: outcome.status_code,
        message: outcome.message.clone(),
        since,
    }
}

/// The binding's status: `Ready` = `SecretResolved` and (when probed) `Reachable`.
pub fn build(
    binding: &ConnectorBinding,
    secret: Desired,
    probe: &Probe,
    now: Timestamp,
) -> ConnectorBindingStatus {
    let previous = binding.status.clone().unwrap_or_default();
    let mut unknown = false;
    let (reachable, last) = match probe {
        Probe::NotConfigured => (None, None),
        Probe::NotPossible { reason, message } => {
            unknown = true;
            (
                Some(Desired::new("Reachable", false, *reason, message.clone())),
                previous.last_probe.clone(),
            )
        }
        // No lastProbe: an earlier probe's answer belongs to another target.
        Probe::Refused { reason, message } => (
            Some(Desired::new("Reachable", false, *reason, message.clone())),
            None,
        ),
        Probe::Done(outcome) => (
            Some(if outcome.reachable {
                Desired::new("Reachable", true, "Reachable", outcome.message.clone())
            } else {
                Desired::new("Reachable", false, "Unreachable", outcome.message.clone())
            }),
            Some(last_probe(previous.last_probe.as_ref(), outcome, now)),
        ),
    };
    let blocking = std::iter::once(&secret)
        .chain(reachable.as_ref())
        .find(|c| !c.status);
    let ready = match blocking {
        Some(c) => Desired::new("Ready", false, c.reason.clone(), c.message.clone()),
        None if reachable.is_some() => Desired::new(
            "Ready",
            true,
            "Ready",
            "credentials resolved and the endpoint answers its health check",
        ),
        None => Desired::new(
            "Ready",
            true,
            "Ready",
            "credentials resolved (no health check configured)",
        ),
    };
    // Missing Secrets or keys stay missing until someone creates them or edits the binding,
    // and a target the policy refuses stays refused: Stalled. An unreachable endpoint may come
    // back by itself: not Stalled.
    let refused = match (probe, &reachable) {
        (Probe::Refused { .. }, Some(r)) => Some(r),
        _ => None,
    };
    let stalled = match Some(&secret).filter(|s| !s.status).or(refused) {
        None => Desired::new("Stalled", false, "NotStalled", ""),
        Some(c) => Desired::new("Stalled", true, c.reason.clone(), c.message.clone()),
    };
    let desired: Vec<Desired> = [Some(ready), Some(stalled), Some(secret), reachable]
        .into_iter()
        .flatten()
        .collect();
    let mut conditions = merge(
        &previous.conditions,
        &desired,
        binding.metadata.generation,
        now,
    );
    if unknown {
        mark_unknown(&mut conditions, &previous.conditions, "Reachable", now);
    }
    ConnectorBindingStatus {
        observed_generation: binding.metadata.generation,
        conditions,
        last_probe: last,
        quota: None,
        secret_revision: None,
    }
}

/// The binding's quota as its workers left it in the shared record (`queue::quota`), at
/// `now_ms`; None without a rate limit. A record of an earlier day counts nothing yet.
pub fn quota_usage(
    binding: &ConnectorBinding,
    state: Option<&QuotaState>,
    now_ms: i64,
) -> Option<QuotaUsage> {
    let limit = binding.spec.rate_limit.as_ref()?;
    let day = crate::queue::quota::utc_day(now_ms);
    let used_today = state
        .filter(|s| s.day == day)
        .map(|s| s.used_today)
        .unwrap_or(0);
    let rfc3339 = |ms: i64| {
        Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let (state, message, until) = match (limit.requests_per_day, state) {
        (Some(per_day), _) if used_today >= per_day => (
            QuotaUsageState::Exhausted,
            Some(format!(
                "the daily quota of {per_day} requests is used up; workers hold their records until the next UTC day or a higher rateLimit.requestsPerDay"
            )),
            // Midnight UTC after `now`.
            Some(rfc3339((now_ms.div_euclid(86_400_000) + 1) * 86_400_000)),
        ),
        (_, Some(s)) if s.not_before_ms > now_ms => (
            QuotaUsageState::Paused,
            Some(
                "the endpoint asked to wait (Retry-After); every worker of the binding waits"
                    .into(),
            ),
            Some(rfc3339(s.not_before_ms)),
        ),
        _ => (QuotaUsageState::Available, None, None),
    };
    Some(QuotaUsage {
        day,
        used_today,
        requests_per_day: limit.requests_per_day,
        state,
        message,
        until,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_revision_changes_with_any_version_and_only_then() {
        let found = |v: &str| vec![("creds".to_string(), "uid-1".to_string(), v.to_string())];
        assert_eq!(super::secret_revision(&[]), None);
        assert_eq!(
            super::secret_revision(&found("7")),
            super::secret_revision(&found("7"))
        );
        assert_ne!(
            super::secret_revision(&found("7")),
            super::secret_revision(&found("8"))
        );
    }

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn binding(auth: &str, ca: bool, health: bool) -> ConnectorBinding {
        let mut yaml = String::from(
            "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\n\
             metadata: {name: erp, namespace: n, generation: 3}\n\
             spec:\n  system: Erp\n  protocol: Rest\n  endpoint:\n    url: https://erp.example.com\n",
        );
        if ca {
            yaml.push_str("    caSecretRef: {name: erp-ca, key: ca.crt}\n");
        }
        yaml.push_str(auth);
        if health {
            yaml.push_str("  healthCheck: {path: /health}\n");
        }
        serde_yaml::from_str(&yaml).unwrap()
    }

    const BASIC: &str = "  auth: {type: Basic, secretRef: {name: erp-user}}\n";

    fn assert_mentions(condition: &Desired, text: &str) {
        assert!(condition.message.contains(text), "{}", condition.message);
    }

    fn keys(list: &[&str]) -> SecretState {
        SecretState::Keys(list.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn a_missing_secret_and_missing_keys_are_named() {
        let b = binding(BASIC, true, false);
        let missing = secret_resolved(&b, &BTreeMap::new());
        assert!(!missing.status);
        assert_eq!(missing.reason, "SecretNotFound");
        assert_mentions(
            &missing,
            "Secret erp-user (needed by auth type Basic) does not exist in namespace n",
        );
        assert_mentions(&missing, "Secret erp-ca");

        let found = BTreeMap::from([
            ("erp-user".to_string(), keys(&["username"])),
            ("erp-ca".to_string(), keys(&["ca.crt"])),
        ]);
        let lacking = secret_resolved(&b, &found);
        assert_eq!(lacking.reason, "SecretKeyMissing");
        assert_mentions(&lacking, "Secret erp-user lacks key password");

        let found = BTreeMap::from([
            ("erp-user".to_string(), keys(&["username", "password"])),
            ("erp-ca".to_string(), keys(&["ca.crt"])),
        ]);
        let ok = secret_resolved(&b, &found);
        assert!(ok.status, "{}", ok.message);

        let unlabelled = BTreeMap::from([
            ("erp-user".to_string(), SecretState::NotOptedIn),
            ("erp-ca".to_string(), keys(&["ca.crt"])),
        ]);
        let refused = secret_resolved(&b, &unlabelled);
        assert_eq!(refused.reason, "SecretNotOptedIn");
        assert_mentions(
            &refused,
            "Secret erp-user (needed by auth type Basic) is not labelled flowplane.io/credential: \"true\"",
        );
        assert!(opted_in(Some(&BTreeMap::from([(
            CREDENTIAL_LABEL.to_string(),
            "true".to_string()
        )]))));
        assert!(!opted_in(Some(&BTreeMap::from([(
            CREDENTIAL_LABEL.to_string(),
            "yes".to_string()
        )]))));
        assert!(!opted_in(None));
        assert!(binding("", false, false).spec.auth.secret_ref.is_none());
        assert!(secret_resolved(&binding("", false, false), &BTreeMap::new()).status);
    }

    #[test]
    fn ready_needs_the_secret_and_a_reachable_endpoint_and_since_moves_only_on_flips() {
        let mut b = binding("", false, true);
        let ok = secret_resolved(&b, &BTreeMap::new());
        let up = ProbeOutcome {
            reachable: true,
            status_code: Some(200),
            message: "GET x answered HTTP 200".into(),
        };
        let down = ProbeOutcome {
            reachable: false,
            status_code: Some(503),
            message: "GET x answered HTTP 503".into(),
        };
        let s1 = build(&b, ok.clone(), &Probe::Done(up.clone()), at(100));
        assert_eq!(
            s1.conditions
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str()))
                .collect::<Vec<_>>(),
            [
                ("Ready", "True"),
                ("Stalled", "False"),
                ("SecretResolved", "True"),
                ("Reachable", "True")
            ]
        );
        b.status = Some(s1.clone());
        // Same answer later: identical status, no write.
        assert_eq!(build(&b, ok.clone(), &Probe::Done(up.clone()), at(200)), s1);
        let s2 = build(&b, ok.clone(), &Probe::Done(down), at(300));
        assert_eq!(s2.last_probe.as_ref().unwrap().since, at(300).to_string());
        let ready = s2.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Unreachable")
        );
        b.status = Some(s2);
        let s3 = build(&b, ok, &Probe::Done(up), at(400));
        assert_eq!(s3.last_probe.unwrap().since, at(400).to_string());
    }

    #[test]
    fn without_the_ca_bundle_reachability_is_unknown() {
        let b = binding("", true, true);
        let s = build(
            &b,
            secret_resolved(&b, &BTreeMap::new()),
            &Probe::NotPossible {
                reason: "CABundleUnavailable",
                message: "not probed".into(),
            },
            at(100),
        );
        let reachable = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Reachable")
            .unwrap();
        assert_eq!(reachable.status, "Unknown");
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "SecretNotFound");
        // A missing Secret stays missing until someone acts: Stalled, with the same reason.
        let stalled = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "SecretNotFound")
        );
    }
}
