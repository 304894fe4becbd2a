//! Creating, inspecting and deleting a flow's JetStream resources. The operator calls
//! [`ensure_queue`] when it reconciles a flow and [`delete_queue`] when a flow with
//! `deletionPolicy: Delete` goes away; every worker calls [`ensure_queue`] at start too, so a
//! worker never depends on the operator having run first. Both are idempotent.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CURSOR_KEY, DeliveryConfig, FlowProgress, PROGRESS_KEY, QueueNames};
use crate::api::common::parse_duration;
use crate::api::integration_flow::{DEFAULT_QUEUE_MAX_BYTES, Delivery, Discard, QueuePlacement};

/// Number of subject partitions records are spread over (`<subject>.<partition>`), by a hash of
/// the record's primary key. Fixed, because changing it would move keys between partitions.
pub const PARTITIONS: u32 = 16;

/// The queue policy of a flow, with durations parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuePolicy {
    /// How long records stay in the flow's stream.
    pub retention: Duration,
    /// How long dead letters stay.
    pub dead_letter_retention: Duration,
    /// Window in which JetStream drops a record whose `Nats-Msg-Id` it has already stored.
    pub dedupe_window: Duration,
    /// How long a worker may hold a record before JetStream redelivers it.
    pub ack_wait: Duration,
    /// Unacknowledged records in flight across all workers.
    pub max_ack_pending: i64,
    /// Replicas of the streams, the consumer and the bucket (1, 3 or 5).
    pub replicas: usize,
    /// Most bytes of the flow's stream, and of its dead-letter stream.
    pub max_bytes: i64,
    /// What the flow's stream does when full (the dead-letter stream always refuses).
    pub discard: stream::DiscardPolicy,
    /// Cluster and server tags the replicas must be placed on.
    pub placement: Option<stream::Placement>,
}

/// What a flow's queue gets where its `delivery` says nothing: the operator's configuration
/// (`--queue-replicas`, `--queue-max-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDefaults {
    pub replicas: u8,
    pub max_bytes: i64,
}

impl Default for QueueDefaults {
    /// A single nats-server's: one replica, 1 GiB streams.
    fn default() -> Self {
        QueueDefaults {
            replicas: 1,
            max_bytes: DEFAULT_QUEUE_MAX_BYTES,
        }
    }
}

/// Smallest `delivery.maxBytes`, as the admission rules say.
const MIN_MAX_BYTES: i64 = 1 << 20;

/// The bounds of a flow's queue as written (in the flow or its rendered configuration).
struct Bounds<'a> {
    replicas: u8,
    max_bytes: i64,
    discard: Discard,
    placement: Option<&'a QueuePlacement>,
}

impl QueuePolicy {
    /// The policy an IntegrationFlow's `delivery` asks for. `max_ack_pending` comes from the
    /// source binding's rate limit when it has one (the operator knows it); 1000 otherwise.
    /// `defaults` are the operator's, for what the flow leaves unset.
    pub fn from_delivery(
        delivery: &Delivery,
        max_ack_pending: u32,
        defaults: QueueDefaults,
    ) -> Result<QueuePolicy, String> {
        QueuePolicy::parse(
            [
                &delivery.retention,
                &delivery.dead_letter_retention,
                &delivery.dedupe_window,
                &delivery.ack_wait,
            ],
            max_ack_pending,
            Bounds {
                replicas: delivery.replicas.unwrap_or(defaults.replicas),
                max_bytes: delivery.max_bytes.unwrap_or(defaults.max_bytes),
                discard: delivery.discard,
                placement: delivery.placement.as_ref(),
            },
        )
    }

    /// The policy of a worker's configuration (the same one the operator rendered from the
    /// flow), for a worker that has to create the queue itself.
    pub fn from_rendered(delivery: &DeliveryConfig) -> Result<QueuePolicy, String> {
        QueuePolicy::parse(
            [
                &delivery.retention,
                &delivery.dead_letter_retention,
                &delivery.dedupe_window,
                &delivery.ack_wait,
            ],
            delivery.max_ack_pending,
            Bounds {
                replicas: delivery.replicas,
                max_bytes: delivery.max_bytes,
                discard: delivery.discard,
                placement: delivery.placement.as_ref(),
            },
        )
    }

