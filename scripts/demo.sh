#!/usr/bin/env bash
# The main job, locally: builds what it needs, starts a local control plane and NATS,
# installs the CRDs, starts the operator, applies the example flows (EU overlay) and shows them.
# Stop everything it started with: scripts/local-env.sh down
set -euo pipefail
cd "$(dirname "$0")/.."

export FLOWPLANE_CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
env_file="$(scripts/local-env.sh up)"
# shellcheck disable=SC1090
. "$env_file"

cargo build --locked --quiet
flowplane=target/debug/flowplane

"$flowplane" crdgen --out crds >/dev/null
kubectl apply --server-side --field-manager=flowplane-demo -f crds/
kubectl wait --for condition=Established crd --all --timeout=60s >/dev/null

state="$(dirname "$env_file")"
if ! { [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; }; then
  "$flowplane" controller --nats-url "$NATS_URL" --nats-monitoring-endpoint "${NATS_MONITOR_URL#http://}" \
    --http-addr 127.0.0.1:0 --region eu --resync-seconds 15 >"$state/operator.log" 2>&1 &
  echo $! >"$state/operator.pid"
fi

kubectl apply -k examples/overlays/eu
kubectl apply -n flowplane-eu -f examples/local-secrets/

# Give the operator a moment to reconcile, then show what it made of the flows.
sleep 10
echo
kubectl get flowplane -A
echo
kubectl get deploy,cm,svc,cronjob,hpa -n flowplane-eu -l app.kubernetes.io/managed-by=flowplane
echo
echo "KUBECONFIG=$KUBECONFIG NATS_URL=$NATS_URL"
echo "Operator log: $state/operator.log"
echo "Stop: scripts/local-env.sh down"
