#!/usr/bin/env bash
# The main job, on this machine, end to end:
#   builds flowplane, starts a local control plane (scripts/local-env.sh), NATS, the ERP,
#   forecasting and supplier-portal simulators, installs the CRDs, starts the operator, applies
#   the five example flows
#   (examples/overlays/demo: the EU overlay with its systems replaced by the simulators), runs
#   each flow's worker as a local process from the configuration the operator rendered, plays
#   the warehouse, the ERP and the forecasting platform (events, new order lines, replenishment
#   proposals) and a planner approving reviews, and shows the flows becoming Ready and Fresh,
#   the records arriving and the loop's counts; on the local environment its Prometheus scrapes
#   the operator and the workers and evaluates the rules the operator rendered, and the demo
#   shows the pending and firing alerts (scripts/demo-prometheus.sh). Ctrl-C stops everything
#   it started.
#
#   scripts/demo.sh                       local control plane (started, and stopped on exit)
#   scripts/demo.sh --kubeconfig PATH     an existing cluster instead (kind, minikube, ...)
#   scripts/demo.sh --use-current-context the cluster of your current kubectl context
#   scripts/demo.sh --check [--timeout S] exit 0 once every flow is Ready and Fresh and records
#                                         arrived, 1 after S seconds (default 240); then stop
#   scripts/demo.sh --serve FILE          run until stopped; once every flow is Ready and Fresh
#                                         and records arrived, write FILE (shell assignments:
#                                         the simulators', NATS's and Prometheus's URLs, the run
#                                         directory) for scripts/scenario.sh
#   scripts/demo.sh --overlay DIR         apply DIR instead of examples/overlays/demo
#   scripts/demo.sh --no-planner          no stand-in planner approving reviews
#   scripts/demo.sh --clean-data          no bad records: no bad order lines, and the 19 first
#                                         replenishment proposals only (the 20th names a
#                                         location no code map knows), no planning runs after
#   scripts/demo.sh --real-node           the operator and the workers as real pods: a local
#                                         environment with a kubelet (local-env.sh up --with-node,
#                                         root, one node per machine), the image of
#                                         scripts/build-image.sh, the chart installed with it, the
#                                         flows in a restricted namespace (docs/real-node.md)
#
# There is no kubelet on the local control plane, so worker pods are never started there: the
# workers run here as processes. The demo's "kubelet stand-in" binds each flow's worker pods to
# a node named flowplane-demo-node and reports them Ready exactly while that flow's local worker
# answers /readyz, so the Deployment's availability (WorkersAvailable) follows the real worker.
# It only does so on a cluster without other nodes; on a real cluster the kubelet decides, and
# the worker pods it starts (image --worker-image, default ghcr.io/flowplane/flowplane:0.1.0)
# cannot reach this machine's loopback NATS and simulators, so there the flows report
# WorkersAvailable=False while the data moves through the local workers (not verified on a real
# cluster here: only on an existing local control plane).
#
# Environment: FLOWPLANE_BIN (a built flowplane binary; skips cargo build), FLOWPLANE_ENV_NAME /
# FLOWPLANE_STATE (which local environment, see scripts/local-env.sh), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

kubeconfig="" current_context=false check=false timeout=240 real_node=false
serve="" overlay=examples/overlays/demo planner=true bad_every=100 proposals=40
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve="$(realpath "$2")"; shift 2 ;;
    --overlay) overlay="$2"; shift 2 ;;
    --no-planner) planner=false; shift ;;
    --clean-data) bad_every=0 proposals=19; shift ;;
    --kubeconfig) kubeconfig="$(realpath "$2")"; shift 2 ;;
    --use-current-context) current_context=true; shift ;;
    --check) check=true; shift ;;
    --real-node) real_node=true; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

export FLOWPLANE_CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
if $real_node; then
  if [ -n "$kubeconfig" ] || $current_context; then echo "--real-node runs its own cluster" >&2; exit 2; fi
  # An environment of its own beside the default one (which `up --with-node` would restart).
  export FLOWPLANE_STATE="${FLOWPLANE_STATE:-$FLOWPLANE_CACHE/run/${FLOWPLANE_ENV_NAME:-default}}-node"
