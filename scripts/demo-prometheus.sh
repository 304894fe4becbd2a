#!/usr/bin/env bash
# The demo's side of the local environment's Prometheus (scripts/local-env.sh,
# docs/observability.md): what it scrapes and which rules it evaluates. Needs the variables of
# the local environment's env file (PROMETHEUS_URL, FLOWPLANE_PROMETHEUS_TARGETS,
# FLOWPLANE_PROMETHEUS_RULES) and kubectl.
#
#   demo-prometheus.sh target NAME HOST:PORT [LABEL=VALUE...]
#                                   scrape HOST:PORT's /metrics (file demo-NAME.json)
#   demo-prometheus.sh pods NAMESPACE...
#                                   scrape the running pods' metrics ports at their pod IPs
#                                   (--real-node: the pods sit on the node's bridge, which this
#                                   host is on); one file per namespace, rewritten each call, so
#                                   replaced pods drop out and new ones come in
#   demo-prometheus.sh rules NAMESPACE
#                                   the flows' rule files from the ConfigMaps the operator
#                                   rendered (label prometheus_rule=1); reloads Prometheus when
#                                   one changed
#   demo-prometheus.sh alerts       how many rule groups and targets are up, then the pending
#                                   and firing alerts, one line each
#   demo-prometheus.sh clean        remove the demo's targets and rule files
set -euo pipefail
: "${PROMETHEUS_URL:?source the env file of scripts/local-env.sh}"
targets="${FLOWPLANE_PROMETHEUS_TARGETS:?}" rules="${FLOWPLANE_PROMETHEUS_RULES:?}"

case "${1:-}" in
target)
  name="$2" address="$3"
  shift 3
  # file_sd: Prometheus watches the directory; written in one step.
  python3 - "$address" "$@" >"$targets/.demo-$name.json.tmp" <<'PY'
import json, sys
labels = dict(arg.split("=", 1) for arg in sys.argv[2:])
print(json.dumps([{"targets": [sys.argv[1]], "labels": labels}]))
PY
  mv "$targets/.demo-$name.json.tmp" "$targets/demo-$name.json"
  ;;
pods)
  shift
  read -r -d '' pod_targets <<'PY' || true
import json, sys
groups = []
for pod in json.load(sys.stdin)["items"]:
    ip = pod.get("status", {}).get("podIP")
    if not ip or pod.get("status", {}).get("phase") != "Running":
        continue
    labels = pod["metadata"].get("labels", {})
    for container in pod["spec"]["containers"]:
        for port in container.get("ports", []):
            # Workers serve /metrics on "metrics", the operator on "http".
            if port.get("name") not in ("metrics", "http"):
                continue
            target = {"namespace": pod["metadata"]["namespace"], "pod": pod["metadata"]["name"]}
            flow = labels.get("flowplane.io/flow")
            if flow:
                # As the Prometheus Operator labels a ServiceMonitor's targets (FlowplaneWorkersDown).
                target["service"] = flow + "-worker"
            else:
                target["component"] = labels.get("app.kubernetes.io/component", "operator")
            groups.append({"targets": ["%s:%d" % (ip, port["containerPort"])], "labels": target})
print(json.dumps(groups))
PY
  for namespace in "$@"; do
    kubectl get pods -n "$namespace" -o json | python3 -c "$pod_targets" >"$targets/.demo-pods-$namespace.json.tmp"
    mv "$targets/.demo-pods-$namespace.json.tmp" "$targets/demo-pods-$namespace.json"
  done
  ;;
rules)
  read -r -d '' write_rules <<'PY' || true
import json, os, sys
rules, namespace = sys.argv[1], sys.argv[2]
changed = 0
for cm in json.load(sys.stdin)["items"]:
    text = (cm.get("data") or {}).get("flowplane-rules.yaml")
    if text is None:
        continue
    path = os.path.join(rules, "demo-" + namespace + "-" + cm["metadata"]["name"] + ".yaml")
    if os.path.exists(path) and open(path).read() == text:
        continue
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    changed += 1
print(changed)
PY
  changed=$(kubectl get configmaps -n "$2" -l prometheus_rule=1 -o json | python3 -c "$write_rules" "$rules" "$2")
  if [ "$changed" != 0 ]; then curl -sf -X POST "$PROMETHEUS_URL/-/reload" >/dev/null; fi
  ;;
alerts)
  read -r -d '' summary <<'PY' || true
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"]
for a in sorted(alerts, key=lambda a: (a["labels"].get("flow", ""), a["labels"]["alertname"])):
    labels, state, since = a["labels"], a["state"], a.get("activeAt", "")[:19]
    name, where = labels["alertname"], labels.get("namespace", "") + "/" + labels.get("flow", "")
    print(f"{state:8} {name:36} {where} since {since}")
if not alerts:
    print("none pending or firing")
PY
  read -r -d '' scraped <<'PY' || true
import json, sys
targets = json.loads(sys.argv[1])["data"]["activeTargets"]
groups = json.loads(sys.argv[2])["data"]["groups"]
up = sum(1 for t in targets if t["health"] == "up")
print(f"{len(groups)} rule groups loaded, {up} of {len(targets)} targets up")
PY
  python3 -c "$scraped" "$(curl -sf "$PROMETHEUS_URL/api/v1/targets")" "$(curl -sf "$PROMETHEUS_URL/api/v1/rules")"
  curl -sf "$PROMETHEUS_URL/api/v1/alerts" | python3 -c "$summary"
  ;;
clean)
  rm -f "$targets"/demo-*.json "$rules"/demo-*.yaml
  curl -sf -X POST "$PROMETHEUS_URL/-/reload" >/dev/null || true
  ;;
*)
  echo "usage: $0 target NAME HOST:PORT [LABEL=VALUE...] | pods NAMESPACE... | rules NAMESPACE | alerts | clean" >&2
  exit 2
  ;;
esac
