//! The IntegrationFlow controller: dereference -> validate -> build (crate::render) -> apply ->
//! status, plus the flow's queues on JetStream (removed through a finalizer where the policy
//! says Delete) and one-off operations by annotation.

pub mod apply;
pub mod changes;
pub mod dead_letter_requests;
pub mod dereference;
pub mod drift;
pub mod nats_user;
pub mod operations;
pub mod redrive_gate;
pub mod resync;
pub mod status;
pub mod stores;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::api::common::Condition;
use crate::api::integration_flow::{DeletionPolicy, IntegrationFlowStatus, RouteCounts};
use crate::api::{ConnectorBinding, DataContract, IntegrationFlow};
use crate::contract::history;
use crate::controller::conditions::{Desired, transitions};
use crate::controller::metrics::CodeMapLabels;
use crate::controller::{Context, Error, Result, WatchScope};
use crate::queue::QueueNames;
use crate::queue::approvals::{Decision, Route, decide, list_pending, route_counts};
use crate::queue::codes::read_observed_codes;
use crate::queue::jetstream::{QueuePolicy, delete_queue, ensure_queue, reset_cursor};
use crate::queue::redrive::redrive;
use crate::render::labels::{cron_job_name, flow_name, namespace, rules_name, workers_name};
use crate::render::{self, FlowInputs, RenderSettings};
use stores::{ConfigMaps, Stores, WorkerDeployment};

pub const KIND: &str = "IntegrationFlow";
/// Flows reconciled at the same time.
const RECONCILE_CONCURRENCY: u16 = 32;
/// Reconciles running or waiting to start above which no resync is started: the rest of the
/// slots are kept for event-driven passes (`resync`).
const RESYNC_SLOTS: usize = RECONCILE_CONCURRENCY as usize / 2;
/// How often the operator asks API discovery whether `external.metrics.k8s.io` is served (a
/// metrics adapter has no CRD to watch, and its APIService can go unavailable at any time).
const OPTIONAL_APIS_RECHECK: Duration = Duration::from_secs(30);
/// Finalizer that removes the JetStream resources of a flow with `deletionPolicy: Delete`.
pub const FINALIZER: &str = "flowplane.io/queues";
/// Annotation asking to move dead letters back to the stream (any new value; "reason=X" for one reason).
pub const REDRIVE_ANNOTATION: &str = "flowplane.io/redrive";
/// Annotation approving pending reviews: comma-separated review ids from status.pendingApprovals.
pub const APPROVE_ANNOTATION: &str = "flowplane.io/approve";
/// Annotation rejecting pending reviews: comma-separated review ids.
pub const REJECT_ANNOTATION: &str = "flowplane.io/reject";
/// Who set or changed a decision annotation: stamped from the request's user by the chart's
/// MutatingAdmissionPolicy, overwriting whatever the request carried.
pub const DECIDED_BY_ANNOTATION: &str = "flowplane.io/decided-by";
/// Annotation asking to forget the source cursor and re-sync fully (any new value).
pub const RESET_CURSOR_ANNOTATION: &str = "flowplane.io/reset-cursor";
use crate::render::workload::RESTART_ANNOTATION;

/// Flows this operator is responsible for: its region's and the region-less ones.
fn in_region(flow: &IntegrationFlow, region: Option<&str>) -> bool {
    match (region, flow.spec.region.as_deref()) {
        (Some(mine), Some(theirs)) => mine == theirs,
        _ => true,
    }
}

/// Flows in `namespace` for which `pred` holds, as reconcile requests.
fn flows_where(
    store: &Store<IntegrationFlow>,
    namespace: Option<String>,
    pred: impl Fn(&IntegrationFlow) -> bool,
) -> Vec<ObjectRef<IntegrationFlow>> {
    store
        .state()
        .into_iter()
        .filter(|f| f.metadata.namespace == namespace && pred(f))
        .map(|f| ObjectRef::from_obj(&*f))
        .collect()
}

fn uses_binding(flow: &IntegrationFlow, binding: &str) -> bool {
    let spec = &flow.spec;
    spec.source.binding_ref == binding
        || spec.target.binding_ref == binding
        || spec
            .approval
            .as_ref()
            .and_then(|a| a.escalate_to.as_ref())
            .is_some_and(|e| e.binding_ref == binding)
}

fn uses_config_map(flow: &IntegrationFlow, config_map: &str) -> bool {
    let contract_history = history::config_map_name(&flow.spec.contract.name);
    contract_history == config_map
        || flow
            .spec
            .mapping
            .iter()
            .flat_map(|m| &m.code_maps)
            .any(|c| c.config_map_ref == config_map)
}

