//! Extraction: the lease holder reads the source page by page and publishes every record to
//! the flow's stream with `Nats-Msg-Id` = primary key + source version, then stores the
//! cursor. A crash between publish and cursor write re-reads the page on restart; JetStream
//! drops the republished records as duplicates (within the dedupe window) and the target's
//! version check ignores anything older, so nothing is lost and nothing is applied twice.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, HeaderName, HeaderValue, Subject};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;

use super::connectors::{Page, Records, Source, raw};
use super::http::CallError;
use super::lease::Lease;
use super::metrics::Metrics;
use super::progress::ProgressDeltas;
use super::trace::{new_traceparent, trace_id};
use super::transform::Plan;
use super::version::version_of;
use crate::api::common::parse_duration;
use crate::api::integration_flow::SyncMode;
use crate::queue::jetstream::{PARTITIONS, partition_of, partition_subject};
use crate::queue::{CURSOR_KEY, QueueNames, headers};
use crate::worker_config::WorkerConfig;

/// Pages fetched ahead of the one being published.
const PREFETCH_PAGES: usize = 2;
/// Published pages whose acks may be outstanding at once (bounded by the client's
/// `max_ack_inflight` too).
const IN_FLIGHT_PAGES: usize = 4;

// The per-record headers, named once (a `&str` name is re-checked and copied per record).
const MSG_ID: HeaderName = HeaderName::from_static(headers::MSG_ID);
const TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
const KEY: HeaderName = HeaderName::from_static(headers::KEY);
const SOURCE_VERSION: HeaderName = HeaderName::from_static(headers::SOURCE_VERSION);

/// What a full-refresh run did.
#[derive(Serialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RefreshReport {
    /// Records read from the source.
    pub read: u64,
    /// Records JetStream stored (new or changed since the dedupe window).
    pub published: u64,
    /// Records JetStream dropped as already stored.
    pub duplicates: u64,
}

/// Everything extraction needs.
pub struct Extractor {
    /// JetStream of the flow.
    pub js: jetstream::Context,
    /// The flow's names.
    pub names: QueueNames,
    /// The compiled mapping (for the primary key).
    pub plan: Arc<Plan>,
    /// The flow's configuration.
    pub config: Arc<WorkerConfig>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Progress to flush.
    pub progress: Arc<ProgressDeltas>,
    /// The flow's bucket.
    pub store: kv::Store,
}

impl Extractor {
    /// The top-level source fields the envelope reads: the primary key's source fields and
    /// the cursor field. A superset is harmless (only these are parsed out of a record's JSON
    /// text; the mapping itself runs on the consume side).
    fn envelope_fields(&self) -> Vec<String> {
        let mut wanted: Vec<String> = Vec::new();
        let mut want = |name: &str| {
            if !wanted.iter().any(|w| w == name) {
                wanted.push(name.to_string());
            }
        };
        for key in self.plan.key_names() {
            // Unmapped contract fields come from the source field of the same name.
            want(key);
            for mapped in self.config.mapping.fields.iter().filter(|m| &m.to == key) {
                if let Some(from) = &mapped.from {
                    want(from.split('.').next().unwrap_or(from));
                }
            }
        }
        if let Some(field) = &self.config.source.cursor_field {
            want(field);
        }
        wanted
    }

    /// One record's headers and subject. `record` holds at least the envelope fields.
    fn envelope(
        &self,
        record: &Value,
        fallback_version: u64,
        body: &[u8],
        subjects: &[Subject],
    ) -> (Subject, HeaderMap) {
        let key = self.plan.source_key(record);
        let version = self
            .config
            .source
            .cursor_field
            .as_deref()
            .and_then(|field| record.get(field))
            .and_then(version_of)
            .unwrap_or(fallback_version);
        let id = match &key {
            Some(key) => format!("{key}@{version}"),
            // No key: deduplicate by content instead.
            None => format!("content-{:016x}@{version}", fnv64(body)),
        };
        let key = key.unwrap_or_default();
        let traceparent = new_traceparent();
        tracing::debug!(trace_id = trace_id(&traceparent), key = %key, version, stage = "extract", "record read");
        let subject = subjects[partition_of(&key) as usize].clone();
        let mut map = HeaderMap::new();
        map.insert(MSG_ID, HeaderValue::from(id));
        map.insert(TRACEPARENT, HeaderValue::from(traceparent));
        map.insert(KEY, HeaderValue::from(key));
        map.insert(SOURCE_VERSION, HeaderValue::from(version));
        (subject, map)
    }

