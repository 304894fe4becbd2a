//! Sources: read a system's records page by page. Each pass starts from a cursor (or from
//! nothing, for a full refresh) and yields pages with the cursor to resume after them.

pub mod drops;
pub mod files;
pub mod files_target;
pub mod nats;
pub mod odata;
pub mod odata_batch;
pub mod odata_target;
pub mod raw;
pub mod rest;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::http::{CallError, HttpClient};
use super::metrics::Metrics;
use super::quota::SharedQuota;
use crate::api::connector_binding::Protocol;
use crate::api::integration_flow::Limits;
use crate::queue::QueueNames;
use crate::worker_config::SourceConfig;

/// Records read in one go, and where to resume after them.
pub struct Page {
    /// Source records as the system sent them.
    pub records: Records,
    /// Cursor after this page; None keeps the previous one.
    pub cursor: Option<String>,
    /// Records of the page that cannot be published (invalid UTF-8, nested too deep), to be
    /// dead-lettered at extraction.
    pub refused: Vec<raw::Refused>,
}

/// A page's records.
pub enum Records {
    /// Parsed records (files).
    Values(Vec<Value>),
    /// Each record's JSON text, as the system sent it (HTTP sources: slices of the response
    /// body, published as they are, see `raw`), with the fields extraction reads of it.
    Json(Vec<raw::JsonRecord>),
    /// Events fetched from the capture stream, each acked once the flow's stream stored it.
    Events(Vec<async_nats::jetstream::Message>),
}

impl Records {
    /// Records in the page.
    pub fn len(&self) -> usize {
        match self {
            Records::Values(v) => v.len(),
            Records::Json(j) => j.len(),
            Records::Events(e) => e.len(),
        }
    }

    /// Whether the page has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<Value>> for Records {
    fn from(records: Vec<Value>) -> Records {
        Records::Values(records)
    }
}

/// A backfill window of the cursor field: from (inclusive) to (exclusive), RFC 3339.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start, inclusive.
    pub from: String,
    /// End, exclusive.
    pub to: String,
}

/// A source of one flow.
pub enum Source {
    /// OData v4 entity set.
    OData(odata::ODataSource),
    /// REST JSON collection.
    Rest(rest::RestSource),
    /// NATS subject (events), through its capture stream (boxed: a consumer carries its
    /// whole configuration).
    Nats(Box<nats::NatsSource>),
    /// CSV / JSONL files in a directory.
    Files(files::FileSource),
}

impl Source {
    /// Connects to the source described by `config`. An event source captures its subject
    /// for the flow `names`, keeping events at most `retention`; on the platform's own NATS
    /// server (`platform`) it connects as the flow's user. An HTTP source takes its requests
    /// from `quota`, the binding's shared quota, when it has one.
    pub async fn open(
        config: &SourceConfig,
        names: &QueueNames,
        platform: &crate::queue::identity::NatsAccess,
        retention: Duration,
        metrics: Arc<Metrics>,
        limits: &Limits,
        quota: Option<Arc<SharedQuota>>,
    ) -> anyhow::Result<Source> {
        let http = |metrics| -> anyhow::Result<HttpClient> {
            let http = HttpClient::new(&config.endpoint, metrics)?;
            http.limit_bodies(limits.max_response_bytes as usize);
            if let Some(quota) = quota.clone() {
                http.share_quota(quota);
            }
            Ok(http)
        };
        Ok(match config.endpoint.protocol {
            Protocol::OData => {
                let mut source = odata::ODataSource::new(config.clone(), http(metrics)?);
                source.limits = limits.clone();
                Source::OData(source)
            }
            Protocol::Rest => {
                let mut source = rest::RestSource::new(config.clone(), http(metrics)?);
                source.limits = limits.clone();
                Source::Rest(source)
            }
            Protocol::Nats => Source::Nats(Box::new(
                nats::NatsSource::connect(config, names, platform, retention).await?,
            )),
            Protocol::Files => Source::Files(files::FileSource::new(config)?),
        })
    }

    /// The top-level fields an HTTP source parses out of each record for extraction
    /// (`raw::JsonRecord`), besides its cursor field; other sources hand over whole records.
    pub fn with_envelope_fields(mut self, fields: Vec<String>) -> Source {
        let wanted = match &mut self {
            Source::OData(s) => &mut s.envelope_fields,
            Source::Rest(s) => &mut s.envelope_fields,
            Source::Nats(_) | Source::Files(_) => return self,
        };
        for field in fields {
            if !wanted.contains(&field) {
                wanted.push(field);
            }
        }
        self
    }

    /// Starts a pass after `cursor` (None: from the beginning).
    pub fn begin(&mut self, cursor: Option<&str>) {
        match self {
            Source::OData(s) => s.begin(cursor),
            Source::Rest(s) => s.begin(cursor),
            Source::Nats(s) => s.begin(),
            Source::Files(s) => s.begin(cursor),
        }
    }

    /// Starts a pass over the records whose cursor field lies in `window`, leaving the live
    /// cursor alone (OData `$filter`, REST `sinceParam`/`untilParam`); other sources cannot
    /// read a window.
    pub fn begin_window(&mut self, window: &Window) -> anyhow::Result<()> {
        match self {
            Source::OData(s) => s.begin_window(window),
            Source::Rest(s) => s.begin_window(window),
            Source::Nats(_) | Source::Files(_) => {
                anyhow::bail!("this source cannot read a backfill window: OData and REST can")
            }
        }
        Ok(())
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
