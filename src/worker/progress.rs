//! Progress bookkeeping: counters kept locally and added to the flow's shared progress record
//! (compare-and-set in the bucket) about once a second, so the per-batch hot path never waits
//! for a key-value write.
//!
//! Counts stay exact when JetStream delivers a record again or a write's reply is lost (a
//! NATS server failing over): the outcome of a record of the flow's stream is kept by its
//! stream sequence and counted only if the shared record does not have that sequence yet
//! ([`crate::queue::settled`]); and each flush carries this process's flush number, so a
//! flush retried after its write went through unconfirmed is not added twice.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_nats::jetstream::kv;

use super::lock;
use crate::queue::jetstream::{read_json_entry, update_progress};
use crate::queue::{
    FLUSH_MARK_KEPT_SECS, FlowProgress, FlushMark, PROGRESS_KEY, QueueError, SettledSequences,
};
use crate::worker_config::OTHER_KEY;

/// What became of a record of the flow's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    DeadLettered,
    /// Parked for a planner's review: counted when the review is carried out.
    Parked,
}

/// Changes not yet written to the bucket.
pub struct ProgressDeltas {
    /// This process in the record's flush marks.
    writer: String,
    read: AtomicU64,
    /// Deliveries and dead letters of records not in the flow's stream (extraction's dead
    /// letters, reviewed records): counted as they happen.
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    /// Outcomes of records of the flow's stream, by stream sequence.
    outcomes: Mutex<Vec<(u64, Outcome)>>,
    /// Every sequence this process knows to have an outcome: the shared record's settled
    /// sequences as it last wrote them, and its own outcomes since (written or not).
    known: Mutex<SettledSequences>,
    duplicates: AtomicU64,
    last_success_unix: AtomicI64,
    lag: AtomicU64,
    lag_known: std::sync::atomic::AtomicBool,
    cursor: Mutex<Option<String>>,
    /// A change of why delivery is held, not yet written (`Some(None)`: no longer held).
    blocked: Mutex<Option<Option<String>>>,
    /// What was last written, so an unchanged state is not written again.
    blocked_written: Mutex<Option<String>>,
    /// Flushes made so far; the next one takes the next number.
    flushes: AtomicU64,
    /// A flush whose write was not confirmed: written again, as it is, before anything new.
    unconfirmed: Mutex<Option<Flush>>,
    /// Last delivery per value of the freshnessBy field (label values, see `key_freshness`).
    delivered_by: Mutex<BTreeMap<String, i64>>,
    /// Most values the progress record keeps (besides `_other`); 0 without freshnessBy.
    key_cap: usize,
}

impl Default for ProgressDeltas {
    fn default() -> Self {
        ProgressDeltas {
            // Unique per process: a restarted worker must not look like one whose flushes
            // were all written already.
            writer: format!("{:016x}", rand::random::<u64>()),
            read: AtomicU64::default(),
            delivered: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            outcomes: Mutex::default(),
            known: Mutex::default(),
            duplicates: AtomicU64::default(),
            last_success_unix: AtomicI64::default(),
            lag: AtomicU64::default(),
            lag_known: Default::default(),
            cursor: Mutex::default(),
            blocked: Mutex::default(),
            blocked_written: Mutex::default(),
            flushes: AtomicU64::default(),
            unconfirmed: Mutex::default(),
            delivered_by: Mutex::default(),
            key_cap: 0,
        }
    }
}

/// One write's worth of changes.
#[derive(Default)]
struct Flush {
    number: u64,
    read: u64,
    delivered: u64,
    dead_lettered: u64,
    outcomes: Vec<(u64, Outcome)>,
    duplicates: u64,
    last_success: i64,
    cursor: Option<String>,
    lag: Option<u64>,
    blocked: Option<Option<String>>,
    /// Last delivery per value of the freshnessBy field.
    delivered_by: BTreeMap<String, i64>,
}

impl Flush {
    fn is_empty(&self) -> bool {
        self.read == 0
            && self.delivered == 0
            && self.dead_lettered == 0
            && self.outcomes.is_empty()
            && self.duplicates == 0
            && self.cursor.is_none()
            && self.lag.is_none()
            && self.blocked.is_none()
            && self.delivered_by.is_empty()
    }

