//! File-drop target, the way planning platforms (Kinaxis, SAP IBP, o9) take bulk loads: each
//! batch becomes a CSV file (header row, RFC 4180 quoting by the `csv` crate) in the binding's
//! drop directory (local or SFTP, see [`super::drops`]), followed by its manifest, the trigger
//! the platform waits for. Both are written under a temporary name and renamed.
//!
//! - Batch: `<entity>-<UTC time>-<hash>.csv`; first column `recordKey` (the record's key, the
//!   contract's key fields joined by `/`), then the record's fields in name order. Strings as
//!   they are, numbers and booleans as JSON writes them, null as an empty cell, objects and
//!   arrays as JSON text.
//! - Manifest: `<batch>.manifest.json`: `{"file", "records", "sha256"}` (SHA-256 of the batch
//!   file's bytes, hex).
//! - Answer, from the platform: `<batch>.ack` (every record taken) or `<batch>.reject.csv`, a
//!   CSV with a header naming `key` and `reason`: each row refuses the records of that key
//!   (dead-lettered with the reason), the others are taken. The worker waits for it up to the
//!   flow's `target.files.answerTimeout`; no answer in that time, or no wait, counts the batch
//!   delivered.

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::drops::DropDir;
use super::target::{BatchOutcome, Outgoing, RejectedRecord};
use crate::api::common::parse_duration;
use crate::worker::http::CallError;
use crate::worker_config::TargetConfig;

/// How often the drop directory is looked at for an answer.
const ANSWER_POLL: Duration = Duration::from_millis(250);

/// A drop directory taking batches as files.
pub struct FilesTarget {
    dir: DropDir,
    prefix: String,
    answer_timeout: Duration,
}

impl FilesTarget {
    /// The target of `config`: its binding's directory, `entity` as the file name prefix.
    pub fn new(config: &TargetConfig) -> anyhow::Result<FilesTarget> {
        let prefix = config.entity.trim_matches('/').to_string();
        if prefix.is_empty() || prefix.contains('/') || prefix.starts_with('.') {
            anyhow::bail!(
                "a Files target's entity is the batch files' name prefix: a name without '/', not starting with '.' (got {:?})",
                config.entity
            );
        }
        let answer_timeout = match &config.files {
            Some(files) => parse_duration(&files.answer_timeout)
                .map_err(|e| anyhow::anyhow!("target.files.answerTimeout: {e}"))?,
            None => Duration::ZERO,
        };
        Ok(FilesTarget {
            dir: DropDir::new(&config.endpoint)?,
            prefix,
            answer_timeout,
        })
    }

    /// Drops one batch and its manifest; with an answer timeout, waits for the platform's
    /// answer and reports the records it refused.
    pub async fn deliver(&self, records: &[Outgoing<'_>]) -> Result<BatchOutcome, CallError> {
        let csv = batch_csv(records)
            .map_err(|e| CallError::Transient(format!("writing the batch file: {e}")))?;
        let sha256 = hex::encode(Sha256::digest(&csv));
        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.3fZ");
        let batch = format!("{}-{now}-{}.csv", self.prefix, &sha256[..12]);
        self.dir.write_atomic(&batch, &csv).await?;
        let manifest = serde_json::json!({
            "file": batch,
            "records": records.len(),
            "sha256": sha256,
        });
        self.dir
            .write_atomic(
                &format!("{batch}.manifest.json"),
                &serde_json::to_vec(&manifest).unwrap_or_default(),
            )
            .await?;
        if self.answer_timeout.is_zero() {
            return Ok(BatchOutcome::default());
        }
        let deadline = Instant::now() + self.answer_timeout;
        loop {
            if let Some(rejects) = self.dir.read(&format!("{batch}.reject.csv")).await? {
                return Ok(outcome(records, &rejects));
            }
            if self.dir.read(&format!("{batch}.ack")).await?.is_some() {
                return Ok(BatchOutcome::default());
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    batch,
                    "no answer to the batch file in time; counted delivered"
                );
                return Ok(BatchOutcome::default());
            }
            tokio::time::sleep(ANSWER_POLL).await;
        }
    }
}

