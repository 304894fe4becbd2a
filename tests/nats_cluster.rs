//! The cluster tier: a real 3-node NATS cluster (three nats-server processes on loopback with
//! TLS routes and JetStream, in the local environment's operator/JWT mode with client TLS, the
//! trust chain `scripts/local-env.sh` made), a flow whose queue has three replicas, and nodes
//! killed mid-run: first a follower of the flow's stream, then its leader. The flow keeps
//! moving, nothing is lost or applied twice (read = delivered + dead-lettered, exact counts),
//! and the operator reports the lost replica (QueueReady=False, ReplicaLost) and the recovery.
//!
//! Only this tier (and the worker benchmark's scaling run) starts a cluster
//! (`support::nats_cluster`): the rest of the suite runs on the environment's single
//! server (docs/operations.md, "NATS cluster").

mod e2e_support;
mod support;

use std::time::Duration;

use async_nats::jetstream;
use e2e_support::*;
use flowplane::api::{ConnectorBinding, IntegrationFlow};
use flowplane::queue::identity::AccountSigner;
use flowplane::queue::{QueueNames, QueuePolicy, ReplicaState, stream_health};
use flowplane::sim::erp::ErpSeed;
use flowplane::sim::faults::FaultSpec;
use flowplane::worker::sample;
use flowplane::worker_config::WorkerConfig;
use kube::Api;
use support::nats_cluster::{NODES, NatsCluster};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The leader of the flow's stream and the state of each follower.
async fn replication(
    js: &jetstream::Context,
    stream: &str,
) -> Option<(String, Vec<(String, ReplicaState)>)> {
    let mut stream = js.get_stream(stream).await.ok()?;
    let health = stream_health(stream.info().await.ok()?);
    Some((health.leader?, health.followers))
}

/// Waits until the stream has a leader and every follower is current; returns the leader.
async fn all_current(js: &jetstream::Context, stream: &str, what: &str) -> String {
    eventually(TIMEOUT, what, || async {
        let (leader, followers) = replication(js, stream).await?;
        (followers.len() == NODES - 1 && followers.iter().all(|(_, s)| *s == ReplicaState::Current))
            .then_some(leader)
    })
    .await
}

/// The in-process operator, on the cluster, watching only the test's namespace.
fn start_operator(nats_url: String, namespace: String) -> tokio::task::JoinHandle<()> {
    let env = support::local_env();
    let (signer_dir, ca) = (env.nats_signer_dir.clone(), env.nats_ca.clone());
    tokio::spawn(async move {
        let config = support::operator_config().await;
        let api_server_url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).unwrap();
        let settings = flowplane::controller::OperatorConfig {
            region: None,
            nats_url,
            nats_creds_file: None,
            nats_signer_dir: Some(signer_dir),
            nats_ca_file: Some(ca),
            nats_monitoring_endpoint: "127.0.0.1:8222".into(),
            worker_image: support::WORKER_IMAGE.into(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            resync_seconds: 2,
            resync_per_second: 10.0,
            queue_replicas: 3,
            queue_max_bytes: flowplane::api::integration_flow::DEFAULT_QUEUE_MAX_BYTES,
            watch_namespaces: vec![namespace],
            probe: flowplane::controller::connector_binding::policy::ProbePolicyConfig {
                allow_cidrs: Vec::new(),
                deny_cidrs: Vec::new(),
                min_interval_seconds: 1,
                api_server_urls: vec![api_server_url],
            },
        };
        let ctx = flowplane::controller::Context::new(client, settings)
            .await
            .unwrap();
        flowplane::controller::run(ctx).await.unwrap();
    })
}

/// QueueReady of the flow (status, reason, message) and its status.queue, once written.
async fn queue_ready(
    flows: &Api<IntegrationFlow>,
    name: &str,
) -> Option<(
    String,
    String,
    String,
    flowplane::api::integration_flow::QueueStatus,
)> {
    let flow = flows.get(name).await.ok()?;
    let status = flow.status?;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "QueueReady")?
        .clone();
    Some((
        condition.status,
        condition.reason,
        condition.message,
        status.queue?,
    ))
}

