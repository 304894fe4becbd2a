//! Retry timing and the circuit breaker, shared by every connector and by redelivery.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::api::common::{CircuitBreaker, RetryPolicy, parse_duration};

/// Exponential backoff with full jitter (AWS architecture blog: "Exponential Backoff And
/// Jitter"): the n-th retry waits a uniformly random time in [0, min(max, initial * 2^n)],
/// which spreads the retries of many workers instead of synchronising them.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Attempts in total, the first one included.
    pub max_attempts: u32,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// From a retry policy; unparsable durations fall back to the API defaults.
    pub fn new(policy: &RetryPolicy) -> Backoff {
        Backoff {
            max_attempts: policy.max_attempts.max(1),
            initial: parse_duration(&policy.initial_backoff).unwrap_or(Duration::from_millis(500)),
            max: parse_duration(&policy.max_backoff).unwrap_or(Duration::from_secs(60)),
        }
    }

    /// The ceiling of the delay before retry number `retry` (0-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A full-jitter delay before retry number `retry`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let millis = ceiling.as_millis() as u64;
        if millis == 0 {
            return ceiling;
        }
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}

/// Consecutive failures open the breaker; while open no call is made; after `open_for` one
/// trial call is let through and its outcome closes or re-opens the breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    /// From the binding's policy.
    pub fn new(policy: &CircuitBreaker) -> Breaker {
        Breaker {
            threshold: policy.failure_threshold.max(1),
            open_for: parse_duration(&policy.open_for).unwrap_or(Duration::from_secs(30)),
            state: Mutex::new(BreakerState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Ok` when a call may be made now; otherwise how long until the next trial.
    pub fn admit(&self) -> Result<(), Duration> {
        let mut state = self.state();
        match state.open_until {
            None => Ok(()),
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else if state.trial_in_flight {
                    Err(self.open_for / 10)
                } else {
                    state.trial_in_flight = true;
                    Ok(())
                }
            }
        }
    }

    /// How long the breaker stays open (zero when closed or ready for a trial).
    pub fn open_remaining(&self) -> Duration {
        let state = self.state();
        state
            .open_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// Records a successful call: closes the breaker.
    pub fn succeeded(&self) {
        *self.state() = BreakerState::default();
    }

    /// Opens the breaker now, whatever the failure count: the endpoint refused access, which
    /// the next call would hit as well.
    pub fn trip(&self) {
        let mut state = self.state();
        state.failures = state.failures.max(self.threshold);
        state.trial_in_flight = false;
        state.open_until = Some(Instant::now() + self.open_for);
    }

    /// Records a failed call; returns true when this opened the breaker.
    pub fn failed(&self) -> bool {
        let mut state = self.state();
        state.failures += 1;
        state.trial_in_flight = false;
        if state.failures >= self.threshold {
            let was_open = state.open_until.is_some();
            state.open_until = Some(Instant::now() + self.open_for);
            return !was_open;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_jitters_below_it() {
        let backoff = Backoff::new(&RetryPolicy {
            max_attempts: 5,
            initial_backoff: "100ms".into(),
            max_backoff: "1s".into(),
        });
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(10), Duration::from_secs(1));
        assert!((0..100).all(|_| backoff.delay(3) <= Duration::from_millis(800)));
    }

    #[test]
    fn breaker_opens_after_threshold_and_lets_one_trial_through() {
        let breaker = Breaker::new(&CircuitBreaker {
            failure_threshold: 2,
            open_for: "0ms".into(),
        });
        assert!(breaker.admit().is_ok());
        assert!(!breaker.failed());
        assert!(breaker.failed());
        assert!(breaker.admit().is_ok(), "open_for elapsed: one trial");
        assert!(breaker.admit().is_err(), "only one trial at a time");
        breaker.succeeded();
        assert!(breaker.admit().is_ok());
    }

    /// A refusal of access opens the breaker at once, below the failure threshold.
    #[test]
    fn a_trip_opens_the_breaker_at_once() {
        let breaker = Breaker::new(&CircuitBreaker {
            failure_threshold: 5,
            open_for: "1s".into(),
        });
        assert!(breaker.admit().is_ok());
        breaker.trip();
        assert!(breaker.admit().is_err());
        assert!(breaker.open_remaining() > Duration::from_millis(500));
    }
}
