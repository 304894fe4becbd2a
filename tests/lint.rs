//! A Kubernetes manifest linter nobody here wrote (checkov) finds nothing in the chart and in
//! the children the operator renders for every example flow, but the checks excluded by name
//! with a reason in deploy/lint-exclusions.yaml; an exclusion no finding needs is an error too.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

#[derive(Deserialize)]
struct Exclusion {
    check: String,
    reason: String,
}

fn example_files() -> Vec<PathBuf> {
    let base = support::repo_root().join("examples/base");
    let mut files = Vec::new();
    for dir in ["bindings", "contracts", "codemaps", "flows"] {
        for entry in std::fs::read_dir(base.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files
}

/// Failed check id -> the objects (file, resource) that fail it.
fn findings(dir: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(support::tool("checkov"))
        .args([
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "-o",
            "json",
            "-d",
        ])
        .arg(dir)
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
        .output()
        .expect("run checkov");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let reports = match report {
        serde_json::Value::Array(reports) => reports,
        single => vec![single],
    };
    let mut failed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut passed = 0;
    for report in &reports {
        passed += report["summary"]["passed"].as_u64().unwrap_or(0);
        for check in report["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            failed
                .entry(check["check_id"].as_str().unwrap().to_string())
                .or_default()
                .insert(format!(
                    "{} {}",
                    check["file_path"].as_str().unwrap_or_default(),
                    check["resource"].as_str().unwrap_or_default()
                ));
        }
    }
    assert!(
        passed > 100,
        "checkov passed only {passed} checks: did it read the manifests?"
    );
    failed
}

#[test]
fn the_chart_and_every_rendered_child_pass_the_linter_but_its_named_exclusions() {
    let dir = std::env::temp_dir().join(format!("flowplane-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, chart, err) = support::helm(&[
        "template",
        "flowplane",
        support::repo_root()
            .join("charts/flowplane")
            .to_str()
            .unwrap(),
        "-n",
        "flowplane-system",
        "--kube-version",
        support::KUBE_VERSION,
    ]);
    assert!(ok, "{err}");
    std::fs::write(dir.join("chart.yaml"), chart).unwrap();
    for extra in [
        &["--external-metrics"][..],
        &["--keda", "--prometheus-operator"][..],
    ] {
        let mut render = Command::new(env!("CARGO_BIN_EXE_flowplane"));
        render.args(["render", "-n", "flowplane-eu"]).args(extra);
        for file in example_files() {
            render.arg("-f").arg(file);
        }
        let out = render.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = if extra.len() == 1 {
            "rendered.yaml"
        } else {
            "rendered-optional.yaml"
        };
        std::fs::write(dir.join(name), out.stdout).unwrap();
    }

    let failed = findings(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let exclusions: Vec<Exclusion> = serde_yaml::from_str(
        &std::fs::read_to_string(support::repo_root().join("deploy/lint-exclusions.yaml")).unwrap(),
    )
    .unwrap();
    for exclusion in &exclusions {
        assert!(exclusion.reason.len() > 40, "{}: say why", exclusion.check);
    }
    let excluded: BTreeSet<&str> = exclusions.iter().map(|e| e.check.as_str()).collect();
    let unexpected: Vec<String> = failed
        .iter()
        .filter(|(check, _)| !excluded.contains(check.as_str()))
        .map(|(check, objects)| format!("{check}: {objects:?}"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "checkov findings:\n{}",
        unexpected.join("\n")
    );
    let unused: Vec<&&str> = excluded
        .iter()
        .filter(|check| !failed.contains_key(**check))
        .collect();
    assert!(
        unused.is_empty(),
        "exclusions nothing fails any more: {unused:?}"
    );
}
