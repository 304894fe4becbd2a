#!/usr/bin/env bash
# Builds the project's image from the Dockerfile without a Docker daemon and without any registry:
# the binary is compiled here (cargo, release, this Debian's glibc) and put in a root file system
# with the C libraries it loads, copied from this machine (Debian's libc6 and libgcc-s1, the ones
# it was linked against); then Debian's buildah (unpacked into the tool cache by
# install-tools.sh, run from there, rootful, vfs storage in a throwaway directory) builds the
# Dockerfile's runtime stage with BINARY_FROM=prebuilt (FROM scratch: nothing to pull) and writes
# an OCI archive.
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
log() { printf '[build-image] %s\n' "$*" >&2; }

"$REPO/scripts/install-tools.sh"
# glibc, not a static musl binary: musl's memcpy made the worker spend about a sixth more CPU per
# record (BENCHMARKS.md, "The image on glibc"); the libraries add 3.2 MB (1.5 MB compressed).
log "building the binary (release)"
(cd "$REPO" && cargo build --release --locked --bin flowplane >&2)

ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca_bundle" ] || { log "$ca_bundle is missing: install Debian's ca-certificates"; exit 1; }
rootfs="$REPO/.image/rootfs"
rm -rf "$REPO/.image" && mkdir -p "$rootfs/etc/ssl/certs"
strip -o "$rootfs/flowplane" "$TARGET_DIR/release/flowplane"
cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
# The dynamic loader and every library it resolves for the binary, at the same paths.
libraries="$(ldd "$rootfs/flowplane" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')"
[ -n "$libraries" ] || { log "ldd found no libraries for the binary"; exit 1; }
for library in $libraries; do
  mkdir -p "$rootfs$(dirname "$library")"
  cp -L "$library" "$rootfs$library"
done
# The image's root must be enough to run it: no library of this machine may be missing.
chroot "$rootfs" /flowplane --version >/dev/null \
  || { log "the binary does not start in the image's root file system"; exit 1; }
# The image's binary must allocate with jemalloc (src/lib.rs says why): jemalloc prints its
# statistics at exit when asked.
allocator_stats="$(_RJEM_MALLOC_CONF=stats_print:true chroot "$rootfs" /flowplane --version 2>&1)"
[[ "$allocator_stats" == *"Begin jemalloc statistics"* ]] \
  || { log "the binary does not allocate with jemalloc"; exit 1; }

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
log "$IMAGE: $ARCHIVE, $((size / 1024)) MiB ($size KiB), user $user, entrypoint /flowplane, no shell, glibc $(ldd --version | head -1 | awk '{print $NF}')"
echo "$ARCHIVE"
