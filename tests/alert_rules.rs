//! The generated alert rules pass `promtool check rules`, and `promtool test rules` shows each
//! alert firing on the series that should fire it and silent otherwise, including a quiet
//! flow across a worker restart (the case that used to fire FlowplaneFlowStale falsely).

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use flowplane::api::IntegrationFlow;
use flowplane::api::integration_flow::{ALERT_LABEL_VALUE_PATTERN, Alerting};
use flowplane::render::ResolvedContract;
use flowplane::render::alerts::{RuleGroup, rule_file};

fn flow() -> IntegrationFlow {
    serde_yaml::from_str(
        r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders, namespace: eu}
spec:
  source: {bindingRef: erp, entity: A_SalesOrderItem, syncMode: FullRefresh}
  target: {bindingRef: forecasting, entity: /v1/sales}
  contract: {name: sales-order-lines}
  scaling: {minReplicas: 1, maxReplicas: 3, lagPerReplica: 500}
  sla: {freshness: 15m, maxErrorRatio: 0.05, maxDeadLetters: 10}
  alerting: {labels: {team: demand-planning}}
  observability: {freshnessBy: {field: location, maxValues: 10}}
  # Approval routing makes it a proposals flow: FlowplaneReviewAged, and failed posts are
  # critical.
  approval:
    valueField: orderedQuantity
    baselineField: netAmount
    rules: [{belowPercent: 5, action: Apply}, {belowPercent: 20, action: Review}]
    otherwise: Review
    reviewTimeout: 1h
"#,
    )
    .unwrap()
}

/// The example sales-order-lines contract: sla.freshness warnAfter 30m, errorAfter 2h, and two
/// quality rules with action Alert.
fn contract() -> ResolvedContract {
    support::example_contract("sales-order-lines.yaml")
}

/// The same contract without an SLA and without Alert rules.
fn plain_contract() -> ResolvedContract {
    let mut c = contract();
    c.sla = None;
    c.quality
        .retain(|q| q.action != flowplane::api::data_contract::QualityAction::Alert);
    c
}

fn rule_groups(flow: &IntegrationFlow) -> Vec<RuleGroup> {
    flowplane::render::alerts::rule_groups(flow, &contract())
}

/// Series of the flow, and the same series of another flow (never matched).
fn series(name: &str, values: &str) -> String {
    format!(
        "      - series: '{name}{{namespace=\"eu\",flow=\"orders\"}}'\n        values: '{values}'\n      - series: '{name}{{namespace=\"eu\",flow=\"other\"}}'\n        values: '{values}'\n"
    )
}

/// The per-location freshness of the flow (and of another flow, never matched).
fn key_series(key: &str, values: &str) -> String {
    let name = "flowplane_worker_key_last_success_timestamp_seconds";
    format!(
        "      - series: '{name}{{namespace=\"eu\",flow=\"orders\",key_field=\"location\",key=\"{key}\"}}'\n        values: '{values}'\n      - series: '{name}{{namespace=\"eu\",flow=\"other\",key_field=\"location\",key=\"{key}\"}}'\n        values: '{values}'\n"
    )
}

/// Failed deliveries of the flow to `target`.
fn target_series(target: &str, values: &str) -> String {
    format!(
        "      - series: 'flowplane_worker_records_delivery_failed_total{{namespace=\"eu\",flow=\"orders\",target=\"{target}\"}}'\n        values: '{values}'\n"
    )
}

fn alert(name: &str, at: &str, firing: bool, severity: &str, extra_labels: &str) -> String {
    let rule = rule_groups(&flow())[0]
        .rules
        .iter()
        .find(|r| r.alert == name)
        .cloned()
        .unwrap();
    // Prometheus expands `{{ $labels.x }}` in annotations: from the alert's own labels.
    let mut annotations = serde_json::to_string(&rule.annotations).unwrap();
    for pair in extra_labels.split(", ").filter(|p| !p.is_empty()) {
        if let Some((name, value)) = pair.split_once(": ") {
            annotations = annotations.replace(&format!("{{{{ $labels.{name} }}}}"), value);
        }
    }
    let exp = if firing {
        format!(
            "        exp_alerts:\n          - exp_labels: {{alertname: {name}, namespace: eu, flow: orders, team: demand-planning, severity: {severity}{extra_labels}}}\n            exp_annotations: {annotations}\n"
        )
    } else {
        "        exp_alerts: []\n".to_string()
    };
    format!("      - eval_time: {at}\n        alertname: {name}\n{exp}")
}

fn test_case(series: String, alerts: String) -> String {
    format!("  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{alerts}")
}

fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(support::tool("promtool"))
        .args(args)
        .output()
        .expect("promtool (installed by scripts/install-tools.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn generated_rules_pass_promtool_check_and_fire_when_they_should() {
    let dir = std::env::temp_dir().join(format!("flowplane-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, rule_file(&rule_groups(&flow()))).unwrap();
    let checked = run_promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 15 rules found"), "{checked}");
    let plain = dir.join("plain.yaml");
    std::fs::write(
        &plain,
        rule_file(&flowplane::render::alerts::rule_groups(
            &flow(),
            &plain_contract(),
        )),
    )
    .unwrap();
    let checked = run_promtool(&["check", "rules", plain.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");

    let cases = vec![
    // Stale: the last success stays at 1m while time passes; fresh: it follows time.
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "60x40"),
        alert("FlowplaneFlowStale", "10m", false, "critical", "")
            + &alert("FlowplaneFlowStale", "25m", true, "critical", ""),
    ),
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "0+60x40"),
        alert("FlowplaneFlowStale", "35m", false, "critical", ""),
    ),
    // A quiet flow whose last delivery was at 5m, its worker replaced at 12m (no series for a
    // minute, then a new worker): the new worker reports the recorded 5m, not 0, so nothing
    // fires before the 15m SLA runs out (at 20m, plus the rule's 1m).
    test_case(
        series(
            "flowplane_worker_last_success_timestamp_seconds",
            "0 0 0 0 0 300 300 300 300 300 300 300 _ 300x20",
        ),
        alert("FlowplaneFlowStale", "19m", false, "critical", "")
            + &alert("FlowplaneFlowStale", "22m", true, "critical", ""),
    ),
    // A flow that has never delivered exports 0: no freshness alert (status says NoDataYet).
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "0x200"),
        alert("FlowplaneFlowStale", "180m", false, "critical", "")
            + &alert("FlowplaneContractFreshnessBreached", "180m", false, "critical", ""),
    ),
    // ... but says so once the workers reported nothing for the 15m SLA; one delivery clears it.
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "0x40"),
        alert("FlowplaneFlowNoData", "10m", false, "warning", "")
            + &alert("FlowplaneFlowNoData", "20m", true, "warning", ""),
    ),
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "0 0 0 180x40"),
        alert("FlowplaneFlowNoData", "25m", false, "warning", ""),
    ),
    // The contract's freshness: warning after 30m, critical after 2h (delivered at 1m).
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "60x200"),
        alert("FlowplaneContractFreshnessWarning", "30m", false, "warning", "")
            + &alert("FlowplaneContractFreshnessWarning", "33m", true, "warning", "")
            + &alert("FlowplaneContractFreshnessBreached", "100m", false, "critical", "")
            + &alert("FlowplaneContractFreshnessBreached", "124m", true, "critical", ""),
    ),
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "0+60x200"),
        alert("FlowplaneContractFreshnessWarning", "150m", false, "warning", "")
            + &alert("FlowplaneContractFreshnessBreached", "150m", false, "critical", ""),
    ),
    // Quality rules with action Alert: violations in the last 15 minutes fire; none stay silent,
    // and old ones stop firing.
    test_case(
        series("flowplane_worker_quality_alerts_total", "0 0 0 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2"),
        alert("FlowplaneQualityAlert", "5m", true, "warning", "")
            + &alert("FlowplaneQualityAlert", "25m", false, "warning", ""),
    ),
    test_case(
        series("flowplane_worker_quality_alerts_total", "0x30"),
        alert("FlowplaneQualityAlert", "20m", false, "warning", ""),
    ),
    // Error ratio 10% > 5%; 1% stays silent.
    test_case(
        series("flowplane_worker_records_read_total", "0+100x60")
            + &series("flowplane_worker_records_dead_lettered_total", "0+10x60"),
        alert("FlowplaneErrorRatioHigh", "40m", true, "warning", ""),
    ),
    test_case(
        series("flowplane_worker_records_read_total", "0+100x60")
            + &series("flowplane_worker_records_dead_lettered_total", "0+1x60"),
        alert("FlowplaneErrorRatioHigh", "40m", false, "warning", "")
            + &alert("FlowplaneDeadLetters", "40m", true, "warning", ""),
    ),
    // Dead letters: 10 allowed, 5 silent.
    test_case(
        series(
            "flowplane_worker_records_dead_lettered_total",
            "0 0 0 0 0 5 5 5 5 5 5 5 5 5 5 5 5 5",
        ),
        alert("FlowplaneDeadLetters", "15m", false, "warning", ""),
    ),
    // The oldest dead letter (dead-lettered at 2m) outlives the 15m freshness SLA; an empty
    // dead-letter stream (0) or a redrive that took it back at 10m stays silent.
    test_case(
        series("flowplane_worker_oldest_dead_letter_timestamp_seconds", "0 0 120x40"),
        alert("FlowplaneDeadLetterAged", "16m", false, "warning", "")
            + &alert("FlowplaneDeadLetterAged", "19m", true, "warning", ""),
    ),
    test_case(
        series(
            "flowplane_worker_oldest_dead_letter_timestamp_seconds",
            "0 0 120 120 120 120 120 120 120 120 0x30",
        ),
        alert("FlowplaneDeadLetterAged", "25m", false, "warning", ""),
    ),
    // Lag above what 3 workers absorb (1500) and growing; high but shrinking stays silent.
    test_case(
        series("flowplane_worker_lag_records", "2000+100x60"),
        alert("FlowplaneLagGrowing", "45m", true, "warning", ""),
    ),
    test_case(
        series("flowplane_worker_lag_records", "8000-100x60"),
        alert("FlowplaneLagGrowing", "45m", false, "warning", ""),
    ),
    // Retries with nothing delivered (an outage) fire within the rule's minute; retries while
    // records still arrive, or a quiet flow, stay silent.
    test_case(
        series("flowplane_worker_records_retried_total", "0 0 0 0 0 4+4x20")
            + &series("flowplane_worker_records_delivered_total", "0+100x5 500x20"),
        alert("FlowplaneFlowFailing", "5m", false, "critical", "")
            + &alert("FlowplaneFlowFailing", "8m", true, "critical", ""),
    ),
    test_case(
        series("flowplane_worker_records_retried_total", "0+4x25")
            + &series("flowplane_worker_records_delivered_total", "0+100x25"),
        alert("FlowplaneFlowFailing", "20m", false, "critical", ""),
    ),
    test_case(
        series("flowplane_worker_records_retried_total", "3x25")
            + &series("flowplane_worker_records_delivered_total", "500x25"),
        alert("FlowplaneFlowFailing", "20m", false, "critical", ""),
    ),
    // Throttling for 15 minutes.
    test_case(
        series("flowplane_worker_requests_throttled_total", "0+3x60"),
        alert("FlowplaneThrottled", "30m", true, "info", ""),
    ),
    test_case(
        series("flowplane_worker_requests_throttled_total", "7x60"),
        alert("FlowplaneThrottled", "30m", false, "info", ""),
    ),
    // Freshness per location: DC-WEST delivered last at 1m while DC-NORTH and the flow keep
    // delivering: FlowplaneKeyStale for DC-WEST alone, past the 15m SLA plus 1m. `_other`
    // (values that are no declared code, or past the cap) never fires.
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "0+60x40")
            + &key_series("DC-NORTH", "0+60x40")
            + &key_series("DC-WEST", "60x40")
            + &key_series("_other", "60x40"),
        alert("FlowplaneKeyStale", "15m", false, "critical", "")
            + &alert(
                "FlowplaneKeyStale",
                "20m",
                true,
                "critical",
                ", key_field: location, key: DC-WEST",
            ),
    ),
    // The whole flow stale: FlowplaneFlowStale says so, not one FlowplaneKeyStale per value.
    test_case(
        series("flowplane_worker_last_success_timestamp_seconds", "60x40")
            + &key_series("DC-WEST", "60x40"),
        alert("FlowplaneKeyStale", "30m", false, "critical", "")
            + &alert("FlowplaneFlowStale", "30m", true, "critical", ""),
    ),
    // The oldest pending review (parked at 2m) outlives half the 1h review timeout; none
    // pending (0) stays silent.
    test_case(
        series("flowplane_worker_oldest_pending_review_timestamp_seconds", "0 0 120x60"),
        alert("FlowplaneReviewAged", "31m", false, "warning", "")
            + &alert("FlowplaneReviewAged", "34m", true, "warning", ""),
    ),
    test_case(
        series("flowplane_worker_oldest_pending_review_timestamp_seconds", "0x60"),
        alert("FlowplaneReviewAged", "50m", false, "warning", ""),
    ),
    // A replenishment proposal that failed to post (dead-lettered at delivery): critical in a
    // proposals flow, for 15 minutes; none stays silent.
    test_case(
        target_series("target", "0 0 0 1x30"),
        alert("FlowplaneDeliveryFailed", "5m", true, "critical", ", target: target")
            + &alert("FlowplaneDeliveryFailed", "25m", false, "critical", ""),
    ),
    test_case(
        target_series("target", "0x30"),
        alert("FlowplaneDeliveryFailed", "20m", false, "critical", ""),
    ),
    // Workers down: no `up` series of the workers' Service; up=1 keeps it silent.
    test_case(
        "      - series: 'up{namespace=\"eu\",service=\"other-worker\"}'\n        values: '1x30'\n"
            .to_string(),
        alert("FlowplaneWorkersDown", "20m", true, "critical", ""),
    ),
    test_case(
        "      - series: 'up{namespace=\"eu\",service=\"orders-worker\"}'\n        values: '1x30'\n".to_string(),
        alert("FlowplaneWorkersDown", "20m", false, "critical", ""),
    ),
    ];
    let tests = dir.join("tests.yaml");
    std::fs::write(
        &tests,
        format!(
            "rule_files: [rules.yaml]\nevaluation_interval: 1m\ntests:\n{}",
            cases.join("")
        ),
    )
    .unwrap();
    let tested = run_promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The most hostile `alerting.labels` admission lets through: every name shape the CEL rules
