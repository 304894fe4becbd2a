//! The CRDs on a real apiserver: they install and become Established, every example applies,
//! `kubectl explain` shows the field docs, and invalid manifests are rejected at admission with
//! a message naming the field and the rule.

mod support;

use std::path::Path;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::Discovery;
use support::{TestNamespace, client, kubectl, repo_root};

#[tokio::test]
async fn crds_are_established_with_names_and_categories() {
    let client = client().await;
    let (ok, out, err) = kubectl(
        &["api-resources", "--api-group=flowplane.io", "-o", "wide"],
        None,
    );
    assert!(ok, "{err}");
    for (plural, short) in [
        ("integrationflows", "iflow"),
        ("datacontracts", "dc"),
        ("connectorbindings", "cb"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(plural))
            .unwrap_or_else(|| panic!("{plural} not served:\n{out}"));
        assert!(line.contains(short), "short name {short} missing: {line}");
        assert!(
            line.contains("flowplane"),
            "category flowplane missing: {line}"
        );
    }
    let ns = TestNamespace::new(&client, "crds").await;
    let (ok, _, err) = kubectl(&["get", "flowplane", "-n", &ns.name], None);
    assert!(ok, "kubectl get flowplane: {err}");
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() {
    let _client = client().await;
    let (ok, out, err) = kubectl(&["explain", "integrationflow.spec.source"], None);
    assert!(ok, "{err}");
    assert!(out.contains("Where the data comes from"), "{out}");
    assert!(out.contains("cursorField"), "{out}");
    assert!(out.contains("orders changes"), "{out}");
    let (ok, out, err) = kubectl(&["explain", "datacontract.spec.compatibility"], None);
    assert!(ok, "{err}");
    assert!(out.contains("Confluent Schema Registry"), "{out}");
    let (ok, out, err) = kubectl(&["explain", "connectorbinding.spec.auth.secretRef"], None);
    assert!(ok, "{err}");
    assert!(out.contains("Secret in the same namespace"), "{out}");
}

/// Renders a kustomization with kubectl's built-in kustomize.
fn kustomize(dir: &Path) -> String {
    let (ok, out, err) = kubectl(&["kustomize", dir.to_str().unwrap()], None);
    assert!(ok, "kustomize {}: {err}", dir.display());
    out
}

/// Applies every document into `namespace` by server-side apply, whatever namespace the
/// manifest names, so overlays can be tested side by side in throwaway namespaces.
async fn apply_all(
    client: &kube::Client,
    discovery: &Discovery,
    namespace: &str,
    yaml: &str,
) -> usize {
    let mut applied = 0;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        let mut obj: DynamicObject = serde_yaml::from_value(value).unwrap();
        let types = obj.types.clone().expect("apiVersion and kind");
        if types.kind == "Namespace" {
            continue; // overlays name their namespace; tests use throwaway ones
        }
        obj.metadata.namespace = Some(namespace.to_string());
        let gvk = kube::api::GroupVersionKind::try_from(&types).unwrap();
        let (resource, _) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("unknown kind {gvk:?}"));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let name = obj.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("flowplane-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {name}: {e}", types.kind));
        applied += 1;
    }
    applied
}

use serde::Deserialize;

