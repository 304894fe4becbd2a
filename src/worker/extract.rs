//! Extraction: the lease holder reads the source page by page and publishes every record to
//! the flow's stream with `Nats-Msg-Id` = the record's identity (see [`identity`]), then stores
//! the cursor (polled sources) or acks the events to the capture stream (event sources). A
//! crash between publish and cursor write or ack re-reads the page on restart; JetStream drops
//! the republished records as duplicates (within the dedupe window, counted as `duplicates`)
//! and the target's version check ignores anything older, so nothing is lost and nothing is
//! applied twice.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, HeaderValue, Subject};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;

use super::clock::now_unix_ms;
use super::connectors::{Page, Records, Source, Window, raw};
use super::dead_letter::store_dead_letter;
use super::http::CallError;
use super::lease::Lease;
use super::metrics::Metrics;
use super::progress::ProgressDeltas;
use super::quota::SharedQuota;
use super::transform::Plan;
use super::transform::Reason;
use super::version::read_cursor_value;
use crate::api::common::parse_duration;
use crate::api::integration_flow::SyncMode;
use crate::queue::headers::{self, Envelope, names};
use crate::queue::jetstream::{PARTITIONS, partition_of, partition_subject};
use crate::queue::operations::{BackfillRecord, BackfillState, pending_backfill, write_backfill};
use crate::queue::publish::{PageAcks, PagePublish};
use crate::queue::{CURSOR_KEY, QueueNames};
use crate::worker_config::WorkerConfig;

/// Pages fetched ahead of the one being published.
const PREFETCH_PAGES: usize = 2;
/// Published pages whose acks may be outstanding at once: what bounds the records waiting
/// for JetStream's acks.
const IN_FLIGHT_PAGES: usize = 4;

/// How long a published page may wait for JetStream's next ack before it fails and is
/// published again (async-nats' default wait for one publish ack).
const ACK_IDLE: Duration = Duration::from_secs(5);

/// Room left for a record's headers below the NATS server's max payload.
pub(super) const HEADER_ROOM: usize = 8 * 1024;
/// How much of a record dead-lettered at extraction for its size is kept.
pub const DEAD_LETTER_KEEP: usize = 64 * 1024;

fn too_large(size: usize, max: usize) -> String {
    format!(
        "the record is {size} bytes, more than the {max} the flow takes (limits.maxRecordBytes, the NATS max payload)"
    )
}

/// A cursor written (or not: the error) by compare-and-set.
type CursorWrite = (String, Result<u64, String>);

