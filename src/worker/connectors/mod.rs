//! Sources: read a system's records page by page. Each pass starts from a cursor (or from
//! nothing, for a full refresh) and yields pages with the cursor to resume after them.

pub mod files;
pub mod nats;
pub mod odata;
pub mod odata_batch;
pub mod odata_target;
pub mod rest;
pub mod target;

use std::sync::Arc;

use serde_json::Value;

use super::config::SourceConfig;
use super::http::{CallError, HttpClient};
use super::metrics::Metrics;
use crate::api::connector_binding::Protocol;

/// Records read in one go, and where to resume after them.
pub struct Page {
    /// Source records as the system sent them.
    pub records: Vec<Value>,
    /// Cursor after this page; None keeps the previous one.
    pub cursor: Option<String>,
}

/// A source of one flow.
pub enum Source {
    /// OData v4 entity set.
    OData(odata::ODataSource),
    /// REST JSON collection.
    Rest(rest::RestSource),
    /// NATS subject (events).
    Nats(nats::NatsSource),
    /// CSV / JSONL files in a directory.
    Files(files::FileSource),
}

impl Source {
    /// Connects to the source described by `config`.
    pub async fn open(config: &SourceConfig, metrics: Arc<Metrics>) -> anyhow::Result<Source> {
        Ok(match config.endpoint.protocol {
            Protocol::OData => Source::OData(odata::ODataSource::new(
                config.clone(),
                HttpClient::new(&config.endpoint, metrics)?,
            )),
            Protocol::Rest => Source::Rest(rest::RestSource::new(
                config.clone(),
                HttpClient::new(&config.endpoint, metrics)?,
            )),
            Protocol::Nats => Source::Nats(nats::NatsSource::connect(config).await?),
            Protocol::Files => Source::Files(files::FileSource::new(config)?),
        })
    }

    /// Starts a pass after `cursor` (None: from the beginning).
    pub fn begin(&mut self, cursor: Option<&str>) {
        match self {
            Source::OData(s) => s.begin(cursor),
            Source::Rest(s) => s.begin(cursor),
            Source::Nats(_) => {}
            Source::Files(s) => s.begin(cursor),
        }
    }

    /// The next page of the pass; None when the pass is complete.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        match self {
            Source::OData(s) => s.next_page().await,
            Source::Rest(s) => s.next_page().await,
            Source::Nats(s) => s.next_page().await,
            Source::Files(s) => s.next_page().await,
        }
    }
}

/// The largest value of `field` among `records`, compared as source versions, as text.
pub(crate) fn max_cursor(records: &[Value], field: &str) -> Option<String> {
    records
        .iter()
        .filter_map(|r| {
            let value = r.get(field)?;
            Some((super::version::version_of(value)?, value))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, value)| match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}
