//! The scenario of issue 16 on the running demo (`scripts/scenario.sh`, docs/scenario.md): a
//! quiet check (two minutes of the demo with a rollout of every flow's workers, no alert may
//! fire in Prometheus), then the five ways planning data breaks, each injected into the running
//! stack and each with its target: a stale flow alerts within its SLA, an unmapped location is
//! reported before a bulk is dead-lettered, a forecast delta above the review threshold is
//! parked, approved by a named user and applied in the ERP simulator, a target outage alerts
//! before the freshness SLA runs out, a breaking contract version is refused while the workers
//! stay on the last good one. The script exits 1 on a missed target; this test also checks
//! that each breakdown printed its times. About 8 minutes warm (2026-11-30, loaded machine).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_five_breakdowns_are_detected_or_prevented_and_the_quiet_demo_stays_silent() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let name = format!(
        "{}-scenario",
        std::env::var("FLOWPLANE_ENV_NAME").unwrap_or_else(|_| "default".into())
    );
    let state = match std::env::var("FLOWPLANE_STATE") {
        Ok(state) => format!("{state}-scenario"),
        Err(_) => {
            let cache = std::env::var("FLOWPLANE_CACHE")
                .unwrap_or_else(|_| format!("{}/.cache/flowplane", std::env::var("HOME").unwrap()));
            format!("{cache}/run/{name}")
        }
    };
    let out = Command::new("bash")
        .arg(root.join("scripts/scenario.sh"))
        .env("FLOWPLANE_BIN", env!("CARGO_BIN_EXE_flowplane"))
        .env("FLOWPLANE_ENV_NAME", &name)
        .env("FLOWPLANE_STATE", &state)
        .current_dir(&root)
        .output()
        .expect("run scripts/scenario.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/scenario.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("quiet check passed: no alert fired"),
        "{stdout}"
    );
    assert!(
        stdout.contains("scenario passed: every target met"),
        "{stdout}"
    );
    // Each breakdown with its injection, detection and recovery times, and its target met.
    for number in 1..=5 {
        let section = stdout
            .split(&format!("[{number}] "))
            .nth(1)
            .unwrap_or_else(|| panic!("breakdown {number} not printed:\n{stdout}"));
        let section = section.split("\n\n").next().unwrap();
        for line in [
            "injected",
            "detected",
            "recovery",
            "target         MET",
            "planner next",
        ] {
            assert!(
                section.contains(line),
                "breakdown {number} has no {line:?} line:\n{section}"
            );
        }
    }
    // The alerts that detected 1 and 4 came from Prometheus.
    for alert in [
        "FlowplaneContractFreshnessWarning firing in Prometheus",
        "FlowplaneFlowFailing firing in Prometheus",
    ] {
        assert!(stdout.contains(alert), "{alert} not shown:\n{stdout}");
    }
    assert!(
        !stdout.contains("local-demo-only") && !stderr.contains("local-demo-only"),
        "a Secret value was printed"
    );
}
