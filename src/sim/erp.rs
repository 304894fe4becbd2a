//! `flowplane sim erp`: an OData v4 service shaped like SAP S/4HANA's sales-order API, with
//! sales order lines, inventory positions and returns.
//!
//! What it does like the real thing: server-driven paging (`@odata.nextLink` with a
//! `$skiptoken`, page size from `Prefer: odata.maxpagesize`), `$filter` on the change timestamp
//! (`LastChangeDateTime gt|ge <timestamp>`), `$select`, delta links (`Prefer:
//! odata.track-changes` -> `@odata.deltaLink` with a `$deltatoken`), and decimals as strings.
//! What it adds for tests: every change gets a strictly increasing `LastChangeDateTime` (one
//! millisecond per change from 2024-01-01), some deliberately bad lines (unknown plant codes,
//! invalid quantities), and switchable latency / 429 / 5xx under `/admin/faults`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::faults::{FaultSpec, Faults, lock};

/// Entity set of sales order lines.
pub const SALES_ORDER_LINES: &str = "A_SalesOrderItem";
/// Entity set of inventory positions.
pub const INVENTORY: &str = "A_WarehouseStock";
/// Entity set of return order lines.
pub const RETURNS: &str = "A_ReturnOrderItem";
/// Plants the seed data uses; anything else is an unknown plant.
pub const PLANTS: [&str; 4] = ["1010", "1020", "1030", "1040"];
/// The plant code bad records carry.
pub const UNKNOWN_PLANT: &str = "9999";
/// `LastChangeDateTime` of change 0.
const EPOCH_MS: i64 = 1_704_067_200_000;

