//! The resolved worker configuration of a flow: bindings, contract version, code tables and
//! policies merged into the one document workers read.

use crate::api::ConnectorBinding;
use crate::api::common::{CircuitBreaker, Resilience, RetryPolicy};
use crate::api::connector_binding::{AuthType, Protocol, RestRead, RestWrite};
use crate::api::data_contract::FieldType;
use crate::queue::DeliveryConfig;
use crate::queue::QueueNames;
use crate::worker_config::{
    ApprovalConfig, CodeTable, ContractConfig, EndpointConfig, FieldMappingConfig,
    FreshnessByConfig, MappingConfig, NATS_DIR, ResilienceConfig, SECRETS_DIR, SourceConfig,
    TargetConfig, WorkerConfig, is_code,
};

use super::labels::{flow_name, namespace};
use super::{FlowInputs, RenderError};

const DEFAULT_TIMEOUT: &str = "30s";
/// In-flight records per worker when the target binding sets no concurrency limit.
const DEFAULT_MAX_ACK_PENDING: u32 = 1000;

fn default_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: "500ms".into(),
        max_backoff: "1m".into(),
    }
}

fn default_circuit_breaker() -> CircuitBreaker {
    CircuitBreaker {
        failure_threshold: 5,
        open_for: "30s".into(),
    }
}

/// The flow's overrides over the binding's defaults over ours, part by part.
fn resilience(flow: Option<&Resilience>, binding: Option<&Resilience>) -> ResilienceConfig {
    let pick = |f: fn(&Resilience) -> Option<_>| flow.and_then(f).or_else(|| binding.and_then(f));
    ResilienceConfig {
        timeout: pick(|r| r.timeout.clone()).unwrap_or_else(|| DEFAULT_TIMEOUT.into()),
        retry: flow
            .and_then(|r| r.retry.clone())
            .or_else(|| binding.and_then(|r| r.retry.clone()))
            .unwrap_or_else(default_retry),
        circuit_breaker: flow
            .and_then(|r| r.circuit_breaker.clone())
            .or_else(|| binding.and_then(|r| r.circuit_breaker.clone()))
            .unwrap_or_else(default_circuit_breaker),
    }
}

/// Directory of a binding's mounted Secret files.
pub fn secret_dir(binding: &str) -> String {
    format!("{SECRETS_DIR}/{binding}")
}
/// Directory of a binding's mounted CA bundle.
pub fn ca_dir(binding: &str) -> String {
    format!("{SECRETS_DIR}/{binding}-ca")
}

fn endpoint(binding: &ConnectorBinding, flow_resilience: Option<&Resilience>) -> EndpointConfig {
    let name = binding.metadata.name.clone().unwrap_or_default();
    let spec = &binding.spec;
    EndpointConfig {
        system: spec.system,
        protocol: spec.protocol,
        url: spec.endpoint.url.clone(),
        ca_file: spec
            .endpoint
            .ca_secret_ref
            .as_ref()
            .map(|ca| format!("{}/{}", ca_dir(&name), ca.key)),
        auth: spec.auth.type_,
        secret_dir: (spec.auth.type_ != AuthType::None).then(|| secret_dir(&name)),
        token_url: spec.auth.token_url.clone(),
        scopes: spec.auth.scopes.clone(),
        audience: spec.auth.audience.clone(),
        client_authentication: spec.auth.client_authentication.unwrap_or_default(),
        rate_limit: spec.rate_limit.clone(),
        ssh_host_keys: spec.endpoint.ssh_host_keys.clone(),
        resilience: resilience(flow_resilience, spec.resilience.as_ref()),
        binding: name,
    }
}

/// A REST target's writes: the flow's `target.rest`, else the binding's `rest.write`, else POST
/// with a JSON array. Always written for a Rest binding, so a worker never falls back to the
/// earlier releases' route (see `TargetConfig::rest`).
fn rest_write(binding: &ConnectorBinding, flow: Option<&RestWrite>) -> Option<RestWrite> {
    (binding.spec.protocol == Protocol::Rest).then(|| {
        flow.cloned()
            .or_else(|| binding.spec.rest.as_ref().and_then(|r| r.write.clone()))
            .unwrap_or_default()
    })
}

