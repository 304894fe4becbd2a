//! DataContract: the schema and rules of one data domain, versioned and governed.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, Freshness, TEXT_PATTERN, regex_rule};

/// Semantic version `MAJOR.MINOR.PATCH` with optional pre-release, as semver.org defines it.
pub const SEMVER_PATTERN: &str =
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$";
/// Canonical field names: identifiers, as they appear in records.
pub const FIELD_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";

/// The schema and rules of one data domain (sales order lines, inventory positions, forecasts...).
/// Each published version is immutable; new versions are checked against the published history
/// under the contract's compatibility mode before any flow moves to them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[kube(
    group = "flowplane.io",
    version = "v1alpha1",
    kind = "DataContract",
    namespaced,
    status = "DataContractStatus",
    shortname = "dc",
    category = "flowplane",
    cel,
    doc = "The schema, quality rules and freshness SLA of one data domain, versioned under a compatibility mode.",
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("a DataContract name must be a DNS label of at most 63 characters: flows name it in contract.name, and its history ConfigMap carries it as a label value"),
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Lifecycle", type_ = "string", json_path = ".spec.lifecycle"),
    printcolumn(
        name = "Compatible",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Compatible\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.domain"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.quality) || self.quality.all(q, !has(q.field) || self.schema.fields.exists(f, f.name == q.field))").message("every quality rule's field must be declared in schema.fields").field_path(".quality"))]
pub struct DataContractSpec {
    /// The data domain, e.g. "sales-order-lines". Immutable: a contract describes one domain.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("domain is immutable: a contract describes one data domain; create another DataContract for a new domain"))]
    pub domain: String,
    /// Semantic version of this schema, e.g. "1.2.0". A breaking change needs a new major version.
    #[schemars(length(max = 64), pattern(SEMVER_PATTERN))]
    pub version: String,
    /// Which schema changes are allowed between versions (Confluent Schema Registry semantics).
    #[serde(default)]
    pub compatibility: Compatibility,
    /// Who owns the contract and answers for changes.
    pub owner: Owner,
    /// Where the contract is in its life. Retired contracts are not used by new rollouts.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// The record schema.
    pub schema: RecordSchema,
    /// Data quality rules checked by workers on every record or batch; rule names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub quality: Vec<QualityRule>,
    /// How fresh the data of this domain must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<ContractSla>,
}

/// Compatibility modes, with Confluent Schema Registry's reader/writer semantics.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Compatibility {
    /// No check.
    None,
    /// Consumers on the new version can read data written with the previous version.
    #[default]
    Backward,
    /// Like Backward, against every earlier version of the same major line.
    BackwardTransitive,
    /// Consumers on the previous version can read data written with the new version.
    Forward,
    /// Like Forward, against every earlier version of the same major line.
    ForwardTransitive,
    /// Both Backward and Forward against the previous version.
    Full,
    /// Both Backward and Forward against every earlier version of the same major line.
    FullTransitive,
}

/// Lifecycle of a contract.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Lifecycle {
    /// Being designed; flows may use it, but it is not published.
    Draft,
    /// Published and in use.
    #[default]
    Active,
    /// Still served; flows using it get a warning.
    Deprecated,
    /// No longer served to new rollouts.
    Retired,
}

/// Owning team.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// Team name, e.g. "demand-planning".
    #[schemars(length(min = 1, max = 128), pattern(TEXT_PATTERN))]
    pub team: String,
    /// Contact (e-mail or chat channel) for questions about the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), pattern(TEXT_PATTERN))]
    pub contact: Option<String>,
}

