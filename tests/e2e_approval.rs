//! End-to-end approval routing of forecast deltas on a real nats-server: planner forecasts
//! arrive on a NATS subject, the worker routes each delta by the flow's rules (< 5% Apply,
//! < 20% Review, else Escalate) to the ERP (the forecast simulator's `erp-forecasts` entity) or
//! the supplier-collaboration target (its `supplier-collaboration` entity), and parked reviews
//! are approved, rejected or time out.

mod e2e_support;
mod support;

use std::time::Duration;

use e2e_support::*;
use flowplane::api::connector_binding::{Protocol, System};
use flowplane::api::data_contract::RecordSchema;
use flowplane::api::integration_flow::{
    ApprovalAction, ApprovalRule, ReviewTimeoutAction, SyncMode, WriteMode,
};
use flowplane::queue::approvals::{
    Decision, PendingReview, Route, decide, list_pending, route_counts,
};
use flowplane::queue::{QueueNames, list_dead_letters};
use flowplane::sim::erp::ErpSeed;
use flowplane::worker::sample;
use flowplane::worker_config::{
    ApprovalConfig, ContractConfig, FieldMappingConfig, MappingConfig, SourceConfig, TargetConfig,
    WorkerConfig,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const ERP: &str = "erp-forecasts";
const SUPPLIER: &str = "supplier-collaboration";

fn contract() -> ContractConfig {
    let schema: RecordSchema = serde_json::from_value(json!({
        "primaryKey": ["sku", "location"],
        "additionalFields": "Ignore",
        "fields": [
            {"name": "sku", "type": "String", "required": true},
            {"name": "location", "type": "String", "required": true},
            {"name": "quantity", "type": "Int", "required": true},
            {"name": "baseline", "type": "Int", "required": true},
            {"name": "version", "type": "Int", "required": true}
        ]
    }))
    .unwrap();
    ContractConfig {
        name: "forecast-deltas".into(),
        version: "1.0.0".into(),
        schema_hash: flowplane::contract::schema_hash(&schema),
        schema,
        quality: vec![],
    }
}

fn target(url: &str, entity: &str) -> TargetConfig {
    TargetConfig {
        endpoint: sample::endpoint("target", System::Erp, Protocol::Rest, url),
        entity: entity.into(),
        write_mode: WriteMode::Upsert,
        batch_size: 100,
        // The earlier releases' route: the forecasting simulator's bulk upsert.
        rest: None,
        files: None,
    }
}

/// Forecasts from `subject` on NATS -> the ERP, with the approval rules of the design.
fn forecast_flow(
    flow: &str,
    nats_url: &str,
    subject: &str,
    forecast_url: &str,
    review_timeout: &str,
    on_timeout: ReviewTimeoutAction,
) -> WorkerConfig {
    let mut config = sample::sales_order_flow("e2e", flow, nats_url, "http://unused", forecast_url);
    config.queue = QueueNames::for_flow("e2e", flow);
    config.source = SourceConfig {
        endpoint: sample::endpoint("planning", System::Forecasting, Protocol::Nats, nats_url),
        entity: subject.into(),
        sync_mode: SyncMode::Incremental,
        cursor_field: Some("version".into()),
        select: vec![],
        poll_interval: "200ms".into(),
        rest: None,
    };
    config.target = target(forecast_url, ERP);
    config.contract = contract();
    config.mapping = MappingConfig {
        fields: ["sku", "location", "quantity", "baseline", "version"]
            .iter()
            .map(|f| FieldMappingConfig {
                to: f.to_string(),
                from: Some(f.to_string()),
                value: None,
                code_map: None,
            })
            .collect(),
        code_maps: Default::default(),
    };
    config.approval = Some(ApprovalConfig {
        value_field: "quantity".into(),
        baseline_field: "baseline".into(),
        rules: vec![
            ApprovalRule {
                below_percent: 5.0,
                action: ApprovalAction::Apply,
            },
            ApprovalRule {
                below_percent: 20.0,
                action: ApprovalAction::Review,
            },
        ],
        otherwise: ApprovalAction::Escalate,
        review_timeout: Some(review_timeout.into()),
        on_timeout,
        escalate_to: Some(target(forecast_url, SUPPLIER)),
    });
    config
}

fn forecast(sku: &str, quantity: i64, baseline: i64) -> Value {
    json!({"sku": sku, "location": "DC-NORTH", "quantity": quantity, "baseline": baseline, "version": 1})
}

/// Publishes the forecasts until the worker has read them all (the capture of the subject
/// starts when the worker first holds the lease; republished records have the same key and
/// version, so the flow's stream drops them as duplicates, though the read count includes
/// them).
async fn feed(nats_url: &str, subject: &str, names: &QueueNames, records: &[Value]) {
    let client = support::nats_admin(nats_url).await;
    let js = jetstream(nats_url).await;
    eventually(TIMEOUT, "the worker to read every forecast", || {
        let client = client.clone();
        let js = js.clone();
        async move {
            if progress(&js, names).await.read >= records.len() as u64 {
                return Some(());
            }
            for record in records {
                client
                    .publish(
                        subject.to_string(),
                        serde_json::to_vec(record).unwrap().into(),
                    )
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
            None
        }
    })
    .await;
}

fn skus(report: &flowplane::sim::forecast::EntityReport) -> Vec<String> {
    let mut skus: Vec<String> = report
        .keys
        .values()
        .map(|k| k.value["sku"].as_str().unwrap_or_default().to_string())
        .collect();
    skus.sort();
    skus
}

fn seed() -> ErpSeed {
    ErpSeed::empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_are_applied_reviewed_or_escalated_and_reviews_are_approved_or_rejected() {
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed()).await;
    let flow = unique_flow("approval");
    let subject = format!("planning.{flow}");
    let config = forecast_flow(
        &flow,
        &nats_url,
        &subject,
        &sims.forecast_url,
        "1h",
        ReviewTimeoutAction::Reject,
    );
    let names = config.queue.clone();
    let (js, _cleanup) = flow_queue(&nats_url, &names).await;
    // The terminal below works with the flow's own credentials, as a planner would.
    let own = with_flow_identity(config.clone());
    let listen = free_listen_addr();
    let worker = InProcessWorker::start_listening(config, "approver-1", Some(listen));
    let started = jiff::Timestamp::now().as_second();
    let oldest_review = format!(
        r#"flowplane_worker_oldest_pending_review_timestamp_seconds{{namespace="e2e",flow="{flow}"}}"#
    );

    let records = [
        forecast("SKU-A", 102, 100), // +2%: Apply
        forecast("SKU-B", 110, 100), // +10%: Review
        forecast("SKU-C", 150, 100), // +50%: Escalate
        forecast("SKU-D", 90, 100),  // -10%: Review
        forecast("SKU-E", 5, 0),     // baseline 0: infinite, Escalate
    ];
    feed(&nats_url, &subject, &names, &records).await;

    let pending: Vec<PendingReview> = eventually(TIMEOUT, "two deltas parked for review", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let pending = list_pending(&js, &names).await.ok()?;
            (pending.len() == 2).then_some(pending)
        }
    })
    .await;
    eventually(
        TIMEOUT,
        "applied and escalated deltas at their targets",
        || {
            let forecast = sims.forecast.clone();
            async move {
                (skus(&forecast.received(ERP)) == ["SKU-A"]
                    && skus(&forecast.received(SUPPLIER)) == ["SKU-C", "SKU-E"])
                .then_some(())
            }
        },
    )
    .await;
    let review_b = pending.iter().find(|p| p.key.starts_with("SKU-B")).unwrap();
    let review_d = pending.iter().find(|p| p.key.starts_with("SKU-D")).unwrap();
    assert!((review_b.delta_percent - 10.0).abs() < 1e-9, "{pending:?}");
    assert!((review_d.delta_percent + 10.0).abs() < 1e-9, "{pending:?}");
    assert!(review_b.expires > 0);
    // Parked, not delivered.
    assert!(!skus(&sims.forecast.received(ERP)).contains(&"SKU-B".to_string()));
    // The exception queue's age: when the oldest pending review was parked.
    let parked_at = eventually(TIMEOUT, "the oldest pending review's age", || async {
        scrape(listen, &oldest_review).await.filter(|v| *v > 0.0)
    })
    .await as i64;
    let now = jiff::Timestamp::now().as_second();
    assert!(
        (started..=now).contains(&parked_at),
        "parked at {parked_at}, between {started} and {now}"
    );

    // Approve B from a terminal, reject D as the operator's annotation handler does.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowplane"))
        .args([
            "review",
            "approve",
            "--flow",
            &flow,
            "-n",
            "e2e",
            "--nats-url",
            &nats_url,
            "--nats-creds",
            own.nats_creds_file.as_deref().unwrap(),
            "--nats-ca",
            own.nats_ca_file.as_deref().unwrap(),
        ])
        .arg(&review_b.id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    decide(&js, &names, &review_d.id, Decision::Reject, Some("dana"))
        .await
        .unwrap();
    assert!(
        decide(&js, &names, "0000000000000000", Decision::Approve, None)
            .await
            .is_err(),
        "an unknown review id is an error"
    );

    eventually(TIMEOUT, "the approved delta at the ERP", || {
        let forecast = sims.forecast.clone();
        async move { (skus(&forecast.received(ERP)) == ["SKU-A", "SKU-B"]).then_some(()) }
    })
    .await;
    // Nothing waits any more: the age goes back to 0 (FlowplaneReviewAged clears).
    eventually(TIMEOUT, "no pending review left", || async {
        (scrape(listen, &oldest_review).await == Some(0.0)).then_some(())
    })
    .await;
    let letters = eventually(TIMEOUT, "the rejected delta in the DLQ", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let letters = list_dead_letters(&js, &names, None).await.ok()?;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].reason, "ReviewRejected");
    assert_eq!(letters[0].stage, "approval");
    assert_eq!(letters[0].record["sku"], "SKU-D");
    assert_eq!(letters[0].trace_id.len(), 32, "{}", letters[0].trace_id);

    eventually(
        TIMEOUT,
        "no pending reviews, 4 delivered and 1 dead-lettered",
        || {
            let js = js.clone();
            let names = names.clone();
            async move {
                let pending = list_pending(&js, &names).await.ok()?;
                let p = progress(&js, &names).await;
                (pending.is_empty() && p.delivered == 4 && p.dead_lettered == 1).then_some(())
            }
        },
    )
    .await;
    assert_eq!(sims.forecast.received(ERP).duplicates(), 0);
    assert!(!skus(&sims.forecast.received(ERP)).contains(&"SKU-D".to_string()));

    // The decision audit: every delta's route once, the reviewed ones with who and when (the
    // terminal has no Kubernetes identity, so nobody is named for B).
    let counts = route_counts(&js, &names).await.unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [
            (Route::Applied, 1),
            (Route::Approved, 1),
            (Route::Rejected, 1),
            (Route::Escalated, 2)
        ]
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowplane"))
        .args(["review", "list", "--routes", "--flow", &flow, "-n", "e2e"])
        .args(["--nats-url", &nats_url])
        .args(["--nats-creds", own.nats_creds_file.as_deref().unwrap()])
        .args(["--nats-ca", own.nats_ca_file.as_deref().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routes: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut audit: Vec<(&str, &str, Option<&str>, bool)> = routes
        .iter()
        .map(|r| {
            (
                r["route"].as_str().unwrap(),
                &r["key"].as_str().unwrap()[..5],
                r["decidedBy"].as_str(),
                r["decidedAt"].is_i64(),
            )
        })
        .collect();
    audit.sort();
    assert_eq!(
        audit,
        [
            ("applied", "SKU-A", None, false),
            ("approved", "SKU-B", None, true),
            ("escalated", "SKU-C", None, false),
            ("escalated", "SKU-E", None, false),
            ("rejected", "SKU-D", Some("dana"), true),
        ],
        "{routes:#?}"
    );
    assert!(
        routes
            .iter()
            .all(|r| r["at"].as_i64().unwrap() > 1_700_000_000)
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_nobody_decides_is_rejected_applied_or_escalated_as_on_timeout_says() {
    let nats_url = support::local_env().nats_url.clone();
    let sims = start_sims(seed()).await;
    let js = jetstream(&nats_url).await;
    let mut cleanups = Vec::new();
    let mut workers = Vec::new();
    let mut flows = Vec::new();
    for (name, on_timeout) in [
        ("timeout-reject", ReviewTimeoutAction::Reject),
        ("timeout-apply", ReviewTimeoutAction::Apply),
        ("timeout-escalate", ReviewTimeoutAction::Escalate),
    ] {
        let flow = unique_flow(name);
        let subject = format!("planning.{flow}");
        let mut config = forecast_flow(
            &flow,
            &nats_url,
            &subject,
            &sims.forecast_url,
            "2s",
            on_timeout,
        );
        // Entities of their own per flow, so the flows' deliveries are told apart.
        config.target.entity = format!("{ERP}-{name}");
        if let Some(approval) = config.approval.as_mut()
            && let Some(escalate) = approval.escalate_to.as_mut()
        {
            escalate.entity = format!("{SUPPLIER}-{name}");
        }
        cleanups.push(QueueCleanup {
            url: nats_url.clone(),
            names: config.queue.clone(),
        });
        workers.push(InProcessWorker::start(config.clone(), name));
        flows.push((config, subject, on_timeout));
    }
    for (config, subject, _) in &flows {
        feed(
            &nats_url,
            subject,
            &config.queue,
            &[forecast("SKU-T", 115, 100)],
        )
        .await;
    }
    for (config, _, on_timeout) in &flows {
        let names = config.queue.clone();
        let entity = config.target.entity.clone();
        eventually(TIMEOUT, "the timed-out review carried out", || {
            let js = js.clone();
            let names = names.clone();
            async move {
                let p = progress(&js, &names).await;
                let pending = list_pending(&js, &names).await.ok()?;
                (pending.is_empty() && p.delivered + p.dead_lettered == 1).then_some(())
            }
        })
        .await;
        let letters = list_dead_letters(&js, &names, None).await.unwrap();
        let arrived = skus(&sims.forecast.received(&entity));
        let escalated = skus(&sims.forecast.received(&format!(
            "{SUPPLIER}-{}",
            entity.trim_start_matches(&format!("{ERP}-"))
        )));
        match on_timeout {
            ReviewTimeoutAction::Reject => {
                assert!(
                    arrived.is_empty() && escalated.is_empty(),
                    "{arrived:?} {escalated:?}"
                );
                assert_eq!(letters.len(), 1, "{letters:#?}");
                assert_eq!(letters[0].reason, "ReviewTimeout");
                assert_eq!(letters[0].record["sku"], "SKU-T");
            }
            ReviewTimeoutAction::Apply => {
                assert_eq!(arrived, ["SKU-T"]);
                assert!(escalated.is_empty(), "{escalated:?}");
                assert!(letters.is_empty(), "{letters:#?}");
            }
            ReviewTimeoutAction::Escalate => {
                assert_eq!(escalated, ["SKU-T"]);
                assert!(arrived.is_empty(), "{arrived:?}");
                assert!(letters.is_empty(), "{letters:#?}");
            }
        }
        // Audited as timed out, whatever onTimeout did.
        assert_eq!(
            route_counts(&js, &names)
                .await
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [(Route::TimedOut, 1)]
        );
    }
    for worker in workers {
        worker.stop().await.unwrap();
    }
}