#[tokio::test]
async fn every_example_applies() {
    let client = client().await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let examples = repo_root().join("examples");
    let secrets = std::fs::read_dir(examples.join("local-secrets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    for overlay in ["base", "overlays/eu", "overlays/us"] {
        let ns = TestNamespace::new(&client, "examples").await;
        let rendered = kustomize(&examples.join(overlay));
        let count = apply_all(&client, &discovery, &ns.name, &rendered).await;
        assert!(count >= 15, "{overlay}: only {count} objects");
        apply_all(&client, &discovery, &ns.name, &secrets).await;
        let (ok, out, err) = kubectl(&["get", "flowplane", "-n", &ns.name, "--no-headers"], None);
        assert!(ok, "{err}");
        assert!(
            out.lines().count() >= 10,
            "{overlay}: kubectl get flowplane:\n{out}"
        );
        if overlay != "base" {
            let region = overlay.trim_start_matches("overlays/");
            let (ok, out, err) = kubectl(
                &[
                    "get",
                    "iflow",
                    "-n",
                    &ns.name,
                    "-o",
                    "jsonpath={.items[*].spec.region}",
                ],
                None,
            );
            assert!(ok, "{err}");
            assert!(
                out.split_whitespace().all(|r| r == region) && !out.is_empty(),
                "{overlay}: regions {out:?}"
            );
        }
    }
}

/// One file of tests/invalid: setup documents, then the document that must be rejected.
struct InvalidCase {
    file: String,
    expects: Vec<String>,
    setup: Vec<String>,
    invalid: String,
}

fn invalid_cases() -> Vec<InvalidCase> {
    let dir = repo_root().join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let expects = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect:"))
                .map(|s| s.trim().to_string())
                .collect();
            let mut docs: Vec<String> = text
                .split("\n---")
                .map(str::to_string)
                .filter(|d| {
                    d.lines()
                        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                })
                .collect();
            let invalid = docs.pop().expect("at least one document");
            InvalidCase {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                expects,
                setup: docs,
                invalid,
            }
        })
        .collect()
}

#[tokio::test]
async fn invalid_manifests_are_rejected_naming_field_and_rule() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let cases = invalid_cases();
    assert!(cases.len() >= 25, "only {} invalid manifests", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        if case.expects.is_empty() {
            failures.push(format!("{}: no `# expect:` line", case.file));
            continue;
        }
        for doc in &case.setup {
            let (ok, _, err) = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(doc));
            if !ok {
                failures.push(format!("{}: setup document was rejected: {err}", case.file));
            }
        }
        let (ok, out, err) = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&case.invalid));
        if ok {
            failures.push(format!("{}: was accepted: {out}", case.file));
            continue;
        }
        for expect in &case.expects {
            if !err.contains(expect.as_str()) {
                failures.push(format!("{}: error lacks {expect:?}:\n{err}", case.file));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid manifests misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// No operator runs in this test binary, so objects stay as the API server alone makes them:
/// one the operator has not judged reads `status.observedGeneration: 0` (the CRDs' status
/// default), which kstatus, the Argo CD check and `kubectl wait` all read as not done yet.
#[tokio::test]
async fn an_object_no_operator_has_judged_is_in_progress_to_every_tool() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "unjudged").await;
    let examples = repo_root().join("examples/base");
    let customizations = repo_root().join("deploy/argocd/resource_customizations/flowplane.io");
    for (kind, resource, file) in [
        (
            "DataContract",
            "datacontracts",
            "contracts/sales-order-lines.yaml",
        ),
        (
            "ConnectorBinding",
            "connectorbindings",
            "bindings/erp-s4.yaml",
        ),
        (
            "IntegrationFlow",
            "integrationflows",
            "flows/order-history-to-forecasting.yaml",
        ),
    ] {
        let manifest = std::fs::read_to_string(examples.join(file)).unwrap();
        let (ok, _, err) = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest));
        assert!(ok, "{kind}: {err}");
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name: "))
            .unwrap()
            .trim();
        let (ok, json, err) = kubectl(
            &[
                "get",
                "-n",
                &ns.name,
                &format!("{resource}.flowplane.io/{name}"),
                "-o",
                "json",
            ],
            None,
        );
        assert!(ok, "{err}");
        let object: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            object["status"]["observedGeneration"], 0,
            "{kind}: {object}"
        );
        let kstatus = support::kstatus(std::slice::from_ref(&object)).remove(0).0;
        let script = customizations.join(kind).join("health.lua");
        let argocd = support::argocd_health(&script, &object, false).0;
        let (ready, _, _) = kubectl(
            &[
                "wait",
                "-n",
                &ns.name,
                &format!("{resource}.flowplane.io/{name}"),
                "--for=condition=Ready",
                "--timeout=0s", // check once
            ],
            None,
        );
        assert_eq!(
            (kstatus.as_str(), argocd.as_str(), ready),
            ("InProgress", "Progressing", false),
            "{kind}"
        );
    }
}
