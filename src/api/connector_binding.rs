//! ConnectorBinding: one endpoint of an external system (ERP, forecasting platform, WMS, ...).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, DURATION_MAX_LENGTH, DURATION_PATTERN, Resilience, SecretKeyRef, SecretRef,
    TEXT_PATTERN, duration_within, path_rule, url_with_host, url_without_credentials,
};

/// One endpoint of an external system and how workers talk to it: protocol, address, TLS,
/// credentials (by Secret reference only), rate limits and resilience defaults for its flows.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[kube(
    group = "flowplane.io",
    version = "v1alpha1",
    kind = "ConnectorBinding",
    namespaced,
    status = "ConnectorBindingStatus",
    shortname = "cb",
    category = "flowplane",
    cel,
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("a ConnectorBinding name must be a DNS label of at most 63 characters: flows name it in bindingRef"),
    doc = "One endpoint of an external system (ERP, forecasting platform, warehouse, ...) and how flowplane workers talk to it.",
    printcolumn(name = "System", type_ = "string", json_path = ".spec.system"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
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
    selectable = ".spec.system"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol != 'Nats' || self.endpoint.url.startsWith('nats://') || self.endpoint.url.startsWith('tls://')").message("protocol Nats needs an endpoint.url starting with nats:// or tls://").field_path(".endpoint.url"))]
#[x_kube(validation = Rule::new("self.protocol != 'Files' || self.endpoint.url.startsWith('file://') || self.endpoint.url.startsWith('sftp://')").message("protocol Files needs an endpoint.url starting with file:// (a mounted volume) or sftp://").field_path(".endpoint.url"))]
#[x_kube(validation = Rule::new("!self.endpoint.url.startsWith('sftp://') || (has(self.endpoint.sshHostKeys) && size(self.endpoint.sshHostKeys) > 0)").message("an sftp:// endpoint needs endpoint.sshHostKeys: the server's public host keys, as in known_hosts (\"ssh-ed25519 AAAA...\"); workers connect to no server they cannot verify").field_path(".endpoint.sshHostKeys"))]
#[x_kube(validation = Rule::new("!self.endpoint.url.startsWith('sftp://') || self.auth.type in ['SshKey', 'Basic']").message("an sftp:// endpoint authenticates with auth.type SshKey (Secret keys username, privateKey) or Basic (username, password)").field_path(".auth.type"))]
#[x_kube(validation = Rule::new("!has(self.endpoint.sshHostKeys) || self.endpoint.url.startsWith('sftp://')").message("endpoint.sshHostKeys is only used with an sftp:// endpoint").field_path(".endpoint.sshHostKeys"))]
#[x_kube(validation = Rule::new("self.auth.type != 'SshKey' || self.endpoint.url.startsWith('sftp://')").message("auth.type SshKey is only used with an sftp:// endpoint").field_path(".auth.type"))]
#[x_kube(validation = Rule::new("!(self.protocol in ['OData', 'Rest']) || self.endpoint.url.startsWith('https://') || self.endpoint.url.startsWith('http://')").message("protocols OData and Rest need an endpoint.url starting with https:// or http://").field_path(".endpoint.url"))]
#[x_kube(validation = Rule::new("!has(self.healthCheck) || self.protocol in ['OData', 'Rest']").message("healthCheck probes over HTTP and is only supported for protocols OData and Rest").field_path(".healthCheck"))]
#[x_kube(validation = Rule::new("!has(self.rest) || self.protocol == 'Rest'").message("rest (paging and write conventions) is only allowed with protocol Rest").field_path(".rest"))]
pub struct ConnectorBindingSpec {
    /// The role this system plays in the distributor's landscape.
    pub system: System,
    /// How workers talk to the endpoint: OData v4, REST/JSON, NATS subjects or file drops.
    pub protocol: Protocol,
    /// Where the system is and how its TLS is verified.
    pub endpoint: Endpoint,
    /// How workers authenticate. Credentials are only ever read from a Secret.
    #[serde(default)]
    pub auth: Auth,
    /// Client-side rate limits that keep flows within the system's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Default timeout, retry and circuit-breaker policy; flows inherit it and may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience: Option<Resilience>,
    /// Optional HTTP probe that proves the endpoint answers (condition `Reachable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How this REST API pages its collections and takes writes (protocol Rest only): the
    /// defaults of every flow reading from or writing to it; a flow's `source.rest` or
    /// `target.rest` replaces the matching part as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestApi>,
}

/// The conventions of one REST API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestApi {
    /// How collections are read page by page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<RestRead>,
    /// How batches of records are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<RestWrite>,
}

