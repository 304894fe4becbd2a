//! What the flow controller keeps of the cluster: reflector stores fed by the same watches
//! that trigger reconciles, so a reconcile reads what a flow references from memory instead of
//! sending the apiserver a GET per reference (at thousands of flows those GETs were most of
//! the operator's time).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;

use crate::api::{ConnectorBinding, DataContract, IntegrationFlow};
use crate::controller::Result;

pub type ConfigMapData = Arc<BTreeMap<String, String>>;

pub struct Stores {
    pub flows: Store<IntegrationFlow>,
    pub contracts: Store<DataContract>,
    pub bindings: Store<ConnectorBinding>,
    /// The flows' worker Deployments (label-selected), for WorkersAvailable.
    pub deployments: Store<WorkerDeployment>,
    /// Children that may have to be pruned, metadata only (label-selected).
    pub cron_jobs: Store<PartialObjectMeta<CronJob>>,
    pub autoscalers: Store<PartialObjectMeta<HorizontalPodAutoscaler>>,
    pub config_maps: ConfigMaps,
    /// Set once every store is ready. Reconciles wait on this, not on the stores: a store's
    /// readiness wakes only one of several concurrent waiters (a oneshot channel inside).
    ready: OnceCell<()>,
}

impl Stores {
    pub fn new(
        flows: Store<IntegrationFlow>,
        contracts: Store<DataContract>,
        bindings: Store<ConnectorBinding>,
        deployments: Store<WorkerDeployment>,
        (cron_jobs, autoscalers): (
            Store<PartialObjectMeta<CronJob>>,
            Store<PartialObjectMeta<HorizontalPodAutoscaler>>,
        ),
        config_maps: ConfigMaps,
    ) -> Self {
        Stores {
            flows,
            contracts,
            bindings,
            deployments,
            cron_jobs,
            autoscalers,
            config_maps,
            ready: OnceCell::new(),
        }
    }

    /// Waits until every store holds its first complete list, so a reconcile never reports a
    /// reference missing that the watch simply has not delivered yet.
    pub async fn ready(&self) {
        self.ready
            .get_or_init(|| async {
                // A dropped writer means the controller is shutting down; nothing to wait for.
                let _ = tokio::join!(
                    self.flows.wait_until_ready(),
                    self.contracts.wait_until_ready(),
                    self.bindings.wait_until_ready(),
                    self.deployments.wait_until_ready(),
                    self.cron_jobs.wait_until_ready(),
                    self.autoscalers.wait_until_ready(),
                    self.config_maps.metadata.wait_until_ready(),
                );
            })
            .await;
    }

    pub fn exists<K>(store: &Store<K>, namespace: &str, name: &str) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        store.get(&ObjectRef::new(name).within(namespace)).is_some()
    }

    pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        store
            .get(&ObjectRef::new(name).within(namespace))
            .map(|object| (*object).clone())
    }
}

/// What the flow controller reads of a worker Deployment: its metadata (owner, generation),
/// the desired replicas and the status counts. Decoded straight from the watch into this
/// type: a whole `Deployment` (pod template, conditions, labels) was a third of the stores'
/// memory per flow.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkerDeployment {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WorkerDeploymentSpec,
    pub status: Option<DeploymentStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkerDeploymentSpec {
    pub replicas: Option<i32>,
}

impl WorkerDeployment {
    /// As a `Deployment` with only the fields this type keeps, for the status builders.
    pub fn to_deployment(&self) -> Deployment {
        Deployment {
            metadata: self.metadata.clone(),
            spec: DeploymentSpec {
                replicas: self.spec.replicas,
                ..Default::default()
            },
            status: self.status.clone(),
        }
    }
}

impl Resource for WorkerDeployment {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        <Deployment as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        <Deployment as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        <Deployment as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        <Deployment as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Keeps of a stored object's metadata what the controller reads: name, namespace, version,
/// uid, generation and owners. Labels were only the watch's selector; annotations (a
/// client-side `kubectl apply` copies the whole object into one) and field ownership are
/// never read.
pub fn slim_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.labels = None;
    meta.annotations = None;
    meta.creation_timestamp = None;
}

/// ConfigMaps, watched as metadata only (the cluster's ConfigMap data never sits in this
/// process); the data of the ones flows read (code maps, contract histories, the applied
/// worker configuration) is fetched once per resourceVersion and kept.
pub struct ConfigMaps {
    pub metadata: Store<PartialObjectMeta<ConfigMap>>,
    data: Mutex<HashMap<(String, String), (String, ConfigMapData)>>,
}

impl ConfigMaps {
    pub fn new(metadata: Store<PartialObjectMeta<ConfigMap>>) -> Self {
        ConfigMaps {
            metadata,
            data: Mutex::default(),
        }
    }

    pub fn exists(&self, namespace: &str, name: &str) -> bool {
        self.metadata
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// The ConfigMap's data, or None when the watch says it does not exist.
    pub async fn data(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMapData>> {
        let key = (namespace.to_string(), name.to_string());
        let Some(meta) = self.metadata.get(&ObjectRef::new(name).within(namespace)) else {
            self.lock().remove(&key);
            return Ok(None);
        };
        let version = meta.resource_version().unwrap_or_default();
        if let Some((cached, data)) = self.lock().get(&key)
            && *cached == version
        {
            return Ok(Some(data.clone()));
        }
        self.fresh_data(client, namespace, name).await
    }

    /// The ConfigMap's data as the apiserver has it now (a GET, whatever the watch has seen),
    /// kept for [`ConfigMaps::data`]; None when it does not exist.
    pub async fn fresh_data(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMapData>> {
        let key = (namespace.to_string(), name.to_string());
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let Some(config_map) = api.get_opt(name).await? else {
            return Ok(None);
        };
        let data: ConfigMapData = Arc::new(config_map.data.clone().unwrap_or_default());
        // Keyed by the version read, which may be newer than the watch's: the next pass
        // then fetches once more, never serves older data than it has seen.
        self.lock().insert(
            key,
            (
                config_map.resource_version().unwrap_or_default(),
                data.clone(),
            ),
        );
        Ok(Some(data))
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), (String, ConfigMapData)>> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
