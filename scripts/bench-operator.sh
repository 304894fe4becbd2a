#!/usr/bin/env bash
# Operator scale benchmark (not a test): N flows (default 1000) on a private local control
# plane and NATS; prints time to settle vs a plain SSA loop, idle writes and peak RSS.
#   FLOWS=1000 scripts/bench-operator.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOWPLANE_CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
export FLOWPLANE_ENV_NAME="bench-$$"
export FLOWPLANE_STATE="$FLOWPLANE_CACHE/run/$FLOWPLANE_ENV_NAME"
cleanup() { scripts/local-env.sh down || true; rm -rf "$FLOWPLANE_STATE"; }
trap cleanup EXIT
# shellcheck disable=SC1090
. "$(scripts/local-env.sh up)"
cargo build --release --locked --quiet --bin flowplane
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for condition=Established crd --all --timeout=60s >/dev/null
FLOWPLANE_BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/release/flowplane" cargo bench --locked --bench operator_scale