/// How a REST collection is read: `GET <binding url>/<entity>?<limitParam>=<pageSize>` and
/// then, page after page, as `pagination` says. Next links may be absolute or relative (resolved
/// against the request URL, RFC 3986); a link to another host than the binding's is refused,
/// so the binding's credentials never leave its host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.pagination != 'NextLink' || has(self.nextLink)").message("pagination NextLink needs nextLink: the JSON pointer of the next page's URL in the body, e.g. /links/next"))]
#[x_kube(validation = Rule::new("self.pagination != 'Cursor' || has(self.nextCursor)").message("pagination Cursor needs nextCursor: the JSON pointer of the next cursor in the body, e.g. /meta/nextCursor"))]
#[x_kube(validation = Rule::new("self.limitParam != self.sinceParam && (self.pagination != 'Cursor' || !(self.cursorParam in [self.limitParam, self.sinceParam])) && (self.pagination != 'Page' || !(self.pageParam in [self.limitParam, self.sinceParam])) && (self.pagination != 'Offset' || !(self.offsetParam in [self.limitParam, self.sinceParam]))").message("rest.limitParam, rest.sinceParam and the pagination's own parameter (cursorParam, pageParam or offsetParam) must be different query parameters"))]
pub struct RestRead {
    /// NextLink: the body names the next page's URL (`nextLink`); Cursor: the body names a
    /// cursor (`nextCursor`) sent back as `cursorParam`; Page: `pageParam` counts pages from
    /// `firstPage`; Offset: `offsetParam` counts records from 0; LinkHeader: the RFC 8288
    /// `Link: <...>; rel="next"` response header; None: one request reads everything.
    /// Page and Offset end at an empty page or one with fewer records than an earlier page
    /// (not at fewer than `pageSize`: APIs cap the page size silently).
    pub pagination: Pagination,
    /// JSON pointer (RFC 6901) of the records array in the body, e.g. "/data"; empty: the body
    /// is the array.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256), pattern(JSON_POINTER_PATTERN))]
    pub records: String,
    /// JSON pointer of the next page's URL in the body (NextLink), e.g. "/links/next".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(JSON_POINTER_PATTERN))]
    pub next_link: Option<String>,
    /// JSON pointer of the next cursor in the body (Cursor), e.g. "/meta/nextCursor".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(JSON_POINTER_PATTERN))]
    pub next_cursor: Option<String>,
    /// Query parameter carrying the cursor back (Cursor).
    #[serde(default = "default_cursor_param")]
    #[schemars(length(min = 1, max = 64), pattern(QUERY_PARAM_PATTERN))]
    pub cursor_param: String,
    /// Query parameter of the page number (Page).
    #[serde(default = "default_page_param")]
    #[schemars(length(min = 1, max = 64), pattern(QUERY_PARAM_PATTERN))]
    pub page_param: String,
    /// Number of the first page (Page): 1 for most APIs, 0 for some.
    #[serde(default = "default_first_page")]
    #[schemars(range(min = 0, max = 1))]
    pub first_page: u32,
    /// Query parameter of the record offset (Offset).
    #[serde(default = "default_offset_param")]
    #[schemars(length(min = 1, max = 64), pattern(QUERY_PARAM_PATTERN))]
    pub offset_param: String,
    /// Query parameter of the page size, sent on the first request (and on every Page, Offset
    /// and Cursor request).
    #[serde(default = "default_limit_param")]
    #[schemars(length(min = 1, max = 64), pattern(QUERY_PARAM_PATTERN))]
    pub limit_param: String,
    /// Records asked for per page.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 100000))]
    pub page_size: u32,
    /// Query parameter an Incremental flow sends its cursor in (the records changed at or
    /// after it), e.g. "since" or "updatedAt_gte".
    #[serde(default = "default_since_param")]
    #[schemars(length(min = 1, max = 64), pattern(QUERY_PARAM_PATTERN))]
    pub since_param: String,
    /// Query parameter a backfill sends the end of its window in (the records changed before
    /// it, exclusive), beside `sinceParam` with the window's start, e.g. "until" or
    /// "updatedAt_lt".
    #[serde(default = "default_until_param")]
    #[schemars(length(min = 1, max = 64), pattern(QUERY_PARAM_PATTERN))]
    pub until_param: String,
}

