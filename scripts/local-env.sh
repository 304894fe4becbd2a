#!/usr/bin/env bash
# Starts (or stops) the real components flowplane runs against, on loopback, the way
# controller-runtime's envtest does: etcd, kube-apiserver (RBAC on, TLS with a generated CA),
# kube-controller-manager (garbage collector, namespace, deployment, replicaset and service
# account controllers), and nats-server with JetStream in operator mode (decentralized JWT auth:
# anonymous clients refused, one user per flow issued by the operator) with TLS required, and
# Prometheus (docs/observability.md): it scrapes what $FLOWPLANE_PROMETHEUS_TARGETS lists (one
# file_sd JSON file per process: the operator, each worker) and evaluates the rule files in
# $FLOWPLANE_PROMETHEUS_RULES (reloaded by `scripts/local-env.sh reload-rules`).
#
#   scripts/local-env.sh up     start what is not running; print the env file to source
#   scripts/local-env.sh up --with-node
#                               also a real node (docs/real-node.md): kube-scheduler, kubelet,
#                               containerd with runc and the CNI bridge, the image built by
#                               scripts/build-image.sh imported; NATS and the API server listen
#                               on the node's bridge address then, so pods reach them
#   scripts/local-env.sh keda-up
#                               also KEDA (docs/autoscaling.md): its CRDs, operator and metrics
#                               API server as processes, the latter registered as the APIService
#                               of external.metrics.k8s.io; keda-down removes all of it again
#   scripts/local-env.sh adapter-up
#                               instead of KEDA, prometheus-adapter (docs/autoscaling.md) over
#                               the environment's Prometheus, registered as the APIService of
#                               external.metrics.k8s.io; adapter-down removes it again
#   scripts/local-env.sh down   stop only the processes this script started (and the node)
#   scripts/local-env.sh env    print the env file path (fails if not up)
#   scripts/local-env.sh reload-rules
#                               make Prometheus read its rule files again (after writing them)
#
# State (certs, data, logs, pids) lives in $FLOWPLANE_STATE (default ~/.cache/flowplane/run/<name>).
# KCM_API_QPS: kube-controller-manager's request rate (default 20, its own default; burst 1.5x);
# scripts/bench-operator.sh raises it for 10,000 flows, as large clusters do.
# PROFILING=1: kube-apiserver, kube-controller-manager and nats-server serve /debug/pprof (the
# env file then names KCM_URL and NATS_PROFILE_URL); scripts/bench-operator.sh uses it to say
# where their CPU goes.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
BIN="${FLOWPLANE_TOOLS:-$CACHE/bin}"
STATE="${FLOWPLANE_STATE:-$CACHE/run/${FLOWPLANE_ENV_NAME:-default}}"
ENV_FILE="$STATE/env"
# Where NATS and the API server listen: loopback, or the node's bridge address (--with-node),
# which is the only address pods can reach (no kube-proxy, no routes out of the bridge).
LISTEN_HOST=127.0.0.1
WITH_NODE=0