    fn parse(
        [retention, dead_letter_retention, dedupe_window, ack_wait]: [&str; 4],
        max_ack_pending: u32,
        bounds: Bounds<'_>,
    ) -> Result<QueuePolicy, String> {
        let field = |name: &str, text: &str| {
            parse_duration(text).map_err(|e| format!("delivery.{name}: {e}"))
        };
        let policy = QueuePolicy {
            retention: field("retention", retention)?,
            dead_letter_retention: field("deadLetterRetention", dead_letter_retention)?,
            dedupe_window: field("dedupeWindow", dedupe_window)?,
            ack_wait: field("ackWait", ack_wait)?,
            max_ack_pending: i64::from(max_ack_pending.max(1)),
            replicas: usize::from(bounds.replicas),
            max_bytes: bounds.max_bytes,
            discard: match bounds.discard {
                Discard::Old => stream::DiscardPolicy::Old,
                Discard::New => stream::DiscardPolicy::New,
            },
            placement: bounds.placement.map(|p| stream::Placement {
                cluster: p.cluster.clone(),
                tags: p.tags.clone(),
            }),
        };
        // JetStream reads a max age of 0 as "forever" and refuses a duplicate window longer
        // than the max age; the admission rules refuse both, this says so to offline callers.
        if policy.retention.is_zero() || policy.dead_letter_retention.is_zero() {
            return Err(
                "delivery.retention and delivery.deadLetterRetention must be more than 0".into(),
            );
        }
        if policy.dedupe_window > policy.retention {
            return Err(format!(
                "delivery.dedupeWindow ({dedupe_window}) must not exceed delivery.retention ({retention})"
            ));
        }
        if ![1, 3, 5].contains(&policy.replicas) {
            return Err(format!(
                "delivery.replicas must be 1, 3 or 5, not {}",
                policy.replicas
            ));
        }
        if policy.max_bytes < MIN_MAX_BYTES {
            return Err(format!(
                "delivery.maxBytes must be at least {MIN_MAX_BYTES}, not {}",
                policy.max_bytes
            ));
        }
        Ok(policy)
    }
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy::from_delivery(&Delivery::default(), 1000, QueueDefaults::default())
            .unwrap_or_else(|_| unreachable!("the default delivery durations parse"))
    }
}

/// Errors talking to JetStream, with the resource that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A stream could not be created, updated, read or deleted.
    #[error("stream {name}: {message}")]
    Stream { name: String, message: String },
    /// The durable consumer could not be created or read.
    #[error("consumer {name}: {message}")]
    Consumer { name: String, message: String },
    /// The key-value bucket could not be created, read or written.
    #[error("key-value bucket {name}: {message}")]
    Bucket { name: String, message: String },
    /// JetStream refused to reserve the stream's `max_bytes`: nats-server reserves every
    /// stream's bound against its storage limit, and the other streams' bounds took it.
    #[error(
        "stream {name}: JetStream has no room to reserve its {max_bytes} bytes (delivery.maxBytes, else the operator's --queue-max-bytes): {message}; lower them, or raise the servers' max_file_store (docs/operations.md, \"Sizing JetStream storage\")"
    )]
    NoStorage {
        name: String,
        max_bytes: i64,
        message: String,
    },
}

pub(crate) fn stream_error(name: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Stream {
        name: name.to_string(),
        message: e.to_string(),
    }
}

pub(crate) fn bucket_error(name: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Bucket {
        name: name.to_string(),
        message: e.to_string(),
    }
}

/// Subject of one partition of the flow's stream.
pub fn partition_subject(names: &QueueNames, partition: u32) -> String {
    format!("{}.{partition}", names.subject)
}

/// Partition of a record key: FNV-1a, stable across processes and releases.
pub fn partition_of(key: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % PARTITIONS
}

