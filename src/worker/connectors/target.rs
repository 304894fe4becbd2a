//! The target: an OData v4 entity set (see [`super::odata_target`]) or a REST API: batches go
//! to `<binding url>/<entity>` with the flow's method (POST, PUT, PATCH) in its envelope (a
//! JSON array, an object wrapping the records under a key, NDJSON, or a versioned upsert
//! `{"key": [...], "records": [{"version": n, "data": {...}}]}` whose target applies a record
//! only when it is newer than what it holds), optionally with an idempotency-key header
//! derived from the batch's record keys and versions. Per-record refusals come back in
//! `rejected: [{index, reason}]`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::files_target::FilesTarget;
use super::odata_target::ODataTarget;
use crate::api::connector_binding::{BodyEnvelope, Protocol, RestWrite, WriteMethod};
use crate::worker::http::{CallError, HttpClient};
use crate::worker::metrics::Metrics;
use crate::worker_config::TargetConfig;

/// One record ready to send: its identity, its version and its canonical JSON.
pub struct Outgoing<'a> {
    /// The record's key (its `Flowplane-Key`).
    pub key: &'a str,
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
    /// REST API.
    Rest(RestTarget),
    /// File drops (local directory or SFTP).
    Files(FilesTarget),
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
            Protocol::Files => {
                return Ok(Target {
                    http,
                    wire: Wire::Files(FilesTarget::new(config)?),
                });
            }
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
                "target protocol {other:?} is not supported: targets are OData v4 entity sets, REST APIs or file drops"
            ),
        }
        let rest = RestTarget::new(
            &config.endpoint.url,
            &config.entity,
            key,
            config.rest.as_ref(),
        )?;
        if !http.same_origin(&rest.url) {
            anyhow::bail!(
                "target entity {:?} leads away from the binding's host; it must be a path below the binding URL",
                config.entity
            );
        }
        Ok(Target {
            http,
            wire: Wire::Rest(rest),
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
        let rest = match &self.wire {
            Wire::Rest(rest) => rest,
            Wire::OData(odata) => return odata.deliver(&self.http, records).await,
            Wire::Files(files) => return files.deliver(records).await,
        };
        let body = rest.body(records);
        let idempotency_key = rest
            .write
            .idempotency_key_header
            .as_ref()
            .map(|header| (header.as_str(), idempotency_key(records)));
        let response = self
            .http
            .send(|client| {
                let mut request = client
                    .request(rest.method.clone(), rest.url.clone())
                    .header("content-type", rest.content_type)
                    .header("accept", "application/json")
                    .body(body.clone());
                if let Some((header, value)) = &idempotency_key {
                    request = request.header(*header, value);
                }
                request
            })
            .await?;
        // The records are taken (2xx); the body only lists refusals. One too large to read is
        // not a reason to send the batch again.
        let text = match self.http.read_body(response).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(
                    error = super::super::redact::log_safe(&e.to_string()),
                    "bulk-upsert answer not read; no refusals taken from it"
                );
                Bytes::new()
            }
        };
        Ok(serde_json::from_slice(&text).unwrap_or_default())
    }
}

/// A REST target's request shape.
struct RestTarget {
    url: reqwest::Url,
    method: reqwest::Method,
    write: RestWrite,
    content_type: &'static str,
    /// `{"key":[...],"records":[` of a VersionedUpsert, or `{"<recordsKey>":[` of an Object.
    prefix: Bytes,
}

