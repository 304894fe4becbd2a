//! The pure half of the DataContract controller: from the contract as read and the history
//! ConfigMap's data, the status to write and the history to keep. The same inputs always give
//! the same plan, so a settled contract produces no write (`firstSeen` is set once, when a
//! version is first published, and copied from then on).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use semver::Version;

use crate::api::DataContract;
use crate::api::common::Condition;
use crate::api::data_contract::{DataContractStatus, Lifecycle, PublishedVersion};
use crate::contract::compatibility::{Candidate, Outcome, PublishedSchema, Verdict, check};
use crate::contract::history::{self, PublishedContract};
use crate::contract::{schema_hash, validate_contract};
use crate::controller::conditions::{Desired, merge};

/// Published versions kept in status and in the history ConfigMap; older ones are dropped.
pub const HISTORY_LIMIT: usize = 20;

/// What the controller should make true.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: DataContractStatus,
    /// The full data of the history ConfigMap (version key -> `PublishedContract` JSON).
    pub history_data: BTreeMap<String, String>,
    /// The version this pass publishes for the first time, for an event.
    pub newly_published: Option<String>,
}

/// Sets the status of condition `type_` to `Unknown`, keeping its transition time when it
/// already was Unknown ([`merge`] only knows True and False).
pub(crate) fn mark_unknown(
    conditions: &mut [Condition],
    previous: &[Condition],
    type_: &str,
    now: Timestamp,
) {
    for c in conditions.iter_mut().filter(|c| c.type_ == type_) {
        c.status = "Unknown".into();
        c.last_transition_time = previous
            .iter()
            .find(|p| p.type_ == type_ && p.status == "Unknown")
            .map(|p| p.last_transition_time.clone())
            .unwrap_or(Time(now));
    }
}

/// One stored entry of the history ConfigMap, with the raw JSON kept so that rewriting the
/// ConfigMap does not reformat entries this pass did not touch.
struct Stored {
    raw: String,
    parsed: PublishedContract,
}

fn parse_stored(data: &BTreeMap<String, String>) -> BTreeMap<String, Stored> {
    data.values()
        .filter_map(|raw| {
            let parsed: PublishedContract = serde_json::from_str(raw).ok()?;
            Some((
                parsed.version.clone(),
                Stored {
                    raw: raw.clone(),
                    parsed,
                },
            ))
        })
        .collect()
}

/// The published history: status is authoritative for versions and hashes; versions only
/// the ConfigMap knows are taken back, with the `firstSeen` the ConfigMap recorded for them.
/// That covers a status lost (restored from a backup without status) and, more often, a
/// reconcile that read the object from a cache older than the last publication: it then
/// computes the very status that publication wrote, instead of a new `firstSeen`.
/// Oldest first, by `firstSeen`.
fn known_history(
    previous: &[PublishedVersion],
    stored: &BTreeMap<String, Stored>,
    first_seen: &BTreeMap<String, String>,
    now: Timestamp,
) -> Vec<PublishedVersion> {
    let recovered = stored
        .values()
        .filter(|s| !previous.iter().any(|p| p.version == s.parsed.version))
        .map(|s| PublishedVersion {
            version: s.parsed.version.clone(),
            schema_hash: s.parsed.schema_hash.clone(),
            first_seen: first_seen
                .get(&s.parsed.version)
                .cloned()
                .unwrap_or_else(|| now.to_string()),
        });
    let mut history: Vec<PublishedVersion> = previous.iter().cloned().chain(recovered).collect();
    // Stable: entries whose time does not parse keep their place relative to each other.
    history.sort_by_key(|h| h.first_seen.parse::<Timestamp>().ok());
    history
}

