//! IntegrationFlow: one directed data flow from a source binding to a target binding.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, DURATION_MAX_LENGTH, DURATION_PATTERN, NAME_PATTERN, PATH_PATTERN, Resilience,
    RetryPolicy, SECRET_NAME_PATTERN, TEXT_PATTERN, duration_within, path_rule,
};
use super::connector_binding::{RestRead, RestWrite};
use super::data_contract::FIELD_NAME_PATTERN;

/// A semver range such as "^1.2", "~1.4.0", ">=1.0.0, <3" or "*".
pub const VERSION_RANGE_PATTERN: &str = r"^\s*(\*|(\^|~|=|>=|<=|>|<)?\s*[0-9]+(\.([0-9]+|\*|x))?(\.([0-9]+|\*|x))?(-[0-9A-Za-z.-]+)?)(\s*,\s*(\^|~|=|>=|<=|>|<)?\s*[0-9]+(\.([0-9]+|\*|x))?(\.([0-9]+|\*|x))?(-[0-9A-Za-z.-]+)?)*\s*$";
/// A source field: an identifier, or a dotted path of identifiers into nested objects.
pub const SOURCE_FIELD_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$";
/// An OData `$select` item: an identifier or a navigation path of identifiers.
pub const SELECT_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$";
/// An alert label value: no control characters and none of `{`, `}`, `$` (Prometheus expands
/// Go templates in alert labels).
pub const ALERT_LABEL_VALUE_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x{9f}\x{2028}\x{2029}{}$]*$";
/// Labels the generated alert rules set themselves (`alertname` is Prometheus's).
pub const RESERVED_ALERT_LABELS: [&str; 4] = ["alertname", "namespace", "flow", "severity"];

/// A target entity: a path as [`PATH_PATTERN`] allows, without NATS wildcards or glob stars.
pub const TARGET_PATH_PATTERN: &str = r"^[^\x00-\x20\x7f-\x{9f}\x{2028}\x{2029}?#%\\*>$]+$";

/// Five-field cron (minute hour day-of-month month day-of-week, each a list of `*`, `?`,
/// values or ranges in their bounds with an optional `/step`; months and weekdays also by
/// three-letter name) or a macro such as @daily: what a Kubernetes CronJob takes.
pub const CRON_PATTERN: &str = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\*|\?|([0-5]?[0-9])(-([0-5]?[0-9]))?)(/[0-9]{1,2})?(,(\*|\?|([0-5]?[0-9])(-([0-5]?[0-9]))?)(/[0-9]{1,2})?)* +(\*|\?|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]{1,2})?(,(\*|\?|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]{1,2})?)* +(\*|\?|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]{1,2})?(,(\*|\?|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]{1,2})?)* +(\*|\?|(0?[1-9]|1[0-2]|[A-Za-z]{3})(-(0?[1-9]|1[0-2]|[A-Za-z]{3}))?)(/[0-9]{1,2})?(,(\*|\?|(0?[1-9]|1[0-2]|[A-Za-z]{3})(-(0?[1-9]|1[0-2]|[A-Za-z]{3}))?)(/[0-9]{1,2})?)* +(\*|\?|([0-6]|[A-Za-z]{3})(-([0-6]|[A-Za-z]{3}))?)(/[0-9]{1,2})?(,(\*|\?|([0-6]|[A-Za-z]{3})(-([0-6]|[A-Za-z]{3}))?)(/[0-9]{1,2})?)*)$";

/// One directed flow of data between two ConnectorBindings, governed by a DataContract:
/// reconciled into sync workers, a JetStream queue with a dead-letter queue, autoscaling and
/// alert rules. Ready means the data is flowing and fresh.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[kube(
    group = "flowplane.io",
    version = "v1alpha1",
    kind = "IntegrationFlow",
    namespaced,
    status = "IntegrationFlowStatus",
    shortname = "iflow",
    category = "flowplane",
    cel,
    doc = "One directed data flow between two ConnectorBindings, governed by a DataContract.",
    validation = Rule::new("self.metadata.name.size() <= 45 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("an IntegrationFlow name must be a DNS label of at most 45 characters: it names the flow's workers, CronJob and JetStream streams"),
    scale(
        spec_replicas_path = ".spec.scaling.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Fresh",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Fresh\")].status"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.bindingRef"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.bindingRef"
    ),
    printcolumn(
        name = "Contract",
        type_ = "string",
        json_path = ".status.contractVersion"
    ),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.sync.lag"),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.workers",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.region"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.source.bindingRef != self.target.bindingRef || self.source.entity != self.target.entity").message("source and target are the same binding and entity: a flow must move data somewhere else").field_path(".target"))]
