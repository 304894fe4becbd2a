//! The flow's own NATS user: issued by the operator with the account signing key into the
//! flow's `<flow>-nats` Secret (owned by the flow, deleted with it), which the workers and the
//! refresh CronJob mount. Reissued only when what it must allow changed (or the signer did),
//! so a settled flow makes no writes and its workers keep their credentials.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};

use crate::api::connector_binding::Protocol;
use crate::api::{ConnectorBinding, IntegrationFlow};
use crate::controller::{Context, Error, FIELD_MANAGER, Result};
use crate::queue::identity::{CA_KEY, CREDS_KEY, flow_permissions, reserved_subject, same_server};
use crate::queue::{QueueNames, binding_quota_bucket, ensure_capture};
use crate::render::labels::{flow_name, metadata, namespace, nats_secret_name};

/// The subject a flow with a NATS source reads (through its capture stream, whatever its
/// sync mode), which its user may read on the platform's NATS server.
pub fn event_subject<'a>(flow: &'a IntegrationFlow, source: &ConnectorBinding) -> Option<&'a str> {
    (source.spec.protocol == Protocol::Nats).then_some(flow.spec.source.entity.as_str())
}

/// Why an event flow may not read its source subject (it is the platform's), if so.
pub fn refused_source(flow: &IntegrationFlow, source: &ConnectorBinding) -> Option<String> {
    event_subject(flow, source)
        .and_then(reserved_subject)
        .map(|why| format!("spec.source.entity: {why}"))
}

/// Issues (or keeps) the flow's NATS user; nothing without a signer (no auth on NATS). For an
/// event flow whose source is the platform's own NATS server, also makes the capture stream
/// over the source subject, which the flow's user may read but not create.
pub async fn ensure(
    ctx: &Context,
    flow: &IntegrationFlow,
    source: &ConnectorBinding,
) -> Result<()> {
    let Some(signer) = &ctx.nats_signer else {
        return Ok(());
    };
    let (ns, name) = (namespace(flow), flow_name(flow));
    let names = QueueNames::for_flow(&ns, &name);
    // Every binding's quota bucket, limited or not: a limit set later needs no reissue.
    let quota_buckets: Vec<String> = flow
        .spec
        .binding_refs()
        .into_iter()
        .map(|binding| binding_quota_bucket(&ns, binding))
        .collect();
    let permissions = flow_permissions(&names, event_subject(flow, source), &quota_buckets);
    let user = format!("{ns}/{name}");
    let secret_name = nats_secret_name(flow);
    let key = format!("Secret/{ns}/{secret_name}");
    let fingerprint = super::apply::fingerprint(format!(
        "{user}\n{permissions:?}\n{}",
        ctx.nats_ca.as_deref().unwrap_or_default()
    ));
    if ctx.applied.get(&key) == Some(fingerprint) {
        return Ok(());
    }
    if let Some(subject) = event_subject(flow, source)
        .filter(|_| same_server(&source.spec.endpoint.url, &ctx.config.nats_url))
    {
        // The capture's max age and replicas are the flow's queue's; its ack limits unused.
        let policy =
            super::queue_policy(flow, ctx, 1).map_err(|e| Error::spec("InvalidSpec", e))?;
        ensure_capture(
            &ctx.jetstream,
            &names,
            subject,
            policy.retention,
            Some(&policy),
        )
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let live = api.get_opt(&secret_name).await?;
    let value = |key: &str| {
        live.as_ref()
            .and_then(|s| s.data.as_ref()?.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let current = value(CREDS_KEY).is_some_and(|c| signer.issued(&c, &user, &permissions))
        && value(CA_KEY) == ctx.nats_ca;
    if !current {
        let creds = signer
            .issue(&user, &permissions)
            .map_err(|e| Error::spec("NatsUserNotIssued", e.to_string()))?;
        let mut data = BTreeMap::from([(CREDS_KEY.to_string(), ByteString(creds.into_bytes()))]);
        if let Some(ca) = &ctx.nats_ca {
            data.insert(CA_KEY.to_string(), ByteString(ca.clone().into_bytes()));
        }
        let secret = Secret {
            metadata: metadata(flow, secret_name.clone(), "nats"),
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        };
        api.patch(
            &secret_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    }
    ctx.applied.set(key, fingerprint);
    Ok(())
}
