//! Approval routing of forecast deltas (forecast -> ERP flows).
//!
//! After map + validate, each record's delta% = (value - baseline) / baseline * 100 decides its
//! route: the first rule (smallest `belowPercent` first) with |delta| below its threshold, else
//! `otherwise` (a zero or missing baseline counts as an infinite delta). Apply delivers to the
//! target as usual, Escalate to `escalateTo`, Review parks the record in the flow's bucket
//! (`review.<id>`, see `queue::approvals`) and only then acks it.
//!
//! Every worker runs [`Approvals::run`], which carries out decisions (`decision.<id>`) and
//! timeouts. A worker first claims a parked record with compare-and-set on its revision, so
//! only one acts on it; it moves the record on (target, escalation target or dead-letter
//! stream) and deletes the parked entry only after that succeeded. A claim whose holder died
//! expires and another worker takes over; delivery is conditional on the source version, so a
//! second delivery changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::sync::watch;

use super::clock::now_unix_ms;
use super::connectors::target::{Outgoing, Target};
use super::dead_letter::store_dead_letter;
use super::http::CallError;
use super::metrics::Metrics;
use super::progress::ProgressDeltas;
use super::transform::Reason;
use crate::api::common::parse_duration;
use crate::api::integration_flow::{ApprovalAction, ReviewTimeoutAction};
use crate::queue::QueueNames;
use crate::queue::approvals::{
    Claim, Decision, ParkedReview, Route, RouteRecord, decide, decision_key, forget_review,
    list_pending, list_routes, parked_ids, read_decision, read_parked, record_route, review_id,
    review_key,
};
use crate::queue::headers::{self, Envelope};
use crate::worker_config::ApprovalConfig;

/// Review timeout when the configuration has none (the CRD requires one with Review rules).
const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long a worker's claim on a parked record lasts.
const CLAIM_TTL_MS: i64 = 30_000;
/// How often decisions and timeouts are looked at.
const TICK: Duration = Duration::from_millis(500);

/// delta% of `value` against `baseline`; infinite for a zero baseline.
pub fn delta_percent(value: f64, baseline: f64) -> f64 {
    if baseline == 0.0 || !baseline.is_finite() || !value.is_finite() {
        return f64::INFINITY;
    }
    (value - baseline) / baseline * 100.0
}

/// The first rule (smallest threshold first) with |delta| below its threshold, else `otherwise`.
pub fn choose(
    rules: &[(f64, ApprovalAction)],
    otherwise: ApprovalAction,
    delta: f64,
) -> ApprovalAction {
    let magnitude = delta.abs();
    rules
        .iter()
        .find(|(below, _)| magnitude < *below)
        .map(|(_, action)| *action)
        .unwrap_or(otherwise)
}