/// `2024-01-01T00:00:00.025Z`: the service's DateTimeOffset values, always with milliseconds.
fn format_rfc3339_millis(unix_ms: i64) -> String {
    let timestamp =
        jiff::Timestamp::from_millisecond(unix_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{timestamp:.3}")
}

/// Unix nanoseconds of a DateTimeOffset literal in a `$filter`.
fn parse_rfc3339_nanos(raw: &str) -> Option<i64> {
    let timestamp: jiff::Timestamp = raw.parse().ok()?;
    i64::try_from(timestamp.as_nanosecond()).ok()
}
/// The cursor field of every entity set.
pub const CHANGE_FIELD: &str = "LastChangeDateTime";

/// What the simulator starts with.
#[derive(Clone, Debug)]
pub struct ErpSeed {
    /// Sales order lines (10 lines per order).
    pub order_lines: u32,
    /// Inventory positions.
    pub inventory: u32,
    /// Return lines.
    pub returns: u32,
    /// Every n-th sales order line is bad (alternately an unknown plant and an invalid
    /// quantity); 0 means none.
    pub bad_every: u32,
    /// Default server page size.
    pub page_size: usize,
}

impl Default for ErpSeed {
    fn default() -> Self {
        ErpSeed {
            order_lines: 1000,
            inventory: 100,
            returns: 50,
            bad_every: 0,
            page_size: 100,
        }
    }
}

impl ErpSeed {
    /// No rows at all: for tests that use the simulator as a write target only.
    pub fn empty() -> Self {
        ErpSeed {
            order_lines: 0,
            inventory: 0,
            returns: 0,
            ..ErpSeed::default()
        }
    }
}

/// A record with the sequence of its last change.
type Row = (u64, Map<String, Value>);

/// Change timestamps: from [`EPOCH_MS`], one millisecond per change, until
/// [`ErpState::stamp_wall_clock`] switches to the wall clock (still strictly increasing).
struct Stamps {
    last_ms: i64,
    wall_clock: bool,
    /// Stamp -> sequence of every change stamped from the wall clock, so a `$filter` on the
    /// change timestamp still finds its first candidate without a scan.
    live: BTreeMap<i64, u64>,
}

/// A current record: the sequence of its last change, its fields, and its JSON text
/// (serialised once per change, so a page without `$select` is served by concatenation,
/// as a real service streams rows, instead of cloning and re-serialising every record).
struct Stored {
    sequence: u64,
    stamp_ms: i64,
    record: Map<String, Value>,
    json: Bytes,
}

/// One entity set: current records by key, and keys by the sequence of their last change.
#[derive(Default)]
struct EntitySet {
    records: HashMap<String, Stored>,
    by_change: BTreeMap<u64, String>,
}

/// The simulator's data and faults; share it with tests through `Arc`.
pub struct ErpState {
    sets: Mutex<(u64, HashMap<String, EntitySet>)>,
    stamps: Mutex<Stamps>,
    /// Switchable misbehaviour.
    pub faults: Faults,
    page_size: usize,
    requests: std::sync::atomic::AtomicU64,
    /// What was written (see `erp_write`).
    pub(crate) writes: super::erp_write::Writes,
}

impl ErpState {
    /// A simulator with seed data.
    pub fn new(seed: &ErpSeed) -> Arc<ErpState> {
        let state = Arc::new(ErpState {
            sets: Mutex::new((0, HashMap::new())),
            stamps: Mutex::new(Stamps {
                last_ms: EPOCH_MS,
                wall_clock: false,
                live: BTreeMap::new(),
            }),
            faults: Faults::default(),
            page_size: seed.page_size.max(1),
            requests: Default::default(),
            writes: Default::default(),
        });
        for i in 0..seed.order_lines {
            let bad = seed.bad_every > 0 && (i + 1) % seed.bad_every == 0;
            let bad_kind = (i + 1) / seed.bad_every.max(1);
            state.upsert(
                SALES_ORDER_LINES,
                sales_order_line(i, bad.then_some(bad_kind)),
            );
        }
        for i in 0..seed.inventory {
            state.upsert(INVENTORY, inventory_position(i));
        }
        for i in 0..seed.returns {
            state.upsert(RETURNS, return_line(i));
        }
        state.declare_keys(super::erp_write::REPLENISHMENT_PROPOSALS, &["proposalId"]);
        state
    }

    /// Inserts or replaces a record (its key fields decide which), stamping a new change time.
    /// Returns the change timestamp.
    pub fn upsert(&self, set: &str, mut record: Map<String, Value>) -> String {
        let key = key_of(set, &record);
        let mut guard = lock(&self.sets);
        let (clock, sets) = &mut *guard;
        *clock += 1;
        let sequence = *clock;
        let stamp_ms = {
            let mut stamps = lock(&self.stamps);
            let next = stamps.last_ms + 1;
            stamps.last_ms = if stamps.wall_clock {
                let now = jiff::Timestamp::now().as_millisecond().max(next);
                stamps.live.insert(now, sequence);
                now
            } else {
                next
            };
            stamps.last_ms
        };
        let stamp = format_rfc3339_millis(stamp_ms);
        record.insert(CHANGE_FIELD.into(), Value::String(stamp.clone()));
        let json = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let entities = sets.entry(set.to_string()).or_default();
        let stored = Stored {
            sequence,
            stamp_ms,
            record,
            json,
        };
        if let Some(old) = entities.records.insert(key.clone(), stored) {
            entities.by_change.remove(&old.sequence);
        }
        entities.by_change.insert(sequence, key);
        stamp
    }

    /// From now on, changes are stamped with the wall-clock time (strictly increasing, and
    /// later than every earlier change), so a change's `LastChangeDateTime` is when it
    /// happened: what end-to-end latency is measured from.
    pub fn stamp_wall_clock(&self) {
        lock(&self.stamps).wall_clock = true;
    }

    /// The first sequence that can have a change timestamp at or after `ms`.
    fn first_sequence_at(&self, ms: i64) -> u64 {
        let stamps = lock(&self.stamps);
        // Changes before the wall clock: change n has timestamp EPOCH + n ms.
        let counted = (ms - EPOCH_MS).max(0) as u64;
        match stamps.live.first_key_value() {
            None => counted,
            Some((first_ms, first_sequence)) if ms < *first_ms => counted.min(*first_sequence),
            Some(_) => stamps
                .live
                .range(ms..)
                .next()
                .map_or(u64::MAX, |(_, sequence)| *sequence),
        }
    }

    /// Changes fields of an existing record; returns its new change timestamp, or None when
    /// there is no such key.
    pub fn update(&self, set: &str, key: &str, fields: Map<String, Value>) -> Option<String> {
        let mut record = {
            let guard = lock(&self.sets);
            guard.1.get(set)?.records.get(key)?.record.clone()
        };
        record.extend(fields);
        Some(self.upsert(set, record))
    }

    /// The current record of a key.
    pub fn get(&self, set: &str, key: &str) -> Option<Map<String, Value>> {
        let guard = lock(&self.sets);
        Some(guard.1.get(set)?.records.get(key)?.record.clone())
    }

    /// Every current record of a set, in change order.
    pub fn all(&self, set: &str) -> Vec<Map<String, Value>> {
        let guard = lock(&self.sets);
        let Some(entities) = guard.1.get(set) else {
            return Vec::new();
        };
        entities
            .by_change
            .values()
            .filter_map(|key| entities.records.get(key).map(|s| s.record.clone()))
            .collect()
    }

    /// Requests served (including failed ones).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One page of `set`: records changed after sequence `after` (and, with a cursor filter,
    /// after that timestamp), oldest change first; plus whether more follow.
    fn page(
        &self,
        set: &str,
        after: u64,
        changed_after_nanos: Option<(i64, bool)>,
        limit: usize,
    ) -> Option<(Vec<Row>, bool)> {
        self.page_with(set, after, changed_after_nanos, limit, |s| s.record.clone())
    }

    /// `page`, with each record as its JSON text.
    fn page_json(
        &self,
        set: &str,
        after: u64,
        changed_after_nanos: Option<(i64, bool)>,
        limit: usize,
    ) -> Option<(Vec<(u64, Bytes)>, bool)> {
        self.page_with(set, after, changed_after_nanos, limit, |s| s.json.clone())
    }

    fn page_with<T>(
        &self,
        set: &str,
        after: u64,
        changed_after_nanos: Option<(i64, bool)>,
        limit: usize,
        row: impl Fn(&Stored) -> T,
    ) -> Option<(Vec<(u64, T)>, bool)> {
        let guard = lock(&self.sets);
        let sets = &guard.1;
        let entities = sets.get(set)?;
        let mut start = after + 1;
        if let Some((nanos, _)) = changed_after_nanos {
            // Skip straight to the first candidate.
            start = start.max(self.first_sequence_at(nanos.div_euclid(1_000_000)));
        }
        let mut rows = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for (sequence, key) in entities.by_change.range(start..) {
            let Some(stored) = entities.records.get(key) else {
                continue;
            };
            if let Some((nanos, inclusive)) = changed_after_nanos {
                let own = stored.stamp_ms * 1_000_000;
                if own < nanos || (own == nanos && !inclusive) {
                    continue;
                }
            }
            if rows.len() == limit {
                more = true;
                break;
            }
            rows.push((*sequence, row(stored)));
        }
        Some((rows, more))
    }
}

fn key_fields(set: &str) -> &'static [&'static str] {
    match set {
        SALES_ORDER_LINES => &["SalesOrder", "SalesOrderItem"],
        INVENTORY => &["Material", "Plant", "StorageLocation"],
        RETURNS => &["ReturnOrder", "ReturnOrderItem"],
        _ => &["Id"],
    }
}

