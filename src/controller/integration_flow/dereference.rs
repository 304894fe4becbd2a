//! Dereference: what a flow points at (contract, bindings, code-map ConfigMaps), its running
//! children, and its queue's progress, read from the controller's stores. Missing references
//! are not errors here; `validate` turns them into conditions.

use std::collections::BTreeMap;

use async_nats::jetstream;
use k8s_openapi::api::apps::v1::Deployment;

use super::stores::{ConfigMapData, Stores};
use crate::api::{ConnectorBinding, DataContract, IntegrationFlow};
use crate::controller::Result;
use crate::queue::jetstream::{dead_letter_stream, read_progress};
use crate::queue::{FlowProgress, QueueNames, StreamHealth, stream_health};
use crate::render::labels::{config_map_name, namespace, workers_name};

/// What a flow references, as found.
pub struct Dereferenced {
    pub contract: Option<DataContract>,
    pub source: Option<ConnectorBinding>,
    pub target: Option<ConnectorBinding>,
    pub escalation: Option<ConnectorBinding>,
    /// Code-map name -> table, for the ConfigMaps that exist.
    pub code_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Code maps whose ConfigMap is missing: (code map, ConfigMap name).
    pub missing_code_maps: Vec<(String, String)>,
    pub deployment: Option<Deployment>,
    /// Whether the worker ConfigMap (the last good configuration) exists.
    pub applied_config: bool,
}

/// `fresh_code_maps`: read the code maps from the apiserver rather than the watch's view.
pub async fn dereference(
    flow: &IntegrationFlow,
    client: &kube::Client,
    stores: &Stores,
    fresh_code_maps: bool,
) -> Result<Dereferenced> {
    let ns = namespace(flow);
    let spec = &flow.spec;
    let binding = |name: &str| Stores::get(&stores.bindings, &ns, name);

    let mut code_maps = BTreeMap::new();
    let mut missing_code_maps = Vec::new();
    for map in spec.mapping.iter().flat_map(|m| &m.code_maps) {
        let data = if fresh_code_maps {
            stores
                .config_maps
                .fresh_data(client, &ns, &map.config_map_ref)
                .await?
        } else {
            stores
                .config_maps
                .data(client, &ns, &map.config_map_ref)
                .await?
        };
        match data {
            Some(data) => {
                code_maps.insert(map.name.clone(), (*data).clone());
            }
            None => missing_code_maps.push((map.name.clone(), map.config_map_ref.clone())),
        }
    }
    Ok(Dereferenced {
        contract: Stores::get(&stores.contracts, &ns, &spec.contract.name),
        source: binding(&spec.source.binding_ref),
        target: binding(&spec.target.binding_ref),
        escalation: spec
            .approval
            .as_ref()
            .and_then(|a| a.escalate_to.as_ref())
            .and_then(|to| binding(&to.binding_ref)),
        code_maps,
        missing_code_maps,
        deployment: Stores::get(&stores.deployments, &ns, &workers_name(flow))
            .map(|d| d.to_deployment()),
        applied_config: stores.config_maps.exists(&ns, &config_map_name(flow)),
    })
}

/// The worker configuration currently applied, read only when it is needed (a blocked flow
/// reports the contract version its workers still run).
pub async fn applied_config(
    flow: &IntegrationFlow,
    client: &kube::Client,
    stores: &Stores,
) -> Result<Option<ConfigMapData>> {
    stores
        .config_maps
        .data(client, &namespace(flow), &config_map_name(flow))
        .await
}

/// The data side of a flow, read from JetStream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueState {
    pub progress: FlowProgress,
    /// Records not yet delivered to the workers' consumer.
    pub lag: u64,
    /// Records in the dead-letter stream.
    pub dead_letters: u64,
    /// The flow's stream on the cluster: leader and followers.
    pub health: StreamHealth,
}

pub async fn queue_state(
    js: &jetstream::Context,
    names: &QueueNames,
) -> std::result::Result<QueueState, String> {
    // Four independent lookups, sent together; looking a consumer or stream up returns its
    // info, so no second request for it. All four are awaited and the first failure is taken in
    // a fixed order, the stream first (without it the consumer is gone too): the first to
    // arrive would make the condition's message, and so the status, change with timing.
    let (progress, consumer, stream, dead_letters) = futures::join!(
        async { read_progress(js, names).await.map_err(|e| e.to_string()) },
        async {
            js.get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                &names.consumer,
                &names.stream,
            )
            .await
            .map_err(|e| format!("consumer {}: {e}", names.consumer))
        },
        async {
            js.get_stream(&names.stream)
                .await
                .map_err(|e| format!("stream {}: {e}", names.stream))
        },
        async {
            let stream = dead_letter_stream(js, names)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(stream.map_or(0, |s| s.cached_info().state.messages))
        },
    );
    let stream = stream?;
    let consumer = consumer?;
    let dead_letters = dead_letters?;
    let progress = progress?;
    let info = consumer.cached_info();
    let lag = info.num_pending + info.num_ack_pending as u64;
    Ok(QueueState {
        progress,
        lag,
        dead_letters,
        health: stream_health(stream.cached_info()),
    })
}
