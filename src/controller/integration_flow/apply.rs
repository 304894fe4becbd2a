//! Apply: server-side apply of a flow's children under one field manager, the configuration
//! first and the rest together, and pruning of children no longer wanted. Writes are skipped when the desired object
//! is unchanged since this process last applied it, so a settled system makes no writes.
//!
//! No takeover: a child is written only when it does not exist or is already this flow's
//! ([`owned_by`]); an object of the same name that someone else made is left exactly as it
//! is (not patched, not pruned, never garbage-collected with the flow) and the flow is
//! Stalled with reason `ChildConflict` naming it. Forced apply alone would take it over.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GetParams, Patch, PatchParams, Preconditions,
};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::api::IntegrationFlow;
use crate::controller::optional_apis::Installed;
use crate::controller::{Error, FIELD_MANAGER, Result};
use crate::render::Children;
use crate::render::labels::{
    FLOW_LABEL, MANAGED_BY, cron_job_name, namespace, rules_name, workers_name,
};
use crate::render::optional_kinds;

/// What this process last did to each child: the fingerprint of the object it applied, or
/// [`ABSENT`] after it pruned one. Lost on restart, which then re-applies once (a no-op on the
/// server).
#[derive(Default)]
pub struct AppliedCache {
    entries: Mutex<HashMap<String, Fingerprint>>,
    /// The resourceVersion each child had when this process last wrote it: the watch event
    /// of that very write tells the flow nothing it does not know (see [`Self::is_own_write`]).
    own_versions: Mutex<HashMap<String, String>>,
}

/// The first 128 bits of a SHA-256: as safe against an accidental match as the whole digest
/// here, and a quarter of the memory of its hex text (this cache holds several per flow).
pub type Fingerprint = [u8; 16];

/// What the cache holds for a child this process pruned.
const ABSENT: Fingerprint = [0; 16];

pub fn fingerprint(bytes: impl AsRef<[u8]>) -> Fingerprint {
    let digest = Sha256::digest(bytes);
    let mut print = [0; 16];
    print.copy_from_slice(&digest[..16]);
    print
}

impl AppliedCache {
    pub fn get(&self, key: &str) -> Option<Fingerprint> {
        self.entries.lock().ok()?.get(key).copied()
    }
    pub fn set(&self, key: String, value: Fingerprint) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, value);
        }
    }
    pub fn forget(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }
    /// Forgets everything about one flow (on deletion).
    pub fn forget_flow(&self, namespace: &str, flow: &str) {
        let marker = format!("/{namespace}/{flow}-");
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, _| !k.contains(&marker));
        }
        if let Ok(mut versions) = self.own_versions.lock() {
            versions.retain(|k, _| !k.contains(&marker));
        }
    }

    fn wrote(&self, key: String, meta: &ObjectMeta) {
        if let (Some(version), Ok(mut versions)) =
            (meta.resource_version.clone(), self.own_versions.lock())
        {
            versions.insert(key, version);
        }
    }

    /// Whether `meta` (a child of kind `kind`, as a watch delivers it) is exactly what this
    /// process last wrote: its creation or update event would only re-run the pass that
    /// wrote it. (When the event wins the race with the write's response, it passes: one
    /// reconcile too many, never one too few.)
    pub fn is_own_write(&self, kind: &str, meta: &ObjectMeta) -> bool {
        let (Some(namespace), Some(name), Some(version)) =
            (&meta.namespace, &meta.name, &meta.resource_version)
        else {
            return false;
        };
        self.own_versions.lock().is_ok_and(|versions| {
            versions.get(&format!("{kind}/{namespace}/{name}")) == Some(version)
        })
    }
}

fn hash_of<T: Serialize>(object: &T) -> Result<Fingerprint> {
    Ok(fingerprint(serde_json::to_vec(object)?))
}

/// A child the API server refuses as invalid (422) was built from a spec it does not accept
/// (a cron or time zone it rejects, a name too long): retrying cannot help, so it is a spec
/// problem with the server's own message, reported as Stalled until the flow changes.
fn refused(kind: &str, name: &str, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(status) if status.code == 422 => Error::spec(
            "ChildRefused",
            format!("the API server refused {kind} {name}: {}", status.message),
        ),
        other => Error::Kube(other),
    }
}

/// Whether a live object is this flow's: it names the flow (by uid) as an owner, or it carries
/// the flow's labels and fields of the operator's field manager (a child whose owner
/// reference someone removed).
pub fn owned_by(meta: &ObjectMeta, flow: &IntegrationFlow) -> bool {
    let uid = flow.metadata.uid.as_deref();
    let by_owner = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "IntegrationFlow" && Some(o.uid.as_str()) == uid);
    let labels = meta.labels.clone().unwrap_or_default();
    let labelled = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(MANAGED_BY)
        && labels.get(FLOW_LABEL) == flow.metadata.name.as_ref();
    let ours = meta
        .managed_fields
        .iter()
        .flatten()
        .any(|f| f.manager.as_deref() == Some(FIELD_MANAGER));
    by_owner || (labelled && ours)
}

