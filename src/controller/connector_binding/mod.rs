//! The ConnectorBinding controller: dereference (the referenced Secrets' key names, the CA
//! bundle) -> probe (when `healthCheck` is set) -> status ([`status::build`], pure).
//!
//! Secrets are watched metadata-only and mapped to the bindings that reference them, so
//! creating or fixing a Secret makes its bindings (and, through the IntegrationFlow
//! controller's binding watch, their flows) Ready without any manual step. Secret values are
//! read only to check that keys are non-empty and to load the CA bundle; they never reach
//! status, logs or events.

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
use crate::controller::{Context, Error, Result, WatchScope};

use status::Probe;

pub const KIND: &str = "ConnectorBinding";
/// Without a health check nothing changes without an event (Secrets are watched); a slow
/// periodic pass is only a safety net.
const RESYNC: Duration = Duration::from_secs(600);

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

/// What the referenced Secrets hold: key names with a non-empty value per Secret (`None` when
/// it does not exist), the CA bundle when one is referenced and present, and which versions of
/// them were read.
struct Secrets {
    keys: BTreeMap<String, Option<BTreeSet<String>>>,
    ca_pem: Option<Vec<u8>>,
    revision: Option<String>,
}

async fn read_secrets(binding: &ConnectorBinding, ctx: &Context) -> Result<Secrets> {
    let ns = binding.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut keys = BTreeMap::new();
    let mut ca_pem = None;
    let mut versions = Vec::new();
    let ca = binding.spec.endpoint.ca_secret_ref.as_ref();
    for name in status::referenced_secrets(binding) {
        let secret = api.get_opt(&name).await?;
        let found = secret.map(|s| {
            versions.push((
                name.clone(),
                s.metadata.uid.clone().unwrap_or_default(),
                s.metadata.resource_version.clone().unwrap_or_default(),
            ));
            let data = s.data.unwrap_or_default();
            if let Some(ca) = ca.filter(|ca| ca.name == name) {
                ca_pem = data.get(&ca.key).map(|v| v.0.clone());
            }
            data.into_iter()
                .filter(|(_, v)| !v.0.is_empty())
                .map(|(k, _)| k)
                .collect::<BTreeSet<_>>()
        });
        keys.insert(name, found);
    }
    Ok(Secrets {
        keys,
        ca_pem,
        revision: status::secret_revision(&versions),
    })
}

async fn reconcile(binding: Arc<ConnectorBinding>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(KIND);
    if binding.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let secrets = read_secrets(&binding, &ctx).await?;
    let secret = status::secret_resolved(&binding, &secrets.keys);

    let mut requeue = RESYNC;
    let probe = match &binding.spec.health_check {
        None => Probe::NotConfigured,
        Some(check) => {
            let interval = parse_duration(&check.interval).unwrap_or(Duration::from_secs(60));
            let timeout = parse_duration(&check.timeout).unwrap_or(Duration::from_secs(5));
            requeue = interval.max(Duration::from_secs(1));
            if binding.spec.endpoint.ca_secret_ref.is_some() && secrets.ca_pem.is_none() {
                Probe::NotPossible {
                    reason: "CABundleUnavailable",
                    message: "not probed: the CA bundle of endpoint.caSecretRef is not available \
                              (see SecretResolved)"
                        .into(),
                }
            } else {
                let url = probe::probe_url(&binding.spec.endpoint.url, &check.path);
                Probe::Done(probe::probe(&url, timeout, secrets.ca_pem.as_deref()).await)
            }
        }
    };

    let mut status = status::build(&binding, secret, &probe, Timestamp::now());
    status.secret_revision = secrets.revision;
    write_status(&binding, &ctx, status).await?;
    Ok(Action::requeue(requeue))
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
