//! The worker configuration: everything a sync worker needs about its flow, fully resolved by
//! the operator (bindings, contract version, code-map tables, policies) and handed over as
//! `worker.json` in the flow's ConfigMap. Secrets are not in it: only the directories where
//! the Secret files are mounted.
//!
//! This document is the one contract between the control plane (render writes it) and the data
//! plane (the worker reads it), so it sits below both. During a rollout an operator of one
//! release and workers of another meet through it: a new field gets a serde default, and
//! `format` is raised only when a worker of the previous release could not read the document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::common::{CircuitBreaker, RetryPolicy};
use crate::api::connector_binding::{
    AuthType, ClientAuthentication, Protocol, RateLimit, RestRead, RestWrite, System,
};
use crate::api::data_contract::{QualityRule, RecordSchema};
use crate::api::integration_flow::{
    ApprovalAction, ApprovalRule, FilesWrite, OnUnmapped, ReviewTimeoutAction, SyncMode, WriteMode,
};
use crate::queue::{DeliveryConfig, QueueNames};

/// File name of the configuration inside the ConfigMap and the mounted volume.
pub const CONFIG_FILE: &str = "worker.json";
/// Where the configuration ConfigMap is mounted in worker pods.
pub const CONFIG_DIR: &str = "/etc/flowplane";
/// Where the flow's NATS credentials Secret is mounted in worker pods.
pub const NATS_DIR: &str = "/var/run/flowplane/nats";
/// Where binding Secrets are mounted in worker pods, one directory per binding.
pub const SECRETS_DIR: &str = "/var/run/flowplane/secrets";

/// The format this release writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// Configuration of one flow's workers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerConfig {
    /// Format of this document; absent in documents of the first release, which are format 1.
    #[serde(default = "first_format")]
    pub format: u32,
    /// Namespace of the flow.
    pub namespace: String,
    /// Name of the flow.
    pub flow: String,
    /// The NATS server workers connect to.
    pub nats_url: String,
    /// The flow's NATS credentials file (mounted from its `<flow>-nats` Secret); none for a
    /// server without authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_creds_file: Option<String>,
    /// CA bundle that verifies the NATS server's certificate (mounted from the same Secret);
    /// with it, TLS is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_ca_file: Option<String>,
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
    /// What the worker accepts from the systems (absent in earlier releases' documents: the
    /// defaults).
    #[serde(default)]
    pub limits: crate::api::integration_flow::Limits,
    /// Freshness per value of a key field (`spec.observability.freshnessBy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_by: Option<FreshnessByConfig>,
}

/// Freshness per value of a contract field, with the codes that may become label values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FreshnessByConfig {
    /// The contract field.
    pub field: String,
    /// The declared codes (the field's Enum values or its code map's values) that are shaped
    /// like a code ([`is_code`]); any other value counts under [`OTHER_KEY`].
    pub codes: Vec<String>,
    /// Most values with a series of their own.
    pub max_values: u32,
}

/// The one value every undeclared value, and every value past the cap, counts under. It
/// starts with `_`, which no code does ([`is_code`]).
pub const OTHER_KEY: &str = "_other";

