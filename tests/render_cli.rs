//! `flowplane render`: the objects the operator would apply, offline, for GitOps previews.

use std::path::PathBuf;
use std::process::Command;

fn base_files() -> Vec<PathBuf> {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/base");
    let mut files = Vec::new();
    for dir in ["bindings", "contracts", "codemaps", "flows"] {
        for entry in std::fs::read_dir(base.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files
}

fn render(files: &[PathBuf], extra: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowplane"));
    cmd.arg("render").args(extra);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(yaml: &str, kind: &str) -> usize {
    yaml.lines()
        .filter(|l| *l == format!("kind: {kind}"))
        .count()
}

#[test]
fn renders_every_child_of_every_example_flow() {
    let (ok, out, err) = render(&base_files(), &["-n", "demo"]);
    assert!(ok, "{err}");
    assert_eq!(count(&out, "Deployment"), 5);
    assert_eq!(count(&out, "HorizontalPodAutoscaler"), 5);
    assert_eq!(count(&out, "ScaledObject"), 0);
    assert!(count(&out, "CronJob") >= 1);
    assert!(out.contains("flowplane.io/config-hash"));

    let (ok, out, err) = render(&base_files(), &["--keda", "--prometheus-operator"]);
    assert!(ok, "{err}");
    assert_eq!(count(&out, "ScaledObject"), 5);
    assert_eq!(count(&out, "HorizontalPodAutoscaler"), 0);
    assert_eq!(count(&out, "PrometheusRule"), 5);
    assert_eq!(count(&out, "ServiceMonitor"), 5);
}

#[test]
fn refuses_a_flow_whose_references_are_missing_or_invalid() {
    let flows: Vec<PathBuf> = base_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/flows/"))
        .collect();
    let (ok, _, err) = render(&flows, &[]);
    assert!(!ok);
    assert!(
        err.contains("DataContract") && err.contains("is not among the given manifests"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("flowplane-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad-flow.yaml");
    std::fs::write(
        &bad,
        "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {name: bad}\nspec:\n  source: {bindingRef: a, entity: x, syncMode: Incremental}\n  target: {bindingRef: b, entity: y}\n  contract: {name: c}\n",
    )
    .unwrap();
    let (ok, _, err) = render(&[bad], &[]);
    assert!(!ok);
    assert!(
        err.contains("cursorField"),
        "the CEL rule's message, as the apiserver gives it: {err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