fi
BIN="${FLOWPLANE_TOOLS:-$FLOWPLANE_CACHE/bin}"
NS=flowplane-eu
ENTITIES=(sales-history inventory-positions returns)
say() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- everything this run starts is recorded here and stopped on exit ---------------------------
run_dir="$(mktemp -d "${TMPDIR:-/tmp}/flowplane-demo.XXXXXX")"
chmod 700 "$run_dir"
pids=() names=()
stop_env=false
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  say "stopping what the demo started"
  # Newest first (workers before the NATS server and the simulators they talk to).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -9 "${pids[$i]}" 2>/dev/null; then say "${names[$i]} did not stop within 5s; killed"; fi
  done
  [ -n "${PROMETHEUS_URL:-}" ] && { scripts/demo-prometheus.sh clean || true; }
  if $stop_env; then scripts/local-env.sh down >/dev/null 2>&1 || true; fi
  rm -rf "$run_dir" # worker configs and the demo Secrets' files
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
background() { # name, command... ; logs to $run_dir/name.log
  local name="$1"; shift
  "$@" >"$run_dir/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
  disown $! # no job-control chatter; cleanup() stops it
}

# --- build ---------------------------------------------------------------------------------------
if [ -n "${FLOWPLANE_BIN:-}" ]; then
  flowplane="$FLOWPLANE_BIN"
else
  say "building flowplane (cargo build)"
  cargo build --locked --quiet --bin flowplane
  flowplane="${CARGO_TARGET_DIR:-$root/target}/debug/flowplane"
fi

# --- cluster and NATS ----------------------------------------------------------------------------
if [ -n "$kubeconfig" ] || $current_context; then
  [ -n "$kubeconfig" ] && export KUBECONFIG="$kubeconfig"
  [ -x "$BIN/nats-server" ] || scripts/install-tools.sh
  command -v kubectl >/dev/null || export PATH="$BIN:$PATH"
  kubectl get --raw /version >/dev/null || { say "cannot reach the cluster (kubectl get --raw /version failed)"; exit 1; }
  say "using the cluster of kubectl context $(kubectl config current-context)"
else
  if ! scripts/local-env.sh env >/dev/null 2>&1; then stop_env=true; fi
  if $real_node; then
    say "starting the local control plane with a node (scripts/local-env.sh up --with-node; builds the image)"
    env_file="$(scripts/local-env.sh up --with-node)"
  else
    say "starting the local control plane (scripts/local-env.sh up; a cold first run builds it)"
    env_file="$(scripts/local-env.sh up)"
  fi
  # shellcheck disable=SC1090
  . "$env_file"
fi
# Where NATS and the simulators listen: loopback, or the node's bridge address (the one
# address pods reach).
host=127.0.0.1
$real_node && host="$FLOWPLANE_NODE_IP"
# The demo's NATS below runs without authentication (its traffic player speaks plain NATS), so
# its operator issues no NATS users; the local environment's own NATS requires them.
unset FLOWPLANE_NATS_SIGNER_DIR FLOWPLANE_NATS_CA NATS_CREDS NATS_CA
# A NATS server of the demo's own, so every run starts with empty queues and cursors (the
# simulators start from scratch too).
nats_port=$(free_port) nats_mon=$(free_port)
NATS_URL="nats://$host:$nats_port" NATS_MONITOR_URL="http://$host:$nats_mon"
background nats-server "$BIN/nats-server" -js -a "$host" -p "$nats_port" -m "$nats_mon" -sd "$run_dir/jetstream"
for _ in $(seq 100); do curl -sf "$NATS_MONITOR_URL/healthz" >/dev/null && break; sleep 0.1; done
say "NATS with JetStream on $NATS_URL"

# --- simulators ----------------------------------------------------------------------------------
erp_port=$(free_port) forecast_port=$(free_port) portal_port=$(free_port)
ERP_URL="http://$host:$erp_port" FORECAST_URL="http://$host:$forecast_port" PORTAL_URL="http://$host:$portal_port"
background sim-erp "$flowplane" sim erp --listen "$host:$erp_port" --order-lines 1000 --bad-every "$bad_every"
background sim-forecast "$flowplane" sim forecast --listen "$host:$forecast_port" --proposals "$proposals"
background sim-portal "$flowplane" sim portal --listen "$host:$portal_port"
for url in "$ERP_URL/odata/\$metadata" "$FORECAST_URL/healthz" "$PORTAL_URL/status"; do
  for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
