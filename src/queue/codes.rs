//! The codes a flow's source sent through each code map, as the workers saw them: the input of
//! the drift report (unmapped and orphaned codes per code map in the flow's status). Kept in
//! the flow's bucket under [`CODES_KEY`], merged by every worker with compare-and-set, written
//! only when a worker saw a code for the first time, so a settled flow writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use super::QueueNames;
use super::jetstream::{QueueError, bucket, read_json_entry, write_json_entry};

/// Key of the observed codes in the flow's bucket.
pub const CODES_KEY: &str = "codes";
/// Most codes kept per code map: the record stays far below the NATS payload limit whatever
/// a source sends; past it, new codes are counted in `dropped`, not kept.
pub const MAX_CODES_PER_MAP: usize = 5000;

/// Codes seen per code map (the code map's name as the flow spells it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObservedCodes {
    #[serde(default)]
    pub maps: BTreeMap<String, BTreeSet<String>>,
    /// Codes not kept because a map reached [`MAX_CODES_PER_MAP`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
}

impl ObservedCodes {
    /// `codes` of one code map `map`.
    #[cfg(test)]
    pub(crate) fn of_map(map: &str, codes: &[&str]) -> ObservedCodes {
        ObservedCodes {
            maps: [(
                map.to_string(),
                codes.iter().map(|c| c.to_string()).collect(),
            )]
            .into(),
            dropped: BTreeMap::new(),
        }
    }

    /// Adds `other`'s codes; true when anything was new.
    pub fn merge(&mut self, other: &ObservedCodes) -> bool {
        let mut changed = false;
        for (map, codes) in &other.maps {
            let kept = self.maps.entry(map.clone()).or_default();
            for code in codes {
                if kept.contains(code) {
                    continue;
                }
                if kept.len() < MAX_CODES_PER_MAP {
                    kept.insert(code.clone());
                } else {
                    *self.dropped.entry(map.clone()).or_default() += 1;
                }
                changed = true;
            }
        }
        changed
    }
}

/// The codes the flow's workers have reported (none yet: empty).
pub async fn read_observed_codes(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<ObservedCodes, QueueError> {
    Ok(read_json_entry(&bucket(js, names).await?, CODES_KEY)
        .await?
        .0)
}

/// Merges `seen` into the flow's record with compare-and-set (other workers write too).
pub async fn add_observed_codes(store: &kv::Store, seen: &ObservedCodes) -> Result<(), QueueError> {
    for _ in 0..50 {
        let (mut codes, revision) = read_json_entry::<ObservedCodes>(store, CODES_KEY).await?;
        if !codes.merge(seen) {
            return Ok(());
        }
        if write_json_entry(store, CODES_KEY, &codes, revision).await {
            return Ok(());
        }
    }
    Err(QueueError::Bucket {
        name: store.name.clone(),
        message: "observed codes lost 50 compare-and-set races in a row".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_reports_news_and_stays_bounded() {
        let mut kept = ObservedCodes::of_map("plants", &["1010", "9999"]);
        assert!(!kept.merge(&ObservedCodes::of_map("plants", &["9999"])));
        assert!(kept.merge(&ObservedCodes::of_map("plants", &["1020"])));
        assert_eq!(kept.maps["plants"].len(), 3);
        let many: Vec<String> = (0..MAX_CODES_PER_MAP + 7)
            .map(|i| format!("M{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(kept.merge(&ObservedCodes::of_map("materials", &many)));
        assert_eq!(kept.maps["materials"].len(), MAX_CODES_PER_MAP);
        assert_eq!(kept.dropped["materials"], 7);
    }
}
