//! The ConnectorBinding controller: dereference (the referenced Secrets' key names, the CA
//! bundle) -> probe (when `healthCheck` is set) -> status ([`status::build`], pure).
//!
//! Secrets are watched metadata-only and mapped to the bindings that reference them, so
//! creating or fixing a Secret makes its bindings (and, through the IntegrationFlow
//! controller's binding watch, their flows) Ready without any manual step. A binding may use
//! only Secrets labelled `flowplane.io/credential: "true"` ([`status::CREDENTIAL_LABEL`]): a
//! namespace's other Secrets (service account tokens, TLS keys of other apps) cannot be sent to
//! a URL of the binding author's choice. Secret values are read only from opted-in Secrets,
//! only to check that keys are non-empty and to load the CA bundle; they never reach status,
//! logs or events.

pub mod policy;
pub mod probe;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::ConnectorBinding;
use crate::api::common::parse_duration;
use crate::api::connector_binding::ConnectorBindingStatus;
use crate::controller::conditions::transitions;
use crate::controller::integration_flow::apply::fingerprint;
use crate::controller::{Context, Error, Result, WatchScope};
use crate::queue::jetstream::{read_json_entry, scale_bucket};
use crate::queue::quota::{QUOTA_KEY, QuotaState, binding_quota_bucket, quota_bucket};

use policy::{NotProbed, Recent};
use status::{Probe, SecretState};

pub const KIND: &str = "ConnectorBinding";
/// Without a health check nothing changes without an event (Secrets are watched); a slow
/// periodic pass is only a safety net.
const RESYNC: Duration = Duration::from_secs(600);
/// How often `status.quota` is read again from the workers' shared record.
const QUOTA_RESYNC: Duration = Duration::from_secs(30);

