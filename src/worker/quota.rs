//! A binding's quota as a worker takes from it: before each request a token from the token
//! bucket the binding's workers share across the cluster (`queue::quota`: one record in the
//! binding's NATS key-value bucket, changed by compare-and-set on its revision), counted in
//! the day's requests; a `Retry-After` pauses every worker of the binding. Chosen over a
//! per-process limiter (N workers would send N times the rate) and over a quota service of our
//! own (one more thing to run): JetStream is there already and orders the writes.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::clock::now_unix_ms;
use super::http::CallError;
use crate::queue::jetstream::{read_json_entry, write_json_entry};
use crate::queue::quota::{QUOTA_KEY, QuotaState, quota_bucket, utc_day};
use crate::worker_config::EndpointConfig;

/// A pause longer than this is not waited out inside a call: the caller holds its records and
/// asks again (so a consume loop keeps its messages from being redelivered meanwhile).
const LONGEST_WAIT_IN_CALL: Duration = Duration::from_secs(5);

/// One binding's shared quota.
pub struct SharedQuota {
    store: kv::Store,
    limits: Limits,
}

/// A binding's rate limit, as the token arithmetic uses it.
struct Limits {
    binding: String,
    per_second: f64,
    burst: f64,
    per_day: Option<u64>,
}

impl SharedQuota {
    /// The quota of `endpoint`'s binding in `namespace`; None when the binding sets no rate
    /// limit.
    pub async fn open(
        js: &jetstream::Context,
        namespace: &str,
        endpoint: &EndpointConfig,
    ) -> anyhow::Result<Option<SharedQuota>> {
        let Some(limit) = &endpoint.rate_limit else {
            return Ok(None);
        };
        // Made by the operator with its replicas (a flow's NATS user may not create it); a
        // worker on a NATS without accounts that starts first makes it with 1, and the
        // operator brings it to its replicas.
        let store = quota_bucket(js, namespace, &endpoint.binding, 1).await?;
        Ok(Some(SharedQuota {
            store,
            limits: Limits {
                binding: endpoint.binding.clone(),
                per_second: f64::from(limit.requests_per_second.max(1)),
                burst: f64::from(limit.burst.max(1)),
                per_day: limit.requests_per_day,
            },
        }))
    }

    /// Makes `http` take its requests from the quota of `endpoint`'s binding, when it has one.
    pub async fn attach(
        http: &super::http::HttpClient,
        js: &jetstream::Context,
        namespace: &str,
        endpoint: &EndpointConfig,
    ) -> anyhow::Result<()> {
        if let Some(quota) = SharedQuota::open(js, namespace, endpoint).await? {
            http.share_quota(std::sync::Arc::new(quota));
        }
        Ok(())
    }

    /// Takes one request from the quota, waiting for a token (and for a short pause). Refuses
    /// with [`CallError::OverQuota`] when the day's quota is used up or the endpoint asked for
    /// a longer pause: the caller holds its records and asks again later.
    pub async fn acquire(&self) -> Result<(), CallError> {
        loop {
            let (mut state, revision) = read_json_entry::<QuotaState>(&self.store, QUOTA_KEY)
                .await
                .map_err(|e| {
                    CallError::Transient(format!("quota of {}: {e}", self.limits.binding))
                })?;
            let wait = match self.limits.take(&mut state, now_unix_ms()) {
                Ok(()) => {
                    if write_json_entry(&self.store, QUOTA_KEY, &state, revision).await {
                        return Ok(());
                    }
                    // Another worker took a token in between: read again at once.
                    continue;
                }
                Err(wait) => wait?,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Limits {
    /// Takes a token from `state` at `now`; otherwise how long to wait for one (Ok), or the
    /// refusal (Err) when that is longer than a call waits.
    fn take(&self, state: &mut QuotaState, now: i64) -> Result<(), Result<Duration, CallError>> {
        let day = utc_day(now);
        if state.day != day {
            state.day = day;
            state.used_today = 0;
        }
        if let Some(per_day) = self.per_day
            && state.used_today >= per_day
        {
            return Err(Err(CallError::OverQuota(format!(
                "the daily quota of binding {} ({per_day} requests) is used up; records are held until the next UTC day or a higher requestsPerDay",
                self.binding
            ))));
        }
        if state.not_before_ms > now {
            let wait = Duration::from_millis((state.not_before_ms - now) as u64);
            if wait > LONGEST_WAIT_IN_CALL {
                return Err(Err(CallError::OverQuota(format!(
                    "binding {}'s endpoint asked to wait (Retry-After) another {} s",
                    self.binding,
                    wait.as_secs()
                ))));
            }
            return Err(Ok(wait));
        }
        state.tokens = if state.refilled_ms == 0 {
            self.burst
        } else {
            // A clock behind the last writer's refills nothing (never negative).
            let elapsed = (now - state.refilled_ms).max(0) as f64 / 1000.0;
            (state.tokens + elapsed * self.per_second).min(self.burst)
        };
        state.refilled_ms = state.refilled_ms.max(now);
        if state.tokens < 1.0 {
            let seconds = (1.0 - state.tokens) / self.per_second;
            return Err(Ok(Duration::from_secs_f64(seconds.max(0.001))));
        }
        state.tokens -= 1.0;
        state.used_today += 1;
        Ok(())
    }
}

impl SharedQuota {
    /// The endpoint answered `Retry-After: after`: no worker of the binding sends before then.
    pub async fn pause(&self, after: Duration) {
        let until = now_unix_ms() + after.as_millis() as i64;
        for _ in 0..50 {
            let Ok((mut state, revision)) =
                read_json_entry::<QuotaState>(&self.store, QUOTA_KEY).await
            else {
                return;
            };
            if state.not_before_ms >= until {
                return;
            }
            state.not_before_ms = until;
            if write_json_entry(&self.store, QUOTA_KEY, &state, revision).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token arithmetic without NATS: a full bucket at first, refills at the rate, the
    /// day's count, a pause.
    #[test]
    fn tokens_refill_at_the_rate_and_the_day_quota_refuses() {
        let limits = Limits {
            binding: "b".into(),
            per_second: 10.0,
            burst: 2.0,
            per_day: Some(4),
        };
        let mut state = QuotaState::default();
        let t = 1_704_067_200_000;
        assert!(limits.take(&mut state, t).is_ok());
        assert!(limits.take(&mut state, t).is_ok());
        // The burst is spent: the next token comes in 1/10 s.
        assert!(
            matches!(limits.take(&mut state, t), Err(Ok(w)) if w == Duration::from_millis(100))
        );
        assert!(limits.take(&mut state, t + 100).is_ok());
        assert!(limits.take(&mut state, t + 1000).is_ok());
        assert_eq!(state.used_today, 4);
        assert!(matches!(
            limits.take(&mut state, t + 2000),
            Err(Err(CallError::OverQuota(_)))
        ));
        // A new UTC day starts a new count.
        assert!(limits.take(&mut state, t + 86_400_000).is_ok());
        assert_eq!(state.used_today, 1);
        state.not_before_ms = t + 86_400_000 + 60_000;
        assert!(matches!(
            limits.take(&mut state, t + 86_400_000 + 1000),
            Err(Err(CallError::OverQuota(_)))
        ));
        assert!(matches!(
            limits.take(&mut state, t + 86_400_000 + 58_000),
            Err(Ok(w)) if w == Duration::from_secs(2)
        ));
    }
}
