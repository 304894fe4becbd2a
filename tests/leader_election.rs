//! Two replicas, one Lease: one leads, the other waits, and takes over when the leader stops.

mod support;

use std::time::Duration;

use flowplane::controller::leader::LeaderElector;
use support::{TestNamespace, client};

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "lease").await;
    let lease = Duration::from_secs(3);
    let a = LeaderElector::new(
        client.clone(),
        &ns.name,
        "flowplane-operator",
        "replica-a",
        lease,
    );
    let b = LeaderElector::new(
        client.clone(),
        &ns.name,
        "flowplane-operator",
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
}
