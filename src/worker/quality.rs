//! Batch quality rules: the contract's rules that judge a delivery batch rather than one
//! record (`NullRatio`, `DuplicateKeys`). A batch is what one consume loop fetched and
//! delivers together: up to `target.batchSize` records that passed the per-record checks.
//!
//! What a violated rule does, by its action:
//! - `Alert`: the batch is delivered and the violation counted (`quality_alerts`).
//! - `DeadLetter`: the offending records go to the dead-letter stream with the rule as reason
//!   (NullRatio: the records without the field; DuplicateKeys: the repeats of a change, i.e.
//!   of a key and source version, whose first record is delivered); the rest is delivered.
//!
//! DuplicateKeys judges changes, not keys: several versions of one key in a batch are what a
//! stream that fell behind (a target outage, a slow worker) carries, and failing those batches
//! would stop a flow exactly when it should catch up. Note that the flow's stream already
//! drops a record whose key and version it stored within the dedupe window, so this rule sees
//! repeats that arrive later than that (and redriven ones).
//! - `FailBatch`: none of the batch is delivered; every record of it is dead-lettered with the
//!   rule as reason. We dead-letter rather than NAK: the records never change, so a retry
//!   would fail the same way (or, mixed into other batches, drag good records down with it)
//!   until maxDeliver; in the dead-letter stream they are kept, listed with the reason and
//!   redriven once the cause is fixed. Nothing is lost and nothing is half-applied.
//!
//! This module only decides; `consume` carries the decision out. It is pure, for tests.

use std::collections::HashMap;

use crate::api::data_contract::{QualityAction, QualityCheck, QualityRule};

/// A batch rule, compiled against the plan's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRule {
    /// Rule name, for reasons and logs.
    pub name: String,
    /// What a violation does.
    pub action: QualityAction,
    /// The check.
    pub check: BatchCheck,
}

/// The batch checks.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchCheck {
    /// At most `max_ratio` of the batch may lack `field` (absent or null after mapping).
    NullRatio {
        /// The field.
        field: String,
        /// Bit of the field in [`Facts::nulls`].
        bit: u64,
        /// Highest allowed share, 0..1.
        max_ratio: f64,
        /// Batches smaller than this are not judged.
        min_records: usize,
    },
    /// No two records share a primary key and source version.
    DuplicateKeys,
}

impl BatchRule {
    /// Compiles `rule` if it is a batch rule; `bit_of` gives a field's null bit.
    pub fn compile(
        rule: &QualityRule,
        bit_of: impl Fn(&str) -> Option<u64>,
    ) -> Option<Result<BatchRule, String>> {
        let check = match rule.check {
            QualityCheck::DuplicateKeys => BatchCheck::DuplicateKeys,
            QualityCheck::NullRatio => {
                let Some(field) = rule.field.clone() else {
                    return Some(Err(format!(
                        "quality rule {:?}: NullRatio needs a field",
                        rule.name
                    )));
                };
                let Some(bit) = bit_of(&field) else {
                    return Some(Err(format!(
                        "quality rule {:?}: field {field:?} is not in the schema, or more than 64 fields have NullRatio rules",
                        rule.name
                    )));
                };
                BatchCheck::NullRatio {
                    field,
                    bit,
                    max_ratio: rule.max_ratio.unwrap_or(0.0),
                    min_records: rule.min_records.unwrap_or(1).max(1) as usize,
                }
            }
            _ => return None,
        };
        Some(Ok(BatchRule {
            name: rule.name.clone(),
            action: rule.action,
            check,
        }))
    }
}

/// What the batch rules need to know of one mapped record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Bits of the NullRatio fields this record has no value for.
    pub nulls: u64,
    /// The record's canonical primary key (only when a DuplicateKeys rule needs it).
    pub key: Option<String>,
}