/// Drops the watch events of the children this process just wrote
/// ([`apply::AppliedCache::is_own_write`]).
fn not_own_writes<K, S>(
    events: S,
    ctx: &Arc<Context>,
) -> impl futures::Stream<Item = std::result::Result<K, watcher::Error>> + use<K, S>
where
    K: Resource<DynamicType = ()>,
    S: futures::Stream<Item = std::result::Result<K, watcher::Error>>,
{
    let ctx = ctx.clone();
    events.filter(move |event| {
        let own =
            matches!(event, Ok(object) if ctx.applied.is_own_write(&K::kind(&()), object.meta()));
        std::future::ready(!own)
    })
}

/// Counts the objects `events` passes as reconcile requests raised by `trigger`.
fn counted<K, S>(
    events: S,
    metrics: &crate::controller::metrics::Metrics,
    trigger: &'static str,
) -> impl futures::Stream<Item = std::result::Result<K, watcher::Error>> + use<K, S>
where
    S: futures::Stream<Item = std::result::Result<K, watcher::Error>>,
{
    let metrics = metrics.clone();
    events.inspect(move |event| {
        if event.is_ok() {
            metrics.triggered(KIND, trigger, 1);
        }
    })
}

/// What a flow reconcile shares: the operator's context and this controller's stores.
pub struct FlowContext {
    pub ctx: Arc<Context>,
    pub stores: Stores,
    pub resyncs: Arc<resync::Resyncs>,
}

/// Keeps stored flows small: the field-ownership bookkeeping and the copy of the whole object
/// a client-side `kubectl apply` leaves in an annotation are never read here.
fn slim_flow(flow: &mut IntegrationFlow) {
    flow.metadata.managed_fields = None;
    if let Some(annotations) = flow.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The field-ownership bookkeeping is never read here.
fn without_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Keeps of a stored child what the controller reads (`stores::slim_metadata`).
fn slim<K: Resource>(object: &mut K) {
    stores::slim_metadata(object.meta_mut());
}

/// Keeps of a worker Deployment what the flow's status reads: the condition history was
/// most of its status.
fn slim_deployment(deployment: &mut WorkerDeployment) {
    stores::slim_metadata(&mut deployment.metadata);
    if let Some(status) = deployment.status.as_mut() {
        status.conditions = None;
    }
}

/// The owning flow of a child, from its owner references.
fn owning_flow(meta: &ObjectMeta) -> Option<ObjectRef<IntegrationFlow>> {
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == KIND && o.api_version == IntegrationFlow::api_version(&()))?;
    Some(ObjectRef::new(&owner.name).within(meta.namespace.as_deref()?))
}