impl RestTarget {
    /// `rest` None is a worker.json of an earlier release: the versioned upsert to the
    /// forecasting simulator's route, as those workers sent it.
    fn new(
        base: &str,
        entity: &str,
        key: &[String],
        rest: Option<&RestWrite>,
    ) -> anyhow::Result<RestTarget> {
        let (path, write) = match rest {
            Some(write) => (entity.trim_start_matches('/').to_string(), write.clone()),
            None => (
                format!("api/v1/{}/bulk-upsert", entity.trim_start_matches('/')),
                RestWrite {
                    body: BodyEnvelope::VersionedUpsert,
                    ..RestWrite::default()
                },
            ),
        };
        let url = reqwest::Url::parse(&format!("{}/{path}", base.trim_end_matches('/')))
            .map_err(|e| anyhow::anyhow!("target URL of entity {entity:?}: {e}"))?;
        let mut prefix = Vec::new();
        match write.body {
            BodyEnvelope::VersionedUpsert => {
                prefix.extend_from_slice(br#"{"key":"#);
                serde_json::to_writer(&mut prefix, key)?;
                prefix.extend_from_slice(br#","records":["#);
            }
            BodyEnvelope::Object => {
                prefix.push(b'{');
                let records_key = write.records_key.as_deref().unwrap_or("records");
                serde_json::to_writer(&mut prefix, records_key)?;
                prefix.extend_from_slice(b":[");
            }
            BodyEnvelope::JsonArray | BodyEnvelope::Ndjson => {}
        }
        Ok(RestTarget {
            url,
            method: match write.method {
                WriteMethod::Post => reqwest::Method::POST,
                WriteMethod::Put => reqwest::Method::PUT,
                WriteMethod::Patch => reqwest::Method::PATCH,
            },
            content_type: match write.body {
                BodyEnvelope::Ndjson => "application/x-ndjson",
                _ => "application/json",
            },
            write,
            prefix: Bytes::from(prefix),
        })
    }

    /// The batch in its envelope. Records are copied as the mapping wrote them (canonical
    /// JSON objects, one line each), never re-serialised.
    fn body(&self, records: &[Outgoing<'_>]) -> Bytes {
        let size: usize = records.iter().map(|r| r.data.len() + 24).sum();
        let mut body = Vec::with_capacity(self.prefix.len() + size + 2);
        body.extend_from_slice(&self.prefix);
        match self.write.body {
            BodyEnvelope::Ndjson => {
                for record in records {
                    body.extend_from_slice(record.data);
                    body.push(b'\n');
                }
            }
            BodyEnvelope::VersionedUpsert => {
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
            }
            BodyEnvelope::JsonArray | BodyEnvelope::Object => {
                if self.write.body == BodyEnvelope::JsonArray {
                    body.push(b'[');
                }
                for (i, record) in records.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(record.data);
                }
                body.extend_from_slice(if self.write.body == BodyEnvelope::Object {
                    b"]}"
                } else {
                    b"]"
                });
            }
        }
        Bytes::from(body)
    }
}

/// The idempotency key of a batch: SHA-256 over its records' keys and versions, in order, so a
/// retry of the same batch (by the client's retries or a redelivery that forms the same batch)
/// sends the same value, and a batch with any other record or version a different one. Record
/// values do not enter it (the versions stand for them) and cannot be read back from it.
pub fn idempotency_key(records: &[Outgoing<'_>]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for record in records {
        hash.update(record.key.len().to_string().as_bytes());
        hash.update(b":");
        hash.update(record.key.as_bytes());
        hash.update(b"@");
        hash.update(record.version.to_string().as_bytes());
        hash.update(b"\n");
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Outgoing<'static>> {
        vec![
            Outgoing {
                key: "1/10",
                version: 3,
                data: br#"{"order":"1","qty":5}"#,
            },
            Outgoing {
                key: "2/10",
                version: 4,
                data: br#"{"order":"2","qty":6}"#,
            },
        ]
    }

    fn target(write: Option<RestWrite>, entity: &str) -> RestTarget {
        let key = ["order".to_string()];
        RestTarget::new("http://api.test/base/", entity, &key, write.as_ref()).unwrap()
    }

    fn text(target: &RestTarget) -> String {
        String::from_utf8(target.body(&records()).to_vec()).unwrap()
    }

    #[test]
    fn envelopes_wrap_the_records_as_configured() {
        let write = |body, records_key: Option<&str>| {
            Some(RestWrite {
                body,
                records_key: records_key.map(str::to_string),
                ..RestWrite::default()
            })
        };
        let array = target(write(BodyEnvelope::JsonArray, None), "/v2/ingest/lines");
        assert_eq!(array.url.as_str(), "http://api.test/base/v2/ingest/lines");
        assert_eq!(array.method, reqwest::Method::POST);
        assert_eq!(
            text(&array),
            r#"[{"order":"1","qty":5},{"order":"2","qty":6}]"#
        );
        let object = target(write(BodyEnvelope::Object, Some("items")), "lines");
        assert_eq!(
            text(&object),
            r#"{"items":[{"order":"1","qty":5},{"order":"2","qty":6}]}"#
        );
        let default_key = target(write(BodyEnvelope::Object, None), "lines");
        assert!(text(&default_key).starts_with(r#"{"records":["#));
        let ndjson = target(write(BodyEnvelope::Ndjson, None), "lines");
        assert_eq!(ndjson.content_type, "application/x-ndjson");
        assert_eq!(
            text(&ndjson),
            "{\"order\":\"1\",\"qty\":5}\n{\"order\":\"2\",\"qty\":6}\n"
        );
        let versioned = target(write(BodyEnvelope::VersionedUpsert, None), "x");
        assert_eq!(
            text(&versioned),
            r#"{"key":["order"],"records":[{"version":3,"data":{"order":"1","qty":5}},{"version":4,"data":{"order":"2","qty":6}}]}"#
        );
        // An empty batch is still a valid body.
        assert_eq!(array.body(&[]).as_ref(), b"[]");
        assert_eq!(object.body(&[]).as_ref(), br#"{"items":[]}"#);
    }

    #[test]
    fn a_document_without_rest_settings_posts_to_the_earlier_route() {
        let legacy = target(None, "sales-history");
        assert_eq!(
            legacy.url.as_str(),
            "http://api.test/base/api/v1/sales-history/bulk-upsert"
        );
        assert_eq!(legacy.write.body, BodyEnvelope::VersionedUpsert);
    }

    #[test]
    fn the_idempotency_key_follows_keys_and_versions_only() {
        let first = idempotency_key(&records());
        assert_eq!(
            first,
            idempotency_key(&records()),
            "a retry sends the same key"
        );
        assert_eq!(first.len(), 64);
        let mut changed = records();
        changed[1].version = 5;
        assert_ne!(first, idempotency_key(&changed));
        let mut other_value = records();
        other_value[0].data = br#"{"order":"1","qty":999}"#;
        assert_eq!(first, idempotency_key(&other_value));
        let mut reordered = records();
        reordered.reverse();
        assert_ne!(first, idempotency_key(&reordered));
        // Keys are length-prefixed: "a/b" + "c" differs from "a" + "b/c".
        let split = |a: &'static str, b: &'static str| {
            idempotency_key(&[
                Outgoing {
                    key: a,
                    version: 1,
                    data: b"{}",
                },
                Outgoing {
                    key: b,
                    version: 1,
                    data: b"{}",
                },
            ])
        };
        assert_ne!(split("a/b", "c"), split("a", "b/c"));
    }
}
