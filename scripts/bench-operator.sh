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
# PROFILE=1 takes back-to-back 30 s CPU profiles of kube-apiserver, kube-controller-manager and
# nats-server through the run, keeps them in PROFILE_DIR (default
# ~/.cache/flowplane/profiles/<time>) and prints each phase's top functions (`go tool pprof`,
# so it needs Go): where the operator run's extra CPU goes.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOWPLANE_CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
runs="${RUNS:-1}"
cargo build --release --locked --quiet --bin flowplane
cargo bench --locked --bench operator_scale --no-run 2>/dev/null
results="$(mktemp)"
profiles="${PROFILE_DIR:-$FLOWPLANE_CACHE/profiles/$(date -u +%Y%m%dT%H%M%S)}"
[ "${PROFILE:-0}" = 1 ] && export PROFILING=1 && mkdir -p "$profiles"
# Consecutive 30 s CPU profiles of both until killed, named <process>-<unix start>.pb.gz.
profile_loop() {
  local pki="$FLOWPLANE_STATE/pki"
  while :; do
    local t; t=$(date +%s)
    kubectl get --raw "/debug/pprof/profile?seconds=30" >"$profiles/kube-apiserver-$t.pb.gz" 2>/dev/null &
    curl -sfk --cert "$pki/admin.crt" --key "$pki/admin.key" \
      "$KCM_URL/debug/pprof/profile?seconds=30" >"$profiles/kube-controller-manager-$t.pb.gz" &
    curl -sf "$NATS_PROFILE_URL/debug/pprof/profile?seconds=30" >"$profiles/nats-server-$t.pb.gz" &
    wait
  done
}
# The frames worth printing of process $1: its own code's, not the Go runtime's.
own_frames() {
  case "$1" in
    nats-server) echo 'nats-io/nats-server' ;;
    *) echo 'k8s\.io|sigs\.k8s\.io' ;;
  esac
}
# Process $1's profiles that lie mostly in phase $2 [$3, $4), merged into $profiles/$2-$1.pb.gz;
# prints its heaviest own frames (cumulative CPU-seconds).
phase_profile() {
  local files=() f t
  for f in "$profiles/$1"-*.pb.gz; do
    t="${f##*-}"; t="${t%.pb.gz}"
    [ "$t" -ge $(($3 - 15)) ] && [ $((t + 15)) -le "$4" ] && [ -s "$f" ] && files+=("$f")
  done
  [ "${#files[@]}" -gt 0 ] || { echo "  (no profile of $1 in this phase)"; return; }
  go tool pprof -proto "${files[@]}" >"$profiles/$2-$1.pb.gz" 2>/dev/null
  echo "  $1, ${#files[@]} profiles of 30 s, heaviest own frames (cumulative):"
  go tool pprof -top -cum -nodecount=400 "$profiles/$2-$1.pb.gz" 2>/dev/null |
    grep -E "Total samples|$(own_frames "$1")" | awk 'NR <= 40' | sed 's/^/    /' || true
}
# Where process $1 spent more CPU in the operator phase than in the floor's.
profile_difference() {
  [ -s "$profiles/floor-$1.pb.gz" ] && [ -s "$profiles/operator-$1.pb.gz" ] || return 0
  echo "  $1, operator phase minus floor phase (CPU-seconds, cumulative):"
  go tool pprof -top -cum -nodecount=400 -diff_base="$profiles/floor-$1.pb.gz" \
    "$profiles/operator-$1.pb.gz" 2>/dev/null |
    grep -E "$(own_frames "$1")" | awk 'NR <= 40' | sed 's/^/    /' || true
}
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
    if [ "${PROFILE:-0}" = 1 ]; then
      profile_loop &
      profiler=$!
      stop_profiler() { kill "$profiler" 2>/dev/null || true; pkill -P "$profiler" || true; }
      trap 'stop_profiler; cleanup' EXIT
    fi
    echo "--- operator at ${FLOWS:-1000} flows, run $run of $runs ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg), kube-controller-manager at ${KCM_API_QPS:-20} requests/s)"
    FLOWPLANE_BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/release/flowplane" \
      cargo bench --locked --bench operator_scale | tee "$results.run"
    cat "$results.run" >>"$results"
    echo "(load at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
    if [ "${PROFILE:-0}" = 1 ]; then
      stop_profiler
      echo "CPU profiles by phase (kept in $profiles):"
      awk '/^phase window/ {print $(NF-2), $(NF-1), $NF}' "$results.run" |
        while read -r phase from to; do
          echo " $phase phase, until kube-controller-manager was done:"
          for process in kube-apiserver kube-controller-manager nats-server; do
            phase_profile "$process" "$phase" "$from" "$to"
          done
        done
      for process in kube-apiserver kube-controller-manager; do profile_difference "$process"; done
    fi
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
rm -f "$results" "$results.run"