    /// Publishes one page without waiting for JetStream's acks; the returned future resolves
    /// to (stored, duplicates) once every record of the page is acknowledged.
    async fn publish(
        &self,
        records: Records,
        fallback_version: u64,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<(u64, u64)>> + Send + 'static> {
        let mut acks = Vec::with_capacity(records.len());
        let subjects: Vec<Subject> = (0..PARTITIONS)
            .map(|p| Subject::from(partition_subject(&self.names, p)))
            .collect();
        match &records {
            Records::Values(values) => {
                for record in values {
                    let body = Bytes::from(serde_json::to_vec(record)?);
                    let (subject, headers) =
                        self.envelope(record, fallback_version, &body, &subjects);
                    acks.push(self.js.publish_with_headers(subject, headers, body).await?);
                }
            }
            Records::Json(texts) => {
                // The record is published as the source sent it; only the envelope's fields
                // are parsed out of it.
                let wanted = self.envelope_fields();
                for text in texts {
                    let fields = match raw::fields_of(text, &wanted) {
                        Some(fields) => Value::Object(fields),
                        // Not an object: no key fields to read, but keep the whole value.
                        None => serde_json::from_slice(text)?,
                    };
                    let (subject, headers) = match self.plan.source_key(&fields) {
                        Some(_) => self.envelope(&fields, fallback_version, text, &subjects),
                        // Keyless records are deduplicated by their canonical content, so the
                        // id must not depend on how the source spaced or ordered the text.
                        None => {
                            let record: Value = serde_json::from_slice(text)?;
                            let canonical = serde_json::to_vec(&record)?;
                            self.envelope(&record, fallback_version, &canonical, &subjects)
                        }
                    };
                    acks.push(
                        self.js
                            .publish_with_headers(subject, headers, text.clone())
                            .await?,
                    );
                }
            }
        }
        // Free the page's records on this task, not in the ack future.
        drop(records);
        Ok(async move {
            let (mut stored, mut duplicates) = (0, 0);
            for ack in acks {
                if ack.await?.duplicate {
                    duplicates += 1;
                } else {
                    stored += 1;
                }
            }
            Ok((stored, duplicates))
        })
    }

    async fn stored_cursor(&self) -> Option<String> {
        let value = self.store.get(CURSOR_KEY).await.ok()??;
        String::from_utf8(value.to_vec())
            .ok()
            .filter(|c| !c.is_empty())
    }

    /// One pass over the source. `full` ignores and keeps the stored cursor.
    async fn pass(
        &self,
        source: &mut Source,
        lease: Option<&Lease>,
        full: bool,
    ) -> anyhow::Result<RefreshReport> {
        let cursor = if full {
            None
        } else {
            self.stored_cursor().await
        };
        source.begin(cursor.as_deref());
        // Without a cursor field, a pass's records are newer than every earlier pass's.
        let fallback_version = super::clock::now_unix_ms() as u64 * 1_000_000;
        // A bounded pipeline: the next pages are fetched while earlier ones are published
        // and their acks are in flight. Pages settle in source order, and the cursor only
        // moves past a page once every record of it (and of every page before it) is stored.
        let (pages_tx, pages_rx) = mpsc::channel(PREFETCH_PAGES);
        let fetcher = async move {
            loop {
                let next = source.next_page().await;
                let last = !matches!(next, Ok(Some(_)));
                if pages_tx.send(next).await.is_err() || last {
                    break;
                }
            }
        };
        let publisher = self.publish_pages(pages_rx, lease, full, fallback_version);
        tokio::pin!(fetcher, publisher);
        let mut fetching = true;
        loop {
            tokio::select! {
                // Whatever the publisher returns ends the pass (dropping a fetch in progress).
                result = &mut publisher => return result,
                _ = &mut fetcher, if fetching => fetching = false,
            }
        }
    }

