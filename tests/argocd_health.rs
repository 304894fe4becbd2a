//! The Argo CD health checks in `deploy/argocd/resource_customizations/flowplane.io/<Kind>/`
//! pass their `health_test.yaml` cases (Argo CD's own test format) under a real Lua
//! interpreter (Debian's `lua5.4`, installed by `scripts/install-tools.sh`).
//!
//! Each case's object is converted YAML -> JSON -> a Lua table literal, and the script runs in
//! an environment as small as Argo CD's sandbox (no `os`, `io`, `require`), with `obj` bound.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// A Lua string literal holding `s` exactly.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// A Lua value equal to the JSON value as Argo CD hands it to the script (null -> nil).
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn yaml_file(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Runs `health.lua` on `obj`; returns (status, message).
fn run_health(script: &Path, obj: &Value) -> (String, String) {
    let driver = format!(
        r#"
local env = {{
  obj = {obj},
  ipairs = ipairs, pairs = pairs, next = next, type = type, tostring = tostring,
  tonumber = tonumber, string = string, table = table, math = math, error = error,
  pcall = pcall, select = select,
}}
local chunk, err = loadfile({script}, "t", env)
if chunk == nil then io.stderr:write(err) os.exit(2) end
local hs = chunk()
if type(hs) ~= "table" then io.stderr:write("health.lua returned no table") os.exit(3) end
io.write(tostring(hs.status), "\0", tostring(hs.message))
"#,
        obj = lua_value(obj),
        script = lua_string(&script.to_string_lossy()),
    );
    let dir = std::env::temp_dir().join(format!("flowplane-argocd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "driver-{}.lua",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&file, driver).unwrap();
    let out = Command::new(support::tool("lua5.4"))
        .arg(&file)
        .output()
        .expect("run lua5.4");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (status, message) = stdout.split_once('\0').expect("status and message");
    (status.to_string(), message.to_string())
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
fn lua_literals_round_trip_awkward_strings() {
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
    assert_eq!(
        message,
        "quote \" backslash \\ newline \n tab \t umlaut ü ${x} ]]"
    );
}
