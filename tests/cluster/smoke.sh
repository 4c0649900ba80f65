#!/usr/bin/env bash
# Usage: tests/cluster/smoke.sh                               (part of make test)
#
# Quick checks that the local cluster (make cluster) behaves like the real thing the e2e
# tests rely on: version, nodes, the built-in controllers (serviceaccount, resourcequota,
# replicaset, garbage collector, namespace), kwok's pod stages including the simulated
# failures (label crane.dev/simulate) on the simulated nodes, and the real node: a pod
# there serves HTTP through its ClusterIP, a NodePort and a LoadBalancer address, and
# `kubectl logs` reaches its kubelet. All in a fresh namespace that is deleted at the end.
# Uses KUBECONFIG if set, else .cluster/kubeconfig (see env.sh). Never skips: an
# unreachable cluster is a failure. Ends with the line "N passed, M failed"; exits non-zero
# when anything failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/env.sh
source "$here/env.sh"
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"
# shellcheck source=SCRIPTDIR/node.env
source "$here/node.env"

ns=crane-smoke-$(date +%s)-$RANDOM
timeout=${CRANE_SMOKE_TIMEOUT:-60}
k() { kubectl --request-timeout=10s "$@"; }
# shellcheck source=SCRIPTDIR/checks.sh
source "$here/checks.sh"
# shellcheck source=SCRIPTDIR/port.sh
source "$here/port.sh"

cleanup() { k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }

# kwok_placement INDENT: what the checks of kwok's stages add to a pod spec: tolerate the
# simulated nodes' taint and run on one (as tests/e2e/placement.rs does for the suites).
kwok_placement() {
  printf '%*s%s\n' "$1" '' 'tolerations: [{key: kwok.x-k8s.io/node, operator: Equal, value: fake, effect: NoSchedule}]' \
    "$1" '' 'nodeSelector: {type: kwok}'
}

# --- checks ------------------------------------------------------------------------------
reachable() {
  local server
  k get --raw /readyz >/dev/null 2>&1 && return
  server=$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}' 2>/dev/null || true)
  why="no API server answers at ${server:-(no server in the kubeconfig)} (KUBECONFIG=$KUBECONFIG): start it with 'make cluster'"
  return 1
}

server_version() {
  local v
  v=$(k get --raw /version | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
  [ "$v" = "$KUBERNETES_VERSION" ] || { why="server says '$v', expected $KUBERNETES_VERSION"; return 1; }
}

nodes_ready() {
  local states
  states=$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
  [ -n "$states" ] || { why="no nodes"; return 1; }
  ! grep -qv '=True$' <<<"$states" || { why="not Ready: $(grep -v '=True$' <<<"$states" | tr '\n' ' ')"; return 1; }
  note="$(wc -l <<<"$states") nodes"
}

namespace_ready() {
  k create namespace "$ns" >/dev/null || { why="cannot create namespace $ns"; return 1; }
  poll k -n "$ns" get serviceaccount default -o name >/dev/null 2>&1 ||
    { why="no ServiceAccount default in $ns after ${timeout} s (serviceaccount controller)"; return 1; }
  poll k -n "$ns" get configmap kube-root-ca.crt -o name >/dev/null 2>&1 ||
    { why="no ConfigMap kube-root-ca.crt in $ns after ${timeout} s (root-ca-cert-publisher)"; return 1; }
}

quota_field() { k -n "$ns" get resourcequota smoke -o jsonpath="$1" 2>/dev/null; }
quota_is() { [ "$(quota_field "$1")" = "$2" ]; }
quota_tracked() {
  k -n "$ns" create quota smoke --hard=pods=10 >/dev/null || { why="cannot create ResourceQuota"; return 1; }
  poll quota_is '{.status.used.pods}' 0 ||
    { why="status.used.pods is '$(quota_field '{.status.used.pods}')', expected 0 (resourcequota controller)"; return 1; }
}

replicaset_pods() {
  k -n "$ns" get pods -l app=smoke -o jsonpath='{range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="Ready")].status}/{.status.podIP}{"\n"}{end}' 2>/dev/null
}
rs_ready_replicas() { [ "$(k -n "$ns" get rs smoke -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" = "$1" ]; }
running_ready() { [ "$(replicaset_pods | grep -c '^Running/True/.' || true)" -eq "$1" ]; }
replicaset_ready() {
  k -n "$ns" apply -f - >/dev/null <<EOF || { why="cannot create the ReplicaSet"; return 1; }
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: smoke}
spec:
  replicas: 3
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec:
$(kwok_placement 6)
      containers:
      - {name: smoke, image: registry.invalid/smoke:1}
EOF
  poll running_ready 3 || { why="pods (phase/ready/IP): $(replicaset_pods | tr '\n' ' ')"; return 1; }
  poll rs_ready_replicas 3 ||
    { why="ReplicaSet status.readyReplicas is not 3"; return 1; }
}