/// What one published page came to once JetStream answered.
#[derive(Default)]
struct Settled {
    stored: u64,
    duplicates: u64,
    /// Reasons of the records dead-lettered at extraction.
    dead: Vec<Reason>,
}

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
    /// Records dead-lettered at extraction (too large, not UTF-8, nested too deep); shown
    /// only when there are any, so the report of a clean run reads as before.
    #[serde(skip_serializing_if = "is_zero")]
    pub dead_lettered: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

    /// One record's headers and subject. `record` holds at least the envelope fields;
    /// `content` is the record's canonical JSON (for the id of a keyless polled record).
    fn envelope(
        &self,
        record: &Value,
        origin: Origin<'_>,
        content: &[u8],
        page: &PageHeaders,
    ) -> (Subject, HeaderMap) {
        let key = self.plan.source_key(record);
        let cursor = self
            .config
            .source
            .cursor_field
            .as_deref()
            .and_then(|field| record.get(field))
            .map(read_cursor_value)
            .unwrap_or_default();
        let cursor_version = cursor.version;
        // For the end-to-end latency: the source's own change time where it has one.
        let changed_at = cursor.changed_ms.or(match origin {
            Origin::Event { stored_unix_ns, .. } => Some((stored_unix_ns / 1_000_000) as i64),
            Origin::Pass { .. } => None,
        });
        let (id, version) = identity(key.as_deref(), cursor_version, origin, content);
        let key = key.unwrap_or_default();
        tracing::debug!(trace_id = headers::trace_id(&id, None), key = %key, version, stage = "extract", "record read");
        let subject = page.subjects[partition_of(&key) as usize].clone();
        let mut map = HeaderMap::new();
        map.insert(names::MSG_ID, HeaderValue::from(id));
        let envelope = Envelope {
            key: &key,
            version,
            read_at: Some(page.read_at),
            changed_at,
        };
        map.insert(names::RECORD, HeaderValue::from(envelope.to_header()));
        (subject, map)
    }

    /// Publishes one page without waiting for JetStream's acks; the returned future resolves
    /// to (stored, duplicates) once every record of the page is acknowledged, and then acks a
    /// page of events to the capture stream.
    async fn publish(
        &self,
        records: Records,
        refused: Vec<raw::Refused>,
        pass_version: u64,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<Settled>> + Send + 'static> {
        let mut page_publish = PagePublish::new(self.js.client());
        let mut dead = Vec::new();
        let max_record = self.max_record_bytes();
        let page = PageHeaders {
            subjects: (0..PARTITIONS)
                .map(|p| Subject::from(partition_subject(&self.names, p)))
                .collect(),
            read_at: now_unix_ms(),
        };
        let pass = Origin::Pass {
            version: pass_version,
        };
        let mut events = Vec::new();
        match records {
            Records::Values(values) => {
                for record in &values {
                    let body = Bytes::from(serde_json::to_vec(record)?);
                    let (subject, headers) = self.envelope(record, pass, &body, &page);
                    self.publish_or_refuse(
                        subject,
                        headers,
                        body,
                        max_record,
                        &mut page_publish,
                        &mut dead,
                    )
                    .await?;
                }
            }
            Records::Json(records) => {
                // The record is published as the source sent it; only the envelope's fields
                // were parsed out of it, by the source.
                for raw::JsonRecord { text, fields } in records {
                    if text.len() > max_record {
                        let fields = fields.map(Value::Object).unwrap_or(Value::Null);
                        let (_, headers) = self.envelope(&fields, pass, &text, &page);
                        dead.push(
                            self.refuse(
                                headers,
                                &text,
                                Reason::RecordTooLarge,
                                too_large(text.len(), max_record),
                            )
                            .await?,
                        );
                        continue;
                    }
                    let fields = match fields {
                        Some(fields) => Value::Object(fields),
                        // Not an object: no key fields to read, but keep the whole value.
                        None => serde_json::from_slice(&text)?,
                    };
                    let (subject, headers) = match self.plan.source_key(&fields) {
                        Some(_) => self.envelope(&fields, pass, &text, &page),
                        // Keyless records are deduplicated by their canonical content, so the
                        // id must not depend on how the source spaced or ordered the text.
                        None => {
                            let record: Value = serde_json::from_slice(&text)?;
                            let canonical = serde_json::to_vec(&record)?;
                            self.envelope(&record, pass, &canonical, &page)
                        }
                    };
                    page_publish.publish(subject, headers, text).await?;
                }
            }
            Records::Events(fetched) => {
                let wanted = self.envelope_fields();
                for event in &fetched {
                    let info = event
                        .info()
                        .map_err(|e| anyhow::anyhow!("event without JetStream metadata: {e}"))?;
                    let origin = Origin::Event {
                        msg_id: event
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(headers::MSG_ID))
                            .map(|v| v.as_str()),
                        sequence: info.stream_sequence,
                        stored_unix_ns: u64::try_from(info.published.unix_timestamp_nanos())
                            .unwrap_or(0),
                    };
                    let (body, fields) = match raw::fields_of(&event.payload, &wanted) {
                        Some(fields) => (event.payload.clone(), Value::Object(fields)),
                        None => match serde_json::from_slice::<Value>(&event.payload) {
                            Ok(value) => (event.payload.clone(), value),
                            // Not JSON: forwarded as a JSON string, so the consumer
                            // dead-letters it with what arrived.
                            Err(_) => (
                                Bytes::from(serde_json::to_vec(&Value::String(
                                    String::from_utf8_lossy(&event.payload).into_owned(),
                                ))?),
                                Value::Null,
                            ),
                        },
                    };
                    let (subject, headers) = self.envelope(&fields, origin, &body, &page);
                    // The source's server may take larger messages than the flow's.
                    self.publish_or_refuse(
                        subject,
                        headers,
                        body,
                        max_record,
                        &mut page_publish,
                        &mut dead,
                    )
                    .await?;
                }
                events = fetched;
            }
        }
        if !refused.is_empty() {
            let wanted = self.envelope_fields();
            let depth = self.config.limits.max_json_depth as usize;
            for record in refused {
                // The key fields are top-level: readable unless the flaw is in them.
                let fields = raw::fields_of(&record.text, &wanted)
                    .map(Value::Object)
                    .unwrap_or(Value::Null);
                let (_, headers) = self.envelope(&fields, pass, &record.text, &page);
                dead.push(
                    self.refuse(
                        headers,
                        &record.text,
                        Reason::Malformed,
                        record.flaw.detail(depth),
                    )
                    .await?,
                );
            }
        }
        Ok(async move {
            let PageAcks { stored, duplicates } = page_publish.acks(ACK_IDLE).await?;
            let mut settled = Settled {
                stored,
                duplicates,
                dead: Vec::new(),
            };
            for (duplicate, reason) in dead {
                // Dead letters are deduplicated by the record's identity as well: a record
                // read again (an inclusive incremental restart) is not dead-lettered twice.
                if duplicate {
                    settled.duplicates += 1;
                } else {
                    settled.dead.push(reason);
                }
            }
            // Every event of the page is in the flow's stream: the capture stream may let go
            // of them. A lost ack only brings an event back, as a duplicate.
            for event in events {
                if let Err(e) = event.ack().await {
                    tracing::debug!(error = %e, "source event not acked; it comes back as a duplicate");
                }
            }
            Ok(settled)
        })
    }

    /// The largest record published as it is: the flow's `limits.maxRecordBytes`, within the
    /// NATS server's max payload less room for the headers.
    fn max_record_bytes(&self) -> usize {
        let server = self.js.client().max_payload();
        let server = if server == 0 {
            usize::MAX
        } else {
            server.saturating_sub(HEADER_ROOM)
        };
        (self.config.limits.max_record_bytes as usize).min(server)
    }

    /// Publishes a record that cannot go to the flow's stream straight to the dead-letter
    /// stream, with its identity (as `Nats-Msg-Id`, so a re-read is a duplicate there too), its
    /// reason and the stage `extract`. A payload over [`DEAD_LETTER_KEEP`] bytes is cut to
    /// that much (header `Flowplane-Truncated` has the original size): the dead-letter stream
    /// takes no more than the flow's stream does.
    /// Publishes one record to the flow's stream, or dead-letters it (`RecordTooLarge`) when
    /// it is larger than the flow takes.
    async fn publish_or_refuse(
        &self,
        subject: Subject,
        headers: HeaderMap,
        body: Bytes,
        max_record: usize,
        page_publish: &mut PagePublish,
        dead: &mut Vec<(bool, Reason)>,
    ) -> anyhow::Result<()> {
        if body.len() > max_record {
            let detail = too_large(body.len(), max_record);
            dead.push(
                self.refuse(headers, &body, Reason::RecordTooLarge, detail)
                    .await?,
            );
        } else {
            page_publish.publish(subject, headers, body).await?;
        }
        Ok(())
    }

    async fn refuse(
        &self,
        mut headers: HeaderMap,
        text: &Bytes,
        reason: Reason,
        detail: String,
    ) -> anyhow::Result<(bool, Reason)> {
        tracing::warn!(
            key = Envelope::of(Some(&headers)).key,
            reason = reason.as_str(),
            stage = "extract",
            bytes = text.len(),
            "record dead-lettered"
        );
        headers.insert(headers::REASON, reason.as_str());
        headers.insert(headers::DETAIL, detail.as_str());
        headers.insert(headers::STAGE, "extract");
        let payload = if text.len() > DEAD_LETTER_KEEP {
            headers.insert(headers::TRUNCATED, text.len().to_string().as_str());
            text.slice(..DEAD_LETTER_KEEP)
        } else {
            text.clone()
        };
        // Stored before the page's records are acknowledged, not with them: rare, and the
        // first of a flow may have to wait for its dead-letter stream to be made.
        let ack = store_dead_letter(&self.js, &self.names, headers, payload).await?;
        Ok((ack.duplicate, reason))
    }

    /// The stored cursor and its revision in the bucket (0 when it was never written), which
    /// the pass's cursor writes compare against.
    async fn stored_cursor(&self) -> anyhow::Result<(Option<String>, u64)> {
        Ok(match self.store.entry(CURSOR_KEY).await? {
            Some(entry) => {
                let cursor = (entry.operation == kv::Operation::Put)
                    .then(|| String::from_utf8(entry.value.to_vec()).ok())
                    .flatten()
                    .filter(|c| !c.is_empty());
                (cursor, entry.revision)
            }
            None => (None, 0),
        })
    }

    /// One pass over the source. `full` ignores and keeps the stored cursor.
    async fn pass(
        &self,
        source: &mut Source,
        lease: Option<&Lease>,
        full: bool,
    ) -> anyhow::Result<RefreshReport> {
        let revision = if full {
            source.begin(None);
            None
        } else {
            let (cursor, revision) = self.stored_cursor().await?;
            source.begin(cursor.as_deref());
            Some(revision)
        };
        self.read_pass(source, lease, revision).await
    }

    /// Runs the backfill `request` (the window of the source's cursor field it names) while
    /// holding the lease, leaving the live cursor alone, and records its outcome.
    async fn backfill(&self, source: &mut Source, lease: &Lease, request: BackfillRecord) {
        let window = Window {
            from: request.from.clone(),
            to: request.to.clone(),
        };
        let outcome = match source.begin_window(&window) {
            Ok(()) => self.read_pass(source, Some(lease), None).await,
            Err(e) => Err(e),
        };
        let mut record = request;
        match outcome {
            Ok(report) => {
                record.state = BackfillState::Done;
                record.read = report.read;
                record.published = report.published;
                record.duplicates = report.duplicates;
                record.dead_lettered = report.dead_lettered;
                tracing::info!(id = %record.id, read = report.read, published = report.published, duplicates = report.duplicates, "backfill done");
            }
            Err(e) => {
                let why = super::redact::log_safe_chain(&e);
                tracing::warn!(id = %record.id, error = %why, "backfill failed");
                record.state = BackfillState::Failed;
                record.message = Some(why);
            }
        }
        if let Err(e) = write_backfill(&self.store, &record).await {
            tracing::warn!(id = %record.id, error = %e, "backfill outcome not recorded");
        }
    }

    /// The pass `source` was begun for. `revision` is the stored cursor's revision when the
    /// pass moves the cursor; None keeps it (a full refresh, a backfill window).
    async fn read_pass(
        &self,
        source: &mut Source,
        lease: Option<&Lease>,
        revision: Option<u64>,
    ) -> anyhow::Result<RefreshReport> {
        // Without a cursor field, a polled pass's records are newer than every earlier pass's.
        let pass_version = super::clock::now_unix_ms() as u64 * 1_000_000;
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
        let publisher = self.publish_pages(pages_rx, lease, revision, pass_version);
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
    /// `IN_FLIGHT_PAGES` of them waiting for acks, and stores the cursor of the newest page
    /// whose acks (and all earlier pages' acks) arrived, by compare-and-set on `revision`:
    /// when someone else wrote the cursor meanwhile (a `flowplane.io/cursor` or reset-cursor
    /// request), the pass stops there and the next one starts from their value. One cursor
    /// write runs at a time beside the publishing (a write per page, awaited in line, held
    /// the next page back); pages that settle meanwhile are covered by the next write.
    async fn publish_pages(
        &self,
        mut pages: mpsc::Receiver<Result<Option<Page>, CallError>>,
        lease: Option<&Lease>,
        mut revision: Option<u64>,
        pass_version: u64,
    ) -> anyhow::Result<RefreshReport> {
        let mut report = RefreshReport::default();
        let mut in_flight = FuturesOrdered::new();
        // Set when the lease is lost: earlier pages still settle, but the new holder owns
        // the cursor from now on.
        let mut lease_lost = false;
        let mut failure: Option<CallError> = None;
        let mut fetching = true;
        // The newest settled page's cursor not yet written, and the write under way.
        let mut pending_cursor: Option<String> = None;
        let mut writing: Option<BoxFuture<'static, CursorWrite>> = None;
        while fetching || !in_flight.is_empty() || writing.is_some() || pending_cursor.is_some() {
            if writing.is_none()
                && let Some(cursor) = pending_cursor.take()
            {
                if !lease_lost && let Some(expected) = revision {
                    writing = Some(self.write_cursor(cursor, expected));
                }
                continue;
            }
            tokio::select! {
                biased;
                settled = in_flight.next(), if !in_flight.is_empty() => {
                    let settled: Option<(u64, Option<String>, anyhow::Result<Settled>)> = settled;
                    let Some((n, cursor, acks)) = settled else { continue };
                    let Settled { stored, duplicates, dead } = match acks {
                        Ok(settled) => settled,
                        Err(e) => {
                            // The pages settled before the failure keep their cursor.
                            if let Some(write) = writing.take() {
                                revision = self.cursor_written(write.await);
                            }
                            if !lease_lost
                                && let (Some(expected), Some(cursor)) = (revision, pending_cursor.take())
                            {
                                self.cursor_written(self.write_cursor(cursor, expected).await);
                            }
                            return Err(e);
                        }
                    };
                    report.read += n;
                    report.published += stored;
                    report.duplicates += duplicates;
                    report.dead_lettered += dead.len() as u64;
                    self.metrics.read.inc_by(n);
                    self.metrics.duplicates.inc_by(duplicates);
                    for reason in &dead {
                        self.metrics.dead_letter(*reason);
                    }
                    // A record dead-lettered here was read and is in the dead-letter stream:
                    // read = delivered + dead letters holds for it too.
                    self.progress.add_read(dead.len() as u64);
                    self.progress.add_dead_lettered(dead.len() as u64);
                    // The flow's figure counts what entered the stream: an incremental pass
                    // re-reads the rows of its cursor's timestamp (the filter is inclusive),
                    // and JetStream drops those repeats, so read stays delivered + dead
                    // letters + in flight; the repeats are counted as duplicates.
                    self.progress.add_read(stored);
                    self.progress.add_duplicates(duplicates);
                    if cursor.is_some() && revision.is_some() {
                        pending_cursor = cursor;
                    }
                }
                written = async { writing.as_mut().expect("a cursor write").await }, if writing.is_some() => {
                    writing = None;
                    revision = self.cursor_written(written);
                    if revision.is_none() {
                        pending_cursor = None;
                        fetching = false;
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
                    let n = (page.records.len() + page.refused.len()) as u64;
                    let acks = self.publish(page.records, page.refused, pass_version).await?;
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

    /// Writes `cursor` by compare-and-set on revision `expected` (0: the first cursor).
    fn write_cursor(&self, cursor: String, expected: u64) -> BoxFuture<'static, CursorWrite> {
        let store = self.store.clone();
        Box::pin(async move {
            let value = Bytes::from(cursor.clone());
            let written = if expected == 0 {
                store
                    .create(CURSOR_KEY, value)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                store
                    .update(CURSOR_KEY, value, expected)
                    .await
                    .map_err(|e| e.to_string())
            };
            (cursor, written)
        })
    }

    /// The cursor's new revision after a write, or None when someone else wrote it first
    /// (the pass stops writing it; the next pass starts from their value).
    fn cursor_written(&self, (cursor, written): CursorWrite) -> Option<u64> {
        match written {
            Ok(next) => {
                self.progress.set_cursor(Some(cursor));
                Some(next)
            }
            Err(e) => {
                tracing::info!(error = %e, "the cursor changed under this pass; the next pass starts from it");
                None
            }
        }
    }

    /// Extracts while holding the lease, until `shutdown`.
    pub async fn run(
        &self,
        lease: Lease,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // Opened by the first lease holder pass (an event source ensures its capture then), and
        // again after a failure to open it.
        let mut source: Option<Source> = None;
        let poll =
            parse_duration(&self.config.source.poll_interval).unwrap_or(Duration::from_secs(60));
        let events = self.config.source.sync_mode == SyncMode::Events;
        let full = self.config.source.sync_mode == SyncMode::FullRefresh;
        let mut failures = 0u32;
        // Whether this loop set the progress record's `blocked` (and so clears it).
        let mut blocked_by_source = false;
        let backoff =
            super::resilience::Backoff::new(&self.config.source.endpoint.resilience.retry);
        while !*shutdown.borrow() {
            let wait = if lease.acquire().await {
                let opened = match source.take() {
                    Some(opened) => Ok(opened),
                    None => self
                        .open_source()
                        .await
                        .map_err(|e| e.context("opening the source")),
                };
                let pass = match opened {
                    Ok(mut opened) => {
                        let pass = self.pass(&mut opened, Some(&lease), full).await;
                        if pass.is_ok()
                            && !events
                            && let Ok(Some(request)) = pending_backfill(&self.store).await
                        {
                            self.backfill(&mut opened, &lease, request).await;
                        }
                        // A failing capture consumer is ensured again (its stream may have
                        // been removed); an HTTP source keeps its client and circuit breaker.
                        if pass.is_ok() || !matches!(opened, Source::Nats(_)) {
                            source = Some(opened);
                        }
                        pass
                    }
                    Err(e) => Err(e),
                };
                // A source refusing the binding (401, 403, 404 of the collection) is the
                // binding's problem: the worker says so on /readyz until a pass succeeds. So is
                // a source whose links lead to another origin, or whose binding's quota is
                // used up: the flow's status shows those too (sync.blocked).
                let (refused, off_origin) = match &pass {
                    Err(e) => e
                        .chain()
                        .find_map(|cause| match cause.downcast_ref::<CallError>() {
                            Some(CallError::Refused { status, reason }) => Some((
                                Some(format!("source refuses access: HTTP {status}: {reason}")),
                                None,
                            )),
                            Some(CallError::OffOrigin(why)) => {
                                let why = format!("source link refused: {why}");
                                Some((Some(why.clone()), Some(why)))
                            }
                            Some(CallError::OverQuota(why)) => {
                                let why = format!("source: {why}");
                                Some((Some(why.clone()), Some(why)))
                            }
                            _ => None,
                        })
                        .unwrap_or_default(),
                    Ok(_) => (None, None),
                };
                self.metrics.set_not_ready("source", refused);
                if off_origin.is_some() || blocked_by_source {
                    blocked_by_source = off_origin.is_some();
                    self.progress.set_blocked(off_origin);
                }
                match pass {
                    Ok(report) => {
                        failures = 0;
                        // An event pass is one fetch, several a second under traffic: its
                        // figures are in the metrics, not in an info line each.
                        if report.published > 0 && !events {
                            tracing::info!(
                                read = report.read,
                                published = report.published,
                                duplicates = report.duplicates,
                                "extraction pass"
                            );
                        } else if report.read > 0 {
                            tracing::debug!(
                                read = report.read,
                                published = report.published,
                                duplicates = report.duplicates,
                                "events forwarded"
                            );
                        }
                        if events { Duration::ZERO } else { poll }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(
                            error = super::redact::log_safe_chain(&e),
                            "extraction pass failed; retrying from the stored cursor"
                        );
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
                // A backfill requested meanwhile runs now, not after the poll interval.
                if lease.acquire().await
                    && !events
                    && matches!(pending_backfill(&self.store).await, Ok(Some(_)))
                {
                    break;
                }
            }
        }
        lease.release().await;
        Ok(())
    }

    /// The CronJob's full refresh: re-reads the whole source once and publishes it; unchanged
    /// records are dropped by deduplication (and by the target's version check).
    pub async fn full_refresh(&self) -> anyhow::Result<RefreshReport> {
        let mut source = self.open_source().await?;
        self.pass(&mut source, None, true).await
    }

    async fn open_source(&self) -> anyhow::Result<Source> {
        let retention = parse_duration(&self.config.delivery.retention)
            .map_err(|e| anyhow::anyhow!("delivery.retention: {e}"))?;
        let quota = SharedQuota::open(
            &self.js,
            &self.config.namespace,
            &self.config.source.endpoint,
        )
        .await?
        .map(Arc::new);
        Source::open(
            &self.config.source,
            &self.names,
            &self.config.nats_access(),
            retention,
            self.metrics.clone(),
            &self.config.limits,
            quota,
        )
        .await
        .map(|source| source.with_envelope_fields(self.envelope_fields()))
    }
}

/// Where a record came from, which decides its identity.
#[derive(Clone, Copy, Debug)]
enum Origin<'a> {
    /// A pass over a polled source (OData, REST, files). A record without a cursor-field value
    /// gets the pass's version, newer than every earlier pass's.
    Pass { version: u64 },
    /// An event as the capture stream stored it.
    Event {
        /// The publisher's own `Nats-Msg-Id`, when it set one.
        msg_id: Option<&'a str>,
        /// Its sequence in the capture stream.
        sequence: u64,
        /// When the capture stream stored it, Unix nanoseconds.
        stored_unix_ns: u64,
    },
}

/// What the headers of every record of one page share: the partition subjects, and when the
/// page was read (one clock read a page, not one a record).
struct PageHeaders {
    subjects: Vec<Subject>,
    read_at: i64,
}

/// A record's identity: its `Nats-Msg-Id`, on which the flow's stream drops a copy of a record
/// it already holds, and its version, by which the target orders a key's changes.
///
/// A polled record is `key@version`: the same change read twice is one record. An event is
/// itself: the publisher's `Nats-Msg-Id`, else `key@version` when the flow has a cursor field
/// (the source's own version of the key), else its place in the capture stream. Never a value
/// that several changes of a key share, or a newer event would be dropped as a copy of an
/// older one.
fn identity(
    key: Option<&str>,
    cursor_version: Option<u64>,
    origin: Origin<'_>,
    content: &[u8],
) -> (String, u64) {
    match origin {
        Origin::Pass { version } => {
            let version = cursor_version.unwrap_or(version);
            let id = match key {
                Some(key) => format!("{key}@{version}"),
                // No key: deduplicate by content instead.
                None => format!("content-{:016x}@{version}", fnv64(content)),
            };
            (id, version)
        }
        Origin::Event {
            msg_id,
            sequence,
            stored_unix_ns,
        } => {
            let version = cursor_version.unwrap_or_else(|| event_version(sequence, stored_unix_ns));
            let id = match (msg_id.filter(|id| !id.is_empty()), key, cursor_version) {
                (Some(id), _, _) => id.to_string(),
                // The source's own version of the key: a second event with it is the same
                // change (the target would not apply it either), e.g. a publisher's retry.
                (None, Some(key), Some(version)) => format!("{key}@{version}"),
                // The sequence alone would repeat if the capture stream were made anew.
                _ => format!("event-{sequence}@{stored_unix_ns}"),
            };
            (id, version)
        }
    }
}

/// The version of an event without a cursor field: when the capture stream stored it, in Unix
/// nanoseconds whose last three digits are the stream sequence's (so two events stored in the
/// same microsecond still follow the stream's order). It grows with every newer event, also
/// across a capture stream made anew (where a bare sequence would start again at 1 and lose to
/// every version the target holds), and it is on the scale of the pass versions events had
/// before they were captured, so the target's stored versions stay comparable on upgrade.
fn event_version(sequence: u64, stored_unix_ns: u64) -> u64 {
    stored_unix_ns / 1000 * 1000 + sequence % 1000
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(msg_id: Option<&str>, sequence: u64, stored_unix_ns: u64) -> Origin<'_> {
        Origin::Event {
            msg_id,
            sequence,
            stored_unix_ns,
        }
    }

    /// The measured bug: events of one key read in one endless pass all had `key@<pass>` and
    /// JetStream dropped every one after the first.
    #[test]
    fn every_event_of_a_key_has_its_own_id_and_a_newer_version() {
        let base = 1_790_000_000_000_000_000;
        let mut ids = std::collections::BTreeSet::new();
        let mut last = 0;
        // Three events of one key: two in the same microsecond, one later.
        for (sequence, stored) in [(41, base), (42, base + 300), (43, base + 5_000)] {
            let (id, version) = identity(Some("4711"), None, event(None, sequence, stored), b"");
            assert!(ids.insert(id), "a fresh id for every event");
            assert!(version > last, "version {version} after {last}");
            last = version;
        }
    }

    #[test]
    fn an_event_keeps_the_publishers_id_so_its_redelivery_is_a_duplicate() {
        let (first, v1) = identity(Some("k"), None, event(Some("evt-7"), 10, 1_000_000), b"");
        let (again, v2) = identity(Some("k"), None, event(Some("evt-7"), 11, 2_000_000), b"");
        assert_eq!((first.as_str(), again.as_str()), ("evt-7", "evt-7"));
        assert!(v2 > v1);
        // An empty header is no id.
        let (id, _) = identity(Some("k"), None, event(Some(""), 12, 3_000_000), b"");
        assert_eq!(id, "event-12@3000000");
    }

    #[test]
    fn an_event_with_a_cursor_field_is_ordered_by_it() {
        let (id, version) = identity(Some("k"), Some(77), event(None, 5, 9_000_000), b"");
        assert_eq!((id.as_str(), version), ("k@77", 77));
        // The next change of the key is a new record; a publisher's id still wins.
        let (id, version) = identity(Some("k"), Some(78), event(None, 6, 9_500_000), b"");
        assert_eq!((id.as_str(), version), ("k@78", 78));
        let (id, _) = identity(Some("k"), Some(78), event(Some("e-9"), 7, 9_600_000), b"");
        assert_eq!(id, "e-9");
        // No key to name it by: its place in the capture stream.
        let (id, _) = identity(None, Some(78), event(None, 8, 9_700_000), b"");
        assert_eq!(id, "event-8@9700000");
    }

    #[test]
    fn an_event_version_survives_a_new_capture_stream_and_the_old_pass_versions() {
        let old_pass = 1_790_000_000_000 * 1_000_000; // ms * 10^6, as before capture
        let later = old_pass + 1_000_000_000;
        // A capture stream made anew starts at sequence 1; still newer than before.
        assert!(event_version(900_000, old_pass + 1) < event_version(1, later));
        assert_eq!(event_version(1_234, 5_678_999), 5_678_234);
    }

    #[test]
    fn a_polled_record_is_its_key_at_its_version() {
        let pass = Origin::Pass { version: 1_000 };
        assert_eq!(
            identity(Some("1/10"), Some(5), pass, b"{}"),
            ("1/10@5".to_string(), 5)
        );
        assert_eq!(
            identity(Some("1/10"), None, pass, b"{}"),
            ("1/10@1000".to_string(), 1_000)
        );
        let (a, _) = identity(None, None, pass, br#"{"a":1}"#);
        let (b, _) = identity(None, None, pass, br#"{"a":2}"#);
        assert_ne!(a, b);
        assert!(a.starts_with("content-"));
    }
}
