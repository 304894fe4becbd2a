//! The Argo CD health checks in `deploy/argocd/resource_customizations/flowplane.io/<Kind>/`
//! pass their `health_test.yaml` cases (Argo CD's own test format) in Argo CD's Lua runtime:
//! gopher-lua (Lua 5.1) set up as Argo CD's util/lua sets it up, both without the standard
//! libraries (Argo CD's default) and with them (`useOpenLibs`). See tests/verdicts.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

const KINDS: [&str; 3] = ["IntegrationFlow", "DataContract", "ConnectorBinding"];
const STATUSES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
];

fn customizations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/resource_customizations/flowplane.io")
}

fn yaml_file(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The health Argo CD computes for `obj` with `script`, in its own Lua runtime (gopher-lua,
/// as Argo CD sets it up): the same verdict with and without the standard libraries, since a
/// resource customization runs without them unless it sets `useOpenLibs`.
fn run_health(script: &Path, obj: &Value) -> (String, String) {
    let closed = support::argocd_health(script, obj, false);
    let open = support::argocd_health(script, obj, true);
    assert_eq!(
        closed,
        open,
        "{} differs with open libraries",
        script.display()
    );
    closed
}

fn check_kind(kind: &str) {
    let dir = customizations().join(kind);
    let script = dir.join("health.lua");
    assert!(script.exists(), "no {}", script.display());
    let tests = yaml_file(&dir.join("health_test.yaml"));
    let cases = tests["tests"].as_array().expect("tests: [...]");
    assert!(cases.len() >= 4, "{kind}: too few cases");
    let mut failures = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let input = case["inputPath"].as_str().expect("inputPath");
        seen.insert(input.trim_start_matches("testdata/").to_string());
        let want_status = case["healthStatus"]["status"].as_str().unwrap();
        let want_message = case["healthStatus"]["message"].as_str().unwrap_or_default();
        assert!(
            STATUSES.contains(&want_status),
            "{kind} {input}: {want_status}"
        );
        let obj = yaml_file(&dir.join(input));
        assert_eq!(obj["kind"], kind, "{input}");
        let (status, message) = run_health(&script, &obj);
        if status != want_status || message != want_message {
            failures.push(format!(
                "{input}: want {want_status} {want_message:?}, got {status} {message:?}"
            ));
        }
    }
    // Every test object is a case.
    for entry in std::fs::read_dir(dir.join("testdata")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            seen.contains(&name),
            "{kind}: testdata/{name} is in no case"
        );
    }
    assert!(failures.is_empty(), "{kind}:\n{}", failures.join("\n"));
}

#[test]
fn integration_flow_health() {
    check_kind("IntegrationFlow");
}

#[test]
fn data_contract_health() {
    check_kind("DataContract");
}

#[test]
fn connector_binding_health() {
    check_kind("ConnectorBinding");
}

#[test]
fn every_kind_has_a_health_check_and_nothing_else_is_there() {
    let mut dirs: Vec<String> = std::fs::read_dir(customizations())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut kinds = KINDS.map(String::from).to_vec();
    kinds.sort();
    assert_eq!(dirs, kinds);
}

#[test]
fn awkward_strings_reach_the_script_and_come_back_whole() {
    let obj = serde_json::json!({
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "True", "reason": "DataFlowing",
             "message": "quote \" backslash \\ newline \n tab \t umlaut ü ${x} ]]"}
        ]},
        "spec": {"suspend": null}
    });
    let (status, message) = run_health(&customizations().join("IntegrationFlow/health.lua"), &obj);
    assert_eq!(status, "Healthy");
    // The verdict tool prints one line per verdict: a newline comes back escaped.
    assert_eq!(
        message,
        "quote \" backslash \\ newline \\n tab \t umlaut ü ${x} ]]"
    );
}