quota_counts_pods() {
  poll quota_is '{.status.used.pods}' 3 ||
    { why="status.used.pods is '$(quota_field '{.status.used.pods}')', expected 3"; return 1; }
}

no_smoke_pods() { absent -n "$ns" pods -l app=smoke; }
garbage_collected() {
  k -n "$ns" delete rs smoke --wait=false >/dev/null || { why="cannot delete the ReplicaSet"; return 1; }
  poll no_smoke_pods ||
    { why="pods left: $(k -n "$ns" get pods -l app=smoke -o name | tr '\n' ' ')"; return 1; }
}

create_simulated() {
  local r
  for r in ImagePullBackOff CrashLoopBackOff Failed Unready; do
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: sim-$(tr '[:upper:]' '[:lower:]' <<<"$r")
  labels: {crane.dev/simulate: $r}
spec:
$(kwok_placement 2)
  containers:
  - {name: app, image: "registry.invalid/crane:$r"}
EOF
  done | k -n "$ns" apply -f - >/dev/null || { why="cannot create the pods"; return 1; }
}

# simulated POD EXPECTED: the pod's phase|ready|waiting reason|restartCount|running matches.
pod_state() {
  k -n "$ns" get pod "$1" -o jsonpath='{.status.phase}|{.status.conditions[?(@.type=="Ready")].status}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].restartCount}|{.status.containerStatuses[0].state.running.startedAt}' 2>/dev/null |
    sed 's/|[0-9T:Z.-]*[0-9]Z$/|running/'
}
# shellcheck disable=SC2053 # EXPECTED is a glob pattern
state_matches() { [[ "$(pod_state "$1")" == $2 ]]; }
simulated() {
  poll state_matches "$1" "$2" || { why="$1 is '$(pod_state "$1")', expected '$2' (phase|Ready|waiting|restarts|running)"; return 1; }
}

stable() {
  local before after
  before=$(k -n "$ns" get pods -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}')
  sleep 3 # an observation window, not a wait for something
  after=$(k -n "$ns" get pods -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}')
  [ "$before" = "$after" ] || { why="pods still change (a stage re-triggers): $before -> $after"; return 1; }
}

real_node() {
  local info
  info=$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.containerRuntimeVersion} {.status.nodeInfo.kubeletVersion}' 2>&1) ||
    { why="no node $NODE_NAME: $info"; return 1; }
  [[ $info == "True containerd://"*" $KUBERNETES_VERSION" ]] || { why="Ready, runtime, kubelet: $info"; return 1; }
  note=${info#True }
}

# A pod that tolerates nothing, with a Service of type LoadBalancer in front of it: it
# must land on the real node, run for real, and answer on every address of the Service.
hello_ready() { [ "$(k -n "$ns" get pod hello -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
hello_pod() {
  k -n "$ns" apply -f - >/dev/null <<EOF || { why="cannot create the pod and its Service"; return 1; }
apiVersion: v1
kind: Pod
metadata: {name: hello, labels: {app: hello}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: hello
    image: localhost/crane-hello:1
    imagePullPolicy: Never
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  type: LoadBalancer
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
EOF
  poll hello_ready ||
    { why="pod hello is not Ready: $(k -n "$ns" get pod hello -o jsonpath='{.spec.nodeName} {.status.phase} {.status.containerStatuses[0].state}')"; return 1; }
  local node
  node=$(k -n "$ns" get pod hello -o jsonpath='{.spec.nodeName}')
  [ "$node" = "$NODE_NAME" ] || { why="pod hello runs on '$node', expected $NODE_NAME"; return 1; }
  note="Ready on $node: the kubelet probed it"
}

# answers URL: curl from this machine gets the pod's greeting.
answers() {
  local got
  got=$(curl -sS --max-time 5 "$1" 2>&1) || { why="curl $1: $got"; return 1; }
  [ "$got" = "You've hit hello" ] || { why="curl $1 answered '$got'"; return 1; }
}
lb_address() { k -n "$ns" get service hello -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null; }
lb_address_set() { [ -n "$(lb_address)" ]; }
# hello_through ClusterIP|NodePort|LoadBalancer
hello_through() {
  local url
  case $1 in
    ClusterIP) url="http://$(k -n "$ns" get service hello -o jsonpath='{.spec.clusterIP}'):80/" ;;
    NodePort) url="http://$NODE_IP:$(k -n "$ns" get service hello -o jsonpath='{.spec.ports[0].nodePort}')/" ;;
    LoadBalancer)
      poll 30 lb_address_set ||
        { why="no LoadBalancer address after 30 s (tests/cluster/lb.sh, log .cluster/node/logs/lb-allocator.log)"; return 1; }
      url="http://$(lb_address):80/"
      ;;
  esac
  poll 20 answers "$url" || return 1
  note="curl $url"
}

