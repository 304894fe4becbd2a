//! Consumption: fetch a batch from the flow's shared durable consumer, map and validate each
//! record, dead-letter the ones that cannot be delivered, deliver the rest in one bulk upsert,
//! then ack. A transient delivery failure NAKs the batch with a full-jitter delay; a record
//! that has used up maxDeliver is dead-lettered (with its last error), and one delivered once
//! more than maxDeliver (its deliveries ended without an outcome) is dead-lettered unprocessed:
//! JetStream itself never stops delivering a record, so none is dropped without a trace.
//!
//! Ordering: several workers (and several loops per worker) take batches from the same
//! consumer, and redeliveries come late, so batches can reach the target out of order. Each
//! record therefore carries its source version and the target applies it only when it is
//! newer than what it holds (see `connectors::target`). We chose this over partition leases
//! with ordered consumers because it also survives the case partition leases cannot: a paused
//! worker that wakes up after losing its lease and still sends its old batch.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::StatusCode;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv};
use futures::StreamExt;
use tokio::sync::watch;

use super::approval::Approvals;
use super::connectors::target::{Outgoing, Target};
use super::dead_letter::dead_letter;
use super::http::CallError;
use super::key_freshness::KeyFreshness;
use super::lock;
use super::metrics::{KeyLabel, Metrics, SinceLabel};
use super::progress::{Outcome, ProgressDeltas};
use super::quality::{self, Facts, Judgement};
use super::redact::log_safe;
use super::resilience::Backoff;
use super::transform::{Plan, Reason, Record};
use crate::api::integration_flow::ApprovalAction;
use crate::queue::QueueNames;
use crate::queue::approvals::Route;
use crate::queue::headers::{Envelope, trace_id_of};

/// Everything a consume loop needs.
pub struct Consumer {
    /// JetStream of the flow.
    pub js: jetstream::Context,
    /// The flow's names.
    pub names: QueueNames,
    /// The compiled mapping.
    pub plan: Arc<Plan>,
    /// Where records go.
    pub target: Arc<Target>,
    /// Records per fetch and per bulk request.
    pub batch_size: usize,
    /// Bytes of records per fetch at most (`limits.fetchMaxBytes`): a batch of large records
    /// is smaller in count rather than larger in memory.
    pub fetch_max_bytes: usize,
    /// Deliveries before a record is dead-lettered.
    pub max_deliver: i64,
    /// Redelivery delay after transient failures.
    pub redelivery: Backoff,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Progress to flush.
    pub progress: Arc<ProgressDeltas>,
    /// The flow's bucket: its progress record says which records have an outcome already.
    pub store: kv::Store,
    /// Approval routing, when the flow has `approval`.
    pub approval: Option<Arc<Approvals>>,
    /// The flow's ack wait: a batch held while the target refuses access is kept from
    /// redelivery by progress acks well within it.
    pub ack_wait: Duration,
    /// Ends a hold at shutdown (the held records are NAKed and come back).
    pub shutdown: watch::Receiver<bool>,
    /// Freshness per value of the freshnessBy field, when the flow has one.
    pub key_freshness: Option<Arc<KeyFreshness>>,
    /// Stream sequences the loops of this worker are processing: a copy of one of them
    /// delivered to another loop is left to the first.
    pub held: Mutex<HashSet<u64>>,
}

/// A loop's records of a batch in [`Consumer::held`], until dropped.
struct Holding<'c> {
    held: &'c Mutex<HashSet<u64>>,
    sequences: Vec<u64>,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut held = lock(self.held);
        for sequence in &self.sequences {
            held.remove(sequence);
        }
    }
}

/// A record mapped and ready to deliver.
struct Ready<'m> {
    message: usize,
    /// Where JetStream has it, read once from its message.
    delivery: Option<Delivery>,
    range: std::ops::Range<usize>,
    /// Its key, version and times, read once from its message.
    envelope: Envelope<'m>,
    /// What the batch quality rules need to know of it.
    facts: Facts,
}

/// The record's key, version and times (see [`Envelope::of`]).
fn envelope(message: &jetstream::Message) -> Envelope<'_> {
    Envelope::of(message.headers.as_ref())
}

