//! Two replicas, one Lease: one leads, the other waits, and takes over when the leader stops.
//! Both run with the chart's ServiceAccount permissions (its leader-election Role, in the
//! operator's own namespace), not as admin.

mod support;

use std::time::Duration;

use flowplane::controller::leader::LeaderElector;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use support::{OPERATOR_NAMESPACE, client, operator_client};

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops() {
    let admin = client().await;
    let client = operator_client().await;
    // The chart grants the Lease verbs in the release namespace only; a name of its own per run.
    let name = format!("lease-test-{}", std::process::id());
    let lease = Duration::from_secs(3);
    let a = LeaderElector::new(
        client.clone(),
        OPERATOR_NAMESPACE,
        &name,
        "replica-a",
        lease,
    );
    let b = LeaderElector::new(
        client.clone(),
        OPERATOR_NAMESPACE,
        &name,
        "replica-b",
        lease,
    );
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a takes the free lease"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b must not take a held lease"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    // a stops renewing; b takes over once the lease expires (bounded wait).
    tokio::time::timeout(Duration::from_secs(30), b.acquire())
        .await
        .expect("b takes over");
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a lost it");
    Api::<Lease>::namespaced(admin, OPERATOR_NAMESPACE)
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}