/// The `firstSeen` of every version in `history`, as kept on the history ConfigMap.
pub fn first_seen_annotation(history: &[PublishedVersion]) -> String {
    let map: BTreeMap<&str, &str> = history
        .iter()
        .map(|h| (h.version.as_str(), h.first_seen.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

/// Reads [`first_seen_annotation`] back; anything unreadable is an empty map.
pub fn parse_first_seen(annotation: Option<&str>) -> BTreeMap<String, String> {
    annotation
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

fn latest_good(history: &[PublishedVersion]) -> Option<String> {
    history
        .iter()
        .filter_map(|h| Some((Version::parse(&h.version).ok()?, &h.version)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.clone())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The `Compatible` verdict of the spec against the history, and the message to show. An
/// already published version is re-checked against the versions before it, so the message
/// is the same on the pass that publishes it and on every pass after (no second write).
fn judge(
    contract: &DataContract,
    history: &[PublishedVersion],
    stored: &BTreeMap<String, Stored>,
    hash: &str,
) -> Result<(Verdict, String, &'static str), String> {
    let spec = &contract.spec;
    // Immutability is decided on the hashes alone, so it holds even when the ConfigMap lost
    // the schema of the version.
    if let Some(published) = history
        .iter()
        .find(|h| h.version == spec.version && h.schema_hash != hash)
    {
        let version = Version::parse(&spec.version).map_err(|e| e.to_string())?;
        let verdict = Verdict {
            version,
            mode: spec.compatibility,
            outcome: Outcome::PublishedVersionChanged {
                published_hash: published.schema_hash.clone(),
                candidate_hash: hash.to_string(),
            },
        };
        let message = verdict.to_string();
        return Ok((verdict, message, "PublishedVersionChanged"));
    }
    let published: Vec<PublishedSchema<'_>> = history
        .iter()
        .filter_map(|h| {
            let schema = match stored.get(&h.version) {
                Some(s) => &s.parsed.schema,
                // The ConfigMap lost it; the spec still holds it when it is this version.
                None if h.version == spec.version => &spec.schema,
                None => {
                    tracing::warn!(
                        version = %h.version,
                        "published version missing from the history ConfigMap; not compared"
                    );
                    return None;
                }
            };
            Some(PublishedSchema {
                version: &h.version,
                schema_hash: &h.schema_hash,
                schema,
            })
        })
        .collect();
    let candidate = Candidate::from(spec);
    let verdict = check(&published, &candidate, spec.compatibility).map_err(|e| e.to_string())?;
    if verdict.outcome != Outcome::AlreadyPublished {
        let (message, reason) = (verdict.to_string(), verdict.reason());
        return Ok((verdict, message, reason));
    }
    let before: Vec<_> = published
        .iter()
        .filter(|p| Version::parse(p.version).is_ok_and(|v| v < verdict.version))
        .copied()
        .collect();
    let recheck = check(&before, &candidate, spec.compatibility).map_err(|e| e.to_string())?;
    if recheck.is_compatible() {
        Ok((verdict, recheck.to_string(), "Compatible"))
    } else {
        // The mode changed since publication; the version stays published.
        let message = verdict.to_string();
        Ok((verdict, message, "AlreadyPublished"))
    }
}

/// Computes status and history for `contract`, given the history ConfigMap's data.
pub fn plan(
    contract: &DataContract,
    stored_data: &BTreeMap<String, String>,
    first_seen: &BTreeMap<String, String>,
    now: Timestamp,
) -> Plan {
    let spec = &contract.spec;
    let generation = contract.metadata.generation;
    let previous = contract.status.clone().unwrap_or_default();
    let stored = parse_stored(stored_data);
    let mut history = known_history(&previous.history, &stored, first_seen, now);
    let problems = validate_contract(spec);
    let hash = schema_hash(&spec.schema);

    let mut breaks = Vec::new();
    let mut newly_published = None;
    let mut unknown = false;
    let mut publish_spec = false;
    let (ready, compatible) = if !problems.is_empty() {
        let list = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        unknown = true;
        (
            Desired::new(
                "Ready",
                false,
                "InvalidSchema",
                format!(
                    "{} problem{} in the contract: {list}",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ),
            ),
            Desired::new(
                "Compatible",
                false,
                "InvalidSchema",
                format!(
                    "{} was not checked: the contract is invalid (see Ready)",
                    spec.version
                ),
            ),
        )
    } else {
        let lifecycle_note = match spec.lifecycle {
            Lifecycle::Active => "",
            Lifecycle::Draft => {
                "; lifecycle Draft: versions are checked but not published until Active"
            }
            Lifecycle::Deprecated => "; lifecycle Deprecated: flows using it should move on",
            Lifecycle::Retired => "; lifecycle Retired: no longer served to new rollouts",
        };
        let ready = Desired::new(
            "Ready",
            true,
            "SchemaValid",
            format!(
                "schema of {} is valid: {} field{}, primary key {} (hash {}){lifecycle_note}",
                spec.version,
                spec.schema.fields.len(),
                if spec.schema.fields.len() == 1 {
                    ""
                } else {
                    "s"
                },
                spec.schema.primary_key.join(", "),
                short(&hash)
            ),
        );
        let compatible = match judge(contract, &history, &stored, &hash) {
            Err(e) => Desired::new("Compatible", false, "InvalidVersion", e),
            Ok((verdict, message, reason)) if verdict.is_compatible() => {
                let published = history.iter().any(|h| h.version == spec.version);
                if spec.lifecycle == Lifecycle::Draft && !published {
                    Desired::new(
                        "Compatible",
                        true,
                        "Compatible",
                        format!("{message} (Draft: not published yet)"),
                    )
                } else {
                    publish_spec = true;
                    if !published {
                        history.push(PublishedVersion {
                            version: spec.version.clone(),
                            schema_hash: hash.clone(),
                            first_seen: now.to_string(),
                        });
                        newly_published = Some(spec.version.clone());
                    }
                    Desired::new("Compatible", true, reason, message)
                }
            }
            Ok((verdict, message, reason)) => {
                breaks = verdict.breaks().iter().map(ToString::to_string).collect();
                if breaks.is_empty() {
                    // Refused without field-level breaks (immutability, semver): the
                    // sentence itself is the break, so flows can show why.
                    breaks.push(message.clone());
                }
                Desired::new("Compatible", false, reason, message)
            }
        };
        (ready, compatible)
    };

    let drop = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..drop);

    let mut history_data = BTreeMap::new();
    for h in &history {
        let raw = if publish_spec && h.version == spec.version && h.schema_hash == hash {
            // Regenerated from the spec: quality rules may change without a new version.
            serde_json::to_string(&PublishedContract {
                version: spec.version.clone(),
                schema_hash: hash.clone(),
                schema: spec.schema.clone(),
                quality: spec.quality.clone(),
            })
            .ok()
        } else {
            stored.get(&h.version).map(|s| s.raw.clone())
        };
        if let Some(raw) = raw {
            history_data.insert(history::key(&h.version), raw);
        }
    }

    // A version the controller refuses (invalid, or breaking under the compatibility mode) is
    // not in effect: flows keep the last good one. It stays refused until the spec changes,
    // so Ready is False and Stalled True with the reason, and no tool reads it as healthy.
    let ready = if ready.status && !compatible.status {
        Desired::new(
            "Ready",
            false,
            compatible.reason.clone(),
            compatible.message.clone(),
        )
    } else {
        ready
    };
    let stalled = if ready.status {
        Desired::new("Stalled", false, "NotStalled", "")
    } else {
        Desired::new("Stalled", true, ready.reason.clone(), ready.message.clone())
    };
    let mut conditions = merge(
        &previous.conditions,
        &[ready, stalled, compatible],
        generation,
        now,
    );
    if unknown {
        mark_unknown(&mut conditions, &previous.conditions, "Compatible", now);
    }
    Plan {
        status: DataContractStatus {
            observed_generation: generation,
            conditions,
            latest_good_version: latest_good(&history),
            history,
            breaks,
        },
        history_data,
        newly_published,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::data_contract::Compatibility;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn contract(version: &str, extra_field: Option<&str>) -> DataContract {
        let mut c: DataContract = serde_yaml::from_str(&format!(
            "apiVersion: flowplane.io/v1alpha1\nkind: DataContract\n\
             metadata: {{name: orders, namespace: n, generation: 1, uid: u1}}\n\
             spec:\n  domain: orders\n  version: {version}\n  owner: {{team: t}}\n  schema:\n    \
             primaryKey: [id]\n    fields:\n      - {{name: id, type: String, required: true}}\n      \
             - {{name: qty, type: Int, required: true}}\n"
        ))
        .unwrap();
        if let Some(field) = extra_field {
            let mut f = c.spec.schema.fields[1].clone();
            f.name = field.into();
            c.spec.schema.fields.push(f);
        }
        c
    }

    fn plan(c: &DataContract, data: &BTreeMap<String, String>, now: Timestamp) -> Plan {
        super::plan(c, data, &BTreeMap::new(), now)
    }

    /// Runs the plan and feeds its output back as the next pass would see it.
    fn settle(
        mut c: DataContract,
        data: &mut BTreeMap<String, String>,
        now: i64,
    ) -> (DataContract, Plan) {
        let p = plan(&c, data, at(now));
        *data = p.history_data.clone();
        c.status = Some(p.status.clone());
        (c, p)
    }

    fn condition<'a>(p: &'a Plan, type_: &str) -> &'a Condition {
        p.status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    #[test]
    fn a_first_version_is_published_once_and_then_nothing_changes() {
        let mut data = BTreeMap::new();
        let (c, first) = settle(contract("1.0.0", None), &mut data, 100);
        assert_eq!(first.newly_published.as_deref(), Some("1.0.0"));
        assert_eq!(first.status.history.len(), 1);
        assert_eq!(first.status.latest_good_version.as_deref(), Some("1.0.0"));
        assert_eq!(condition(&first, "Compatible").status, "True");
        assert_eq!(condition(&first, "Ready").status, "True");
        assert!(data.contains_key("1.0.0.json"));
        // The next pass (with a later clock) plans exactly the same status: no write.
        let second = plan(&c, &data, at(500));
        assert_eq!(second.status, first.status);
        assert_eq!(second.history_data, first.history_data);
        assert_eq!(second.newly_published, None);
    }

    /// Version 1.1.0 of `published`: one optional field more (a backward-compatible change).
    fn with_optional_note(published: &DataContract) -> DataContract {
        let mut next = contract("1.1.0", None);
        next.spec
            .schema
            .fields
            .push(serde_yaml::from_str("{name: note, type: String, nullable: true}").unwrap());
        next.status = published.status.clone();
        next
    }

    #[test]
    fn a_compatible_minor_appends_and_a_breaking_one_is_refused_with_its_breaks() {
        let mut data = BTreeMap::new();
        let (c, _) = settle(contract("1.0.0", None), &mut data, 100);
        // Backward: adding an optional field is fine.
        let (c, p) = settle(with_optional_note(&c), &mut data, 200);
        assert_eq!(p.newly_published.as_deref(), Some("1.1.0"));
        assert_eq!(
            p.status
                .history
                .iter()
                .map(|h| h.version.as_str())
                .collect::<Vec<_>>(),
            ["1.0.0", "1.1.0"]
        );
        assert_eq!(p.status.history[0].first_seen, at(100).to_string());
        assert_eq!(data.len(), 2);
        // A new required field breaks Backward.
        let mut breaking = contract("1.2.0", Some("price"));
        breaking
            .spec
            .schema
            .fields
            .push(serde_yaml::from_str("{name: note, type: String, nullable: true}").unwrap());
        breaking.status = c.status.clone();
        let p = plan(&breaking, &data, at(300));
        let compatible = condition(&p, "Compatible");
        assert_eq!(
            (compatible.status.as_str(), compatible.reason.as_str()),
            ("False", "BreakingChange")
        );
        assert!(
            p.status.breaks.iter().any(|b| b.contains("field price")),
            "{:?}",
            p.status.breaks
        );
        assert_eq!(p.status.history.len(), 2);
        assert_eq!(p.status.latest_good_version.as_deref(), Some("1.1.0"));
        // The refused version is not in effect, and no tool may read it as healthy.
        let ready = condition(&p, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "BreakingChange")
        );
        let stalled = condition(&p, "Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "BreakingChange")
        );
        // A new major starts a new line.
        let mut major = contract("2.0.0", Some("price"));
        major.status = c.status.clone();
        let p = plan(&major, &data, at(400));
        assert_eq!(condition(&p, "Compatible").status, "True");
        assert_eq!(p.status.latest_good_version.as_deref(), Some("2.0.0"));
        assert!(p.status.breaks.is_empty());
    }

    #[test]
    fn editing_a_published_version_is_refused_even_without_the_config_map() {
        let mut data = BTreeMap::new();
        let (c, _) = settle(contract("1.0.0", None), &mut data, 100);
        let mut edited = contract("1.0.0", Some("price"));
        edited.status = c.status.clone();
        for stored in [data.clone(), BTreeMap::new()] {
            let p = plan(&edited, &stored, at(200));
            let compatible = condition(&p, "Compatible");
            assert_eq!(compatible.reason, "PublishedVersionChanged");
            assert_eq!(compatible.status, "False");
            assert_eq!(p.status.breaks.len(), 1);
            assert!(
                p.status.breaks[0].contains("immutable"),
                "{:?}",
                p.status.breaks
            );
            assert_eq!(p.status.history.len(), 1);
        }
    }

    #[test]
    fn an_invalid_schema_is_not_ready_and_compatibility_unknown() {
        let mut c = contract("1.0.0", None);
        c.spec.schema.fields.push(c.spec.schema.fields[1].clone());
        let p = plan(&c, &BTreeMap::new(), at(100));
        let ready = condition(&p, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSchema")
        );
        assert!(ready.message.contains("qty"), "{}", ready.message);
        assert_eq!(condition(&p, "Compatible").status, "Unknown");
        assert!(p.status.history.is_empty());
        // Unknown keeps its transition time.
        c.status = Some(p.status.clone());
        let again = plan(&c, &BTreeMap::new(), at(900));
        assert_eq!(again.status, p.status);
    }

    #[test]
    fn history_is_bounded_and_the_config_map_follows() {
        let mut data = BTreeMap::new();
        let mut status = None;
        for minor in 0..25 {
            let mut c = contract(&format!("1.{minor}.0"), None);
            c.spec.compatibility = Compatibility::None;
            c.status = status.clone();
            let (c, _) = settle(c, &mut data, 100 + minor);
            status = c.status.clone();
        }
        let status = status.unwrap();
        assert_eq!(status.history.len(), HISTORY_LIMIT);
        assert_eq!(status.history[0].version, "1.5.0");
        assert_eq!(data.len(), HISTORY_LIMIT);
        assert!(!data.contains_key("1.4.0.json"));
        assert_eq!(status.latest_good_version.as_deref(), Some("1.24.0"));
    }

    #[test]
    fn drafts_are_checked_but_not_published_and_retired_contracts_say_so() {
        let mut c = contract("1.0.0", None);
        c.spec.lifecycle = Lifecycle::Draft;
        let p = plan(&c, &BTreeMap::new(), at(100));
        assert_eq!(condition(&p, "Compatible").status, "True");
        assert!(p.status.history.is_empty() && p.history_data.is_empty());
        c.spec.lifecycle = Lifecycle::Retired;
        let p = plan(&c, &BTreeMap::new(), at(100));
        let ready = condition(&p, "Ready");
        assert_eq!(ready.status, "True");
        assert!(ready.message.contains("Retired"), "{}", ready.message);
    }

    #[test]
    fn a_reconcile_on_a_stale_cache_computes_what_the_publication_wrote() {
        let mut data = BTreeMap::new();
        let (c, _) = settle(contract("1.0.0", None), &mut data, 100);
        let next = with_optional_note(&c);
        let published = plan(&next, &data, at(200));
        let annotation = parse_first_seen(Some(&first_seen_annotation(&published.status.history)));
        // Another pass (or another replica) still sees the status before 1.1.0 was published,
        // but reads the ConfigMap written since: same history, same times, same order.
        let stale = super::plan(&next, &published.history_data, &annotation, at(300));
        assert_eq!(stale.status, published.status);
        assert_eq!(
            stale
                .status
                .history
                .iter()
                .map(|h| h.version.as_str())
                .collect::<Vec<_>>(),
            ["1.0.0", "1.1.0"]
        );
    }
}