/// The key of a record of `set`: its key field values joined by `/`.
pub fn key_of(set: &str, record: &Map<String, Value>) -> String {
    key_fields(set)
        .iter()
        .map(|f| match record.get(*f) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Sales order line `i` of the seed data; `bad` makes it an unknown plant (odd) or an invalid
/// quantity (even).
pub fn sales_order_line(i: u32, bad: Option<u32>) -> Map<String, Value> {
    let order = 1_000_000 + i / 10;
    let item = (i % 10 + 1) * 10;
    let plant = match bad {
        Some(kind) if kind % 2 == 1 => UNKNOWN_PLANT,
        _ => PLANTS[(i % 4) as usize],
    };
    let quantity = match bad {
        Some(kind) if kind % 2 == 0 => "-3".to_string(),
        _ => format!("{}", 1 + (i * 7) % 50),
    };
    let day = 1 + i % 28;
    let unit = ["EA", "PC", "CS"][(i % 3) as usize];
    let category = ["TAN", "TANN", "REN"][(i % 7 / 5) as usize];
    let record = json!({
        "SalesOrder": order.to_string(),
        "SalesOrderItem": item.to_string(),
        "Material": format!("MAT-{:05}", i % 500),
        "Plant": plant,
        "RequestedQuantity": quantity,
        "RequestedQuantityUnit": unit,
        "NetAmount": format!("{}.{:02}", 10 + (i * 13) % 990, i % 100),
        "TransactionCurrency": "EUR",
        "SalesOrderItemCategory": category,
        "to_SalesOrder": {
            "SoldToParty": format!("C{:06}", i % 97),
            "CreationDate": format!("2024-03-{day:02}"),
        },
    });
    match record {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn inventory_position(i: u32) -> Map<String, Value> {
    let record = json!({
        "Material": format!("MAT-{:05}", i % 500),
        "Plant": PLANTS[(i % 4) as usize],
        "StorageLocation": format!("{:04}", 1 + i / 500),
        "MatlWrhsStkQtyInMatlBaseUnit": format!("{}", (i * 37) % 1000),
        "MaterialBaseUnit": "EA",
    });
    match record {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn return_line(i: u32) -> Map<String, Value> {
    let reason = ["101", "102", "103"][(i % 3) as usize];
    let record = json!({
        "ReturnOrder": (6_000_000 + i / 5).to_string(),
        "ReturnOrderItem": ((i % 5 + 1) * 10).to_string(),
        "Material": format!("MAT-{:05}", i % 500),
        "Plant": PLANTS[(i % 4) as usize],
        "ReturnQuantity": format!("{}", 1 + i % 5),
        "ReturnReason": reason,
    });
    match record {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The OData service and its admin endpoints.
pub fn router(state: Arc<ErpState>) -> Router {
    Router::new()
        .route("/odata/$metadata", get(metadata))
        .route("/odata/{set}", get(query))
        .route("/admin/faults", post(set_faults).delete(clear_faults))
        .route("/admin/upsert/{set}", post(admin_upsert))
        .route("/admin/stats", get(stats))
        .merge(super::erp_write::routes())
        .with_state(state)
}

/// Serves the simulator on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ErpState>) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

async fn metadata() -> impl IntoResponse {
    (
        [("content-type", "application/xml")],
        r#"<?xml version="1.0" encoding="utf-8"?><edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"><edmx:DataServices><Schema Namespace="flowplane.sim" xmlns="http://docs.oasis-open.org/odata/ns/edm"><EntityContainer Name="Erp"><EntitySet Name="A_SalesOrderItem" EntityType="flowplane.sim.SalesOrderItem"/><EntitySet Name="A_WarehouseStock" EntityType="flowplane.sim.WarehouseStock"/><EntitySet Name="A_ReturnOrderItem" EntityType="flowplane.sim.ReturnOrderItem"/></EntityContainer></Schema></edmx:DataServices></edmx:Edmx>"#,
    )
}

#[derive(Deserialize)]
struct QueryOptions {
    #[serde(rename = "$filter")]
    filter: Option<String>,
    #[serde(rename = "$select")]
    select: Option<String>,
    #[serde(rename = "$skiptoken")]
    skiptoken: Option<u64>,
    #[serde(rename = "$deltatoken")]
    deltatoken: Option<u64>,
    #[serde(rename = "$top")]
    top: Option<usize>,
}

fn odata_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16().to_string(), "message": message}})),
    )
        .into_response()
}

/// `LastChangeDateTime gt 2024-01-01T00:00:00.001Z` (or `ge`, value optionally quoted),
/// optionally followed by `and LastChangeDateTime lt <timestamp>` (a window): the lower bound
/// (nanoseconds, inclusive or not) and the exclusive upper bound.
fn parse_change_filter(filter: &str) -> Result<((i64, bool), Option<i64>), String> {
    let unsupported = || {
        format!(
            "unsupported $filter {filter:?}: this service filters on '{CHANGE_FIELD} gt|ge <timestamp>[ and {CHANGE_FIELD} lt <timestamp>]'"
        )
    };
    let literal = |value: &str| {
        let value = value.trim_matches('\'');
        parse_rfc3339_nanos(value)
            .ok_or_else(|| format!("{value:?} is not a DateTimeOffset literal"))
    };
    let parts: Vec<&str> = filter.split_whitespace().collect();
    match parts.as_slice() {
        [field, op, value] if *field == CHANGE_FIELD && (*op == "gt" || *op == "ge") => {
            Ok(((literal(value)?, *op == "ge"), None))
        }
        [field, op, value, and, upper_field, "lt", upper]
            if *field == CHANGE_FIELD
                && (*op == "gt" || *op == "ge")
                && *and == "and"
                && *upper_field == CHANGE_FIELD =>
        {
            Ok(((literal(value)?, *op == "ge"), Some(literal(upper)?)))
        }
        _ => Err(unsupported()),
    }
}

fn max_page_size(headers: &HeaderMap) -> Option<usize> {
    let prefer = headers.get("prefer")?.to_str().ok()?;
    prefer
        .split(',')
        .find_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
        .and_then(|n| n.trim().parse().ok())
}

fn tracks_changes(headers: &HeaderMap) -> bool {
    headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.contains("odata.track-changes"))
}

async fn query(
    State(state): State<Arc<ErpState>>,
    Path(set): Path<String>,
    Query(options): Query<QueryOptions>,
    headers: HeaderMap,
) -> Response {
    state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(failure) = state.faults.intercept().await {
        return failure;
    }
    let (changed_after, changed_before) = match options.filter.as_deref().map(parse_change_filter) {
        Some(Err(message)) => return odata_error(StatusCode::BAD_REQUEST, &message),
        Some(Ok((bound, before))) => (Some(bound), before),
        None => (None, None),
    };
    let limit = max_page_size(&headers)
        .unwrap_or(state.page_size)
        .min(state.page_size.max(1))
        .min(options.top.unwrap_or(usize::MAX))
        .max(1);
    // Delta queries read changes after the token; paging continues after the skiptoken.
    let after = options.skiptoken.or(options.deltatoken).unwrap_or(0);
    let not_found = || {
        odata_error(
            StatusCode::NOT_FOUND,
            &format!("no entity set named {set:?}"),
        )
    };
    // The rows as JSON text: stored text as it is, or with only the selected fields.
    let (rows, more): (Vec<(u64, Bytes)>, bool) = match options.select.as_deref() {
        None => match state.page_json(&set, after, changed_after, limit) {
            Some(page) => page,
            None => return not_found(),
        },
        Some(select) => {
            let fields: Vec<&str> = select.split(',').map(str::trim).collect();
            let Some((rows, more)) = state.page(&set, after, changed_after, limit) else {
                return not_found();
            };
            let rows = rows
                .into_iter()
                .map(|(sequence, record)| {
                    let selected: Map<String, Value> = record
                        .into_iter()
                        .filter(|(k, _)| fields.contains(&k.as_str()))
                        .collect();
                    let json = serde_json::to_vec(&selected).unwrap_or_default();
                    (sequence, Bytes::from(json))
                })
                .collect();
            (rows, more)
        }
    };
    // A window's end: rows come in change order, so the first one at or past it ends the set.
    let (mut rows, mut more) = (rows, more);
    if let Some(before) = changed_before
        && let Some(cut) = rows
            .iter()
            .position(|(sequence, _)| (EPOCH_MS + *sequence as i64) * 1_000_000 >= before)
    {
        rows.truncate(cut);
        more = false;
    }
    let last_sequence = rows.last().map(|(s, _)| *s);
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let base = format!("http://{host}/odata/{set}");
    let mut links = Map::new();
    let track = tracks_changes(&headers) || options.deltatoken.is_some();
    if more && let Some(last) = last_sequence {
        let mut params = vec![format!("$skiptoken={last}")];
        if let Some(filter) = &options.filter {
            params.push(format!("$filter={}", encode(filter)));
        }
        if let Some(select) = &options.select {
            params.push(format!("$select={}", encode(select)));
        }
        if let Some(token) = options.deltatoken {
            params.push(format!("$deltatoken={token}"));
        }
        links.insert(
            "@odata.nextLink".into(),
            Value::String(format!("{base}?{}", params.join("&"))),
        );
    } else if track {
        links.insert(
            "@odata.deltaLink".into(),
            Value::String(format!(
                "{base}?$deltatoken={}",
                last_sequence.unwrap_or(after)
            )),
        );
    }
    // {"@odata.context": ..., "value": [rows...], links...}, written by concatenation.
    let size = rows.iter().map(|(_, json)| json.len() + 1).sum::<usize>() + 256;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(b"{\"@odata.context\":");
    let _ = serde_json::to_writer(&mut body, &format!("$metadata#{set}"));
    body.extend_from_slice(b",\"value\":[");
    for (i, (_, json)) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(json);
    }
    body.push(b']');
    for (name, link) in &links {
        body.push(b',');
        let _ = serde_json::to_writer(&mut body, name);
        body.push(b':');
        let _ = serde_json::to_writer(&mut body, link);
    }
    body.push(b'}');
    ([("content-type", "application/json")], body).into_response()
}