fn number(record: &Value, field: &str) -> Option<f64> {
    match record.get(field)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A flow's approval routing, compiled.
pub struct Approvals {
    value_field: String,
    baseline_field: String,
    rules: Vec<(f64, ApprovalAction)>,
    otherwise: ApprovalAction,
    review_timeout: Duration,
    on_timeout: ReviewTimeoutAction,
    /// The supplier-collaboration target.
    pub escalate: Option<Arc<Target>>,
    store: kv::Store,
}

impl Approvals {
    /// Compiles `config`; `escalate` is the escalation target built from `escalateTo`.
    pub fn new(
        config: &ApprovalConfig,
        escalate: Option<Arc<Target>>,
        store: kv::Store,
    ) -> anyhow::Result<Approvals> {
        let review_timeout = match &config.review_timeout {
            Some(t) => parse_duration(t)
                .map_err(|e| anyhow::anyhow!("approval.reviewTimeout {t:?}: {e}"))?,
            None => DEFAULT_REVIEW_TIMEOUT,
        };
        let mut rules: Vec<(f64, ApprovalAction)> = config
            .rules
            .iter()
            .map(|r| (r.below_percent, r.action))
            .collect();
        rules.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Approvals {
            value_field: config.value_field.clone(),
            baseline_field: config.baseline_field.clone(),
            rules,
            otherwise: config.otherwise,
            review_timeout,
            on_timeout: config.on_timeout,
            escalate,
            store,
        })
    }

    /// The action for a delta.
    pub fn action_for(&self, delta: f64) -> ApprovalAction {
        choose(&self.rules, self.otherwise, delta)
    }

    /// Route and delta of a mapped record (canonical JSON).
    pub fn evaluate(&self, mapped: &[u8]) -> (ApprovalAction, f64) {
        let record: Value = serde_json::from_slice(mapped).unwrap_or(Value::Null);
        let delta = match (
            number(&record, &self.value_field),
            number(&record, &self.baseline_field),
        ) {
            (Some(value), Some(baseline)) => delta_percent(value, baseline),
            _ => f64::INFINITY,
        };
        (self.action_for(delta), delta)
    }

    /// Parks a record for review. A record parked before (a redelivery) is left as it is.
    /// The caller acks the message only after this returned Ok.
    pub async fn park(
        &self,
        message: &jetstream::Message,
        mapped: &[u8],
        version: u64,
        delta: f64,
    ) -> anyhow::Result<String> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let key = Envelope::of(message.headers.as_ref()).key.to_string();
        let id = review_id(&key, version);
        let parked = ParkedReview {
            id: id.clone(),
            key,
            version,
            delta_percent: delta.is_finite().then_some(delta),
            expires: (now_unix_ms() / 1000) + self.review_timeout.as_secs() as i64,
            parked_unix: Some(now_unix_ms() / 1000),
            record: serde_json::from_slice(mapped)?,
            original: String::from_utf8_lossy(&message.payload).into_owned(),
            subject: message.subject.to_string(),
            msg_id: header(headers::MSG_ID),
            traceparent: header(headers::TRACEPARENT),
            claim: None,
        };
        let value = Bytes::from(serde_json::to_vec(&parked)?);
        match self.store.create(review_key(&id), value).await {
            Ok(_) => Ok(id),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(id),
            Err(e) => Err(anyhow::anyhow!("parking review {id}: {e}")),
        }
    }

    /// Records the route the rules gave a delta (Apply or Escalate) in the decision audit.
    /// The caller NAKs the message if this fails, so no delta goes unrecorded.
    pub async fn record_ruled(
        &self,
        message: &jetstream::Message,
        version: u64,
        delta: f64,
        route: Route,
    ) -> anyhow::Result<()> {
        let key = Envelope::of(message.headers.as_ref()).key.to_string();
        let record = RouteRecord {
            id: review_id(&key, version),
            key,
            route,
            delta_percent: delta.is_finite().then_some(delta),
            decided_by: None,
            decided_at: None,
            at: now_unix_ms() / 1000,
        };
        Ok(record_route(&self.store, &record).await?)
    }

    /// Carries out decisions and timeouts until `shutdown`.
    pub async fn run(self: Arc<Self>, resolver: Resolver, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if let Err(e) = self.tick(&resolver).await {
                tracing::warn!(error = %e, "approval decisions not processed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One pass over the parked records.
    pub async fn tick(&self, resolver: &Resolver) -> anyhow::Result<()> {
        // The exception queue's age: the review waiting longest (0: none waits).
        let mut oldest: Option<i64> = None;
        for id in parked_ids(&self.store).await? {
            let Some((parked, revision)) = read_parked(&self.store, &id).await? else {
                continue;
            };
            let parked_at = parked
                .parked_unix
                .unwrap_or(parked.expires - self.review_timeout.as_secs() as i64);
            oldest = Some(oldest.map_or(parked_at, |o| o.min(parked_at)));
            let now_ms = now_unix_ms();
            if let Some(claim) = &parked.claim
                && claim.holder != resolver.worker_id
                && claim.until_unix_ms > now_ms
            {
                continue;
            }
            let decision = read_decision(&self.store, &id).await?;
            let (outcome, route) = match decision.as_ref().map(|d| d.decision) {
                Some(Decision::Approve) => (Outcome::Deliver, Route::Approved),
                Some(Decision::Reject) => {
                    (Outcome::DeadLetter(Reason::ReviewRejected), Route::Rejected)
                }
                None if parked.expires * 1000 <= now_ms => match self.on_timeout {
                    ReviewTimeoutAction::Apply => (Outcome::Deliver, Route::TimedOut),
                    ReviewTimeoutAction::Reject => {
                        (Outcome::DeadLetter(Reason::ReviewTimeout), Route::TimedOut)
                    }
                    ReviewTimeoutAction::Escalate => (Outcome::Escalate, Route::TimedOut),
                },
                None => continue,
            };
            // Claim it, so no other worker acts at the same time.
            let mut claimed = parked.clone();
            claimed.claim = Some(Claim {
                holder: resolver.worker_id.clone(),
                until_unix_ms: now_ms + CLAIM_TTL_MS,
            });
            let value = Bytes::from(serde_json::to_vec(&claimed)?);
            let Ok(revision) = self.store.update(review_key(&id), value, revision).await else {
                continue;
            };
            // The audit first: carrying out is retried until done, so the record never
            // names a route that was not taken.
            let record = RouteRecord {
                id: id.clone(),
                key: parked.key.clone(),
                route,
                delta_percent: parked.delta_percent,
                decided_by: decision.as_ref().and_then(|d| d.decided_by.clone()),
                decided_at: decision.as_ref().map(|d| d.decided_at),
                at: now_ms / 1000,
            };
            record_route(&self.store, &record).await?;
            let done = match outcome {
                Outcome::Deliver => resolver.deliver(&resolver.target, &parked).await,
                Outcome::Escalate => match &self.escalate {
                    Some(target) => resolver.deliver(target, &parked).await,
                    None => {
                        resolver
                            .dead_letter(
                                &parked,
                                Reason::TargetRejected,
                                "review timed out with onTimeout Escalate but the flow has no escalateTo",
                            )
                            .await
                    }
                },
                Outcome::DeadLetter(reason) => {
                    let detail = match reason {
                        Reason::ReviewRejected => format!(
                            "review {id} rejected (delta {:.2}%)",
                            parked.delta()
                        ),
                        _ => format!(
                            "review {id} timed out (delta {:.2}%)",
                            parked.delta()
                        ),
                    };
                    resolver.dead_letter(&parked, reason, &detail).await
                }
            };
            match done {
                Ok(()) => {
                    self.store
                        .delete_expect_revision(review_key(&id), Some(revision))
                        .await
                        .map_err(|e| anyhow::anyhow!("removing review {id}: {e}"))?;
                    let _ = self.store.delete(decision_key(&id)).await;
                    forget_review(&resolver.js, &self.store, &id).await;
                    tracing::info!(review = %id, key = %parked.key, ?outcome, "review carried out");
                }
                Err(e) => {
                    tracing::warn!(review = %id, error = super::redact::log_safe_chain(&e), "review outcome not carried out yet; retrying");
                }
            }
        }
        resolver
            .metrics
            .oldest_pending_review
            .set(oldest.unwrap_or(0));
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Deliver,
    Escalate,
    DeadLetter(Reason),
}

/// What carrying out an outcome needs: the targets, the dead-letter stream, the counters.
pub struct Resolver {
    /// This worker's id (in claims).
    pub worker_id: String,
    /// JetStream of the flow.
    pub js: jetstream::Context,
    /// The flow's names.
    pub names: QueueNames,
    /// The flow's target.
    pub target: Arc<Target>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Progress.
    pub progress: Arc<ProgressDeltas>,
}

impl Resolver {
    /// Delivers a parked record; a record the target refuses is dead-lettered instead.
    /// Err means "not yet" (transient): the record stays parked.
    async fn deliver(&self, target: &Target, parked: &ParkedReview) -> anyhow::Result<()> {
        let data = serde_json::to_vec(&parked.record)?;
        let outgoing = [Outgoing {
            key: &parked.key,
            version: parked.version,
            data: &data,
        }];
        match target.deliver(&outgoing).await {
            Ok(outcome) if !outcome.retry.is_empty() => Err(anyhow::anyhow!(
                "delivery failed: {}",
                outcome.retry[0].reason
            )),
            Ok(outcome) => match outcome.rejected.into_iter().next() {
                Some(refused) => {
                    self.delivery_failed(target);
                    self.dead_letter(parked, Reason::TargetRejected, &refused.reason)
                        .await
                }
                None => {
                    self.metrics.delivered.inc();
                    self.metrics.last_success.set(now_unix_ms() / 1000);
                    self.progress.add_delivered(1);
                    Ok(())
                }
            },
            Err(CallError::Permanent { status, body }) => {
                self.delivery_failed(target);
                self.dead_letter(
                    parked,
                    Reason::TargetRejected,
                    &format!("HTTP {status}: {body}"),
                )
                .await
            }
            // The target refuses the binding, not this record: tried again later.
            Err(
                e @ (CallError::Transient(_)
                | CallError::Refused { .. }
                | CallError::OffOrigin(_)
                | CallError::OverQuota(_)),
            ) => Err(anyhow::anyhow!("delivery failed: {e}")),
        }
    }

    /// Counts a reviewed record that `target` will never take.
    fn delivery_failed(&self, target: &Target) {
        self.metrics
            .count_delivery_failed(!std::ptr::eq(target, &*self.target));
    }

    /// Publishes a parked record to the dead-letter stream, as `dead_letter` does for messages.
    async fn dead_letter(
        &self,
        parked: &ParkedReview,
        reason: Reason,
        detail: &str,
    ) -> anyhow::Result<()> {
        let mut entry = HeaderMap::new();
        entry.insert(headers::MSG_ID, parked.msg_id.as_str());
        if !parked.traceparent.is_empty() {
            entry.insert(headers::TRACEPARENT, parked.traceparent.as_str());
        }
        let envelope = Envelope {
            key: &parked.key,
            version: parked.version,
            ..Envelope::default()
        };
        entry.insert(headers::RECORD, envelope.to_header().as_str());
        entry.insert(headers::REASON, reason.as_str());
        let detail: String = detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1000)
            .collect();
        entry.insert(headers::DETAIL, detail.as_str());
        entry.insert(headers::STAGE, "approval");
        entry.insert(headers::ORIGINAL_SUBJECT, parked.subject.as_str());
        store_dead_letter(
            &self.js,
            &self.names,
            entry,
            Bytes::from(parked.original.clone().into_bytes()),
        )
        .await?;
        tracing::warn!(
            trace_id = parked.trace_id(),
            key = %parked.key,
            reason = reason.as_str(),
            stage = "approval",
            "record dead-lettered"
        );
        self.metrics.dead_letter(reason);
        self.progress.add_dead_lettered(1);
        Ok(())
    }
}

/// `flowplane review ...`
#[derive(Args, Debug)]
pub struct ReviewArgs {
    #[command(subcommand)]
    pub command: ReviewCommand,
    #[command(flatten)]
    pub queue: crate::queue::cli::FlowQueueArgs,
}

/// What to do with the flow's pending reviews.
#[derive(Subcommand, Debug)]
pub enum ReviewCommand {
    /// Print the pending reviews as JSON lines.
    List {
        /// Print the decision audit instead: every delta's route, who decided and when.
        #[arg(long)]
        routes: bool,
    },
    /// Release a parked delta to the target.
    Approve {
        /// Review id (from `list`).
        id: String,
    },
    /// Drop a parked delta (dead-lettered with reason ReviewRejected).
    Reject {
        /// Review id (from `list`).
        id: String,
    },
}

/// Runs `flowplane review`.
pub fn run_cli(args: ReviewArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (js, names) = args.queue.connect().await?;
        match args.command {
            ReviewCommand::List { routes: false } => {
                for review in list_pending(&js, &names).await? {
                    println!("{}", serde_json::to_string(&review)?);
                }
            }
            ReviewCommand::List { routes: true } => {
                for record in list_routes(&js, &names).await? {
                    println!("{}", serde_json::to_string(&record)?);
                }
            }
            // A terminal talks to NATS, not Kubernetes: no identity to stamp, so the audit
            // says nobody; the annotations are the audited way to decide.
            ReviewCommand::Approve { id } => {
                decide(&js, &names, &id, Decision::Approve, None).await?;
                println!("review {id} approved");
            }
            ReviewCommand::Reject { id } => {
                decide(&js, &names, &id, Decision::Reject, None).await?;
                println!("review {id} rejected");
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_relative_to_the_baseline_and_a_zero_baseline_is_infinite() {
        assert_eq!(delta_percent(110.0, 100.0), 10.0);
        assert_eq!(delta_percent(90.0, 100.0), -10.0);
        assert!(delta_percent(5.0, 0.0).is_infinite());
    }

    #[test]
    fn the_first_matching_rule_decides_else_otherwise() {
        use ApprovalAction::*;
        let rules = [(5.0, Apply), (20.0, Review)];
        assert_eq!(choose(&rules, Escalate, 2.0), Apply);
        assert_eq!(choose(&rules, Escalate, -4.99), Apply);
        assert_eq!(choose(&rules, Escalate, 5.0), Review);
        assert_eq!(choose(&rules, Escalate, -10.0), Review);
        assert_eq!(choose(&rules, Escalate, 50.0), Escalate);
        assert_eq!(choose(&rules, Escalate, f64::INFINITY), Escalate);
    }
}
