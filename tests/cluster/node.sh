#!/usr/bin/env bash
# Usage: tests/cluster/node.sh network|up|status|stop|down    (run by up.sh and down.sh)
#
# The real node of the local cluster, crane-node-0: containerd, kubelet and kube-proxy
# v1.37.2 on this machine, in a network namespace of their own (as kind puts a node in a
# container), next to the kwok nodes.
#   network  creates the namespace and the veth pair to it (up.sh runs this before the
#            control plane, whose API server advertises the host side of the pair)
#   up       installs what is missing (containerd, runc, CNI plugins, iptables, nftables,
#            conntrack, socat, umoci, gcc: Debian packages), builds the pause image, signs
#            the node's certificates with the cluster CA, starts containerd, the kubelet,
#            kube-proxy, the API server's door into the node network and the
#            LoadBalancer allocator (lb.sh), and waits until the node is Ready
#   status   says whether every process of the node runs and the node is Ready (exit 1
#            if not)
#   stop     stops the node's processes (and its containers), keeping its state and logs
#   down     stops all of it and undoes what `network` and `up` changed on the machine:
#            processes, mounts, cgroups, the namespace, the veth pair and its routes, the
#            sysctls the kubelet sets, the directories it creates outside .cluster/
# Everything else lives in .cluster/node/ (configuration, certificates, containerd's root
# and state, the kubelet's root, logs: .cluster/node/logs/). Needs root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"
# shellcheck source=SCRIPTDIR/node.env
source "$here/node.env"

cluster_dir=$repo/.cluster
dir=$cluster_dir/node
workdir=$cluster_dir/kwok/clusters/crane
pki=$workdir/pki
cache=${CRANE_CACHE_DIR:-$HOME/.cache/crane-operator}
kube_bin=$cache/bin/kubernetes-$KUBERNETES_VERSION
node_bin=$cache/bin/kubernetes-node-$KUBERNETES_VERSION
port=${CRANE_APISERVER_PORT:-26443}
timeout=${CRANE_UP_TIMEOUT:-180}
# The cgroup of everything the node runs (kubelet's cgroupRoot; the daemons in daemons/).
cgroup=$NODE_NAME
# Processes, in start order; each has .cluster/node/pids/NAME.pid and logs/NAME.log.
daemons=(containerd kubelet kube-proxy apiserver-door lb-allocator)
# Global sysctls the kubelet sets when it starts (pkg/kubelet/cm: setupKernelTunables),
# and host-namespace ones that the node's tools could touch: saved by `up`, restored by
# `down`. (The bridge plugin's ip_forward and kube-proxy's settings are per network
# namespace: they go with the node's namespace.)
sysctls=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables)
# Host directories written whatever the configuration says: the kubelet's symlinks in
# /var/log/containers and its device-plugin socket in /var/lib/kubelet, the CNI library's
# result cache in /var/lib/cni and the shims' sockets in /run/containerd/s (containerd 1.6
# moves neither), and /run/netns, which `ip netns` mounts. `down` removes what the node
# put there, and each directory that `up` did not find.
host_dirs=(/var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd /run/netns)
# The CNI network's name (the CNI result cache names its files after it).
cni_network=$NODE_NAME
# Debian packages the node needs: COMMAND:PACKAGE.
packages=(containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins
  iptables:iptables nft:nftables conntrack:conntrack socat:socat umoci:umoci jq:jq gcc:gcc
  /usr/include/stdlib.h:libc6-dev openssl:openssl nsenter:util-linux ip:iproute2)

log() { printf '[node] %s\n' "$*"; }
die() {
  printf '[node] error: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
since() {
  local ms=$(($(now_ms) - $1))
  printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}
in_node() { nsenter --net="/run/netns/$NODE_NETNS" "$@"; }
kc() { "$kube_bin/kubectl" --kubeconfig "$workdir/kubeconfig.yaml" --request-timeout=5s "$@"; }
ctr_node() { ctr --address "$dir/containerd/containerd.sock" --namespace k8s.io "$@"; }

# cgroup_roots: the mount point of every cgroup hierarchy (v1 controllers, name=systemd,
# the v2 unified one).
cgroup_roots() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/mounts; }