log() { printf '[local-env] %s\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start() { # name, then the command
  local name="$1"; shift
  "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

stop() {
  local name="$1"
  if alive "$name"; then
    local pid; pid="$(cat "$STATE/$name.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$name.pid"
}

wait_for() { # description, seconds, command...
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ] || ! alive "$what"; then
      log "$what did not become ready (waited up to ${secs}s); last log lines:"
      tail -n 20 "$STATE/$what.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

certs() {
  local d="$STATE/pki"
  [ -f "$d/admin.crt" ] && [ -f "$d/front-proxy-client.crt" ] && grep -q "IP:$NODE_IP" "$d/server.ext" && return 0
  rm -rf "$d"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=flowplane-local-ca" 2>/dev/null
    cat >server.ext <<EXT
subjectAltName = IP:127.0.0.1, IP:$NODE_IP, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc
extendedKeyUsage = serverAuth
EXT
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile server.ext 2>/dev/null
    printf 'extendedKeyUsage = clientAuth\n' >client.ext
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=flowplane-admin" 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
    # The aggregation layer: the API server proxies to extension API servers (KEDA's metrics
    # server) as front-proxy-client, which they trust through front-proxy-ca.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 3650 -subj "/CN=flowplane-front-proxy-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr -subj "/CN=front-proxy-client" 2>/dev/null
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -out front-proxy-client.crt -days 3650 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

# The NATS server's TLS (its own CA) and trust chain: operator, system account, the flowplane
# account and its signing key, made by `flowplane nats-bootstrap` (kept across restarts); and a
# route certificate for the 3-node cluster the cluster tier starts with this trust chain.
# FLOWPLANE_NATS_SANS adds names to the server certificate (e.g. "IP:10.88.0.1" for pods on a
# bridge); FLOWPLANE_BIN names the flowplane binary (else it is built).
nats_auth() {
  local d="$STATE/nats"
  mkdir -p "$d"
  # Made once per state, and again when the listen address (a node's bridge) is not in it.
  if [ ! -f "$d/server.crt" ] || ! grep -q "IP:$LISTEN_HOST[,]" "$d/server.ext"; then
    (
      cd "$d"
      openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=flowplane-local-nats-ca" 2>/dev/null
      printf 'subjectAltName = IP:%s, IP:127.0.0.1, DNS:localhost, DNS:nats.flowplane-system.svc%s\nextendedKeyUsage = serverAuth\n' \
        "$LISTEN_HOST" "${FLOWPLANE_NATS_SANS:+, $FLOWPLANE_NATS_SANS}" >server.ext
      openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=nats-server" 2>/dev/null
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile server.ext 2>/dev/null
      rm -f route.crt
    )
  fi
  # Routes between the servers of a NATS cluster (the cluster tier, tests/nats_cluster.rs) are
  # TLS too, verified both ways: a certificate for server and client use, from the same CA.
  if [ ! -f "$d/route.crt" ]; then
    (
      cd "$d"
      printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth, clientAuth\n' >route.ext
      openssl req -newkey rsa:2048 -nodes -keyout route.key -out route.csr -subj "/CN=nats-route" 2>/dev/null
      openssl x509 -req -in route.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out route.crt -days 3650 -extfile route.ext 2>/dev/null
    )
  fi
  local flowplane="${FLOWPLANE_BIN:-}"
  if [ -z "$flowplane" ]; then
    (cd "$here/.." && cargo build --quiet --bin flowplane)
    flowplane="${CARGO_TARGET_DIR:-$here/../target}/debug/flowplane"
  fi
  "$flowplane" nats-bootstrap --dir "$d" >/dev/null
}

nats_config() { # port, monitoring port[, profiling port]
  local d="$STATE/nats"
  cat >"$d/server.conf" <<CONF
${3:+prof_port: $3}
listen: $LISTEN_HOST:$1
http: $LISTEN_HOST:$2
# A flow's user JWT (its allow-lists) goes in CONNECT: more than the default 4 KiB.
max_control_line: 32768
# nats-server reserves every stream's max_bytes (a flow's default is 1 GiB) against this limit,
# whose default is 75% of the free disk: a test run's many flows need more than this box has
# free. A ceiling, not an allocation.
jetstream { store_dir: "$STATE/jetstream", max_file_store: 1TB }
tls { cert_file: "$d/server.crt", key_file: "$d/server.key", timeout: 5 }
include auth.conf
CONF
}

# Prometheus on loopback: scrapes every 2 s and evaluates every 2 s, so a test sees an alert's
# state change within seconds; what it scrapes is listed by file (file_sd: Prometheus watches
# the directory), the rule files are read at start and on reload (--web.enable-lifecycle).
prometheus_config() {
  local d="$STATE/prometheus"
  rm -rf "$d" && mkdir -p "$d/targets" "$d/rules" "$d/data"
  cat >"$d/prometheus.yml" <<CONF
global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 2s}
rule_files: ["$d/rules/*.yaml"]
scrape_configs:
- job_name: flowplane
  file_sd_configs: [{files: ["$d/targets/*.json"], refresh_interval: 5s}]
CONF
}

kubeconfig() { # path, server
  local d="$STATE/pki"
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: flowplane-local
  cluster:
    server: $2
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: flowplane-admin
  user:
    client-certificate-data: $(base64 -w0 <"$d/admin.crt")
    client-key-data: $(base64 -w0 <"$d/admin.key")
contexts:
- name: flowplane-local
  context: {cluster: flowplane-local, user: flowplane-admin}
current-context: flowplane-local
KC
}

up() {
  "$here/install-tools.sh"
  mkdir -p "$STATE"
  if [ -f "$ENV_FILE" ] && alive etcd && alive kube-apiserver && alive kube-controller-manager && alive nats-server && alive prometheus &&
    { [ "$WITH_NODE" = 0 ] || node_alive; }; then
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    if [ -n "${NATS_CREDS:-}" ] && [ -n "${PROMETHEUS_URL:-}" ] && "$BIN/kubectl" --kubeconfig "$KUBECONFIG" get --raw /readyz >/dev/null 2>&1; then
      log "already up"
      echo "$ENV_FILE"
      return 0
    fi
  fi
  down_quiet
  local t0=$SECONDS
  if [ "$WITH_NODE" = 1 ]; then
    node_prepare
    LISTEN_HOST="$NODE_IP"
  fi
  certs
  nats_auth
  local etcd_port etcd_peer api_port nats_port nats_mon
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); nats_port=$(free_port); nats_mon=$(free_port)
  rm -rf "$STATE/etcd-data" "$STATE/jetstream"
  start etcd "$BIN/etcd" --name flowplane --data-dir "$STATE/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "flowplane=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --quota-backend-bytes 4294967296
  local nats_prof=""
  [ "${PROFILING:-0}" = 1 ] && nats_prof=$(free_port)
  nats_config "$nats_port" "$nats_mon" "$nats_prof"
  start nats-server "$BIN/nats-server" -c "$STATE/nats/server.conf"
  local prom_port; prom_port=$(free_port)
  prometheus_config
  start prometheus "$BIN/prometheus" --config.file "$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path "$STATE/prometheus/data" --storage.tsdb.retention.time 1d \
    --web.listen-address "127.0.0.1:$prom_port" --web.enable-lifecycle --log.level warn
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"
  local pki="$STATE/pki"
  local profiling=false
  [ "${PROFILING:-0}" = 1 ] && profiling=true
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$LISTEN_HOST" --advertise-address "$LISTEN_HOST" --secure-port "$api_port" \
    --tls-cert-file "$pki/server.crt" --tls-private-key-file "$pki/server.key" \
    --client-ca-file "$pki/ca.crt" \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode RBAC --allow-privileged=true \
    --endpoint-reconciler-type none \
    --enable-priority-and-fairness=false --profiling="$profiling" \
    --kubelet-preferred-address-types=InternalIP
  kubeconfig "$STATE/kubeconfig" "https://$LISTEN_HOST:$api_port"
  wait_for kube-apiserver 120 "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get --raw /readyz
  # Without profiling, kube-controller-manager serves nothing (port 0).
  local kcm_port=0
  [ "$profiling" = true ] && kcm_port=$(free_port)
  local node_controllers=""
  # A node needs the kube-root-ca.crt ConfigMap (service-account tokens) and the not-ready taint
  # lifted once the kubelet reports Ready.
  [ "$WITH_NODE" = 1 ] && node_controllers=",root-ca-certificate-publisher-controller,node-lifecycle-controller"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig" --authentication-kubeconfig "$STATE/kubeconfig" --authorization-kubeconfig "$STATE/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$STATE/kcm" --profiling="$profiling" --leader-elect=false \
    --controllers garbage-collector-controller,namespace-controller,deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,job-controller,cronjob-controller,horizontal-pod-autoscaler-controller,disruption-controller$node_controllers \
    --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
    --concurrent-gc-syncs 5 --horizontal-pod-autoscaler-downscale-stabilization 30s \
    --kube-api-qps "${KCM_API_QPS:-20}" --kube-api-burst "$(( ${KCM_API_QPS:-20} * 3 / 2 ))"
  wait_for nats-server 30 curl -sf "http://$LISTEN_HOST:$nats_mon/healthz?js-enabled-only=true"
  wait_for prometheus 30 curl -sf "http://127.0.0.1:$prom_port/-/ready"
  [ "$WITH_NODE" = 1 ] && node_start
  cat >"$ENV_FILE" <<ENV
export KUBECONFIG="$STATE/kubeconfig"
export NATS_URL="nats://$LISTEN_HOST:$nats_port"
export NATS_MONITOR_URL="http://$LISTEN_HOST:$nats_mon"
export NATS_CREDS="$STATE/nats/admin.creds"
export NATS_CA="$STATE/nats/ca.crt"
export FLOWPLANE_NATS_SIGNER_DIR="$STATE/nats"
export FLOWPLANE_NATS_CA="$STATE/nats/ca.crt"
export FLOWPLANE_ETCD_URL="http://127.0.0.1:$etcd_port"
export PROMETHEUS_URL="http://127.0.0.1:$prom_port"
export FLOWPLANE_PROMETHEUS_TARGETS="$STATE/prometheus/targets"
export FLOWPLANE_PROMETHEUS_RULES="$STATE/prometheus/rules"
export PATH="$BIN:\$PATH"
ENV
  [ "$profiling" = true ] && echo "export KCM_URL=\"https://127.0.0.1:$kcm_port\"" >>"$ENV_FILE"
  [ -n "$nats_prof" ] && echo "export NATS_PROFILE_URL=\"http://$LISTEN_HOST:$nats_prof\"" >>"$ENV_FILE"
  [ "$WITH_NODE" = 1 ] && cat >>"$ENV_FILE" <<ENV
export FLOWPLANE_NODE_IP="$NODE_IP"
export FLOWPLANE_NODE_NAME="$NODE_NAME"
export FLOWPLANE_IMAGE="$NODE_IMAGE"
export CONTAINERD_ADDRESS="$NODE_DIR/containerd.sock"
ENV
  log "up in $((SECONDS - t0))s: KUBECONFIG=$STATE/kubeconfig NATS_URL=nats://$LISTEN_HOST:$nats_port"
  echo "$ENV_FILE"
}

