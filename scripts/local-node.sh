# A real node for the local environment (sourced by scripts/local-env.sh; `up --with-node`):
# containerd (runc, the CNI bridge and host-local plugins), kube-scheduler and a kubelet
# registered as node $NODE_NAME, with the image of scripts/build-image.sh imported. See
# docs/real-node.md for what it changes on the machine and why.
#
# Pod networking stays on this machine: one bridge ($NODE_BRIDGE) with a private /24 used only
# there, no gateway, no masquerade, no routes; pods reach the bridge address, where NATS, the API
# server and the tests' simulators listen, and nothing beyond.
#
# The kubelet has fixed paths (/var/lib/kubelet/device-plugins, /var/log/containers), so one node
# runs on a machine at a time: $NODE_LOCK says whose it is, and a second `up --with-node` fails
# naming it. `down` stops only what `up` started, unmounts what the kubelet and containerd
# mounted, removes the cgroups, paths and bridge they created and restores the sysctls the
# kubelet changes.

NODE_BRIDGE=fpnode0
NODE_SUBNET="${FLOWPLANE_NODE_SUBNET:-10.244.77}"
NODE_IP="$NODE_SUBNET.1"
NODE_NAME=flowplane-node
NODE_DIR="$STATE/node"
NODE_LOCK=/run/flowplane-node.owner
NODE_IMAGE="${FLOWPLANE_IMAGE:-flowplane.local/flowplane:dev}"
PAUSE_IMAGE="flowplane.local/pause:k8s-${K8S_VERSION:-1.37.2}"
# What the kubelet writes outside its root directory and changes in the kernel.
NODE_FIXED_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni)
NODE_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)

node_alive() { alive containerd && alive kubelet && alive kube-scheduler; }

# ctr warns on every call that cgroup v1 is deprecated; the rest of its errors stay.
ctr_node() { "$BIN/ctr" --address "$NODE_DIR/containerd.sock" -n k8s.io "$@" 2> >(grep -v DEPRECATION >&2); }

# Takes the machine's one node for this environment, or fails naming its owner; then the
# bridge, so NATS and the API server can listen on its address.
node_prepare() {
  [ "$(id -u)" = 0 ] || { log "a node needs root (mounts, cgroups, a bridge)"; exit 1; }
  (
    flock 8
    if [ -f "$NODE_LOCK" ]; then
      owner="$(cat "$NODE_LOCK")"
      if [ "$owner" != "$STATE" ] && [ -f "$owner/kubelet.pid" ] && kill -0 "$(cat "$owner/kubelet.pid")" 2>/dev/null; then
        log "a node is already running on this machine, for $owner; only one can (fixed kubelet paths)."
        log "stop it with: FLOWPLANE_STATE=$owner scripts/local-env.sh down"
        exit 1
      fi
      if [ "$owner" != "$STATE" ] && [ -d "$owner/node" ]; then
        log "cleaning up the stopped node of $owner"
        STATE="$owner" NODE_DIR="$owner/node" NODE_LOCK_HELD=1 node_down
      fi
    fi
    echo "$STATE" >"$NODE_LOCK"
  ) 8>"$NODE_LOCK.lock" || exit 1
  mkdir -p "$NODE_DIR"
  if ip route show | grep -q "^$NODE_SUBNET\.0/24" && ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "$NODE_SUBNET.0/24 is already routed on this machine; set FLOWPLANE_NODE_SUBNET to a free 10.x.y"
    exit 1
  fi
  # What existed before, so down removes only what the node added.
  [ -f "$NODE_DIR/preexisting" ] || for p in "${NODE_FIXED_PATHS[@]}"; do
    [ -e "$p" ] && echo "$p"
  done >"$NODE_DIR/preexisting"
  [ -f "$NODE_DIR/sysctls" ] || for k in "${NODE_SYSCTLS[@]}"; do
    echo "$k=$(sysctl -n "$k")"
  done >"$NODE_DIR/sysctls"
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    touch "$NODE_DIR/bridge-created"
  fi
  ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
}

