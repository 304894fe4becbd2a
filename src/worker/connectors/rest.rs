//! REST JSON source: `GET <url>/<entity>?limit=N[&since=<cursor>]`, answered with an array or
//! with `{"items"|"data"|"value": [...], "next"|"nextCursor": token-or-url}`; a token is sent
//! back as `cursor=<token>`.

use serde_json::Value;

use super::odata::encode;
use super::{Page, max_cursor};
use crate::api::integration_flow::SyncMode;
use crate::worker::config::SourceConfig;
use crate::worker::http::{CallError, HttpClient};

const PAGE_SIZE: u32 = 500;

/// A REST collection.
pub struct RestSource {
    config: SourceConfig,
    http: HttpClient,
    next: Option<String>,
    reached: Option<String>,
}

impl RestSource {
    /// A source reading `config.entity` below the endpoint URL.
    pub fn new(config: SourceConfig, http: HttpClient) -> RestSource {
        RestSource {
            config,
            http,
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
        let body: Value = response
            .json()
            .await
            .map_err(|e| CallError::Transient(format!("REST response is not JSON: {e}")))?;
        let (records, next) = match body {
            Value::Array(records) => (records, None),
            Value::Object(mut object) => {
                let records = ["items", "data", "value"]
                    .iter()
                    .find_map(|k| match object.remove(*k) {
                        Some(Value::Array(records)) => Some(records),
                        _ => None,
                    })
                    .unwrap_or_default();
                let next = ["next", "nextCursor", "nextLink"]
                    .iter()
                    .find_map(|k| object.get(*k).and_then(Value::as_str).map(str::to_string));
                (records, next)
            }
            _ => (Vec::new(), None),
        };
        self.next = next.filter(|_| !records.is_empty()).map(|next| {
            if next.starts_with("http://") || next.starts_with("https://") {
                next
            } else {
                format!("{}?limit={PAGE_SIZE}&cursor={}", self.base(), encode(&next))
            }
        });
        if let Some(field) = &self.config.cursor_field
            && let Some(max) = max_cursor(&records, field)
        {
            self.reached = Some(max);
        }
        Ok(Some(Page {
            records,
            cursor: self.reached.clone(),
        }))
    }
}