/// A query parameter name.
pub const QUERY_PARAM_PATTERN: &str = r"^[A-Za-z0-9_.\[\]$-]+$";
/// A JSON pointer (RFC 6901): `/`-separated tokens, `~` only as `~0` or `~1`, no control
/// characters.
pub const JSON_POINTER_PATTERN: &str = r"^(/([^/~\x00-\x1f\x7f]|~[01])*)*$";
/// An HTTP header name (RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";

fn default_cursor_param() -> String {
    "cursor".into()
}
fn default_page_param() -> String {
    "page".into()
}
fn default_first_page() -> u32 {
    1
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}
fn default_page_size() -> u32 {
    500
}
fn default_since_param() -> String {
    "since".into()
}

fn default_until_param() -> String {
    "until".into()
}

/// A paging style of REST APIs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Pagination {
    /// The body names the next page's URL.
    NextLink,
    /// The body names a cursor, sent back as a query parameter.
    Cursor,
    /// A page-number query parameter.
    Page,
    /// A record-offset query parameter.
    Offset,
    /// RFC 8288 `Link` response header with `rel="next"`.
    LinkHeader,
    /// No paging: one request.
    None,
}

/// How a batch of records is written: `<method> <binding url>/<flow target entity>` with the
/// batch in `body`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.recordsKey) || self.body == 'Object'").message("rest.recordsKey is only used with body Object"))]
pub struct RestWrite {
    /// POST, PUT or PATCH.
    #[serde(default)]
    pub method: WriteMethod,
    /// The batch's envelope: JsonArray `[{...}, ...]`; Object `{"<recordsKey>": [{...}, ...]}`;
    /// Ndjson, one record per line (`application/x-ndjson`); VersionedUpsert
    /// `{"key": [fields], "records": [{"version": n, "data": {...}}]}` for APIs that apply a
    /// record only when its source version is newer than the one they hold (flowplane's
    /// forecasting simulator). Per-record refusals are read from a `rejected: [{index, reason}]`
    /// answer in every envelope.
    #[serde(default)]
    pub body: BodyEnvelope,
    /// Key wrapping the records (body Object); "records" when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(TEXT_PATTERN))]
    pub records_key: Option<String>,
    /// Header carrying an idempotency key, e.g. "Idempotency-Key": a hash of the batch's record
    /// keys and versions, so a retried request carries the same value. Unset: not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Headers the HTTP client or the auth scheme sets (Authorization, Host, Content-Type,
    /// Content-Length, ...) are refused.
    #[schemars(length(min = 1, max = 128), pattern(HEADER_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("!(self.lowerAscii() in ['authorization', 'proxy-authorization', 'host', 'content-type', 'content-length', 'content-encoding', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'expect', 'cookie', 'accept', 'user-agent', 'traceparent', 'tracestate'])").message("rest.idempotencyKeyHeader must not name a header the worker or its HTTP client sets (Authorization, Host, Content-Type, ...)"))]
    pub idempotency_key_header: Option<String>,
}

/// HTTP method of a write.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum WriteMethod {
    /// POST (the default).
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

/// The envelope of a batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum BodyEnvelope {
    /// A JSON array of the records.
    #[default]
    JsonArray,
    /// A JSON object with the records' array under `recordsKey`.
    Object,
    /// Newline-delimited JSON, one record per line.
    Ndjson,
    /// `{"key": [...], "records": [{"version": n, "data": {...}}]}`.
    VersionedUpsert,
}

/// The role a system plays.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum System {
    /// Enterprise resource planning: orders, purchasing, item masters, replenishment.
    Erp,
    /// Demand forecasting / planning platform.
    Forecasting,
    /// Warehouse management system.
    Warehouse,
    /// Transport management system.
    Transport,
    /// Anything else.
    Other,
}

