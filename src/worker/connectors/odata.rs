//! OData v4 source: `$filter=<cursor> ge <value>` for incremental passes, `$select`,
//! server-driven paging by `@odata.nextLink`, and delta links when the service offers them
//! (the cursor then is `delta:<link>` and the next pass follows it).
//!
//! Links in a response may be relative (SAP CAP sends `A_SalesOrderItem?$skiptoken=100`):
//! they are resolved as OData JSON Format 4.01 section 4.3 says, against the response's
//! context URL (itself resolved against the request URL), else against the request URL;
//! never against the binding URL, which may sit above the service root.

use bytes::Bytes;
use reqwest::Url;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Page, Records, Window, raw};
use crate::api::integration_flow::{Limits, SyncMode};
use crate::worker::http::{CallError, HttpClient};
use crate::worker_config::SourceConfig;

const DELTA_PREFIX: &str = "delta:";

/// Records per page asked of the service (`Prefer: odata.maxpagesize`), at most the flow's
/// `limits.maxPageRecords`.
const PAGE_SIZE: u32 = 1000;

/// An OData collection response; the records stay JSON text (see `raw`).
#[derive(Deserialize)]
struct Collection<'a> {
    #[serde(rename = "@odata.context")]
    context: Option<String>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

/// An OData entity set.
pub struct ODataSource {
    config: SourceConfig,
    http: HttpClient,
    /// The flow's limits on pages and records.
    pub limits: Limits,
    /// The top-level fields parsed out of each record (`raw::JsonRecord`); at least the
    /// cursor field, which is all a source reads of them.
    pub envelope_fields: Vec<String>,
    next: Option<String>,
    /// The cursor reached so far in this pass.
    reached: Option<String>,
    /// Why the pass cannot go on (a link to another origin), reported on the next call.
    refused: Option<CallError>,
    /// Whether this pass reads a backfill window (no delta link asked for).
    windowed: bool,
}

impl ODataSource {
    /// A source reading `config.entity` below the endpoint URL.
    pub fn new(config: SourceConfig, http: HttpClient) -> ODataSource {
        let envelope_fields = config.cursor_field.iter().cloned().collect();
        ODataSource {
            config,
            http,
            limits: Limits::default(),
            envelope_fields,
            next: None,
            reached: None,
            refused: None,
            windowed: false,
        }
    }

    /// Starts a pass after `cursor`.
    pub fn begin(&mut self, cursor: Option<&str>) {
        self.reached = cursor.map(str::to_string);
        self.refused = None;
        self.windowed = false;
        if let Some(link) = cursor.and_then(|c| c.strip_prefix(DELTA_PREFIX)) {
            self.next = Some(link.to_string());
            return;
        }
        let incremental = self.config.sync_mode != SyncMode::FullRefresh;
        // Inclusive: the cursor is the newest change of the last page stored, and rows of
        // that same timestamp may still be on the next page when a pass ends between pages.
        // `gt` would skip them for good; `ge` reads them again and the key+version dedupe
        // (Nats-Msg-Id, the target's version check) drops the repeats.
        let filter = match (incremental, &self.config.cursor_field, cursor) {
            (true, Some(field), Some(after)) => Some(format!("{field} ge {after}")),
            _ => None,
        };
        self.next = Some(self.query(filter));
    }

    /// Starts a pass over the records whose cursor field lies in `window` (`ge` its start and
    /// `lt` its end), without a delta link: the live cursor is not this pass's business.
    pub fn begin_window(&mut self, window: &Window) {
        self.reached = None;
        self.refused = None;
        self.windowed = true;
        let filter = self
            .config
            .cursor_field
            .as_ref()
            .map(|field| format!("{field} ge {} and {field} lt {}", window.from, window.to));
        self.next = Some(self.query(filter));
    }

