#!/usr/bin/env bash
# The main job, locally: builds what it needs, starts a local control plane and NATS,
# installs the CRDs, applies the example flows (EU overlay) and shows them.
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

kubectl apply -k examples/overlays/eu
kubectl apply -n flowplane-eu -f examples/local-secrets/

echo
kubectl get flowplane -A
echo
echo "KUBECONFIG=$KUBECONFIG NATS_URL=$NATS_URL"
echo "Stop: scripts/local-env.sh down"