/// Creates the flow's stream and durable consumer, and its namespace's key-value bucket, or
/// brings existing ones to `policy`; brings the flow's dead-letter stream to `policy` when it
/// has one; moves the records of a flow's bucket of the per-flow layout into the namespace
/// bucket ([`migrate_legacy_bucket`]). Safe to call from every worker and every reconcile.
///
/// The dead-letter stream is made on demand ([`ensure_dead_letter_stream`], when a worker
/// first has a record to dead-letter), not here: nats-server checks every new stream against
/// every stream of the account (subjects, reserved storage), so a second stream per flow
/// made creating 10,000 flows' queues cost nats-server about 3.5 times the CPU of one
/// (BENCHMARKS.md), and most flows never dead-letter anything.
pub async fn ensure_queue(
    js: &jetstream::Context,
    names: &QueueNames,
    policy: &QueuePolicy,
) -> Result<(), QueueError> {
    let records = stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}.>", names.subject)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: policy.retention,
        duplicate_window: policy.dedupe_window,
        max_bytes: policy.max_bytes,
        discard: policy.discard,
        num_replicas: policy.replicas,
        placement: policy.placement.clone(),
        ..Default::default()
    };
    let consumer_config = consumer::pull::Config {
        durable_name: Some(names.consumer.clone()),
        description: Some("flowplane workers of this flow".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        // JetStream never gives a record up: a record it stopped delivering would be gone from
        // the flow without a trace (the worker holding its last delivery crashed, or overran
        // ackWait). The workers count deliveries instead and dead-letter a record on the one
        // after `delivery.maxDeliver` (see `worker::consume`), so it ends in the dead-letter
        // stream with its reason and delivery count.
        max_deliver: -1,
        ack_wait: policy.ack_wait,
        max_ack_pending: policy.max_ack_pending,
        // Replicated like its stream, so the position of every record survives a lost node.
        num_replicas: policy.replicas,
        ..Default::default()
    };
    // Independent but for the consumer, which needs its stream. Creating is idempotent for
    // an identical configuration, so each is one request whether new or already in place.
    // All three are awaited and their errors reported in this order, not whichever failed
    // first: the error becomes the flow's QueueReady message, and a message that changed with
    // the timing (the stream's name one pass, its dead-letter stream's the next) made every
    // resync of a flow without room write its status again.
    let (records_made, dead_letters_made, state_made) = futures::join!(
        async {
            put_stream(js, records).await?;
            js.create_consumer_on_stream(consumer_config, &names.stream)
                .await
                .map_err(|e| QueueError::Consumer {
                    name: names.consumer.clone(),
                    message: e.to_string(),
                })
        },
        update_dead_letter_stream(js, names, policy),
        async {
            ensure_state_bucket(js, &names.state_bucket, policy).await?;
            migrate_legacy_bucket(js, names).await
        },
    );
    records_made.and(dead_letters_made).and(state_made)
}

/// The flow's dead-letter stream as `policy` has it.
fn dead_letter_stream_config(names: &QueueNames, policy: &QueuePolicy) -> stream::Config {
    stream::Config {
        name: names.dead_letter_stream.clone(),
        subjects: vec![names.dead_letter_subject.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: policy.dead_letter_retention,
        // Refused when full, never an old dead letter dropped: the worker terminates a record
        // only once its dead letter is stored, so the record waits in the flow's stream.
        max_bytes: policy.max_bytes,
        discard: stream::DiscardPolicy::New,
        num_replicas: policy.replicas,
        placement: policy.placement.clone(),
        // Redrive deletes single dead letters; keep that possible.
        deny_delete: false,
        ..Default::default()
    }
}

/// Creates the flow's dead-letter stream, or brings an existing one to `policy`: what the
/// operator does when a worker asks for it (`flowplane.api.<stream>.dead-letters`), and a
/// worker that made its queue itself.
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    names: &QueueNames,
    policy: &QueuePolicy,
) -> Result<(), QueueError> {
    put_stream(js, dead_letter_stream_config(names, policy)).await
}

/// Brings the flow's dead-letter stream to `policy` if it has one; makes none.
async fn update_dead_letter_stream(
    js: &jetstream::Context,
    names: &QueueNames,
    policy: &QueuePolicy,
) -> Result<(), QueueError> {
    match dead_letter_stream(js, names).await? {
        Some(_) => ensure_dead_letter_stream(js, names, policy).await,
        None => Ok(()),
    }
}

/// The flow's dead-letter stream; None while it has none (it is made on demand, for the
/// flow's first dead letter).
pub async fn dead_letter_stream(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<Option<stream::Stream>, QueueError> {
    match js.get_stream(&names.dead_letter_stream).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if is_not_found(&e.to_string()) => Ok(None),
        Err(e) => Err(stream_error(&names.dead_letter_stream, e)),
    }
}

/// Creates the stream, or brings an existing one with another configuration to this one.
async fn put_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), QueueError> {
    let name = config.name.clone();
    let max_bytes = config.max_bytes;
    let refused = |e: CreateStreamError| match create_stream_code(&e) {
        Some(
            ErrorCode::STORAGE_RESOURCES_EXCEEDED
            | ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
        ) => QueueError::NoStorage {
            name: name.clone(),
            max_bytes,
            message: e.to_string(),
        },
        _ => stream_error(&name, e),
    };
    match js.create_stream(config.clone()).await {
        Ok(_) => Ok(()),
        Err(e) if create_stream_code(&e) == Some(ErrorCode::STREAM_NAME_EXIST) => {
            js.update_stream(config).await.map(|_| ()).map_err(refused)
        }
        Err(e) => Err(refused(e)),
    }
}

