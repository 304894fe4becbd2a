//! REST JSON source. With the flow's (or binding's) `rest` paging settings: `GET
//! <url>/<entity>?<limitParam>=N[&<sinceParam>=<cursor>]`, the records at a JSON pointer of the
//! body, and the next page by a next-link field, a cursor parameter, a page number or offset,
//! or an RFC 8288 `Link: <...>; rel="next"` header. Next links may be relative: they are
//! resolved against the URL of the request that returned them (RFC 3986 section 5), and one
//! that leads off the binding's origin is not followed (the pass fails, naming the host), so
//! the binding's credentials never go elsewhere.
//!
//! Without settings (and for a `worker.json` of an earlier release): `?limit=500[&since=..]`,
//! answered with an array or with `{"items"|"data"|"value": [...], "next"|"nextCursor"|
//! "nextLink": token-or-url}`; a token is sent back as `cursor=<token>`.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::odata::encode;
use super::{Page, Records, Window, raw};
use crate::api::connector_binding::{Pagination, RestRead};
use crate::api::integration_flow::{Limits, SyncMode};
use crate::worker::http::{CallError, HttpClient};
use crate::worker_config::SourceConfig;

const PAGE_SIZE: u32 = 500;

/// A REST collection.
pub struct RestSource {
    config: SourceConfig,
    http: HttpClient,
    /// The flow's limits on pages and records.
    pub limits: Limits,
    /// The top-level fields parsed out of each record (`raw::JsonRecord`); at least the
    /// cursor field, which is all a source reads of them.
    pub envelope_fields: Vec<String>,
    next: Option<String>,
    reached: Option<String>,
    /// The pass's first request (Cursor, Page and Offset pages are made from it).
    first: Option<reqwest::Url>,
    /// Page number or offset of the next request (Page, Offset).
    position: u64,
    /// The most records a page of this pass had (Page, Offset).
    largest: u64,
    /// Why the pass cannot go on (a next link to another origin), reported on the next call.
    refused: Option<CallError>,
}

impl RestSource {
    /// A source reading `config.entity` below the endpoint URL.
    pub fn new(config: SourceConfig, http: HttpClient) -> RestSource {
        let envelope_fields = config.cursor_field.iter().cloned().collect();
        RestSource {
            config,
            http,
            limits: Limits::default(),
            envelope_fields,
            next: None,
            reached: None,
            first: None,
            position: 0,
            largest: 0,
            refused: None,
        }
    }

    fn base(&self) -> String {
        format!(
            "{}/{}",
            self.config.endpoint.url.trim_end_matches('/'),
            self.config.entity.trim_start_matches('/')
        )
    }

    /// The page size to ask for: `wanted`, at most the flow's `limits.maxPageRecords` (a
    /// larger page is refused whole).
    fn page_size(&self, wanted: u32) -> u32 {
        wanted.min(self.limits.max_page_records)
    }

    /// Starts a pass after `cursor`.
    pub fn begin(&mut self, cursor: Option<&str>) {
        self.reached = cursor.map(str::to_string);
        let since = match (self.config.sync_mode, cursor) {
            (SyncMode::Incremental, Some(after)) => Some(after),
            _ => None,
        };
        self.start(since, None);
    }

    /// Starts a pass over the records changed in `window`: its start in the since parameter,
    /// its end (exclusive) in the until parameter.
    pub fn begin_window(&mut self, window: &Window) {
        self.reached = None;
        self.start(Some(&window.from), Some(&window.to));
    }

    fn start(&mut self, since: Option<&str>, until: Option<&str>) {
        self.refused = None;
        let Some(read) = self.config.rest.clone() else {
            let mut url = format!("{}?limit={}", self.base(), self.page_size(PAGE_SIZE));
            if let Some(after) = since {
                url.push_str(&format!("&since={}", encode(after)));
            }
            if let Some(before) = until {
                url.push_str(&format!("&until={}", encode(before)));
            }
            self.next = Some(url);
            return;
        };
        let Ok(mut url) = reqwest::Url::parse(&self.base()) else {
            self.next = None;
            self.refused = Some(CallError::Transient(format!(
                "REST source entity {:?} does not make a URL below the binding",
                self.config.entity
            )));
            return;
        };
        if read.pagination != Pagination::None {
            url.query_pairs_mut().append_pair(
                &read.limit_param,
                &self.page_size(read.page_size).to_string(),
            );
        }
        if let Some(after) = since {
            url.query_pairs_mut().append_pair(&read.since_param, after);
        }
        if let Some(before) = until {
            url.query_pairs_mut().append_pair(&read.until_param, before);
        }
        self.first = Some(url.clone());
        self.largest = 0;
        self.position = match read.pagination {
            Pagination::Page => u64::from(read.first_page),
            _ => 0,
        };
        self.next = Some(page_url(&read, &url, self.position, None).to_string());
    }

