//! The stream sequences of a flow whose records have an outcome (delivered, dead-lettered or
//! parked for review), kept in the progress record so each record is counted once however
//! often JetStream delivers it. A leader change of a replicated consumer can lose acks the old
//! leader had not yet replicated, and the new leader delivers those records again; a worker
//! that finds a record's sequence here acks it without sending it to the target a second time,
//! and the counters grow only for sequences not yet here.
//!
//! Kept as sorted, disjoint ranges: records settle nearly in order, so the set is one long
//! range plus a few gaps for the records in flight. A gap that never closes (records the
//! stream dropped when full, or that expired) stays as a range boundary; past
//! [`MAX_RANGES`] the oldest range is forgotten. Forgetting errs on the safe side: a forgotten
//! record delivered once more is sent and counted again, never skipped.

use serde::{Deserialize, Serialize};

/// Most ranges kept: about 40 bytes each in the record's JSON, so the record stays small
/// enough to be written every second.
pub const MAX_RANGES: usize = 1024;

/// Sorted, disjoint, non-adjacent inclusive ranges of stream sequences.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct SettledSequences(Vec<(u64, u64)>);

impl SettledSequences {
    /// Whether `sequence` is known to be settled.
    pub fn contains(&self, sequence: u64) -> bool {
        let i = self.0.partition_point(|&(_, last)| last < sequence);
        self.0.get(i).is_some_and(|&(first, _)| first <= sequence)
    }

    /// Adds `sequence`; true when it was not settled before (count its outcome).
    pub fn insert(&mut self, sequence: u64) -> bool {
        let i = self.0.partition_point(|&(_, last)| last < sequence);
        if self.0.get(i).is_some_and(|&(first, _)| first <= sequence) {
            return false;
        }
        let joins_previous = i > 0 && self.0[i - 1].1 + 1 == sequence;
        let joins_next = self
            .0
            .get(i)
            .is_some_and(|&(first, _)| first == sequence + 1);
        match (joins_previous, joins_next) {
            (true, true) => {
                self.0[i - 1].1 = self.0[i].1;
                self.0.remove(i);
            }
            (true, false) => self.0[i - 1].1 = sequence,
            (false, true) => self.0[i].0 = sequence,
            (false, false) => {
                self.0.insert(i, (sequence, sequence));
                if self.0.len() > MAX_RANGES {
                    self.0.remove(0);
                }
            }
        }
        true
    }

    /// Number of ranges (the gaps plus one).
    pub fn ranges(&self) -> usize {
        self.0.len()
    }

    /// Nothing settled yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_settle_once_in_any_order_and_ranges_merge() {
        let mut settled = SettledSequences::default();
        assert!(settled.insert(3));
        assert!(settled.insert(1));
        assert!(!settled.insert(3));
        assert_eq!(settled.ranges(), 2);
        assert!(!settled.contains(2));
        assert!(settled.insert(2));
        assert_eq!(settled, SettledSequences(vec![(1, 3)]));
        assert!(settled.insert(5));
        assert!(settled.insert(4));
        assert_eq!(settled, SettledSequences(vec![(1, 5)]));
        assert!(settled.contains(1) && settled.contains(5) && !settled.contains(6));
        assert!(!settled.contains(0));
        let json = serde_json::to_string(&settled).unwrap();
        assert_eq!(json, "[[1,5]]");
        assert_eq!(
            serde_json::from_str::<SettledSequences>(&json).unwrap(),
            settled
        );
    }

    #[test]
    fn past_the_bound_the_oldest_range_is_forgotten_not_closed() {
        let mut settled = SettledSequences::default();
        for i in 0..=MAX_RANGES as u64 {
            settled.insert(i * 2);
        }
        assert_eq!(settled.ranges(), MAX_RANGES);
        // Forgotten: delivered again, it would be counted again rather than skipped.
        assert!(!settled.contains(0));
        assert!(settled.contains(2));
        assert!(!settled.contains(1));
    }
}