    /// The first request of a pass: the entity set with `$filter`, `$orderby` and `$select`.
    fn query(&self, filter: Option<String>) -> String {
        let base = format!(
            "{}/{}",
            self.config.endpoint.url.trim_end_matches('/'),
            self.config.entity
        );
        let mut params = Vec::new();
        if let Some(filter) = filter {
            params.push(format!("$filter={}", encode(&filter)));
        }
        if let Some(field) = &self.config.cursor_field {
            params.push(format!("$orderby={}", encode(field)));
        }
        if !self.config.select.is_empty() {
            let mut select = self.config.select.clone();
            if let Some(field) = &self.config.cursor_field
                && !select.contains(field)
            {
                select.push(field.clone());
            }
            params.push(format!("$select={}", encode(&select.join(","))));
        }
        if params.is_empty() {
            base
        } else {
            format!("{base}?{}", params.join("&"))
        }
    }

    /// The next page of the pass.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let track = self.config.sync_mode == SyncMode::Incremental && !self.windowed;
        // No larger than the flow takes (a larger page is refused whole).
        let page_size = PAGE_SIZE.min(self.limits.max_page_records);
        let response = self
            .http
            .send(|client| {
                let prefer = if track {
                    format!("odata.maxpagesize={page_size}, odata.track-changes")
                } else {
                    format!("odata.maxpagesize={page_size}")
                };
                client
                    .get(&url)
                    .header("accept", "application/json")
                    .header("odata-version", "4.0")
                    .header("prefer", prefer)
            })
            .await?;
        let page = split_page(self.http.read_body(response).await?, &self.limits)?;
        let records = raw::with_fields(page.records, &self.envelope_fields);
        let base = base_url(&url, page.context.as_deref());
        self.next = page
            .next_link
            .as_deref()
            .map(|link| resolve(base.as_ref(), &url, link))
            .and_then(|link| self.same_origin(link, "@odata.nextLink"));
        if let Some(field) = &self.config.cursor_field
            && let Some(max) = raw::max_cursor(&records, field)
        {
            self.reached = Some(max);
        }
        let delta = page
            .delta_link
            .as_deref()
            .filter(|_| track)
            .map(|link| resolve(base.as_ref(), &url, link))
            .and_then(|link| self.same_origin(link, "@odata.deltaLink"))
            .map(|link| format!("{DELTA_PREFIX}{link}"));
        let cursor = delta.or_else(|| self.reached.clone());
        Ok(Some(Page {
            records: Records::Json(records),
            refused: page.refused,
            cursor,
        }))
    }
}

impl ODataSource {
    /// `link` when it stays on the binding's origin; otherwise none, and the pass fails on the
    /// next call naming `what` (a link elsewhere would carry the binding's credentials there).
    fn same_origin(&mut self, link: String, what: &str) -> Option<String> {
        let checked = match Url::parse(&link) {
            Ok(url) => self.http.check_origin(&url, what),
            Err(e) => Err(CallError::Transient(format!("{what} is not a URL: {e}"))),
        };
        match checked {
            Ok(()) => Some(link),
            Err(refused) => {
                self.refused = Some(refused);
                None
            }
        }
    }
}

/// What one response body of a collection says: its records (those with a flaw set aside)
/// and its links, not yet resolved.
pub(crate) struct CollectionPage {
    pub records: Vec<Bytes>,
    pub refused: Vec<raw::Refused>,
    pub context: Option<String>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

/// Splits a collection response body into its records within `limits` (pure: the fuzz
/// target `odata_page` feeds it arbitrary bytes).
pub(crate) fn split_page(body: Bytes, limits: &Limits) -> Result<CollectionPage, CallError> {
    let checked = raw::check(body, limits.max_json_depth as usize + raw::ENVELOPE_DEPTH);
    let body = checked.body.clone();
    let no_value = || CallError::Permanent {
        status: 200,
        body: "OData response has no value array".into(),
    };
    let page: Collection = serde_json::from_slice(&body).map_err(|e| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            // Well-formed JSON of another shape: retrying will not help.
            Ok(_) => no_value(),
            Err(_) => CallError::Transient(format!("OData response is not JSON: {e}")),
        }
    })?;
    let records = page
        .value
        .ok_or_else(no_value)
        .and_then(|value| raw::elements(&body, value).map_err(|_| no_value()))?;
    let (records, refused) = raw::admit(&checked, records, limits)?;
    Ok(CollectionPage {
        records,
        refused,
        context: page.context,
        next_link: page.next_link,
        delta_link: page.delta_link,
    })
}

