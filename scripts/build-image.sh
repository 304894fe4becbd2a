#!/usr/bin/env bash
# Builds the project's image from the Dockerfile without a Docker daemon and without any registry:
# the static musl binary is compiled here (cargo), then Debian's buildah (unpacked into the tool
# cache by install-tools.sh, run from there, rootful, vfs storage in a throwaway directory) builds
# the Dockerfile's runtime stage with BINARY_FROM=prebuilt (FROM scratch: nothing to pull) and
# writes an OCI archive.
#
#   scripts/build-image.sh [ARCHIVE]    default: $CARGO_TARGET_DIR/image/flowplane.oci.tar
#
# Prints the archive's path on stdout; its size and the image's user on stderr.
# FLOWPLANE_IMAGE names the image (default flowplane.local/flowplane:dev).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
BIN="${FLOWPLANE_TOOLS:-$CACHE/bin}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
IMAGE="${FLOWPLANE_IMAGE:-flowplane.local/flowplane:dev}"
ARCHIVE="${1:-$TARGET_DIR/image/flowplane.oci.tar}"
RUST_TARGET=x86_64-unknown-linux-musl

log() { printf '[build-image] %s\n' "$*" >&2; }

"$REPO/scripts/install-tools.sh"
rustup target list --installed 2>/dev/null | grep -qx "$RUST_TARGET" || rustup target add "$RUST_TARGET" >&2
# ring's C and assembly need no libc headers, so the system's gcc compiles them for musl; rustc
# links the static binary with its own musl (self-contained), so musl-tools is not needed.
log "building the static binary ($RUST_TARGET, release)"
(cd "$REPO" && CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-gcc}" \
  cargo build --release --locked --bin flowplane --target "$RUST_TARGET" >&2)

ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca_bundle" ] || { log "$ca_bundle is missing: install Debian's ca-certificates"; exit 1; }
rm -rf "$REPO/.image" && mkdir -p "$REPO/.image"
strip -o "$REPO/.image/flowplane" "$TARGET_DIR/$RUST_TARGET/release/flowplane"
# The image's binary must allocate with jemalloc, not musl's allocator (src/lib.rs says why):
# jemalloc prints its statistics at exit when asked.
allocator_stats="$(_RJEM_MALLOC_CONF=stats_print:true "$REPO/.image/flowplane" --version 2>&1)"
[[ "$allocator_stats" == *"Begin jemalloc statistics"* ]] \
  || { log "the static binary does not allocate with jemalloc"; exit 1; }
cp "$ca_bundle" "$REPO/.image/ca-certificates.crt"

# buildah's storage lives only for this build: the archive is the product.
work="$(mktemp -d "${TMPDIR:-/tmp}/flowplane-image.XXXXXX")"
trap 'rm -rf "$work" "$REPO/.image"' EXIT
# Nothing is pulled: every registry is refused; only the local storage may be copied from.
printf '{"default": [{"type": "reject"}], "transports": {"containers-storage": {"": [{"type": "insecureAcceptAnything"}]}}}\n' >"$work/policy.json"
buildah() {
  "$BIN/buildah" --root "$work/root" --runroot "$work/run" --storage-driver vfs "$@"
}
export CONTAINERS_REGISTRIES_CONF=/dev/null BUILDAH_ISOLATION=chroot
log "building $IMAGE with buildah (Dockerfile, BINARY_FROM=prebuilt)"
buildah bud --signature-policy "$work/policy.json" --timestamp 0 --layers=false \
  --build-arg BINARY_FROM=prebuilt -f "$REPO/Dockerfile" -t "$IMAGE" "$REPO" >&2
mkdir -p "$(dirname "$ARCHIVE")"
rm -f "$ARCHIVE"
buildah push --signature-policy "$work/policy.json" --quiet "$IMAGE" "oci-archive:$ARCHIVE:$IMAGE" >&2
user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")"
size="$(du -k "$ARCHIVE" | cut -f1)"
log "$IMAGE: $ARCHIVE, $((size / 1024)) MiB ($size KiB), user $user, entrypoint /flowplane, no shell"
echo "$ARCHIVE"