pub async fn run(ctx: Arc<Context>, scope: &WatchScope) {
    let client = ctx.client.clone();
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=flowplane");

    let (flows, flow_writer) = reflector::store();
    let (contracts, contract_writer) = reflector::store();
    let (bindings, binding_writer) = reflector::store();
    let (deployments, deployment_writer) = reflector::store();
    let (config_maps, config_map_writer) = reflector::store();
    let (cron_jobs, cron_job_writer) = reflector::store();
    let (autoscalers, autoscaler_writer) = reflector::store();
    // Status-only changes (most of them the operator's own writes) need no reconcile: only
    // the spec (generation), the operation annotations, deletion and others' finalizers do.
    let flow_changes = watcher(
        scope.api::<IntegrationFlow>(&client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(slim_flow)
    .reflect(flow_writer)
    .inspect({
        let ctx = ctx.clone();
        move |event| {
            if let Ok(watcher::Event::Delete(flow)) = event {
                forget(flow, &ctx);
            }
        }
    })
    .applied_objects()
    .predicate_filter(changes::flow_fingerprint, Default::default());
    // A contract or binding change re-reconciles every flow that uses it: only what flows
    // read of them passes (a binding's probe results and quota counts do not).
    let contract_changes = changes::worth_reconciling(
        watcher(scope.api::<DataContract>(&client), Default::default())
            .default_backoff()
            .modify(without_managed_fields)
            .reflect(contract_writer),
        changes::contract_fingerprint,
    );
    let binding_changes = changes::worth_reconciling(
        watcher(scope.api::<ConnectorBinding>(&client), Default::default())
            .default_backoff()
            .modify(without_managed_fields)
            .reflect(binding_writer),
        changes::binding_fingerprint,
    );
    // Only their existence matters here: kube-controller-manager rewrites every autoscaler's
    // status every 15 s, which must not re-reconcile every flow.
    let cron_job_changes = changes::worth_reconciling(
        watcher(
            scope.api::<PartialObjectMeta<CronJob>>(&client),
            managed.clone(),
        )
        .default_backoff()
        .modify(slim)
        .reflect(cron_job_writer),
        changes::generation_fingerprint,
    );
    let autoscaler_changes = changes::worth_reconciling(
        watcher(
            scope.api::<PartialObjectMeta<HorizontalPodAutoscaler>>(&client),
            managed.clone(),
        )
        .default_backoff()
        .modify(slim)
        .reflect(autoscaler_writer),
        changes::generation_fingerprint,
    );
    // kube-controller-manager updates a new Deployment's status several times, most of them
    // condition bookkeeping the flow's status does not show.
    let deployment_changes = changes::worth_reconciling(
        watcher(scope.api::<WorkerDeployment>(&client), managed)
            .default_backoff()
            .modify(slim_deployment)
            .reflect(deployment_writer),
        changes::deployment_fingerprint,
    );
    // Every ConfigMap, metadata only: a flow's own children, its code maps and its contract's
    // history; never the whole cluster's data.
    let config_map_changes = watcher(
        scope.api::<PartialObjectMeta<ConfigMap>>(&client),
        Default::default(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(config_map_writer)
    .touched_objects();

    let fctx = Arc::new(FlowContext {
        ctx: ctx.clone(),
        stores: Stores::new(
            flows.clone(),
            contracts,
            bindings,
            deployments,
            (cron_jobs, autoscalers),
            ConfigMaps::new(config_maps),
        ),
        resyncs: Arc::new(resync::Resyncs::new(RESYNC_SLOTS)),
    });
    ctx.watched_flows.add(flows.clone());
    let resyncs = fctx.resyncs.clone().due(flows.clone());
    let (contract_store, binding_store, cm_store) = (flows.clone(), flows.clone(), flows.clone());

    // Installing or removing KEDA or the Prometheus Operator changes every flow's children.
    let crd_ctx = ctx.clone();
    let optional_crds = watcher(
        Api::<CustomResourceDefinition>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects()
    .filter_map(move |crd| {
        let ctx = crd_ctx.clone();
        async move {
            let name = crd.ok()?.name_any();
            if !name.ends_with("keda.sh") && !name.ends_with("monitoring.coreos.com") {
                return None;
            }
            ctx.optional_apis.refresh().await.ok()?.then_some(())
        }
    });
    let recheck_ctx = ctx.clone();
    let rechecks = futures::stream::unfold(recheck_ctx, |ctx| async move {
        tokio::time::sleep(OPTIONAL_APIS_RECHECK).await;
        let changed = match ctx.optional_apis.refresh().await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "could not probe optional APIs; keeping the last answer");
                false
            }
        };
        Some((changed, ctx))
    })
    .filter_map(|changed| std::future::ready(changed.then_some(())));
    if let Err(e) = ctx.optional_apis.refresh().await {
        tracing::warn!(error = %e, "could not probe optional APIs; assuming none");
    }

    let metrics = &ctx.metrics;
    let (contract_metrics, binding_metrics, cm_metrics) =
        (metrics.clone(), metrics.clone(), metrics.clone());
    let cm_ctx = ctx.clone();
    let resync_metrics = metrics.clone();
    let resyncs = resyncs.inspect(move |_| resync_metrics.triggered(KIND, "resync", 1));
    let dead_letter_requests = dead_letter_requests::serve(ctx.clone(), flows.clone());
    let controller = Controller::for_stream(counted(flow_changes, metrics, "flow"), flows)
        .owns_stream(counted(
            not_own_writes(deployment_changes, &ctx),
            metrics,
            "deployment",
        ))
        .owns_stream(counted(
            not_own_writes(cron_job_changes, &ctx),
            metrics,
            "cron_job",
        ))
        .owns_stream(counted(
            not_own_writes(autoscaler_changes, &ctx),
            metrics,
            "autoscaler",
        ))
        .watches_stream(contract_changes, move |dc| {
            let name = dc.name_any();
            let flows = flows_where(&contract_store, dc.metadata.namespace.clone(), |f| {
                f.spec.contract.name == name
            });
            contract_metrics.triggered(KIND, "contract", flows.len());
            flows
        })
        .watches_stream(binding_changes, move |cb| {
            let name = cb.name_any();
            let flows = flows_where(&binding_store, cb.metadata.namespace.clone(), |f| {
                uses_binding(f, &name)
            });
            binding_metrics.triggered(KIND, "binding", flows.len());
            flows
        })
        .watches_stream(config_map_changes, move |cm| {
            // A flow's own ConfigMap (worker configuration, rules) concerns its flow only; the
            // flows that read a ConfigMap (code maps, contract histories) are found by scanning
            // every flow, which per event of each of two ConfigMaps per flow grew with the
            // square of the flows.
            if let Some(owner) = owning_flow(&cm.metadata) {
                if cm_ctx.applied.is_own_write("ConfigMap", &cm.metadata) {
                    return Vec::new();
                }
                cm_metrics.triggered(KIND, "owned_config_map", 1);
                return vec![owner];
            }
            let name = cm.name_any();
            let flows = flows_where(&cm_store, cm.metadata.namespace.clone(), |f| {
                uses_config_map(f, &name)
            });
            cm_metrics.triggered(KIND, "referenced_config_map", flows.len());
            flows
        })
        .reconcile_all_on(futures::stream::select(optional_crds, rechecks))
        .reconcile_on(resyncs)
        // Bounded: thousands of flows reconciling at once only queue at the apiserver and NATS
        // and inflate memory; a few in flight keep both busy.
        // Debounced: kube-controller-manager updates a new Deployment's status several times
        // within a second; one reconcile (and at most one status write) for the burst.
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(RECONCILE_CONCURRENCY)
                .debounce(Duration::from_secs(1)),
        )
        .run(reconcile, error_policy, fctx)
        .for_each(|_| std::future::ready(()));
    // The requests are served for as long as the controller runs (never ends by itself).
    tokio::select! {
        () = controller => {}
        () = dead_letter_requests => {}
    }
}

/// The flow's queue policy: its `spec.delivery` over the operator's defaults. The error names
/// the field (`spec.delivery...`).
fn queue_policy(
    flow: &IntegrationFlow,
    ctx: &Context,
    max_ack_pending: u32,
) -> std::result::Result<QueuePolicy, String> {
    QueuePolicy::from_delivery(
        &flow.spec.delivery,
        max_ack_pending,
        ctx.config.queue_defaults(),
    )
    .map_err(|e| format!("spec.{e}"))
}

fn error_policy(_flow: Arc<IntegrationFlow>, error: &Error, fctx: Arc<FlowContext>) -> Action {
    fctx.ctx.metrics.error(KIND, error.metric_label());
    tracing::warn!(error = %error, "reconcile failed");
    error.action(Duration::from_secs(10))
}

async fn reconcile(flow: Arc<IntegrationFlow>, fctx: Arc<FlowContext>) -> Result<Action> {
    let ctx = &fctx.ctx;
    let _timer = ctx.metrics.reconcile(KIND);
    let flow_ref = ObjectRef::from_obj(&*flow);
    let _running = fctx.resyncs.started(&flow_ref);
    if !in_region(&flow, ctx.config.region.as_deref()) {
        return Ok(Action::await_change());
    }
    fctx.stores.ready().await;
    let api: Api<IntegrationFlow> = Api::namespaced(ctx.client.clone(), &namespace(&flow));
    let mut flow = ctx.written_statuses.current(flow);
    let deleting = flow.metadata.deletion_timestamp.is_some();
    let has_finalizer = flow.finalizers().iter().any(|f| f == FINALIZER);
    if !has_finalizer && flow.spec.deletion_policy == DeletionPolicy::Retain {
        // A kept queue leaves nothing to do outside Kubernetes when the flow goes, so no
        // finalizer holds it (nor its namespace, should the operator be gone): one write per
        // flow fewer. What this process remembers of it goes with the watch's Delete event.
        if deleting {
            return Ok(Action::await_change());
        }
        return apply_flow(&flow, &fctx).await;
    }
    if !deleting && !has_finalizer {
        // kube's helper adds a missing finalizer and ends the pass there, waiting for the
        // watch event of its own patch: a second pass for every new flow. Here the pass goes
        // on with the finalizer in place (the event is not news: `changes::flow_fingerprint`).
        finalizer(&api, FINALIZER, flow.clone(), |_| async {
            Ok::<_, Error>(Action::await_change())
        })
        .await
        .map_err(finalizer_error)?;
        let mut with_finalizer = (*flow).clone();
        with_finalizer.finalizers_mut().push(FINALIZER.into());
        flow = Arc::new(with_finalizer);
    }
    finalizer(&api, FINALIZER, flow, |event| async {
        match event {
            finalizer::Event::Apply(flow) => apply_flow(&flow, &fctx).await,
            finalizer::Event::Cleanup(flow) => cleanup(&flow, ctx).await,
        }
    })
    .await
    .map_err(finalizer_error)
}

fn finalizer_error(e: finalizer::Error<Error>) -> Error {
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::spec("FinalizerFailed", other.to_string()),
    }
}

