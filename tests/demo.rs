//! The README's main command in its smoke mode: `scripts/demo.sh --check` builds nothing (it
//! gets this build's binary), starts a control plane of its own (a separate local environment,
//! so the demo's operator never meets the in-process operators of the other tests), NATS, the
//! simulators, the operator and the workers, and exits 0 once every demo flow is Ready and Fresh
//! with a delivery since it started, the forecasting simulator received records of each
//! flow, and the loop reached the ERP simulator's replenishment entity and the supplier portal;
//! then it stops everything it started. 109 s warm with the five flows (2026-11-30, loaded
//! machine; 75-90 s with three).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_demo_shows_every_flow_ready_and_fresh_with_records_arriving() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let name = format!(
        "{}-demo",
        std::env::var("FLOWPLANE_ENV_NAME").unwrap_or_else(|_| "default".into())
    );
    let state = match std::env::var("FLOWPLANE_STATE") {
        Ok(state) => format!("{state}-demo"),
        Err(_) => {
            let cache = std::env::var("FLOWPLANE_CACHE")
                .unwrap_or_else(|_| format!("{}/.cache/flowplane", std::env::var("HOME").unwrap()));
            format!("{cache}/run/{name}")
        }
    };
    let out = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .args(["--check", "--timeout", "150"])
        .env("FLOWPLANE_BIN", env!("CARGO_BIN_EXE_flowplane"))
        .env("FLOWPLANE_ENV_NAME", &name)
        .env("FLOWPLANE_STATE", &state)
        .current_dir(&root)
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo.sh --check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("check passed"), "{stderr}");
    // The demo Secrets' values never reach the output.
    assert!(
        !stdout.contains("local-demo-only") && !stderr.contains("local-demo-only"),
        "a Secret value was printed"
    );
    for flow in [
        "order-history-to-forecasting",
        "inventory-events-to-forecasting",
        "returns-events-to-forecasting",
        "forecasts-to-supplier-portal",
        "forecast-deltas-to-erp-replenishment",
    ] {
        assert!(stdout.contains(flow), "{flow} not shown:\n{stdout}");
    }
    // The loop's counts at the simulators.
    assert!(
        stdout.contains("ERP simulator PurchaseReqnItem:"),
        "the loop's counts not shown:\n{stdout}"
    );
}