/// The JetStream error code of a refused stream creation or update.
fn create_stream_code(e: &CreateStreamError) -> Option<ErrorCode> {
    match e.kind() {
        CreateStreamErrorKind::JetStream(j) => Some(j.error_code()),
        _ => None,
    }
}

/// How long the delete marker of a key a flow removed for good stays in the namespace bucket
/// (the least JetStream allows; see `approvals::forget_review`).
pub const DELETE_MARKER_TTL: Duration = Duration::from_secs(1);

/// Creates the namespace's state bucket, or brings an existing one up to `policy`'s replicas.
///
/// Replicas: the bucket holds every flow of the namespace, so it has the most replicas any of
/// them asked for (each flow's policy: its own, else the operator's default), and is never
/// scaled down by a flow asking for fewer; so no flow's state is less safe than its policy
/// says, and flows with different policies do not scale the bucket back and forth. Placement
/// is the first flow's, never changed after (JetStream does not move a stream in place).
///
/// No rollups: a message with `Nats-Rollup: all`, published by a flow's user to a key of its
/// own, would drop every key of the stream, its neighbours' too, and no subject permission
/// stops a header. async-nats makes key-value streams with rollups allowed, so they are
/// switched off right after, with per-message TTL switched on (for the expiring delete markers
/// of [`DELETE_MARKER_TTL`]; async-nats's `limit_markers` would also set subject delete markers,
/// which nats-server allows only with rollups). Nothing of flowplane purges a key.
async fn ensure_state_bucket(
    js: &jetstream::Context,
    name: &str,
    policy: &QueuePolicy,
) -> Result<(), QueueError> {
    let config = kv::Config {
        bucket: name.to_string(),
        description: "flowplane state of the namespace's flows, under each flow's own keys".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: policy.replicas,
        placement: policy.placement.clone(),
        ..Default::default()
    };
    // In place (one request, on every pass of every flow of the namespace), else made now,
    // or by another flow's pass meanwhile.
    let stream_name = format!("KV_{name}");
    let stream = match js.get_stream(&stream_name).await {
        Ok(stream) => stream,
        Err(e) if is_not_found(&e.to_string()) => {
            let created = js.create_key_value(config).await;
            js.get_stream(&stream_name)
                .await
                .map_err(|found| match &created {
                    Err(e) => bucket_error(name, format!("{e}; then: {found}")),
                    Ok(_) => bucket_error(name, found),
                })?
        }
        Err(e) => return Err(bucket_error(name, e)),
    };
    let mut config = stream.cached_info().config.clone();
    let replicas = config.num_replicas.max(policy.replicas);
    if config.num_replicas == replicas && !config.allow_rollup && config.allow_message_ttl {
        return Ok(());
    }
    config.num_replicas = replicas;
    config.allow_rollup = false;
    config.allow_message_ttl = true;
    js.update_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| bucket_error(name, e))
}

/// Moves the records of the flow's own bucket of releases before the namespace bucket
/// ([`QueueNames::legacy_state_bucket`]) under the flow's keys in the namespace bucket, then
/// deletes it: the progress record holds the flow's cursor and settled sequences, and losing
/// them would re-read the source and deliver settled records again.
///
/// Once and idempotent: the old bucket is sealed first (a worker of the old release still
/// running can no longer write to it, so nothing written after the copy is lost: its write
/// fails, and it is being replaced), its records are copied (again, the same values, when an
/// earlier pass stopped before deleting), and it is deleted last, which lets the workers of
/// this release start ([`legacy_bucket_pending`]); without an old bucket there is nothing to do.
pub async fn migrate_legacy_bucket(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<(), QueueError> {
    let legacy = names.legacy_state_bucket();
    let mut stream = match js.get_stream(format!("KV_{legacy}")).await {
        Ok(stream) => stream,
        Err(e) if is_not_found(&e.to_string()) => return Ok(()),
        Err(e) => return Err(bucket_error(&legacy, e)),
    };
    let mut config = stream
        .info()
        .await
        .map_err(|e| bucket_error(&legacy, e))?
        .config
        .clone();
    if !config.sealed {
        config.sealed = true;
        js.update_stream(config)
            .await
            .map_err(|e| bucket_error(&legacy, format!("sealing: {e}")))?;
    }
    let old = js
        .get_key_value(&legacy)
        .await
        .map_err(|e| bucket_error(&legacy, e))?;
    let new = bucket(js, names).await?;
    let old_prefix = old.prefix.clone();
    // Listed from the stream's subjects, as `approvals` lists reviews: every key once.
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{old_prefix}>"))
        .await
        .map_err(|e| bucket_error(&legacy, e))?
        .try_collect()
        .await
        .map_err(|e| bucket_error(&legacy, e))?;
    for (subject, _) in subjects {
        let Some(key) = subject.strip_prefix(&old_prefix) else {
            continue;
        };
        let entry = old.entry(key).await.map_err(|e| bucket_error(&legacy, e))?;
        // Deleted or purged keys are markers only: nothing to keep.
        if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
            new.put(key, entry.value)
                .await
                .map_err(|e| bucket_error(&names.state_bucket, e))?;
        }
    }
    match js.delete_key_value(&legacy).await {
        Err(e) if !is_not_found(&e.to_string()) => Err(bucket_error(&legacy, e)),
        _ => Ok(()),
    }
}