/// A value shaped like a code: 1 to 64 characters of `[A-Za-z0-9._:/-]`, starting with a
/// letter or digit. Only such values become label values (bounded length, no free text).
pub fn is_code(value: &str) -> bool {
    value.len() <= 64
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-'))
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
    /// OAuth2 audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// OAuth2 client authentication at the token endpoint; documents of earlier releases have
    /// none and get HTTP Basic, which those workers sent too.
    #[serde(default)]
    pub client_authentication: ClientAuthentication,
    /// Client-side rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The SFTP server's host keys (sftp:// endpoints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
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
    /// REST paging (Rest sources). Absent (also in documents of earlier releases): the body is
    /// an array or has the records under `items`/`data`/`value` and the next page under
    /// `next`/`nextCursor`/`nextLink`, as earlier workers read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestRead>,
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
    /// REST writes (Rest targets): method, envelope, idempotency-key header, to the path
    /// `entity` below the endpoint URL. Absent only in documents of earlier releases, whose
    /// workers posted a VersionedUpsert to `/api/v1/<entity>/bulk-upsert` (the forecasting
    /// simulator's route); a worker of this release does the same for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestWrite>,
    /// File drops (Files targets); absent: batches are not awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesWrite>,
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

impl MappingConfig {
    /// The first mapping entry the contract cannot take: a field it does not declare, or a
    /// code map the mapping does not define.
    pub fn problem(&self, contract: &ContractConfig) -> Option<String> {
        for mapped in &self.fields {
            if !contract.schema.fields.iter().any(|f| f.name == mapped.to) {
                return Some(format!(
                    "mapping.fields maps to {:?}, which contract {} {} does not declare",
                    mapped.to, contract.name, contract.version
                ));
            }
        }
        None
    }
}

impl WorkerConfig {
    /// How the flow's workers reach NATS: as the flow's own user, replies under its prefix.
    pub fn nats_access(&self) -> crate::queue::identity::NatsAccess {
        crate::queue::identity::NatsAccess {
            url: self.nats_url.clone(),
            creds_file: self.nats_creds_file.as_ref().map(Into::into),
            ca_file: self.nats_ca_file.as_ref().map(Into::into),
            inbox_prefix: Some(self.queue.inbox_prefix()),
        }
    }

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
        Self::parse(&text).map_err(|e| anyhow::anyhow!("worker config {}: {e}", path.display()))
    }

    /// What a worker would refuse at start, so the operator refuses it first and names it in
    /// the flow's status (Stalled, InvalidSpec) instead of workers crash-looping on it.
    pub fn problem(&self) -> Option<String> {
        if let Some(problem) = self.mapping.problem(&self.contract) {
            return Some(problem);
        }
        // Events come from NATS subjects, and a NATS subject yields nothing but events: any
        // other pairing would poll an ERP without pause or read a subject as a collection.
        let source = &self.source;
        if (source.sync_mode == SyncMode::Events) != (source.endpoint.protocol == Protocol::Nats) {
            return Some(format!(
                "syncMode {:?} cannot read ConnectorBinding {}, which speaks {:?}: Events is for NATS bindings, and NATS bindings serve only Events",
                source.sync_mode, source.endpoint.binding, source.endpoint.protocol
            ));
        }
        let targets = std::iter::once(&self.target)
            .chain(self.approval.iter().filter_map(|a| a.escalate_to.as_ref()));
        for target in targets {
            if !matches!(
                target.endpoint.protocol,
                Protocol::OData | Protocol::Rest | Protocol::Files
            ) {
                return Some(format!(
                    "ConnectorBinding {} speaks {:?}, which no flowplane target writes (targets are OData v4 entity sets, REST APIs or file drops)",
                    target.endpoint.binding, target.endpoint.protocol
                ));
            }
            let prefix = target.entity.trim_matches('/');
            if target.endpoint.protocol == Protocol::Files
                && (prefix.is_empty() || prefix.contains('/') || prefix.starts_with('.'))
            {
                return Some(format!(
                    "target.entity {:?} of Files binding {} is the batch files' name prefix: a name without '/' that does not start with '.'",
                    target.entity, target.endpoint.binding
                ));
            }
        }
        None
    }

    /// Reads a `worker.json` document, refusing a format newer than this release knows.
    pub fn parse(text: &str) -> Result<WorkerConfig, String> {
        #[derive(Deserialize)]
        struct Format {
            #[serde(default = "first_format")]
            format: u32,
        }
        let Format { format } =
            serde_json::from_str(text).map_err(|e| format!("is not valid: {e}"))?;
        if format > FORMAT {
            return Err(format!(
                "is format {format}, newer than this worker reads ({FORMAT}): run the workers \
                 with the operator's image"
            ));
        }
        let mut config: WorkerConfig =
            serde_json::from_str(text).map_err(|e| format!("is not valid: {e}"))?;
        // Rendered before the namespace state bucket: the names follow from namespace and flow.
        if config.queue.state_bucket.is_empty() {
            let names = QueueNames::for_flow(&config.namespace, &config.flow);
            config.queue.state_bucket = names.state_bucket;
            config.queue.state_token = names.state_token;
        }
        Ok(config)
    }
}

