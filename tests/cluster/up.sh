#!/usr/bin/env bash
# Usage: tests/cluster/up.sh                                   (make cluster)
#
# Starts the local cluster "crane": etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok-controller as local processes (kwokctl, runtime "binary"), with
# simulated nodes (tainted kwok.x-k8s.io/node=fake:NoSchedule) and the stages of
# tests/cluster/kwok.yaml, plus one real node, crane-node-0 (containerd, kubelet,
# kube-proxy in a network namespace of its own) and a LoadBalancer address allocator:
# see tests/cluster/node.sh. The binaries come from build.sh (built once from Go modules,
# then cached); nothing is downloaded (the node's runtime comes from Debian packages,
# installed with apt-get when missing). Needs root for the real node.
# State and logs live in .cluster/ (gitignored); the kubeconfig is .cluster/kubeconfig.
#
# Idempotent: a healthy cluster is left alone; a broken one, or one created from another
# configuration (kwok.yaml, versions, port), is deleted and created again.
#
# Environment:
#   CRANE_APISERVER_PORT  loopback port of the API server (default 26443)
#   CRANE_NODES           number of simulated nodes (default 3), besides the real one
#   CRANE_UP_TIMEOUT      seconds to wait for the cluster to become ready (default 180)
#   CRANE_EXTRA_ARGS      extra component flags, space-separated COMPONENT=FLAG=VALUE words
#                         (kwokctl --extra-args), e.g. for make bench:
#                         "kube-controller-manager=kube-api-qps=1000 kube-scheduler=kube-api-qps=1000"
#                         (default none; a change recreates the cluster)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster_dir=$repo/.cluster
name=crane
port=${CRANE_APISERVER_PORT:-26443}
nodes=${CRANE_NODES:-3}
timeout=${CRANE_UP_TIMEOUT:-180}
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok-controller)

log() { printf '[cluster] %s\n' "$*"; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }

"$here/prerequisites.sh"
case $port in '' | *[!0-9]*) die "CRANE_APISERVER_PORT must be a port number, not '$port'" ;; esac
case $nodes in '' | *[!0-9]*) die "CRANE_NODES must be a number, not '$nodes'" ;; esac
for tool in sha256sum:coreutils cmp:diffutils; do
  command -v "${tool%:*}" >/dev/null || die "${tool%:*} is not on PATH: install it with 'apt-get install ${tool#*:}'"
done

start=$(now_ms)

# One up.sh or down.sh at a time: `make e2e` and `make run` may both start the cluster.
# (The lock is on this file, so down.sh removing .cluster/ cannot lose it. Processes that
# outlive this script must not inherit fd 9: see 9<&- below.)
if command -v flock >/dev/null; then
  exec 9<"$here/up.sh"
  flock -n 9 || { log "waiting for another tests/cluster/up.sh or down.sh to finish"; flock 9; }
  export CRANE_CLUSTER_LOCKED=1
fi

# kwokctl reads many KWOK_* variables; only ours may apply.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^KWOK_' || true)
export KWOK_WORKDIR=$cluster_dir/kwok
workdir=$KWOK_WORKDIR/clusters/$name
kwok_kubeconfig=$workdir/kubeconfig.yaml

# --- binaries (build.sh is a no-op when they are cached) ---------------------------------
bins=$("$here/build.sh" 9<&-) || die "tests/cluster/build.sh failed (see above)"
kube_bin=$(sed -n 's/^KUBERNETES_BIN=//p' <<<"$bins")
node_bin=$(sed -n 's/^KUBERNETES_NODE_BIN=//p' <<<"$bins")
etcd_bin=$(sed -n 's/^ETCD_BIN=//p' <<<"$bins")
kwok_bin=$(sed -n 's/^KWOK_BIN=//p' <<<"$bins")
for b in "$kube_bin"/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl} \
  "$node_bin"/{kubelet,kube-proxy} "$etcd_bin/etcd" "$kwok_bin"/{kwok,kwokctl}; do
  [ -x "$b" ] || die "$b is missing: delete its .stamp under ~/.cache/crane-operator/bin/ and run $here/build.sh"
done
# kwokctl runs `kubectl` from PATH (and would download one if there were none).
export PATH=$kube_bin:$kwok_bin:$PATH
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"
# shellcheck source=SCRIPTDIR/node.env
source "$here/node.env"
export KWOK_KUBE_VERSION=$KUBERNETES_VERSION KWOK_KUBECTL_BINARY=$kube_bin/kubectl