/// Whether the flow's bucket of the per-flow layout is still there, its records not yet moved
/// ([`migrate_legacy_bucket`]). A worker of this release waits at start while it is: the
/// operator rolls the workers out and ensures the queue in one pass, and a worker that started
/// on the namespace bucket first would find no cursor and read the source again. The flow's
/// user may read this stream's information, nothing else of it.
pub async fn legacy_bucket_pending(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<bool, QueueError> {
    let legacy = names.legacy_state_bucket();
    match js.get_stream(format!("KV_{legacy}")).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e.to_string()) => Ok(false),
        Err(e) => Err(bucket_error(&legacy, e)),
    }
}

/// How long the capture stream remembers a `Nats-Msg-Id`: the shortest JetStream allows.
/// Deduplication happens in the flow's stream, with the same id (the extractor keeps the
/// source's `Nats-Msg-Id`), over the flow's dedupe window, where it is counted (`duplicates`);
/// the capture stream keeps every copy sent more than this apart.
const CAPTURE_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);
/// Source events one extractor may hold unacknowledged (a few pages).
const CAPTURE_MAX_ACK_PENDING: i64 = 10_000;
/// How long the extractor may hold an event before the capture stream sends it again (to the
/// next lease holder, when this one died): forwarded pages are acked within seconds.
const CAPTURE_ACK_WAIT: Duration = Duration::from_secs(30);

/// Ensures the capture of an event flow's source `subject` on the source's NATS server (`js`):
/// a stream that stores whatever is published on the subject, and the flow's durable pull
/// consumer on it, which the extractor acks only once an event is stored in the flow's stream.
/// So events published while no worker runs (a rollout, a crash, a lease handover) wait.
///
/// The stream is the flow's own ([`QueueNames::capture_stream`]): interest retention (an event
/// goes once every flow reading it acked it), at most `retention` old, file storage. When
/// another stream on that server already captures the subject (another flow's, or the
/// publisher's own), the flow reads that one through its own consumer instead, because
/// JetStream refuses two streams over one subject. Returns the consumer.
///
/// Replicas: `replicated` is the flow's policy when the capture is on the platform's own NATS
/// (the operator makes it there): the capture then has the flow's replicas and placement, so
/// losing a server neither stops the flow's events nor loses those not yet forwarded, and a
/// change of the flow's replicas scales it in place. `None` on a source's own server, which
/// flowplane does not run and whose size it does not know: a stream made there has 1 replica
/// (more would be refused on a single server), one found there keeps what its owner gave it.
pub async fn ensure_capture(
    js: &jetstream::Context,
    names: &QueueNames,
    subject: &str,
    retention: Duration,
    replicated: Option<&QueuePolicy>,
) -> Result<consumer::PullConsumer, QueueError> {
    let name = names.capture_stream();
    let existing = js
        .get_stream(&name)
        .await
        .ok()
        .map(|s| s.cached_info().config.clone());
    let (replicas, placement) = match (replicated, &existing) {
        (Some(policy), _) => (policy.replicas, policy.placement.clone()),
        (None, Some(found)) => (found.num_replicas.max(1), found.placement.clone()),
        (None, None) => (1, None),
    };
    let config = stream::Config {
        name: name.clone(),
        description: Some("flowplane: events captured for the flow's extractor".into()),
        subjects: vec![subject.to_string()],
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: retention,
        duplicate_window: CAPTURE_DUPLICATE_WINDOW,
        num_replicas: replicas,
        placement,
        ..Default::default()
    };
    let in_place = |found: &stream::Config| {
        found.subjects == config.subjects && found.num_replicas.max(1) == replicas
    };
    let stream_name = match existing {
        // In place (made by the operator, where a flow's own NATS user may not create streams).
        Some(found) if in_place(&found) => name,
        _ => match js.create_stream(config.clone()).await {
            Ok(_) => name,
            Err(e) if create_stream_code(&e) == Some(ErrorCode::STREAM_NAME_EXIST) => {
                js.update_stream(config)
                    .await
                    .map_err(|e| stream_error(&name, e))?;
                name
            }
            Err(e) if create_stream_code(&e) == Some(ErrorCode::STREAM_SUBJECT_OVERLAP) => js
                .stream_by_subject(subject)
                .await
                .map_err(|_| stream_error(&name, e))?,
            Err(e) => return Err(stream_error(&name, e)),
        },
    };
    let consumer_name = names.capture_consumer();
    // In place over this subject (the operator made it; a flow's own NATS user may not create
    // consumers): used as it is.
    if let Ok(stream) = js.get_stream(&stream_name).await
        && let Ok(existing) = stream
            .get_consumer::<consumer::pull::Config>(&consumer_name)
            .await
        && existing.cached_info().config.filter_subject == subject
    {
        return Ok(existing);
    }
    let consumer_config = consumer::pull::Config {
        durable_name: Some(consumer_name.clone()),
        description: Some("flowplane extractor of this flow".into()),
        filter_subject: subject.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        // An event is never given up: it waits until a worker stores it in the flow's stream.
        max_deliver: -1,
        ack_wait: CAPTURE_ACK_WAIT,
        max_ack_pending: CAPTURE_MAX_ACK_PENDING,
        ..Default::default()
    };
    js.create_consumer_on_stream(consumer_config, &stream_name)
        .await
        .map_err(|e| QueueError::Consumer {
            name: consumer_name,
            message: e.to_string(),
        })
}

