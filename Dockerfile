# syntax=docker/dockerfile:1
# flowplane: one binary (`flowplane controller`, `flowplane worker`, `flowplane render`, ...) on
# an empty base: the binary, the C libraries it loads (Debian bookworm's glibc and libgcc), Debian's
# CA bundle and a passwd naming the non-root user 65532; no shell, no package manager.
#
#   docker build -t flowplane:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/flowplane/flowplane:0.1.0 .
#   scripts/build-image.sh        offline, without a daemon (buildah): the binary built outside
#
# The Helm chart runs it as `flowplane controller`; the operator deploys the same image as the
# sync workers (`flowplane worker`) unless worker.image is set.

# The toolchain the test suite runs on.
ARG RUST_VERSION=1.95
# Where the root file system comes from: `build` compiles the binary in a Rust image (needs a
# registry); `prebuilt` takes it from .image/rootfs in the build context, where
# scripts/build-image.sh puts it, so the image builds with no registry at all. One runtime
# stage for both, so what is tested is what users build.
ARG BINARY_FROM=build

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
# glibc, not static musl: musl's memcpy costs the worker about a sixth more CPU per record
# (BENCHMARKS.md, "The image on glibc"). arm64 is cross-built with Debian's cross toolchain,
# whose glibc and libgcc (the same bookworm versions) go into the image.
RUN case "$TARGETARCH" in \
      amd64|"") echo x86_64-unknown-linux-gnu > /rust-target ;; \
      arm64) echo aarch64-unknown-linux-gnu > /rust-target \
             && apt-get update \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                  gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
             && rm -rf /var/lib/apt/lists/* ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    # jemalloc's page size is fixed when it is built, and a cross build cannot ask the target:
    # on arm64, 64 KiB (2^16) runs on 4, 16 and 64 KiB kernels alike.
    if [ "$TARGETARCH" = arm64 ]; then export JEMALLOC_SYS_WITH_LG_PAGE=16; fi \
 && cargo build --release --locked --bin flowplane --target "$(cat /rust-target)" \
 && mkdir -p /out/rootfs/etc/ssl/certs \
 && cp "target/$(cat /rust-target)/release/flowplane" /out/rootfs/flowplane \
 && cp /etc/ssl/certs/ca-certificates.crt /out/rootfs/etc/ssl/certs/ca-certificates.crt
# The loader the binary names and the libraries it needs, at the paths the loader searches.
RUN case "$TARGETARCH" in \
      amd64|"") loader=/lib64/ld-linux-x86-64.so.2 libdir=/lib/x86_64-linux-gnu \
                from=/lib/x86_64-linux-gnu ;; \
      arm64) loader=/lib/ld-linux-aarch64.so.1 libdir=/lib/aarch64-linux-gnu \
             from=/usr/aarch64-linux-gnu/lib ;; \
    esac \
 && mkdir -p "/out/rootfs$(dirname "$loader")" "/out/rootfs$libdir" \
 && cp -L "$from/$(basename "$loader")" "/out/rootfs$loader" \
 && for library in libc.so.6 libm.so.6 libgcc_s.so.1; do \
      cp -L "$from/$library" "/out/rootfs$libdir/$library"; \
    done

FROM scratch AS prebuilt
COPY .image/rootfs /out/rootfs

FROM ${BINARY_FROM} AS binary

FROM scratch
COPY deploy/image/passwd deploy/image/group /etc/
COPY --from=binary /out/rootfs/ /
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/flowplane"]
CMD ["controller"]
