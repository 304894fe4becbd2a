//! OData v4 source: `$filter=<cursor> gt <value>` for incremental passes, `$select`,
//! server-driven paging by `@odata.nextLink`, and delta links when the service offers them
//! (the cursor then is `delta:<link>` and the next pass follows it).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Page, Records, raw};
use crate::api::integration_flow::SyncMode;
use crate::worker::http::{CallError, HttpClient};
use crate::worker_config::SourceConfig;

const DELTA_PREFIX: &str = "delta:";

/// An OData collection response; the records stay JSON text (see `raw`).
#[derive(Deserialize)]
struct Collection<'a> {
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
    next: Option<String>,
    /// The cursor reached so far in this pass.
    reached: Option<String>,
}

impl ODataSource {
    /// A source reading `config.entity` below the endpoint URL.
    pub fn new(config: SourceConfig, http: HttpClient) -> ODataSource {
        ODataSource {
            config,
            http,
            next: None,
            reached: None,
        }
    }

    /// Starts a pass after `cursor`.
    pub fn begin(&mut self, cursor: Option<&str>) {
        self.reached = cursor.map(str::to_string);
        if let Some(link) = cursor.and_then(|c| c.strip_prefix(DELTA_PREFIX)) {
            self.next = Some(link.to_string());
            return;
        }
        let base = format!(
            "{}/{}",
            self.config.endpoint.url.trim_end_matches('/'),
            self.config.entity
        );
        let mut params = Vec::new();
        let incremental = self.config.sync_mode != SyncMode::FullRefresh;
        if let (true, Some(field), Some(after)) = (incremental, &self.config.cursor_field, cursor) {
            params.push(format!(
                "$filter={}",
                encode(&format!("{field} gt {after}"))
            ));
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
        self.next = Some(if params.is_empty() {
            base
        } else {
            format!("{base}?{}", params.join("&"))
        });
    }

    /// The next page of the pass.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let track = self.config.sync_mode == SyncMode::Incremental;
        let response = self
            .http
            .send(|client| {
                let prefer = if track {
                    "odata.maxpagesize=1000, odata.track-changes"
                } else {
                    "odata.maxpagesize=1000"
                };
                client
                    .get(&url)
                    .header("accept", "application/json")
                    .header("odata-version", "4.0")
                    .header("prefer", prefer)
            })
            .await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Transient(format!("reading the OData response: {e}")))?;
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
        self.next = page.next_link.as_deref().map(|link| self.absolute(link));
        if let Some(field) = &self.config.cursor_field
            && let Some(max) = raw::max_cursor(&records, field)
        {
            self.reached = Some(max);
        }
        let delta = page
            .delta_link
            .as_deref()
            .filter(|_| track)
            .map(|link| format!("{DELTA_PREFIX}{}", self.absolute(link)));
        let cursor = delta.or_else(|| self.reached.clone());
        Ok(Some(Page {
            records: Records::Json(records),
            cursor,
        }))
    }

    fn absolute(&self, link: &str) -> String {
        if link.starts_with("http://") || link.starts_with("https://") {
            link.to_string()
        } else {
            format!(
                "{}/{}",
                self.config.endpoint.url.trim_end_matches('/'),
                link.trim_start_matches('/')
            )
        }
    }
}

/// Percent-encodes a query value (spaces, commas and colons included).
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'$' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