/// Deletes the flow's streams (with their consumer) and its keys in the namespace bucket
/// (and its bucket of the per-flow layout, when it was never moved). The namespace bucket
/// stays, empty or not: deleting it could race with another flow of the namespace creating
/// it, and it costs one stream per namespace. Resources already gone are not an error, so a
/// finalizer can call it again after a partial failure.
pub async fn delete_queue(js: &jetstream::Context, names: &QueueNames) -> Result<(), QueueError> {
    for name in [&names.stream, &names.dead_letter_stream] {
        if let Err(e) = js.delete_stream(name).await
            && !is_not_found(&e.to_string())
        {
            return Err(stream_error(name, e));
        }
    }
    match js.get_stream(format!("KV_{}", names.state_bucket)).await {
        Ok(stream) => {
            stream
                .purge()
                .filter(format!("{}>", names.state_key_prefix()))
                .await
                .map_err(|e| bucket_error(&names.state_bucket, e))?;
        }
        Err(e) if is_not_found(&e.to_string()) => {}
        Err(e) => return Err(bucket_error(&names.state_bucket, e)),
    }
    let legacy = names.legacy_state_bucket();
    if let Err(e) = js.delete_key_value(&legacy).await
        && !is_not_found(&e.to_string())
    {
        return Err(bucket_error(&legacy, e));
    }
    Ok(())
}

fn is_not_found(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("not found") || message.contains("10059")
}

/// Brings the key-value bucket `name` to `replicas` in place (JetStream adds or removes
/// replicas of its stream); nothing when it has them already.
pub async fn scale_bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<(), QueueError> {
    let mut stream = js
        .get_stream(format!("KV_{name}"))
        .await
        .map_err(|e| bucket_error(name, e))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| bucket_error(name, e))?
        .config
        .clone();
    if config.num_replicas == replicas {
        return Ok(());
    }
    config.num_replicas = replicas;
    js.update_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| bucket_error(name, e))
}

/// The flow's records: the namespace bucket, seen through the flow's key prefix. Every key the
/// returned store reads, writes, lists or purges is `<state_token>.<key>`, because the store's
/// own subject prefix (which async-nats puts before every key, and strips from every entry's
/// key) is the flow's ([`QueueNames::state_key_prefix`]); so the record modules use their keys
/// (`progress`, `review.<id>`, ...) as before, and the flow's NATS user reaches exactly these.
pub async fn bucket(js: &jetstream::Context, names: &QueueNames) -> Result<kv::Store, QueueError> {
    let mut store = js
        .get_key_value(&names.state_bucket)
        .await
        .map_err(|e| bucket_error(&names.state_bucket, e))?;
    store.prefix = names.state_key_prefix();
    Ok(store)
}