hello_logs() {
  local out
  out=$(k -n "$ns" logs hello 2>&1) || { why="kubectl logs: $out"; return 1; }
  [[ $out == "hello: listening on 8080"* ]] || { why="kubectl logs: '$out'"; return 1; }
}

namespace_gone() { absent namespace "$ns"; }
namespace_deleted() {
  k delete namespace "$ns" --wait=false >/dev/null || { why="cannot delete namespace $ns"; return 1; }
  poll 120 namespace_gone ||
    { why="namespace $ns still exists: $(k get namespace "$ns" -o jsonpath='{.status.conditions[*].message}')"; return 1; }
}

# --- run ---------------------------------------------------------------------------------
echo "smoke test of the local cluster (KUBECONFIG=$KUBECONFIG, namespace $ns)"
# A brand-new CRD has no conditions yet: `kubectl wait --for condition=established` fails on
# it at once, which broke the first `make run`; hack/crd-established.sh polls instead.
crd_established_wait() {
  local crd=smokes.check.crane.dev out
  k apply -f - >/dev/null <<EOF || { why="cannot create the CRD $crd"; return 1; }
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: $crd}
spec:
  group: check.crane.dev
  names: {kind: Smoke, plural: smokes}
  scope: Namespaced
  versions:
  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}
EOF
  out=$("$here/../../hack/crd-established.sh" 30 "$crd" 2>&1) || why=$out
  k delete crd "$crd" --wait=false >/dev/null 2>&1 || true
  [ -z "$why" ]
}

# The API server of a cluster just deleted still holds its port for a moment: up.sh waits
# for it (bounded) instead of failing "port 26443 is already in use". A listener on a free
# port stands in for it, and exits 2 s after it starts.
listen_on() {
  python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(float(sys.argv[2]))' "$1" "$2" &
  listener=$!
  poll 10 port_taken "$1" || { why="the listener on port $1 did not come up"; return 1; }
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_freed_is_waited_for() {
  local port
  port=$(free_port)
  listen_on "$port" 2 || return 1
  if ! wait_port_free "$port" 30; then
    why="port $port still taken after 30 s"
    kill "$listener"
    return 1
  fi
  wait "$listener" || { why="the listener failed"; return 1; }
}
port_held_is_reported() {
  local port rc=0
  port=$(free_port)
  listen_on "$port" 60 || return 1
  wait_port_free "$port" 1 || rc=$?
  kill "$listener"
  wait "$listener" 2>/dev/null || true
  [ "$rc" -ne 0 ] || { why="wait_port_free returned while port $port was still held"; return 1; }
}

check "API server reachable" reachable
if [ "${#failures[@]}" -gt 0 ]; then summary; fi
trap cleanup EXIT
check "server version is $KUBERNETES_VERSION" server_version
check "nodes Ready" nodes_ready
check "namespace gets ServiceAccount + root CA (KCM controllers)" namespace_ready
check "ResourceQuota status tracked (resourcequota controller)" quota_tracked
check "ReplicaSet of 3: 3 pods Running+Ready with an IP" replicaset_ready
check "ResourceQuota counts the 3 pods" quota_counts_pods
check "deleting the ReplicaSet removes its pods (garbage collector)" garbage_collected
check "create pods labelled crane.dev/simulate" create_simulated
check "simulate=ImagePullBackOff: Pending, not ready" simulated sim-imagepullbackoff 'Pending|False|ImagePullBackOff|0|'
check "simulate=CrashLoopBackOff: Running, not ready, restarted" simulated sim-crashloopbackoff 'Running|False|CrashLoopBackOff|[1-9]*|'
check "simulate=Failed: phase Failed" simulated sim-failed 'Failed|False||0|'
check "simulate=Unready: Running, containers running, not ready" simulated sim-unready 'Running|False||0|running'
check "pod statuses stay put (no stage re-triggers)" stable
check "real node $NODE_NAME Ready, containerd, $KUBERNETES_VERSION" real_node
check "a pod without tolerations runs on $NODE_NAME" hello_pod
check "it answers through its ClusterIP" hello_through ClusterIP
check "it answers through a NodePort of $NODE_NAME" hello_through NodePort
check "it answers through its LoadBalancer address" hello_through LoadBalancer
check "kubectl logs reaches the kubelet" hello_logs
check "a CRD just created is waited for until Established (make run's first start)" crd_established_wait
check "a port freed a moment later is waited for (make cluster right after make cluster-down)" port_freed_is_waited_for
check "a port held for good is not waited for beyond the bound" port_held_is_reported
check "deleting the namespace completes (namespace controller)" namespace_deleted
summary
