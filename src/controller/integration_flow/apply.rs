//! Apply: server-side apply of a flow's children under one field manager, in dependency
//! order, and pruning of children no longer wanted. Writes are skipped when the desired object
//! is unchanged since this process last applied it, so a settled system makes no writes.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::api::IntegrationFlow;
use crate::controller::optional_apis::{self, Installed};
use crate::controller::{FIELD_MANAGER, Result};
use crate::render::Children;
use crate::render::labels::{cron_job_name, namespace, rules_name, workers_name};

/// What this process last did to each child: the hash of the object it applied, or `absent`
/// after it pruned one. Lost on restart, which then re-applies once (a no-op on the server).
#[derive(Default)]
pub struct AppliedCache {
    entries: Mutex<HashMap<String, String>>,
}

const ABSENT: &str = "absent";

impl AppliedCache {
    pub fn get(&self, key: &str) -> Option<String> {
        self.entries.lock().ok()?.get(key).cloned()
    }
    pub fn set(&self, key: String, value: String) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, value);
        }
    }
    /// Forgets everything about one flow (on deletion).
    pub fn forget_flow(&self, namespace: &str, flow: &str) {
        let marker = format!("/{namespace}/{flow}-");
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, _| !k.contains(&marker));
        }
    }
}

fn hash_of<T: Serialize>(object: &T) -> Result<String> {
    let json = serde_json::to_vec(object)?;
    Ok(format!("{:x}", Sha256::digest(&json)))
}

struct Applier<'a> {
    client: &'a Client,
    namespace: &'a str,
    cache: &'a AppliedCache,
    params: PatchParams,
}

impl Applier<'_> {
    /// Applies `object` unless this process already applied the same object and, where the
    /// caller knows it, the live object still exists.
    async fn apply<K>(&self, object: &K, live_exists: Option<bool>) -> Result<bool>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let key = format!("{}/{}/{name}", K::kind(&()), self.namespace);
        let hash = hash_of(object)?;
        if self.cache.get(&key).as_deref() == Some(hash.as_str()) && live_exists != Some(false) {
            return Ok(false);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        api.patch(&name, &self.params, &Patch::Apply(object))
            .await?;
        self.cache.set(key, hash);
        Ok(true)
    }

    async fn apply_dynamic(&self, object: &DynamicObject, resource: &ApiResource) -> Result<bool> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let key = format!("{}/{}/{name}", resource.kind, self.namespace);
        let hash = hash_of(object)?;
        if self.cache.get(&key).as_deref() == Some(hash.as_str()) {
            return Ok(false);
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), self.namespace, resource);
        api.patch(&name, &self.params, &Patch::Apply(object))
            .await?;
        self.cache.set(key, hash);
        Ok(true)
    }

    /// Deletes a child that must not exist, once.
    async fn prune<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let key = format!("{}/{}/{name}", K::kind(&()), self.namespace);
        if self.cache.get(&key).as_deref() == Some(ABSENT) {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        ignore_not_found(
            api.delete(name, &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
        self.cache.set(key, ABSENT.into());
        Ok(())
    }

    async fn prune_dynamic(&self, name: &str, resource: &ApiResource) -> Result<()> {
        let key = format!("{}/{}/{name}", resource.kind, self.namespace);
        if self.cache.get(&key).as_deref() == Some(ABSENT) {
            return Ok(());
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), self.namespace, resource);
        ignore_not_found(
            api.delete(name, &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
        self.cache.set(key, ABSENT.into());
        Ok(())
    }
}

fn ignore_not_found(
    result: std::result::Result<(), kube::Error>,
) -> std::result::Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    }
}

/// What the caller knows of the live children it read during dereference.
pub struct Live {
    pub config_map: bool,
    pub deployment: bool,
}

/// Applies every child in dependency order (configuration before the workers that mount it),
/// then prunes what is no longer wanted. Returns whether anything was written.
pub async fn apply_children(
    client: &Client,
    cache: &AppliedCache,
    flow: &IntegrationFlow,
    children: &Children,
    live: Live,
    installed: Installed,
) -> Result<bool> {
    let namespace = &namespace(flow);
    let applier = Applier {
        client,
        namespace,
        cache,
        params: PatchParams::apply(FIELD_MANAGER).force(),
    };
    let flow_workers = workers_name(flow);
    let mut wrote = applier
        .apply::<ConfigMap>(&children.config_map, Some(live.config_map))
        .await?;
    wrote |= applier
        .apply::<Deployment>(&children.deployment, Some(live.deployment))
        .await?;
    wrote |= applier.apply::<Service>(&children.service, None).await?;
    wrote |= applier
        .apply::<PodDisruptionBudget>(&children.pod_disruption_budget, None)
        .await?;
    wrote |= applier
        .apply::<NetworkPolicy>(&children.network_policy, None)
        .await?;

    let cron_name = cron_job_name(flow);
    match &children.cron_job {
        Some(cron) => wrote |= applier.apply::<CronJob>(cron, None).await?,
        None => applier.prune::<CronJob>(&cron_name).await?,
    }
    match &children.horizontal_pod_autoscaler {
        Some(hpa) => wrote |= applier.apply::<HorizontalPodAutoscaler>(hpa, None).await?,
        None => {
            applier
                .prune::<HorizontalPodAutoscaler>(&flow_workers)
                .await?
        }
    }
    if installed.keda {
        let resource = optional_apis::scaled_object();
        match &children.scaled_object {
            Some(object) => wrote |= applier.apply_dynamic(object, &resource).await?,
            None => applier.prune_dynamic(&flow_workers, &resource).await?,
        }
    }
    let rules = rules_name(flow);
    if installed.prometheus_operator {
        match (&children.prometheus_rule, &children.service_monitor) {
            (Some(rule), Some(monitor)) => {
                wrote |= applier
                    .apply_dynamic(rule, &optional_apis::prometheus_rule())
                    .await?;
                wrote |= applier
                    .apply_dynamic(monitor, &optional_apis::service_monitor())
                    .await?;
            }
            _ => {
                applier
                    .prune_dynamic(&rules, &optional_apis::prometheus_rule())
                    .await?;
                applier
                    .prune_dynamic(&flow_workers, &optional_apis::service_monitor())
                    .await?;
            }
        }
    }
    match &children.rules_config_map {
        Some(cm) => wrote |= applier.apply::<ConfigMap>(cm, None).await?,
        None => applier.prune::<ConfigMap>(&rules).await?,
    }
    Ok(wrote)
}