    /// The publishing half of a pass: publishes pages as they come, keeps at most
    /// `IN_FLIGHT_PAGES` of them waiting for acks, and stores the cursor after each page
    /// whose acks (and all earlier pages' acks) arrived.
    async fn publish_pages(
        &self,
        mut pages: mpsc::Receiver<Result<Option<Page>, CallError>>,
        lease: Option<&Lease>,
        full: bool,
        fallback_version: u64,
    ) -> anyhow::Result<RefreshReport> {
        let mut report = RefreshReport::default();
        let mut in_flight = FuturesOrdered::new();
        // Set when the lease is lost: earlier pages still settle, but the new holder owns
        // the cursor from now on.
        let mut lease_lost = false;
        let mut failure: Option<CallError> = None;
        let mut fetching = true;
        while fetching || !in_flight.is_empty() {
            tokio::select! {
                biased;
                settled = in_flight.next(), if !in_flight.is_empty() => {
                    let Some(settled) = settled else { continue };
                    let (n, cursor, acks): (u64, Option<String>, anyhow::Result<(u64, u64)>) = settled;
                    let (stored, duplicates) = acks?;
                    report.read += n;
                    report.published += stored;
                    report.duplicates += duplicates;
                    self.metrics.read.inc_by(n);
                    // The flow's figure counts what entered the stream: an incremental pass
                    // re-reads the rows of its cursor's timestamp (the filter is inclusive),
                    // and JetStream drops those repeats, so read stays delivered + dead
                    // letters + in flight.
                    self.progress.add_read(stored);
                    if !full && !lease_lost && let Some(cursor) = cursor {
                        self.store
                            .put(CURSOR_KEY, Bytes::from(cursor.clone()))
                            .await?;
                        self.progress.set_cursor(Some(cursor));
                    }
                }
                page = pages.recv(), if fetching && in_flight.len() < IN_FLIGHT_PAGES => {
                    let page = match page {
                        Some(Ok(Some(page))) => page,
                        Some(Err(e)) => {
                            // Settle what is already published first, so the cursor keeps it.
                            failure = Some(e);
                            fetching = false;
                            continue;
                        }
                        Some(Ok(None)) | None => {
                            fetching = false;
                            continue;
                        }
                    };
                    if let Some(lease) = lease
                        && !lease.acquire().await
                    {
                        tracing::info!("extractor lease lost; another worker extracts now");
                        lease_lost = true;
                        fetching = false;
                        continue;
                    }
                    let n = page.records.len() as u64;
                    let acks = self.publish(page.records, fallback_version).await?;
                    let cursor = page.cursor;
                    in_flight.push_back(async move { (n, cursor, acks.await) });
                }
            }
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }

    /// Extracts while holding the lease, until `shutdown`.
    pub async fn run(
        &self,
        lease: Lease,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut source = Source::open(&self.config.source, self.metrics.clone()).await?;
        let poll =
            parse_duration(&self.config.source.poll_interval).unwrap_or(Duration::from_secs(60));
        let events = self.config.source.sync_mode == SyncMode::Events;
        let full = self.config.source.sync_mode == SyncMode::FullRefresh;
        let mut failures = 0u32;
        let backoff =
            super::resilience::Backoff::new(&self.config.source.endpoint.resilience.retry);
        while !*shutdown.borrow() {
            let wait = if lease.acquire().await {
                match self.pass(&mut source, Some(&lease), full).await {
                    Ok(report) => {
                        failures = 0;
                        if report.published > 0 {
                            tracing::info!(
                                read = report.read,
                                published = report.published,
                                duplicates = report.duplicates,
                                "extraction pass"
                            );
                        }
                        if events { Duration::ZERO } else { poll }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "extraction pass failed; retrying from the stored cursor");
                        backoff.delay(failures.min(10))
                    }
                }
            } else {
                lease.ttl() / 3
            };
            // Sleep in steps that keep the lease renewed.
            let deadline = tokio::time::Instant::now() + wait;
            while tokio::time::Instant::now() < deadline && !*shutdown.borrow() {
                let step = (lease.ttl() / 3).min(deadline - tokio::time::Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = shutdown.changed() => {}
                }
                lease.acquire().await;
            }
        }
        lease.release().await;
        Ok(())
    }

    /// The CronJob's full refresh: re-reads the whole source once and publishes it; unchanged
    /// records are dropped by deduplication (and by the target's version check).
    pub async fn full_refresh(&self) -> anyhow::Result<RefreshReport> {
        let mut source = Source::open(&self.config.source, self.metrics.clone()).await?;
        self.pass(&mut source, None, true).await
    }
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