#[x_kube(validation = Rule::new("!has(self.approval) || !has(self.approval.escalateTo) || self.approval.escalateTo.bindingRef != self.target.bindingRef || self.approval.escalateTo.entity != self.target.entity").message("approval.escalateTo must differ from the flow's target").field_path(".approval.escalateTo"))]
pub struct IntegrationFlowSpec {
    /// Where the data comes from.
    pub source: Source,
    /// Where the data goes.
    pub target: Target,
    /// The contract records are validated against, and the versions this flow accepts.
    pub contract: ContractRef,
    /// How source fields become the contract's canonical fields, and code translations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Mapping>,
    /// Polling and the periodic full refresh that recovers anything an incremental sync missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Queue retention, redelivery and dead-letter policy.
    #[serde(default)]
    pub delivery: Delivery,
    /// Overrides of the bindings' resilience defaults for this flow's calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience: Option<Resilience>,
    /// Approval rules for forecast -> ERP feedback flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Worker replicas and autoscaling on queue lag.
    #[serde(default)]
    pub scaling: Scaling,
    /// Bounds on what the worker accepts from the systems it reads and writes, and its memory
    /// limit. A record over them is dead-lettered at extraction with its reason; a response
    /// over them fails the call. Defaults fit NATS's default 1 MiB max payload.
    #[serde(default)]
    pub limits: Limits,
    /// Service levels; breaching them makes the flow not Fresh and fires alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<FlowSla>,
    /// Extra labels for this flow's alerts (e.g. team, severity routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<Alerting>,
    /// Business observability of the flow's data: freshness per value of a key field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<Observability>,
    /// Region whose operator runs this flow; unset means every region's operator does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), pattern(NAME_PATTERN))]
    pub region: Option<String>,
    /// A volume the workers mount, for Files bindings with a file:// directory: the
    /// binding's directory must lie under `mountPath`. SFTP drops need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_volume: Option<DropVolume>,
    /// Stops the flow: workers scale to zero, extraction and refresh stop; the queue is kept.
    #[serde(default)]
    pub suspend: bool,
    /// What happens to the flow's JetStream streams when the flow is deleted. With Delete the
    /// finalizer `flowplane.io/queues` holds the flow until they are removed; Retain needs none.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

impl IntegrationFlowSpec {
    /// The ConnectorBindings the flow uses (source, target, escalation target), each once.
    pub fn binding_refs(&self) -> Vec<&str> {
        let mut refs = vec![
            self.source.binding_ref.as_str(),
            self.target.binding_ref.as_str(),
        ];
        refs.extend(
            self.approval
                .iter()
                .filter_map(|a| a.escalate_to.as_ref())
                .map(|e| e.binding_ref.as_str()),
        );
        refs.sort_unstable();
        refs.dedup();
        refs
    }
}

/// A PersistentVolumeClaim mounted into the flow's worker pods (and refresh jobs).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.mountPath.matches('(/|^)[.][.](/|$)')").message("dropVolume.mountPath names its directory without '..'"))]
pub struct DropVolume {
    /// The PersistentVolumeClaim, in the flow's namespace.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub claim_name: String,
    /// Where the workers see it: an absolute path, e.g. "/drops".
    #[schemars(length(min = 2, max = 256), pattern(r"^/[A-Za-z0-9._/-]+$"))]
    pub mount_path: String,
    /// Mount it read-only (a flow that only reads drops).
    #[serde(default)]
    pub read_only: bool,
}

/// The source of a flow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.syncMode != 'Incremental' || has(self.cursorField)").message("syncMode Incremental needs source.cursorField: the field whose value marks progress"))]
pub struct Source {
    /// Name of the ConnectorBinding to read from (same namespace).
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub binding_ref: String,
    /// Entity set, resource path, subject or file pattern to read, e.g. "A_SalesOrderItem":
    /// no whitespace, control characters, `?`, `#`, `%` or `\`, no `.`/`..` path segments, no
    /// leading `//`, and not a NATS system subject (`$JS.`, `$KV.`, `$SYS.`, any `$...`, `_INBOX.`).
    #[schemars(length(min = 1, max = 256), pattern(PATH_PATTERN))]
    #[x_kube(validation = path_rule("source.entity"))]
    #[x_kube(validation = Rule::new("!self.startsWith('$') && !self.startsWith('_INBOX')").message("source.entity must not start with '$' or '_INBOX': those are NATS system and JetStream API subjects (and OData system resources)"))]
    pub entity: String,
    /// FullRefresh re-reads everything; Incremental reads changes after a cursor; Events reads
    /// the subject through a capture stream on the source's NATS server (JetStream enabled).
    pub sync_mode: SyncMode,
    /// Source field that orders changes (e.g. "LastChangeDateTime"); required for Incremental.
    /// For Events optional: without it a key's events are ordered as the capture stream stored
    /// them.
    /// An identifier (`[A-Za-z_][A-Za-z0-9_]*`): it is written into OData `$filter`/`$orderby`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(FIELD_NAME_PATTERN))]
    pub cursor_field: Option<String>,
    /// Only these source fields are requested (OData `$select`): identifiers or `/`-separated
    /// navigation paths of identifiers (e.g. "_SalesOrder/SoldToParty"), each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 200),
        inner(length(min = 1, max = 128), pattern(SELECT_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub select: Vec<String>,
    /// How this REST collection pages (Rest source bindings); replaces the binding's
    /// `rest.read` as a whole. Unset with no binding default: the body is an array or has the
    /// records under `items`, `data` or `value` and the next page under `next`, `nextCursor`
    /// or `nextLink` (a URL, or a token sent back as `cursor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestRead>,
    /// Longest window a backfill (`flowplane.io/backfill` annotation) may re-read, from its
    /// `from` to its `to`; a longer one is refused (reason `BackfillWindowTooLarge`). 1m to
    /// 8760h; 744h (31 days) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("source.maxBackfillWindow", "1m", "8760h"))]
    pub max_backfill_window: Option<String>,
}

/// Backfill window span when a flow sets no `source.maxBackfillWindow`.
pub const DEFAULT_MAX_BACKFILL_WINDOW: &str = "744h";

/// How the source is read.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SyncMode {
    /// Re-read the whole entity on each run.
    FullRefresh,
    /// Read what changed after the stored cursor (or delta link).
    Incremental,
    /// Read events (NATS source bindings) through a capture stream on the source's server, so
    /// events published while no worker runs are kept (at most `delivery.retention`).
    Events,
}

/// The target of a flow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of the ConnectorBinding to write to (same namespace).
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub binding_ref: String,
    /// Entity set or resource path to write, e.g. "/v2/ingest/sales-history". A REST target
    /// sends its batches to exactly this path below the binding URL. No query, fragment,
    /// whitespace, `%`, `\`, wildcards (`*`, `>`), `.`/`..` segments or leading `//`.
    #[schemars(length(min = 1, max = 256), pattern(TARGET_PATH_PATTERN))]
    #[x_kube(validation = path_rule("target.entity"))]
    pub entity: String,
    /// Append adds records; Upsert replaces by the contract's primary key.
    #[serde(default)]
    pub write_mode: WriteMode,
    /// Records per delivery request.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: u32,
    /// Method, body envelope and idempotency-key header of the writes (Rest target bindings);
    /// replaces the binding's `rest.write` as a whole. Unset with no binding default: POST
    /// with a JSON array and no idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestWrite>,
    /// How batches are dropped as files (Files target bindings): `entity` is the batch files'
    /// name prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesWrite>,
}

/// File drops: each batch is a CSV file `<entity>-<time>-<hash>.csv` (header row, RFC 4180)
/// and, once it is complete, its manifest `<batch>.manifest.json` (file name, record count,
/// SHA-256), each uploaded under a temporary name and renamed. The receiving system answers a
/// batch with `<batch>.ack` (every record taken) or `<batch>.reject.csv` (`key,reason` rows:
/// the records it refused; the others are taken).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesWrite {
    /// How long a worker waits for the answer to a batch (keep it below `delivery.ackWait`);
    /// "0s": it does not wait and counts the batch delivered once its manifest is written.
    /// A batch without an answer in time counts as delivered.
    #[serde(default = "default_answer_timeout")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub answer_timeout: String,
}

