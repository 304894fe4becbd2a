//! Which watch events of a flow's children are worth a reconcile: a deletion always (the child
//! has to come back), otherwise only a change of what the controller reads from the child.
//! kube's predicate filters work on objects, not events, so they also swallow a deletion that
//! leaves the watched fields unchanged.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{Stream, StreamExt, future};
use kube::Resource;

use super::stores::WorkerDeployment;
use crate::api::{ConnectorBinding, DataContract, IntegrationFlow};
use kube::runtime::watcher::{self, Event};

/// The objects of `events` that are new, deleted, or whose `fingerprint` changed.
pub fn worth_reconciling<K, S, F>(
    events: S,
    fingerprint: F,
) -> impl Stream<Item = Result<K, watcher::Error>>
where
    K: Resource,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
    F: Fn(&K) -> u64,
{
    let mut seen: HashMap<(Option<String>, Option<String>), u64> = HashMap::new();
    events.filter_map(move |event| {
        let passed = match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => {
                let key = (object.meta().namespace.clone(), object.meta().name.clone());
                let print = fingerprint(&object);
                (seen.insert(key, print) != Some(print)).then_some(Ok(object))
            }
            Ok(Event::Delete(object)) => {
                seen.remove(&(object.meta().namespace.clone(), object.meta().name.clone()));
                Some(Ok(object))
            }
            Ok(Event::Init | Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        future::ready(passed)
    })
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What the flow's status reads of its Deployment (WorkersAvailable, the worker counts, the
/// rollout): kube-controller-manager's condition timestamps and other churn leave it alone.
pub fn deployment_fingerprint(deployment: &WorkerDeployment) -> u64 {
    let status = deployment.status.as_ref();
    hash_of((
        deployment.metadata.generation,
        deployment.spec.replicas,
        status.and_then(|s| s.observed_generation),
        status.and_then(|s| s.replicas),
        status.and_then(|s| s.ready_replicas),
        status.and_then(|s| s.available_replicas),
        status.and_then(|s| s.updated_replicas),
        // The last old worker gone: a waiting redrive may run.
        status.and_then(|s| s.terminating_replicas),
    ))
}

/// What of a flow calls for a pass: its spec (generation), its annotations (the one-off
/// operations), its deletion, and finalizers other than ours. Not its status (the operator's
/// own writes, mostly), nor our finalizer: the pass that adds it goes on to apply the flow, so
/// the event of that addition would only repeat it.
pub fn flow_fingerprint(flow: &IntegrationFlow) -> Option<u64> {
    let meta = &flow.metadata;
    let other_finalizers: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != super::FINALIZER)
        .collect();
    Some(hash_of((
        meta.generation,
        &meta.annotations,
        other_finalizers,
        meta.deletion_timestamp.is_some(),
    )))
}

/// What a flow reads of a binding: its spec (generation), whether it is Ready and why not, and
/// the Secret revision its workers mount. Probe results and quota counts change far more often
/// and would re-reconcile every flow of the binding each time.
pub fn binding_fingerprint(binding: &ConnectorBinding) -> u64 {
    let status = binding.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (&c.status, &c.reason, &c.message));
    hash_of((
        binding.metadata.generation,
        ready,
        status.and_then(|s| s.secret_revision.as_ref()),
    ))
}

/// What a flow reads of a contract: its spec (generation) and the verdict in its status
/// (checked generation, conditions, published versions, breaks); condition timestamps aside.
pub fn contract_fingerprint(contract: &DataContract) -> u64 {
    let status = contract.status.as_ref();
    let conditions: Vec<_> = status
        .iter()
        .flat_map(|s| &s.conditions)
        .map(|c| (&c.type_, &c.status, &c.reason, &c.message))
        .collect();
    hash_of((
        contract.metadata.generation,
        status.and_then(|s| s.observed_generation),
        conditions,
        status.and_then(|s| s.latest_good_version.as_ref()),
        status.map(|s| {
            s.history
                .iter()
                .map(|p| (&p.version, &p.schema_hash))
                .collect::<Vec<_>>()
        }),
        status.map(|s| &s.breaks),
    ))
}

/// A child the controller only creates and prunes: its spec (generation) is what it owns.
pub fn generation_fingerprint<K: Resource>(object: &K) -> u64 {
    hash_of(object.meta().generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    fn deployment(ready: i32, condition_reason: &str) -> WorkerDeployment {
        let mut d = WorkerDeployment::default();
        d.metadata.name = Some("w".into());
        d.metadata.namespace = Some("ns".into());
        d.metadata.generation = Some(1);
        d.status = Some(DeploymentStatus {
            ready_replicas: Some(ready),
            conditions: Some(vec![DeploymentCondition {
                reason: Some(condition_reason.into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        d
    }

    #[tokio::test]
    async fn status_churn_is_dropped_but_changes_and_deletions_pass() {
        let events = futures::stream::iter([
            Event::Init,
            Event::InitApply(deployment(0, "NewReplicaSetCreated")),
            Event::InitDone,
            Event::Apply(deployment(0, "ReplicaSetUpdated")),
            Event::Apply(deployment(1, "ReplicaSetUpdated")),
            Event::Delete(deployment(1, "ReplicaSetUpdated")),
            Event::Apply(deployment(1, "ReplicaSetUpdated")),
        ])
        .map(Ok);
        let passed: Vec<WorkerDeployment> = worth_reconciling(events, deployment_fingerprint)
            .try_collect()
            .await
            .unwrap();
        let ready: Vec<i32> = passed
            .iter()
            .map(|d| d.status.as_ref().unwrap().ready_replicas.unwrap())
            .collect();
        // First sight, the ready change, the deletion, and the recreation.
        assert_eq!(ready, [0, 1, 1, 1]);
    }
}
