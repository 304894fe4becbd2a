#!/usr/bin/env bash
# Operator scale benchmark (not a test): N flows (default 1000) on a private local control
# plane and NATS; prints time to settle vs a plain SSA loop, idle writes and peak RSS.
#   FLOWS=10000 RUNS=3 scripts/bench-operator.sh
# RUNS repeats the whole run, each on a fresh control plane and NATS (this machine is shared
# and noisy: every run is printed with the load average, then the median ratio).
# The floor is reported twice: the operator's children alone (the figure earlier runs have), and
# the same objects the operator phase's clock covers (also the flows, their NATS user Secrets and
# their statuses), and a third time with both clocks running on until kube-controller-manager
# has every worker Deployment's status current (its ReplicaSets and Pods made): it keeps working
# after the floor's applies return, inside the longer operator phase's clock.
# SKIP_FLOOR=1 measures the operator alone (time to settle, idle writes, peak RSS; no ratio).
# KCM_API_QPS (default 20) is kube-controller-manager's request rate: at 10,000 flows its
# default makes it the slowest part (a ReplicaSet, a Pod and status updates per Deployment),
# and the idle measurement waits for it.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOWPLANE_CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
runs="${RUNS:-1}"
cargo build --release --locked --quiet --bin flowplane
cargo bench --locked --bench operator_scale --no-run 2>/dev/null
results="$(mktemp)"
for run in $(seq "$runs"); do
  # A subshell per run: the sourced environment (PATH with the tool cache first) must not
  # reach the next run's install-tools.
  (
    export FLOWPLANE_ENV_NAME="bench-$$-$run"
    export FLOWPLANE_STATE="$FLOWPLANE_CACHE/run/$FLOWPLANE_ENV_NAME"
    cleanup() { scripts/local-env.sh down || true; rm -rf "$FLOWPLANE_STATE"; }
    trap cleanup EXIT
    # shellcheck disable=SC1090
    . "$(scripts/local-env.sh up)"
    kubectl apply --server-side -f crds/ >/dev/null
    kubectl wait --for condition=Established crd --all --timeout=60s >/dev/null
    echo "--- operator at ${FLOWS:-1000} flows, run $run of $runs ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg), kube-controller-manager at ${KCM_API_QPS:-20} requests/s)"
    FLOWPLANE_BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/release/flowplane" \
      cargo bench --locked --bench operator_scale | tee -a "$results"
    echo "(load at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
  )
done
# The median of the ratio lines that start with $1.
median_of() {
  awk -v prefix="$1" 'index($0, prefix) == 1 {print $NF}' "$results" | sort -n |
    awk '{a[NR]=$1} END {if (NR) print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'
}
for floor in "ratio operator / floor:" "ratio operator / floor of the same objects:" \
  "ratio operator / floor, both until the Deployments are updated:"; do
  ratios="$(awk -v prefix="$floor" 'index($0, prefix) == 1 {print $NF}' "$results" | tr '\n' ' ')"
  [ -n "$ratios" ] && echo "${floor%:} (each run): ${ratios}; median $(median_of "$floor")"
done
rm -f "$results"