fn default_answer_timeout() -> String {
    "0s".into()
}

fn default_batch_size() -> u32 {
    500
}

/// How records are written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum WriteMode {
    /// Add every record.
    Append,
    /// Insert or replace by primary key (idempotent).
    #[default]
    Upsert,
}

/// Reference to the DataContract a flow follows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractRef {
    /// Name of the DataContract (same namespace). Immutable: the flow's queue holds records of
    /// this contract's domain.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("contract.name is immutable: the flow's queue holds records of that contract's domain; create a new flow for another contract"))]
    pub name: String,
    /// Semver range of contract versions this flow accepts, e.g. "^1.2". The flow follows the
    /// newest compatible version inside the range.
    #[serde(default = "default_versions")]
    #[schemars(length(min = 1, max = 128), pattern(VERSION_RANGE_PATTERN))]
    pub versions: String,
}

fn default_versions() -> String {
    "*".into()
}

/// Field mapping and code translation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.fields) || self.fields.all(f, !has(f.codeMap) || (has(self.codeMaps) && self.codeMaps.exists(c, c.name == f.codeMap)))").message("every mapping.fields[].codeMap must name an entry of mapping.codeMaps"))]
pub struct Mapping {
    /// Canonical field <- source field (or constant). Unmapped canonical fields are taken from
    /// the source field of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["to".into()]))]
    pub fields: Vec<FieldMapping>,
    /// Code translation tables (ERP plant -> planning location, material -> SKU, unit of measure).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub code_maps: Vec<CodeMap>,
}

/// Where one canonical field comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.from) != has(self.value)").message("a field mapping needs exactly one of from (a source field) or value (a constant)"))]
pub struct FieldMapping {
    /// Canonical (contract) field name.
    #[schemars(length(min = 1, max = 63), pattern(FIELD_NAME_PATTERN))]
    pub to: String,
    /// Source field name; nested fields with dots, e.g. "to_Item.Material".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(SOURCE_FIELD_PATTERN))]
    pub from: Option<String>,
    /// Constant value instead of a source field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), pattern(TEXT_PATTERN))]
    pub value: Option<String>,
    /// Name of a code map (in `codeMaps`) that translates the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub code_map: Option<String>,
}