done
bad="every ${bad_every}th bad"
[ "$bad_every" = 0 ] && bad="none bad"
say "ERP simulator on $ERP_URL/odata (1,000 order lines, $bad), forecasting simulator on $FORECAST_URL ($proposals replenishment proposals), supplier portal on $PORTAL_URL"

# --- CRDs and the operator -----------------------------------------------------------------------
operator_log() {
  if $real_node; then
    kubectl logs -n flowplane-system -l app.kubernetes.io/name=flowplane --tail 20 2>&1
  else
    tail -n 20 "$run_dir/operator.log"
  fi
}
restricted_namespace() {
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply --server-side -f - >/dev/null
  kubectl label namespace "$1" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
}
if $real_node; then
  # No kube-proxy: the operator pod reaches the API server on the bridge address.
  server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  server="${server#https://}"
  image="$FLOWPLANE_IMAGE"
  cat >"$run_dir/values.yaml" <<YAML
replicaCount: 1
region: eu
image: {repository: ${image%:*}, tag: ${image##*:}, pullPolicy: Never}
nats: {url: "$NATS_URL", monitoringEndpoint: "${NATS_MONITOR_URL#http://}", queueReplicas: 1}
# The operator acts in the demo's namespace only; the simulators' health checks go to the
# node's own address, which the SSRF guard refuses unless allowed (docs/security.md).
watchNamespaces: [$NS]
ssrf: {allowCIDRs: ["$host/32"]}
resyncSeconds: 10
extraEnv:
- {name: KUBERNETES_SERVICE_HOST, value: "${server%:*}"}
- {name: KUBERNETES_SERVICE_PORT, value: "${server##*:}"}
YAML
  restricted_namespace flowplane-system
  restricted_namespace "$NS"
  say "installing the chart (helm upgrade --install, image $image) into flowplane-system"
  "$BIN/helm" upgrade --install flowplane charts/flowplane -n flowplane-system -f "$run_dir/values.yaml" \
    --wait --timeout 180s >/dev/null || { say "the operator did not become Ready:"; operator_log >&2; exit 1; }
fi
if ! $real_node; then
say "installing the CRDs (kubectl apply --server-side -f crds/)"
kubectl apply --server-side --force-conflicts --field-manager=flowplane-demo -f crds/ >/dev/null
kubectl wait --for condition=Established crd/integrationflows.flowplane.io crd/datacontracts.flowplane.io crd/connectorbindings.flowplane.io --timeout=60s >/dev/null
operator_port=$(free_port)
say "starting the operator (region eu; log: flowplane controller ... > operator.log)"
say "  with --probe-allow-cidrs 127.0.0.0/8: the simulators live on loopback, which health probes refuse by default (docs/security.md)"
background operator "$flowplane" controller --region eu --nats-url "$NATS_URL" \
  --probe-allow-cidrs 127.0.0.0/8 \
  --nats-monitoring-endpoint "${NATS_MONITOR_URL#http://}" --http-addr "127.0.0.1:$operator_port" \
  --resync-seconds 10
operator_pid=${pids[-1]}
[ -n "${PROMETHEUS_URL:-}" ] && scripts/demo-prometheus.sh target operator "127.0.0.1:$operator_port" component=operator
fi

# --- the example flows ---------------------------------------------------------------------------
# Deliveries from here on are this run's (flows_ready).
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
say "applying $overlay (the EU overlay, bindings pointed at the simulators and NATS)"
kubectl kustomize "$overlay" |
  sed -e "s#http://127.0.0.1:18081/odata#$ERP_URL/odata#" \
      -e "s#http://127.0.0.1:18082#$FORECAST_URL#" \
      -e "s#http://127.0.0.1:18083#$PORTAL_URL#" \
      -e "s#nats://127.0.0.1:14222#$NATS_URL#" |
  kubectl apply --server-side --force-conflicts --field-manager=flowplane-demo -f - >/dev/null
# Fake credentials for the demo only (their values are never printed).
kubectl apply --server-side --force-conflicts --field-manager=flowplane-demo -n "$NS" -f examples/local-secrets/ >/dev/null
flows=$(kubectl get integrationflows -n "$NS" -o jsonpath='{.items[*].metadata.name}')
say "flows: $flows"

# --- the traffic: warehouse events and new ERP order lines -----------------------------------------
# A file named orders, inventory, returns or proposals in $run_dir/paused stops that part.
mkdir -p "$run_dir/paused"
[ "$bad_every" = 0 ] && touch "$run_dir/paused/proposals"
background traffic python3 scripts/demo-helper.py traffic "$NATS_URL" "$ERP_URL" "$FORECAST_URL" "$run_dir/paused"

# --- each flow's worker, from the configuration the operator rendered -------------------------------
declare -A worker_port worker_slot worker_template
# What of a worker pod's template a new local worker must follow: its configuration, a restart
# asked for, a rotated Secret (the annotations the operator sets on the pod template).
TEMPLATE_KEY_PY='def key(meta):
    a = meta.get("annotations") or {}
    return "|".join(a.get("flowplane.io/" + k, "") for k in ("config-hash", "restarted-at", "secrets-revision"))'
start_worker() {
  local flow="$1" dir="$run_dir/workers/$1" slot="${worker_slot[$1]:-}"
  mkdir -p "$dir"
  if [ -n "$slot" ]; then # a rollout: the old worker stops first, as its pod would
    kill "${pids[$slot]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${pids[$slot]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${pids[$slot]}" 2>/dev/null || true
  fi
  # The template first, then the ConfigMap the operator applied before it.
  worker_template[$flow]=$(kubectl get deployment "$flow-worker" -n "$NS" -o json 2>/dev/null |
    template_key) || worker_template[$flow]=""
  {
    printf '{"configMap":'; kubectl get configmap "$flow-worker-config" -n "$NS" -o json
    printf ',"bindings":'; kubectl get connectorbindings -n "$NS" -o json
    printf ',"secrets":'; kubectl get secrets -n "$NS" -o json
    printf '}'
  } | python3 scripts/demo-helper.py worker-config "$dir"
  worker_port[$flow]=$(free_port)
  background "worker-$flow" "$flowplane" worker --config "$dir/worker.json" \
    --listen "127.0.0.1:${worker_port[$flow]}" --worker-id "$flow-local-0"
  if [ -n "$slot" ]; then
    pids[$slot]=${pids[-1]}
    unset 'pids[-1]' 'names[-1]'
  else
    worker_slot[$flow]=$((${#pids[@]} - 1))
  fi
  # Labelled as the Prometheus Operator labels a ServiceMonitor's targets (FlowplaneWorkersDown).
  [ -n "${PROMETHEUS_URL:-}" ] && scripts/demo-prometheus.sh target "worker-$flow" \
    "127.0.0.1:${worker_port[$flow]}" "namespace=$NS" "service=$flow-worker"
  return 0
}
template_key() { # stdin: a Deployment as JSON; prints the key of its pod template
  python3 -c "import json,sys
$TEMPLATE_KEY_PY
print(key(json.load(sys.stdin)['spec']['template'].get('metadata') or {}))"
}
# A rollout as a kubelet would carry it out: a flow whose pod template changed gets a new local
# worker from the configuration rendered for it.
follow_rollouts() {
  local flow template
  for flow in $flows; do
    template=$(kubectl get deployment "$flow-worker" -n "$NS" -o json 2>/dev/null | template_key) || continue
    [ -n "$template" ] && [ "$template" != "${worker_template[$flow]}" ] || continue
    # A worker started before its Deployment existed runs what the Deployment was made from.
    if [ -z "${worker_template[$flow]}" ]; then worker_template[$flow]=$template; continue; fi
    say "rollout of $flow: its local worker restarts with the new configuration"
    start_worker "$flow"
  done
}
rendered_for_this_run() { # the ConfigMap exists and names this run's NATS and forecasting simulator
  local config
  config=$(kubectl get configmap "$1-worker-config" -n "$NS" -o jsonpath='{.data.worker\.json}' 2>/dev/null) || return 1
  [[ "$config" == *"$NATS_URL"* && "$config" == *"$FORECAST_URL"* ]]
}
if $real_node; then
  say "the workers run as pods on the node (kubectl get pods -n $NS)"
else
for flow in $flows; do
  for _ in $(seq 120); do
    rendered_for_this_run "$flow" && break
    kill -0 "$operator_pid" 2>/dev/null || { say "the operator exited:"; tail -n 20 "$run_dir/operator.log" >&2; exit 1; }
    sleep 0.5
  done
  rendered_for_this_run "$flow" || {
    say "the operator did not render $flow's worker configuration within 60s; the end of its log:"
    tail -n 20 "$run_dir/operator.log" >&2
    exit 1
  }
  start_worker "$flow"
done
say "workers started as local processes (flowplane worker --config <the operator's worker.json>)"
fi

# --- the kubelet stand-in ------------------------------------------------------------------------
standin=false
if [ -z "$(kubectl get nodes -o name 2>/dev/null | grep -v '^node/\(flowplane-demo-node\|fake-node\)$' || true)" ]; then
  standin=true
  say "no kubelet on this cluster: the demo marks each flow's worker pods Ready while its local worker answers /readyz"
  kubectl apply --server-side --field-manager=flowplane-demo -f - >/dev/null <<'NODE'
apiVersion: v1
kind: Node
metadata:
  name: flowplane-demo-node
  labels: {kubernetes.io/hostname: flowplane-demo-node, flowplane.io/demo: "true"}
NODE
fi
kubelet_standin() {
  local now flow pod node ready running deleting template
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for flow in $flows; do
    running=False
    curl -sf "http://127.0.0.1:${worker_port[$flow]}/readyz" >/dev/null 2>&1 && running=True
    kubectl get pods -n "$NS" -l "flowplane.io/flow=$flow,app.kubernetes.io/component=worker" -o json 2>/dev/null |
      python3 -c "import json,sys
$TEMPLATE_KEY_PY
for p in json.load(sys.stdin)['items']:
    m = p['metadata']
    print(m['name'], p['spec'].get('nodeName') or '-', '1' if m.get('deletionTimestamp') else '0', key(m))" |
      while read -r pod node deleting template; do
        [ -n "$pod" ] || continue
        # A pod of an old template is one whose worker was replaced: gone once deleted.
        if [ "$deleting" = 1 ]; then
          kubectl delete pod "$pod" -n "$NS" --grace-period=0 --force >/dev/null 2>&1 || true
          continue
        fi
        [ "$node" = - ] && node=""
        # Ready only while the local worker answers and runs this pod's template.
        ready=False
        [ "$running" = True ] && [ "$template" = "${worker_template[$flow]}" ] && ready=True
        if [ -z "$node" ]; then
          printf '{"apiVersion":"v1","kind":"Binding","metadata":{"name":"%s"},"target":{"apiVersion":"v1","kind":"Node","name":"flowplane-demo-node"}}' "$pod" |
            kubectl create --raw "/api/v1/namespaces/$NS/pods/$pod/binding" -f - >/dev/null 2>&1 || continue
        fi
        kubectl patch pod "$pod" -n "$NS" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",\"startTime\":\"$now\",
          \"conditions\":[{\"type\":\"PodScheduled\",\"status\":\"True\"},{\"type\":\"Initialized\",\"status\":\"True\"},
          {\"type\":\"ContainersReady\",\"status\":\"$ready\"},{\"type\":\"Ready\",\"status\":\"$ready\",\"lastTransitionTime\":\"$now\"}],
          \"containerStatuses\":[{\"name\":\"worker\",\"image\":\"local-process\",\"imageID\":\"\",\"ready\":$([ $ready = True ] && echo true || echo false),
          \"restartCount\":0,\"started\":true,\"state\":{\"running\":{\"startedAt\":\"$now\"}}}]}}" >/dev/null 2>&1 || true
      done
  done
}

# --- watch ---------------------------------------------------------------------------------------
show() {
  echo
  echo "=== $(date +%H:%M:%S)  kubectl get flowplane -A"
  kubectl get flowplane -A 2>&1 | sed 's/^/  /'
  echo "=== the flows' sync figures (status.sync)"
  kubectl get integrationflows -n "$NS" -o custom-columns='FLOW:.metadata.name,DELIVERED:.status.sync.delivered,DEAD LETTERS:.status.sync.deadLetters,LAG:.status.sync.lag,LAST SUCCESS:.status.sync.lastSuccessTime' 2>&1 | sed 's/^/  /'
  if $real_node; then
    echo "=== the worker pods (kubelet on $FLOWPLANE_NODE_NAME)"
    kubectl get pods -n "$NS" -o wide 2>&1 | sed 's/^/  /'
  fi
  printf '=== records received by the forecasting simulator: '
  python3 scripts/demo-helper.py received "$FORECAST_URL" "${ENTITIES[@]}"
  echo "=== the loop: replenishment proposals -> approval rules -> ERP / planner / supplier portal"
  python3 scripts/demo-helper.py loop "$FORECAST_URL" "$ERP_URL" "$PORTAL_URL" | sed 's/^/  /'
  kubectl get integrationflow forecast-deltas-to-erp-replenishment -n "$NS" \
    -o custom-columns='PENDING REVIEW:.status.pendingApprovals[*].key' 2>&1 | sed 's/^/  /'
  if [ -n "${PROMETHEUS_URL:-}" ]; then
    echo "=== alerts in Prometheus ($PROMETHEUS_URL, the rules the operator rendered)"
    # The pods on the node's bridge, at their pod IPs (the host is on the bridge).
    if $real_node; then scripts/demo-prometheus.sh pods "$NS" flowplane-system || true; fi
    scripts/demo-prometheus.sh rules "$NS" || true
    scripts/demo-prometheus.sh alerts 2>&1 | sed 's/^/  /'
  fi
}
flows_ready() {
  kubectl get integrationflows -n "$NS" -o json |
    python3 scripts/demo-helper.py check "$NS" "$started_at" "$FORECAST_URL" "$ERP_URL" "$PORTAL_URL" "${ENTITIES[@]}" || return 1
  # With real pods, the check also needs Prometheus scraping them at their pod IPs.
  if $real_node && [ -n "${PROMETHEUS_URL:-}" ]; then
    scripts/demo-prometheus.sh pods "$NS" flowplane-system || return 1
    python3 scripts/demo-helper.py scraped "$PROMETHEUS_URL" "$NS" \
      $(kubectl get integrationflows -n "$NS" -o jsonpath='{.items[*].metadata.name}')
  fi
}
# The planner: approves the oldest pending review about every 20 s (the flowplane.io/approve
# annotation, docs/operations.md), so the demo shows a parked change reaching the ERP.
planner() {
  local id
  id=$(kubectl get integrationflow forecast-deltas-to-erp-replenishment -n "$NS" -o jsonpath='{.status.pendingApprovals[0].id}' 2>/dev/null) || return 0
  [ -n "$id" ] || return 0
  kubectl annotate integrationflow forecast-deltas-to-erp-replenishment -n "$NS" --overwrite "flowplane.io/approve=$id" >/dev/null 2>&1 &&
    say "planner: approved review $id"
}
last_planner=$SECONDS
deadline=$((SECONDS + timeout))
last_show=-100
if ! $check; then
  say "watching (Ctrl-C stops the demo and everything it started)"
  say "logs: $run_dir/*.log   KUBECONFIG=${KUBECONFIG:-}   NATS_URL=$NATS_URL"
fi
while true; do
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null && continue
    say "${names[$i]} exited; the end of its log:"
    tail -n 20 "$run_dir/${names[$i]}.log" >&2
    exit 1
  done
  $real_node || follow_rollouts
  $standin && kubelet_standin
  if $planner && [ $((SECONDS - last_planner)) -ge 20 ]; then planner; last_planner=$SECONDS; fi
  if [ -n "$serve" ] && [ ! -f "$serve" ] && flows_ready >"$run_dir/check.out" 2>&1; then
    cat >"$serve.tmp" <<STATE
NS=$NS
KUBECONFIG=${KUBECONFIG:-}
NATS_URL=$NATS_URL
ERP_URL=$ERP_URL
FORECAST_URL=$FORECAST_URL
PORTAL_URL=$PORTAL_URL
PROMETHEUS_URL=${PROMETHEUS_URL:-}
FLOWPLANE_BIN=$flowplane
DEMO_RUN_DIR=$run_dir
STATE
    mv "$serve.tmp" "$serve"
    say "ready: every demo flow is Ready and Fresh and records arrived (${SECONDS}s); state in $serve"
  fi
  if $check; then
    if flows_ready >"$run_dir/check.out" 2>&1; then
      show
      say "check passed: every demo flow is Ready and Fresh and records arrived (${SECONDS}s)"
      exit 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      show
      cat "$run_dir/check.out" >&2
      say "check failed after ${timeout}s; operator log tail:"
      operator_log >&2
      exit 1
    fi
  fi
  if [ $((SECONDS - last_show)) -ge 5 ]; then show; last_show=$SECONDS; fi
  sleep 2
done