/// RFC 3986's unreserved characters stay as they are in a query value.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

async fn set_faults(State(state): State<Arc<ErpState>>, Json(spec): Json<FaultSpec>) -> StatusCode {
    state.faults.set(spec);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(state): State<Arc<ErpState>>) -> StatusCode {
    state.faults.clear();
    StatusCode::NO_CONTENT
}

async fn admin_upsert(
    State(state): State<Arc<ErpState>>,
    Path(set): Path<String>,
    Json(record): Json<Map<String, Value>>,
) -> Json<Value> {
    let key = key_of(&set, &record);
    let stamp = match state.get(&set, &key) {
        Some(_) => state.update(&set, &key, record),
        None => Some(state.upsert(&set, record)),
    };
    Json(json!({"key": key, "lastChangeDateTime": stamp}))
}

async fn stats(State(state): State<Arc<ErpState>>) -> Json<Value> {
    Json(json!({"requests": state.requests(), "failed": state.faults.failed()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_paged_in_change_order_and_filtered_by_timestamp() {
        let state = ErpState::new(&ErpSeed {
            order_lines: 25,
            inventory: 0,
            returns: 0,
            bad_every: 5,
            page_size: 10,
        });
        let (first, more) = state.page(SALES_ORDER_LINES, 0, None, 10).unwrap();
        assert_eq!((first.len(), more), (10, true));
        let stamp = state
            .update(
                SALES_ORDER_LINES,
                "1000000/10",
                json!({"RequestedQuantity": "9"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
        let cutoff = parse_rfc3339_nanos(&format_rfc3339_millis(EPOCH_MS + 25)).unwrap();
        let (changed, _) = state
            .page(SALES_ORDER_LINES, 0, Some((cutoff, false)), 10)
            .unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].1[CHANGE_FIELD], Value::String(stamp));
        let bad = state
            .all(SALES_ORDER_LINES)
            .into_iter()
            .filter(|r| r["Plant"] == UNKNOWN_PLANT || r["RequestedQuantity"] == "-3")
            .count();
        assert_eq!(bad, 5);
    }

    #[test]
    fn wall_clock_changes_are_stamped_now_and_found_by_the_change_filter() {
        let state = ErpState::new(&ErpSeed {
            order_lines: 10,
            inventory: 0,
            returns: 0,
            bad_every: 0,
            page_size: 10,
        });
        state.stamp_wall_clock();
        let before = jiff::Timestamp::now().as_millisecond();
        let change = |i: u32| {
            let stamp = state.upsert(SALES_ORDER_LINES, sales_order_line(100 + i, None));
            parse_rfc3339_nanos(&stamp).unwrap()
        };
        let (first, second) = (change(0), change(1));
        assert!(first / 1_000_000 >= before && second > first);
        // After a seeded change: the later seeded ones and both live ones.
        let seeded = parse_rfc3339_nanos(&format_rfc3339_millis(EPOCH_MS + 8)).unwrap();
        let (rows, _) = state
            .page(SALES_ORDER_LINES, 0, Some((seeded, false)), 100)
            .unwrap();
        assert_eq!(rows.len(), 4);
        // From the first live change, inclusively, and after it.
        for (inclusive, expected) in [(true, 2), (false, 1)] {
            let (rows, _) = state
                .page(SALES_ORDER_LINES, 0, Some((first, inclusive)), 100)
                .unwrap();
            assert_eq!(rows.len(), expected);
        }
        let (rows, _) = state
            .page(SALES_ORDER_LINES, 0, Some((second + 1_000_000, true)), 100)
            .unwrap();
        assert!(rows.is_empty());
    }
}