/// A code translation table kept in a ConfigMap (key = source code, value = target code).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.onUnmapped != 'Default' || has(self.default)").message("onUnmapped Default needs codeMaps[].default"))]
pub struct CodeMap {
    /// Name used by `fields[].codeMap`, e.g. "plant-to-location".
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// ConfigMap (same namespace) whose data holds the table.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME_PATTERN))]
    pub config_map_ref: String,
    /// What happens to a code the table does not know.
    #[serde(default)]
    pub on_unmapped: OnUnmapped,
    /// Value used for unknown codes when onUnmapped is Default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), pattern(TEXT_PATTERN))]
    pub default: Option<String>,
}

/// Handling of codes a table does not know.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum OnUnmapped {
    /// Dead-letter the record (fix the table, then redrive).
    #[default]
    DeadLetter,
    /// Keep the source code as it is.
    PassThrough,
    /// Use the code map's default.
    Default,
}

/// Polling and scheduled full refresh.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Cron (5 fields, or @daily/@hourly...) for the periodic full refresh run as a CronJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(CRON_PATTERN))]
    pub cron: Option<String>,
    /// IANA time zone of the cron, e.g. "Europe/Berlin"; UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$"))]
    pub time_zone: Option<String>,
    /// How often the extractor polls the source for changes (Incremental and FullRefresh);
    /// 1s to 24h.
    #[serde(default = "default_poll_interval")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("schedule.pollInterval", "1s", "24h"))]
    pub poll_interval: String,
}

fn default_poll_interval() -> String {
    "1m".into()
}

/// Queue and dead-letter policy. The operator applies it to the flow's JetStream streams on
/// every change (streams that exist are updated in place); workers that start before the
/// operator created the queue create it with the same policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.dedupeWindow) <= duration(self.retention)").message("delivery.dedupeWindow must not exceed delivery.retention: JetStream cannot remember a record id longer than it keeps the record"))]
pub struct Delivery {
    /// How long records stay in the flow's stream (its JetStream max age), delivered or not.
    /// Keep it well above the longest target outage you want to ride out: a record older
    /// than this is removed even if it was never delivered. Shortening it on a running flow
    /// removes older records at once. 1m to 8760h (0 would not mean "forever" here, and
    /// shorter would expire records before they can be retried).
    #[serde(default = "default_retention")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("delivery.retention", "1m", "8760h"))]
    pub retention: String,
    /// Deliveries of one record before it is dead-lettered.
    #[serde(default = "default_max_deliver")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deliver: u32,
    /// How long a worker may hold a record before it is redelivered; 1s to 12h.
    #[serde(default = "default_ack_wait")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("delivery.ackWait", "1s", "12h"))]
    pub ack_wait: String,
    /// Backoff of redeliveries after transient failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// How long dead letters are kept (the dead-letter stream's max age) for inspection and
    /// redrive; older ones are removed. 1m to 8760h.
    #[serde(default = "default_dead_letter_retention")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("delivery.deadLetterRetention", "1m", "8760h"))]
    pub dead_letter_retention: String,
    /// Window in which a record with the same identity (polled sources: primary key + source
    /// version; events: the publisher's `Nats-Msg-Id`, else primary key + cursor-field value,
    /// else the event's place in the capture stream) is dropped as a duplicate when published again (the stream's duplicate window),
    /// and counted in `status.sync.duplicates`. At most `retention`; a re-read of the source
    /// within the window publishes only what changed. At least 1s (JetStream reads 0 as its
    /// 2m default).
    #[serde(default = "default_dedupe_window")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("delivery.dedupeWindow", "1s", "8760h"))]
    pub dedupe_window: String,
    /// Copies of the flow's stream, consumer, dead-letter stream and key-value bucket on the
    /// NATS cluster: 1, 3 or 5. A majority of them must be up for the flow to move (3 ride out
    /// one lost node, 5 two). Unset: the operator's default (`--queue-replicas`, the chart's
    /// `nats.queueReplicas`). More than the cluster's JetStream servers cannot be placed
    /// (QueueReady=False).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 1 || self == 3 || self == 5").message("delivery.replicas must be 1, 3 or 5: an even number adds a copy but no tolerance of a lost node"))]
    pub replicas: Option<u8>,
    /// Most bytes the flow's stream may hold (its JetStream max bytes); the dead-letter stream
    /// has the same bound of its own. Bounds what one flow can take of the JetStream disk, and
    /// nats-server reserves each bound on each replica's server when it creates the stream (the
    /// dead-letter stream on the flow's first dead letter; see docs/operations.md, "Sizing
    /// JetStream storage"). 1 MiB to 1 TiB. Unset: the
    /// operator's default (`--queue-max-bytes`, the chart's `nats.queueMaxBytes`, 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576, max = 1099511627776_i64))]
    pub max_bytes: Option<i64>,
    /// What the flow's stream does when it reaches `maxBytes`: `Old` (default) removes its
    /// oldest records, delivered or not, to take new ones; `New` refuses new records, so the
    /// extractor waits and retries until `retention` frees room (no record is lost, the flow
    /// holds). The dead-letter stream always refuses when full: a record waits in the flow's
    /// stream rather than lose its dead letter.
    #[serde(default)]
    pub discard: Discard,
    /// Where the replicas go: a NATS cluster by name and server tags (all must match). Unset:
    /// anywhere JetStream has room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<QueuePlacement>,
}

