//! The DataContract controller: dereference (the history ConfigMap) -> validate and check
//! compatibility ([`plan`], pure) -> apply (the history ConfigMap) -> status.
//!
//! A contract's status is the gate flows read: `Compatible=True` with `observedGeneration`
//! equal to the generation lets flows in range move to the spec's version; otherwise they keep
//! the newest published version from the history ConfigMap, which this controller writes
//! before the status that announces it.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::api::DataContract;
use crate::api::data_contract::DataContractStatus;
use crate::contract::history;
use crate::controller::conditions::transitions;
use crate::controller::{Context, Error, FIELD_MANAGER, Result, WatchScope};

pub const KIND: &str = "DataContract";
/// Label of the history ConfigMap naming its contract.
pub const CONTRACT_LABEL: &str = "flowplane.io/contract";
/// Annotation of the history ConfigMap: version -> firstSeen (JSON), so that a reconcile on
/// a stale cache, or after status was lost, restores the same `firstSeen`.
pub const FIRST_SEEN_ANNOTATION: &str = "flowplane.io/first-seen";
/// A contract's status depends only on its spec and history, both watched; the periodic
/// pass only repairs a history ConfigMap changed behind the controller's back.
const RESYNC: Duration = Duration::from_secs(600);

pub async fn run(ctx: Arc<Context>, scope: &WatchScope) {
    let client = ctx.client.clone();
    let contracts: Api<DataContract> = scope.api(&client);
    // Only the history ConfigMaps, not every flow's children (20,000 of them at 10,000 flows).
    let histories = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by=flowplane,{CONTRACT_LABEL}"
    ));
    Controller::new(contracts, watcher::Config::default().any_semantic())
        // The history ConfigMaps: metadata only; a change or deletion re-reconciles the owner.
        .owns(
            scope.api::<PartialObjectMeta<ConfigMap>>(&client),
            histories,
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

fn error_policy(_contract: Arc<DataContract>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(KIND, error.metric_label());
    tracing::warn!(error = %error, "DataContract reconcile failed");
    error.action(Duration::from_secs(10))
}

async fn reconcile(contract: Arc<DataContract>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(KIND);
    if contract.metadata.deletion_timestamp.is_some() {
        // The history ConfigMap goes with the contract (owner reference).
        return Ok(Action::await_change());
    }
    let contract = ctx.written_statuses.current(contract);
    let ns = contract.namespace().unwrap_or_default();
    let name = contract.name_any();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let cm_name = history::config_map_name(&name);

    // dereference
    let live = config_maps.get_opt(&cm_name).await?;
    let stored = live
        .as_ref()
        .and_then(|cm| cm.data.clone())
        .unwrap_or_default();
    let first_seen = plan::parse_first_seen(
        live.as_ref()
            .and_then(|cm| cm.metadata.annotations.as_ref())
            .and_then(|a| a.get(FIRST_SEEN_ANNOTATION))
            .map(String::as_str),
    );

    // validate + check (pure)
    let plan = plan::plan(&contract, &stored, &first_seen, Timestamp::now());
    let annotations = BTreeMap::from([(
        FIRST_SEEN_ANNOTATION.to_string(),
        plan::first_seen_annotation(&plan.status.history),
    )]);

    // apply: the history first, so a flow that sees the new status finds the schema
    let desired = history_config_map(
        &contract,
        &cm_name,
        &ns,
        plan.history_data.clone(),
        annotations,
    );
    if needs_write(live.as_ref(), &contract, &desired) {
        config_maps
            .patch(
                &cm_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
    }
    if let Some(version) = &plan.newly_published {
        super::publish_event(
            &ctx,
            contract.as_ref(),
            EventType::Normal,
            "VersionPublished",
            format!(
                "published {version}; flows whose range admits it move to it ({})",
                plan.status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Compatible")
                    .map(|c| c.message.as_str())
                    .unwrap_or_default()
            ),
        )
        .await;
    }

    // status
    write_status(&contract, &ctx, plan.status).await?;
    Ok(Action::requeue(RESYNC))
}

fn labels(contract: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "flowplane-contract-history".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            contract.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "flowplane".to_string(),
        ),
        (CONTRACT_LABEL.to_string(), contract.to_string()),
    ])
}

fn history_config_map(
    contract: &DataContract,
    name: &str,
    namespace: &str,
    data: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels(&contract.name_any())),
            annotations: Some(annotations),
            owner_references: contract.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Whether the live ConfigMap differs from what we want: data, our labels and annotations,
/// our owner reference.
fn needs_write(live: Option<&ConfigMap>, contract: &DataContract, desired: &ConfigMap) -> bool {
    let Some(live) = live else {
        return desired.data.as_ref().is_some_and(|d| !d.is_empty());
    };
    let contains = |live: &Option<BTreeMap<String, String>>,
                    want: &Option<BTreeMap<String, String>>| {
        let live = live.clone().unwrap_or_default();
        want.iter().flatten().all(|(k, v)| live.get(k) == Some(v))
    };
    let owned = live.metadata.owner_references.as_ref().is_some_and(|o| {
        o.iter()
            .any(|r| Some(&r.uid) == contract.metadata.uid.as_ref())
    });
    live.data.clone().unwrap_or_default() != desired.data.clone().unwrap_or_default()
        || !contains(&live.metadata.labels, &desired.metadata.labels)
        || !contains(&live.metadata.annotations, &desired.metadata.annotations)
        || !owned
}

/// Writes status only when it changed, with an event per condition transition (a refused
/// version is a Warning naming its breaks).
async fn write_status(
    contract: &DataContract,
    ctx: &Context,
    status: DataContractStatus,
) -> Result<()> {
    let previous = contract.status.clone().unwrap_or_default();
    if previous == status {
        return Ok(());
    }
    for changed in transitions(&previous.conditions, &status.conditions) {
        let healthy = changed.status == "True";
        // Compatible=True after a publication is covered by VersionPublished.
        if healthy && changed.type_ == "Compatible" && previous.conditions.is_empty() {
            continue;
        }
        let mut note = format!(
            "{} is {}: {}",
            changed.type_, changed.status, changed.message
        );
        if changed.type_ == "Compatible" && changed.reason == "BreakingChange" {
            note.push_str(": ");
            note.push_str(&status.breaks.join("; "));
        }
        let type_ = if healthy {
            EventType::Normal
        } else {
            EventType::Warning
        };
        super::publish_event(ctx, contract, type_, &changed.reason, note).await;
    }
    super::apply_status(ctx, contract, &status).await
}