/// The schema of a record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.primaryKey.all(k, self.fields.exists(f, f.name == k && f.required && !f.nullable))").message("every schema.primaryKey field must be declared in schema.fields as required and not nullable"))]
pub struct RecordSchema {
    /// Fields that identify a record; also the idempotency key of the flow's queue. Each
    /// field at most once.
    #[schemars(
        length(min = 1, max = 8),
        inner(length(min = 1, max = 63), pattern(FIELD_NAME_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub primary_key: Vec<String>,
    /// Typed fields, keyed by name.
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub fields: Vec<FieldSpec>,
    /// What to do with fields the schema does not declare.
    #[serde(default)]
    pub additional_fields: AdditionalFields,
}

/// Handling of undeclared fields.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AdditionalFields {
    /// Drop them silently.
    #[default]
    Ignore,
    /// Dead-letter the record.
    Reject,
}

/// One typed field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'Enum' || (has(self.values) && size(self.values) > 0)").message("a field of type Enum needs values"))]
#[x_kube(validation = Rule::new("self.type == 'Enum' || !has(self.values) || size(self.values) == 0").message("values are only allowed on fields of type Enum"))]
#[x_kube(validation = Rule::new("self.type != 'Enum' || !has(self.default) || self.default in self.values").message("the default of an Enum field must be one of its values"))]
#[x_kube(validation = Rule::new("self.type != 'Decimal' || has(self.precision)").message("a field of type Decimal needs precision"))]
#[x_kube(validation = Rule::new("!has(self.scale) || (has(self.precision) && self.scale <= self.precision)").message("scale must not exceed precision"))]
#[x_kube(validation = Rule::new("!has(self.minimum) || !has(self.maximum) || self.minimum <= self.maximum").message("minimum must not exceed maximum"))]
#[x_kube(validation = Rule::new("!(has(self.minimum) || has(self.maximum)) || self.type in ['Int', 'Decimal']").message("minimum and maximum are only allowed on fields of type Int or Decimal"))]
#[x_kube(validation = Rule::new("!(has(self.pattern) || has(self.maxLength)) || self.type == 'String'").message("pattern and maxLength are only allowed on fields of type String"))]
#[x_kube(validation = Rule::new("!has(self.default) || !has(self.maxLength) || size(self.default) <= self.maxLength").message("a field's default must not be longer than its maxLength").field_path(".default"))]
#[x_kube(validation = Rule::new("!has(self.default) || (self.type == 'Int' ? self.default.matches('^-?[0-9]{1,19}$') : self.type == 'Decimal' ? self.default.matches('^-?[0-9]{1,38}([.][0-9]{1,38})?$') : self.type == 'Boolean' ? self.default in ['true', 'false'] : self.type == 'Date' ? self.default.matches('^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$') : self.type == 'Timestamp' ? self.default.matches('^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$') : true)").message("a field's default must be a value of its type: Int digits, Decimal digits with an optional fraction, Boolean true or false, Date YYYY-MM-DD, Timestamp RFC 3339").field_path(".default"))]
pub struct FieldSpec {
    /// Canonical field name.
    #[schemars(length(min = 1, max = 63), pattern(FIELD_NAME_PATTERN))]
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub type_: FieldType,
    /// What the field means, for people reading the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The field must be present in every record.
    #[serde(default)]
    pub required: bool,
    /// The field may be null.
    #[serde(default)]
    pub nullable: bool,
    /// Default used when the field is absent, written as a string ("0", "EA", "2024-01-01").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), pattern(TEXT_PATTERN))]
    pub default: Option<String>,
    /// Total digits of a Decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 38))]
    pub precision: Option<u32>,
    /// Digits after the decimal point of a Decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 38))]
    pub scale: Option<u32>,
    /// Smallest allowed value of a numeric field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// Largest allowed value of a numeric field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    /// Regular expression (RE2 syntax) a String value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = regex_rule("schema.fields[].pattern"))]
    pub pattern: Option<String>,
    /// Longest allowed String value, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_length: Option<u32>,
    /// Allowed values of an Enum field, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 128), pattern(TEXT_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub values: Vec<String>,
}

/// Value types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// 64-bit integer.
    Int,
    /// Exact decimal with `precision` and `scale`.
    Decimal,
    /// true / false.
    Boolean,
    /// Calendar date, ISO 8601 (2024-03-31).
    Date,
    /// Instant, RFC 3339 (2024-03-31T12:00:00Z).
    Timestamp,
    /// One of `values`.
    Enum,
}