/// A queue replica count as the operator's and `render`'s `--queue-replicas` take it: 1, 3 or
/// 5, as `delivery.replicas` admits.
pub fn parse_queue_replicas(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u8>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("queue replicas must be 1, 3 or 5, not {text:?}")),
    }
}

/// Most bytes of a flow's stream when neither the flow nor the operator's configuration says.
pub const DEFAULT_QUEUE_MAX_BYTES: i64 = 1 << 30;

/// A stream size as the operator's and `render`'s `--queue-max-bytes` take it: bytes, within
/// the bounds `delivery.maxBytes` admits (1 MiB to 1 TiB).
pub fn parse_queue_max_bytes(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if ((1 << 20)..=(1 << 40)).contains(&n) => Ok(n),
        _ => Err(format!(
            "queue max bytes must be a number of bytes from 1048576 (1 MiB) to 1099511627776 (1 TiB), not {text:?}"
        )),
    }
}

/// What a full stream does with a new record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Discard {
    /// Remove the oldest records to make room.
    #[default]
    Old,
    /// Refuse the new record; the publisher retries.
    New,
}

/// JetStream placement of a flow's queue: which cluster, which tagged servers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuePlacement {
    /// Name of the NATS cluster (in a super-cluster) to place the replicas in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(r"^[A-Za-z0-9_-]+$"))]
    pub cluster: Option<String>,
    /// Server tags (`server_tags` in nats-server's configuration) every replica's server must
    /// have, e.g. `az:eu-west-1a`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        inner(length(min = 1, max = 64), pattern(r"^[A-Za-z0-9_.:=-]+$"))
    )]
    pub tags: Vec<String>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            retention: default_retention(),
            max_deliver: default_max_deliver(),
            ack_wait: default_ack_wait(),
            retry: None,
            dead_letter_retention: default_dead_letter_retention(),
            dedupe_window: default_dedupe_window(),
            replicas: None,
            max_bytes: None,
            discard: Discard::Old,
            placement: None,
        }
    }
}

fn default_retention() -> String {
    "168h".into()
}
fn default_max_deliver() -> u32 {
    10
}
fn default_ack_wait() -> String {
    "30s".into()
}
fn default_dead_letter_retention() -> String {
    "336h".into()
}
fn default_dedupe_window() -> String {
    "2m".into()
}

/// What a worker accepts from untrusted systems, and how much memory it may use. See
/// docs/operations.md ("Limits").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxRecordBytes <= self.maxResponseBytes").message("limits.maxRecordBytes must not exceed limits.maxResponseBytes: a record arrives in a response"))]
#[x_kube(validation = Rule::new("self.maxRecordBytes <= self.fetchMaxBytes").message("limits.maxRecordBytes must not exceed limits.fetchMaxBytes: a consume loop could never fetch a record that large").field_path(".maxRecordBytes"))]
#[x_kube(validation = Rule::new("quantity(self.memory).asInteger() >= 4 * self.fetchMaxBytes + 3 * self.maxResponseBytes + 67108864").message("limits.memory must be at least 4 x limits.fetchMaxBytes + 3 x limits.maxResponseBytes + 64Mi: what the consume loops and pages in flight hold").field_path(".memory"))]
pub struct Limits {
    /// Largest record, in bytes of its JSON, the flow takes from the source. Larger ones are
    /// dead-lettered at extraction (reason RecordTooLarge, the payload cut to its first 64 KiB).
    /// The NATS server's max payload (1 MiB by default) caps it whatever it says.
    #[serde(default = "default_max_record_bytes")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_record_bytes: u32,
    /// Largest response body read from a source page or a target answer; a larger one fails
    /// the call (retried, never a record's fault).
    #[serde(default = "default_max_response_bytes")]
    #[schemars(range(min = 65536, max = 1073741824))]
    pub max_response_bytes: u32,
    /// Most records one source page may hold; a larger page fails the call.
    #[serde(default = "default_max_page_records")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_page_records: u32,
    /// Deepest nesting of objects and arrays inside a record; a deeper record is dead-lettered
    /// at extraction (reason Malformed). At most 120: the consume side's JSON reader refuses
    /// records nested deeper than 128.
    #[serde(default = "default_max_json_depth")]
    #[schemars(range(min = 2, max = 120))]
    pub max_json_depth: u32,
    /// Most bytes of records one consume loop fetches at once (with `target.batchSize` records
    /// at most): with 4 loops, about 4x this is held in memory.
    #[serde(default = "default_fetch_max_bytes")]
    #[schemars(range(min = 65536, max = 268435456))]
    pub fetch_max_bytes: u32,
    /// Memory limit of the worker containers (a Kubernetes quantity). Keep it above
    /// 4 x fetchMaxBytes + 3 x maxResponseBytes (pages in flight) plus ~64Mi.
    /// Between 64Mi and 64Gi.
    #[serde(default = "default_memory")]
    #[schemars(length(max = 16), pattern(r"^[0-9]+(Ki|Mi|Gi)$"))]
    #[x_kube(validation = Rule::new("quantity(self).compareTo(quantity('64Mi')) >= 0 && quantity(self).compareTo(quantity('64Gi')) <= 0").message("limits.memory must be between 64Mi and 64Gi"))]
    pub memory: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: default_max_record_bytes(),
            max_response_bytes: default_max_response_bytes(),
            max_page_records: default_max_page_records(),
            max_json_depth: default_max_json_depth(),
            fetch_max_bytes: default_fetch_max_bytes(),
            memory: default_memory(),
        }
    }
}

