//! The forecasting platform's outbound side in `flowplane sim forecast`: what the example flows
//! `forecast-deltas-to-erp-replenishment` and `forecasts-to-supplier-portal` read.
//!
//! - `GET /v2/replenishment-proposals?limit=N[&updatedSince=T]`: proposals updated strictly
//!   after `T`, oldest first, as `{"data": [...], "links": {"next": "/v2/...&offset=K"}}` (the
//!   binding's `rest.read`: NextLink paging, records at `/data`). Every proposal gets its own
//!   `updatedAt` (a millisecond after the previous one at least), so a cursor never skips one.
//! - `GET /v2/forecasts/published?page=P&pageSize=N`: the published forecast, `{"data": [...]}`
//!   page by page (the flow's Page paging; an empty page ends the pass).
//! - `POST /admin/proposals` with `{"count": n}`: n more proposals (the demo's planning run);
//!   `GET /admin/proposals` counts what was published per route the flow's rules will take.
//!
//! Proposal `i` is deterministic, so tests know each one's route under the example's rules
//! (< 5%: Apply, < 20%: Review, else Escalate): of every 20, 12 change the ERP quantity by 2 or
//! 3 percent, 4 by 10 or 12 percent, 3 by 50 percent, and one names a planning location no
//! code map knows (dead-lettered as UnmappedCode).

use std::sync::Mutex;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

use super::faults::lock;
use super::forecast::ForecastState;

/// SKUs of the example's code map `sku-to-erp-material`.
pub const SKUS: [&str; 7] = [
    "HYD-PUMP-25L",
    "HYD-PUMP-40L",
    "FLT-OIL-M12",
    "FLT-AIR-M16",
    "VLV-BALL-DN50",
    "VLV-BALL-DN80",
    "SEAL-KIT-STD",
];
/// EU planning locations of the code map `planning-location-to-erp-plant`.
pub const LOCATIONS: [&str; 4] = ["DE-HAM-DC", "DE-DUS-DC", "NL-RTM-DC", "PL-POZ-XD"];
/// A planning location no code map knows.
pub const UNKNOWN_LOCATION: &str = "XX-UNK-DC";
/// Weeks in the published forecast.
const WEEKS: u32 = 4;
/// The forecast run the simulator publishes.
const RUN_ID: &str = "RUN-2026-48";

/// Where a proposal goes under the example flow's approval rules.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedRoute {
    /// |delta| < 5%: applied in the ERP.
    Apply,
    /// 5% <= |delta| < 20%: parked for a planner.
    Review,
    /// Larger: sent to the supplier portal.
    Escalate,
    /// Its location is in no code map: dead-lettered.
    DeadLetter,
}

/// The route proposal `i` takes.
pub fn expected_route(i: u64) -> ExpectedRoute {
    match (i % 20, i % 10) {
        (19, _) => ExpectedRoute::DeadLetter,
        (_, 0..=5) => ExpectedRoute::Apply,
        (_, 6 | 7) => ExpectedRoute::Review,
        _ => ExpectedRoute::Escalate,
    }
}

/// Proposal `i` (its id `RP-2026-48-<i>`), updated at `updated_at`.
pub fn proposal(i: u64, updated_at: &str) -> Value {
    let current = 100 + (i % 50) * 10;
    let percent = match (expected_route(i), i % 2) {
        (ExpectedRoute::Apply, 0) => 2,
        (ExpectedRoute::Apply, _) => -3,
        (ExpectedRoute::Review, 0) => 10,
        (ExpectedRoute::Review, _) => -12,
        _ => 50,
    };
    let proposed = current as i64 + current as i64 * percent / 100;
    let location = match expected_route(i) {
        ExpectedRoute::DeadLetter => UNKNOWN_LOCATION,
        _ => LOCATIONS[(i as usize / SKUS.len()) % LOCATIONS.len()],
    };
    json!({
        "id": format!("RP-2026-48-{i:06}"),
        "sku": SKUS[i as usize % SKUS.len()],
        "location": location,
        "type": "PurchaseRequisition",
        "quantity": {
            "proposed": format!("{proposed}.000"),
            "current": format!("{current}.000"),
            "unit": "EA",
        },
        "needDate": "2026-12-14",
        "preferredSupplier": format!("S{:06}", 100 + i % 5),
        "runId": RUN_ID,
        "updatedAt": updated_at,
    })
}

/// The published forecast: every SKU at every location for [`WEEKS`] weeks.
pub fn published_forecasts() -> Vec<Value> {
    let mut forecasts = Vec::new();
    for (s, sku) in SKUS.iter().enumerate() {
        for (l, location) in LOCATIONS.iter().enumerate() {
            for week in 0..WEEKS {
                let p50 = 100 + (s * 37 + l * 11 + week as usize * 5) % 400;
                forecasts.push(json!({
                    "sku": sku,
                    "location": location,
                    "bucket": {"start": format!("2026-12-{:02}", 7 + week * 7), "size": "Week"},
                    "p50": format!("{p50}.000"),
                    "p10": format!("{}.000", p50 * 8 / 10),
                    "p90": format!("{}.000", p50 * 12 / 10),
                    "uom": "EA",
                    "run": {"id": RUN_ID, "finishedAt": "2026-11-30T05:00:00.000Z"},
                }));
            }
        }
    }
    forecasts
}

/// Published proposals, in the order they were published.
#[derive(Default)]
pub struct Proposals {
    published: Mutex<Vec<Value>>,
    last_ms: Mutex<i64>,
}

/// Counts of the published proposals per expected route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PublishedCounts {
    /// All proposals.
    pub total: u64,
    /// Expected to be applied.
    pub apply: u64,
    /// Expected to be parked for review.
    pub review: u64,
    /// Expected to be escalated.
    pub escalate: u64,
    /// Expected to be dead-lettered.
    pub dead_letter: u64,
}