    /// The next page of the pass.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let response = self
            .http
            .send(|client| client.get(&url).header("accept", "application/json"))
            .await?;
        let request_url = response.url().clone();
        let link_next = next_from_link_headers(response.headers());
        let checked = raw::check(
            self.http.read_body(response).await?,
            self.limits.max_json_depth as usize + raw::ENVELOPE_DEPTH,
        );
        let body = checked.body.clone();
        let records = match self.config.rest.clone() {
            None => {
                let (records, next) = split_page(&body)
                    .map_err(|e| CallError::Transient(format!("REST response is not JSON: {e}")))?;
                self.next = match next.filter(|_| !records.is_empty()) {
                    None => None,
                    Some(next) if next.starts_with("http://") || next.starts_with("https://") => {
                        self.follow(&request_url, &next)
                    }
                    Some(next) => Some(format!(
                        "{}?limit={}&cursor={}",
                        self.base(),
                        self.page_size(PAGE_SIZE),
                        encode(&next)
                    )),
                };
                records
            }
            Some(read) => {
                let page = read_page(&read, &body).map_err(|e| {
                    CallError::Transient(format!("REST response is not the configured JSON: {e}"))
                })?;
                let count = page.records.len() as u64;
                let next = match read.pagination {
                    Pagination::None => None,
                    _ if count == 0 => None,
                    Pagination::NextLink => page.next.map(|link| (link, true)),
                    Pagination::LinkHeader => link_next.map(|link| (link, true)),
                    Pagination::Cursor => page.next.map(|cursor| (cursor, false)),
                    Pagination::Page | Pagination::Offset => {
                        // Not "fewer than pageSize": APIs cap the page size silently (asked
                        // for 500, they send 100), and that rule would end the pass after the
                        // first page. A page smaller than an earlier one is the last.
                        let last = count < self.largest;
                        self.largest = self.largest.max(count);
                        if last {
                            None
                        } else {
                            self.position += match read.pagination {
                                Pagination::Page => 1,
                                _ => count,
                            };
                            Some((String::new(), false))
                        }
                    }
                };
                self.next = match next {
                    None => None,
                    Some((link, true)) => self.follow(&request_url, &link),
                    Some((cursor, false)) => self.first.as_ref().map(|first| {
                        let cursor = Some(cursor.as_str()).filter(|c| !c.is_empty());
                        page_url(&read, first, self.position, cursor).to_string()
                    }),
                };
                page.records
            }
        };
        let (records, refused) = raw::admit(&checked, records, &self.limits)?;
        let records = raw::with_fields(records, &self.envelope_fields);
        if let Some(field) = &self.config.cursor_field
            && let Some(max) = raw::max_cursor(&records, field)
        {
            self.reached = Some(max);
        }
        Ok(Some(Page {
            records: Records::Json(records),
            refused,
            cursor: self.reached.clone(),
        }))
    }
}

impl RestSource {
    /// The next page's URL from a link in the response (resolved against the request URL),
    /// when it stays on the binding's origin and leads somewhere new; otherwise the pass ends
    /// here, with the refusal reported on the next call.
    fn follow(&mut self, request_url: &reqwest::Url, link: &str) -> Option<String> {
        match request_url.join(link) {
            Ok(next) => match self.http.check_origin(&next, "the next page's link") {
                Err(refused) => {
                    self.refused = Some(refused);
                    None
                }
                Ok(()) if next == *request_url => None,
                Ok(()) => Some(next.to_string()),
            },
            Err(e) => {
                self.refused = Some(CallError::Transient(format!(
                    "the next page's link is not a URL: {e}"
                )));
                None
            }
        }
    }
}

/// The request for page `position` (Page, Offset) or after `cursor` (Cursor) of a pass whose
/// first request is `first`.
fn page_url(
    read: &RestRead,
    first: &reqwest::Url,
    position: u64,
    cursor: Option<&str>,
) -> reqwest::Url {
    let mut url = first.clone();
    match read.pagination {
        Pagination::Page => {
            url.query_pairs_mut()
                .append_pair(&read.page_param, &position.to_string());
        }
        Pagination::Offset => {
            url.query_pairs_mut()
                .append_pair(&read.offset_param, &position.to_string());
        }
        Pagination::Cursor => {
            if let Some(cursor) = cursor {
                url.query_pairs_mut()
                    .append_pair(&read.cursor_param, cursor);
            }
        }
        _ => {}
    }
    url
}

/// A page read with configured settings: its records and the next link or cursor in the body.
pub(crate) struct ConfiguredPage {
    pub records: Vec<Bytes>,
    pub next: Option<String>,
}