fn default_max_record_bytes() -> u32 {
    1024 * 1024
}
fn default_max_response_bytes() -> u32 {
    32 * 1024 * 1024
}
fn default_max_page_records() -> u32 {
    10_000
}
fn default_max_json_depth() -> u32 {
    64
}
fn default_fetch_max_bytes() -> u32 {
    8 * 1024 * 1024
}
fn default_memory() -> String {
    "256Mi".into()
}

/// Approval routing of forecast deltas. Rules are checked in order; the first whose
/// `belowPercent` exceeds |delta| decides; otherwise `otherwise` does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.rules.exists(r, r.action == 'Review') || self.otherwise == 'Review') || has(self.reviewTimeout)").message("a Review approval rule needs approval.reviewTimeout, or reviews would wait forever"))]
#[x_kube(validation = Rule::new("!(self.rules.exists(r, r.action == 'Escalate') || self.otherwise == 'Escalate' || self.onTimeout == 'Escalate') || has(self.escalateTo)").message("an Escalate approval action needs approval.escalateTo (the supplier-collaboration target)"))]
#[x_kube(validation = Rule::new("self.rules.map(r, r.belowPercent).isSorted() && self.rules.all(r, self.rules.map(s, s.belowPercent).indexOf(r.belowPercent) == self.rules.map(s, s.belowPercent).lastIndexOf(r.belowPercent))").message("approval.rules must be ordered by increasing belowPercent, each threshold once"))]
#[x_kube(validation = Rule::new("self.valueField != self.baselineField").message("approval.valueField and approval.baselineField must be different fields: the delta compares them").field_path(".baselineField"))]
pub struct Approval {
    /// Contract field holding the new value (e.g. the forecast quantity).
    #[schemars(length(min = 1, max = 63), pattern(FIELD_NAME_PATTERN))]
    pub value_field: String,
    /// Contract field holding the value currently in the ERP; delta% = (value - baseline) / baseline.
    #[schemars(length(min = 1, max = 63), pattern(FIELD_NAME_PATTERN))]
    pub baseline_field: String,
    /// Thresholds, smallest first.
    #[schemars(length(min = 1, max = 10))]
    pub rules: Vec<ApprovalRule>,
    /// Action when no rule matches.
    #[serde(default = "default_otherwise")]
    pub otherwise: ApprovalAction,
    /// How long a delta waits for a planner's decision, e.g. "24h"; 1m to 8760h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("approval.reviewTimeout", "1m", "8760h"))]
    pub review_timeout: Option<String>,
    /// What happens to a review nobody decided in time.
    #[serde(default = "default_on_timeout")]
    pub on_timeout: ReviewTimeoutAction,
    /// Supplier-collaboration target for escalated deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<EscalationTarget>,
}

fn default_otherwise() -> ApprovalAction {
    ApprovalAction::Escalate
}
fn default_on_timeout() -> ReviewTimeoutAction {
    ReviewTimeoutAction::Reject
}

/// One approval threshold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRule {
    /// The rule matches when |delta%| is below this value.
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub below_percent: f64,
    /// What happens to a matching delta.
    pub action: ApprovalAction,
}

/// Routing of a forecast delta.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ApprovalAction {
    /// Deliver to the ERP.
    Apply,
    /// Park until a planner approves or rejects it.
    Review,
    /// Deliver to the supplier-collaboration target instead.
    Escalate,
}

/// What happens when a review times out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReviewTimeoutAction {
    /// Deliver to the ERP.
    Apply,
    /// Drop the delta (it is recorded in the dead-letter stream with reason ReviewTimeout).
    Reject,
    /// Deliver to the supplier-collaboration target.
    Escalate,
}

/// Where escalated deltas go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EscalationTarget {
    /// Name of the ConnectorBinding (same namespace).
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub binding_ref: String,
    /// Entity to write: a path as `target.entity` allows.
    #[schemars(length(min = 1, max = 256), pattern(TARGET_PATH_PATTERN))]
    #[x_kube(validation = path_rule("approval.escalateTo.entity"))]
    pub entity: String,
}

