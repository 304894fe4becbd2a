//! File-drop source: CSV (header row, RFC 4180, read by the `csv` crate) or JSONL files in the
//! binding's drop directory (a local directory on a mounted volume, or over SFTP: see
//! [`super::drops`]) whose names match the entity's glob pattern (the `glob` crate; names
//! starting with '.', such as files being uploaded, never match). Files are read in name
//! order, one page each; the cursor is the last file read, so a dropped file is read once.

use serde_json::{Map, Value};

use super::Page;
use super::drops::DropDir;
use crate::api::integration_flow::SyncMode;
use crate::worker::http::CallError;
use crate::worker_config::SourceConfig;

/// A directory of dropped files.
pub struct FileSource {
    dir: DropDir,
    pattern: glob::Pattern,
    full: bool,
    /// Files of this pass still to read, last first; None until the pass lists the directory.
    pending: Option<Vec<String>>,
    after: Option<String>,
}

impl FileSource {
    /// The directory of `config.endpoint.url`.
    pub fn new(config: &SourceConfig) -> anyhow::Result<FileSource> {
        Ok(FileSource {
            dir: DropDir::new(&config.endpoint)?,
            pattern: glob::Pattern::new(&config.entity)
                .map_err(|e| anyhow::anyhow!("the Files source entity {:?}: {e}", config.entity))?,
            full: config.sync_mode == SyncMode::FullRefresh,
            pending: None,
            after: None,
        })
    }

    /// Starts a pass over the files after `cursor`.
    pub fn begin(&mut self, cursor: Option<&str>) {
        self.after = if self.full {
            None
        } else {
            cursor.map(str::to_string)
        };
        self.pending = None;
    }

    /// The next file's records.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        if self.pending.is_none() {
            let options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..glob::MatchOptions::new()
            };
            let mut names: Vec<String> = self
                .dir
                .list()
                .await?
                .into_iter()
                .filter(|name| self.pattern.matches_with(name, options))
                .filter(|name| self.after.as_ref().is_none_or(|after| name > after))
                .collect();
            names.sort();
            names.reverse();
            self.pending = Some(names);
        }
        let Some(name) = self.pending.as_mut().and_then(Vec::pop) else {
            return Ok(None);
        };
        // A file gone since the listing (moved away by someone else) is an empty page.
        let bytes = self.dir.read(&name).await?.unwrap_or_default();
        let records = if name.ends_with(".csv") {
            parse_csv(&bytes)
        } else {
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
                .collect()
        };
        Ok(Some(Page {
            records: records.into(),
            cursor: Some(name),
            refused: Vec::new(),
        }))
    }
}

/// CSV with a header row; every value a string. A row the reader cannot read (a broken quote)
/// becomes its text, a record the contract refuses and the worker dead-letters.
pub(crate) fn parse_csv(bytes: &[u8]) -> Vec<Value> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let Ok(header) = reader.headers().cloned() else {
        return Vec::new();
    };
    reader
        .records()
        .map(|row| match row {
            Ok(row) => {
                let mut record = Map::new();
                for (name, cell) in header.iter().zip(row.iter()) {
                    record.insert(name.to_string(), Value::String(cell.to_string()));
                }
                Value::Object(record)
            }
            Err(e) => Value::String(format!("unreadable CSV row: {e}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_patterns() {
        let rows = parse_csv(b"a,b\r\n1,\"x, \"\"y\"\"\"\n2,\"multi\nline\"\n");
        assert_eq!(rows[0]["b"], "x, \"y\"");
        assert_eq!(rows[1]["b"], "multi\nline");
        // Found by the fuzz target csv_file: a quoted line break split the row in two.
        let rows = parse_csv(b"a,b\r\n\"first\r\nsecond\",2\r\n\r\n3\r\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["a"], "first\r\nsecond");
        assert_eq!((rows[1]["a"].as_str(), rows[1].get("b")), (Some("3"), None));
        let options = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..glob::MatchOptions::new()
        };
        let pattern = glob::Pattern::new("orders-*.csv").unwrap();
        assert!(pattern.matches_with("orders-2024.csv", options));
        assert!(!pattern.matches_with("returns-2024.csv", options));
        assert!(
            !glob::Pattern::new("*")
                .unwrap()
                .matches_with(".x.part", options)
        );
    }
}