pid_of() { cat "$dir/pids/$1.pid" 2>/dev/null || true; }
alive() {
  local pid state
  pid=$(pid_of "$1")
  [ -n "$pid" ] || return 1
  state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) && [ "$state" != Z ]
}

# --- network ------------------------------------------------------------------------------
network() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (network namespace, mounts, cgroups)"
  # One real node per machine: these names and addresses are fixed (node.env).
  if [ ! -e "$dir/host-dirs" ] && { grep -q "^$NODE_NETNS\b" <<<"$(ip netns list)" || ip link show "$NODE_HOST_IF" >/dev/null 2>&1; }; then
    die "another checkout's real node uses network namespace $NODE_NETNS / $NODE_HOST_IF on this machine: stop that cluster first ('make cluster-down' in its checkout)"
  fi
  mkdir -p "$dir"
  # Whether the host directories existed, and /run/netns was a mount point, before.
  if [ ! -e "$dir/host-dirs" ]; then
    local d
    for d in "${host_dirs[@]}"; do
      if [ -e "$d" ]; then echo "$d existed"; else echo "$d created"; fi
      if mountpoint -q "$d" 2>/dev/null; then echo "$d mounted"; fi
    done >"$dir/host-dirs"
  fi
  local fresh=0
  if ! grep -qx "$NODE_NETNS\( .*\)\?" <<<"$(ip netns list)"; then
    ip netns add "$NODE_NETNS"
    fresh=1
  fi
  if ! ip link show "$NODE_HOST_IF" >/dev/null 2>&1; then
    ip link add "$NODE_HOST_IF" type veth peer name eth0 netns "$NODE_NETNS"
  fi
  ip addr replace "$NODE_HOST_IP/${NODE_NETWORK#*/}" dev "$NODE_HOST_IF"
  ip link set "$NODE_HOST_IF" up
  in_node ip link set lo up
  in_node ip addr replace "$NODE_IP/${NODE_NETWORK#*/}" dev eth0
  in_node ip link set eth0 up
  # Inside the node only: pods are routed through it (the bridge plugin would set it too).
  in_node sysctl -qw net.ipv4.ip_forward=1
  local cidr
  for cidr in "$NODE_POD_CIDR" "$SERVICE_CIDR" "$LB_CIDR"; do
    ip route replace "$cidr" via "$NODE_IP" dev "$NODE_HOST_IF"
  done
  [ "$fresh" = 0 ] || log "network: namespace $NODE_NETNS, $NODE_HOST_IF $NODE_HOST_IP <-> eth0 $NODE_IP; pods $NODE_POD_CIDR, Services $SERVICE_CIDR, load balancers $LB_CIDR routed to the node"
}

# --- up -----------------------------------------------------------------------------------
ensure_packages() {
  "$here/../../hack/debian-packages.sh" "the real node" "${packages[@]}" ||
    die "the node's runtime is not installed (see above)"
}

# The node's own images, from C sources in node/: the pod sandbox (containerd's
# sandbox_image) and a tiny HTTP server for the checks of smoke.sh.
pause_image=localhost/crane-pause:1
hello_image=localhost/crane-hello:1

# c_image NAME IMAGE USER: node/NAME.c built with `gcc -static` and packed by
# hack/oci-image.sh as an OCI image-layout archive holding only /NAME, its entrypoint;
# cached by the hash of the inputs. Prints the archive's path.
c_image() {
  local name=$1 image=$2 user=$3 sum out work
  sum=$(printf '%s %s\n' "$image" "$user" | cat - "$here/node/$name.c" "$repo/hack/oci-image.sh" | sha256sum | cut -c1-16)
  out=$cache/images/crane-$name-$sum.tar
  if [ ! -f "$out" ]; then
    work=$(mktemp -d)
    gcc -static -Os -s -Wall -Wextra -Werror -o "$work/$name" "$here/node/$name.c" ||
      die "gcc could not build $here/node/$name.c statically (Debian: apt-get install gcc libc6-dev)"
    SOURCE_DATE_EPOCH=0 "$repo/hack/oci-image.sh" --name "$image" --out "$out" \
      --add "$work/$name:/$name:0755" --entrypoint "/$name" --user "$user" >/dev/null ||
      die "hack/oci-image.sh could not pack $image (see above)"
    rm -rf "$work"
  fi
  echo "$out"
}

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster CA.
sign() {
  local name=$1 subject=$2 ext=$3
  [ -f "$dir/pki/$name.crt" ] && return
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subject" \
    -keyout "$dir/pki/$name.key" -out "$dir/pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -extfile <(printf '%s\n' "$ext") \
    -out "$dir/pki/$name.crt" 2>/dev/null
  rm "$dir/pki/$name.csr"
}