/// Worker scaling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("scaling.minReplicas must not exceed scaling.maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.replicas) || self.replicas <= self.maxReplicas").message("scaling.replicas (what kubectl scale sets) must not exceed scaling.maxReplicas"))]
pub struct Scaling {
    /// Exactly this many workers, with no autoscaler: what `kubectl scale` sets (the scale
    /// subresource). Remove it to hand the count back to the autoscaler (minReplicas to
    /// maxReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Fewest workers the autoscaler keeps (0 allows scale to zero with KEDA).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub min_replicas: i32,
    /// Most workers.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Pending records per worker the autoscaler aims for.
    #[serde(default = "default_lag_per_replica")]
    #[schemars(range(min = 1, max = 10000000))]
    pub lag_per_replica: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            replicas: None,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            lag_per_replica: default_lag_per_replica(),
        }
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    4
}
fn default_lag_per_replica() -> u32 {
    1000
}

/// Service levels of a flow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowSla {
    /// Longest time since the last successful delivery before the flow is not Fresh, e.g.
    /// "15m"; 1m to 8760h.
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("sla.freshness", "1m", "8760h"))]
    pub freshness: String,
    /// Highest share of failed records (0..1) over 15 minutes before alerting.
    #[serde(default = "default_max_error_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_ratio: f64,
    /// Dead letters tolerated before alerting.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000000))]
    pub max_dead_letters: u64,
}

fn default_max_error_ratio() -> f64 {
    0.01
}

/// Alert routing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alerting {
    /// Labels added to every alert of this flow (e.g. team: demand-planning), at most 32.
    /// Names are Prometheus label names (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`) and
    /// not one the rules set themselves (alertname, namespace, flow, severity); values are at
    /// most 128 characters without control characters, `{`, `}` or `$` (Prometheus expands
    /// templates in alert labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 128, "pattern": ALERT_LABEL_VALUE_PATTERN}))]
    #[x_kube(validation = Rule::new("self.all(k, k.size() <= 128 && k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$') && !k.startsWith('__'))").message("alerting.labels names must be Prometheus label names: [a-zA-Z_][a-zA-Z0-9_]*, at most 128 characters, not starting with __"))]
    #[x_kube(validation = Rule::new("self.all(k, !(k in ['alertname', 'namespace', 'flow', 'severity']))").message("alerting.labels must not set alertname, namespace, flow or severity: the generated alert rules set them"))]
    pub labels: BTreeMap<String, String>,
}

/// What the workers measure of the flow's data beyond the flow as a whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observability {
    /// Freshness per value of one key field (e.g. per location), so one warehouse that stops
    /// sending is seen while the others keep the flow as a whole fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_by: Option<FreshnessBy>,
}

/// Freshness per value of a contract field: the workers export the last delivery of each
/// value (`flowplane_worker_key_last_success_timestamp_seconds{key_field, key}`), kept in the
/// flow's progress record across restarts, and `FlowplaneKeyStale` fires for a value older
/// than `sla.freshness` while the flow as a whole is fresh. Only codes become label values:
/// the values of the contract field's Enum, or of the code map that translates the field
/// (at most 64 characters of `[A-Za-z0-9._:/-]`, starting with a letter or digit); every
/// other value, and every value beyond `maxValues`, counts under the one value `_other`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FreshnessBy {
    /// Contract (canonical) field, after mapping and code translation, e.g. "location". It
    /// must be an Enum field of the contract or a field `mapping.fields` translates with a
    /// code map (otherwise the flow is stalled with InvalidSpec): its values are then codes
    /// the flow's owner declared, never free record values.
    #[schemars(length(min = 1, max = 63), pattern(FIELD_NAME_PATTERN))]
    pub field: String,
    /// Most values with their own series (first delivered, first kept); the rest count under
    /// `_other`. 1 to 500.
    #[serde(default = "default_max_values")]
    #[schemars(range(min = 1, max = 500))]
    pub max_values: u32,
}

fn default_max_values() -> u32 {
    100
}

/// Deletion policy of a flow's queues.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the streams (and their undelivered records) when the flow is deleted.
    #[default]
    Retain,
    /// Delete the streams with the flow.
    Delete,
}

/// Observed state of an IntegrationFlow.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationFlowStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus `Ready`, `Reconciling`, `Stalled`, plus `ContractCompatible`, `BindingsReady`,
    /// `QueueReady`, `WorkersAvailable` and `Fresh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Contract version the workers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_version: Option<String>,
    /// Desired workers (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Workers ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// "ready/desired", for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,
    /// Label selector of the workers (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Progress of the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// The flow's stream on the NATS cluster: its leader and the health of each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// Forecast deltas waiting for a planner's decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_approvals: Vec<PendingApproval>,
    /// How many forecast deltas took each route, from the decision audit (`flowplane review
    /// list --routes` lists each delta with who decided and when). Approval flows only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<RouteCounts>,
    /// One-off operations (annotations) handled, with the annotation value acknowledged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, String>,
    /// Drift between the codes the source sends and the code maps, per code map the workers
    /// have seen codes of: unmapped codes (sent, not in the table) and orphaned ones (in the
    /// table, never sent since the flow started).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code_drift: Vec<CodeDrift>,
    /// The last replay requested by the `flowplane.io/replay` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayStatus>,
    /// The last backfill window requested by the `flowplane.io/backfill` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillStatus>,
    /// The last cursor change requested by the `flowplane.io/cursor` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_change: Option<CursorChangeStatus>,
}

