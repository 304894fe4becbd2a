//! REST JSON source: `GET <url>/<entity>?limit=N[&since=<cursor>]`, answered with an array or
//! with `{"items"|"data"|"value": [...], "next"|"nextCursor": token-or-url}`; a token is sent
//! back as `cursor=<token>`.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::odata::encode;
use super::{Page, Records, raw};
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
    next: Option<String>,
    reached: Option<String>,
}

impl RestSource {
    /// A source reading `config.entity` below the endpoint URL.
    pub fn new(config: SourceConfig, http: HttpClient) -> RestSource {
        RestSource {
            config,
            http,
            limits: Limits::default(),
            next: None,
            reached: None,
        }
    }

    fn base(&self) -> String {
        format!(
            "{}/{}",
            self.config.endpoint.url.trim_end_matches('/'),
            self.config.entity.trim_start_matches('/')
        )
    }

    /// Starts a pass after `cursor`.
    pub fn begin(&mut self, cursor: Option<&str>) {
        self.reached = cursor.map(str::to_string);
        let mut url = format!("{}?limit={PAGE_SIZE}", self.base());
        if let (SyncMode::Incremental, Some(after)) = (self.config.sync_mode, cursor) {
            url.push_str(&format!("&since={}", encode(after)));
        }
        self.next = Some(url);
    }

    /// The next page of the pass.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let response = self
            .http
            .send(|client| client.get(&url).header("accept", "application/json"))
            .await?;
        let checked = raw::check(
            self.http.read_body(response).await?,
            self.limits.max_json_depth as usize + raw::ENVELOPE_DEPTH,
        );
        let body = checked.body.clone();
        let (records, next) = split_page(&body)
            .map_err(|e| CallError::Transient(format!("REST response is not JSON: {e}")))?;
        let (records, refused) = raw::admit(&checked, records, &self.limits)?;
        self.next = next.filter(|_| !records.is_empty()).map(|next| {
            if next.starts_with("http://") || next.starts_with("https://") {
                next
            } else {
                format!("{}?limit={PAGE_SIZE}&cursor={}", self.base(), encode(&next))
            }
        });
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

/// A page's records (each one's JSON text) and its next token or URL: the body is an array
/// of records or an object with them under `items`, `data` or `value`, and the next page
/// under `next`, `nextCursor` or `nextLink`. Anything else is an empty last page.
fn split_page(body: &Bytes) -> serde_json::Result<(Vec<Bytes>, Option<String>)> {
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
}
