#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: installs and builds the real
# components (cached under ~/.cache/flowplane), starts a private control plane and nats-server,
# runs every test tier with cargo test (unit, CLI, integration, end-to-end), then stops them.
# The real-node tier (tests/real_node.rs) starts a second environment with a kubelet
# (`local-env.sh up --with-node`) from the image built here, and stops it itself.
set -euo pipefail
cd "$(dirname "$0")/.."

export FLOWPLANE_CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FLOWPLANE_CACHE/target}"
# Each clone builds the crate once under a new path: incremental state would only fill the disk
# (5 GB per clone in the shared target directory).
export CARGO_INCREMENTAL=0
# A control plane of its own, so a developer's running demo is neither used nor disturbed.
export FLOWPLANE_ENV_NAME="test-$$"
export FLOWPLANE_STATE="$FLOWPLANE_CACHE/run/$FLOWPLANE_ENV_NAME"

command -v cargo >/dev/null || { echo "cargo is needed (https://rustup.rs)" >&2; exit 2; }
command -v go >/dev/null || { echo "go is needed to build the control plane" >&2; exit 2; }

scripts/install-tools.sh
# The tests find their external binaries in a directory of their own holding only what
# install-tools.sh builds by default, so a warm cache cannot pass what a fresh machine fails.
export FLOWPLANE_TOOLS="$FLOWPLANE_STATE/tools"
scripts/check-tools.sh
cleanup() {
  scripts/local-env.sh down || true
  FLOWPLANE_STATE="$FLOWPLANE_STATE-node" scripts/local-env.sh down || true
  rm -rf "$FLOWPLANE_STATE" "$FLOWPLANE_STATE-demo" "$FLOWPLANE_STATE-scenario" "$FLOWPLANE_STATE-node"
}
trap cleanup EXIT
scripts/local-env.sh up >/dev/null
# The image the real-node tier runs (built before cargo test, which must not wait on itself).
FLOWPLANE_IMAGE_ARCHIVE="$(scripts/build-image.sh)"
export FLOWPLANE_IMAGE_ARCHIVE

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets "$@"
# A short smoke of every fuzz target from the committed corpus (docs/testing.md), built without
# a sanitizer and unoptimized: the sanitizer build costs CI more than it finds in safe Rust.
FUZZ_FLAGS="--sanitizer none --dev" scripts/fuzz.sh 10