/// Where a replay, backfill or cursor change requested by annotation stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationState {
    /// Not carried out: the request is invalid (`reason`, `message` say why).
    Refused,
    /// Accepted; waiting for the worker holding the extractor lease (backfill).
    Requested,
    /// Done; the figures are final.
    Done,
    /// Carried out in part: the worker's error is in `message`.
    Failed,
}

/// A replay: the records the flow's stream stored at or after `from`, sent through the
/// workers again (the target sees them as upserts of versions it already holds).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStatus {
    /// Request id (one replay per id).
    pub id: String,
    /// Start time (RFC 3339) as requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Where the request stands.
    pub state: OperationState,
    /// Why it was refused (`Refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Records republished to the flow's stream for the workers.
    #[serde(default)]
    pub replayed: u64,
    /// Records of the range that were copies of one already replayed by this request (the
    /// same record stored twice, e.g. redriven), dropped.
    #[serde(default)]
    pub duplicates: u64,
}

/// A backfill: the source re-read for the window `[from, to)` of its cursor field, into the
/// flow, without moving the live cursor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillStatus {
    /// Request id (one backfill per id).
    pub id: String,
    /// Window start (RFC 3339, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Window end (RFC 3339, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Where the request stands.
    pub state: OperationState,
    /// Why it was refused (`Refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Records of the window read from the source.
    #[serde(default)]
    pub read: u64,
    /// Records stored in the flow's stream (new, or older than the dedupe window).
    #[serde(default)]
    pub published: u64,
    /// Records the stream already held (within the dedupe window).
    #[serde(default)]
    pub duplicates: u64,
    /// Records dead-lettered at extraction.
    #[serde(default)]
    pub dead_lettered: u64,
}

/// A cursor set to an explicit value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CursorChangeStatus {
    /// Request id.
    pub id: String,
    /// The cursor value requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The cursor before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Where the request stands.
    pub state: OperationState,
    /// Why it was refused (`Refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Drift of one code map against the codes the source sent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeDrift {
    /// The code map (`spec.mapping.codeMaps[].name`).
    pub code_map: String,
    /// Codes the source sent that the table does not map, sorted; the first 20 that could be
    /// a ConfigMap key (the only codes a table can ever map).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmapped: Vec<String>,
    /// All unmapped codes seen.
    #[serde(default)]
    pub unmapped_count: u64,
    /// Codes of the table the source has not sent since the flow started, sorted; the first 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphaned: Vec<String>,
    /// All orphaned codes.
    #[serde(default)]
    pub orphaned_count: u64,
}

/// Data progress reported by the workers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Last successful delivery (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    /// Records waiting in the queue.
    #[serde(default)]
    pub lag: u64,
    /// Records in the dead-letter stream.
    #[serde(default)]
    pub dead_letters: u64,
    /// Records delivered since the flow started.
    #[serde(default)]
    pub delivered: u64,
    /// Records dropped as duplicates since the flow started: the flow's stream already held a
    /// record with the same identity (a re-read, a redelivered or republished source event).
    #[serde(default)]
    pub duplicates: u64,
    /// Records republished by replays since the flow started: read + replayed = delivered +
    /// dead letters (+ in flight).
    #[serde(default)]
    pub replayed: u64,
    /// Source cursor the extractor resumes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Why delivery is held, as a worker last reported it: the target refuses the binding
    /// (401, 403, or 404 of the entity set). Records wait; none is dead-lettered for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Values of `spec.observability.freshnessBy.field` (e.g. locations) whose last delivery is
    /// older than `sla.freshness`, oldest first, at most 20: one warehouse that stopped
    /// sending while the flow as a whole is fresh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_keys: Vec<String>,
}

/// The flow's stream as the NATS cluster reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Replicas the stream is configured with.
    pub replicas: u8,
    /// Server that leads the stream's replication group (takes its writes); none on a
    /// single server outside a cluster, or while the group elects one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The other replicas, by server name, as the leader sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<ReplicaStatus>,
}

/// One follower replica of the flow's stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Server name.
    pub name: String,
    /// `Current` (up to date), `Behind` (catching up, or not heard from for a moment) or
    /// `Lost` (not heard from for longer than the operator waits; QueueReady=False).
    pub state: String,
}

/// Forecast deltas per route (the decision audit's summary).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCounts {
    /// Delivered by the rules, without review.
    pub applied: u64,
    /// Reviewed and approved by a planner.
    pub approved: u64,
    /// Reviewed and rejected by a planner.
    pub rejected: u64,
    /// Sent to the escalation target by the rules.
    pub escalated: u64,
    /// Not decided in time (the flow's onTimeout was carried out).
    pub timed_out: u64,
}

/// A forecast delta parked for review.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingApproval {
    /// Review id, used by the approve/reject annotation.
    pub id: String,
    /// Primary key of the record.
    pub key: String,
    /// Delta in percent.
    pub delta_percent: f64,
    /// When the review times out (RFC 3339).
    pub expires: String,
}
