#!/usr/bin/env bash
# The five ways planning data breaks, injected one after another into the running demo, and how
# flowplane detects or prevents each (docs/scenario.md): late inputs, a master-data mismatch,
# the open loop back into the ERP, failures found late, an uncontrolled interface change. For
# each it prints, with times (UTC): when it was injected, when it was detected (an alert firing
# in Prometheus, read from its HTTP API, or the flow's status), the flow's conditions, what the
# operator did, the recovery, and what a planner would do next; it exits 1 if a target is
# missed. Before them, the quiet check: the demo left alone for a while, every flow's workers
# rolled out a third of the way in, and no alert may fire in Prometheus meanwhile.
#
#   scripts/scenario.sh                 a quiet check of 120 s, then the five breakdowns (about
#                                       8 minutes with the demo's start)
#   scripts/scenario.sh --quiet SECONDS a quiet check of SECONDS instead
#   scripts/scenario.sh --quiet-only    the quiet check only (e.g. --quiet 900 --quiet-only:
#                                       the 15-minute check, docs/testing.md)
#
# It runs scripts/demo.sh --serve --clean-data (the local environment with Prometheus, the
# simulators, the operator and the workers, without the demo's deliberately bad records; a
# running local environment is reused) with the scenario's overlay (examples/overlays/scenario:
# the demo with SLAs of minutes, so a false freshness alert shows within the check), and stops
# what the demo started on exit. Environment as for scripts/demo.sh (FLOWPLANE_BIN,
# FLOWPLANE_ENV_NAME / FLOWPLANE_STATE, CARGO_TARGET_DIR); SCENARIO_READY_TIMEOUT (seconds the
# demo may take to be Ready and Fresh, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

quiet=120 breakdowns=true
while [ $# -gt 0 ]; do
  case "$1" in
    --quiet) quiet="$2"; shift 2 ;;
    --quiet-only) breakdowns=false; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

export FLOWPLANE_CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
BIN="${FLOWPLANE_TOOLS:-$FLOWPLANE_CACHE/bin}"
say() { printf '\033[1m[scenario]\033[0m %s\n' "$*" >&2; }

run_dir="$(mktemp -d "${TMPDIR:-/tmp}/flowplane-scenario.XXXXXX")"
demo_pid=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
  fi
  rm -rf "$run_dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# No deliberately bad records: a dead letter is a true alert, not a false one. No stand-in
# planner when the breakdowns run: a named one approves there.
demo_args=(--clean-data)
$breakdowns && demo_args+=(--no-planner)
say "starting the demo (scripts/demo.sh --serve --overlay examples/overlays/scenario ${demo_args[*]}; log: $run_dir/demo.log)"
scripts/demo.sh --serve "$run_dir/state" --overlay examples/overlays/scenario "${demo_args[@]}" >"$run_dir/demo.log" 2>&1 &
demo_pid=$!
deadline=$((SECONDS + ${SCENARIO_READY_TIMEOUT:-300}))
until [ -f "$run_dir/state" ]; do
  if ! kill -0 "$demo_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    say "the demo did not become Ready and Fresh; the end of its log:"
    tail -n 40 "$run_dir/demo.log" >&2
    exit 1
  fi
  sleep 2
done
set -a
# shellcheck disable=SC1091
. "$run_dir/state"
set +a
export PATH="$BIN:$PATH"
say "the demo runs (${SECONDS}s): Prometheus on $PROMETHEUS_URL"

status=0
if ! $breakdowns; then
  python3 scripts/scenario.py quiet "$run_dir/state" "$quiet" || status=$?
else
  # The chart's admission policies: the one that stamps who decided a review is what makes
  # the open loop's approval auditable (docs/operations.md#decision-audit).
  kube_version=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
  "$BIN/helm" template flowplane charts/flowplane --namespace flowplane-system --kube-version "$kube_version" \
    --show-only templates/admission-policy.yaml | kubectl apply --server-side --field-manager=flowplane-scenario -f - >/dev/null
  python3 scripts/scenario.py run "$run_dir/state" "$quiet" || status=$?
fi
if [ "$status" != 0 ]; then
  say "the end of the demo's log:"
  tail -n 60 "$run_dir/demo.log" >&2
fi
exit "$status"
