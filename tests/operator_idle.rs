//! Once the system settles, the operator makes zero write requests: no status rewrites, no
//! re-applies, no events, no matter how often flows are resynced (every 5 s here).

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use flowplane::api::IntegrationFlow;
use support::{TestNamespace, client, eventually, operator, repo_root};

#[tokio::test]
async fn a_settled_operator_makes_no_writes_for_30_seconds() {
    let client = client().await;
    let operator = operator();
    let ns = TestNamespace::new(&client, "idle").await;
    // The whole example scenario: bindings, contracts, code maps and six flows.
    let (ok, rendered, err) = support::kubectl(
        &[
            "kustomize",
            repo_root().join("examples/base").to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = support::kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&rendered),
    );
    assert!(ok, "{err}");
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &ns.name);
    eventually(90, "every flow's status at its generation", || async {
        let list = flows.list(&Default::default()).await.ok()?;
        (list.items.len() == 6
            && list.items.iter().all(|f| {
                f.status.as_ref().and_then(|s| s.observed_generation) == f.metadata.generation
            }))
        .then_some(())
    })
    .await;

    // kube-controller-manager has taken in every worker Deployment (its status is what
    // WorkersAvailable reports; a late update of it is a real change, not idle churn).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(90, "every worker Deployment's status observed", || async {
        let list = deployments.list(&Default::default()).await.ok()?;
        (list.items.len() == 6
            && list.items.iter().all(|d| {
                let status = d.status.as_ref();
                status.and_then(|s| s.observed_generation) == d.metadata.generation
                    && status.and_then(|s| s.replicas).is_some()
            }))
        .then_some(())
    })
    .await;

    // Settled: no write for 10 s in a row (bounded at 120 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = operator.writes.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(10) {
        assert!(
            Instant::now() < deadline,
            "the operator never stopped writing; recent writes: {:#?}",
            operator.recent_writes.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = operator.writes.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let before = operator.writes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = operator.writes.load(Ordering::Relaxed);
    println!(
        "operator write requests in 30 s of idleness: {}",
        after - before
    );
    let in_window: Vec<String> = {
        let recent = operator.recent_writes.lock().unwrap();
        let skip = recent.len().saturating_sub((after - before) as usize);
        recent.iter().skip(skip).cloned().collect()
    };
    assert_eq!(
        after - before,
        0,
        "a settled operator must not write; its writes in the window: {in_window:#?}"
    );

    // And it is not simply asleep: an edit is acted on.
    let patch = serde_json::json!({"spec": {"suspend": true}});
    flows
        .patch(
            "order-history-to-forecasting",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually(60, "the edit to be reconciled", || async {
        (operator.writes.load(Ordering::Relaxed) > after).then_some(())
    })
    .await;
}
