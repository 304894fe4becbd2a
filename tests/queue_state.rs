//! The namespace's state bucket against the real nats-server of the local environment: a flow
//! upgraded from the per-flow layout (its records in `FP_<ns>_<flow>_STATE`) finds every record
//! under its keys in the namespace bucket, its cursor and settled sequences included, so its
//! workers neither re-read the source from the start nor deliver a settled record again; the
//! move happens once, the old bucket is gone, and the neighbours' records are untouched. And a
//! real worker upgraded that way goes on from where it was: nothing read or delivered again.

mod e2e_support;
mod support;

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use e2e_support::*;
use flowplane::queue::jetstream::{
    QueuePolicy, bucket, delete_queue, ensure_queue, migrate_legacy_bucket, read_progress,
};
use flowplane::queue::{CURSOR_KEY, FlowProgress, PROGRESS_KEY, QueueNames, SettledSequences};
use flowplane::sim::erp::{ErpSeed, SALES_ORDER_LINES};
use flowplane::worker::sample;
use serde_json::json;

/// The progress record a worker of the previous release left: a cursor, counts, and the
/// stream sequences it settled (delivered or dead-lettered), one of them out of order.
fn progress_of_the_previous_release() -> FlowProgress {
    let mut settled = SettledSequences::default();
    for sequence in (1..=40).chain([45]) {
        settled.insert(sequence);
    }
    FlowProgress {
        last_success_unix: Some(1_764_000_000),
        read: 45,
        delivered: 40,
        dead_lettered: 1,
        cursor: Some("2026-11-30T21:00:00Z".into()),
        settled,
        ..FlowProgress::default()
    }
}

