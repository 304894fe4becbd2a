//! The target: a REST bulk upsert (`POST <url>/api/v1/<entity>/bulk-upsert` with `{"key":
//! [...], "records": [{"version": n, "data": {...}}]}`). Every record carries its source
//! version; the target applies it only when it is newer than what it holds, so redelivered or
//! reordered batches never overwrite a newer value. Per-record refusals come back in
//! `rejected: [{index, reason}]`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::api::connector_binding::Protocol;
use crate::worker::config::TargetConfig;
use crate::worker::http::{CallError, HttpClient};
use crate::worker::metrics::Metrics;

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
}

/// A record the target refused.
#[derive(Deserialize, Debug)]
pub struct RejectedRecord {
    /// Index in the batch.
    pub index: usize,
    /// The target's reason.
    pub reason: String,
}

/// A bulk-upsert target.
pub struct Target {
    /// The binding's client (its breaker tells the consume loop to stop fetching).
    pub http: HttpClient,
    url: String,
    key_prefix: Bytes,
}

impl Target {
    /// The target of `config`, upserting by `key`.
    pub fn new(
        config: &TargetConfig,
        key: &[String],
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Target> {
        if config.endpoint.protocol != Protocol::Rest {
            anyhow::bail!(
                "target protocol {:?} is not supported yet: targets are REST bulk-upsert APIs",
                config.endpoint.protocol
            );
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
            http: HttpClient::new(&config.endpoint, metrics)?,
            url,
            key_prefix: Bytes::from(prefix),
        })
    }

    /// Sends one batch (with the binding's retries). `Permanent` means the whole request was
    /// refused (4xx); per-record refusals are in the outcome.
    pub async fn deliver(&self, records: &[Outgoing<'_>]) -> Result<BatchOutcome, CallError> {
        let size: usize = records.iter().map(|r| r.data.len() + 24).sum();
        let mut body = Vec::with_capacity(self.key_prefix.len() + size + 2);
        body.extend_from_slice(&self.key_prefix);
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
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        let text = response.bytes().await.unwrap_or_default();
        Ok(serde_json::from_slice(&text).unwrap_or_default())
    }
}
