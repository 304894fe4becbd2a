//! Validate: decide from what was dereferenced whether the flow can run, which contract
//! version it runs, and which conditions say why not.

use std::collections::BTreeMap;

use semver::{Version, VersionReq};

use crate::api::data_contract::Lifecycle;
use crate::api::{ConnectorBinding, DataContract, IntegrationFlow};
use crate::contract::canonical::schema_hash;
use crate::contract::history::PublishedContract;
use crate::controller::conditions::{Desired, is_true};
use crate::render::ResolvedContract;

/// The contract version a flow will run, and the ContractCompatible condition.
pub struct ContractChoice {
    /// None: nothing usable; the flow keeps its last applied configuration (if any).
    pub resolved: Option<ResolvedContract>,
    pub condition: Desired,
}

/// Chooses the newest usable contract version inside the flow's range: the contract's current
/// spec when its compatibility check passed, otherwise a published version from its history.
pub fn choose_contract(
    flow: &IntegrationFlow,
    contract: Option<&DataContract>,
    history: &[PublishedContract],
) -> Result<ContractChoice, String> {
    let range = VersionReq::parse(&flow.spec.contract.versions).map_err(|e| {
        format!(
            "spec.contract.versions {:?} is not a semver range: {e}",
            flow.spec.contract.versions
        )
    })?;
    let name = &flow.spec.contract.name;
    let Some(contract) = contract else {
        return Ok(ContractChoice {
            resolved: None,
            condition: Desired::new(
                "ContractCompatible",
                false,
                "ContractNotFound",
                format!("DataContract {name} does not exist"),
            ),
        });
    };
    if contract.spec.lifecycle == Lifecycle::Retired {
        // Retired contracts serve no new rollout; workers keep what they run.
        return Ok(ContractChoice {
            resolved: None,
            condition: Desired::new(
                "ContractCompatible",
                false,
                "ContractRetired",
                format!("DataContract {name} is Retired; move the flow to its successor"),
            ),
        });
    }
    let status = contract.status.clone().unwrap_or_default();
    let checked = status.observed_generation.is_some()
        && status.observed_generation == contract.metadata.generation;
    let spec_ok = checked && is_true(&status.conditions, "Compatible") == Some(true);
    let spec_version = Version::parse(&contract.spec.version).ok();

    let mut candidates: Vec<(Version, ResolvedContract)> = history
        .iter()
        .filter_map(|p| {
            let v = Version::parse(&p.version).ok()?;
            Some((
                v,
                ResolvedContract {
                    name: name.clone(),
                    version: p.version.clone(),
                    schema_hash: p.schema_hash.clone(),
                    schema: p.schema.clone(),
                    quality: p.quality.clone(),
                    sla: contract.spec.sla.clone(),
                },
            ))
        })
        .collect();
    if let (true, Some(v)) = (spec_ok, spec_version.clone()) {
        candidates.push((
            v,
            ResolvedContract {
                name: name.clone(),
                version: contract.spec.version.clone(),
                schema_hash: schema_hash(&contract.spec.schema),
                schema: contract.spec.schema.clone(),
                quality: contract.spec.quality.clone(),
                sla: contract.spec.sla.clone(),
            },
        ));
    }
    let chosen = candidates
        .into_iter()
        .filter(|(v, _)| range.matches(v))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, r)| r);

    let condition = if !checked {
        Desired::new(
            "ContractCompatible",
            false,
            "ContractPending",
            format!(
                "DataContract {name} {} has not been checked yet",
                contract.spec.version
            ),
        )
    } else if !spec_ok {
        let breaks = if status.breaks.is_empty() {
            String::new()
        } else {
            format!(": {}", status.breaks.join("; "))
        };
        let running = chosen
            .as_ref()
            .map(|c| format!("; running {}", c.version))
            .unwrap_or_default();
        Desired::new(
            "ContractCompatible",
            false,
            "ContractIncompatible",
            format!(
                "DataContract {name} {} was refused{breaks}{running}",
                contract.spec.version
            ),
        )
    } else if !spec_version.as_ref().is_some_and(|v| range.matches(v)) {
        let running = chosen
            .as_ref()
            .map(|c| format!("; running {}", c.version))
            .unwrap_or_default();
        Desired::new(
            "ContractCompatible",
            false,
            "VersionOutOfRange",
            format!(
                "DataContract {name} {} is outside the flow's range {}{running}",
                contract.spec.version, flow.spec.contract.versions
            ),
        )
    } else {
        Desired::new(
            "ContractCompatible",
            true,
            "Compatible",
            format!("running DataContract {name} {}", contract.spec.version),
        )
    };
    Ok(ContractChoice {
        resolved: chosen,
        condition,
    })
}