pub(crate) fn read_page(read: &RestRead, body: &Bytes) -> Result<ConfiguredPage, String> {
    let top: &RawValue = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let records = match pointer(top, &read.records) {
        Some(array) if array.get().starts_with('[') => {
            raw::elements(body, array).map_err(|e| e.to_string())?
        }
        Some(_) => return Err(format!("{:?} is not an array", read.records)),
        // A last page may leave the records out altogether.
        None => Vec::new(),
    };
    let field = match read.pagination {
        Pagination::NextLink => read.next_link.as_deref(),
        Pagination::Cursor => read.next_cursor.as_deref(),
        _ => None,
    };
    let next = field
        .and_then(|field| pointer(top, field))
        .and_then(
            |value| match serde_json::from_str::<serde_json::Value>(value.get()).ok()? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
        );
    Ok(ConfiguredPage { records, next })
}

/// The value at a JSON pointer (RFC 6901) of `value`, left as JSON text.
fn pointer<'a>(value: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(value);
    }
    let mut current = value;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let text = current.get().trim_start();
        current = if text.starts_with('{') {
            let object: HashMap<String, &'a RawValue> = serde_json::from_str(current.get()).ok()?;
            object.get(&token).copied()?
        } else if text.starts_with('[') {
            let array: Vec<&'a RawValue> = serde_json::from_str(current.get()).ok()?;
            array.get(token.parse::<usize>().ok()?).copied()?
        } else {
            return None;
        };
    }
    (current.get() != "null").then_some(current)
}

/// The target of the first `rel="next"` link in the response's `Link` headers (RFC 8288), as
/// written (possibly relative).
fn next_from_link_headers(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse_link_header)
        .find(|(_, rels)| rels.iter().any(|rel| rel.eq_ignore_ascii_case("next")))
        .map(|(target, _)| target)
}

/// The links of one `Link` field value: each target with its relation types. Written here
/// rather than taken from `parse_link_header` (0.4): that crate splits the field at every comma
/// (a URI may contain commas) and removes all whitespace, so `rel="next last"` (RFC 8288 3.3)
/// becomes one relation "nextlast".
pub(crate) fn parse_link_header(value: &str) -> Vec<(String, Vec<String>)> {
    let mut links = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some(after) = rest.strip_prefix('<') else {
            return links;
        };
        let Some(end) = after.find('>') else {
            return links;
        };
        let target = after[..end].trim().to_string();
        rest = &after[end + 1..];
        let mut rels = Vec::new();
        // Parameters: `; name=token` or `; name="quoted \"string\""`, up to the next link.
        loop {
            rest = rest.trim_start();
            let Some(after) = rest.strip_prefix(';') else {
                break;
            };
            let after = after.trim_start();
            let name_end = after
                .find(|c: char| c == '=' || c == ';' || c == ',' || c.is_whitespace())
                .unwrap_or(after.len());
            let name = &after[..name_end];
            rest = after[name_end..].trim_start();
            let mut param = String::new();
            if let Some(after) = rest.strip_prefix('=') {
                let after = after.trim_start();
                if let Some(quoted) = after.strip_prefix('"') {
                    let mut chars = quoted.char_indices();
                    let mut end = quoted.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, escaped)) = chars.next() {
                                    param.push(escaped);
                                }
                            }
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            c => param.push(c),
                        }
                    }
                    rest = &quoted[end.min(quoted.len())..];
                } else {
                    let end = after
                        .find(|c: char| c == ';' || c == ',' || c.is_whitespace())
                        .unwrap_or(after.len());
                    param.push_str(&after[..end]);
                    rest = &after[end..];
                }
            }
            if name.eq_ignore_ascii_case("rel") && rels.is_empty() {
                rels = param.split_whitespace().map(str::to_string).collect();
            }
        }
        links.push((target, rels));
    }
}

