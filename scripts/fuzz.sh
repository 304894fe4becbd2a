#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo-fuzz with libFuzzer) one after another, each for the
# given seconds, on one core at the lowest priority:
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default 60 s, every target)
# Each starts from the committed seed corpus (fuzz/corpus/<target>) and keeps what it finds in
# $FLOWPLANE_CACHE/fuzz/corpus/<target>, so later runs go on from there. A crash stops the run;
# its input is in $FLOWPLANE_CACHE/fuzz/artifacts/<target>/. Copy it into
# fuzz/regressions/<target>/ (the unit test fuzz::tests replays that directory), then fix.
# FUZZ_FLAGS go to cargo-fuzz's build and run (default: its release build with AddressSanitizer;
# the test command's smoke uses "--sanitizer none --dev", a far cheaper build that still catches
# every panic, which is what safe Rust's parsers fail with).
# Needs a nightly toolchain (cargo-fuzz's sanitizer flags; `rustup toolchain install nightly`)
# and cargo-fuzz, which scripts/install-tools.sh builds into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
BIN="$CACHE/bin"
WORK="$CACHE/fuzz"
# Off the test build's target directory: other flags, other toolchain.
TARGET_DIR="$CACHE/fuzz-target"
export RUSTUP_TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
read -r -a fuzz_flags <<<"${FUZZ_FLAGS:-}"

rustup run "$RUSTUP_TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
  { echo "fuzz.sh needs the $RUSTUP_TOOLCHAIN toolchain: rustup toolchain install nightly" >&2; exit 2; }
[ -x "$BIN/cargo-fuzz" ] || scripts/install-tools.sh
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("$BIN/cargo-fuzz" fuzz list --fuzz-dir fuzz)
fi

# One build for all targets (cargo builds every bin of the fuzz crate at once).
nice -n 19 "$BIN/cargo-fuzz" fuzz build "${fuzz_flags[@]}" --fuzz-dir fuzz --target-dir "$TARGET_DIR" >&2
for target in "${targets[@]}"; do
  mkdir -p "$WORK/corpus/$target" "$WORK/artifacts/$target"
  echo "[fuzz] $target for ${SECONDS_PER_TARGET}s" >&2
  # One process (libFuzzer's default; -jobs=1 would only move its output to a log file).
  log="$WORK/logs/$target.log"
  mkdir -p "$WORK/logs"
  status=0
  nice -n 19 "$BIN/cargo-fuzz" fuzz run "${fuzz_flags[@]}" --fuzz-dir fuzz --target-dir "$TARGET_DIR" "$target" \
    "$WORK/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -rss_limit_mb=2048 \
    -artifact_prefix="$WORK/artifacts/$target/" >"$log" 2>&1 || status=$?
  # The figures: libFuzzer's last status line (runs, cov, ft, corp, exec/s, rss) and final stats.
  grep -E '^#[0-9]+' "$log" | tail -n 1 >&2 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" >&2 || true
  if [ "$status" != 0 ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" >&2 || true
    echo "[fuzz] $target FAILED (exit $status): $log, input in $WORK/artifacts/$target/" >&2
    exit 1
  fi
done
