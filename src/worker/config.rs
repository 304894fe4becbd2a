//! The worker configuration: everything a sync worker needs about its flow, fully resolved by
//! the operator (bindings, contract version, code-map tables, policies) and handed over as
//! `worker.json` in the flow's ConfigMap. Secrets are not in it: only the directories where
//! the Secret files are mounted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::common::{CircuitBreaker, RetryPolicy};
use crate::api::connector_binding::{AuthType, Protocol, RateLimit, System};
use crate::api::data_contract::{QualityRule, RecordSchema};
use crate::api::integration_flow::{
    ApprovalAction, ApprovalRule, OnUnmapped, ReviewTimeoutAction, SyncMode, WriteMode,
};
use crate::queue::QueueNames;

/// File name of the configuration inside the ConfigMap and the mounted volume.
pub const CONFIG_FILE: &str = "worker.json";
/// Where the configuration ConfigMap is mounted in worker pods.
pub const CONFIG_DIR: &str = "/etc/flowplane";
/// Where binding Secrets are mounted in worker pods, one directory per binding.
pub const SECRETS_DIR: &str = "/var/run/flowplane/secrets";

/// Configuration of one flow's workers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerConfig {
    /// Namespace of the flow.
    pub namespace: String,
    /// Name of the flow.
    pub flow: String,
    /// The NATS server workers connect to.
    pub nats_url: String,
    /// The flow's JetStream resources.
    pub queue: QueueNames,
    /// Where records come from.
    pub source: SourceConfig,
    /// Where records go.
    pub target: TargetConfig,
    /// The contract version records are validated against.
    pub contract: ContractConfig,
    /// Field mapping and code translation.
    pub mapping: MappingConfig,
    /// Queue policy.
    pub delivery: DeliveryConfig,
    /// Approval routing of forecast deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalConfig>,
}

/// How to reach one binding's system.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConfig {
    /// ConnectorBinding name.
    pub binding: String,
    /// Role of the system.
    pub system: System,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Base URL.
    pub url: String,
    /// Path of the mounted CA bundle, when the binding names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Authentication scheme.
    pub auth: AuthType,
    /// Directory with the mounted credential files (one file per Secret key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_dir: Option<String>,
    /// OAuth2 token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// OAuth2 scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Client-side rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Resolved resilience: the flow's overrides over the binding's defaults over ours.
    pub resilience: ResilienceConfig,
}

/// Resilience with every part decided.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResilienceConfig {
    /// Timeout of one request.
    pub timeout: String,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Circuit breaker.
    pub circuit_breaker: CircuitBreaker,
}

/// The source side.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceConfig {
    /// The system.
    pub endpoint: EndpointConfig,
    /// Entity set, path, subject or file pattern.
    pub entity: String,
    /// How the source is read.
    pub sync_mode: SyncMode,
    /// Field that orders changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_field: Option<String>,
    /// Fields requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<String>,
    /// Poll interval.
    pub poll_interval: String,
}

/// The target side.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetConfig {
    /// The system.
    pub endpoint: EndpointConfig,
    /// Entity set or path.
    pub entity: String,
    /// Append or Upsert.
    pub write_mode: WriteMode,
    /// Records per request.
    pub batch_size: u32,
}

/// The contract version in use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContractConfig {
    /// DataContract name.
    pub name: String,
    /// Version in use.
    pub version: String,
    /// Hash of the canonical schema (changes roll the workers).
    pub schema_hash: String,
    /// The schema.
    pub schema: RecordSchema,
    /// Quality rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<QualityRule>,
}

/// Mapping with code tables resolved from their ConfigMaps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MappingConfig {
    /// Canonical field <- source field or constant, optionally through a code map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldMappingConfig>,
    /// Code tables by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub code_maps: BTreeMap<String, CodeTable>,
}

/// One canonical field's origin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FieldMappingConfig {
    /// Canonical field.
    pub to: String,
    /// Source field (dotted path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Code table translating the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_map: Option<String>,
}

/// A code translation table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodeTable {
    /// What to do with unknown codes.
    pub on_unmapped: OnUnmapped,
    /// Value for unknown codes (onUnmapped Default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Source code -> target code.
    pub entries: BTreeMap<String, String>,
}

/// Queue policy with durations as written in the flow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryConfig {
    /// Deliveries before dead-lettering.
    pub max_deliver: u32,
    /// Ack wait.
    pub ack_wait: String,
    /// Redelivery backoff.
    pub retry: RetryPolicy,
    /// Most unacknowledged records in flight across workers.
    pub max_ack_pending: u32,
    /// How long records stay in the flow's stream (for a worker that creates the queue).
    #[serde(default = "default_retention")]
    pub retention: String,
    /// How long dead letters stay.
    #[serde(default = "default_dead_letter_retention")]
    pub dead_letter_retention: String,
    /// Window in which a republished idempotency key is dropped.
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window: String,
}

// Configurations rendered before these fields existed get the flow defaults.
fn default_retention() -> String {
    crate::api::integration_flow::Delivery::default().retention
}
fn default_dead_letter_retention() -> String {
    crate::api::integration_flow::Delivery::default().dead_letter_retention
}
fn default_dedupe_window() -> String {
    crate::api::integration_flow::Delivery::default().dedupe_window
}

/// Approval routing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalConfig {
    /// Field with the new value.
    pub value_field: String,
    /// Field with the current ERP value.
    pub baseline_field: String,
    /// Thresholds, smallest first.
    pub rules: Vec<ApprovalRule>,
    /// Action when no rule matches.
    pub otherwise: ApprovalAction,
    /// Review timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_timeout: Option<String>,
    /// Action on review timeout.
    pub on_timeout: ReviewTimeoutAction,
    /// Supplier-collaboration target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<TargetConfig>,
}

impl WorkerConfig {
    /// The contract field that carries the source version to the target: the one mapped
    /// from the source's cursor field (without code translation), or the cursor field itself
    /// when the contract declares it and no mapping names it.
    pub fn version_field(&self) -> Option<String> {
        let cursor = self.source.cursor_field.as_deref()?;
        let mapped = self
            .mapping
            .fields
            .iter()
            .find(|f| f.from.as_deref() == Some(cursor) && f.code_map.is_none())
            .map(|f| f.to.clone());
        mapped.or_else(|| {
            let declared = self.contract.schema.fields.iter().any(|f| f.name == cursor);
            let remapped = self.mapping.fields.iter().any(|f| f.to == cursor);
            (declared && !remapped).then(|| cursor.to_string())
        })
    }

    /// Reads the configuration a worker was started with.
    pub fn load(path: &std::path::Path) -> anyhow::Result<WorkerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading worker config {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("worker config {} is not valid: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use crate::worker::sample;

    #[test]
    fn the_version_field_is_the_contract_field_mapped_from_the_cursor() {
        let mut config = sample::sales_order_flow("ns", "f", "nats://x", "u", "v");
        assert_eq!(config.version_field().as_deref(), Some("changedAt"));
        // Translated through a code map it is no version any more.
        config.mapping.fields.iter_mut().for_each(|f| {
            if f.to == "changedAt" {
                f.code_map = Some("item-category".into());
            }
        });
        assert_eq!(config.version_field(), None);
        // No explicit mapping: the cursor field itself, when the contract declares it.
        config.mapping.fields.clear();
        config.source.cursor_field = Some("changedAt".into());
        assert_eq!(config.version_field().as_deref(), Some("changedAt"));
        config.source.cursor_field = None;
        assert_eq!(config.version_field(), None);
    }
}
