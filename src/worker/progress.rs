//! Progress bookkeeping: counters kept locally and added to the flow's shared progress record
//! (compare-and-set in the bucket) about once a second, so the per-batch hot path never waits
//! for a key-value write.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_nats::jetstream::kv;

use crate::queue::jetstream::update_progress;
use crate::queue::{FlowProgress, QueueError};
use crate::worker_config::OTHER_KEY;

/// Changes not yet written to the bucket.
#[derive(Default)]
pub struct ProgressDeltas {
    read: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates: AtomicU64,
    last_success_unix: AtomicI64,
    lag: AtomicU64,
    lag_known: std::sync::atomic::AtomicBool,
    cursor: Mutex<Option<String>>,
    /// A change of why delivery is held, not yet written (`Some(None)`: no longer held).
    blocked: Mutex<Option<Option<String>>>,
    /// What was last written, so an unchanged state is not written again.
    blocked_written: Mutex<Option<String>>,
    /// Last delivery per value of the freshnessBy field (label values, see `key_freshness`).
    delivered_by: Mutex<BTreeMap<String, i64>>,
    /// Most values the progress record keeps (besides `_other`); 0 without freshnessBy.
    key_cap: usize,
}

impl ProgressDeltas {
    /// Bookkeeping that keeps the last delivery of at most `key_cap` values of the
    /// freshnessBy field (0: none).
    pub fn with_key_cap(key_cap: usize) -> ProgressDeltas {
        ProgressDeltas {
            key_cap,
            ..ProgressDeltas::default()
        }
    }

    /// Records of `value` (a label value) delivered just now.
    pub fn add_delivered_key(&self, value: String, unix: i64) {
        let mut by = self.delivered_by.lock().unwrap_or_else(|p| p.into_inner());
        let at = by.entry(value).or_default();
        *at = (*at).max(unix);
    }

    /// Records read from the source.
    pub fn add_read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }

    /// Records delivered, just now.
    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        self.last_success_unix
            .store(super::clock::now_unix_ms() / 1000, Ordering::Relaxed);
    }

    /// Records dead-lettered.
    pub fn add_dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the flow's stream dropped as already stored.
    pub fn add_duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    /// The extraction cursor reached.
    pub fn set_cursor(&self, cursor: Option<String>) {
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = cursor;
    }

    /// Why delivery is held (`None`: it is not); written on the next flush when it changed.
    pub fn set_blocked(&self, reason: Option<String>) {
        let written = self
            .blocked_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut pending = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if *written == reason && pending.is_none() {
            return;
        }
        *pending = Some(reason);
    }

    /// The consumer's lag when last sampled.
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
        self.lag_known.store(true, Ordering::Relaxed);
    }

    /// Adds what happened since the last flush to the shared record; the record as written,
    /// or `None` when there was nothing to write.
    pub async fn flush(
        &self,
        store: &kv::Store,
        contract_version: &str,
    ) -> Result<Option<FlowProgress>, QueueError> {
        let read = self.read.swap(0, Ordering::Relaxed);
        let delivered = self.delivered.swap(0, Ordering::Relaxed);
        let dead = self.dead_lettered.swap(0, Ordering::Relaxed);
        let duplicates = self.duplicates.swap(0, Ordering::Relaxed);
        let last_success = self.last_success_unix.swap(0, Ordering::Relaxed);
        let cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner()).take();
        let lag = self
            .lag_known
            .swap(false, Ordering::Relaxed)
            .then(|| self.lag.load(Ordering::Relaxed));
        let blocked = self
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let delivered_by =
            std::mem::take(&mut *self.delivered_by.lock().unwrap_or_else(|p| p.into_inner()));
        if read == 0
            && delivered == 0
            && dead == 0
            && duplicates == 0
            && cursor.is_none()
            && lag.is_none()
            && blocked.is_none()
            && delivered_by.is_empty()
        {
            return Ok(None);
        }
        let result = update_progress(store, |p: &mut FlowProgress| {
            p.read += read;
            p.delivered += delivered;
            p.dead_lettered += dead;
            p.duplicates += duplicates;
            if last_success > 0 {
                p.last_success_unix = Some(last_success.max(p.last_success_unix.unwrap_or(0)));
            }
            if let Some(cursor) = &cursor {
                p.cursor = Some(cursor.clone());
            }
            if let Some(lag) = lag {
                p.lag = lag;
            }
            if let Some(blocked) = &blocked {
                p.blocked = blocked.clone();
            } else if delivered > 0 {
                // Records reach the target: whatever held them (perhaps as another worker,
                // since stopped, wrote it) holds no more.
                p.blocked = None;
            }
            for (value, at) in &delivered_by {
                // Workers admit values on their own: the record stays within the cap however
                // their choices differ.
                let kept = p.last_success_by.keys().filter(|k| *k != OTHER_KEY).count();
                let value = if value == OTHER_KEY
                    || p.last_success_by.contains_key(value)
                    || kept < self.key_cap
                {
                    value.as_str()
                } else {
                    OTHER_KEY
                };
                let last = p.last_success_by.entry(value.to_string()).or_default();
                *last = (*last).max(*at);
            }
            p.contract_version = Some(contract_version.to_string());
        })
        .await;
        if let Some(blocked) = blocked {
            if result.is_ok() {
                *self
                    .blocked_written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = blocked;
            } else {
                let mut pending = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
                if pending.is_none() {
                    *pending = Some(blocked);
                }
            }
        }
        if result.is_err() {
            // Not lost: added again on the next flush.
            self.read.fetch_add(read, Ordering::Relaxed);
            self.delivered.fetch_add(delivered, Ordering::Relaxed);
            self.dead_lettered.fetch_add(dead, Ordering::Relaxed);
            self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
            for (value, at) in delivered_by {
                self.add_delivered_key(value, at);
            }
        }
        result.map(Some)
    }
}