/// The worker's configuration on the cluster: the flow's own user (issued with the
/// environment's account signing key, as the operator issues it), the server's CA, and the
/// queue with three replicas, made by an administrator as the operator makes it.
async fn on_cluster(mut config: WorkerConfig, cluster: &NatsCluster) -> WorkerConfig {
    let signer = AccountSigner::load(cluster.trust()).expect("the account signer");
    let quota_buckets: Vec<String> = [&config.source.endpoint, &config.target.endpoint]
        .into_iter()
        .map(|e| flowplane::queue::binding_quota_bucket(&config.namespace, &e.binding))
        .collect();
    let permissions =
        flowplane::queue::identity::flow_permissions(&config.queue, None, &quota_buckets);
    let creds = signer
        .issue(
            &format!("{}/{}", config.namespace, config.flow),
            &permissions,
        )
        .expect("issue the flow's user");
    let path = cluster.dir.join(format!("{}.creds", config.queue.stream));
    std::fs::write(&path, creds).unwrap();
    config.nats_creds_file = Some(path.display().to_string());
    config.nats_ca_file = Some(support::local_env().nats_ca.display().to_string());
    config.delivery.replicas = NODES as u8;
    let policy = QueuePolicy::from_rendered(&config.delivery).unwrap();
    let admin = cluster.admin(0).await;
    flowplane::queue::ensure_queue(&admin, &config.queue, &policy)
        .await
        .expect("make the flow's replicated queue");
    // No operator answers here for the dead-letter stream (made on demand): made up front.
    flowplane::queue::jetstream::ensure_dead_letter_stream(&admin, &config.queue, &policy)
        .await
        .expect("make the flow's replicated dead-letter stream");
    config
}

/// Records at the target now.
fn applied(sims: &Sims, entity: &str) -> u64 {
    sims.forecast.received(entity).applied()
}

