//! Replay, backfill and an explicit cursor on a real control plane and a real nats-server,
//! with the operator in-process, the OData source against the ERP simulator and the
//! forecasting simulator as the versioned-upsert target; the worker is the operator's own
//! configuration run in-process. Exact counts throughout: 100 order lines delivered, 30 of
//! them changed; the target loses its data; a replay from the time of the change brings back
//! exactly the 30 changed records, the same request again nothing, a replay from before the
//! flow every record the flow received once (not the first replay's copies); a backfill window
//! reads exactly its 30 records without moving the live cursor; hostile requests are refused
//! with their reason in status.

mod e2e_support;
mod support;

use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use e2e_support::{InProcessWorker, flow_queue, progress, start_sims};
use flowplane::api::integration_flow::{IntegrationFlowStatus, OperationState};
use flowplane::api::{ConnectorBinding, DataContract, IntegrationFlow};
use flowplane::queue::{CURSOR_KEY, QueueNames};
use flowplane::sim::erp::{ErpSeed, SALES_ORDER_LINES, key_of};
use flowplane::worker_config::WorkerConfig;
use support::{TestNamespace, apply_yaml, client, eventually, operator};

const FLOW: &str = "orders";
const ENTITY: &str = "sales-history";
/// `LastChangeDateTime` of the simulator's change 0 (one millisecond per change; the seed's
/// 100 lines are changes 1 to 100).
const EPOCH_MS: i64 = 1_704_067_200_000;

/// A change's `LastChangeDateTime` as the simulator writes it (always milliseconds).
fn change_time(change: i64) -> String {
    let time = jiff::Timestamp::from_millisecond(EPOCH_MS + change).unwrap();
    format!("{time:.3}")
}

/// The flow.
const FLOW_MANIFEST: &str = r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders}
spec:
  source: {bindingRef: erp, entity: A_SalesOrderItem, syncMode: Incremental, cursorField: LastChangeDateTime, maxBackfillWindow: 1h}
  target: {bindingRef: forecasting, entity: /api/v1/sales-history/bulk-upsert, batchSize: 25}
  contract: {name: order-lines, versions: "^1"}
  schedule: {pollInterval: 1s}
  mapping:
    fields:
    - {to: salesOrder, from: SalesOrder}
    - {to: salesOrderItem, from: SalesOrderItem}
    - {to: quantity, from: RequestedQuantity}
    - {to: changedAt, from: LastChangeDateTime}
  deletionPolicy: Delete
"#;

async fn rendered_config(client: &Client, ns: &str) -> WorkerConfig {
    let mut config = eventually(60, "the worker configuration", || {
        support::rendered_worker_config(client, ns, FLOW)
    })
    .await;
    config.nats_creds_file = None;
    config.nats_ca_file = None;
    config
}