# The kubelet's cgroupRoot: inside the cgroup this script runs in (so the pods stay inside
# whatever limits it runs under), made in every v1 hierarchy, cpuset's cpus and mems copied
# down each level (a new cpuset cgroup starts empty).
node_cgroups() {
  local base root h dir level
  base="$(sed -n 's/^[0-9]*:memory:\(.*\)$/\1/p' /proc/self/cgroup)"
  root="${base%/}/$NODE_NAME"
  echo "$root" >"$NODE_DIR/cgroup-root"
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] || continue
    dir="${h%/}"
    for level in ${root//\// }; do
      dir="$dir/$level"
      mkdir -p "$dir"
      if [ "$(basename "$h")" = cpuset ]; then
        [ -s "$dir/cpuset.cpus" ] || cat "$(dirname "$dir")/cpuset.cpus" >"$dir/cpuset.cpus"
        [ -s "$dir/cpuset.mems" ] || cat "$(dirname "$dir")/cpuset.mems" >"$dir/cpuset.mems"
      fi
    done
  done
  echo "$root"
}

# The sandbox ("pause") image: Kubernetes' own pause.c from its module, built static here (no
# registry to pull registry.k8s.io/pause from).
node_pause_image() {
  local out="$CACHE/node/pause-${K8S_VERSION:-1.37.2}.oci.tar"
  [ -s "$out" ] && { echo "$out"; return 0; }
  local src work
  src="$(cd "$CACHE" && GOMODCACHE="$CACHE/go-mod" GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v${K8S_VERSION:-1.37.2}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  work="$(mktemp -d)"
  mkdir -p "$work/ctx" "$(dirname "$out")"
  gcc -Os -static -DVERSION="k8s-${K8S_VERSION:-1.37.2}" -o "$work/ctx/pause" "$src/build/pause/linux/pause.c"
  strip "$work/ctx/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/ctx/Dockerfile"
  printf '{"default": [{"type": "reject"}], "transports": {"containers-storage": {"": [{"type": "insecureAcceptAnything"}]}}}\n' >"$work/policy.json"
  local b=("$BIN/buildah" --root "$work/root" --runroot "$work/run" --storage-driver vfs)
  CONTAINERS_REGISTRIES_CONF=/dev/null "${b[@]}" bud --signature-policy "$work/policy.json" --timestamp 0 -t "$PAUSE_IMAGE" "$work/ctx" >&2
  CONTAINERS_REGISTRIES_CONF=/dev/null "${b[@]}" push --signature-policy "$work/policy.json" --quiet "$PAUSE_IMAGE" "oci-archive:$out.tmp:$PAUSE_IMAGE" >&2
  mv "$out.tmp" "$out"
  rm -rf "$work"
  echo "$out"
}

node_containerd_config() {
  cat >"$NODE_DIR/containerd.toml" <<TOML
version = 3
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
# NRI listens on a fixed socket path and CDI reads fixed directories; nothing here uses them.
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$NODE_DIR/containerd.sock"
[ttrpc]
  address = "$NODE_DIR/containerd.sock.ttrpc"
[debug]
  address = "$NODE_DIR/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  cdi_spec_dirs = []
  # This machine lacks CAP_SYS_RESOURCE: without this runc fails every sandbox ("can't get
  # final child's PID from pipe") lowering its oom_score_adj.
  restrict_oom_score_adj = true
  # Network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "$BIN/containerd-shim"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$BIN/runc"
        Root = "$NODE_DIR/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$BIN/cni-plugins"]
    conf_dir = "$NODE_DIR/cni/net.d"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
  mkdir -p "$NODE_DIR/cni/net.d"
  cat >"$NODE_DIR/cni/net.d/10-flowplane.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "flowplane-node",
  "plugins": [{
    "type": "bridge",
    "bridge": "$NODE_BRIDGE",
    "isGateway": false,
    "ipMasq": false,
    "hairpinMode": false,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": "$NODE_SUBNET.0/24", "rangeStart": "$NODE_SUBNET.10", "rangeEnd": "$NODE_SUBNET.250"}]],
      "dataDir": "$NODE_DIR/cni/ipam"
    }
  }]
}
JSON
}