/// The decision on one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    /// Set when a FailBatch rule failed: the detail every record of the batch is
    /// dead-lettered with.
    pub failed: Option<String>,
    /// Per record (batch order): Some(detail) when it is to be dead-lettered.
    pub dead_letter: Vec<Option<String>>,
    /// Violations of Alert rules.
    pub alerts: u32,
}

/// Judges a batch: `records` are each record's facts and source version, in batch order.
pub fn judge(rules: &[BatchRule], records: &[(&Facts, u64)]) -> Judgement {
    let mut judgement = Judgement {
        dead_letter: vec![None; records.len()],
        ..Judgement::default()
    };
    if records.is_empty() {
        return judgement;
    }
    for rule in rules {
        // (record index, detail) of each offending record; empty when the rule holds.
        let (offenders, summary): (Vec<(usize, String)>, String) = match &rule.check {
            BatchCheck::NullRatio {
                field,
                bit,
                max_ratio,
                min_records,
            } => {
                if records.len() < *min_records {
                    continue;
                }
                let nulls: Vec<usize> = (0..records.len())
                    .filter(|i| records[*i].0.nulls & bit != 0)
                    .collect();
                let ratio = nulls.len() as f64 / records.len() as f64;
                if ratio <= *max_ratio {
                    continue;
                }
                let summary = format!(
                    "quality rule {:?}: {} of {} records in the batch have no {field:?} ({:.1}% > {:.1}%)",
                    rule.name,
                    nulls.len(),
                    records.len(),
                    ratio * 100.0,
                    max_ratio * 100.0
                );
                (
                    nulls.into_iter().map(|i| (i, summary.clone())).collect(),
                    summary,
                )
            }
            BatchCheck::DuplicateKeys => {
                // Two versions of a key are two changes, not duplicates: a stream that fell
                // behind carries several, and the target keeps the newest. A duplicate is the
                // same change (key and source version) twice.
                let mut by_change: HashMap<(&str, u64), Vec<usize>> = HashMap::new();
                for (i, (facts, version)) in records.iter().enumerate() {
                    if let Some(key) = facts.key.as_deref() {
                        by_change.entry((key, *version)).or_default().push(i);
                    }
                }
                let mut offenders = Vec::new();
                let mut repeated = 0;
                for ((key, version), indexes) in by_change.iter().filter(|(_, v)| v.len() > 1) {
                    repeated += 1;
                    let shown = key.replace('\u{1f}', "/");
                    // The first is delivered, the repeats are the offenders.
                    for &i in &indexes[1..] {
                        offenders.push((
                            i,
                            format!(
                                "quality rule {:?}: key {shown:?} version {version} appears {} times in the batch; the first was delivered",
                                rule.name,
                                indexes.len(),
                            ),
                        ));
                    }
                }
                if offenders.is_empty() {
                    continue;
                }
                offenders.sort_by_key(|(i, _)| *i);
                let summary = format!(
                    "quality rule {:?}: {repeated} change(s) (key and version) appear more than once in the batch of {}",
                    rule.name,
                    records.len()
                );
                (offenders, summary)
            }
        };
        match rule.action {
            QualityAction::Alert => judgement.alerts += 1,
            QualityAction::FailBatch => {
                judgement.failed = Some(format!("batch failed: {summary}"));
                return judgement;
            }
            QualityAction::DeadLetter => {
                for (i, detail) in offenders {
                    judgement.dead_letter[i].get_or_insert(detail);
                }
            }
        }
    }
    judgement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn null_ratio(action: QualityAction, max_ratio: f64, min_records: usize) -> BatchRule {
        BatchRule {
            name: "customer-mostly-set".into(),
            action,
            check: BatchCheck::NullRatio {
                field: "customer".into(),
                bit: 1,
                max_ratio,
                min_records,
            },
        }
    }

    fn facts(null: bool, key: &str) -> Facts {
        Facts {
            nulls: u64::from(null),
            key: Some(key.into()),
        }
    }

    fn batch(records: &[Facts]) -> Vec<(&Facts, u64)> {
        records
            .iter()
            .enumerate()
            .map(|(i, f)| (f, i as u64))
            .collect()
    }

    #[test]
    fn a_null_ratio_above_the_threshold_dead_letters_the_records_without_the_field() {
        let records: Vec<Facts> = (0..10).map(|i| facts(i % 4 == 0, &i.to_string())).collect(); // 3 of 10 null
        let rules = [null_ratio(QualityAction::DeadLetter, 0.2, 1)];
        let judgement = judge(&rules, &batch(&records));
        assert_eq!(judgement.failed, None);
        let dead: Vec<usize> = (0..10)
            .filter(|i| judgement.dead_letter[*i].is_some())
            .collect();
        assert_eq!(dead, vec![0, 4, 8]);
        let detail = judgement.dead_letter[0].as_deref().unwrap();
        assert!(
            detail.contains("3 of 10") && detail.contains("30.0% > 20.0%"),
            "{detail}"
        );
        // At the threshold the rule holds.
        let rules = [null_ratio(QualityAction::DeadLetter, 0.3, 1)];
        assert!(
            judge(&rules, &batch(&records))
                .dead_letter
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn fail_batch_fails_the_whole_batch_and_small_batches_can_be_exempt() {
        let records: Vec<Facts> = (0..4).map(|i| facts(i < 2, &i.to_string())).collect();
        let judgement = judge(
            &[null_ratio(QualityAction::FailBatch, 0.1, 1)],
            &batch(&records),
        );
        let failed = judgement.failed.unwrap();
        assert!(
            failed.starts_with("batch failed: quality rule \"customer-mostly-set\""),
            "{failed}"
        );
        // Below minRecords the batch is not judged.
        let judgement = judge(
            &[null_ratio(QualityAction::FailBatch, 0.1, 5)],
            &batch(&records),
        );
        assert_eq!(judgement.failed, None);
        // Alert only counts.
        let judgement = judge(
            &[null_ratio(QualityAction::Alert, 0.1, 1)],
            &batch(&records),
        );
        assert_eq!(judgement.alerts, 1);
        assert!(judgement.dead_letter.iter().all(Option::is_none));
    }

    #[test]
    fn the_same_change_twice_is_a_duplicate_two_versions_of_a_key_are_not() {
        let records = [
            facts(false, "1\u{1f}10"),
            facts(false, "2\u{1f}10"),
            facts(false, "1\u{1f}10"),
            facts(false, "1\u{1f}10"),
            facts(false, "1\u{1f}10"),
        ];
        let versions = [5, 1, 9, 5, 5];
        let input: Vec<(&Facts, u64)> = records.iter().zip(versions).collect();
        let rules = [BatchRule {
            name: "one-row-per-line".into(),
            action: QualityAction::DeadLetter,
            check: BatchCheck::DuplicateKeys,
        }];
        let judgement = judge(&rules, &input);
        let dead: Vec<usize> = (0..5)
            .filter(|i| judgement.dead_letter[*i].is_some())
            .collect();
        assert_eq!(
            dead,
            vec![3, 4],
            "the repeats of version 5; version 9 is a change"
        );
        let detail = judgement.dead_letter[3].as_deref().unwrap();
        assert!(
            detail.contains("\"1/10\" version 5 appears 3 times"),
            "{detail}"
        );
        // Changes only: nothing to say, even with FailBatch.
        let changes: Vec<(&Facts, u64)> = records.iter().zip([1, 2, 3, 4, 5]).collect();
        let fail = [BatchRule {
            action: QualityAction::FailBatch,
            ..rules[0].clone()
        }];
        assert_eq!(
            judge(&fail, &changes),
            Judgement {
                dead_letter: vec![None; 5],
                ..Judgement::default()
            }
        );
        assert!(judge(&fail, &input).failed.is_some());
    }
}
