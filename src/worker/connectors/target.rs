//! The target: an OData v4 entity set (see [`super::odata_target`]) or a REST bulk upsert (`POST <url>/api/v1/<entity>/bulk-upsert` with `{"key":
//! [...], "records": [{"version": n, "data": {...}}]}`). Every record carries its source
//! version; the target applies it only when it is newer than what it holds, so redelivered or
//! reordered batches never overwrite a newer value. Per-record refusals come back in
//! `rejected: [{index, reason}]`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::odata_target::ODataTarget;
use crate::api::connector_binding::Protocol;
use crate::worker::http::{CallError, HttpClient};
use crate::worker::metrics::Metrics;
use crate::worker_config::TargetConfig;

/// One record ready to send: its version and its canonical JSON.
pub struct Outgoing<'a> {
    /// Source version.
    pub version: u64,
    /// The mapped record (a JSON object).
    pub data: &'a [u8],
}

/// What the target said about a batch.
#[derive(Deserialize, Default, Debug)]
pub struct BatchOutcome {
    /// Records refused, by index, with the target's reason.
    #[serde(default)]
    pub rejected: Vec<RejectedRecord>,
    /// Records the target could not take now (429, 5xx of one request of a batch): retried.
    #[serde(skip)]
    pub retry: Vec<RetriedRecord>,
}

/// A record to send again later.
#[derive(Debug)]
pub struct RetriedRecord {
    /// Index in the batch.
    pub index: usize,
    /// What the target said.
    pub reason: String,
    /// The target's `Retry-After`, if it sent one.
    pub after: Option<std::time::Duration>,
}

/// A record the target refused.
#[derive(Deserialize, Debug)]
pub struct RejectedRecord {
    /// Index in the batch.
    pub index: usize,
    /// The target's reason.
    pub reason: String,
}

/// A flow's target.
pub struct Target {
    /// The binding's client (its breaker tells the consume loop to stop fetching).
    pub http: HttpClient,
    wire: Wire,
}

enum Wire {
    /// REST bulk upsert.
    Rest { url: String, key_prefix: Bytes },
    /// OData v4 entity set.
    OData(ODataTarget),
}

impl Target {
    /// The target of `config`, upserting by `key`.
    pub fn new(
        config: &TargetConfig,
        key: &[String],
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Target> {
        let http = HttpClient::new(&config.endpoint, metrics)?;
        match config.endpoint.protocol {
            Protocol::Rest => {}
            Protocol::OData => {
                return Ok(Target {
                    http,
                    wire: Wire::OData(ODataTarget::new(
                        &config.endpoint.url,
                        &config.entity,
                        key,
                        config.write_mode,
                    )),
                });
            }
            other => anyhow::bail!(
                "target protocol {other:?} is not supported: targets are OData v4 entity sets or REST bulk-upsert APIs"
            ),
        }
        let url = format!(
            "{}/api/v1/{}/bulk-upsert",
            config.endpoint.url.trim_end_matches('/'),
            config.entity
        );
        let mut prefix = br#"{"key":"#.to_vec();
        serde_json::to_writer(&mut prefix, key)?;
        prefix.extend_from_slice(br#","records":["#);
        Ok(Target {
            http,
            wire: Wire::Rest {
                url,
                key_prefix: Bytes::from(prefix),
            },
        })
    }

    /// Orders writes by the source version the target stores in `field` (OData targets; a
    /// REST bulk upsert gets the version with every record and decides itself).
    pub fn order_by(&mut self, field: Option<String>) {
        if let Wire::OData(odata) = &mut self.wire {
            odata.order_by(field);
        }
    }

    /// Sends one batch (with the binding's retries). `Permanent` means the whole request was
    /// refused (4xx); per-record refusals and retries are in the outcome.
    pub async fn deliver(&self, records: &[Outgoing<'_>]) -> Result<BatchOutcome, CallError> {
        let (url, key_prefix) = match &self.wire {
            Wire::Rest { url, key_prefix } => (url, key_prefix),
            Wire::OData(odata) => return odata.deliver(&self.http, records).await,
        };
        let size: usize = records.iter().map(|r| r.data.len() + 24).sum();
        let mut body = Vec::with_capacity(key_prefix.len() + size + 2);
        body.extend_from_slice(key_prefix);
        for (i, record) in records.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"version\":");
            body.extend_from_slice(record.version.to_string().as_bytes());
            body.extend_from_slice(b",\"data\":");
            body.extend_from_slice(record.data);
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        let body = Bytes::from(body);
        let response = self
            .http
            .send(|client| {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        // The records are taken (2xx); the body only lists refusals. One too large to read is
        // not a reason to send the batch again.
        let text = match self.http.read_body(response).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(
                    error = super::super::trace::log_safe(&e.to_string()),
                    "bulk-upsert answer not read; no refusals taken from it"
                );
                Bytes::new()
            }
        };
        Ok(serde_json::from_slice(&text).unwrap_or_default())
    }
}
