#!/usr/bin/env bash
# End-to-end throughput of the sync worker vs the raw JetStream publish+consume rate of the
# same payloads in the same run, plus the map+validate micro-benchmark. Not a test.
#   RECORDS=50000 scripts/bench-worker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-tools.sh >/dev/null
cargo bench --bench worker_e2e
cargo bench --bench map_validate -- --noplot 2>/dev/null | grep -E "map_validate|thrpt"