/// A data quality rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.check == 'DuplicateKeys' || has(self.field)").message("quality rule needs a field (every check but DuplicateKeys applies to one field)"))]
#[x_kube(validation = Rule::new("self.check != 'Range' || has(self.min) || has(self.max)").message("a Range check needs min or max"))]
#[x_kube(validation = Rule::new("self.check != 'Regex' || has(self.pattern)").message("a Regex check needs pattern"))]
#[x_kube(validation = Rule::new("self.check != 'AllowedValues' || (has(self.values) && size(self.values) > 0)").message("an AllowedValues check needs values"))]
#[x_kube(validation = Rule::new("self.check != 'NullRatio' || has(self.maxRatio)").message("a NullRatio check needs maxRatio"))]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("a quality rule's min must not exceed its max").field_path(".min"))]
pub struct QualityRule {
    /// Rule name, shown in dead-letter reasons and alerts.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The check. NotNull, Range, Regex and AllowedValues judge each record; NullRatio (the
    /// share of a delivery batch without `field`, at most `maxRatio`) and DuplicateKeys (the
    /// same primary key and source version twice in a batch) judge a batch: the records one
    /// worker delivers together, up to the flow's `target.batchSize`.
    pub check: QualityCheck,
    /// Field the check applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(FIELD_NAME_PATTERN))]
    pub field: Option<String>,
    /// Lower bound (Range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Upper bound (Range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Regular expression, RE2 syntax (Regex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = regex_rule("quality[].pattern"))]
    pub pattern: Option<String>,
    /// Allowed values (AllowedValues), each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 128), pattern(TEXT_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub values: Vec<String>,
    /// Highest allowed share of nulls in a batch, 0..1 (NullRatio). A batch is what one worker
    /// delivers together: up to the flow's `target.batchSize` records that passed the
    /// per-record checks. A field absent after mapping (and without a default) counts as null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_ratio: Option<f64>,
    /// Smallest batch a NullRatio rule judges; smaller batches pass (a trickle of single
    /// records would otherwise turn a ratio into a not-null check). Unset judges every batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_records: Option<u32>,
    /// What a violation does. DeadLetter: the offending records go to the dead-letter stream
    /// with the rule as reason, the rest of the batch is delivered. FailBatch: none of the
    /// batch is delivered; every record of it goes to the dead-letter stream with the rule as
    /// reason (not retried, the records would fail the same way; redrive them with
    /// `flowplane dlq redrive --reason QualityRule` once the cause is fixed), so nothing is
    /// lost and nothing half-applied. Alert: delivered, and the violation counted and alerted on.
    #[serde(default)]
    pub action: QualityAction,
}

/// Quality checks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum QualityCheck {
    /// The field is present and not null.
    NotNull,
    /// The value lies within min..max.
    Range,
    /// The value matches pattern.
    Regex,
    /// The value is one of values.
    AllowedValues,
    /// The share of nulls of field in a batch does not exceed maxRatio. With action
    /// DeadLetter, the records without the field are dead-lettered when it does.
    NullRatio,
    /// No two records of a batch are the same change: the same primary key with the same
    /// source version. Different versions of a key are changes in order, not duplicates (a
    /// flow that fell behind carries several). With action DeadLetter the first is delivered
    /// and the repeats are dead-lettered. The flow's stream already drops a repeat published
    /// within delivery.dedupeWindow; this rule catches later ones.
    DuplicateKeys,
}

/// What a quality violation does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum QualityAction {
    /// Move the offending record to the dead-letter stream with the rule as reason; the rest
    /// of the batch is delivered.
    #[default]
    DeadLetter,
    /// Deliver none of the batch: every record of the batch the violation occurred in goes to
    /// the dead-letter stream with the rule as reason (reason QualityRule), nothing of it
    /// reaches the target. Not retried: the records would fail the same way; redrive them
    /// (`flowplane dlq redrive --reason QualityRule`) once the source or the rule is fixed.
    FailBatch,
    /// Deliver the record but count the violation (alerted on).
    Alert,
}

/// Freshness SLA of a domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractSla {
    /// How old the newest data of this domain may be.
    pub freshness: Freshness,
}

/// Observed state of a DataContract.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataContractStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the schema is usable) and `Compatible` (the version passed its compatibility check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Newest version that passed its checks; flows may use it and every version in `history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_good_version: Option<String>,
    /// Published versions, oldest first (bounded to the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PublishedVersion>,
    /// Breaking changes found in the current spec, when it is not compatible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaks: Vec<String>,
}

/// A version the contract has published, with the hash of its canonical schema. The schemas
/// themselves are kept in the contract's history ConfigMap (`<name>-contract-history`), not in status:
/// CEL cost budgets and etcd's object size both argue against nesting schemas in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedVersion {
    /// Semantic version.
    pub version: String,
    /// SHA-256 of the canonical schema.
    pub schema_hash: String,
    /// When the controller first saw this version (RFC 3339).
    pub first_seen: String,
}