    /// Adds this flush to the shared record, unless the record has it already.
    /// `key_cap`: most freshnessBy values the record keeps besides `_other`.
    fn apply(
        &self,
        p: &mut FlowProgress,
        writer: &str,
        contract_version: &str,
        key_cap: usize,
        now: i64,
    ) {
        if p.flushes
            .get(writer)
            .is_some_and(|m| m.number >= self.number)
        {
            return;
        }
        p.flushes
            .retain(|_, mark| now - mark.unix < FLUSH_MARK_KEPT_SECS);
        p.flushes.insert(
            writer.to_string(),
            FlushMark {
                number: self.number,
                unix: now,
            },
        );
        let (mut delivered, mut dead) = (self.delivered, self.dead_lettered);
        for &(sequence, outcome) in &self.outcomes {
            if p.settled.insert(sequence) {
                match outcome {
                    Outcome::Delivered => delivered += 1,
                    Outcome::DeadLettered => dead += 1,
                    Outcome::Parked => {}
                }
            }
        }
        p.read += self.read;
        p.delivered += delivered;
        p.dead_lettered += dead;
        p.duplicates += self.duplicates;
        if self.last_success > 0 {
            p.last_success_unix = Some(self.last_success.max(p.last_success_unix.unwrap_or(0)));
        }
        if let Some(cursor) = &self.cursor {
            p.cursor = Some(cursor.clone());
        }
        if let Some(lag) = self.lag {
            p.lag = lag;
        }
        if let Some(blocked) = &self.blocked {
            p.blocked = blocked.clone();
        } else if delivered > 0 {
            // Records reach the target: whatever held them (perhaps as another worker,
            // since stopped, wrote it) holds no more.
            p.blocked = None;
        }
        for (value, at) in &self.delivered_by {
            // Workers admit values on their own: the record stays within the cap however
            // their choices differ.
            let kept = p.last_success_by.keys().filter(|k| *k != OTHER_KEY).count();
            let value =
                if value == OTHER_KEY || p.last_success_by.contains_key(value) || kept < key_cap {
                    value.as_str()
                } else {
                    OTHER_KEY
                };
            let last = p.last_success_by.entry(value.to_string()).or_default();
            *last = (*last).max(*at);
        }
        p.contract_version = Some(contract_version.to_string());
    }
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
        let mut by = lock(&self.delivered_by);
        let at = by.entry(value).or_default();
        *at = (*at).max(unix);
    }

    /// Records read from the source.
    pub fn add_read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }

    /// Records delivered just now that are not in the flow's stream (reviewed records).
    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        self.delivered_now();
    }

    /// Records dead-lettered that are not in the flow's stream (at extraction, after review).
    pub fn add_dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }

    /// The outcome of the record at `sequence` of the flow's stream; counted once per
    /// sequence, however often the record was delivered.
    /// A delivered record's caller says when with [`Progress::delivered_at`], once per batch.
    pub fn settle(&self, sequence: u64, outcome: Outcome) {
        lock(&self.outcomes).push((sequence, outcome));
        lock(&self.known).insert(sequence);
    }

    /// Records were delivered at `unix_seconds`: the flow's last success.
    pub fn delivered_at(&self, unix_seconds: i64) {
        self.last_success_unix
            .fetch_max(unix_seconds, Ordering::Relaxed);
    }

    fn delivered_now(&self) {
        self.delivered_at(super::clock::now_unix_ms() / 1000);
    }

    /// Whether `sequence` has an outcome as far as this process knows, without a read: its
    /// own outcomes, and every worker's as of its last write of the shared record.
    pub fn settled_here(&self, sequence: u64) -> bool {
        lock(&self.known).contains(sequence)
    }

    /// Which of `sequences` have an outcome in the shared record as it reads now (any replica
    /// answers); `None` when it cannot be read. Another worker's outcome not yet written is
    /// not found: that record is sent again, and still counted once.
    pub async fn settled_in_record(
        &self,
        store: &kv::Store,
        sequences: &[u64],
    ) -> Option<Vec<bool>> {
        match read_json_entry::<FlowProgress>(store, PROGRESS_KEY).await {
            Ok((progress, _)) => Some(
                sequences
                    .iter()
                    .map(|&s| progress.settled.contains(s))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "progress record not read");
                None
            }
        }
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
    /// or `None` when there was nothing to write. A flush not confirmed is written again first.
    pub async fn flush(
        &self,
        store: &kv::Store,
        contract_version: &str,
    ) -> Result<Option<FlowProgress>, QueueError> {
        let mut written = None;
        let retried = lock(&self.unconfirmed).take();
        if let Some(flush) = retried {
            written = Some(self.write(store, contract_version, flush).await?);
        }
        let flush = self.take();
        if flush.is_empty() {
            return Ok(written);
        }
        self.write(store, contract_version, flush).await.map(Some)
    }

    /// What happened since the last flush, numbered.
    fn take(&self) -> Flush {
        let mut flush = Flush {
            read: self.read.swap(0, Ordering::Relaxed),
            delivered: self.delivered.swap(0, Ordering::Relaxed),
            dead_lettered: self.dead_lettered.swap(0, Ordering::Relaxed),
            outcomes: std::mem::take(&mut *lock(&self.outcomes)),
            duplicates: self.duplicates.swap(0, Ordering::Relaxed),
            last_success: self.last_success_unix.swap(0, Ordering::Relaxed),
            cursor: lock(&self.cursor).take(),
            lag: self
                .lag_known
                .swap(false, Ordering::Relaxed)
                .then(|| self.lag.load(Ordering::Relaxed)),
            blocked: lock(&self.blocked).take(),
            delivered_by: std::mem::take(&mut *lock(&self.delivered_by)),
            number: 0,
        };
        if !flush.is_empty() {
            flush.number = self.flushes.fetch_add(1, Ordering::Relaxed) + 1;
        }
        flush
    }

    async fn write(
        &self,
        store: &kv::Store,
        contract_version: &str,
        flush: Flush,
    ) -> Result<FlowProgress, QueueError> {
        let now = super::clock::now_unix_ms() / 1000;
        let result = update_progress(store, |p: &mut FlowProgress| {
            flush.apply(p, &self.writer, contract_version, self.key_cap, now)
        })
        .await;
        match &result {
            Ok(written) => {
                // What every worker settled as of this write, and what this one settled since.
                let outcomes = lock(&self.outcomes);
                let mut known = written.settled.clone();
                for &(sequence, _) in outcomes.iter() {
                    known.insert(sequence);
                }
                *lock(&self.known) = known;
                if let Some(blocked) = flush.blocked {
                    *lock(&self.blocked_written) = blocked;
                }
            }
            // Not lost, and not added twice if it was written after all: kept with its number.
            Err(_) => *lock(&self.unconfirmed) = Some(flush),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_counts_once_per_sequence_and_a_flush_once_per_writer() {
        let mut record = FlowProgress::default();
        let first = Flush {
            number: 1,
            read: 3,
            outcomes: vec![
                (1, Outcome::Delivered),
                (2, Outcome::DeadLettered),
                (3, Outcome::Parked),
            ],
            ..Flush::default()
        };
        first.apply(&mut record, "w1", "1.0.0", 0, 100);
        // The same flush again (its write went through, its reply was lost): no change.
        first.apply(&mut record, "w1", "1.0.0", 0, 101);
        assert_eq!(
            (record.read, record.delivered, record.dead_lettered),
            (3, 1, 1)
        );
        // Another worker got records 1 and 3 again after a failover, and one new one.
        let again = Flush {
            number: 1,
            outcomes: vec![
                (1, Outcome::Delivered),
                (3, Outcome::Delivered),
                (4, Outcome::Delivered),
            ],
            ..Flush::default()
        };
        again.apply(&mut record, "w2", "1.0.0", 0, 102);
        assert_eq!((record.delivered, record.dead_lettered), (2, 1));
        assert!(record.settled.contains(4) && !record.settled.contains(5));
        // A writer's mark is dropped once old; the others stay.
        let later = Flush {
            number: 2,
            read: 1,
            ..Flush::default()
        };
        later.apply(&mut record, "w2", "1.0.0", 0, 102 + FLUSH_MARK_KEPT_SECS);
        assert_eq!(record.read, 4);
        assert_eq!(record.flushes.keys().collect::<Vec<_>>(), ["w2"]);
    }
}
