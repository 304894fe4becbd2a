#!/usr/bin/env python3
"""Generates flowplane-dashboard.json (kept in git) and its copy in the Helm chart.

Run: python3 deploy/grafana/generate.py   (tests/chart.rs fails when the two copies differ)
"""
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
SEL = 'namespace=~"$namespace", flow=~"$flow"'
DS = {"type": "prometheus", "uid": "${datasource}"}

panels = []
next_id = 1


def row(title, y):
    global next_id
    panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    next_id += 1


def ts(title, targets, unit, x, y, w=12, h=8, description=""):
    global next_id
    panels.append({
        "type": "timeseries", "title": title, "id": next_id, "datasource": DS,
        "description": description,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)],
    })
    next_id += 1


row("Flows: freshness and lag", 0)
ts("Freshness (seconds since the last delivered batch)",
   [(f"time() - max by (namespace, flow) (flowplane_worker_last_success_timestamp_seconds{{{SEL}}})",
     "{{namespace}}/{{flow}}")], "s", 0, 1,
   description="FlowplaneFlowStale fires when this exceeds the flow's spec.sla.freshness for a quarter of it (1m at most); the contract's warnAfter/errorAfter fire their own alerts. The workers report their flow's last delivery from its progress record, so a restart does not reset it.")
ts("Consumer lag (records waiting)",
   [(f"max by (namespace, flow) (flowplane_worker_lag_records{{{SEL}}})", "{{namespace}}/{{flow}}")],
   "short", 12, 1, description="Drives KEDA/HPA scaling; FlowplaneLagGrowing fires when it keeps growing past what maxReplicas absorbs.")
row("Flows: throughput and failures", 9)
ts("Records read / delivered / duplicate per second",
   [(f"sum by (namespace, flow) (rate(flowplane_worker_records_read_total{{{SEL}}}[5m]))",
     "read {{namespace}}/{{flow}}"),
    (f"sum by (namespace, flow) (rate(flowplane_worker_records_delivered_total{{{SEL}}}[5m]))",
     "delivered {{namespace}}/{{flow}}"),
    (f"sum by (namespace, flow) (rate(flowplane_worker_records_duplicate_total{{{SEL}}}[5m]))",
     "duplicate {{namespace}}/{{flow}}")], "rps", 0, 10,
   description="Duplicates: records the flow's stream already held (same Nats-Msg-Id). Growing with an event flow's traffic means events taken for earlier ones; see docs/operations.md.")
ts("Dead letters by reason (per hour)",
   [(f"sum by (namespace, flow, reason) (increase(flowplane_worker_records_dead_lettered_total{{{SEL}}}[1h]))",
     "{{namespace}}/{{flow}} {{reason}}")], "short", 12, 10,
   description="Inspect with `flowplane dlq list`; after fixing the cause annotate the flow with flowplane.io/redrive.")
ts("Error ratio (dead-lettered / read, 15m)",
   [(f"sum by (namespace, flow) (rate(flowplane_worker_records_dead_lettered_total{{{SEL}}}[15m])) / "
     f"clamp_min(sum by (namespace, flow) (rate(flowplane_worker_records_read_total{{{SEL}}}[15m])), 1e-9)",
     "{{namespace}}/{{flow}}")], "percentunit", 0, 18, w=8)
ts("Retries per second",
   [(f"sum by (namespace, flow) (rate(flowplane_worker_records_retried_total{{{SEL}}}[5m]))",
     "{{namespace}}/{{flow}}")], "ops", 8, 18, w=8)
ts("Throttled requests per second (rate limit, HTTP 429)",
   [(f"sum by (namespace, flow) (rate(flowplane_worker_requests_throttled_total{{{SEL}}}[5m]))",
     "{{namespace}}/{{flow}}")], "ops", 16, 18, w=8)
