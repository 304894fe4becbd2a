#!/usr/bin/env bash
# End-to-end throughput of the sync worker vs the raw JetStream publish+consume rate of the
# same payloads in the same run, vs the same pipeline run by Benthos, plus the map+validate
# micro-benchmark. Not a test.
#   RECORDS=50000 RUNS=3 scripts/bench-worker.sh
# RUNS repeats the end-to-end benchmark (this machine is shared and noisy: report every run);
# BENTHOS_BENCH=0 skips Benthos; EXTRACT_ONLY=1 also times extraction alone. The default build is
# the image's (glibc, jemalloc: scripts/build-image.sh). MUSL=1 runs the worker as the static musl
# binary the image shipped until it moved to glibc, for comparison; the simulators stay the
# host build (FLOWPLANE_SIM_BINARY).
# Horizontal scaling instead: WORKERS=1,2,4 RUNS=5 RECORDS=30000 scripts/bench-worker.sh runs
# one flow with 1, 2 and 4 worker processes on a 3-node nats-server cluster (streams with 3
# replicas), after raw JetStream on the same cluster, RUNS rounds on one cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
with_benthos=1
[ "${BENTHOS_BENCH:-1}" = 0 ] && with_benthos=0
WITH_BENTHOS="$with_benthos" bash scripts/install-tools.sh >/dev/null
runs="${RUNS:-1}"
target=()
if [ "${MUSL:-0}" = 1 ]; then
  target=(--target x86_64-unknown-linux-musl)
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl >&2
  export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-gcc}"
  # Only the worker is the musl build: the simulators, standing in for systems that run
  # elsewhere, are the host build in both modes, so their libc does not move the ratio.
  cargo build --release --bin flowplane
  target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  export FLOWPLANE_SIM_BINARY="${FLOWPLANE_SIM_BINARY:-$target_dir/release/flowplane}"
fi
cargo bench "${target[@]}" --bench worker_e2e --no-run
if [ -n "${WORKERS:-}" ]; then
  echo "--- $runs rounds of raw JetStream and $WORKERS workers on a 3-node cluster ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  RUNS="$runs" cargo bench "${target[@]}" --bench worker_e2e
  exit 0
fi
for run in $(seq "$runs"); do
  echo "--- worker end to end, run $run of $runs ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  cargo bench "${target[@]}" --bench worker_e2e
done
cargo bench --bench map_validate -- --noplot 2>/dev/null | grep -E "map_validate|thrpt"
