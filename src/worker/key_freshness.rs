//! Freshness per value of a key field (`spec.observability.freshnessBy`, e.g. per location):
//! which label value a delivered record counts under.
//!
//! A namespace user names the field, and the source decides its values, so neither may choose
//! what becomes a label value or how many there are: a value gets a series of its own only if
//! it is one of the codes the flow declared (the field's Enum values or its code map's values,
//! shaped like a code, see `worker_config::is_code`), and only while fewer than `maxValues`
//! values have one (first delivered, first kept; the values the flow's progress record already
//! holds count first, so every worker and every restart keeps the same ones). Everything else
//! counts under `_other`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::Value;

use super::connectors::raw::fields_of;
use crate::worker_config::{FreshnessByConfig, OTHER_KEY};

/// The field, its declared codes and the values that have a series.
pub struct KeyFreshness {
    field: [String; 1],
    codes: BTreeSet<String>,
    cap: usize,
    tracked: Mutex<BTreeSet<String>>,
}

impl KeyFreshness {
    pub fn new(config: &FreshnessByConfig) -> KeyFreshness {
        KeyFreshness {
            field: [config.field.clone()],
            codes: config.codes.iter().cloned().collect(),
            cap: config.max_values.max(1) as usize,
            tracked: Mutex::new(BTreeSet::new()),
        }
    }

    /// The contract field.
    pub fn field(&self) -> &str {
        &self.field[0]
    }

    /// The label value of a delivered record (its mapped JSON).
    pub fn label_of(&self, mapped: &[u8]) -> String {
        let fields = fields_of(mapped, &self.field);
        let value = match fields.as_ref().and_then(|f| f.get(self.field())) {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        };
        self.admit(value)
    }

    /// The label value of `value`: itself if it is a declared code with (room for) a series.
    pub fn admit(&self, value: Option<&str>) -> String {
        if let Some(value) = value.filter(|v| self.codes.contains(*v)) {
            let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
            if tracked.contains(value) || tracked.len() < self.cap {
                tracked.insert(value.to_string());
                return value.to_string();
            }
        }
        OTHER_KEY.to_string()
    }

    /// Takes the values the flow's progress record holds (other workers', earlier processes')
    /// as tracked, up to the cap.
    pub fn observe(&self, recorded: &BTreeMap<String, i64>) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        for value in recorded.keys() {
            if tracked.len() >= self.cap {
                break;
            }
            if self.codes.contains(value) {
                tracked.insert(value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freshness(cap: u32) -> KeyFreshness {
        KeyFreshness::new(&FreshnessByConfig {
            field: "location".into(),
            codes: vec!["DC-EAST".into(), "DC-NORTH".into(), "DC-WEST".into()],
            max_values: cap,
        })
    }

    #[test]
    fn only_declared_codes_become_labels_and_at_most_the_cap() {
        let f = freshness(2);
        assert_eq!(
            f.label_of(br#"{"location":"DC-NORTH","qty":1}"#),
            "DC-NORTH"
        );
        // A record value that is no declared code (free text, a secret, a huge string).
        assert_eq!(
            f.label_of(br#"{"location":"alice@example.com"}"#),
            OTHER_KEY
        );
        assert_eq!(f.label_of(br#"{"qty":1}"#), OTHER_KEY);
        assert_eq!(f.label_of(br#"{"location":7}"#), OTHER_KEY);
        assert_eq!(f.label_of(b"not json"), OTHER_KEY);
        assert_eq!(f.label_of(br#"{"location":"DC-EAST"}"#), "DC-EAST");
        // The cap is reached: a third declared code counts under _other; kept ones stay.
        assert_eq!(f.label_of(br#"{"location":"DC-WEST"}"#), OTHER_KEY);
        assert_eq!(f.label_of(br#"{"location":"DC-NORTH"}"#), "DC-NORTH");
    }

    #[test]
    fn values_the_progress_record_holds_are_kept_first() {
        let f = freshness(1);
        f.observe(&BTreeMap::from([
            ("DC-WEST".to_string(), 1),
            (OTHER_KEY.to_string(), 1),
        ]));
        assert_eq!(f.admit(Some("DC-NORTH")), OTHER_KEY);
        assert_eq!(f.admit(Some("DC-WEST")), "DC-WEST");
    }
}