ts("Batch latency (map, validate, deliver)",
   [(f"histogram_quantile(0.5, sum by (namespace, flow, le) (rate(flowplane_worker_batch_latency_seconds_bucket{{{SEL}}}[5m])))",
     "p50 {{namespace}}/{{flow}}"),
    (f"histogram_quantile(0.95, sum by (namespace, flow, le) (rate(flowplane_worker_batch_latency_seconds_bucket{{{SEL}}}[5m])))",
     "p95 {{namespace}}/{{flow}}")], "s", 0, 26, w=24)
row("Flows: per location, exceptions and latency", 34)
ts("Freshness per key (seconds since the last delivery of each value)",
   [(f'time() - max by (namespace, flow, key_field, key) (flowplane_worker_key_last_success_timestamp_seconds{{{SEL},key!="_other"}})',
     "{{namespace}}/{{flow}} {{key_field}}={{key}}")], "s", 0, 35,
   description="Flows with spec.observability.freshnessBy: one line per declared code (e.g. per location). FlowplaneKeyStale fires for a value past the flow's sla.freshness while the flow is fresh.")
ts("End-to-end latency (source change -> target)",
   [(f"histogram_quantile(0.5, sum by (namespace, flow, since, le) (rate(flowplane_worker_end_to_end_latency_seconds_bucket{{{SEL}}}[5m])))",
     "p50 {{namespace}}/{{flow}} ({{since}})"),
    (f"histogram_quantile(0.99, sum by (namespace, flow, since, le) (rate(flowplane_worker_end_to_end_latency_seconds_bucket{{{SEL}}}[5m])))",
     "p99 {{namespace}}/{{flow}} ({{since}})")], "s", 12, 35,
   description="since=change: from the record's change timestamp at the source; since=read: from when the extractor read it (the source has no change time). docs/observability.md.")
ts("Oldest pending review (seconds waiting for a planner)",
   [(f"time() - min by (namespace, flow) (flowplane_worker_oldest_pending_review_timestamp_seconds{{{SEL}}} > 0)",
     "{{namespace}}/{{flow}}")], "s", 0, 43,
   description="FlowplaneReviewAged fires past half the flow's approval.reviewTimeout.")
ts("Failed posts per hour (records a target refused for good)",
   [(f"sum by (namespace, flow, target) (increase(flowplane_worker_records_delivery_failed_total{{{SEL}}}[1h]))",
     "{{namespace}}/{{flow}} {{target}}")], "short", 12, 43,
   description="In a forecast -> ERP flow: replenishment proposals that did not post. FlowplaneDeliveryFailed.")
row("Operator", 51)
ts("Reconciles per second by kind",
   [("sum by (kind) (rate(flowplane_operator_reconciles_total[5m]))", "{{kind}}")], "ops", 0, 52, w=8)
ts("Reconcile errors per second by kind and class",
   [("sum by (kind, error) (rate(flowplane_operator_reconcile_errors_total[5m]))", "{{kind}} {{error}}")],
   "ops", 8, 52, w=8)
ts("Reconcile duration p95 by kind",
   [("histogram_quantile(0.95, sum by (kind, le) (rate(flowplane_operator_reconcile_duration_seconds_bucket[5m])))",
     "{{kind}}")], "s", 16, 52, w=8)


def var(name, query):
    return {"name": name, "label": name, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


dashboard = {
    "uid": "flowplane",
    "title": "flowplane",
    "description": "Per-flow freshness, lag, throughput, dead letters, retries and throttling of flowplane sync workers, freshness per location, pending reviews, failed posts and end-to-end latency, and the operator's own health.",
    "tags": ["flowplane", "kubernetes", "integration"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        var("namespace", "label_values(flowplane_worker_records_read_total, namespace)"),
        var("flow", 'label_values(flowplane_worker_records_read_total{namespace=~"$namespace"}, flow)'),
    ]},
    "annotations": {"list": []},
    "links": [],
    "panels": panels,
}

text = json.dumps(dashboard, indent=2) + "\n"
(HERE / "flowplane-dashboard.json").write_text(text)
(HERE.parent.parent / "charts/flowplane/dashboards/flowplane-dashboard.json").write_text(text)
