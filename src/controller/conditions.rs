//! Conditions as Kubernetes API conventions want them: one per type, `observedGeneration` on
//! each, and `lastTransitionTime` kept unless the status flips, so an unchanged world produces
//! an unchanged status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::common::Condition;

/// The desired state of one condition; `lastTransitionTime` is decided by [`merge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Desired {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Builds the new condition list from the desired conditions, keeping each condition's
/// `lastTransitionTime` from `previous` when its status did not change. Conditions of types
/// not in `desired` are dropped (we own the whole list).
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = status_str(d.status).to_string();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Types whose status differs between the two lists (new, removed or flipped), for events.
pub fn transitions<'a>(previous: &'a [Condition], next: &'a [Condition]) -> Vec<&'a Condition> {
    next.iter()
        .filter(|n| {
            !previous
                .iter()
                .any(|p| p.type_ == n.type_ && p.status == n.status && p.reason == n.reason)
        })
        .collect()
}

/// Status of a condition type, if present.
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_is_kept_until_the_status_flips() {
        let first = merge(
            &[],
            &[Desired::new("Ready", false, "Waiting", "x")],
            Some(1),
            at(100),
        );
        assert_eq!(first[0].last_transition_time, Time(at(100)));
        // Same status, new message and generation: time kept.
        let second = merge(
            &first,
            &[Desired::new("Ready", false, "Waiting", "y")],
            Some(2),
            at(200),
        );
        assert_eq!(second[0].last_transition_time, Time(at(100)));
        assert_eq!(second[0].observed_generation, Some(2));
        // Flip: new time.
        let third = merge(
            &second,
            &[Desired::new("Ready", true, "Ready", "ok")],
            Some(2),
            at(300),
        );
        assert_eq!(third[0].last_transition_time, Time(at(300)));
        assert_eq!(transitions(&second, &third).len(), 1);
        assert!(transitions(&third, &third).is_empty());
        assert_eq!(is_true(&third, "Ready"), Some(true));
    }
}