create_args=(
  --name "$name" --config "$here/kwok.yaml"
  create cluster
  --runtime binary
  --kube-apiserver-binary "$kube_bin/kube-apiserver"
  --kube-controller-manager-binary "$kube_bin/kube-controller-manager"
  --kube-scheduler-binary "$kube_bin/kube-scheduler"
  --kwok-controller-binary "$kwok_bin/kwok"
  --etcd-binary "$etcd_bin/etcd"
  --kube-apiserver-port "$port"
  --kube-authorization --kube-admission
  --kubeconfig "" # leave ~/.kube/config alone
  --timeout 5m
)
# For the real node: the API server advertises (as the `kubernetes` Service's endpoint) the
# host side of the node network, where node.sh forwards to it, and reaches kubelets at
# their InternalIP with the admin certificate, checking theirs against the cluster CA;
# kwok-controller manages only the simulated nodes (annotated kwok.x-k8s.io/node=fake).
node_args=(
  "kube-apiserver=advertise-address=$NODE_HOST_IP"
  kube-apiserver=kubelet-preferred-address-types=InternalIP
  "kube-apiserver=kubelet-client-certificate=$workdir/pki/admin.crt"
  "kube-apiserver=kubelet-client-key=$workdir/pki/admin.key"
  "kube-apiserver=kubelet-certificate-authority=$workdir/pki/ca.crt"
  kwok-controller=manage-all-nodes=false
  kwok-controller=manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
)
# (kwokctl v0.8.0 mixes up the components unless each one's first flag comes before any
# component's second flag: the first flags go first.)
firsts=() rest=() seen=' '
for arg in "${node_args[@]}" ${CRANE_EXTRA_ARGS:-}; do
  case $arg in *=*=*) ;; *) die "CRANE_EXTRA_ARGS: '$arg' is not COMPONENT=FLAG=VALUE" ;; esac
  if [[ $seen == *" ${arg%%=*} "* ]]; then rest+=("$arg"); else seen+="${arg%%=*} " && firsts+=("$arg"); fi