/// The URL a link of a response to `request` leads to (see [`resolve`]).
pub(crate) fn next_url(request: &str, context: Option<&str>, link: &str) -> String {
    resolve(base_url(request, context).as_ref(), request, link)
}

/// The base URL of a response's links (OData JSON Format 4.01 section 4.3): its context URL,
/// resolved against the request URL, or the request URL when there is none.
fn base_url(request: &str, context: Option<&str>) -> Option<Url> {
    let request = Url::parse(request).ok()?;
    match context.map(|c| request.join(c)) {
        Some(Ok(context)) => Some(context),
        _ => Some(request),
    }
}

/// A link of a response, resolved against its base (RFC 3986 section 5.2): absolute links
/// stay as they are; `Set?$skiptoken=1` replaces the last segment of the base's path.
fn resolve(base: Option<&Url>, request: &str, link: &str) -> String {
    match base.map(|b| b.join(link)) {
        Some(Ok(url)) => url.into(),
        // The request URL was not a URL we could parse (it was sent, so this is unlikely):
        // an absolute link still works, a relative one is tried next to the request.
        _ if link.contains("://") => link.to_string(),
        _ => format!(
            "{}/{}",
            request.rsplit_once('/').map_or(request, |(dir, _)| dir),
            link
        ),
    }
}

/// What a query value keeps unescaped: RFC 3986 unreserved characters and `$`. Everything
/// else (spaces, commas, colons, quotes, `&`, `=`, `#`) is escaped, so no field name or cursor
/// value leaves its query parameter, whatever admission let through.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$');

/// Percent-encodes a query value (spaces, commas and colons included).
pub(crate) fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links_resolve_against_the_context_url_not_the_binding() {
        let service = "http://erp/sap/opu/odata4/sap/api_salesorder/srvd_a2x/sap/salesorder/0001";
        let request = format!("{service}/A_SalesOrderItem?$filter=x%20ge%201&$orderby=x");
        // CAP: a context URL relative to the request, a link relative to the context URL.
        assert_eq!(
            next_url(
                &request,
                Some("$metadata#A_SalesOrderItem"),
                "A_SalesOrderItem?$skiptoken=500"
            ),
            format!("{service}/A_SalesOrderItem?$skiptoken=500")
        );
        // No context URL: against the request URL.
        assert_eq!(
            next_url(&request, None, "A_SalesOrderItem?$skiptoken=500"),
            format!("{service}/A_SalesOrderItem?$skiptoken=500")
        );
        // An absolute context URL elsewhere, an absolute-path link, an absolute link.
        assert_eq!(
            next_url(
                &request,
                Some("https://gw/svc/$metadata#Set"),
                "Set?$deltatoken=7"
            ),
            "https://gw/svc/Set?$deltatoken=7"
        );
        assert_eq!(
            next_url(&request, None, "/other/Set?$skiptoken=1"),
            "http://erp/other/Set?$skiptoken=1"
        );
        assert_eq!(
            next_url(&request, Some("$metadata#X"), "https://b/S?$skiptoken=2"),
            "https://b/S?$skiptoken=2"
        );
    }

    #[test]
    fn a_hostile_field_or_value_stays_inside_its_query_parameter() {
        assert_eq!(
            encode("Date ge 1 or true&$top=1#x,y'z\r\n"),
            "Date%20ge%201%20or%20true%26$top%3D1%23x%2Cy%27z%0D%0A"
        );
        assert_eq!(encode("Zürich"), "Z%C3%BCrich");
    }
}