# KEDA v2 as processes. Its metrics server must be reachable by the API server's aggregator,
# which finds an APIService's backend through its Service: a ClusterIP needs kube-proxy (none
# here), and --enable-aggregator-routing needs an endpoint address, which EndpointSlices refuse
# for loopback. A Service of type ExternalName is resolved by the aggregator to its name, so
# `localhost` reaches the metrics server on loopback; the aggregator verifies the server as
# keda-metrics-apiserver.keda.svc against the APIService's caBundle.
# A CA and a server certificate in DIR for an extension API server, valid for loopback and the
# given Service DNS names (the aggregator verifies the server as <service>.<namespace>.svc).
extension_server_cert() { # dir, DNS names...
  local d="$1"
  shift
  mkdir -p "$d"
  [ -f "$d/tls.crt" ] && return 0
  local sans="IP:127.0.0.1, DNS:localhost" name
  for name in "$@"; do sans="$sans, DNS:$name"; done
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=flowplane-local-$(basename "$d")-ca" 2>/dev/null
    printf 'subjectAltName = %s\nextendedKeyUsage = serverAuth, clientAuth\n' "$sans" >tls.ext
    openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr -subj "/CN=$(basename "$d")" 2>/dev/null
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 3650 -extfile tls.ext 2>/dev/null
  )
}