/// A page's records (each one's JSON text) and its next token or URL: the body is an array
/// of records or an object with them under `items`, `data` or `value`, and the next page
/// under `next`, `nextCursor` or `nextLink`. Anything else is an empty last page.
pub(crate) fn split_page(body: &Bytes) -> serde_json::Result<(Vec<Bytes>, Option<String>)> {
    let top: &RawValue = serde_json::from_slice(body)?;
    let is_array = |v: &RawValue| v.get().starts_with('[');
    if is_array(top) {
        return Ok((raw::elements(body, top)?, None));
    }
    if !top.get().starts_with('{') {
        return Ok((Vec::new(), None));
    }
    let object: HashMap<String, &RawValue> = serde_json::from_str(top.get())?;
    let records = match ["items", "data", "value"]
        .iter()
        .find_map(|k| object.get(*k).copied().filter(|v| is_array(v)))
    {
        Some(array) => raw::elements(body, array)?,
        None => Vec::new(),
    };
    let next = ["next", "nextCursor", "nextLink"].iter().find_map(|k| {
        object
            .get(*k)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    });
    Ok((records, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(body: &'static str) -> (Vec<String>, Option<String>) {
        let (records, next) = split_page(&Bytes::from(body)).unwrap();
        let records = records
            .iter()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
            .collect();
        (records, next)
    }

    #[test]
    fn pages_come_as_arrays_or_wrapped() {
        assert_eq!(
            split(r#" [{"a":1}, {"a":2}] "#).0,
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        assert_eq!(
            split(r#"{"data": {"not": "an array"}, "items": [{"a":1}], "nextCursor": "c2"}"#),
            (vec![r#"{"a":1}"#.to_string()], Some("c2".to_string()))
        );
        assert_eq!(
            split(r#"{"value": [], "next": 5, "nextLink": "http://x/p2"}"#),
            (vec![], Some("http://x/p2".to_string()))
        );
        assert_eq!(split(r#""text""#), (vec![], None));
        assert!(split_page(&Bytes::from_static(b"{oops")).is_err());
    }

    #[test]
    fn link_headers_are_read_as_rfc_8288_writes_them() {
        let links = parse_link_header(
            r#"<https://api.test/items?page=1&fields=a,b>; rel="first", </items?page=3&fields=a,b>; title="p; 3, \"x\""; rel="next last", <page9>;rel=prev"#,
        );
        assert_eq!(
            links,
            vec![
                (
                    "https://api.test/items?page=1&fields=a,b".to_string(),
                    vec!["first".to_string()]
                ),
                (
                    "/items?page=3&fields=a,b".to_string(),
                    vec!["next".to_string(), "last".to_string()]
                ),
                ("page9".to_string(), vec!["prev".to_string()]),
            ]
        );
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append("link", r#"<p1>; rel="prev""#.parse().unwrap());
        headers.append("link", r#"<p3>; rel="NEXT""#.parse().unwrap());
        assert_eq!(next_from_link_headers(&headers).as_deref(), Some("p3"));
        assert_eq!(parse_link_header("garbage"), vec![]);
    }

    fn read(pagination: Pagination, records: &str) -> RestRead {
        serde_json::from_value(serde_json::json!({
            "pagination": pagination,
            "records": records,
            "nextLink": "/links/next",
            "nextCursor": "/meta/next~1cursor",
        }))
        .unwrap()
    }

    #[test]
    fn records_and_next_are_found_by_json_pointer() {
        let body = Bytes::from_static(
            br#"{"data": {"rows": [{"a":1},{"a":2}]}, "links": {"next": "?page=2"}, "meta": {"next/cursor": 17}}"#,
        );
        let page = read_page(&read(Pagination::NextLink, "/data/rows"), &body).unwrap();
        assert_eq!(page.records.len(), 2);
        assert_eq!(&page.records[1][..], br#"{"a":2}"#);
        assert_eq!(page.next.as_deref(), Some("?page=2"));
        let page = read_page(&read(Pagination::Cursor, "/data/rows"), &body).unwrap();
        assert_eq!(page.next.as_deref(), Some("17"));
        let last = Bytes::from_static(br#"{"data": {"rows": []}, "links": {"next": null}}"#);
        let page = read_page(&read(Pagination::NextLink, "/data/rows"), &last).unwrap();
        assert_eq!((page.records.len(), page.next), (0, None));
        let array = Bytes::from_static(br#"[{"a":1}]"#);
        assert_eq!(
            read_page(&read(Pagination::Page, ""), &array)
                .unwrap()
                .records
                .len(),
            1
        );
        assert!(read_page(&read(Pagination::Page, "/data"), &body).is_err());
    }

    #[test]
    fn pages_and_offsets_are_query_parameters_of_the_first_request() {
        let first = reqwest::Url::parse("http://api.test/v1/items?sort=id&limit=100").unwrap();
        let mut settings = read(Pagination::Page, "");
        assert_eq!(
            page_url(&settings, &first, 3, None).as_str(),
            "http://api.test/v1/items?sort=id&limit=100&page=3"
        );
        settings.pagination = Pagination::Offset;
        settings.offset_param = "_start".into();
        assert_eq!(
            page_url(&settings, &first, 200, None).as_str(),
            "http://api.test/v1/items?sort=id&limit=100&_start=200"
        );
        settings.pagination = Pagination::Cursor;
        assert_eq!(
            page_url(&settings, &first, 0, Some("a b&c")).as_str(),
            "http://api.test/v1/items?sort=id&limit=100&cursor=a+b%26c"
        );
    }
}