async fn annotate(flows: &Api<IntegrationFlow>, key: &str, value: &str) {
    flows
        .patch(
            FLOW,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
}

/// The flow's status once `operation` acknowledges `value`.
async fn acknowledged(
    flows: &Api<IntegrationFlow>,
    operation: &str,
    value: &str,
) -> IntegrationFlowStatus {
    eventually(60, &format!("{operation}={value} acknowledged"), || async {
        let status = flows.get(FLOW).await.ok()?.status?;
        (status.operations.get(operation).map(String::as_str) == Some(value)).then_some(status)
    })
    .await
}

fn accepted(status: &IntegrationFlowStatus) -> (String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "OperationsAccepted")
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

async fn stream_messages(js: &async_nats::jetstream::Context, names: &QueueNames) -> u64 {
    let mut stream = js.get_stream(&names.stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn stored_cursor(js: &async_nats::jetstream::Context, names: &QueueNames) -> String {
    let store = flowplane::queue::jetstream::bucket(js, names)
        .await
        .unwrap();
    String::from_utf8(store.get(CURSOR_KEY).await.unwrap().unwrap().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_backfill_redeliver_exactly_what_they_name_once() {
    let client = client().await;
    operator();
    let ns = TestNamespace::new(&client, "replay").await;
    let before_flow = jiff::Timestamp::now();
    let sims = start_sims(ErpSeed {
        order_lines: 100,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 20,
    })
    .await;
    let nats_url = support::local_env().nats_url.clone();
    let names = QueueNames::for_flow(&ns.name, FLOW);
    let (js, _cleanup) = flow_queue(&nats_url, &names).await;
    for doc in support::erp_and_forecasting_bindings(&sims.erp_url, &sims.forecast_url) {
        let _: ConnectorBinding = apply_yaml(&client, &ns.name, &doc).await;
    }
    let contract = support::order_lines_contract(&[
        "{name: quantity, type: String, required: true}",
        "{name: changedAt, type: Timestamp, required: true}",
    ]);
    let _: DataContract = apply_yaml(&client, &ns.name, &contract).await;
    let _: IntegrationFlow = apply_yaml(&client, &ns.name, FLOW_MANIFEST).await;
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns.name);

    let worker = InProcessWorker::start(rendered_config(&client, &ns.name).await, "worker-0");
    eventually(120, "100 records delivered", || async {
        let p = progress(&js, &names).await;
        let applied = sims.forecast.received(ENTITY).applied();
        (p.delivered == 100 && applied == 100).then_some(())
    })
    .await;

    // 30 lines change (the last 30 of the seed: changes 71..100 move to 101..130).
    let keys: Vec<String> = sims
        .erp
        .all(SALES_ORDER_LINES)
        .iter()
        .map(|r| key_of(SALES_ORDER_LINES, r))
        .collect();
    assert_eq!(keys.len(), 100);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let changed_at = jiff::Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for key in &keys[70..] {
        let change = json!({"RequestedQuantity": "777"});
        sims.erp
            .update(SALES_ORDER_LINES, key, change.as_object().unwrap().clone())
            .unwrap();
    }
    let live = eventually(120, "the 30 changes delivered", || async {
        let p = progress(&js, &names).await;
        (p.delivered == 130).then_some(p)
    })
    .await;
    assert_eq!((live.read, live.dead_lettered, live.replayed), (130, 0, 0));
    assert_eq!(stream_messages(&js, &names).await, 130);

    // The target loses its data; a replay from the time of the change brings back the 30.
    sims.forecast.reset();
    let r1 = format!("id=r1,from={changed_at}");
    annotate(&flows, "flowplane.io/replay", &r1).await;
    let status = acknowledged(&flows, "replay", &r1).await;
    let replay = status.replay.clone().unwrap();
    assert_eq!(
        (replay.state, replay.replayed, replay.duplicates),
        (OperationState::Done, 30, 0),
        "{replay:?}"
    );
    assert_eq!(accepted(&status), ("True".into(), "Accepted".into()));
    let after_r1 = eventually(120, "the 30 replayed records delivered", || async {
        let p = progress(&js, &names).await;
        let report = sims.forecast.received(ENTITY);
        (p.delivered == 160 && report.applied() == 30).then_some((p, report))
    })
    .await;
    assert_eq!((after_r1.0.read, after_r1.0.replayed), (130, 30));
    // read + replayed = delivered + dead-lettered.
    assert_eq!(after_r1.0.read + after_r1.0.replayed, after_r1.0.delivered);
    let report = after_r1.1;
    assert_eq!(report.keys.len(), 30);
    assert!(
        report
            .keys
            .values()
            .all(|k| k.applied_versions.len() == 1 && k.value["quantity"] == "777"),
        "only the changed lines, at their newest version, each once"
    );

    // The same request id again (another start): the replay is not run twice.
    let again = format!("id=r1,from={before_flow}");
    annotate(&flows, "flowplane.io/replay", &again).await;
    let status = acknowledged(&flows, "replay", &again).await;
    assert_eq!(status.replay.unwrap().replayed, 30);
    assert_eq!(
        stream_messages(&js, &names).await,
        160,
        "nothing republished"
    );

    // From before the flow: every record the flow received, once; r1's copies left out.
    let r2 = format!("id=r2,from={before_flow}");
    annotate(&flows, "flowplane.io/replay", &r2).await;
    let replay = acknowledged(&flows, "replay", &r2).await.replay.unwrap();
    assert_eq!((replay.replayed, replay.duplicates), (130, 0), "{replay:?}");
    assert!(
        replay
            .message
            .unwrap()
            .contains("30 copies of earlier replays left out")
    );
    assert_eq!(stream_messages(&js, &names).await, 290);
    let (p, report) = eventually(120, "the 130 replayed records delivered", || async {
        let p = progress(&js, &names).await;
        let report = sims.forecast.received(ENTITY);
        (p.delivered == 290).then_some((p, report))
    })
    .await;
    assert_eq!((p.read, p.replayed, p.dead_lettered), (130, 160, 0));
    // The target upserts by key and version: 70 keys get their only version, the 30 changed
    // ones ignore their older version (stale) and take their newest again as a no-op.
    assert_eq!(report.keys.len(), 100);
    assert_eq!(report.applied(), 100);
    assert_eq!(report.duplicates(), 30);
    assert_eq!(report.keys.values().map(|k| k.stale).sum::<u64>(), 30);

    // Hostile replays: refused with their reason, nothing republished.
    for (value, reason) in [
        ("id=r3,from=2999-01-01T00:00:00Z", "ReplayFromInFuture"),
        ("id=r4,from=1970-01-01T00:00:00Z", "ReplayBeyondRetention"),
        ("id=r5,from=last tuesday", "ReplayInvalid"),
    ] {
        annotate(&flows, "flowplane.io/replay", value).await;
        let status = acknowledged(&flows, "replay", value).await;
        let replay = status.replay.clone().unwrap();
        assert_eq!(replay.state, OperationState::Refused);
        assert_eq!(replay.reason.as_deref(), Some(reason));
        assert_eq!(accepted(&status), ("False".into(), reason.into()));
    }
    assert_eq!(stream_messages(&js, &names).await, 290);

    // A backfill of changes 21..50: exactly 30 records read, the live cursor where it was.
    // The simulator offers delta links: the live cursor is the last one.
    let cursor_before = stored_cursor(&js, &names).await;
    assert!(cursor_before.starts_with("delta:"), "{cursor_before}");
    let b1 = format!("id=b1,from={},to={}", change_time(21), change_time(51));
    annotate(&flows, "flowplane.io/backfill", &b1).await;
    acknowledged(&flows, "backfill", &b1).await;
    let backfill = eventually(120, "the backfill done", || async {
        let backfill = flows.get(FLOW).await.ok()?.status?.backfill?;
        (backfill.state == OperationState::Done).then_some(backfill)
    })
    .await;
    assert_eq!(backfill.read, 30, "{backfill:?}");
    assert_eq!(backfill.published + backfill.duplicates, 30, "{backfill:?}");
    assert_eq!(backfill.dead_lettered, 0);
    assert_eq!(stored_cursor(&js, &names).await, cursor_before);
    let p = progress(&js, &names).await;
    assert_eq!(p.cursor.as_deref(), Some(cursor_before.as_str()));
    assert_eq!(p.read, 130 + backfill.published);

    // Hostile windows.
    for (value, reason) in [
        (
            format!(
                "id=b2,from={},to={}",
                change_time(0),
                change_time(7_200_000)
            ),
            "BackfillWindowTooLarge",
        ),
        (
            "id=b3,from=2999-01-01T00:00:00Z,to=2999-01-01T00:10:00Z".to_string(),
            "BackfillWindowInFuture",
        ),
        (
            format!("id=b4,from={},to={}", change_time(50), change_time(20)),
            "BackfillInvalid",
        ),
    ] {
        annotate(&flows, "flowplane.io/backfill", &value).await;
        let status = acknowledged(&flows, "backfill", &value).await;
        let backfill = status.backfill.clone().unwrap();
        assert_eq!(backfill.state, OperationState::Refused);
        assert_eq!(backfill.reason.as_deref(), Some(reason), "{backfill:?}");
        assert_eq!(accepted(&status), ("False".into(), reason.into()));
    }

    // The cursor: a number where the cursor is a time is refused; a time is set, audited in
    // an event, and the extractor goes on from it back to the newest change.
    annotate(&flows, "flowplane.io/cursor", "id=c1,value=42").await;
    let status = acknowledged(&flows, "cursor", "id=c1,value=42").await;
    let change = status.cursor_change.clone().unwrap();
    assert_eq!(
        (change.state, change.reason.as_deref()),
        (OperationState::Refused, Some("CursorInvalid"))
    );
    assert_eq!(stored_cursor(&js, &names).await, cursor_before);
    let c2 = format!("id=c2,value={}", change_time(90));
    annotate(&flows, "flowplane.io/cursor", &c2).await;
    let status = acknowledged(&flows, "cursor", &c2).await;
    let change = status.cursor_change.clone().unwrap();
    assert_eq!(change.state, OperationState::Done);
    assert_eq!(change.previous.as_deref(), Some(cursor_before.as_str()));
    assert_eq!(accepted(&status), ("True".into(), "Accepted".into()));
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let note = eventually(60, "the CursorSet event", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("CursorSet"))
            .and_then(|e| e.note)
    })
    .await;
    assert!(
        note.contains(&format!(
            "cursor set to {} (was {cursor_before}) by request c2",
            change_time(90)
        )),
        "{note}"
    );
    // Read again from change 90: the 30 changed lines and line 90, then a new delta link.
    eventually(120, "a delta link again after the set cursor", || async {
        stored_cursor(&js, &names)
            .await
            .starts_with("delta:")
            .then_some(())
    })
    .await;
    worker.stop().await.unwrap();
}