pub async fn run(ctx: Arc<Context>, scope: &WatchScope) {
    let client = ctx.client.clone();
    let bindings: Api<ConnectorBinding> = scope.api(&client);
    let controller = Controller::new(bindings, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(
            scope.api::<PartialObjectMeta<Secret>>(&client),
            watcher::Config::default(),
            move |secret| {
                let name = secret.name_any();
                let namespace = secret.metadata.namespace.clone();
                store
                    .state()
                    .into_iter()
                    .filter(|b| {
                        b.metadata.namespace == namespace
                            && status::referenced_secrets(b).contains(&name)
                    })
                    .map(|b| ObjectRef::from_obj(&*b))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

fn error_policy(_binding: Arc<ConnectorBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(KIND, error.metric_label());
    tracing::warn!(error = %error, "ConnectorBinding reconcile failed");
    error.action(Duration::from_secs(10))
}

/// What the referenced Secrets hold: per Secret its state (see [`SecretState`]), the CA bundle
/// when one is referenced, present and opted in, and which versions of them were read.
struct Secrets {
    states: BTreeMap<String, SecretState>,
    ca_pem: Option<Vec<u8>>,
    revision: Option<String>,
}

/// Reads the referenced Secrets. A Secret without the opt-in label is looked at by its
/// metadata only: its values are never read, let alone mounted into a worker.
async fn read_secrets(binding: &ConnectorBinding, ctx: &Context) -> Result<Secrets> {
    let ns = binding.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut states = BTreeMap::new();
    let mut ca_pem = None;
    let mut versions = Vec::new();
    let ca = binding.spec.endpoint.ca_secret_ref.as_ref();
    for name in status::referenced_secrets(binding) {
        let state = match api.get_metadata_opt(&name).await? {
            None => SecretState::Missing,
            Some(meta) if !status::opted_in(meta.metadata.labels.as_ref()) => {
                SecretState::NotOptedIn
            }
            Some(_) => match api.get_opt(&name).await? {
                None => SecretState::Missing,
                Some(secret) => {
                    versions.push((
                        name.clone(),
                        secret.metadata.uid.clone().unwrap_or_default(),
                        secret.metadata.resource_version.clone().unwrap_or_default(),
                    ));
                    let data = secret.data.unwrap_or_default();
                    if let Some(ca) = ca.filter(|ca| ca.name == name) {
                        ca_pem = data.get(&ca.key).map(|v| v.0.clone());
                    }
                    SecretState::Keys(
                        data.into_iter()
                            .filter(|(_, v)| !v.0.is_empty())
                            .map(|(k, _)| k)
                            .collect::<BTreeSet<_>>(),
                    )
                }
            },
        };
        states.insert(name, state);
    }
    Ok(Secrets {
        states,
        ca_pem,
        revision: status::secret_revision(&versions),
    })
}

async fn reconcile(binding: Arc<ConnectorBinding>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(KIND);
    if binding.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let binding = ctx.written_statuses.current(binding);
    let secrets = read_secrets(&binding, &ctx).await?;
    let secret = status::secret_resolved(&binding, &secrets.states);

    let key = format!(
        "{}/{}",
        binding.namespace().unwrap_or_default(),
        binding.name_any()
    );
    let mut requeue = RESYNC;
    let probe = match &binding.spec.health_check {
        None => {
            ctx.recent_probes.forget(&key);
            Probe::NotConfigured
        }
        Some(check) => {
            let min_interval = Duration::from_secs(ctx.config.probe.min_interval_seconds);
            let interval = parse_duration(&check.interval).unwrap_or(Duration::from_secs(60));
            let timeout = parse_duration(&check.timeout).unwrap_or(Duration::from_secs(5));
            requeue = interval.max(min_interval).max(Duration::from_secs(1));
            let url = probe::probe_url(&binding.spec.endpoint.url, &check.path);
            match guarded(&ctx, &url).await {
                Err(refused) => refused,
                Ok(_)
                    if binding.spec.endpoint.ca_secret_ref.is_some()
                        && secrets.ca_pem.is_none() =>
                {
                    Probe::NotPossible {
                        reason: "CABundleUnavailable",
                        message: "not probed: the CA bundle of endpoint.caSecretRef is not \
                                  available (see SecretResolved)"
                            .into(),
                    }
                }
                Ok(target) => match ctx.recent_probes.check(&key, &url, min_interval) {
                    Recent::Reuse(outcome) => Probe::Done(outcome),
                    Recent::Wait(wait) => return Ok(Action::requeue(wait)),
                    Recent::Probe => {
                        let outcome =
                            probe::probe(&url, timeout, secrets.ca_pem.as_deref(), &target).await;
                        ctx.recent_probes.record(key, url, outcome.clone());
                        Probe::Done(outcome)
                    }
                },
            }
        }
    };

    let mut status = status::build(&binding, secret, &probe, Timestamp::now());
    if binding.spec.rate_limit.is_some() {
        // Usage changes without an event: read again while a limit is set.
        requeue = requeue.min(QUOTA_RESYNC);
        let ns = binding.namespace().unwrap_or_default();
        // Created here, so workers need only read and write it (their NATS permissions), with
        // the operator's replicas (see `quota_bucket`), kept at them once per operator run.
        let replicas = usize::from(ctx.config.queue_replicas);
        let bucket = binding_quota_bucket(&ns, &binding.name_any());
        let key = format!("quota/{bucket}");
        let state = match quota_bucket(&ctx.jetstream, &ns, &binding.name_any(), replicas).await {
            Ok(store) => {
                let scaled_to = fingerprint(replicas.to_string());
                if ctx.applied.get(&key) != Some(scaled_to) {
                    match scale_bucket(&ctx.jetstream, &bucket, replicas).await {
                        Ok(()) => ctx.applied.set(key, scaled_to),
                        Err(e) => tracing::warn!(error = %e, "quota bucket not scaled"),
                    }
                }
                read_json_entry::<QuotaState>(&store, QUOTA_KEY)
                    .await
                    .map(|(state, revision)| (revision != 0).then_some(state))
            }
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "quota record not read");
            None
        });
        status.quota =
            status::quota_usage(&binding, state.as_ref(), Timestamp::now().as_millisecond());
    }
    status.secret_revision = secrets.revision;
    write_status(&binding, &ctx, status).await?;
    Ok(Action::requeue(requeue))
}

/// The probe target of `url` if the operator's policy lets it be probed, else the status
/// that says why not (the rule, never the address or a network error).
async fn guarded(ctx: &Context, url: &str) -> std::result::Result<policy::Target, Probe> {
    let refused = |message: String| Probe::Refused {
        reason: "RefusedByPolicy",
        message: format!("not probed: refused by policy: {message}"),
    };
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Err(refused(
            "the health check URL is not an http(s) URL with a host".into(),
        ));
    };
    let cluster = ctx.probe_cluster.get(&ctx.client, &ctx.config.probe).await;
    policy::resolve(&parsed, &ctx.config.probe, &cluster)
        .await
        .map_err(|not| match not {
            NotProbed::Refused(rule) => refused(rule),
            NotProbed::Unusable => {
                refused("the health check URL is not an http(s) URL with a host".into())
            }
            // May resolve later: not Stalled, and no resolver detail.
            NotProbed::Unresolved => Probe::Done(status::ProbeOutcome {
                reachable: false,
                status_code: None,
                message: format!("GET {}: the host does not resolve", probe::display_url(url)),
            }),
        })
}

/// Writes status only when it changed, with an event per transition of `Ready`,
/// `SecretResolved` or `Reachable`.
async fn write_status(
    binding: &ConnectorBinding,
    ctx: &Context,
    status: ConnectorBindingStatus,
) -> Result<()> {
    let previous = binding.status.clone().unwrap_or_default();
    if previous == status {
        return Ok(());
    }
    for changed in transitions(&previous.conditions, &status.conditions) {
        // A False Ready repeats the SecretResolved or Reachable that caused it.
        if changed.type_ == "Ready" && changed.status != "True" {
            continue;
        }
        super::publish_condition_event(ctx, binding, changed, changed.status == "True").await;
    }
    super::apply_status(ctx, binding, &status).await
}