fn conflict(kind: &str, name: &str, flow: &IntegrationFlow) -> Error {
    Error::spec(
        "ChildConflict",
        format!(
            "{kind} {name} already exists and does not belong to IntegrationFlow {}: flowplane \
             does not take over objects it did not create; rename or remove that {kind}",
            flow.metadata.name.as_deref().unwrap_or_default()
        ),
    )
}

struct Applier<'a> {
    client: &'a Client,
    namespace: &'a str,
    cache: &'a AppliedCache,
    params: PatchParams,
    flow: &'a IntegrationFlow,
}

impl Applier<'_> {
    /// Applies `object` unless this process already applied the same object and, where the
    /// caller knows it, the live object still exists. Returns the object as applied, if sent.
    async fn apply<K>(&self, object: &K, live_exists: Option<bool>) -> Result<Option<K>>
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
        if self.cache.get(&key) == Some(hash) && live_exists != Some(false) {
            return Ok(None);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        // Read from the API server's watch cache (`any`), not etcd: one quorum read per new
        // child was a large part of a flow's first pass; the cache lags by milliseconds, a
        // window the check-then-apply has anyway.
        if let Some(live) = api.get_metadata_opt_with(&name, &GetParams::any()).await?
            && !owned_by(&live.metadata, self.flow)
        {
            return Err(conflict(&K::kind(&()), &name, self.flow));
        }
        let applied = api
            .patch(&name, &self.params, &Patch::Apply(object))
            .await
            .map_err(|e| refused(&K::kind(&()), &name, e))?;
        self.cache.wrote(key.clone(), applied.meta());
        self.cache.set(key, hash);
        Ok(Some(applied))
    }

    async fn apply_dynamic(&self, object: &DynamicObject, resource: &ApiResource) -> Result<()> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let key = format!("{}/{}/{name}", resource.kind, self.namespace);
        let hash = hash_of(object)?;
        if self.cache.get(&key) == Some(hash) {
            return Ok(());
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), self.namespace, resource);
        if let Some(live) = api.get_metadata_opt_with(&name, &GetParams::any()).await?
            && !owned_by(&live.metadata, self.flow)
        {
            return Err(conflict(&resource.kind, &name, self.flow));
        }
        let applied = api
            .patch(&name, &self.params, &Patch::Apply(object))
            .await
            .map_err(|e| refused(&resource.kind, &name, e))?;
        self.cache.wrote(key.clone(), &applied.metadata);
        self.cache.set(key, hash);
        Ok(())
    }

    /// Deletes a child that must not exist, once: when this process applied it, or else when
    /// the watch says it exists (most flows never had one; deleting blindly cost a request each).
    async fn prune<K>(&self, name: &str, live_exists: bool) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let key = format!("{}/{}/{name}", K::kind(&()), self.namespace);
        match self.cache.get(&key) {
            Some(ABSENT) => return Ok(()),
            None if !live_exists => return Ok(()),
            _ => {}
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let live = api.get_metadata_opt(name).await?;
        self.delete_if_ours(&api, name, live.map(|l| l.metadata))
            .await?;
        self.cache.set(key, ABSENT);
        Ok(())
    }

    /// Deletes `live` if it is this flow's, with its uid as precondition (so an object
    /// recreated by someone else in between is not deleted); anyone else's stays.
    async fn delete_if_ours<K>(
        &self,
        api: &Api<K>,
        name: &str,
        live: Option<ObjectMeta>,
    ) -> Result<()>
    where
        K: Clone + DeserializeOwned + std::fmt::Debug,
    {
        let Some(live) = live.filter(|m| owned_by(m, self.flow)) else {
            return Ok(());
        };
        let mut params = DeleteParams::background();
        params.preconditions = Some(Preconditions {
            uid: live.uid,
            resource_version: None,
        });
        Ok(ignore_not_found(
            api.delete(name, &params).await.map(|_| ()),
        )?)
    }

    async fn prune_dynamic(&self, name: &str, resource: &ApiResource) -> Result<()> {
        let key = format!("{}/{}/{name}", resource.kind, self.namespace);
        if self.cache.get(&key) == Some(ABSENT) {
            return Ok(());
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), self.namespace, resource);
        let live = api.get_metadata_opt(name).await?;
        self.delete_if_ours(&api, name, live.map(|l| l.metadata))
            .await?;
        self.cache.set(key, ABSENT);
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

/// Which children exist, as the controller's watches last saw them.
pub struct Live {
    pub config_map: bool,
    pub deployment: bool,
    pub cron_job: bool,
    pub autoscaler: bool,
    pub rules_config_map: bool,
}

/// What an apply pass changed that the status needs.
pub struct Applied {
    /// The worker Deployment as the apiserver answered its apply, when it was applied.
    pub deployment: Option<Deployment>,
}

