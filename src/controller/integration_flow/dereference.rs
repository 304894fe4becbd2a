//! Dereference: read everything a flow points at (contract, bindings, code-map ConfigMaps),
//! its running children, and its queue's progress. Missing references are not errors here;
//! `validate` turns them into conditions.

use std::collections::BTreeMap;

use async_nats::jetstream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use crate::api::{ConnectorBinding, DataContract, IntegrationFlow};
use crate::controller::{Context, Result};
use crate::queue::jetstream::read_progress;
use crate::queue::{FlowProgress, QueueNames};
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
    /// The worker ConfigMap currently applied (the last good configuration).
    pub applied_config: Option<ConfigMap>,
}

pub async fn dereference(flow: &IntegrationFlow, ctx: &Context) -> Result<Dereferenced> {
    let ns = namespace(flow);
    let client = ctx.client.clone();
    let contracts: Api<DataContract> = Api::namespaced(client.clone(), &ns);
    let bindings: Api<ConnectorBinding> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    let spec = &flow.spec;

    // The reads are independent: issue them together rather than one round trip at a time.
    let (workers, config) = (workers_name(flow), config_map_name(flow));
    let config_maps = &config_maps;
    let code_map_reads =
        futures::future::try_join_all(spec.mapping.iter().flat_map(|m| &m.code_maps).map(
            |map| async move {
                Ok::<_, kube::Error>((map, config_maps.get_opt(&map.config_map_ref).await?))
            },
        ));
    let escalation = async {
        match spec.approval.as_ref().and_then(|a| a.escalate_to.as_ref()) {
            Some(to) => bindings.get_opt(&to.binding_ref).await,
            None => Ok(None),
        }
    };
    let (code_map_reads, escalation, contract, source, target, deployment, applied_config) = tokio::try_join!(
        code_map_reads,
        escalation,
        contracts.get_opt(&spec.contract.name),
        bindings.get_opt(&spec.source.binding_ref),
        bindings.get_opt(&spec.target.binding_ref),
        deployments.get_opt(&workers),
        config_maps.get_opt(&config),
    )?;
    let mut code_maps = BTreeMap::new();
    let mut missing_code_maps = Vec::new();
    for (map, found) in code_map_reads {
        match found {
            Some(cm) => {
                code_maps.insert(map.name.clone(), cm.data.unwrap_or_default());
            }
            None => missing_code_maps.push((map.name.clone(), map.config_map_ref.clone())),
        }
    }
    Ok(Dereferenced {
        contract,
        source,
        target,
        escalation,
        code_maps,
        missing_code_maps,
        deployment,
        applied_config,
    })
}

/// The data side of a flow, read from JetStream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueState {
    pub progress: FlowProgress,
    /// Records not yet delivered to the workers' consumer.
    pub lag: u64,
    /// Records in the dead-letter stream.
    pub dead_letters: u64,
}

pub async fn queue_state(
    js: &jetstream::Context,
    names: &QueueNames,
) -> std::result::Result<QueueState, String> {
    let progress = read_progress(js, names).await.map_err(|e| e.to_string())?;
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&names.consumer, &names.stream)
        .await
        .map_err(|e| format!("consumer {}: {e}", names.consumer))?;
    let info = consumer
        .info()
        .await
        .map_err(|e| format!("consumer {}: {e}", names.consumer))?;
    let lag = info.num_pending + info.num_ack_pending as u64;
    let mut dlq = js
        .get_stream(&names.dead_letter_stream)
        .await
        .map_err(|e| format!("stream {}: {e}", names.dead_letter_stream))?;
    let dead_letters = dlq
        .info()
        .await
        .map_err(|e| format!("stream {}: {e}", names.dead_letter_stream))?
        .state
        .messages;
    Ok(QueueState {
        progress,
        lag,
        dead_letters,
    })
}