/// Deletes or keeps the flow's queues per `deletionPolicy` (a flow whose policy became Retain
/// after it got the finalizer keeps them); the children go with the flow through their owner
/// references (garbage collector).
async fn cleanup(flow: &IntegrationFlow, ctx: &Context) -> Result<Action> {
    let names = QueueNames::for_flow(&namespace(flow), &flow_name(flow));
    if flow.spec.deletion_policy == DeletionPolicy::Delete {
        delete_queue(&ctx.jetstream, &names)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
    }
    Ok(Action::await_change())
}

/// Forgets what this process holds of a deleted flow: its children's fingerprints and its
/// code maps' gauges. From the flow watch's Delete event, with or without a finalizer.
fn forget(flow: &IntegrationFlow, ctx: &Context) {
    ctx.applied.forget_flow(&namespace(flow), &flow_name(flow));
    for map in flow.spec.mapping.iter().flat_map(|m| &m.code_maps) {
        let labels = code_map_labels(flow, &map.name);
        ctx.metrics.unmapped_codes.remove(&labels);
        ctx.metrics.orphaned_codes.remove(&labels);
    }
}

fn code_map_labels(flow: &IntegrationFlow, code_map: &str) -> CodeMapLabels {
    CodeMapLabels {
        namespace: namespace(flow),
        flow: flow_name(flow),
        code_map: code_map.to_string(),
    }
}