/// A REST source's paging: the flow's `source.rest`, else the binding's `rest.read`.
fn rest_read(binding: &ConnectorBinding, flow: Option<&RestRead>) -> Option<RestRead> {
    if binding.spec.protocol != Protocol::Rest {
        return None;
    }
    flow.cloned()
        .or_else(|| binding.spec.rest.as_ref().and_then(|r| r.read.clone()))
}

pub fn build(inputs: &FlowInputs<'_>) -> Result<WorkerConfig, RenderError> {
    let flow = inputs.flow;
    let spec = &flow.spec;
    let mapping = spec.mapping.clone().unwrap_or_default();
    let mut code_maps = std::collections::BTreeMap::new();
    for map in &mapping.code_maps {
        let entries = inputs
            .code_maps
            .get(&map.name)
            .cloned()
            .ok_or_else(|| RenderError {
                message: format!(
                    "code map {} (ConfigMap {}) was not resolved",
                    map.name, map.config_map_ref
                ),
            })?;
        code_maps.insert(
            map.name.clone(),
            CodeTable {
                on_unmapped: map.on_unmapped,
                default: map.default.clone(),
                entries,
            },
        );
    }
    let target = TargetConfig {
        endpoint: endpoint(inputs.target, spec.resilience.as_ref()),
        entity: spec.target.entity.clone(),
        write_mode: spec.target.write_mode,
        batch_size: spec.target.batch_size,
        rest: rest_write(inputs.target, spec.target.rest.as_ref()),
        files: spec.target.files.clone(),
    };
    let approval = match (&spec.approval, inputs.escalation) {
        (None, _) => None,
        (Some(approval), escalation) => Some(ApprovalConfig {
            value_field: approval.value_field.clone(),
            baseline_field: approval.baseline_field.clone(),
            rules: approval.rules.clone(),
            otherwise: approval.otherwise,
            review_timeout: approval.review_timeout.clone(),
            on_timeout: approval.on_timeout,
            escalate_to: match (&approval.escalate_to, escalation) {
                (Some(to), Some(binding)) => Some(TargetConfig {
                    endpoint: endpoint(binding, spec.resilience.as_ref()),
                    entity: to.entity.clone(),
                    write_mode: spec.target.write_mode,
                    batch_size: spec.target.batch_size,
                    // The supplier-collaboration system's own conventions, not the main
                    // target's.
                    rest: rest_write(binding, None),
                    files: None,
                }),
                (Some(to), None) => {
                    return Err(RenderError {
                        message: format!("escalation binding {} was not resolved", to.binding_ref),
                    });
                }
                (None, _) => None,
            },
        }),
    };
    let max_ack_pending = inputs
        .target
        .spec
        .rate_limit
        .as_ref()
        .map(|r| r.max_concurrent * spec.target.batch_size)
        .unwrap_or(DEFAULT_MAX_ACK_PENDING);
    let config = WorkerConfig {
        format: crate::worker_config::FORMAT,
        namespace: namespace(flow),
        flow: flow_name(flow),
        nats_url: inputs.settings.nats_url.clone(),
        nats_creds_file: inputs
            .settings
            .nats_identity
            .then(|| format!("{NATS_DIR}/{}", crate::queue::identity::CREDS_KEY)),
        nats_ca_file: inputs
            .settings
            .nats_tls
            .then(|| format!("{NATS_DIR}/{}", crate::queue::identity::CA_KEY)),
        queue: QueueNames::for_flow(&namespace(flow), &flow_name(flow)),
        source: SourceConfig {
            endpoint: endpoint(inputs.source, spec.resilience.as_ref()),
            entity: spec.source.entity.clone(),
            sync_mode: spec.source.sync_mode,
            cursor_field: spec.source.cursor_field.clone(),
            select: spec.source.select.clone(),
            poll_interval: spec
                .schedule
                .as_ref()
                .map(|s| s.poll_interval.clone())
                .unwrap_or_else(|| "1m".into()),
            rest: rest_read(inputs.source, spec.source.rest.as_ref()),
        },
        target,
        contract: ContractConfig {
            name: inputs.contract.name.clone(),
            version: inputs.contract.version.clone(),
            schema_hash: inputs.contract.schema_hash.clone(),
            schema: inputs.contract.schema.clone(),
            quality: inputs.contract.quality.clone(),
        },
        mapping: MappingConfig {
            fields: mapping
                .fields
                .iter()
                .map(|f| FieldMappingConfig {
                    to: f.to.clone(),
                    from: f.from.clone(),
                    value: f.value.clone(),
                    code_map: f.code_map.clone(),
                })
                .collect(),
            code_maps,
        },
        delivery: DeliveryConfig {
            max_deliver: spec.delivery.max_deliver,
            ack_wait: spec.delivery.ack_wait.clone(),
            retry: spec.delivery.retry.clone().unwrap_or_else(default_retry),
            max_ack_pending,
            retention: spec.delivery.retention.clone(),
            dead_letter_retention: spec.delivery.dead_letter_retention.clone(),
            dedupe_window: spec.delivery.dedupe_window.clone(),
            replicas: spec
                .delivery
                .replicas
                .unwrap_or(inputs.settings.queue_defaults.replicas),
            max_bytes: spec
                .delivery
                .max_bytes
                .unwrap_or(inputs.settings.queue_defaults.max_bytes),
            discard: spec.delivery.discard,
            placement: spec.delivery.placement.clone(),
        },
        approval,
        limits: spec.limits.clone(),
        freshness_by: None,
    };
    let config = WorkerConfig {
        freshness_by: freshness_by(inputs, &config)?,
        ..config
    };
    match config.problem().or_else(|| drop_volume_problem(inputs)) {
        Some(message) => Err(RenderError { message }),
        None => Ok(config),
    }
}