done
for arg in "${firsts[@]}" "${rest[@]}"; do create_args+=(--extra-args "$arg"); done
# Identifies what the cluster was created from; a change means it must be created again.
fingerprint=$({
  cat "$here"/{kwok.yaml,node.sh,node.env,lb.sh} "$here"/node/*.c
  printf '%s\n' "${create_args[@]}" "nodes=$nodes"
} | sha256sum | cut -d' ' -f1)

kc() { kubectl --kubeconfig "$kwok_kubeconfig" --request-timeout=5s "$@"; }
# running COMPONENT: is its process alive? (A zombie is not: PID 1 may reap it late.)
running() {
  local pid state
  pid=$(cat "$workdir/pids/$1.pid" 2>/dev/null) || return 1
  state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) && [ "$state" != Z ]
}
ready_nodes() {
  kc get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    grep -c '^True$' || true
}
api_ready() { kc get --raw /readyz >/dev/null 2>&1; }
nodes_ready() { [ "$(ready_nodes)" -ge "$1" ]; }
has_leader() { [ -n "$(kc -n kube-system get lease "$1" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)" ]; }
has_default_sa() { kc -n default get serviceaccount default >/dev/null 2>&1; }

# health: is the cluster up and created from this configuration? Sets $why when not.
why=
health() {
  [ -f "$workdir/kwok.yaml" ] || { why="no cluster"; return 1; }
  [ "$(cat "$cluster_dir/fingerprint" 2>/dev/null)" = "$fingerprint" ] ||
    { why="it was created from another configuration, or did not finish starting"; return 1; }
  local c
  for c in "${components[@]}"; do running "$c" || { why="$c is not running"; return 1; }; done
  local tries=5 # a busy server may be slow to answer
  until api_ready; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || { why="the API server is not ready"; return 1; }
    sleep 1
  done
  nodes_ready $((nodes + 1)) || { why="fewer than $((nodes + 1)) nodes are Ready"; return 1; }
  "$here/node.sh" status >/dev/null 2>&1 || { why="the real node is not healthy ($here/node.sh status)"; return 1; }
}

# publish_kubeconfig: .cluster/kubeconfig, replaced atomically (others may be reading it).
publish_kubeconfig() {
  cmp -s "$kwok_kubeconfig" "$cluster_dir/kubeconfig" && return
  cp "$kwok_kubeconfig" "$cluster_dir/kubeconfig.tmp" && mv "$cluster_dir/kubeconfig.tmp" "$cluster_dir/kubeconfig"
}

usage_hint() {
  log "use it with:  export KUBECONFIG=$cluster_dir/kubeconfig   (or: source tests/cluster/env.sh)"
  log "              kubectl get nodes"
  log "stop it with: make cluster-down"
}

# diagnose: say which component is down and show the end of every log, then stop the
# processes (the logs stay in .cluster/ until `make cluster-down`).
diagnose() {
  local c down=()
  printf '[cluster] error: %s\n' "$1" >&2
  for c in "${components[@]}"; do
    if running "$c"; then
      echo "  $c: running" >&2
    elif [ -f "$workdir/pids/$c.pid" ]; then
      echo "  $c: EXITED" >&2 && down+=("$c")
    else
      echo "  $c: not started" >&2
    fi
  done
  # The logs of the components that exited, or of all when none did.
  [ ${#down[@]} -gt 0 ] || down=("${components[@]}")
  for c in "${down[@]}"; do
    [ -s "$workdir/logs/$c.log" ] || continue
    echo "----- last lines of $workdir/logs/$c.log" >&2
    tail -n 12 "$workdir/logs/$c.log" >&2
  done
  kwokctl --name "$name" -v=WARN stop cluster >/dev/null 2>&1 || true
  "$here/node.sh" stop 9<&- >/dev/null 2>&1 || true
  cat >&2 <<EOF
[cluster] the processes are stopped; the logs above stay in $workdir/logs/.
[cluster] next: fix the cause (a port in use, a binary that does not start, ...), then run
[cluster] 'make cluster' again (it deletes and recreates the cluster), or 'make cluster-down'.
[cluster] to debug by hand: KWOK_WORKDIR=$KWOK_WORKDIR $kwok_bin/kwokctl --name $name start cluster
EOF
  exit 1
}

# wait_for DESCRIPTION COMMAND...: poll COMMAND until it succeeds or the deadline passes.
deadline=
wait_for() {
  local what=$1 t0
  shift
  t0=$(now_ms)
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || diagnose "timed out after ${timeout} s waiting for $what"
    sleep 0.5
  done
  log "$what ($(since "$t0"))"
}

# --- already up? ---------------------------------------------------------------------
if health; then
  publish_kubeconfig
  log "cluster '$name' is already up and healthy ($(ready_nodes) nodes, $NODE_NAME among them, API server https://127.0.0.1:$port)"
  usage_hint
  exit 0
fi
if [ -e "$cluster_dir" ]; then
  log "cluster '$name' is not usable ($why): deleting it"
  "$here/down.sh"
fi

# --- create ---------------------------------------------------------------------------
# shellcheck source=SCRIPTDIR/port.sh
source "$here/port.sh"
# An API server of the cluster just deleted may take a few seconds to exit and free it.
if ! wait_port_free "$port" 30; then
  if command -v ss >/dev/null; then
    ss -ltnp "sport = :$port" >&2 || true
  else
    echo "(install iproute2 for 'ss' to see which process it is)" >&2
  fi
  die "port $port on 127.0.0.1 is already in use (see above). Stop that process, or pick another port: CRANE_APISERVER_PORT=<port> make cluster"
fi

mkdir -p "$cluster_dir"
# The node network first: the API server's certificate names every address of the machine.
"$here/node.sh" network || die "tests/cluster/node.sh network failed (see above); then run 'make cluster-down'"
log "creating cluster '$name' (Kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION) in $workdir"
deadline=$((SECONDS + timeout))
# kwokctl waits up to 2 min for the API server and then only warns: watch the components
# meanwhile, to report one that exits (or the deadline) at once.
kwokctl "${create_args[@]}" 9<&- &
kwokctl_pid=$!
trap 'kill "$kwokctl_pid" 2>/dev/null; exit 130' INT TERM
while kill -0 "$kwokctl_pid" 2>/dev/null; do
  for c in "${components[@]}"; do
    if [ -f "$workdir/pids/$c.pid" ] && ! running "$c"; then
      kill "$kwokctl_pid" 2>/dev/null || true
      diagnose "$c exited while the cluster was starting"
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    kill "$kwokctl_pid" 2>/dev/null || true
    diagnose "timed out after ${timeout} s waiting for kwokctl create cluster"
  fi
  sleep 0.25
done
wait "$kwokctl_pid" || diagnose "kwokctl create cluster failed"
trap - INT TERM
wait_for "API server ready on https://127.0.0.1:$port" api_ready
kwokctl --name "$name" --config "$here/kwok.yaml" -v=WARN scale node --replicas "$nodes" >/dev/null ||
  diagnose "kwokctl scale node failed"
wait_for "$nodes simulated nodes Ready" nodes_ready "$nodes"
CRANE_APISERVER_PORT=$port "$here/node.sh" up 9<&- || diagnose "the real node $NODE_NAME did not start (see above)"
wait_for "kube-controller-manager leading" has_leader kube-controller-manager
wait_for "kube-scheduler leading" has_leader kube-scheduler
wait_for "ServiceAccount default/default created" has_default_sa

publish_kubeconfig
echo "$fingerprint" >"$cluster_dir/fingerprint"
log "cluster '$name' is up in $(since "$start"): Kubernetes $KUBERNETES_VERSION, $nodes simulated nodes and $NODE_NAME, API server https://127.0.0.1:$port"
usage_hint