# Registers the server on 127.0.0.1:PORT as external.metrics.k8s.io, through an ExternalName
# Service NAMESPACE/SERVICE, and waits until the aggregator serves it.
register_external_metrics() { # namespace, service, port, CA file, process name
  local kubectl="$BIN/kubectl"
  "$kubectl" create namespace "$1" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  "$kubectl" apply --server-side --force-conflicts -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: $2, namespace: $1}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{name: https, port: $3}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  service: {namespace: $1, name: $2, port: $3}
  caBundle: $(base64 -w0 <"$4")
  groupPriorityMinimum: 100
  versionPriority: 100
YAML
  wait_for "$5" 120 "$kubectl" get --raw /apis/external.metrics.k8s.io/v1beta1
}

keda_up() {
  [ -f "$ENV_FILE" ] || { log "not up"; exit 1; }
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  local d="$STATE/keda" kubectl="$BIN/kubectl"
  extension_server_cert "$d" keda-metrics-apiserver.keda.svc keda-operator.keda.svc
  local crds=("$CACHE"/crds/keda-*.yaml)
  for f in "${crds[@]}"; do "$kubectl" apply --server-side --force-conflicts -f "$f" >/dev/null; done
  for f in "${crds[@]}"; do "$kubectl" wait --for condition=established --timeout 60s -f "$f" >/dev/null; done
  local grpc_port adapter_port
  grpc_port=$(free_port); adapter_port=$(free_port)
  stop keda-operator; stop keda-adapter
  # No leader election, no certificate rotation or patching: the certificates are ours.
  start keda-operator env KUBECONFIG="$KUBECONFIG" POD_NAMESPACE=keda KEDA_CLUSTER_OBJECT_NAMESPACE=keda WATCH_NAMESPACE= \
    "$BIN/keda-operator" --metrics-bind-address "127.0.0.1:$(free_port)" --health-probe-bind-address "127.0.0.1:$(free_port)" \
    --metrics-service-bind-address "127.0.0.1:$grpc_port" --cert-dir "$d" --ca-dir "$d" \
    --enable-webhook-patching=false --enable-apiservice-patching=false
  start keda-adapter env KUBECONFIG="$KUBECONFIG" POD_NAMESPACE=keda KEDA_CLUSTER_OBJECT_NAMESPACE=keda WATCH_NAMESPACE= \
    "$BIN/keda-adapter" --secure-port "$adapter_port" --bind-address 127.0.0.1 --port "$(free_port)" \
    --tls-cert-file "$d/tls.crt" --tls-private-key-file "$d/tls.key" --cert-dir "$d" \
    --metrics-service-address "127.0.0.1:$grpc_port" --metrics-service-grpc-authority keda-operator.keda.svc \
    --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" --lister-kubeconfig "$KUBECONFIG"
  register_external_metrics keda keda-metrics-apiserver "$adapter_port" "$d/ca.crt" keda-adapter
  alive keda-operator || { log "keda-operator exited"; tail -n 20 "$STATE/keda-operator.log" >&2; return 1; }
  log "KEDA up: external.metrics.k8s.io served by keda-adapter on 127.0.0.1:$adapter_port"
}