/// allow, values at the length limit and full of quotes, backslashes, percent verbs, YAML and
/// PromQL punctuation and non-ASCII text.
fn hostile_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("_".to_string(), String::new()),
        ("a".repeat(128), "x".repeat(128)),
        (
            "quotes".to_string(),
            r#""double" 'single' `back` \ \\ \n"#.to_string(),
        ),
        (
            "punctuation".to_string(),
            "a: b, c=d; e|f > g # h & i * j ! k % l %s %!v @ [x] (y) <z>".to_string(),
        ),
        (
            "promql".to_string(),
            "sum(up[5m]) or vector(1) == 1".to_string(),
        ),
        ("unicode".to_string(), "Zürich – 東京 ✓".to_string()),
        ("Team_2".to_string(), "--- \n".trim_end().to_string()),
    ])
}

#[test]
fn hostile_labels_that_admission_accepts_still_load_in_prometheus_verbatim() {
    let mut flow = flow();
    flow.spec.alerting = Some(Alerting {
        labels: hostile_labels(),
    });
    // Admission: the CEL rules (offline, as kube-cel evaluates them) and the value pattern.
    flow.validate_cel()
        .unwrap_or_else(|e| panic!("admission's CEL rules refuse the labels: {e}"));
    let value = regex::Regex::new(ALERT_LABEL_VALUE_PATTERN).unwrap();
    for (name, v) in hostile_labels() {
        assert!(value.is_match(&v), "{name}={v:?} fails the value pattern");
    }

    let dir = std::env::temp_dir().join(format!("flowplane-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, rule_file(&rule_groups(&flow))).unwrap();
    let checked = run_promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 15 rules found"), "{checked}");

    // Prometheus expands templates in alert labels: the firing alert carries every value
    // exactly as written, and the flow's own labels.
    let mut expected: BTreeMap<String, String> = hostile_labels()
        .into_iter()
        .filter(|(_, v)| !v.is_empty()) // an empty label value is no label in Prometheus
        .collect();
    for (k, v) in [
        ("alertname", "FlowplaneThrottled"),
        ("namespace", "eu"),
        ("flow", "orders"),
        ("severity", "info"),
    ] {
        expected.insert(k.to_string(), v.to_string());
    }
    let rule = rule_groups(&flow)[0]
        .rules
        .iter()
        .find(|r| r.alert == "FlowplaneThrottled")
        .cloned()
        .unwrap();
    let tests = serde_json::json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{
                "series": r#"flowplane_worker_requests_throttled_total{namespace="eu",flow="orders"}"#,
                "values": "0+3x60",
            }],
            "alert_rule_test": [{
                "eval_time": "30m",
                "alertname": "FlowplaneThrottled",
                "exp_alerts": [{"exp_labels": expected, "exp_annotations": rule.annotations}],
            }],
        }],
    });
    let file = dir.join("tests.yaml");
    std::fs::write(&file, serde_yaml::to_string(&tests).unwrap()).unwrap();
    let tested = run_promtool(&["test", "rules", file.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_flows_own_labels_win_even_where_admission_was_bypassed() {
    let mut flow = flow();
    flow.spec.alerting = Some(Alerting {
        labels: BTreeMap::from([
            ("namespace".to_string(), "payments".to_string()),
            ("flow".to_string(), "ledger".to_string()),
            ("severity".to_string(), "none".to_string()),
            ("alertname".to_string(), "Other".to_string()),
            ("team".to_string(), "demand-planning".to_string()),
        ]),
    });
    assert!(flow.validate_cel().is_err(), "admission refuses them");
    for rule in &rule_groups(&flow)[0].rules {
        assert_eq!(rule.labels["namespace"], "eu", "{}", rule.alert);
        assert_eq!(rule.labels["flow"], "orders", "{}", rule.alert);
        assert_ne!(rule.labels["severity"], "none", "{}", rule.alert);
        assert!(!rule.labels.contains_key("alertname"), "{}", rule.alert);
        assert_eq!(rule.labels["team"], "demand-planning", "{}", rule.alert);
    }
}