fn first_format() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `worker.json` as the previous release (commit 3cd674a, before `format`) rendered it with
    /// `flowplane render` for examples/base's order-history flow; a worker of this release must
    /// still run from it.
    const PREVIOUS_RELEASE: &str = include_str!("../tests/data/worker-config-0.1.0.json");

    #[test]
    fn a_document_of_the_previous_release_still_loads() {
        let config = WorkerConfig::parse(PREVIOUS_RELEASE).unwrap();
        assert_eq!(config.format, 1);
        assert_eq!(config.flow, "order-history-to-forecasting");
        assert!(!config.contract.schema.fields.is_empty());
        // Rendered with the flow's own bucket: its keys in the namespace's bucket instead.
        assert_eq!(config.queue.state_bucket, "FP_STATE_flowplane-eu");
        assert_eq!(config.queue.state_token, "order-history-to-forecasting");
        // Written again and read back, nothing is lost.
        let again = serde_json::to_string(&config).unwrap();
        assert_eq!(WorkerConfig::parse(&again).unwrap(), config);
    }

    #[test]
    fn a_previous_document_gets_the_previous_rest_and_oauth2_behaviour() {
        let config = WorkerConfig::parse(PREVIOUS_RELEASE).unwrap();
        // No REST settings: the worker posts to the earlier route and reads pages as before.
        assert_eq!(config.target.rest, None);
        assert_eq!(config.source.rest, None);
        // The earlier worker authenticated to the token endpoint with HTTP Basic.
        assert_eq!(
            config.target.endpoint.client_authentication,
            ClientAuthentication::ClientSecretBasic
        );
        assert_eq!(config.target.endpoint.audience, None);
    }

    #[test]
    fn rest_and_oauth2_settings_round_trip() {
        let mut config = WorkerConfig::parse(PREVIOUS_RELEASE).unwrap();
        config.target.rest = Some(
            serde_json::from_value(serde_json::json!({
                "method": "PUT", "body": "Object", "recordsKey": "items",
                "idempotencyKeyHeader": "Idempotency-Key"
            }))
            .unwrap(),
        );
        config.target.endpoint.audience = Some("https://api.example".into());
        config.target.endpoint.client_authentication = ClientAuthentication::ClientSecretPost;
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["target"]["rest"]["method"], "PUT");
        assert_eq!(
            json["target"]["endpoint"]["clientAuthentication"],
            "ClientSecretPost"
        );
        assert_eq!(WorkerConfig::parse(&json.to_string()).unwrap(), config);
    }

    #[test]
    fn a_newer_format_is_refused_with_what_to_do() {
        let mut json: serde_json::Value = serde_json::from_str(PREVIOUS_RELEASE).unwrap();
        json["format"] = (FORMAT + 1).into();
        let error = WorkerConfig::parse(&json.to_string()).unwrap_err();
        assert!(error.contains("newer than this worker reads"), "{error}");
    }

    #[test]
    fn the_version_field_is_the_contract_field_mapped_from_the_cursor() {
        let mut config = WorkerConfig::parse(PREVIOUS_RELEASE).unwrap();
        assert_eq!(config.version_field().as_deref(), Some("lastChangedAt"));
        // Translated through a code map it is no version any more.
        config.mapping.fields.iter_mut().for_each(|f| {
            if f.to == "lastChangedAt" {
                f.code_map = Some("item-category".into());
            }
        });
        assert_eq!(config.version_field(), None);
        // No explicit mapping: the cursor field itself, when the contract declares it.
        config.mapping.fields.clear();
        config.source.cursor_field = Some("lastChangedAt".into());
        assert_eq!(config.version_field().as_deref(), Some("lastChangedAt"));
        config.source.cursor_field = None;
        assert_eq!(config.version_field(), None);
    }
}
