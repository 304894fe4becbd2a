//! The closed loop of the demo, end to end with exact counts: the example flows
//! `forecast-deltas-to-erp-replenishment` and `forecasts-to-supplier-portal` exactly as
//! `flowplane render` makes them from `examples/overlays/demo` (only the addresses, the
//! mounted Secrets and the queue names changed), run by a worker on the local environment's
//! NATS (its own user, TLS) against the forecasting simulator (proposals and the published
//! forecast), the ERP simulator (OData `$batch` into its replenishment entity set) and the
//! supplier-portal simulator.
//!
//! Proposals read = applied in the ERP + parked for review + escalated to the portal +
//! dead-lettered, at every step, and nothing arrives anywhere twice.

mod e2e_support;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_support::*;
use flowplane::queue::approvals::{Decision, Route, decide, list_pending, route_counts};
use flowplane::queue::{QueueNames, list_dead_letters};
use flowplane::sim::erp::ErpSeed;
use flowplane::sim::erp_write::REPLENISHMENT_PROPOSALS;
use flowplane::sim::planning::published_forecasts;
use flowplane::sim::portal::PortalState;
use flowplane::worker_config::WorkerConfig;
use serde::Deserialize;

const TIMEOUT: Duration = Duration::from_secs(90);
const EXCEPTIONS: &str = "forecast-exceptions";

/// The worker configurations `flowplane render` makes of the demo overlay, by flow.
fn rendered_demo_flows(dir: &Path) -> Vec<WorkerConfig> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kustomized = Command::new(support::tool("kubectl"))
        .arg("kustomize")
        .arg(root.join("examples/overlays/demo"))
        .output()
        .unwrap();
    assert!(kustomized.status.success(), "{kustomized:?}");
    let manifests = dir.join("demo.yaml");
    std::fs::write(&manifests, &kustomized.stdout).unwrap();
    let rendered = Command::new(env!("CARGO_BIN_EXE_flowplane"))
        .arg("render")
        .arg("-f")
        .arg(&manifests)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    serde_yaml::Deserializer::from_slice(&rendered.stdout)
        .filter_map(|doc| {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            value["data"]["worker.json"]
                .as_str()
                .map(|text| serde_json::from_str(text).unwrap())
        })
        .collect()
}

/// The rendered flow `name` pointed at this test's simulators and NATS, with the Secrets a pod
/// would mount written under `dir`, on queues of its own.
fn localised(
    configs: &[WorkerConfig],
    name: &str,
    urls: &Urls,
    dir: &Path,
    flow: &str,
) -> WorkerConfig {
    let mut config = configs.iter().find(|c| c.flow == name).unwrap().clone();
    let mut endpoints = vec![&mut config.source.endpoint, &mut config.target.endpoint];
    if let Some(escalate) = config
        .approval
        .as_mut()
        .and_then(|a| a.escalate_to.as_mut())
    {
        endpoints.push(&mut escalate.endpoint);
    }
    for endpoint in endpoints {
        endpoint.url = match endpoint.binding.as_str() {
            "forecasting-platform" => urls.forecast.clone(),
            "erp-s4" => urls.erp.clone(),
            "supplier-portal" => urls.portal.clone(),
            other => panic!("unexpected binding {other}"),
        };
        if endpoint.secret_dir.is_some() {
            let secrets = dir.join(&endpoint.binding);
            std::fs::create_dir_all(&secrets).unwrap();
            for key in ["token", "username", "password"] {
                std::fs::write(secrets.join(key), "local-test-only").unwrap();
            }
            endpoint.secret_dir = Some(secrets.display().to_string());
        }
    }
    config.namespace = "e2e".into();
    config.flow = flow.to_string();
    config.queue = QueueNames::for_flow("e2e", flow);
    config.nats_url = support::local_env().nats_url.clone();
    config
}

struct Urls {
    forecast: String,
    erp: String,
    portal: String,
}

