//! The published versions of a contract, kept in a ConfigMap the DataContract controller owns
//! (`<contract>-contract-history`, one key per version). Status only lists versions and hashes;
//! flows read schemas from here when they must run a version older than the contract's spec.

use serde::{Deserialize, Serialize};

use crate::api::data_contract::{QualityRule, RecordSchema};

pub fn config_map_name(contract: &str) -> String {
    format!("{contract}-contract-history")
}

/// ConfigMap key of a version (semver without build metadata fits the key alphabet).
pub fn key(version: &str) -> String {
    format!("{version}.json")
}

/// One published version, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PublishedContract {
    pub version: String,
    pub schema_hash: String,
    pub schema: RecordSchema,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<QualityRule>,
}

/// Reads every published version from the ConfigMap's data, skipping entries that do not parse.
pub fn from_config_map_data(
    data: &std::collections::BTreeMap<String, String>,
) -> Vec<PublishedContract> {
    data.values()
        .filter_map(|v| serde_json::from_str(v).ok())
        .collect()
}