/// The progress record of a flow, as workers last wrote it (the default when none wrote yet).
/// This is what the operator reads for the `Fresh` condition and the sync figures.
pub async fn read_progress(
    js: &jetstream::Context,
    names: &QueueNames,
) -> Result<FlowProgress, QueueError> {
    let store = bucket(js, names).await?;
    Ok(read_json_entry(&store, PROGRESS_KEY).await?.0)
}

/// A JSON record of a key-value bucket and the revision it was read at (0 when absent, so the
/// next [`write_json_entry`] creates it). A deleted or unreadable record reads as the default:
/// the next compare-and-set write replaces it.
pub async fn read_json_entry<T: DeserializeOwned + Default>(
    store: &kv::Store,
    key: &str,
) -> Result<(T, u64), QueueError> {
    let entry = store
        .entry(key)
        .await
        .map_err(|e| bucket_error(&store.name, e))?;
    Ok(match entry {
        Some(entry) if entry.operation == kv::Operation::Put => (
            serde_json::from_slice(&entry.value).unwrap_or_default(),
            entry.revision,
        ),
        Some(entry) => (T::default(), entry.revision),
        None => (T::default(), 0),
    })
}

/// Compare-and-set: writes `value` at `key` only if the record is still at `revision` (0:
/// creates it, only if no one did). False when another writer came first (or the write failed):
/// read again and retry.
pub async fn write_json_entry<T: Serialize>(
    store: &kv::Store,
    key: &str,
    value: &T,
    revision: u64,
) -> bool {
    let value = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
    if revision == 0 {
        store.create(key, value).await.is_ok()
    } else {
        store.update(key, value, revision).await.is_ok()
    }
}

/// Changes the progress record with compare-and-set, retrying when another worker wrote
/// in between; returns the record as written.
pub async fn update_progress(
    store: &kv::Store,
    change: impl Fn(&mut FlowProgress),
) -> Result<FlowProgress, QueueError> {
    for _ in 0..50 {
        let (mut progress, revision) = read_json_entry(store, PROGRESS_KEY).await?;
        change(&mut progress);
        if write_json_entry(store, PROGRESS_KEY, &progress, revision).await {
            return Ok(progress);
        }
    }
    Err(bucket_error(
        &store.name,
        "progress update lost 50 compare-and-set races in a row",
    ))
}

/// Forgets the extraction cursor, so the next extraction re-reads the whole source (the
/// operator's reset-cursor annotation).
pub async fn reset_cursor(js: &jetstream::Context, names: &QueueNames) -> Result<(), QueueError> {
    let store = bucket(js, names).await?;
    store
        .delete(CURSOR_KEY)
        .await
        .map_err(|e| bucket_error(&names.state_bucket, e))?;
    update_progress(&store, |p| p.cursor = None).await?;
    Ok(())
}

