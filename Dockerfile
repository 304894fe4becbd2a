# syntax=docker/dockerfile:1
# flowplane: one static binary (`flowplane controller`, `flowplane worker`, `flowplane render`,
# ...) on an empty base: the binary, Debian's CA bundle and a passwd naming the non-root user
# 65532; no shell, no libc.
#
#   docker build -t flowplane:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/flowplane/flowplane:0.1.0 .
#   scripts/build-image.sh        offline, without a daemon (buildah): the binary built outside
#
# The Helm chart runs it as `flowplane controller`; the operator deploys the same image as the
# sync workers (`flowplane worker`) unless worker.image is set.

# The toolchain the test suite runs on.
ARG RUST_VERSION=1.95
# Where the binary and the CA bundle come from: `build` compiles them in a Rust image (needs a
# registry); `prebuilt` takes them from .image/ in the build context, where
# scripts/build-image.sh puts them, so the image builds with no registry at all. One runtime
# stage for both, so what is tested is what users build.
ARG BINARY_FROM=build

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
# A static musl binary: no libc in the runtime image. ring (TLS) needs a C compiler for musl.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN case "$TARGETARCH" in \
      amd64|"") echo x86_64-unknown-linux-musl > /rust-target ;; \
      arm64) echo aarch64-unknown-linux-musl > /rust-target \
             && apt-get update && apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu \
             && rm -rf /var/lib/apt/lists/* ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    # jemalloc's page size is fixed when it is built, and a cross build cannot ask the target:
    # on arm64, 64 KiB (2^16) runs on 4, 16 and 64 KiB kernels alike.
    if [ "$TARGETARCH" = arm64 ]; then export JEMALLOC_SYS_WITH_LG_PAGE=16; fi \
 && cargo build --release --locked --bin flowplane --target "$(cat /rust-target)" \
 && mkdir /out \
 && cp "target/$(cat /rust-target)/release/flowplane" /out/flowplane \
 && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

FROM scratch AS prebuilt
COPY .image/flowplane .image/ca-certificates.crt /out/

FROM ${BINARY_FROM} AS binary

FROM scratch
COPY deploy/image/passwd deploy/image/group /etc/
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/flowplane /flowplane
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/flowplane"]
CMD ["controller"]