/// Wire protocol of a connector.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    /// OData v4: server-driven paging with `@odata.nextLink`, `$filter` on a cursor, delta links.
    OData,
    /// JSON over HTTP with cursor or offset paging.
    Rest,
    /// NATS subjects, for event-driven sources.
    Nats,
    /// CSV or JSONL files dropped in a directory.
    Files,
}

/// Address of the system.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Base URL: https://, http://, nats://, tls://, file:// (a directory on a volume the
    /// flow mounts) or sftp://host[:port]/directory (file drops over SFTP). A host is required
    /// (file:// excepted); user-info (`user:password@`), a query, a fragment and `.`/`..`
    /// segments are refused: credentials come from `auth.secretRef`, paths and queries from
    /// each flow.
    #[schemars(
        length(min = 1, max = 2048),
        pattern(r"^(https?|nats|tls|file|sftp)://[^\x00-\x20\x7f-\x{9f}\x{2028}\x{2029}\\]+$")
    )]
    #[x_kube(validation = url_with_host("endpoint.url"))]
    #[x_kube(validation = url_without_credentials("endpoint.url"))]
    pub url: String,
    /// The SFTP server's public host keys as in known_hosts, without the host name: "ssh-ed25519
    /// AAAA...". Workers refuse a server presenting any other key. sftp:// only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        inner(
            length(max = 4096),
            pattern(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/]+={0,2}$")
        )
    )]
    pub ssh_host_keys: Vec<String>,
    /// CA bundle (PEM) used to verify the server certificate, from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Authentication of workers against the endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'None' || has(self.secretRef)").message("auth.secretRef is required for auth types Basic, Bearer and OAuth2ClientCredentials: credentials are read from a Secret, never written inline"))]
#[x_kube(validation = Rule::new("self.type != 'None' || !has(self.secretRef)").message("auth.secretRef is only allowed with an auth type that uses credentials"))]
#[x_kube(validation = Rule::new("self.type != 'OAuth2ClientCredentials' || has(self.tokenUrl)").message("auth.tokenUrl is required for OAuth2ClientCredentials"))]
#[x_kube(validation = Rule::new("self.type == 'OAuth2ClientCredentials' || !(has(self.tokenUrl) || has(self.scopes) || has(self.audience) || has(self.clientAuthentication))").message("auth.tokenUrl, scopes, audience and clientAuthentication are only allowed with OAuth2ClientCredentials"))]
pub struct Auth {
    /// None, Basic (Secret keys `username`, `password`; over SFTP, password login), Bearer
    /// (key `token`), OAuth2ClientCredentials (keys `clientId`, `clientSecret`) or SshKey
    /// (sftp:// only; keys `username`, `privateKey`).
    #[serde(default, rename = "type")]
    pub type_: AuthType,
    /// Secret in the same namespace holding the credentials for this auth type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// OAuth2 token endpoint (OAuth2ClientCredentials only): an http(s) URL with a host and
    /// without user-info, query or fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 2048),
        pattern(r"^https?://[^\x00-\x20\x7f-\x{9f}\x{2028}\x{2029}\\]+$")
    )]
    #[x_kube(validation = url_with_host("auth.tokenUrl"))]
    #[x_kube(validation = url_without_credentials("auth.tokenUrl"))]
    pub token_url: Option<String>,
    /// OAuth2 scopes to request (OAuth2ClientCredentials only), each an RFC 6749 scope token,
    /// no repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 256), pattern(r"^[\x21\x23-\x5b\x5d-\x7e]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scopes: Vec<String>,
    /// OAuth2 `audience` sent with the token request (Auth0, Okta and others ask for it to
    /// name the API the token is for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^[\x21-\x7e]+$"))]
    pub audience: Option<String>,
    /// How the client authenticates to the token endpoint (RFC 6749 2.3.1): ClientSecretBasic
    /// (HTTP Basic, the default every server must support) or ClientSecretPost (clientId and
    /// clientSecret in the form body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_authentication: Option<ClientAuthentication>,
}

/// OAuth2 client authentication at the token endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ClientAuthentication {
    /// `Authorization: Basic` with the form-encoded client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// Authentication scheme.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuthType {
    /// No authentication.
    #[default]
    None,
    /// HTTP Basic; Secret keys `username` and `password`.
    Basic,
    /// A static bearer token; Secret key `token`.
    Bearer,
    /// OAuth2 client-credentials grant; Secret keys `clientId` and `clientSecret`.
    OAuth2ClientCredentials,
    /// SSH public-key authentication (sftp:// endpoints); Secret keys `username` and
    /// `privateKey` (OpenSSH format, unencrypted). Basic is SSH password authentication there.
    SshKey,
}