/// What each place holds, as the test reads it.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    read: u64,
    applied_in_erp: u64,
    parked: u64,
    escalated: u64,
    dead_lettered: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_read_are_applied_parked_escalated_or_dead_lettered_each_once() {
    let dir = TempDir::new("loop");
    let configs = rendered_demo_flows(dir.0.as_path());
    let sims = start_sims(ErpSeed::empty()).await;
    let portal = PortalState::new();
    let portal_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = Urls {
        forecast: sims.forecast_url.clone(),
        erp: sims.erp_url.clone(),
        portal: format!("http://{}", portal_listener.local_addr().unwrap()),
    };
    let portal_task = tokio::spawn(flowplane::sim::portal::serve(
        portal_listener,
        portal.clone(),
    ));
    // The first planning run: 40 proposals (24 small, 8 medium, 6 large changes, 2 for a
    // location no code map knows).
    sims.forecast.proposals.publish(40);

    let deltas = localised(
        &configs,
        "forecast-deltas-to-erp-replenishment",
        &urls,
        dir.0.as_path(),
        &unique_flow("loop-deltas"),
    );
    let forecasts = localised(
        &configs,
        "forecasts-to-supplier-portal",
        &urls,
        dir.0.as_path(),
        &unique_flow("loop-forecasts"),
    );
    let nats_url = deltas.nats_url.clone();
    let names = deltas.queue.clone();
    let _cleanup = [
        QueueCleanup {
            url: nats_url.clone(),
            names: names.clone(),
        },
        QueueCleanup {
            url: nats_url.clone(),
            names: forecasts.queue.clone(),
        },
    ];
    let js = jetstream(&nats_url).await;
    // The bindings' shared quota buckets, which the operator's binding controller makes (a
    // flow's user may use them, not create them).
    for binding in ["forecasting-platform", "erp-s4", "supplier-portal"] {
        flowplane::queue::quota::quota_bucket(&js, "e2e", binding, 1)
            .await
            .unwrap();
    }
    let deltas_worker = InProcessWorker::start(deltas, "loop-deltas-0");
    let forecasts_worker = InProcessWorker::start(forecasts.clone(), "loop-forecasts-0");

    let counts = || {
        let (js, names, sims, portal) = (js.clone(), names.clone(), &sims, portal.clone());
        async move {
            let progress = progress(&js, &names).await;
            Counts {
                read: progress.read,
                applied_in_erp: sims.erp.received(REPLENISHMENT_PROPOSALS).applied(),
                parked: list_pending(&js, &names)
                    .await
                    .map_or(0, |p| p.len() as u64),
                escalated: portal.received(EXCEPTIONS).distinct.len() as u64,
                dead_lettered: progress.dead_lettered,
            }
        }
    };
    let settle = |want: Counts| {
        let counts = &counts;
        async move {
            let mut last = None;
            let found = tokio::time::timeout(TIMEOUT, async {
                loop {
                    let now = counts().await;
                    if now == want {
                        return;
                    }
                    last = Some(now);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
            .await;
            assert!(found.is_ok(), "wanted {want:?}, last saw {last:?}");
        }
    };

    settle(Counts {
        read: 40,
        applied_in_erp: 24,
        parked: 8,
        escalated: 6,
        dead_lettered: 2,
    })
    .await;
    let letters = list_dead_letters(&js, &names, None).await.unwrap();
    assert!(
        letters.iter().all(|l| l.reason == "UnmappedCode"),
        "{letters:#?}"
    );

    // A planner approves five of the parked changes and rejects three.
    let pending = list_pending(&js, &names).await.unwrap();
    for (i, review) in pending.iter().enumerate() {
        let decision = if i < 5 {
            Decision::Approve
        } else {
            Decision::Reject
        };
        decide(&js, &names, &review.id, decision, None)
            .await
            .unwrap();
    }
    settle(Counts {
        read: 40,
        applied_in_erp: 29,
        parked: 0,
        escalated: 6,
        dead_lettered: 5,
    })
    .await;

    // The next planning run: 20 more; the cursor reads each new proposal once.
    sims.forecast.proposals.publish(20);
    settle(Counts {
        read: 60,
        applied_in_erp: 41,
        parked: 4,
        escalated: 9,
        dead_lettered: 6,
    })
    .await;

    // Nothing twice: every ERP key written once, at one version; no portal record twice.
    let erp = sims.erp.received(REPLENISHMENT_PROPOSALS);
    assert_eq!(erp.keys.len(), 41);
    assert!(
        erp.keys
            .values()
            .all(|k| k.applied_versions.len() == 1 && k.duplicates == 0 && k.stale == 0),
        "{erp:#?}"
    );
    let exceptions = portal.received(EXCEPTIONS);
    assert_eq!((exceptions.records, exceptions.duplicates), (9, 0));
    let rejected = list_dead_letters(&js, &names, Some("ReviewRejected"))
        .await
        .unwrap();
    assert_eq!(rejected.len(), 3, "{rejected:#?}");
    // The decision audit: each routed proposal once (the three unmapped ones never reach the
    // rules; the four pending have no route yet): 36 + 5 + 3 + 9 = 60 - 3 - 4.
    assert_eq!(
        route_counts(&js, &names)
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        [
            (Route::Applied, 36),
            (Route::Approved, 5),
            (Route::Rejected, 3),
            (Route::Escalated, 9)
        ]
    );
    // Values as the ERP got them: ERP material and plant codes, from the code maps.
    let sample = erp.keys.values().next().unwrap();
    assert!(
        sample.value["material"]
            .as_str()
            .is_some_and(|m| m.starts_with("0000000000")),
        "{sample:#?}"
    );

    // The published forecast reached the portal, every bucket once.
    let published = published_forecasts().len();
    let forecast_names = forecasts.queue.clone();
    eventually(TIMEOUT, "the published forecast at the portal", || {
        let portal = portal.clone();
        async move { (portal.received("forecasts").distinct.len() == published).then_some(()) }
    })
    .await;
    let forecast_progress = progress(&js, &forecast_names).await;
    assert_eq!(forecast_progress.dead_lettered, 0);
    assert_eq!(portal.received("forecasts").duplicates, 0);

    deltas_worker.stop().await.unwrap();
    forecasts_worker.stop().await.unwrap();
    portal_task.abort();
}