/// Sets the extraction cursor to `value` (the operator's `flowplane.io/cursor` annotation);
/// returns the cursor it replaced. The extractor stores its cursor by compare-and-set, so a
/// pass running meanwhile stops at its next page and the next one starts from `value`.
pub async fn set_cursor(
    js: &jetstream::Context,
    names: &QueueNames,
    value: &str,
) -> Result<Option<String>, QueueError> {
    let store = bucket(js, names).await?;
    let previous = store
        .get(CURSOR_KEY)
        .await
        .map_err(|e| bucket_error(&names.state_bucket, e))?
        .and_then(|v| String::from_utf8(v.to_vec()).ok())
        .filter(|c| !c.is_empty());
    store
        .put(CURSOR_KEY, Bytes::from(value.to_string()))
        .await
        .map_err(|e| bucket_error(&names.state_bucket, e))?;
    update_progress(&store, |p| p.cursor = Some(value.to_string())).await?;
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of("4711/10"), partition_of("4711/10"));
        let spread: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| partition_of(&format!("{i}/10")))
            .collect();
        assert_eq!(spread.len(), PARTITIONS as usize);
        assert!(spread.iter().all(|p| *p < PARTITIONS));
    }

    #[test]
    fn policy_durations_are_checked_with_the_field_named() {
        let mut delivery = Delivery {
            retention: "1h".into(),
            dedupe_window: "10m".into(),
            dead_letter_retention: "720h".into(),
            ..Delivery::default()
        };
        let policy = QueuePolicy::from_delivery(&delivery, 10, QueueDefaults::default()).unwrap();
        assert_eq!(policy.retention, Duration::from_secs(3600));
        assert_eq!(policy.dedupe_window, Duration::from_secs(600));
        assert_eq!(
            policy.dead_letter_retention,
            Duration::from_secs(720 * 3600)
        );
        delivery.dedupe_window = "2h".into();
        let error =
            QueuePolicy::from_delivery(&delivery, 10, QueueDefaults::default()).unwrap_err();
        assert!(error.contains("dedupeWindow (2h)"), "{error}");
        delivery.dedupe_window = "2m".into();
        delivery.dead_letter_retention = "0s".into();
        assert!(QueuePolicy::from_delivery(&delivery, 10, QueueDefaults::default()).is_err());
        delivery.dead_letter_retention = "2 weeks".into();
        let error =
            QueuePolicy::from_delivery(&delivery, 10, QueueDefaults::default()).unwrap_err();
        assert!(
            error.starts_with("delivery.deadLetterRetention:"),
            "{error}"
        );
    }

    #[test]
    fn the_worker_configuration_gives_the_operator_policy() {
        let rendered = DeliveryConfig {
            max_deliver: 5,
            ack_wait: "30s".into(),
            retry: serde_json::from_value(serde_json::json!({})).unwrap(),
            max_ack_pending: 100,
            retention: "168h".into(),
            dead_letter_retention: "720h".into(),
            dedupe_window: "2m".into(),
            replicas: 3,
            max_bytes: 1 << 30,
            discard: Discard::Old,
            placement: None,
        };
        let mut delivery = rendered.clone();
        delivery.retention = "48h".into();
        delivery.dedupe_window = "15m".into();
        let policy = QueuePolicy::from_rendered(&delivery).unwrap();
        assert_eq!(policy.retention, Duration::from_secs(48 * 3600));
        assert_eq!(policy.dedupe_window, Duration::from_secs(900));
        // A worker.json rendered before these fields existed reads with the flow defaults.
        let mut json = serde_json::to_value(&rendered).unwrap();
        for field in [
            "retention",
            "deadLetterRetention",
            "dedupeWindow",
            "replicas",
            "maxBytes",
            "discard",
        ] {
            json.as_object_mut().unwrap().remove(field);
        }
        let old: DeliveryConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            QueuePolicy::from_rendered(&old).unwrap(),
            QueuePolicy {
                max_ack_pending: 100,
                ack_wait: Duration::from_secs(30),
                ..QueuePolicy::default()
            }
        );
    }

    #[test]
    fn replicas_and_size_come_from_the_flow_else_the_operator_and_bounds_are_checked() {
        const THREE: QueueDefaults = QueueDefaults {
            replicas: 3,
            max_bytes: 64 << 20,
        };
        let mut delivery = Delivery::default();
        let policy = QueuePolicy::from_delivery(&delivery, 10, THREE).unwrap();
        assert_eq!(policy.replicas, 3);
        assert_eq!(policy.max_bytes, 64 << 20);
        delivery.max_bytes = Some(2 << 30);
        assert_eq!(
            QueuePolicy::from_delivery(&delivery, 10, THREE)
                .unwrap()
                .max_bytes,
            2 << 30
        );
        assert_eq!(policy.discard, stream::DiscardPolicy::Old);
        assert_eq!(policy.placement, None);
        delivery.replicas = Some(5);
        delivery.discard = Discard::New;
        delivery.placement = Some(QueuePlacement {
            cluster: Some("eu".into()),
            tags: vec!["az:a".into()],
        });
        let policy = QueuePolicy::from_delivery(&delivery, 10, THREE).unwrap();
        assert_eq!(policy.replicas, 5);
        assert_eq!(policy.discard, stream::DiscardPolicy::New);
        assert_eq!(policy.placement.unwrap().tags, ["az:a"]);
        delivery.replicas = Some(2);
        let error = QueuePolicy::from_delivery(&delivery, 10, THREE).unwrap_err();
        assert!(
            error.contains("delivery.replicas must be 1, 3 or 5"),
            "{error}"
        );
        delivery.replicas = None;
        delivery.max_bytes = Some(1000);
        let error = QueuePolicy::from_delivery(&delivery, 10, THREE).unwrap_err();
        assert!(error.starts_with("delivery.maxBytes"), "{error}");
    }

    #[test]
    fn default_policy_follows_the_flow_defaults() {
        let policy = QueuePolicy::default();
        assert_eq!(policy.dedupe_window, Duration::from_secs(120));
    }
}