# kubeconfig NAME: a kubeconfig for the node's client certificate NAME.
kubeconfig() {
  cat >"$dir/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: crane
  cluster: {server: "https://$NODE_HOST_IP:$port", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$dir/pki/$1.crt", client-key: "$dir/pki/$1.key"}
contexts:
- name: crane
  context: {cluster: crane, user: $1}
current-context: crane
EOF
}

write_configs() {
  mkdir -p "$dir/pki" "$dir/cni/net.d" "$dir/cni/networks" "$dir/containerd" "$dir/kubelet" "$dir/pod-logs"
  local client='keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  sign kube-proxy "/CN=system:kube-proxy" "$client"
  sign kubelet-serving "/CN=$NODE_NAME" "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
  kubeconfig kubelet
  kubeconfig kube-proxy

  # containerd: everything under .cluster/node/containerd; CRI with the local pause image,
  # cgroupfs, and no oom_score_adj below its own (root here lacks CAP_SYS_RESOURCE).
  local c=$dir/containerd
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/runc"
EOF

  cat >"$dir/cni/net.d/10-crane.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$cni_network",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$dir/cni/networks",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  # The kubelet: x509 + webhook authentication and webhook authorization (the API server
  # comes with the cluster's admin certificate for logs/exec), its own serving certificate,
  # every path under .cluster/node, images never garbage-collected (nothing can pull
  # them again), eviction only when the machine is really short.
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$dir/pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$dir/pki/kubelet-serving.key"
rotateCertificates: false
serverTLSBootstrap: false
containerRuntimeEndpoint: "unix://$c/containerd.sock"
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup
failCgroupV1: false
failSwapOn: false
resolvConf: ""
podLogsDir: "$dir/pod-logs"
volumePluginDir: "$dir/kubelet/volume-plugins"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 110
EOF

  # kube-proxy: nftables, NodePorts on the node network only, no oom_score_adj (see
  # above), conntrack sysctls left alone.
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$dir/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
mode: nftables
clusterCIDR: $NODE_POD_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$NODE_NETWORK"]
iptables: {localhostNodePorts: false}
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
}

# make_cgroups: $cgroup and $cgroup/daemons in every hierarchy.
make_cgroups() {
  local root
  for root in $(cgroup_roots); do
    mkdir -p "$root/$cgroup/daemons"
    # cgroup v1 cpuset: a new cgroup has no CPUs or memory nodes until given its parent's.
    if [ -f "$root/cpuset.cpus" ]; then
      local d
      for d in "$root/$cgroup" "$root/$cgroup/daemons"; do
        cat "$root/cpuset.cpus" >"$d/cpuset.cpus"
        cat "$root/cpuset.mems" >"$d/cpuset.mems"
      done
    fi
    # cgroup v2 as the only hierarchy: the kubelet's cgroups need the controllers.
    if [ "$root" = /sys/fs/cgroup ] && [ -f "$root/cgroup.subtree_control" ]; then
      local ctl ctls
      read -ra ctls <"$root/cgroup.controllers"
      for ctl in "${ctls[@]}"; do
        echo "+$ctl" >"$root/$cgroup/cgroup.subtree_control" 2>/dev/null || true
      done
    fi
  done
}

# start NAME NETNS|host COMMAND...: runs COMMAND in the background, detached, in the
# daemons cgroup, in the node's network namespace unless host; logs to logs/NAME.log.
start() {
  local name=$1 where=$2
  shift 2
  alive "$name" && return
  local enter=()
  [ "$where" = node ] && enter=(nsenter "--net=/run/netns/$NODE_NETNS")
  (
    exec 9<&- </dev/null >>"$dir/logs/$name.log" 2>&1
    for root in $(cgroup_roots); do echo "$BASHPID" >"$root/$cgroup/daemons/cgroup.procs"; done
    exec setsid "${enter[@]}" "$@"
  ) &
  echo $! >"$dir/pids/$name.pid"
}

# wait_until DESCRIPTION LOG COMMAND...: poll COMMAND; on time-out show the log and fail.
wait_until() {
  local what=$1 logfile=$2 t0 end
  shift 2
  t0=$(now_ms)
  end=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    local d
    for d in "${daemons[@]}"; do
      if [ -f "$dir/pids/$d.pid" ] && ! alive "$d"; then
        fail "$d exited while waiting for $what" "$dir/logs/$d.log"
      fi
    done
    [ "$SECONDS" -lt "$end" ] || fail "timed out after $timeout s waiting for $what" "$logfile"
    sleep 0.5
  done
  log "$what ($(since "$t0"))"
}
fail() {
  printf '[node] error: %s\n' "$1" >&2
  if [ -s "$2" ]; then
    echo "----- last lines of $2" >&2
    tail -n 15 "$2" >&2
  fi
  cat >&2 <<EOF
[node] the node's logs are in $dir/logs/. Next: fix the cause, then 'make cluster' again
[node] (it recreates the cluster), or 'make cluster-down' to remove everything.
EOF
  exit 1
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

up() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (network namespace, mounts, cgroups)"
  [ -d "$pki" ] || die "no cluster CA in $pki: run tests/cluster/up.sh (make cluster)"
  local b
  for b in "$node_bin/kubelet" "$node_bin/kube-proxy" "$kube_bin/kubectl"; do
    [ -x "$b" ] || die "$b is missing: run tests/cluster/build.sh"
  done
  mkdir -p "$dir/logs" "$dir/pids"
  network
  ensure_packages
  local t0 images
  t0=$(now_ms)
  images=("$(c_image pause "$pause_image" 65535:65535)" "$(c_image hello "$hello_image" 65534:65534)")
  write_configs
  make_cgroups
  if [ ! -f "$dir/sysctls.saved" ]; then
    local s
    for s in "${sysctls[@]}"; do
      [ -e "/proc/sys/${s//.//}" ] && printf '%s=%s\n' "$s" "$(sysctl -n "$s")"
    done >"$dir/sysctls.saved"
  fi

  start containerd node containerd --config "$dir/containerd/config.toml"
  wait_until "containerd answering" "$dir/logs/containerd.log" ctr_node version
  "$here/node-import.sh" "${images[@]}" >/dev/null
  start kubelet node "$node_bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$dir/kubelet" --v=1
  # The API server listens on loopback; the node and its pods reach it at the address it
  # advertises (the `kubernetes` Service's endpoint): a forwarder on the host side of the
  # veth pair, and only there.
  start apiserver-door host socat "TCP-LISTEN:$port,bind=$NODE_HOST_IP,reuseaddr,fork" "TCP:127.0.0.1:$port"
  start kube-proxy node "$node_bin/kube-proxy" --config "$dir/kube-proxy.yaml" --v=1
  start lb-allocator host "$here/lb.sh" "$workdir/kubeconfig.yaml"
  wait_until "node $NODE_NAME Ready" "$dir/logs/kubelet.log" node_ready
  log "node $NODE_NAME is up in $(since "$t0"): containerd $(containerd --version | awk '{print $3}'), kubelet and kube-proxy $KUBERNETES_VERSION"
}

# --- status -------------------------------------------------------------------------------
status() {
  local d bad=0
  for d in "${daemons[@]}"; do
    if alive "$d"; then echo "$d: running (pid $(pid_of "$d"))"; else echo "$d: NOT RUNNING" && bad=1; fi
  done
  if node_ready 2>/dev/null; then echo "node $NODE_NAME: Ready"; else echo "node $NODE_NAME: NOT READY" && bad=1; fi
  return "$bad"
}

# --- down ---------------------------------------------------------------------------------
# cgroup_pids: every process in the node's cgroup tree (daemons, shims, containers).
cgroup_pids() {
  local root
  for root in $(cgroup_roots); do
    [ -d "$root/$cgroup" ] || continue
    find "$root/$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

# stop_all: SIGTERM the daemons (the kubelet and kube-proxy first), then SIGKILL
# whatever still runs in the node's cgroups, until they are empty.
stop_all() {
  local d pid pids
  for d in lb-allocator apiserver-door kube-proxy kubelet containerd; do
    pid=$(pid_of "$d")
    if [ -n "$pid" ] && alive "$d"; then kill "$pid" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 25); do
    pids=$(for d in "${daemons[@]}"; do if alive "$d"; then pid_of "$d"; fi; done)
    [ -z "$pids" ] && break
    sleep 0.2
  done
  for _ in $(seq 1 50); do
    pids=$(cgroup_pids)
    [ -z "$pids" ] && return
    # shellcheck disable=SC2086 # one pid per word
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  die "processes still in the node's cgroups after 10 s: $(cgroup_pids | tr '\n' ' ')"
}

# unmount_all: every mount under .cluster/node (container root filesystems, pod volumes,
# sandbox /dev/shm, pod network namespaces), deepest first.
unmount_all() {
  local m
  for _ in 1 2 3; do
    m=$(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
    [ -z "$m" ] && return
    while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done <<<"$m"
  done
}

remove_cgroups() {
  local root
  for root in $(cgroup_roots); do
    [ -d "$root/$cgroup" ] || continue
    find "$root/$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$root/$cgroup" ] || log "warning: could not remove $root/$cgroup"
  done
}

restore_sysctls() {
  [ -f "$dir/sysctls.saved" ] || return 0
  local line key value
  while IFS= read -r line; do
    key=${line%%=*} value=${line#*=}
    [ "$(sysctl -n "$key" 2>/dev/null)" = "$value" ] && continue
    sysctl -qw "$key=$value" && log "restored $key = $value"
  done <"$dir/sysctls.saved"
}

# restore_host_dirs: what the kubelet, containerd and `ip netns` left outside .cluster/
# (see host_dirs).
restore_host_dirs() {
  [ -f "$dir/host-dirs" ] || return 0
  local l
  for l in /var/log/containers/*; do
    if [ -L "$l" ] && [[ $(readlink "$l") == "$dir/"* ]]; then rm -f "$l"; fi
  done
  # Per sandbox or container ID: its shim's socket, named sha256(<containerd address>/
  # <namespace>/<id>) by containerd 1.6, and the CNI results of the pod network and of the
  # loopback one.
  local task id ns
  for task in "$dir"/containerd/state/io.containerd.runtime.v2.task/*/*; do
    [ -d "$task" ] || continue
    id=${task##*/} ns=${task%/*} ns=${ns##*/}
    rm -f "/run/containerd/s/$(printf '%s' "$dir/containerd/containerd.sock/$ns/$id" | sha256sum | cut -d' ' -f1)"
    rm -f /var/lib/cni/results/{"$cni_network",cni-loopback}-"$id"-*
  done
  if grep -qx '/var/lib/kubelet created' "$dir/host-dirs"; then rm -f /var/lib/kubelet/device-plugins/kubelet.sock; fi
  if grep -qx '/run/netns created' "$dir/host-dirs" || ! grep -qx '/run/netns mounted' "$dir/host-dirs"; then
    if mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then umount /run/netns; fi
  fi
  for l in "${host_dirs[@]}"; do
    if grep -qx "$l created" "$dir/host-dirs" && [ -d "$l" ] && ! mountpoint -q "$l"; then
      find "$l" -depth -type d -empty -delete
      [ ! -e "$l" ] || log "warning: $l holds files that are not the node's; left in place"
    fi
  done
}

down() {
  # Only a node of this checkout (another checkout's would have its own .cluster/node).
  [ -d "$dir" ] || return 0
  [ "$(id -u)" = 0 ] || die "removing the real node needs root"
  stop_all
  unmount_all
  remove_cgroups
  if grep -q "^$NODE_NETNS\b" <<<"$(ip netns list)"; then ip netns del "$NODE_NETNS"; fi
  # The host side of the pair goes with its peer, and its routes with it.
  if ip link show "$NODE_HOST_IF" >/dev/null 2>&1; then ip link del "$NODE_HOST_IF"; fi
  restore_sysctls
  restore_host_dirs
  rm -rf "$dir"
  log "node $NODE_NAME removed"
}

case ${1:-} in
  network) network ;;
  up) up ;;
  status) status ;;
  stop) if [ -d "$dir" ]; then stop_all; fi ;;
  down) down ;;
  *) sed -n '2s/^# //p' "$0" >&2 && exit 2 ;;
esac
