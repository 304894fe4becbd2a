//! File-drop source: CSV (header row) or JSONL files in the directory of a `file://` URL whose
//! names match the entity pattern (`*` wildcards). Files are read in name order, one page
//! each; the cursor is the last file read, so a dropped file is read once.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::Page;
use crate::api::integration_flow::SyncMode;
use crate::worker::http::CallError;
use crate::worker_config::SourceConfig;

/// A directory of dropped files.
pub struct FileSource {
    dir: PathBuf,
    pattern: String,
    full: bool,
    pending: Vec<PathBuf>,
    after: Option<String>,
}

impl FileSource {
    /// The directory of `config.endpoint.url`.
    pub fn new(config: &SourceConfig) -> anyhow::Result<FileSource> {
        let dir = config
            .endpoint
            .url
            .strip_prefix("file://")
            .ok_or_else(|| anyhow::anyhow!("a Files source needs a file:// URL"))?;
        Ok(FileSource {
            dir: PathBuf::from(dir),
            pattern: config.entity.clone(),
            full: config.sync_mode == SyncMode::FullRefresh,
            pending: Vec::new(),
            after: None,
        })
    }

    /// Lists the files after `cursor`.
    pub fn begin(&mut self, cursor: Option<&str>) {
        self.after = if self.full {
            None
        } else {
            cursor.map(str::to_string)
        };
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| matches_pattern(&self.pattern, name))
                    .filter(|name| self.after.as_ref().is_none_or(|after| name > after))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.reverse();
        self.pending = names.into_iter().map(|n| self.dir.join(n)).collect();
    }

    /// The next file's records.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        let Some(path) = self.pending.pop() else {
            return Ok(None);
        };
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| CallError::Transient(format!("reading {}: {e}", path.display())))?;
        let records = if path.extension().is_some_and(|e| e == "csv") {
            parse_csv(&text)
        } else {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
                .collect()
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        Ok(Some(Page {
            records: records.into(),
            cursor: name,
            refused: Vec::new(),
        }))
    }
}

pub(crate) fn matches_pattern(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// CSV with a header row (RFC 4180, read by the csv crate: quoted fields may hold commas,
/// `""` escapes and line breaks); every value a string. A row with fewer cells than the header
/// leaves the rest out, extra cells are dropped.
pub(crate) fn parse_csv(text: &str) -> Vec<Value> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let Ok(header) = reader.headers().cloned() else {
        return Vec::new();
    };
    reader
        .records()
        // From a &str with flexible rows, the reader has no error to report.
        .map_while(Result::ok)
        .map(|row| {
            let record: Map<String, Value> = header
                .iter()
                .zip(row.iter())
                .map(|(name, cell)| (name.to_string(), Value::String(cell.to_string())))
                .collect();
            Value::Object(record)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_patterns() {
        let rows = parse_csv("a,b\n1,\"x, \"\"y\"\"\"\n");
        assert_eq!(rows[0]["b"], "x, \"y\"");
        // Found by the fuzz target csv_file: a quoted line break split the row in two.
        let rows = parse_csv("a,b\r\n\"first\r\nsecond\",2\r\n\r\n3\r\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["a"], "first\r\nsecond");
        assert_eq!((rows[1]["a"].as_str(), rows[1].get("b")), (Some("3"), None));
        assert!(matches_pattern("orders-*.csv", "orders-2024.csv"));
        assert!(!matches_pattern("orders-*.csv", "returns-2024.csv"));
        assert!(matches_pattern("*", "x"));
    }
}
