//! Drift between the ERP's codes and the code maps: the codes the workers saw per code map
//! (crate::queue::codes) against the tables as the ConfigMaps hold them now. Unmapped codes are
//! reported as soon as one record carries them, before a bulk of records follows into the
//! dead-letter stream (or, with PassThrough/Default, into the target untranslated); orphaned
//! codes are table entries the source has not sent since the flow started (a plant closed, a
//! material renumbered). Pure: the same tables and sightings give the same report.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::integration_flow::CodeDrift;
use crate::queue::codes::ObservedCodes;

/// Codes listed per kind and code map; the counts cover all.
pub const LISTED: usize = 20;

/// Whether a code can be listed in status: what a ConfigMap key may be (so a table could map
/// it), short. Anything else the source sends is counted only.
fn listable(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The drift of each code map the workers have seen codes of, in code-map order.
pub fn report(
    tables: &BTreeMap<String, BTreeMap<String, String>>,
    observed: &ObservedCodes,
) -> Vec<CodeDrift> {
    let mut drift = Vec::new();
    for (name, table) in tables {
        let Some(seen) = observed.maps.get(name).filter(|s| !s.is_empty()) else {
            continue;
        };
        let unmapped: BTreeSet<&String> = seen.iter().filter(|c| !table.contains_key(*c)).collect();
        let orphaned: BTreeSet<&String> = table.keys().filter(|c| !seen.contains(*c)).collect();
        let list = |codes: &BTreeSet<&String>| -> Vec<String> {
            codes
                .iter()
                .filter(|c| listable(c))
                .take(LISTED)
                .map(|c| (*c).clone())
                .collect()
        };
        drift.push(CodeDrift {
            code_map: name.clone(),
            unmapped: list(&unmapped),
            unmapped_count: unmapped.len() as u64
                + observed.dropped.get(name).copied().unwrap_or(0),
            orphaned: list(&orphaned),
            orphaned_count: orphaned.len() as u64,
        });
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(codes: &[&str]) -> BTreeMap<String, String> {
        codes
            .iter()
            .map(|c| (c.to_string(), format!("L-{c}")))
            .collect()
    }

    #[test]
    fn unmapped_and_orphaned_codes_per_code_map() {
        let tables: BTreeMap<_, _> = [
            ("plants".to_string(), table(&["1010", "1020", "1050"])),
            ("units".to_string(), table(&["ST"])),
        ]
        .into();
        let observed = ObservedCodes::of_map("plants", &["1010", "1020", "9999", "bad code\n"]);
        let drift = report(&tables, &observed);
        // No code of `units` seen yet: nothing to say about it.
        assert_eq!(
            drift,
            [CodeDrift {
                code_map: "plants".into(),
                unmapped: vec!["9999".into()],
                unmapped_count: 2,
                orphaned: vec!["1050".into()],
                orphaned_count: 1,
            }]
        );
        // The table fixed: 9999 mapped, only the code no table can hold stays unmapped.
        let tables: BTreeMap<_, _> = [(
            "plants".to_string(),
            table(&["1010", "1020", "1050", "9999"]),
        )]
        .into();
        let drift = report(&tables, &observed);
        assert_eq!(drift[0].unmapped, Vec::<String>::new());
        assert_eq!((drift[0].unmapped_count, drift[0].orphaned_count), (1, 1));
    }

    #[test]
    fn lists_are_bounded_and_counts_complete() {
        let codes: Vec<String> = (0..50).map(|i| format!("P{i:03}")).collect();
        let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
        let tables: BTreeMap<_, _> = [("plants".to_string(), table(&["X"]))].into();
        let drift = report(&tables, &ObservedCodes::of_map("plants", &codes));
        assert_eq!(drift[0].unmapped.len(), LISTED);
        assert_eq!(drift[0].unmapped[0], "P000");
        assert_eq!(drift[0].unmapped_count, 50);
        assert_eq!(
            (drift[0].orphaned.clone(), drift[0].orphaned_count),
            (vec!["X".into()], 1)
        );
    }
}