async fn wait_applied(sims: &Sims, entity: &str, at_least: u64, what: &str) {
    eventually(TIMEOUT, what, || {
        let n = applied(sims, entity);
        async move { (n >= at_least).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_on_three_replicas_loses_a_follower_then_its_leader_and_delivers_exactly_once() {
    let env = support::local_env();
    let mut cluster = NatsCluster::start(&env.nats_signer_dir);
    cluster.wait_for_jetstream().await;

    // The operator on the cluster, and a flow it keeps (its bindings do not exist: the queue
    // is made and watched all the same), with the operator's default of three replicas.
    let client = support::client().await;
    support::install_crds(&client).await;
    let namespace = support::TestNamespace::new(&client, "cluster").await;
    let operator = start_operator(cluster.url(0), namespace.name.clone());
    let flows: Api<IntegrationFlow> = Api::namespaced(client.clone(), &namespace.name);
    support::apply_yaml::<IntegrationFlow>(
        &client,
        &namespace.name,
        "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {name: watched}\nspec:\n  source: {bindingRef: erp, entity: orders, syncMode: FullRefresh}\n  target: {bindingRef: planning, entity: orders}\n  contract: {name: orders}\n  deletionPolicy: Delete\n",
    )
    .await;
    let watched = QueueNames::for_flow(&namespace.name, "watched").stream;
    let all_followers_current = |flows: Api<IntegrationFlow>| async move {
        let ready = queue_ready(&flows, "watched").await?;
        (ready.0 == "True"
            && ready.3.replicas == 3
            && ready.3.followers.len() == NODES - 1
            && ready.3.followers.iter().all(|f| f.state == "Current"))
        .then_some(ready.3)
    };
    let queue = eventually(
        TIMEOUT,
        "the watched flow's queue on 3 current replicas",
        || all_followers_current(flows.clone()),
    )
    .await;
    eprintln!("the watched flow's stream: {queue:?}");

    // The bookkeeping beside the flow's queue: the quota bucket the operator makes for a
    // binding with a rate limit has the operator's replicas (every flow on the binding takes
    // its tokens there), and a capture stream on the platform's NATS follows its flow's.
    support::apply_yaml::<ConnectorBinding>(
        &client,
        &namespace.name,
        "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {name: planning}\nspec:\n  system: Forecasting\n  protocol: Rest\n  endpoint: {url: \"http://127.0.0.1:1/api\"}\n  rateLimit: {requestsPerSecond: 100, burst: 10}\n",
    )
    .await;
    let admin = cluster.admin(0).await;
    let replicas_of = |stream: String| {
        let admin = admin.clone();
        async move {
            Some(
                admin
                    .get_stream(&stream)
                    .await
                    .ok()?
                    .info()
                    .await
                    .ok()?
                    .config
                    .num_replicas,
            )
        }
    };
    let quota_stream = format!(
        "KV_{}",
        flowplane::queue::binding_quota_bucket(&namespace.name, "planning")
    );
    eventually(TIMEOUT, "the binding's quota bucket on 3 replicas", || {
        let replicas = replicas_of(quota_stream.clone());
        async move { (replicas.await? == NODES).then_some(()) }
    })
    .await;
    // The namespace's state bucket has the most replicas its flows ask for: the watched flow's
    // three, which a flow of the namespace asking for one does not scale down.
    let state_stream = format!(
        "KV_{}",
        QueueNames::for_flow(&namespace.name, "watched").state_bucket
    );
    assert_eq!(replicas_of(state_stream.clone()).await, Some(NODES));
    let single = QueueNames::for_flow(&namespace.name, "single");
    let one_replica =
        QueuePolicy::from_delivery(&Default::default(), 1, Default::default()).unwrap();
    flowplane::queue::ensure_queue(&admin, &single, &one_replica)
        .await
        .expect("a one-replica flow's queue");
    assert_eq!(replicas_of(single.stream.clone()).await, Some(1));
    assert_eq!(replicas_of(state_stream).await, Some(NODES));
    flowplane::queue::delete_queue(&admin, &single)
        .await
        .unwrap();
    let policy = QueuePolicy::from_delivery(
        &Default::default(),
        1,
        flowplane::queue::QueueDefaults {
            replicas: NODES as u8,
            ..Default::default()
        },
    )
    .unwrap();
    let events = QueueNames::for_flow(&namespace.name, "events");
    let subject = "wms.cluster.returns";
    flowplane::queue::ensure_capture(&admin, &events, subject, policy.retention, Some(&policy))
        .await
        .expect("the operator's capture stream");
    // As the flow's worker finds it (it may not change streams on the platform): in place.
    flowplane::queue::ensure_capture(&admin, &events, subject, policy.retention, None)
        .await
        .expect("the worker's capture stream");
    assert_eq!(replicas_of(events.capture_stream()).await, Some(NODES));

    // The data flow, a worker on its three-replica queue: 3000 order lines, every 30th bad
    // (100 dead letters), a slow target so that the kills land mid-run.
    let sims = start_sims(ErpSeed {
        order_lines: 3000,
        inventory: 0,
        returns: 0,
        bad_every: 30,
        page_size: 100,
    })
    .await;
    sims.forecast.faults.set(FaultSpec {
        latency_ms: 200,
        ..Default::default()
    });
    let flow = unique_flow("cluster");
    let mut config = sample::sales_order_flow(
        "e2e",
        &flow,
        &cluster.url(0),
        &sims.erp_url,
        &sims.forecast_url,
    );
    config.target.batch_size = 10;
    let config = on_cluster(config, &cluster).await;
    // The cluster, its store with it, goes when the test ends: no queue cleanup needed.
    let names = config.queue.clone();
    let entity = config.target.entity.clone();
    let worker = InProcessWorker::start(config, "cluster-a");

    // 1. A node that follows both streams dies (SIGKILL) mid-run: the flow goes on, and the
    //    operator reports the lost replica once gone for long, Ready untouched.
    wait_applied(&sims, &entity, 300, "300 records before the first kill").await;
    let js = cluster.admin(0).await;
    let data_leader = all_current(&js, &names.stream, "the data stream's replicas current").await;
    let watched_leader = all_current(&js, &watched, "the watched stream's replicas current").await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != data_leader && *n != watched_leader)
        .expect("a node leading neither stream");
    // Watched from a node that stays up.
    let js = cluster.admin(cluster.index(&data_leader)).await;
    let before = applied(&sims, &entity);
    eprintln!(
        "killing follower {follower} (leaders {data_leader}, {watched_leader}) at {before} applied"
    );
    cluster.kill_node(cluster.index(&follower));
    wait_applied(
        &sims,
        &entity,
        before + 300,
        "300 more records without the follower",
    )
    .await;
    // A slower target while the operator notices (15 s) and the node returns, so that the
    // leader's kill below still lands mid-run however fast the machine is.
    sims.forecast.faults.set(FaultSpec {
        latency_ms: 3000,
        ..Default::default()
    });
    let (_, _, message, _) = eventually(TIMEOUT, "QueueReady=False (ReplicaLost)", || {
        let flows = flows.clone();
        async move {
            let ready = queue_ready(&flows, "watched").await?;
            (ready.0 == "False" && ready.1 == "ReplicaLost").then_some(ready)
        }
    })
    .await;
    assert!(message.contains(&follower), "{message}");
    assert!(message.contains("2 of 3 replicas up"), "{message}");
    let watched_flow = flows.get("watched").await.unwrap();
    let ready = watched_flow
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_ne!(
        ready.reason, "ReplicaLost",
        "a lost replica alone does not block Ready"
    );
    eprintln!("reported: {message}");

    // Recovery: the node comes back, catches up, and the operator says so.
    cluster.start_node(cluster.index(&follower));
    eventually(
        TIMEOUT,
        "QueueReady=True after the follower's return",
        || all_followers_current(flows.clone()),
    )
    .await;

    sims.forecast.faults.set(FaultSpec {
        latency_ms: 200,
        ..Default::default()
    });

    // 2. The data stream's leader dies mid-run: another node takes over, the flow goes on.
    let leader = all_current(
        &js,
        &names.stream,
        "the data stream's replicas current again",
    )
    .await;
    // Watched from a node that stays up.
    let js = cluster.admin((cluster.index(&leader) + 1) % NODES).await;
    let before = applied(&sims, &entity);
    assert!(
        before < 2900,
        "the leader's kill lands mid-run ({before} applied)"
    );
    eprintln!("killing the data stream's leader {leader} at {before} applied");
    cluster.kill_node(cluster.index(&leader));
    let new_leader = eventually(TIMEOUT, "a new leader of the data stream", || async {
        let (new, _) = replication(&js, &names.stream).await?;
        (new != leader).then_some(new)
    })
    .await;
    eprintln!("new leader {new_leader}");
    wait_applied(
        &sims,
        &entity,
        (before + 300).min(2900),
        "300 more records after the leader's loss",
    )
    .await;
    cluster.start_node(cluster.index(&leader));

    // Everything, exactly once: read = delivered + dead-lettered.
    sims.forecast.faults.set(FaultSpec::default());
    wait_applied(&sims, &entity, 2900, "all 2900 good records").await;
    // Every record has its outcome once delivered + dead-lettered reaches the read count; a
    // record counted twice would show as more, so wait for the sum, then compare exactly.
    eventually(TIMEOUT, "progress: 3000 records with an outcome", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let p = progress(&js, &names).await;
            (p.delivered + p.dead_lettered >= 3000).then_some(())
        }
    })
    .await;
    // Settle: late redeliveries must change nothing.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let settled = progress(&js, &names).await;
    let report = sims.forecast.received(&entity);
    // Deliveries beyond one per record: what the failovers sent again, absorbed above.
    let consumer = js
        .get_stream(&names.stream)
        .await
        .unwrap()
        .consumer_info(&names.consumer)
        .await
        .unwrap()
        .delivered;
    eprintln!(
        "counts: read {}, delivered {}, dead-lettered {}; consumer: {} deliveries of {} records; target: {} keys, {} applied, {} duplicates",
        settled.read,
        settled.delivered,
        settled.dead_lettered,
        consumer.consumer_sequence,
        consumer.stream_sequence,
        report.keys.len(),
        report.applied(),
        report.duplicates()
    );
    assert_eq!(report.keys.len(), 2900, "every good key arrived");
    for (key, arrived) in &report.keys {
        assert_eq!(
            arrived.applied_versions.len(),
            1,
            "{key} applied exactly once"
        );
        assert_eq!(arrived.stale, 0, "{key} never sent an older version");
    }
    assert_eq!(report.duplicates(), 0, "no record sent to the target twice");
    assert_eq!(settled.read, 3000, "every source record read once");
    assert_eq!(settled.delivered, 2900, "each good record counted once");
    assert_eq!(settled.dead_lettered, 100, "each bad record counted once");
    let mut dead_letters = js.get_stream(&names.dead_letter_stream).await.unwrap();
    assert_eq!(dead_letters.info().await.unwrap().state.messages, 100);
    all_current(&js, &names.stream, "all replicas current at the end").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = progress(&js, &names).await;
    assert_eq!(
        (after.read, after.delivered, after.dead_lettered),
        (settled.read, settled.delivered, settled.dead_lettered),
        "nothing counted after the settle"
    );
    worker.stop().await.unwrap();

    // 3. The watched stream's leader dies: another server takes over and status names it.
    let leader = all_current(&js, &watched, "the watched stream's replicas current").await;
    cluster.kill_node(cluster.index(&leader));
    let queue = eventually(TIMEOUT, "status naming a new leader", || {
        let flows = flows.clone();
        let leader = leader.clone();
        async move {
            let ready = queue_ready(&flows, "watched").await?;
            ready
                .3
                .leader
                .as_ref()
                .is_some_and(|l| *l != leader)
                .then_some(ready.3)
        }
    })
    .await;
    eprintln!("after the watched stream's leader's loss: {queue:?}");
    cluster.start_node(cluster.index(&leader));
    eventually(TIMEOUT, "QueueReady=True after the leader's return", || {
        all_followers_current(flows.clone())
    })
    .await;

    // The operator removes the flow's queue (its finalizer) before it stops.
    flows.delete("watched", &Default::default()).await.unwrap();
    eventually(TIMEOUT, "the flow gone", || {
        let flows = flows.clone();
        async move { flows.get_opt("watched").await.ok()?.is_none().then_some(()) }
    })
    .await;
    operator.abort();
}