impl Proposals {
    /// Publishes `count` more proposals; returns how many there are now.
    pub fn publish(&self, count: u64) -> u64 {
        let mut published = lock(&self.published);
        let mut last = lock(&self.last_ms);
        for _ in 0..count {
            let ms = jiff::Timestamp::now().as_millisecond().max(*last + 1);
            *last = ms;
            let at = jiff::Timestamp::from_millisecond(ms)
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default();
            let i = published.len() as u64;
            published.push(proposal(i, &at));
        }
        published.len() as u64
    }

    /// Counts per expected route.
    pub fn counts(&self) -> PublishedCounts {
        let total = lock(&self.published).len() as u64;
        let mut counts = PublishedCounts {
            total,
            ..Default::default()
        };
        for i in 0..total {
            *match expected_route(i) {
                ExpectedRoute::Apply => &mut counts.apply,
                ExpectedRoute::Review => &mut counts.review,
                ExpectedRoute::Escalate => &mut counts.escalate,
                ExpectedRoute::DeadLetter => &mut counts.dead_letter,
            } += 1;
        }
        counts
    }

    /// Proposals updated after `since`, from `offset` on, at most `limit`; and whether more follow.
    fn page(&self, since: Option<&str>, offset: usize, limit: usize) -> (Vec<Value>, bool) {
        let published = lock(&self.published);
        let newer: Vec<&Value> = published
            .iter()
            .filter(|p| since.is_none_or(|since| p["updatedAt"].as_str() > Some(since)))
            .collect();
        let page: Vec<Value> = newer
            .iter()
            .skip(offset)
            .take(limit)
            .map(|p| (*p).clone())
            .collect();
        let more = offset + page.len() < newer.len();
        (page, more)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProposalQuery {
    limit: Option<usize>,
    updated_since: Option<String>,
    offset: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    page: Option<usize>,
    page_size: Option<usize>,
}

#[derive(Deserialize)]
struct PublishRequest {
    count: u64,
}

/// The outbound routes, merged into the forecasting simulator's router.
pub fn routes() -> Router<Arc<ForecastState>> {
    Router::new()
        .route("/v2/replenishment-proposals", get(list_proposals))
        .route("/v2/forecasts/published", get(list_forecasts))
        .route(
            "/admin/proposals",
            get(proposal_counts).post(publish_proposals),
        )
}

async fn list_proposals(
    State(state): State<Arc<ForecastState>>,
    Query(query): Query<ProposalQuery>,
) -> Json<Value> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let offset = query.offset.unwrap_or(0);
    let since = query.updated_since.as_deref();
    let (data, more) = state.proposals.page(since, offset, limit);
    let mut next = format!(
        "/v2/replenishment-proposals?limit={limit}&offset={}",
        offset + data.len()
    );
    if let Some(since) = since {
        next.push_str(&format!("&updatedSince={}", form_encode(since)));
    }
    Json(json!({"data": data, "links": {"next": more.then_some(next)}}))
}

fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn list_forecasts(Query(query): Query<PageQuery>) -> Json<Value> {
    let size = query.page_size.unwrap_or(100).clamp(1, 5000);
    let page = query.page.unwrap_or(1).max(1);
    let data: Vec<Value> = published_forecasts()
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .collect();
    Json(json!({ "data": data }))
}

async fn proposal_counts(State(state): State<Arc<ForecastState>>) -> Json<PublishedCounts> {
    Json(state.proposals.counts())
}

async fn publish_proposals(
    State(state): State<Arc<ForecastState>>,
    Json(request): Json<PublishRequest>,
) -> Json<PublishedCounts> {
    state.proposals.publish(request.count.min(10_000));
    Json(state.proposals.counts())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_every_twenty_proposals_twelve_apply_four_wait_three_escalate_one_is_unmapped() {
        let proposals = Proposals::default();
        proposals.publish(40);
        assert_eq!(
            proposals.counts(),
            PublishedCounts {
                total: 40,
                apply: 24,
                review: 8,
                escalate: 6,
                dead_letter: 2
            }
        );
        for i in 0..40 {
            let p = proposal(i, "2026-11-30T00:00:00.000Z");
            let proposed: f64 = p["quantity"]["proposed"].as_str().unwrap().parse().unwrap();
            let current: f64 = p["quantity"]["current"].as_str().unwrap().parse().unwrap();
            let delta = ((proposed - current) / current * 100.0).abs();
            let route = match expected_route(i) {
                ExpectedRoute::DeadLetter => {
                    assert_eq!(p["location"], UNKNOWN_LOCATION);
                    continue;
                }
                _ if delta < 5.0 => ExpectedRoute::Apply,
                _ if delta < 20.0 => ExpectedRoute::Review,
                _ => ExpectedRoute::Escalate,
            };
            assert_eq!(route, expected_route(i), "proposal {i}: {delta}%");
        }
    }

    #[test]
    fn pages_hold_only_proposals_after_the_cursor_each_once() {
        let proposals = Proposals::default();
        proposals.publish(5);
        let (all, more) = proposals.page(None, 0, 3);
        assert_eq!((all.len(), more), (3, true));
        let (rest, more) = proposals.page(None, 3, 3);
        assert_eq!((rest.len(), more), (2, false));
        let cursor = all[2]["updatedAt"].as_str().unwrap().to_string();
        let (after, _) = proposals.page(Some(&cursor), 0, 10);
        assert_eq!(after, rest);
        assert_eq!(published_forecasts().len(), 7 * 4 * 4);
    }
}