/// `spec.observability.freshnessBy` with the codes its values may be: the contract field's
/// Enum values, or the values of the code map that translates the field. Any other field is
/// refused: its values would be free record values, which must not become label values.
fn freshness_by(
    inputs: &FlowInputs<'_>,
    config: &WorkerConfig,
) -> Result<Option<FreshnessByConfig>, RenderError> {
    let Some(by) = inputs
        .flow
        .spec
        .observability
        .as_ref()
        .and_then(|o| o.freshness_by.as_ref())
    else {
        return Ok(None);
    };
    let contract = &config.contract;
    let Some(field) = contract.schema.fields.iter().find(|f| f.name == by.field) else {
        return Err(RenderError {
            message: format!(
                "observability.freshnessBy.field {:?} is not a field of contract {} {}",
                by.field, contract.name, contract.version
            ),
        });
    };
    let translated = config
        .mapping
        .fields
        .iter()
        .filter(|m| m.to == by.field)
        .find_map(|m| m.code_map.as_ref())
        .and_then(|name| config.mapping.code_maps.get(name));
    let mut codes: Vec<String> = match (field.type_, translated) {
        (_, Some(table)) => table
            .entries
            .values()
            .chain(table.default.iter())
            .cloned()
            .collect(),
        (FieldType::Enum, None) => field.values.clone(),
        _ => {
            return Err(RenderError {
                message: format!(
                    "observability.freshnessBy.field {:?} is neither an Enum field of contract {} nor translated by a code map: its values would be free record values, which are never used as metric labels",
                    by.field, contract.name
                ),
            });
        }
    };
    codes.retain(|c| is_code(c));
    codes.sort();
    codes.dedup();
    Ok(Some(FreshnessByConfig {
        field: by.field.clone(),
        codes,
        max_values: by.max_values,
    }))
}

/// A Files binding with a file:// directory the workers would not see: no `dropVolume`, or
/// one mounted elsewhere.
fn drop_volume_problem(inputs: &FlowInputs<'_>) -> Option<String> {
    let mount = inputs
        .flow
        .spec
        .drop_volume
        .as_ref()
        .map(|v| v.mount_path.trim_end_matches('/'));
    let mut bindings = vec![inputs.source, inputs.target];
    bindings.extend(inputs.escalation);
    bindings.into_iter().find_map(|binding| {
        let dir = binding.spec.endpoint.url.strip_prefix("file://")?;
        let inside = mount.is_some_and(|m| dir == m || dir.starts_with(&format!("{m}/")));
        (!inside).then(|| {
            format!(
                "ConnectorBinding {} drops files in {dir}, which the workers see only with spec.dropVolume mounted at or above it",
                binding.metadata.name.as_deref().unwrap_or_default()
            )
        })
    })
}