async fn apply_flow(flow: &IntegrationFlow, fctx: &FlowContext) -> Result<Action> {
    let ctx = &*fctx.ctx;
    let ns = namespace(flow);
    let started = std::time::Instant::now();
    // A new redrive reads the code maps from the apiserver, not the watch: the fix written
    // just before the annotation must be in the configuration the redrive waits for.
    let redrive_requested = redrive_gate::requested(flow).is_some();
    let deref =
        dereference::dereference(flow, &ctx.client, &fctx.stores, redrive_requested).await?;

    // validate
    let history = match &deref.contract {
        Some(_) => fctx
            .stores
            .config_maps
            .data(
                &ctx.client,
                &ns,
                &history::config_map_name(&flow.spec.contract.name),
            )
            .await?
            .map(|data| history::from_config_map_data(&data))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut blocked: Option<(&'static str, String)> = None;
    let choice = match validate::choose_contract(flow, deref.contract.as_ref(), &history) {
        Ok(choice) => choice,
        Err(message) => {
            blocked = Some(("InvalidSpec", message.clone()));
            validate::ContractChoice {
                resolved: None,
                condition: Desired::new("ContractCompatible", false, "InvalidSpec", message),
            }
        }
    };
    let mut binding_refs = vec![
        (flow.spec.source.binding_ref.as_str(), deref.source.as_ref()),
        (flow.spec.target.binding_ref.as_str(), deref.target.as_ref()),
    ];
    if let Some(to) = flow
        .spec
        .approval
        .as_ref()
        .and_then(|a| a.escalate_to.as_ref())
    {
        binding_refs.push((to.binding_ref.as_str(), deref.escalation.as_ref()));
    }
    let bindings = validate::bindings_condition(&binding_refs);
    // A reference to an object that does not exist stays broken until someone creates it or
    // edits the flow: Stalled, naming the missing object, not "rolling out" a Deployment that
    // will never be created.
    for (condition, missing) in [
        (&choice.condition, "ContractNotFound"),
        (&bindings, "BindingNotFound"),
    ] {
        if condition.reason == missing {
            blocked.get_or_insert((missing, condition.message.clone()));
        }
    }
    if let Some((map, cm)) = deref.missing_code_maps.first() {
        blocked.get_or_insert((
            "CodeMapNotFound",
            format!("code map {map}: ConfigMap {cm} does not exist"),
        ));
    }
    // An event source on a subject of the platform's (flow subjects, JetStream/KV APIs,
    // inboxes, $SYS) is refused: the flow's NATS user never gets it.
    if let Some(message) = deref
        .source
        .as_ref()
        .and_then(|source| nats_user::refused_source(flow, source))
    {
        blocked.get_or_insert(("SourceSubjectReserved", message));
    }

    // build + apply (only with a usable contract and both bindings present; otherwise the
    // last applied configuration keeps running)
    let installed = ctx.optional_apis.installed();
    let settings = RenderSettings {
        worker_image: ctx.config.worker_image.clone(),
        nats_url: ctx.config.nats_url.clone(),
        nats_identity: ctx.nats_signer.is_some(),
        nats_tls: ctx.nats_signer.is_some() && ctx.config.nats_ca_file.is_some(),
        nats_monitoring_endpoint: ctx.config.nats_monitoring_endpoint.clone(),
        queue_defaults: ctx.config.queue_defaults(),
        nats_account: ctx
            .nats_signer
            .as_ref()
            .map_or_else(|| "$G".to_string(), |signer| signer.account().to_string()),
        keda: installed.keda,
        external_metrics: installed.external_metrics,
        prometheus_operator: installed.prometheus_operator,
    };
    let mut deployment = deref.deployment.clone();
    let mut max_ack_pending = 1000;
    if let (None, Some(contract), Some(source), Some(target)) =
        (&blocked, &choice.resolved, &deref.source, &deref.target)
    {
        let inputs = FlowInputs {
            flow,
            contract,
            source,
            target,
            escalation: deref.escalation.as_ref(),
            code_maps: deref.code_maps.clone(),
            settings: &settings,
        };
        match render::children(&inputs) {
            Ok(children) => {
                // The workers mount the flow's NATS user: issued before they start.
                nats_user::ensure(ctx, flow, source).await?;
                max_ack_pending = children.worker_config.delivery.max_ack_pending;
                let live = apply::Live {
                    config_map: deref.applied_config,
                    deployment: deref.deployment.is_some(),
                    cron_job: Stores::exists(&fctx.stores.cron_jobs, &ns, &cron_job_name(flow)),
                    autoscaler: Stores::exists(&fctx.stores.autoscalers, &ns, &workers_name(flow)),
                    rules_config_map: fctx.stores.config_maps.exists(&ns, &rules_name(flow)),
                };
                match apply::apply_children(
                    &ctx.client,
                    &ctx.applied,
                    flow,
                    &children,
                    live,
                    installed,
                )
                .await
                {
                    // What the workers now run, as the apiserver answered the apply.
                    Ok(applied) if applied.deployment.is_some() => deployment = applied.deployment,
                    Ok(_) => {}
                    Err(Error::Spec { reason, message }) => blocked = Some((reason, message)),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => blocked = Some(("InvalidSpec", e.message)),
        }
    }
    let contract_version = match (&blocked, &choice.resolved) {
        (None, Some(c)) if deref.source.is_some() && deref.target.is_some() => {
            Some(c.version.clone())
        }
        _ => validate::applied_contract_version(
            dereference::applied_config(flow, &ctx.client, &fctx.stores)
                .await?
                .as_deref(),
        ),
    };

    let applied_at = started.elapsed();
    // queues
    let names = QueueNames::for_flow(&ns, &flow_name(flow));
    let queue = match queue_policy(flow, ctx, max_ack_pending) {
        Ok(policy) => ensured_queue_state(ctx, &names, &policy).await,
        Err(e) => Err(status::QueueProblem::unavailable(e)),
    };

    let redrive_waits = redrive_requested
        .then(|| redrive_gate::wait_reason(flow, blocked.as_ref(), deployment.as_ref()))
        .flatten();
    let mut operations = handle_operations(flow, ctx, &names, redrive_waits.is_none()).await;
    let progress_cursor = queue.as_ref().ok().and_then(|q| q.progress.cursor.clone());
    let source_facts = operations::SourceFacts {
        sync_mode: flow.spec.source.sync_mode,
        has_cursor_field: flow.spec.source.cursor_field.is_some(),
        protocol: deref.source.as_ref().map(|b| b.spec.protocol),
        cursor: progress_cursor.as_deref(),
        cursor_is_time: cursor_is_time(flow, choice.resolved.as_ref()),
    };
    let reports = match &queue {
        Ok(_) => operations::handle(flow, ctx, &names, source_facts, &mut operations).await,
        Err(_) => operations::Reports::previous(flow),
    };
    let pending_approvals = match &queue {
        Ok(_) if flow.spec.approval.is_some() => list_pending(&ctx.jetstream, &names)
            .await
            .map(|reviews| {
                reviews
                    .into_iter()
                    .filter(|r| r.decision.is_none())
                    .map(status::pending_approval)
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    // A failed read keeps what status said, rather than clearing it for one pass.
    let routes = match &queue {
        Ok(_) if flow.spec.approval.is_some() => route_counts(&ctx.jetstream, &names)
            .await
            .map(|counts| {
                let count = |route: Route| counts.get(&route).copied().unwrap_or(0);
                Some(RouteCounts {
                    applied: count(Route::Applied),
                    approved: count(Route::Approved),
                    rejected: count(Route::Rejected),
                    escalated: count(Route::Escalated),
                    timed_out: count(Route::TimedOut),
                })
            })
            .unwrap_or_else(|_| flow.status.as_ref().and_then(|s| s.routes.clone())),
        _ => None,
    };

    // Drift: the codes the workers saw against the tables as they are now. A failed read
    // keeps what status said, rather than clearing it for one pass.
    let previous_drift = || {
        flow.status
            .as_ref()
            .map(|s| s.code_drift.clone())
            .unwrap_or_default()
    };
    let code_drift = match &queue {
        Ok(_) if !deref.code_maps.is_empty() => read_observed_codes(&ctx.jetstream, &names)
            .await
            .map(|observed| drift::report(&deref.code_maps, &observed))
            .unwrap_or_else(|_| previous_drift()),
        Ok(_) => Vec::new(),
        Err(_) => previous_drift(),
    };
    for entry in &code_drift {
        let labels = code_map_labels(flow, &entry.code_map);
        ctx.metrics
            .unmapped_codes
            .get_or_create(&labels)
            .set(entry.unmapped_count as i64);
        ctx.metrics
            .orphaned_codes
            .get_or_create(&labels)
            .set(entry.orphaned_count as i64);
    }

    let queued_at = started.elapsed();
    // status
    let status = status::build(status::Observed {
        flow,
        bindings,
        contract: choice.condition,
        contract_sla: deref.contract.as_ref().and_then(|c| c.spec.sla.clone()),
        contract_version,
        blocked,
        queue,
        deployment: deployment.as_ref(),
        autoscaler: render::scaling::autoscaler(flow, &settings),
        operations,
        reports,
        redrive_waits: redrive_waits.map(|why| {
            let value = redrive_gate::requested(flow).unwrap_or_default();
            format!("{REDRIVE_ANNOTATION}={value} {why}")
        }),
        pending_approvals,
        routes,
        code_drift,
        now: Timestamp::now(),
    });
    write_status(flow, ctx, status).await?;
    tracing::debug!(
        apply_ms = applied_at.as_millis() as u64,
        queue_ms = (queued_at - applied_at).as_millis() as u64,
        status_ms = (started.elapsed() - queued_at).as_millis() as u64,
        "flow reconciled"
    );
    // The next resync, to re-evaluate freshness (paced: `resync`).
    let period = resync::period(
        Duration::from_secs(ctx.config.resync_seconds),
        ctx.watched_flows.count(),
        ctx.config.resync_per_second,
        rand::random(),
    );
    fctx.resyncs.after(ObjectRef::from_obj(flow), period);
    Ok(Action::await_change())
}

/// The queue's state, ensuring the queue first unless this process already did so with the
/// same policy. A failed read forgets that: the queue went behind the operator's back (deleted
/// by hand, NATS storage lost) and the next pass creates it again.
async fn ensured_queue_state(
    ctx: &Context,
    names: &QueueNames,
    policy: &QueuePolicy,
) -> std::result::Result<dereference::QueueState, status::QueueProblem> {
    let key = format!("queue/{}", names.stream);
    let fingerprint = apply::fingerprint(format!("{policy:?}"));
    if ctx.applied.get(&key) != Some(fingerprint) {
        ensure_queue(&ctx.jetstream, names, policy).await?;
        ctx.applied.set(key.clone(), fingerprint);
    }
    dereference::queue_state(&ctx.jetstream, names)
        .await
        .map_err(status::QueueProblem::unavailable)
        .inspect_err(|_| ctx.applied.forget(&key))
}

/// Whether the flow's cursor field holds times or numbers, from the type of the contract field
/// it is mapped to (an unmapped contract field comes from the source field of its name).
fn cursor_is_time(
    flow: &IntegrationFlow,
    contract: Option<&render::ResolvedContract>,
) -> Option<bool> {
    use crate::api::data_contract::FieldType;
    let field = flow.spec.source.cursor_field.as_deref()?;
    let canonical = flow
        .spec
        .mapping
        .iter()
        .flat_map(|m| &m.fields)
        .find(|m| m.from.as_deref() == Some(field))
        .map_or(field, |m| m.to.as_str());
    let spec = contract?
        .schema
        .fields
        .iter()
        .find(|f| f.name == canonical)?;
    match spec.type_ {
        FieldType::Timestamp | FieldType::Date => Some(true),
        FieldType::Int => Some(false),
        _ => None,
    }
}

/// Records a planner's decision on each listed review, by `decided_by`. A review that is no
/// longer pending (decided already, timed out) counts as handled: the annotation is history,
/// not a request to retry forever.
async fn decide_all(
    ctx: &Context,
    names: &QueueNames,
    ids: &str,
    decision: Decision,
    decided_by: Option<&str>,
) -> std::result::Result<(), String> {
    for id in ids.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if let Err(e) = decide(&ctx.jetstream, names, id, decision, decided_by).await {
            let message = e.to_string();
            if !message.contains("no pending review") {
                return Err(message);
            }
        }
    }
    Ok(())
}

/// Handles one-off operations whose annotation value differs from the one acknowledged in
/// status; returns the acknowledged values. A failed operation is retried on the next pass; a
/// redrive that may not run yet (`redrive_may_run`, see [`redrive_gate`]) too.
async fn handle_operations(
    flow: &IntegrationFlow,
    ctx: &Context,
    names: &QueueNames,
    redrive_may_run: bool,
) -> BTreeMap<String, String> {
    let mut acknowledged = flow
        .status
        .as_ref()
        .map(|s| s.operations.clone())
        .unwrap_or_default();
    let annotations = flow.metadata.annotations.clone().unwrap_or_default();
    for key in [
        RESTART_ANNOTATION,
        REDRIVE_ANNOTATION,
        RESET_CURSOR_ANNOTATION,
        APPROVE_ANNOTATION,
        REJECT_ANNOTATION,
    ] {
        let Some(value) = annotations.get(key) else {
            continue;
        };
        let short = key.trim_start_matches("flowplane.io/").to_string();
        if acknowledged.get(&short) == Some(value)
            || (key == REDRIVE_ANNOTATION && !redrive_may_run)
        {
            continue;
        }
        let outcome = match key {
            // The restart itself is the pod-template annotation the Deployment already got.
            RESTART_ANNOTATION => Ok(()),
            REDRIVE_ANNOTATION => {
                let reason = value.strip_prefix("reason=");
                redrive(&ctx.jetstream, names, reason)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            APPROVE_ANNOTATION | REJECT_ANNOTATION => {
                let decision = if key == APPROVE_ANNOTATION {
                    Decision::Approve
                } else {
                    Decision::Reject
                };
                let decided_by = annotations.get(DECIDED_BY_ANNOTATION).map(String::as_str);
                decide_all(ctx, names, value, decision, decided_by).await
            }
            _ => reset_cursor(&ctx.jetstream, names)
                .await
                .map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(()) => {
                acknowledged.insert(short, value.clone());
                super::publish_event(
                    ctx,
                    flow,
                    EventType::Normal,
                    "OperationHandled",
                    format!("{key}={value} handled"),
                )
                .await;
            }
            Err(e) => {
                super::publish_event(
                    ctx,
                    flow,
                    EventType::Warning,
                    "OperationFailed",
                    format!("{key}={value}: {e}"),
                )
                .await;
            }
        }
    }
    acknowledged
}

/// Whether a condition change is news for `kubectl get events`: Ready or ContractCompatible
/// flipping, Stalled starting or ending, a flow Ready from its first pass, and a problem
/// present from the first pass. A new
/// flow's Ready=False (workers still starting) and reason-only changes are in status alone:
/// at thousands of flows, events for them were a third of the operator's writes.
fn worth_an_event(previous: &[Condition], changed: &Condition) -> bool {
    let before = previous.iter().find(|p| p.type_ == changed.type_);
    match (changed.type_.as_str(), before) {
        ("Ready" | "ContractCompatible" | "Stalled", Some(before)) => {
            before.status != changed.status
        }
        ("Ready" | "Stalled", None) => changed.status == "True",
        ("ContractCompatible", None) => changed.status == "False",
        _ => false,
    }
}

/// Writes status only when it changed, and publishes an event per transition worth one.
async fn write_status(
    flow: &IntegrationFlow,
    ctx: &Context,
    status: IntegrationFlowStatus,
) -> Result<()> {
    let previous = flow.status.clone().unwrap_or_default();
    if previous == status {
        return Ok(());
    }
    for changed in transitions(&previous.conditions, &status.conditions)
        .into_iter()
        .filter(|c| worth_an_event(&previous.conditions, c))
    {
        let healthy = (changed.status == "True") != (changed.type_ == "Stalled");
        super::publish_condition_event(ctx, flow, changed, healthy).await;
    }
    super::apply_status(ctx, flow, &status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(region: Option<&str>) -> IntegrationFlow {
        let mut f: IntegrationFlow = serde_yaml::from_str(
            "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {name: f, namespace: n}\nspec:\n  source: {bindingRef: a, entity: x, syncMode: FullRefresh}\n  target: {bindingRef: b, entity: y}\n  contract: {name: c}\n",
        )
        .unwrap();
        f.spec.region = region.map(str::to_string);
        f
    }

    #[test]
    fn an_operator_takes_its_regions_flows_and_the_regionless_ones() {
        assert!(in_region(&flow(None), Some("eu")));
        assert!(in_region(&flow(Some("eu")), Some("eu")));
        assert!(!in_region(&flow(Some("us")), Some("eu")));
        assert!(in_region(&flow(Some("us")), None));
    }

    fn condition(type_: &'static str, status: bool, reason: &'static str) -> Condition {
        let desired = Desired::new(type_, status, reason, "m");
        crate::controller::conditions::merge(&[], &[desired], Some(1), Timestamp::UNIX_EPOCH)
            .remove(0)
    }

    #[test]
    fn events_report_flips_and_problems_not_a_new_flows_first_steps() {
        let ready = condition("Ready", true, "Ready");
        let not_ready = condition("Ready", false, "WorkersUnavailable");
        let not_fresh = condition("Ready", false, "NotFresh");
        let stalled = condition("Stalled", true, "InvalidSpec");
        let incompatible = condition("ContractCompatible", false, "VersionOutOfRange");
        // A new flow: not ready yet is expected; a problem from the start is news.
        assert!(!worth_an_event(&[], &not_ready));
        assert!(worth_an_event(&[], &ready));
        assert!(worth_an_event(&[], &stalled));
        assert!(worth_an_event(&[], &incompatible));
        assert!(!worth_an_event(
            &[],
            &condition("ContractCompatible", true, "Compatible")
        ));
        assert!(!worth_an_event(
            &[],
            &condition("QueueReady", false, "NatsDown")
        ));
        // Later: flips are news, reason-only changes are not.
        assert!(worth_an_event(std::slice::from_ref(&ready), &not_ready));
        assert!(worth_an_event(std::slice::from_ref(&not_ready), &ready));
        assert!(!worth_an_event(
            std::slice::from_ref(&not_ready),
            &not_fresh
        ));
    }
}