/// The flow's own bucket as the previous release made it, empty.
async fn empty_legacy_bucket(admin: &jetstream::Context, names: &QueueNames) -> kv::Store {
    admin
        .create_key_value(kv::Config {
            bucket: names.legacy_state_bucket(),
            history: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Whether the flow's own bucket of the previous release is gone.
async fn legacy_bucket_gone(admin: &jetstream::Context, names: &QueueNames) -> bool {
    admin
        .get_stream(format!("KV_{}", names.legacy_state_bucket()))
        .await
        .is_err()
}

/// The subjects of the flow's keys in the namespace bucket, with their message counts.
async fn flow_state_subjects(
    admin: &jetstream::Context,
    names: &QueueNames,
) -> Vec<(String, usize)> {
    let state = admin
        .get_stream(format!("KV_{}", names.state_bucket))
        .await
        .unwrap();
    futures::TryStreamExt::try_collect(
        state
            .info_with_subjects(format!("{}>", names.state_key_prefix()))
            .await
            .unwrap(),
    )
    .await
    .unwrap()
}

/// The flow's bucket as the previous release made it, with its records.
async fn legacy_bucket(admin: &jetstream::Context, names: &QueueNames) -> kv::Store {
    let store = empty_legacy_bucket(admin, names).await;
    let progress = serde_json::to_vec(&progress_of_the_previous_release()).unwrap();
    store.put(PROGRESS_KEY, progress.into()).await.unwrap();
    store
        .put(CURSOR_KEY, "2026-11-30T21:00:00Z".into())
        .await
        .unwrap();
    store.put("review.00ff", "parked".into()).await.unwrap();
    store.put("audit.approved.00ee", "{}".into()).await.unwrap();
    store.put("gone", "x".into()).await.unwrap();
    store.delete("gone").await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flows_records_move_from_its_own_bucket_to_the_namespace_bucket_once() {
    let env = support::local_env();
    let admin = jetstream::new(support::nats_admin(&env.nats_url).await);
    let namespace = format!("upgrade-{}", std::process::id());
    let names = QueueNames::for_flow(&namespace, "orders.history");
    let neighbour = QueueNames::for_flow(&namespace, "stock");
    let policy = QueuePolicy::default();

    // A neighbour already on the namespace bucket, and the flow on the per-flow layout.
    ensure_queue(&admin, &neighbour, &policy).await.unwrap();
    let theirs = bucket(&admin, &neighbour).await.unwrap();
    theirs.put(PROGRESS_KEY, "theirs".into()).await.unwrap();
    let old = legacy_bucket(&admin, &names).await;

    // The operator of this release ensures the queue: the records move, the old bucket goes.
    ensure_queue(&admin, &names, &policy).await.unwrap();
    let progress = read_progress(&admin, &names).await.unwrap();
    assert_eq!(progress, progress_of_the_previous_release());
    // Every settled sequence is still settled: none is sent or counted again.
    assert!((1..=40).chain([45]).all(|s| progress.settled.contains(s)));
    assert!(!progress.settled.contains(41));
    let store = bucket(&admin, &names).await.unwrap();
    for (key, value) in [
        (CURSOR_KEY, "2026-11-30T21:00:00Z"),
        ("review.00ff", "parked"),
        ("audit.approved.00ee", "{}"),
    ] {
        assert_eq!(
            store.get(key).await.unwrap(),
            Some(Bytes::from(value)),
            "{key}"
        );
    }
    assert_eq!(store.get("gone").await.unwrap(), None);
    // Exactly these four keys of the flow, under its token.
    let keys = flow_state_subjects(&admin, &names).await;
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(
        legacy_bucket_gone(&admin, &names).await,
        "the old bucket is left"
    );
    // A worker of the previous release still holding the old bucket can no longer write.
    assert!(old.put(PROGRESS_KEY, "late".into()).await.is_err());
    assert_eq!(
        theirs.get(PROGRESS_KEY).await.unwrap(),
        Some(Bytes::from("theirs"))
    );

    // Again (every reconcile, every worker start): nothing moves, nothing changes.
    store
        .put(CURSOR_KEY, "2026-11-30T22:00:00Z".into())
        .await
        .unwrap();
    ensure_queue(&admin, &names, &policy).await.unwrap();
    assert_eq!(
        store.get(CURSOR_KEY).await.unwrap(),
        Some(Bytes::from("2026-11-30T22:00:00Z"))
    );

    for flow in [&names, &neighbour] {
        delete_queue(&admin, flow).await.unwrap();
    }
    admin.delete_key_value(&names.state_bucket).await.unwrap();
}

/// A move that stopped after sealing and copying (the operator restarted before deleting the
/// old bucket) is finished by the next pass with the same records.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_move_is_finished_with_the_same_records() {
    let env = support::local_env();
    let admin = jetstream::new(support::nats_admin(&env.nats_url).await);
    let namespace = format!("upgrade-again-{}", std::process::id());
    let names = QueueNames::for_flow(&namespace, "orders");
    let policy = QueuePolicy::default();
    legacy_bucket(&admin, &names).await;
    // The first pass's effect, by hand: the old bucket sealed, its progress already copied.
    let mut old = admin
        .get_stream(format!("KV_{}", names.legacy_state_bucket()))
        .await
        .unwrap();
    let mut config = old.info().await.unwrap().config.clone();
    config.sealed = true;
    admin.update_stream(config).await.unwrap();
    ensure_queue(&admin, &QueueNames::for_flow(&namespace, "other"), &policy)
        .await
        .unwrap();
    let store = bucket(&admin, &names).await.unwrap();
    let progress = serde_json::to_vec(&progress_of_the_previous_release()).unwrap();
    store.put(PROGRESS_KEY, progress.into()).await.unwrap();

    migrate_legacy_bucket(&admin, &names).await.unwrap();
    assert_eq!(
        read_progress(&admin, &names).await.unwrap(),
        progress_of_the_previous_release()
    );
    assert_eq!(
        store.get("review.00ff").await.unwrap(),
        Some(Bytes::from("parked"))
    );
    assert!(legacy_bucket_gone(&admin, &names).await);
    // Nothing left to move.
    migrate_legacy_bucket(&admin, &names).await.unwrap();

    for flow in ["orders", "other"] {
        delete_queue(&admin, &QueueNames::for_flow(&namespace, flow))
            .await
            .unwrap();
    }
    admin.delete_key_value(&names.state_bucket).await.unwrap();
}

/// A worker that delivered 200 records under the per-flow layout, upgraded: the worker of this
/// release, started first with its flow's user, waits until the operator's pass has moved the
/// records, then delivers the two changed rows only, with the counts going on from 200. Had the
/// progress record been lost, it would count from 0 and re-read the whole source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_worker_goes_on_from_its_moved_cursor_and_delivers_nothing_again() {
    const TIMEOUT: Duration = Duration::from_secs(120);
    let nats_url = support::local_env().nats_url.clone();
    let admin = e2e_support::jetstream(&nats_url).await;
    let sims = start_sims(ErpSeed {
        order_lines: 200,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    })
    .await;
    let flow = unique_flow("upgrade");
    let config =
        sample::sales_order_flow("e2e", &flow, &nats_url, &sims.erp_url, &sims.forecast_url);
    let names = config.queue.clone();
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: names.clone(),
    };
    let entity = config.target.entity.clone();
    let worker = InProcessWorker::start(config.clone(), "before-upgrade");
    let before = settled(&admin, &names, 200, TIMEOUT).await;
    worker.stop().await.unwrap();
    // The upgraded worker's configuration as a pod gets it: the flow's user (issued now,
    // with this release's permissions) and its queue in place.
    let upgraded = with_flow_identity(config);
    assert_eq!((before.read, before.delivered), (200, 200));
    assert!(before.cursor.is_some());

    // The flow's records as the previous release kept them: in its own bucket only.
    let store = bucket(&admin, &names).await.unwrap();
    let prefix = names.state_key_prefix();
    let subjects = flow_state_subjects(&admin, &names).await;
    let legacy = empty_legacy_bucket(&admin, &names).await;
    for (subject, _) in &subjects {
        let key = subject.strip_prefix(&prefix).unwrap();
        if let Some(value) = store.get(key).await.unwrap() {
            legacy.put(key, value).await.unwrap();
        }
    }
    admin
        .get_stream(format!("KV_{}", names.state_bucket))
        .await
        .unwrap()
        .purge()
        .filter(format!("{prefix}>"))
        .await
        .unwrap();
    assert_eq!(store.get(PROGRESS_KEY).await.unwrap(), None);

    // Two changes the worker has not seen; then the upgraded worker.
    for key in ["1000003/10", "1000004/10"] {
        sims.erp
            .update(
                SALES_ORDER_LINES,
                key,
                json!({"RequestedQuantity": "7"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
    }
    // The upgraded worker starts before the operator's pass has moved the records (the
    // operator rolls the workers out first): it waits, and writes nothing meanwhile.
    let worker = InProcessWorker::start(upgraded, "after-upgrade");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store.get(PROGRESS_KEY).await.unwrap(),
        None,
        "started early"
    );
    ensure_queue(&admin, &names, &QueuePolicy::default())
        .await
        .unwrap();
    let after = settled(&admin, &names, 202, TIMEOUT).await;
    let report = eventually(TIMEOUT, "the two changes at the target", || {
        let report = sims.forecast.received(&entity);
        async move { (report.applied() == 202).then_some(report) }
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(
        (after.read, after.delivered, after.dead_lettered),
        (202, 202, 0)
    );
    assert_eq!(report.duplicates(), 0, "a record delivered twice");
    assert_eq!(report.keys["1000003/10"].value["orderedQuantity"], 7);
    assert!(legacy_bucket_gone(&admin, &names).await);
}

/// A flow deleted (`deletionPolicy: Delete`) before any pass moved its records takes its old
/// bucket along, and a neighbour's keys stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_flow_deleted_before_its_move_takes_its_old_bucket_along() {
    let env = support::local_env();
    let admin = jetstream::new(support::nats_admin(&env.nats_url).await);
    let namespace = format!("upgrade-gone-{}", std::process::id());
    let names = QueueNames::for_flow(&namespace, "orders");
    let neighbour = QueueNames::for_flow(&namespace, "orders-eu");
    ensure_queue(&admin, &neighbour, &QueuePolicy::default())
        .await
        .unwrap();
    let theirs = bucket(&admin, &neighbour).await.unwrap();
    theirs.put(CURSOR_KEY, "theirs".into()).await.unwrap();
    legacy_bucket(&admin, &names).await;

    delete_queue(&admin, &names).await.unwrap();
    assert!(legacy_bucket_gone(&admin, &names).await);
    assert_eq!(
        theirs.get(CURSOR_KEY).await.unwrap(),
        Some(Bytes::from("theirs"))
    );
    // Again, with everything gone: not an error (a finalizer retries).
    delete_queue(&admin, &names).await.unwrap();

    delete_queue(&admin, &neighbour).await.unwrap();
    admin.delete_key_value(&names.state_bucket).await.unwrap();
}

/// What a worker knows of the records' outcomes, against the real bucket: its own outcomes
/// at once and without a read (written or not, the write failed or not), every worker's as of
/// its own last write, and another worker's newer ones by reading the record; a record that
/// cannot be read answers "unknown", not "no outcome" (the consumer then holds a record
/// delivered again rather than send it a second time).
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_knows_its_own_outcomes_and_every_workers_as_of_its_last_write() {
    use flowplane::worker::progress::{Outcome, ProgressDeltas};
    let env = support::local_env();
    let admin = jetstream::new(support::nats_admin(&env.nats_url).await);
    let namespace = format!("settled-{}", std::process::id());
    let names = QueueNames::for_flow(&namespace, "orders");
    ensure_queue(&admin, &names, &QueuePolicy::default())
        .await
        .unwrap();
    let store = bucket(&admin, &names).await.unwrap();
    let worker = ProgressDeltas::default();
    let other = ProgressDeltas::default();

    worker.settle(7, Outcome::Delivered);
    assert!(worker.settled_here(7) && !worker.settled_here(8));
    assert!(!other.settled_here(7));
    assert_eq!(
        other.settled_in_record(&store, &[7]).await,
        Some(vec![false])
    );
    worker.flush(&store, "1.0.0").await.unwrap().unwrap();
    assert!(worker.settled_here(7), "still known once written");
    assert_eq!(
        other.settled_in_record(&store, &[7, 8]).await,
        Some(vec![true, false])
    );
    assert!(
        !other.settled_here(7),
        "not read, not written: unknown here"
    );

    // The other worker writes: from then on it knows 7 without a read (a late copy of 7
    // delivered to it is acked as it comes), and the first worker knows 9 once it writes.
    other.settle(9, Outcome::DeadLettered);
    other.flush(&store, "1.0.0").await.unwrap().unwrap();
    assert!(other.settled_here(7) && other.settled_here(9));
    assert!(!worker.settled_here(9));
    worker.settle(10, Outcome::Delivered);
    worker.flush(&store, "1.0.0").await.unwrap().unwrap();
    assert!(worker.settled_here(9) && worker.settled_here(10));
    let progress = read_progress(&admin, &names).await.unwrap();
    assert_eq!((progress.delivered, progress.dead_lettered), (2, 1));

    // No bucket: the record cannot be read, and an outcome whose write failed is still known.
    delete_queue(&admin, &names).await.unwrap();
    admin.delete_key_value(&names.state_bucket).await.unwrap();
    assert_eq!(worker.settled_in_record(&store, &[11]).await, None);
    worker.settle(11, Outcome::Delivered);
    assert!(worker.flush(&store, "1.0.0").await.is_err());
    assert!(worker.settled_here(11) && worker.settled_here(7));
}