/// Applies the worker configuration first (the workers mount it), then every other child at
/// once, then prunes what is no longer wanted.
pub async fn apply_children(
    client: &Client,
    cache: &AppliedCache,
    flow: &IntegrationFlow,
    children: &Children,
    live: Live,
    installed: Installed,
) -> Result<Applied> {
    let namespace = &namespace(flow);
    let applier = &Applier {
        client,
        namespace,
        cache,
        params: PatchParams::apply(FIELD_MANAGER).force(),
        flow,
    };
    let flow_workers = &workers_name(flow);
    let rules = &rules_name(flow);
    let cron_name = &cron_job_name(flow);
    applier
        .apply::<ConfigMap>(&children.config_map, Some(live.config_map))
        .await?;

    let cron_job = async {
        match &children.cron_job {
            Some(cron) => applier.apply::<CronJob>(cron, None).await.map(drop),
            None => applier.prune::<CronJob>(cron_name, live.cron_job).await,
        }
    };
    let autoscaler = async {
        match &children.horizontal_pod_autoscaler {
            Some(hpa) => applier
                .apply::<HorizontalPodAutoscaler>(hpa, None)
                .await
                .map(drop),
            None => {
                applier
                    .prune::<HorizontalPodAutoscaler>(flow_workers, live.autoscaler)
                    .await
            }
        }
    };
    let scaled_object = async {
        if !installed.keda {
            return Ok(());
        }
        let resource = optional_kinds::scaled_object();
        match &children.scaled_object {
            Some(object) => applier.apply_dynamic(object, &resource).await,
            None => applier.prune_dynamic(flow_workers, &resource).await,
        }
    };
    let prometheus_operator_rules = async {
        if !installed.prometheus_operator {
            return Ok(());
        }
        let (rule_resource, monitor_resource) = (
            optional_kinds::prometheus_rule(),
            optional_kinds::service_monitor(),
        );
        match (&children.prometheus_rule, &children.service_monitor) {
            (Some(rule), Some(monitor)) => {
                applier.apply_dynamic(rule, &rule_resource).await?;
                applier.apply_dynamic(monitor, &monitor_resource).await
            }
            _ => {
                applier.prune_dynamic(rules, &rule_resource).await?;
                applier.prune_dynamic(flow_workers, &monitor_resource).await
            }
        }
    };
    let rules_config_map = async {
        match &children.rules_config_map {
            Some(cm) => applier.apply::<ConfigMap>(cm, None).await.map(drop),
            None => {
                applier
                    .prune::<ConfigMap>(rules, live.rules_config_map)
                    .await
            }
        }
    };
    let (deployment, ..) = tokio::try_join!(
        applier.apply::<Deployment>(&children.deployment, Some(live.deployment)),
        applier.apply::<Service>(&children.service, None),
        applier.apply::<PodDisruptionBudget>(&children.pod_disruption_budget, None),
        applier.apply::<NetworkPolicy>(&children.network_policy, None),
        cron_job,
        autoscaler,
        scaled_object,
        prometheus_operator_rules,
        rules_config_map,
    )?;
    Ok(Applied { deployment })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> IntegrationFlow {
        let mut flow: IntegrationFlow = serde_yaml::from_str(
            "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {name: orders, namespace: n}\n\
             spec:\n  source: {bindingRef: erp, entity: A, syncMode: FullRefresh}\n  target: {bindingRef: fc, entity: /x}\n  \
             contract: {name: c, versions: \"^1\"}\n",
        )
        .unwrap();
        flow.metadata.uid = Some("u-1".into());
        flow
    }

    fn meta(yaml: &str) -> ObjectMeta {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn only_this_flows_children_are_ours() {
        let flow = flow();
        let owner = "ownerReferences: [{apiVersion: flowplane.io/v1alpha1, kind: IntegrationFlow, name: orders, uid: u-1}]";
        assert!(owned_by(
            &meta(&format!("{{name: orders-worker, {owner}}}")),
            &flow
        ));
        // Another flow of the same name (deleted and recreated): not ours by owner.
        let other = owner.replace("u-1", "u-0");
        assert!(!owned_by(
            &meta(&format!("{{name: orders-worker, {other}}}")),
            &flow
        ));
        // Someone's own Deployment, even labelled like ours, without our field manager.
        let labels = "labels: {app.kubernetes.io/managed-by: flowplane, flowplane.io/flow: orders}";
        assert!(!owned_by(
            &meta(&format!("{{name: orders-worker, {labels}}}")),
            &flow
        ));
        assert!(!owned_by(&meta("{name: orders-worker}"), &flow));
        // Our labels and our field manager: a child whose owner reference was removed.
        let ours = format!(
            "{{name: orders-worker, {labels}, managedFields: [{{manager: {FIELD_MANAGER}, operation: Apply}}]}}"
        );
        assert!(owned_by(&meta(&ours), &flow));
        let wrong_flow = ours.replace("flowplane.io/flow: orders", "flowplane.io/flow: invoices");
        assert!(!owned_by(&meta(&wrong_flow), &flow));
    }
}