/// BindingsReady: every referenced binding exists and is Ready; the message names the first
/// one that is not.
pub fn bindings_condition(refs: &[(&str, Option<&ConnectorBinding>)]) -> Desired {
    for (name, binding) in refs {
        let Some(binding) = binding else {
            return Desired::new(
                "BindingsReady",
                false,
                "BindingNotFound",
                format!("ConnectorBinding {name} does not exist"),
            );
        };
        let conditions = binding
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let ready = conditions.iter().find(|c| c.type_ == "Ready");
        match ready {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                return Desired::new(
                    "BindingsReady",
                    false,
                    "BindingNotReady",
                    format!(
                        "ConnectorBinding {name} is not ready: {}: {}",
                        c.reason, c.message
                    ),
                );
            }
            None => {
                return Desired::new(
                    "BindingsReady",
                    false,
                    "BindingNotReady",
                    format!("ConnectorBinding {name} has not been checked yet"),
                );
            }
        }
    }
    Desired::new(
        "BindingsReady",
        true,
        "BindingsReady",
        "all bindings are ready",
    )
}

/// The contract version in the worker ConfigMap currently applied, if any.
pub fn applied_contract_version(config_map: Option<&BTreeMap<String, String>>) -> Option<String> {
    let json = config_map?.get(crate::worker_config::CONFIG_FILE)?;
    let config = crate::worker_config::WorkerConfig::parse(json).ok()?;
    Some(config.contract.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn flow(range: &str) -> IntegrationFlow {
        serde_yaml::from_str(&format!(
            "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {{name: f, namespace: n}}\nspec:\n  source: {{bindingRef: a, entity: x, syncMode: FullRefresh}}\n  target: {{bindingRef: b, entity: y}}\n  contract: {{name: c, versions: \"{range}\"}}\n"
        ))
        .unwrap()
    }

    fn contract(version: &str, compatible: Option<bool>) -> DataContract {
        let mut dc: DataContract = serde_yaml::from_str(&format!(
            "apiVersion: flowplane.io/v1alpha1\nkind: DataContract\nmetadata: {{name: c, namespace: n, generation: 3}}\nspec:\n  domain: d\n  version: {version}\n  owner: {{team: t}}\n  schema:\n    primaryKey: [id]\n    fields: [{{name: id, type: String, required: true}}]\n"
        ))
        .unwrap();
        if let Some(ok) = compatible {
            dc.status = Some(crate::api::DataContractStatus {
                observed_generation: Some(3),
                conditions: vec![Condition {
                    type_: "Compatible".into(),
                    status: if ok { "True" } else { "False" }.into(),
                    reason: "x".into(),
                    message: String::new(),
                    observed_generation: Some(3),
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                }],
                breaks: if ok {
                    vec![]
                } else {
                    vec!["field qty: TypeChanged".into()]
                },
                ..Default::default()
            });
        }
        dc
    }

    fn published(version: &str, dc: &DataContract) -> PublishedContract {
        PublishedContract {
            version: version.into(),
            schema_hash: schema_hash(&dc.spec.schema),
            schema: dc.spec.schema.clone(),
            quality: vec![],
        }
    }

    #[test]
    fn a_compatible_version_in_range_is_used() {
        let dc = contract("1.1.0", Some(true));
        let choice = choose_contract(&flow("^1"), Some(&dc), &[published("1.0.0", &dc)]).unwrap();
        assert_eq!(choice.resolved.unwrap().version, "1.1.0");
        assert!(choice.condition.status);
    }

    #[test]
    fn a_refused_version_falls_back_to_the_newest_published_one_in_range() {
        let dc = contract("1.2.0", Some(false));
        let history = [published("1.0.0", &dc), published("1.1.0", &dc)];
        let choice = choose_contract(&flow("^1"), Some(&dc), &history).unwrap();
        assert_eq!(choice.resolved.unwrap().version, "1.1.0");
        assert_eq!(choice.condition.reason, "ContractIncompatible");
        assert!(
            choice.condition.message.contains("TypeChanged"),
            "{}",
            choice.condition.message
        );
        assert!(choice.condition.message.contains("running 1.1.0"));
    }

    #[test]
    fn a_version_outside_the_range_keeps_the_flow_on_its_line() {
        let dc = contract("2.0.0", Some(true));
        let history = [published("1.1.0", &dc)];
        let pinned = choose_contract(&flow("^1"), Some(&dc), &history).unwrap();
        assert_eq!(pinned.resolved.unwrap().version, "1.1.0");
        assert_eq!(pinned.condition.reason, "VersionOutOfRange");
        let follows = choose_contract(&flow("^2"), Some(&dc), &history).unwrap();
        assert_eq!(follows.resolved.unwrap().version, "2.0.0");
    }

    #[test]
    fn unchecked_missing_and_retired_contracts_are_not_rolled_out() {
        let unchecked = contract("1.0.0", None);
        let choice = choose_contract(&flow("^1"), Some(&unchecked), &[]).unwrap();
        assert!(choice.resolved.is_none());
        assert_eq!(choice.condition.reason, "ContractPending");
        let missing = choose_contract(&flow("^1"), None, &[]).unwrap();
        assert_eq!(missing.condition.reason, "ContractNotFound");
        let mut retired = contract("1.0.0", Some(true));
        retired.spec.lifecycle = Lifecycle::Retired;
        let choice = choose_contract(&flow("^1"), Some(&retired), &[]).unwrap();
        assert!(choice.resolved.is_none());
        assert_eq!(choice.condition.reason, "ContractRetired");
        assert!(choose_contract(&flow("not a range"), Some(&retired), &[]).is_err());
    }
}