/// What a message's reply subject says of its delivery. Parsed once per message of a batch:
/// each parse reads the whole subject, and three per record were 3% of the worker's samples.
#[derive(Clone, Copy)]
struct Delivery {
    /// Times JetStream delivered it, this time included.
    delivered: i64,
    /// Its sequence in the flow's stream.
    stream_sequence: u64,
}

/// `None` for a message that is not of the flow's stream (no ack reply to read).
fn delivery_of(message: &jetstream::Message) -> Option<Delivery> {
    let info = message.info().ok()?;
    Some(Delivery {
        delivered: info.delivered,
        stream_sequence: info.stream_sequence,
    })
}

impl Consumer {
    /// Consumes until `shutdown`.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut consumer: Option<PullConsumer> = None;
        let mut buffer = Vec::with_capacity(self.batch_size * 512);
        while !*shutdown.borrow() {
            let open = self.target.http.breaker.open_remaining();
            if !open.is_zero() {
                // The target is down: stop fetching instead of burning deliveries.
                tokio::select! {
                    _ = tokio::time::sleep(open) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let pull = match &consumer {
                Some(c) => c.clone(),
                None => match self.open().await {
                    Ok(c) => {
                        consumer = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the flow's consumer; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let fetched = tokio::select! {
                fetched = self.fetch(&pull) => fetched,
                _ = shutdown.changed() => break,
            };
            match fetched {
                Ok(messages) if messages.is_empty() => {}
                Ok(messages) => self.process(&messages, &mut buffer).await,
                Err(e) => {
                    tracing::warn!(error = %e, "fetch failed; retrying");
                    consumer = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn open(&self) -> anyhow::Result<PullConsumer> {
        let stream = self.js.get_stream(&self.names.stream).await?;
        stream
            .get_consumer(&self.names.consumer)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// One pull request: up to `batch_size` records and `fetch_max_bytes` bytes, waiting 1 s
    /// at most for the first. Hand-written over `request_batch` rather than async-nats'
    /// `fetch()`: its batch ends at any 409 status, and a replicated consumer (R3/R5) sends
    /// its records only once their delivery has quorum while the server's "409 Batch
    /// Completed" (request filled in count with bytes to spare) and "409 Message Size Exceeds
    /// MaxBytes" go out at once, so they overtake the records they close (nats-server
    /// `consumer.go`, `deliverMsg` queues for replication, the 409s are sent directly). Here a
    /// 409 that says how many records of the request are still unsent waits for the others.
    async fn fetch(&self, consumer: &PullConsumer) -> anyhow::Result<Vec<jetstream::Message>> {
        const EXPIRES: Duration = Duration::from_secs(1);
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await?;
        consumer
            .request_batch(
                BatchConfig {
                    batch: self.batch_size,
                    expires: Some(EXPIRES),
                    no_wait: true,
                    // Room for one record's subject, ack reply and headers on top: the server
                    // never sends a record larger than the whole request, so a record of
                    // `limits.maxRecordBytes` (at most fetchMaxBytes) must still fit.
                    max_bytes: self.fetch_max_bytes + ENVELOPE_BYTES,
                    ..Default::default()
                },
                inbox.into(),
            )
            .await?;
        // As async-nats: the server's own end of the request (408) comes by `EXPIRES`.
        let deadline = tokio::time::Instant::now() + EXPIRES + Duration::from_secs(5);
        let mut expected = self.batch_size;
        let mut messages = Vec::with_capacity(self.batch_size);
        while messages.len() < expected {
            let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await else {
                break;
            };
            match message.status {
                None | Some(StatusCode::OK) => messages.push(jetstream::Message {
                    message,
                    context: self.js.clone(),
                }),
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // No records (404) or the request expired (408): the server sends these after
                // the replicated records it answers.
                Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) => break,
                Some(status) => match unsent_of_request(&message) {
                    Some(unsent) if status == StatusCode::REQUEST_TERMINATED => {
                        expected = self.batch_size.saturating_sub(unsent);
                    }
                    _ if messages.is_empty() => {
                        return Err(anyhow::anyhow!(
                            "pull request ended: {status} {:?}",
                            message.description
                        ));
                    }
                    _ => break,
                },
            }
        }
        Ok(messages)
    }

    /// The delivery count of a record delivered more than `max_deliver` times: the consumer
    /// lets JetStream redeliver without limit (see `queue::ensure_queue`), so a record whose
    /// deliveries all ended without an ack, NAK or dead letter (the worker holding it crashed,
    /// or overran ackWait) comes back once more and is dead-lettered here, unprocessed.
    fn delivered_too_often(&self, delivery: Option<Delivery>) -> Option<i64> {
        let delivered = delivery?.delivered;
        (delivered > self.max_deliver).then_some(delivered)
    }

    /// Which records of the batch are answered here, not sent, and the records this loop
    /// holds until the batch is done. JetStream delivers a record again when an ack was lost
    /// (the consumer's leader failed over) or its ackWait ran out, and a failover can bring
    /// the copies out of order, a later one before an earlier one:
    /// - a record with an outcome here is acked, whichever copy it is;
    /// - a record another loop of this worker holds is left to that loop's answer;
    /// - a copy delivered more than once is looked up in the shared record (another worker's
    ///   outcome) and acked if there; while that record cannot be read it is held (NAKed for
    ///   an ackWait) instead: sending it could send it twice.
    async fn answer_known<'c>(
        &'c self,
        messages: &[jetstream::Message],
        deliveries: &[Option<Delivery>],
    ) -> (Vec<bool>, Holding<'c>) {
        let mut answered = vec![false; messages.len()];
        let mut holding = Holding {
            held: &self.held,
            sequences: Vec::with_capacity(messages.len()),
        };
        let mut settled = Vec::new();
        let mut again = Vec::new();
        {
            let mut held = lock(&self.held);
            for (i, d) in deliveries.iter().enumerate() {
                let Some(d) = d else { continue };
                if self.progress.settled_here(d.stream_sequence) {
                    settled.push(i);
                } else if held.insert(d.stream_sequence) {
                    holding.sequences.push(d.stream_sequence);
                    if d.delivered > 1 {
                        again.push((i, d.stream_sequence));
                    }
                } else {
                    answered[i] = true;
                }
            }
        }
        if !again.is_empty() {
            let sequences: Vec<u64> = again.iter().map(|&(_, s)| s).collect();
            match self
                .progress
                .settled_in_record(&self.store, &sequences)
                .await
            {
                Some(known) => settled.extend(
                    again
                        .iter()
                        .zip(known)
                        .filter_map(|(&(i, _), known)| known.then_some(i)),
                ),
                None => {
                    for &(i, _) in &again {
                        answered[i] = true;
                        let _ = messages[i]
                            .ack_with(AckKind::Nak(Some(self.ack_wait)))
                            .await;
                    }
                    tracing::warn!(
                        records = again.len(),
                        "records delivered again whose outcome cannot be read yet; held, not sent"
                    );
                }
            }
        }
        for &i in &settled {
            answered[i] = true;
            let _ = messages[i].ack().await;
        }
        if !settled.is_empty() {
            tracing::info!(
                records = settled.len(),
                "records delivered again after their outcome was recorded; acked, not sent again"
            );
        }
        (answered, holding)
    }

    /// Records `message`'s outcome in the flow's progress, once per record.
    fn settle(&self, message: &jetstream::Message, outcome: Outcome) {
        self.settle_delivery(delivery_of(message), outcome);
    }

    /// [`Consumer::settle`] of a message whose delivery is read already.
    fn settle_delivery(&self, delivery: Option<Delivery>, outcome: Outcome) {
        match delivery {
            Some(d) => self.progress.settle(d.stream_sequence, outcome),
            // Not a message of the flow's stream (no ack reply to read): counted as it is.
            None => match outcome {
                Outcome::Delivered => self.progress.add_delivered(1),
                Outcome::DeadLettered => self.progress.add_dead_lettered(1),
                Outcome::Parked => {}
            },
        }
    }

    /// Maps, validates, routes and delivers one batch.
    async fn process(&self, messages: &[jetstream::Message], buffer: &mut Vec<u8>) {
        let started = Instant::now();
        buffer.clear();
        let mut ready = Vec::with_capacity(messages.len());
        // Set when a record broke a quality rule whose action is FailBatch.
        let mut failed_batch: Option<String> = None;
        let mut facts = Facts::default();
        let deliveries: Vec<Option<Delivery>> = messages.iter().map(delivery_of).collect();
        // Released when the batch is done: each of its records has its outcome or was NAKed.
        let (answered, _holding) = self.answer_known(messages, &deliveries).await;
        for (index, message) in messages.iter().enumerate() {
            if answered[index] {
                continue;
            }
            if let Some(delivered) = self.delivered_too_often(deliveries[index]) {
                self.reject(
                    message,
                    Reason::MaxDeliveries,
                    "consume",
                    &format!(
                        "{} deliveries ended without an outcome (a worker stopped or overran ackWait while holding the record)",
                        delivered - 1
                    ),
                )
                .await;
                continue;
            }
            let record: Record = match serde_json::from_slice(&message.payload) {
                Ok(record) => record,
                Err(e) => {
                    self.reject(message, Reason::Undecodable, "decode", &e.to_string())
                        .await;
                    continue;
                }
            };
            let start = buffer.len();
            match self.plan.map_record(&record, buffer, &mut facts) {
                Ok(alerts) => {
                    if alerts.0 > 0 {
                        self.metrics.quality_alerts.inc_by(u64::from(alerts.0));
                    }
                    tracing::debug!(
                        trace_id = trace_id_of(message.headers.as_ref()),
                        stage = "validate",
                        "record mapped"
                    );
                    ready.push(Ready {
                        message: index,
                        delivery: deliveries[index],
                        range: start..buffer.len(),
                        envelope: envelope(message),
                        facts: std::mem::take(&mut facts),
                    });
                }
                Err(rejection) => {
                    buffer.truncate(start);
                    if rejection.fails_batch && failed_batch.is_none() {
                        failed_batch = Some(format!(
                            "batch failed: record {}: {}",
                            envelope(message).key,
                            rejection.detail
                        ));
                    }
                    let stage = if rejection.reason == Reason::UnmappedCode {
                        "translate"
                    } else {
                        "validate"
                    };
                    self.reject(message, rejection.reason, stage, &rejection.detail)
                        .await;
                }
            }
        }
        if !ready.is_empty() && (failed_batch.is_some() || !self.plan.batch_rules().is_empty()) {
            ready = self.judge(messages, ready, failed_batch).await;
        }
        let escalate = match &self.approval {
            Some(approvals) if !ready.is_empty() => {
                self.route(approvals, messages, buffer, &mut ready).await
            }
            _ => Vec::new(),
        };
        if !ready.is_empty() {
            self.deliver(&self.target, messages, buffer, &ready).await;
        }
        if !escalate.is_empty() {
            match self.approval.as_ref().and_then(|a| a.escalate.as_ref()) {
                Some(target) => self.deliver(target, messages, buffer, &escalate).await,
                None => {
                    for r in &escalate {
                        self.reject(
                            &messages[r.message],
                            Reason::TargetRejected,
                            "approval",
                            "delta escalated but the flow has no approval.escalateTo",
                        )
                        .await;
                    }
                }
            }
        }
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Batch quality rules (see [`super::quality`]): dead-letters what they refuse (all of the
    /// batch when a FailBatch rule failed) and returns what may be delivered.
    async fn judge<'m>(
        &self,
        messages: &'m [jetstream::Message],
        ready: Vec<Ready<'m>>,
        failed_batch: Option<String>,
    ) -> Vec<Ready<'m>> {
        let judgement = match failed_batch {
            Some(detail) => Judgement {
                failed: Some(detail),
                ..Judgement::default()
            },
            None => {
                let records: Vec<(&Facts, u64)> = ready
                    .iter()
                    .map(|r| (&r.facts, r.envelope.version))
                    .collect();
                quality::judge(self.plan.batch_rules(), &records)
            }
        };
        if judgement.alerts > 0 {
            self.metrics
                .quality_alerts
                .inc_by(u64::from(judgement.alerts));
        }
        if let Some(detail) = judgement.failed {
            tracing::warn!(
                records = ready.len(),
                "batch failed a quality rule; none of it is delivered (the rule and record are in the dead letters)"
            );
            for r in &ready {
                self.reject(
                    &messages[r.message],
                    Reason::QualityRule,
                    "quality",
                    &detail,
                )
                .await;
            }
            return Vec::new();
        }
        let mut kept = Vec::with_capacity(ready.len());
        for (r, verdict) in ready.into_iter().zip(judgement.dead_letter) {
            match verdict {
                Some(detail) => {
                    self.reject(
                        &messages[r.message],
                        Reason::QualityRule,
                        "quality",
                        &detail,
                    )
                    .await
                }
                None => kept.push(r),
            }
        }
        kept
    }

    /// Approval routing: keeps the Apply records in `ready`, parks the Review ones (acked once
    /// parked, NAKed if parking failed) and returns the Escalate ones.
    async fn route<'m>(
        &self,
        approvals: &Approvals,
        messages: &'m [jetstream::Message],
        buffer: &[u8],
        ready: &mut Vec<Ready<'m>>,
    ) -> Vec<Ready<'m>> {
        let mut apply = Vec::with_capacity(ready.len());
        let mut escalate = Vec::new();
        for r in ready.drain(..) {
            let data = &buffer[r.range.clone()];
            let message = &messages[r.message];
            let (action, delta) = approvals.evaluate(data);
            let trace = trace_id_of(message.headers.as_ref());
            tracing::debug!(
                trace_id = trace,
                stage = "approval",
                ?action,
                "delta routed"
            );
            match action {
                ApprovalAction::Apply | ApprovalAction::Escalate => {
                    let route = if action == ApprovalAction::Apply {
                        Route::Applied
                    } else {
                        Route::Escalated
                    };
                    match approvals
                        .record_ruled(message, r.envelope.version, delta, route)
                        .await
                    {
                        Ok(()) if route == Route::Applied => apply.push(r),
                        Ok(()) => escalate.push(r),
                        Err(e) => {
                            tracing::warn!(trace_id = trace, error = %e, "route not recorded; redelivering");
                            let _ = message
                                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                                .await;
                        }
                    }
                }
                ApprovalAction::Review => {
                    match approvals
                        .park(message, data, r.envelope.version, delta)
                        .await
                    {
                        Ok(id) => {
                            tracing::info!(trace_id = trace, stage = "approval", review = %id, "delta parked for review");
                            self.settle(message, Outcome::Parked);
                            // Confirmed ack: a redelivery after the review was carried out
                            // would park the record a second time.
                            if let Err(e) = message.double_ack().await {
                                tracing::warn!(trace_id = trace, error = %e, "ack of a parked record not confirmed");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(trace_id = trace, error = %e, "parking failed; redelivering");
                            let _ = message
                                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                                .await;
                        }
                    }
                }
            }
        }
        *ready = apply;
        escalate
    }

    /// Dead-letters one record; if even that fails, NAKs it so it comes back.
    pub(crate) async fn reject(
        &self,
        message: &jetstream::Message,
        reason: Reason,
        stage: &str,
        detail: &str,
    ) {
        let trace_id = trace_id_of(message.headers.as_ref());
        // Keys and reasons only: the detail can quote record values, and is kept with the
        // record in the dead-letter stream (`flowplane dlq list`), not in the log.
        tracing::warn!(
            trace_id,
            key = envelope(message).key,
            reason = reason.as_str(),
            stage,
            "record dead-lettered"
        );
        match dead_letter(&self.js, &self.names, message, reason, stage, detail).await {
            Ok(()) => {
                self.metrics.dead_letter(reason);
                self.settle(message, Outcome::DeadLettered);
            }
            Err(e) => {
                tracing::warn!(trace_id, error = %e, "dead-lettering failed; redelivering");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }

    async fn deliver(
        &self,
        target: &Target,
        messages: &[jetstream::Message],
        buffer: &[u8],
        ready: &[Ready<'_>],
    ) {
        let outgoing: Vec<Outgoing<'_>> = ready
            .iter()
            .map(|r| Outgoing {
                key: r.envelope.key,
                version: r.envelope.version,
                data: &buffer[r.range.clone()],
            })
            .collect();
        let mut result = target.deliver(&outgoing).await;
        // The target refuses the binding, not these records: hold them (no delivery is used
        // up, nothing is dead-lettered) until it takes them again or the worker stops.
        // While the target refuses access, a transient answer (the breaker holding this loop
        // back while another loop makes the trial call) holds the batch too: otherwise each
        // trial would use up a delivery of every other loop's records.
        loop {
            match &result {
                Err(CallError::Refused { status, reason }) => {
                    let why = format!("target refuses access: HTTP {status}: {reason}");
                    if self.metrics.target_refused.set(1) == 0 {
                        tracing::warn!(
                            status,
                            reason,
                            records = ready.len(),
                            "target refuses access; holding the batch and retrying"
                        );
                    }
                    self.metrics.set_not_ready("target", Some(why.clone()));
                    self.progress.set_blocked(Some(why));
                }
                // Nothing was sent: the binding's quota is used up (or paused) for every
                // worker. Held the same way, and said the same way.
                Err(CallError::OverQuota(why)) => {
                    let why = format!("target: {why}");
                    if self.metrics.target_refused.set(1) == 0 {
                        tracing::warn!(
                            records = ready.len(),
                            "binding quota used up; holding the batch"
                        );
                    }
                    self.metrics.set_not_ready("target", Some(why.clone()));
                    self.progress.set_blocked(Some(why));
                }
                Err(CallError::Transient(_)) if self.metrics.target_refused.get() == 1 => {}
                _ => break,
            }
            if !self.hold(target, messages, ready).await {
                for r in ready {
                    let _ = messages[r.message]
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
                return;
            }
            result = target.deliver(&outgoing).await;
        }
        if !matches!(result, Err(CallError::Transient(_)))
            && self.metrics.target_refused.set(0) == 1
        {
            tracing::info!("target takes records again");
            self.metrics.set_not_ready("target", None);
            self.progress.set_blocked(None);
        }
        match result {
            Err(CallError::Refused { .. } | CallError::OverQuota(_)) => {
                unreachable!("held above")
            }
            Ok(outcome) => {
                let mut refused = vec![None; ready.len()];
                for rejected in outcome.rejected {
                    if let Some(slot) = refused.get_mut(rejected.index) {
                        *slot = Some(Ok(rejected.reason));
                    }
                }
                for retry in outcome.retry {
                    if let Some(slot) = refused.get_mut(retry.index) {
                        *slot = Some(Err((retry.reason, retry.after)));
                    }
                }
                let mut delivered = 0;
                let now_ms = super::clock::now_unix_ms();
                for (r, refusal) in ready.iter().zip(refused) {
                    let message = &messages[r.message];
                    match refusal {
                        Some(Ok(reason)) => {
                            self.delivery_failed(target);
                            self.reject(message, Reason::TargetRejected, "deliver", &reason)
                                .await
                        }
                        Some(Err((error, after))) => {
                            tracing::debug!(
                                trace_id = trace_id_of(message.headers.as_ref()),
                                stage = "deliver",
                                "target asked to send the record again later"
                            );
                            self.retry_later(target, message, &error, after).await;
                        }
                        None => {
                            tracing::debug!(
                                trace_id = trace_id_of(message.headers.as_ref()),
                                stage = "deliver",
                                "record delivered"
                            );
                            let _ = message.ack().await;
                            self.settle_delivery(r.delivery, Outcome::Delivered);
                            delivered += 1;
                            self.observe_delivered(&r.envelope, &buffer[r.range.clone()], now_ms);
                        }
                    }
                }
                self.metrics.delivered.inc_by(delivered);
                if delivered > 0 {
                    self.progress.delivered_at(now_ms / 1000);
                }
                self.metrics.last_success.set(now_ms / 1000);
            }
            Err(CallError::Permanent { status, .. }) if ready.len() > 1 => {
                // One bad record must not sink its batch: find it by sending one at a time.
                tracing::warn!(
                    status,
                    "target refused a batch; delivering its records one by one"
                );
                for r in ready {
                    Box::pin(self.deliver(target, messages, buffer, std::slice::from_ref(r))).await;
                }
            }
            Err(CallError::Permanent { status, body }) => {
                let message = &messages[ready[0].message];
                self.delivery_failed(target);
                self.reject(
                    message,
                    Reason::TargetRejected,
                    "deliver",
                    &format!("HTTP {status}: {body}"),
                )
                .await;
            }
            // A request elsewhere than the target's origin is never a record's fault either.
            Err(CallError::Transient(error) | CallError::OffOrigin(error)) => {
                // The error's first words (status or kind), never a body that may echo values.
                tracing::warn!(
                    error = log_safe(&error),
                    records = ready.len(),
                    "delivery failed; redelivering later"
                );
                for r in ready {
                    self.retry_later(target, &messages[r.message], &error.to_string(), None)
                        .await;
                }
            }
        }
    }

    /// Counts a record that `target` (the flow's or the escalation target) will never take.
    fn delivery_failed(&self, target: &Target) {
        self.metrics
            .count_delivery_failed(!std::ptr::eq(target, &*self.target));
    }

    /// A record reached the target at `now_ms`: its end-to-end latency, from its change at the
    /// source where the source gives one (else from when it was read), and the freshness of
    /// its freshnessBy value. Redriven records carry neither time and are not timed.
    fn observe_delivered(&self, envelope: &Envelope<'_>, mapped: &[u8], now_ms: i64) {
        let (since, from) = match envelope.changed_at {
            Some(ms) => ("change", Some(ms)),
            None => ("read", envelope.read_at),
        };
        if let Some(from) = from {
            self.metrics
                .end_to_end_seconds
                .get_or_create(&SinceLabel { since })
                .observe(now_ms.saturating_sub(from).max(0) as f64 / 1000.0);
        }
        if let Some(keys) = &self.key_freshness {
            let key = keys.label_of(mapped);
            self.metrics
                .key_last_success
                .get_or_create(&KeyLabel {
                    key_field: keys.field().to_string(),
                    key: key.clone(),
                })
                .set(now_ms / 1000);
            self.progress.add_delivered_key(key, now_ms / 1000);
        }
    }

    /// Waits until the target's breaker lets a trial call through (at least a second),
    /// keeping the held records from redelivery with progress acks. False at shutdown.
    async fn hold(
        &self,
        target: &Target,
        messages: &[jetstream::Message],
        ready: &[Ready<'_>],
    ) -> bool {
        let mut shutdown = self.shutdown.clone();
        let step = (self.ack_wait / 3).max(Duration::from_millis(100));
        let until = Instant::now()
            + target
                .http
                .breaker
                .open_remaining()
                .max(Duration::from_secs(1));
        while Instant::now() < until {
            if *shutdown.borrow() {
                return false;
            }
            for r in ready {
                let _ = messages[r.message].ack_with(AckKind::Progress).await;
            }
            let wait = step.min(until.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return false,
            }
        }
        !*shutdown.borrow()
    }

    /// NAKs a record that failed transiently, with a backoff delay (at least the target's
    /// Retry-After and the open breaker); dead-letters it once it has used up maxDeliver.
    async fn retry_later(
        &self,
        target: &Target,
        message: &jetstream::Message,
        error: &str,
        after: Option<Duration>,
    ) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if delivered >= self.max_deliver {
            self.delivery_failed(target);
            self.reject(
                message,
                Reason::MaxDeliveries,
                "deliver",
                &format!("{delivered} deliveries failed, last: {error}"),
            )
            .await;
        } else {
            self.metrics.retried.inc();
            let delay = self
                .redelivery
                .delay(delivered.saturating_sub(1) as u32)
                .max(target.http.breaker.open_remaining())
                .max(after.unwrap_or_default().min(Duration::from_secs(300)));
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

/// Bytes of a delivered record beyond its payload that a pull request's byte limit counts:
/// the headers the extractor reserves room for (`extract::HEADER_ROOM`), its subject and the
/// ack reply subject.
const ENVELOPE_BYTES: usize = super::extract::HEADER_ROOM + 1024;

/// Records of a pull request that the server will not send: the `Nats-Pending-Messages` of
/// a status that closes the request early (none or negative once the count is filled).
fn unsent_of_request(status: &async_nats::Message) -> Option<usize> {
    let pending: i64 = status
        .headers
        .as_ref()?
        .get("Nats-Pending-Messages")?
        .as_str()
        .parse()
        .ok()?;
    Some(pending.max(0) as usize)
}