impl AuthType {
    /// The Secret keys this auth type reads.
    pub fn required_secret_keys(self) -> &'static [&'static str] {
        match self {
            AuthType::None => &[],
            AuthType::Basic => &["username", "password"],
            AuthType::Bearer => &["token"],
            AuthType::SshKey => &["username", "privateKey"],
            AuthType::OAuth2ClientCredentials => &["clientId", "clientSecret"],
        }
    }
}

/// The binding's quota: one token bucket and one daily count for the whole cluster, shared by
/// every worker of every flow that uses the binding (kept in a NATS key-value bucket, see
/// `queue::quota`). A `429` or `503` with `Retry-After` pauses all of them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second, all workers together.
    #[schemars(range(min = 1, max = 100000))]
    pub requests_per_second: u32,
    /// Requests allowed at once above the sustained rate.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: u32,
    /// Requests per UTC day, all workers together; at the quota, workers hold their records
    /// (nothing is dead-lettered) until the next day or until the quota is raised. Unset: no
    /// daily quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub requests_per_day: Option<u64>,
    /// Requests in flight at once; also bounds the flow's unacknowledged messages.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent: u32,
}

fn default_burst() -> u32 {
    10
}
fn default_max_concurrent() -> u32 {
    4
}

/// An HTTP probe of the endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path below the endpoint URL, e.g. "/$metadata" for OData: no query, fragment,
    /// whitespace or `.`/`..` segments.
    #[serde(default = "default_probe_path")]
    #[schemars(
        length(min = 1, max = 1024),
        pattern(r"^/[^\x00-\x20\x7f-\x{9f}\x{2028}\x{2029}?#%\\]*$")
    )]
    #[x_kube(validation = path_rule("healthCheck.path"))]
    pub path: String,
    /// How often to probe, e.g. "1m"; 1s to 24h.
    #[serde(default = "default_probe_interval")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("healthCheck.interval", "1s", "24h"))]
    pub interval: String,
    /// Timeout of one probe, e.g. "5s"; 100ms to 1m.
    #[serde(default = "default_probe_timeout")]
    #[schemars(length(max = DURATION_MAX_LENGTH), pattern(DURATION_PATTERN))]
    #[x_kube(validation = duration_within("healthCheck.timeout", "100ms", "1m"))]
    pub timeout: String,
}

fn default_probe_path() -> String {
    "/".into()
}
fn default_probe_interval() -> String {
    "1m".into()
}
fn default_probe_timeout() -> String {
    "5s".into()
}

/// Observed state of a ConnectorBinding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorBindingStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `SecretResolved` and `Reachable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Result of the last health probe that changed something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<ProbeResult>,
    /// Digest of the referenced Secrets' UIDs and resourceVersions (never of their data): it
    /// changes when one is rotated, and the workers that mount them roll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_revision: Option<String>,
    /// The binding's quota as its workers used it (with `rateLimit` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaUsage>,
}

/// How much of the binding's quota the workers used.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    /// The UTC day counted (YYYY-MM-DD).
    pub day: String,
    /// Requests sent that day by every worker of the binding.
    pub used_today: u64,
    /// `rateLimit.requestsPerDay`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Available: requests may be sent; Exhausted: the daily quota is used up; Paused: the
    /// endpoint asked to wait (`Retry-After`).
    pub state: QuotaState,
    /// Why, when not Available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Until when the workers wait (RFC 3339), when not Available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// Whether the workers may send.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum QuotaState {
    /// Requests may be sent.
    Available,
    /// The daily quota is used up.
    Exhausted,
    /// The endpoint asked to wait (`Retry-After`).
    Paused,
}

/// Outcome of a health probe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// Whether the endpoint answered with a non-5xx status in time.
    pub reachable: bool,
    /// HTTP status code, when one came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Short description of the outcome (never contains credentials).
    pub message: String,
    /// When the probe result last changed (RFC 3339).
    pub since: String,
}