/// The batch as CSV: `recordKey`, then every field any record has, in name order.
fn batch_csv(records: &[Outgoing<'_>]) -> Result<Vec<u8>, csv::Error> {
    let parsed: Vec<serde_json::Map<String, Value>> = records
        .iter()
        .map(|r| serde_json::from_slice(r.data).unwrap_or_default())
        .collect();
    let columns: std::collections::BTreeSet<&str> = parsed
        .iter()
        .flat_map(|r| r.keys().map(String::as_str))
        .collect();
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(std::iter::once("recordKey").chain(columns.iter().copied()))?;
    for (record, fields) in records.iter().zip(&parsed) {
        let cells = columns.iter().map(|c| match fields.get(*c) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        });
        writer.write_record(std::iter::once(record.key.to_string()).chain(cells))?;
    }
    writer.into_inner().map_err(|e| e.into_error().into())
}

/// The records a reject file refuses, by key, with its reasons. A reject file without `key`
/// and `reason` columns refuses nothing it cannot name: the batch counts as taken, and the
/// worker says so.
fn outcome(records: &[Outgoing<'_>], rejects: &[u8]) -> BatchOutcome {
    let mut reader = csv::Reader::from_reader(rejects);
    let columns = reader.headers().ok().and_then(|h| {
        let at = |name: &str| h.iter().position(|c| c.trim().eq_ignore_ascii_case(name));
        Some((at("key")?, at("reason")?))
    });
    let Some((key_at, reason_at)) = columns else {
        tracing::warn!("a reject file without key and reason columns; nothing taken from it");
        return BatchOutcome::default();
    };
    let mut refused = std::collections::HashMap::new();
    for row in reader.records().flatten() {
        if let Some(key) = row.get(key_at) {
            refused.insert(
                key.to_string(),
                row.get(reason_at).unwrap_or_default().to_string(),
            );
        }
    }
    BatchOutcome {
        rejected: records
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                refused.get(r.key).map(|reason| RejectedRecord {
                    index,
                    reason: format!("refused by the receiving system: {reason}"),
                })
            })
            .collect(),
        retry: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing<'a>(key: &'a str, data: &'a str) -> Outgoing<'a> {
        Outgoing {
            key,
            version: 1,
            data: data.as_bytes(),
        }
    }

    #[test]
    fn batches_are_rfc4180_csv_and_rejects_name_records_by_key() {
        let records = [
            outgoing("4711/10", r#"{"b":"x, \"y\"","a":1,"c":null}"#),
            outgoing("4711/20", r#"{"a":2.5,"b":"line\nbreak"}"#),
        ];
        let csv = String::from_utf8(batch_csv(&records).unwrap()).unwrap();
        assert_eq!(
            csv,
            "recordKey,a,b,c\n4711/10,1,\"x, \"\"y\"\"\",\n4711/20,2.5,\"line\nbreak\",\n"
        );
        let answer = outcome(&records, b"key,reason\n4711/20,\"unknown item, plant 9\"\n");
        assert_eq!(answer.rejected.len(), 1);
        assert_eq!(answer.rejected[0].index, 1);
        assert!(answer.rejected[0].reason.ends_with("unknown item, plant 9"));
        assert!(outcome(&records, b"what\n4711/10\n").rejected.is_empty());
    }

    /// A local drop directory (a mounted volume): the batch and its manifest, nothing
    /// half-written left behind.
    #[tokio::test]
    async fn a_local_directory_gets_the_batch_then_its_manifest() {
        let dir = std::env::temp_dir().join(format!("files-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = crate::worker::sample::sales_order_flow("n", "f", "", "", "").target;
        config.endpoint.protocol = crate::api::connector_binding::Protocol::Files;
        config.endpoint.url = format!("file://{}", dir.display());
        config.entity = "orders".into();
        let target = FilesTarget::new(&config).unwrap();
        let records = [outgoing("1/10", r#"{"a":1}"#)];
        assert!(target.deliver(&records).await.unwrap().rejected.is_empty());
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].starts_with("orders-") && names[0].ends_with(".csv"));
        assert_eq!(names[1], format!("{}.manifest.json", names[0]));
        config.entity = "../up".into();
        assert!(FilesTarget::new(&config).is_err());
    }
}