node_kubelet_config() { # cgroup root
  cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Serves logs and exec to the API server on the bridge address; local only, so anonymous
# requests are allowed.
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$NODE_DIR/containerd.sock
# This machine is hybrid cgroup v1, which kubelet >= 1.35 refuses unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $1
podLogsDir: $NODE_DIR/pod-logs
volumePluginDir: $NODE_DIR/volume-plugins
# No iptables on this machine, and no kube-proxy.
makeIPTablesUtilChains: false
failSwapOn: false
# The disk is shared and mostly full: evict and collect images only when it really runs out.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 60
serializeImagePulls: false
YAML
}

node_start() {
  local root pause
  log "starting the node ($NODE_NAME on $NODE_BRIDGE, $NODE_IP)"
  root="$(node_cgroups)"
  node_containerd_config
  node_kubelet_config "$root"
  mkdir -p "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs" "$NODE_DIR/volume-plugins"
  start containerd "$BIN/containerd" --config "$NODE_DIR/containerd.toml"
  wait_for containerd 60 ctr_node version
  pause="$(node_pause_image)"
  ctr_node images import --all-platforms "$pause" >/dev/null
  local image="${FLOWPLANE_IMAGE_ARCHIVE:-}"
  [ -n "$image" ] || image="$("$here/build-image.sh")"
  ctr_node images import "$image" >/dev/null
  local images
  images="$(ctr_node images ls -q)"
  grep -qx "$NODE_IMAGE" <<<"$images" || { log "$NODE_IMAGE not in containerd after import: $images"; exit 1; }
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/kubeconfig" \
    --authentication-kubeconfig "$STATE/kubeconfig" --authorization-kubeconfig "$STATE/kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0
  start kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$STATE/kubeconfig" \
    --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet-pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  wait_for kubelet 120 node_ready
}

node_ready() {
  [ "$("$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}{range .spec.taints[*]}{.key}{end}')" = True ]
}

# Stops what node_start started and undoes what the kubelet and containerd changed. Safe to run
# when nothing of the node is up.
node_down() {
  [ -d "$NODE_DIR" ] || return 0
  stop kubelet
  stop kube-scheduler
  # The containers first (their shims outlive containerd), then containerd, then the shims
  # this containerd started (they name its socket on their command line).
  local root="" h pid
  [ -f "$NODE_DIR/cgroup-root" ] && root="$(cat "$NODE_DIR/cgroup-root")"
  if [ -n "$root" ] && [ -d "/sys/fs/cgroup/pids$root" ]; then
    for _ in 1 2 3; do
      find "/sys/fs/cgroup/pids$root" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      sleep 0.2
    done
  fi
  stop containerd
  for pid in $(pgrep -f "containerd-shim.* -address $NODE_DIR/containerd.sock" || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
  # Mounts: the kubelet's root bind mount, pod volumes, snapshots, network namespaces.
  # The fixed paths that did not exist before the node (none when that was not recorded).
  local fixed=()
  [ -f "$NODE_DIR/preexisting" ] &&
    mapfile -t fixed < <(printf '%s\n' "${NODE_FIXED_PATHS[@]}" | grep -vxF -f "$NODE_DIR/preexisting")
  for _ in 1 2 3; do
    findmnt -rn -o TARGET | grep -E "^($NODE_DIR$(printf '|%s' "${fixed[@]}"))(/|$)" | sort -r |
      xargs -r -n1 umount -l 2>/dev/null || true
  done
  if [ -n "$root" ]; then
    for h in /sys/fs/cgroup/*/; do
      [ -d "${h%/}$root" ] && find "${h%/}$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  fi
  if [ -f "$NODE_DIR/sysctls" ]; then
    while IFS= read -r kv; do sysctl -q -w "$kv" >/dev/null 2>&1 || true; done <"$NODE_DIR/sysctls"
  fi
  for p in "${fixed[@]}"; do rm -rf "$p"; done
  if [ -f "$NODE_DIR/bridge-created" ]; then
    ip link delete "$NODE_BRIDGE" 2>/dev/null || true
  fi
  rm -rf "$NODE_DIR"
  [ "${NODE_LOCK_HELD:-0}" = 1 ] && return 0
  (
    flock 8
    [ "$(cat "$NODE_LOCK" 2>/dev/null)" = "$STATE" ] && rm -f "$NODE_LOCK"
  ) 8>"$NODE_LOCK.lock"
  return 0
}