keda_down() {
  if [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    "$BIN/kubectl" delete apiservice v1beta1.external.metrics.k8s.io --ignore-not-found >/dev/null 2>&1 || true
    for f in "$CACHE"/crds/keda-*.yaml; do "$BIN/kubectl" delete -f "$f" --ignore-not-found --wait=false >/dev/null 2>&1 || true; done
  fi
  stop keda-adapter
  stop keda-operator
}

# prometheus-adapter over the environment's Prometheus, for a flow's fallback HPA (no KEDA):
# one external rule, the workers' lag gauge, taken as max by flow since every worker of a flow
# reports the whole consumer's lag (docs/autoscaling.md). Relists Prometheus' series every 5 s
# (10 min by default) so a new flow's series is served within a test.
adapter_up() {
  [ -f "$ENV_FILE" ] || { log "not up"; exit 1; }
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  local d="$STATE/prometheus-adapter"
  extension_server_cert "$d" prometheus-adapter.flowplane-metrics.svc
  cat >"$d/config.yaml" <<'RULES'
externalRules:
- seriesQuery: 'flowplane_worker_lag_records{namespace!="",flow!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
  name: {as: flowplane_worker_lag_records}
  metricsQuery: 'max by (namespace, flow) (<<.Series>>{<<.LabelMatchers>>})'
RULES
  local port
  port=$(free_port)
  stop prometheus-adapter
  start prometheus-adapter "$BIN/prometheus-adapter" --prometheus-url "$PROMETHEUS_URL" \
    --config "$d/config.yaml" --metrics-relist-interval 5s \
    --secure-port "$port" --bind-address 127.0.0.1 --tls-cert-file "$d/tls.crt" --tls-private-key-file "$d/tls.key" \
    --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" --lister-kubeconfig "$KUBECONFIG"
  register_external_metrics flowplane-metrics prometheus-adapter "$port" "$d/ca.crt" prometheus-adapter
  log "prometheus-adapter up: external.metrics.k8s.io on 127.0.0.1:$port"
}

adapter_down() {
  if [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    "$BIN/kubectl" delete apiservice v1beta1.external.metrics.k8s.io --ignore-not-found >/dev/null 2>&1 || true
  fi
  stop prometheus-adapter
}

down_quiet() {
  # The operator (started by demo.sh with the same pid files) first, then the node, then the
  # control plane.
  stop operator
  stop keda-adapter
  stop keda-operator
  stop prometheus-adapter
  node_down
  for p in prometheus kube-controller-manager kube-apiserver nats-server etcd; do stop "$p"; done
  rm -f "$ENV_FILE"
}

# shellcheck source=scripts/local-node.sh
. "$here/local-node.sh"

case "${1:-}" in
  up)
    case "${2:-}" in
      "") ;;
      --with-node) WITH_NODE=1 ;;
      *) echo "usage: $0 up [--with-node]" >&2; exit 2 ;;
    esac
    up ;;
  keda-up) keda_up ;;
  keda-down) keda_down; log "KEDA stopped" ;;
  adapter-up) adapter_up ;;
  adapter-down) adapter_down; log "prometheus-adapter stopped" ;;
  down) down_quiet; log "stopped" ;;
  env) [ -f "$ENV_FILE" ] && echo "$ENV_FILE" || { log "not up"; exit 1; } ;;
  reload-rules)
    [ -f "$ENV_FILE" ] || { log "not up"; exit 1; }
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    curl -sf -X POST "$PROMETHEUS_URL/-/reload" >/dev/null ;;
  *) echo "usage: $0 up|keda-up|keda-down|adapter-up|adapter-down|down|env|reload-rules" >&2; exit 2 ;;
esac
