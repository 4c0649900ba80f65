#!/usr/bin/env bash
# Usage: tests/incluster/test.sh                          (make incluster; part of make test)
#
# The operator in-cluster, from its own image, on the local cluster's real node
# (crane-node-0): real containers, real kubelet probes, real Service traffic.
#   - make deploy's script (hack/deploy.sh: helm upgrade --install --wait) of
#     charts/crane-operator with the image of `make image`
#     (image.pullPolicy Never, replicaCount 2, leader election, watchNamespace = its own
#     namespace) into a namespace that enforces the restricted Pod Security Standard;
#   - both operator pods Ready on crane-node-0, running as uid 65532 with the in-cluster
#     config and the ServiceAccount's token; exactly one leader (Lease and metric);
#   - a CraneReplicaSet (the book's app, localhost/crane-app:dev) managed end to end: pods
#     Running on crane-node-0, `curl http://<EXTERNAL-IP>:8080` answered by its pods;
#   - a wrong service.targetPort makes the Service refuse connections (no HTTP answer);
#     with the default (the containerPort) it answers again;
#   - /metrics through the chart's metrics Service; `helm test`;
#   - helm upgrade --wait to another image tag and other args; a CraneReplicaSet pod is
#     deleted as the first new operator pod starts, another at the leader hand-over: each
#     replaced exactly once, never more pods than replicas (a pod watch covers it all);
#   - kubectl rollout restart of the operator Deployment completes.
# Release and namespace "crane-incluster" are removed at the end, also on failure (a
# leftover of an interrupted run is removed first); the CRD stays (server-side applied
# from manifests/crd.yaml with the e2e suite's field manager).
# Needs the local cluster with its real node (make cluster) and the images imported by
# make image; root (ctr on the node's containerd socket). Ends with the line
# "N passed, M failed"; exits non-zero when anything failed.
# Environment: CRANE_INCLUSTER_TIMEOUT  seconds for each wait (default 120)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/../cluster/env.sh
source "$root/tests/cluster/env.sh"
# shellcheck source=SCRIPTDIR/../cluster/node.env
source "$root/tests/cluster/node.env"

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  '') ;;
  *) echo "usage: tests/incluster/test.sh (no arguments)" >&2; exit 2 ;;
esac

# PyYAML: hack/field.py reads the chart's values.
"$root/hack/debian-packages.sh" "make incluster" python3:python3 /usr/lib/python3/dist-packages/yaml/__init__.py:python3-yaml

chart=$root/charts/crane-operator
release=crane-incluster
ns=crane-incluster
deployment=$release-crane-operator
metrics_service=$deployment-metrics
# The chart names the Lease after the release (leaderElection.leaseName empty).
lease=$deployment-leader
timeout=${CRANE_INCLUSTER_TIMEOUT:-120}
socket=$root/.cluster/node/containerd/containerd.sock
# The images of make image (hack/image.sh names them the same way).
repository=$("$root/hack/field.py" "$chart/values.yaml" image repository)
tag=$("$root/hack/field.py" "$root/Cargo.toml" package version)
upgrade_tag=$tag-upgrade
app_image=localhost/crane-app:dev
work=$(mktemp -d)
k() { kubectl --request-timeout=30s "$@"; }
kn() { k -n "$ns" "$@"; }
ctr_node() { ctr --address "$socket" --namespace k8s.io "$@"; }
CHECK_WIDTH=72
# shellcheck source=SCRIPTDIR/../cluster/checks.sh
source "$root/tests/cluster/checks.sh"
# shellcheck source=SCRIPTDIR/../chart/release.sh
source "$root/tests/chart/release.sh"

watcher=""
upgrading=""
during=()
cleanup() {
  local rc=$?
  set +e
  if [ -n "$watcher" ]; then kill "$watcher" 2>/dev/null; fi
  kn delete crs --all --wait=false >/dev/null 2>&1
  if released; then helm uninstall "$release" --namespace "$ns" --wait --timeout 60s >/dev/null 2>&1; fi
  k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1
  ctr_node images rm "$repository:$upgrade_tag" >/dev/null 2>&1
  rm -rf "$work"
  exit "$rc"
}

# --- helpers -----------------------------------------------------------------------------

operator_selector=app.kubernetes.io/instance=$release,app.kubernetes.io/name=crane-operator
# active SELECTOR [JSONPATH]: for each pod that is not terminating, its name (or JSONPATH).
active() {
  local fields='{.metadata.name}'
  [ $# -lt 2 ] || fields=$2
  kn get pods -l "$1" -o jsonpath="{range .items[*]}{.metadata.deletionTimestamp}|$fields{\"\\n\"}{end}" 2>/dev/null |
    sed -n 's/^|//p'
}
# operator_pods: the names of the operator's pods that are not terminating.
operator_pods() { active "$operator_selector"; }
operator_log() {
  local pod
  for pod in $(operator_pods); do
    echo "--- $pod"
    kn logs "$pod" --tail=15 2>&1
  done
}
# holder: the Lease's holder, as the pod name (the identity is POD_NAME_<pid>-<nanos>).
holder() { kn get lease "$lease" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null | sed 's/_[^_]*$//'; }
transitions() { kn get lease "$lease" -o jsonpath='{.spec.leaseTransitions}' 2>/dev/null; }
pod_ip() { kn get pod "$1" -o jsonpath='{.status.podIP}'; }
# leader_metric POD: the value of crane_operator_leader on the pod's /metrics.
leader_metric() {
  curl -sS --max-time 5 "http://$(pod_ip "$1"):8080/metrics" | sed -n 's/^crane_operator_leader \([0-9]*\)$/\1/p'
}

deployment_state() {
  kn get deployment "$deployment" -o jsonpath='generation {.metadata.generation}, observed {.status.observedGeneration}, replicas/updated/ready/available {.status.replicas}/{.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas}' 2>&1
}
# deployed REVISION: helm status says the release is deployed at REVISION.
deployed() {
  local st
  st=$(helm status "$release" --namespace "$ns" | sed -n 's/^\(STATUS\|REVISION\): //p' | paste -sd' ')
  [ "$st" = "deployed $1" ] || { why="helm status: '$st', expected 'deployed $1'"; return 1; }
}

crs_field() { kn get crs crane -o jsonpath="$1" 2>/dev/null; }
crs_ready() { [ "$(crs_field '{.status.readyReplicas}/{.status.replicas}')" = "$1/$1" ]; }
crs_state() { kn get crs crane -o wide 2>&1 | tail -n 1 | tr -s ' '; }
app_pods() { active crane.dev/replicaset=crane; }
external_ip() { crs_field '{.status.service.externalIP}'; }
has_external_ip() { [[ $(external_ip) =~ ^[0-9.]+$ ]]; }

# hit URL: curl's answer, or its error (stderr), and curl's status.
hit() { curl -sS --max-time 3 "$1" 2>&1; }

# --- checks ------------------------------------------------------------------------------
reachable() {
  k get --raw /readyz >/dev/null 2>&1 && return
  why="no API server answers (KUBECONFIG=$KUBECONFIG): start it with 'make cluster'"
  return 1
}

real_node() {
  local ready
  ready=$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>&1) ||
    { why="no node $NODE_NAME ($ready): this cluster has no real node (make cluster-down; make cluster)"; return 1; }
  [ "$ready" = True ] || { why="$NODE_NAME is not Ready: $ready"; return 1; }
}

images_on_node() {
  [ -S "$socket" ] || { why="no containerd socket $socket (the real node is not running)"; return 1; }
  ctr_node images ls -q >"$work/images" 2>&1 || { why="ctr images ls: $(first 3 "$work/images")"; return 1; }
  local image missing=()
  for image in "$repository:$tag" "$app_image"; do
    grep -qx "$image" "$work/images" || missing+=("$image")
  done
  [ ${#missing[@]} -eq 0 ] || { why="not on $NODE_NAME: ${missing[*]} (make image builds and imports them)"; return 1; }
  note="$repository:$tag, $app_image"
}

# The upgrade needs a second tag: the same image under another name, as a release would be.
second_tag() {
  ctr_node images tag --force "$repository:$tag" "$repository:$upgrade_tag" >"$work/out" 2>&1 ||
    { why="ctr images tag: $(first 3 "$work/out")"; return 1; }
  note=$(first 1 "$work/out")
}


crd_applied() {
  k apply --server-side --field-manager=crane-e2e --force-conflicts -f "$root/manifests/crd.yaml" >"$work/out" 2>&1 ||
    { why=$(first 3 "$work/out"); return 1; }
  "$root/hack/crd-established.sh" 60 >"$work/out" 2>&1 || { why=$(first 3 "$work/out"); return 1; }
}

install() {
  # watchNamespace: this operator must not manage CraneReplicaSets of other tests (or of
  # make demo) in other namespaces. The CRD is applied above (the chart tests install it).
  # Through make deploy's script (helm upgrade --install --take-ownership --wait), as a
  # user installs it into any cluster.
  NAMESPACE=$ns RELEASE=$release TIMEOUT=${timeout}s "$root/hack/deploy.sh" \
    --set image.pullPolicy=Never --set replicaCount=2 --set watchNamespace="$ns" \
    --set crds.enabled=false --set logFormat=text >"$work/out" 2>&1 ||
    { why="$(first 6 "$work/out") | $(deployment_state) | $(operator_log | tail -n 8 | tr '\n' ' ')"; return 1; }
  deployed 1 || return 1
  note=$(deployment_state | sed 's/.*replicas/replicas/')
}

# both_ready N: N operator pods (not terminating), all Ready on the real node (the kubelet's readiness
# probe on /readyz), none restarted.
both_ready() {
  local pods
  pods=$(active "$operator_selector" '{.metadata.name} {.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status} {.status.containerStatuses[0].restartCount} {.spec.containers[0].readinessProbe.httpGet.path}')
  { [ "$(grep -c " $NODE_NAME True 0 /readyz$" <<<"$pods")" -eq "$1" ] && [ "$(grep -c . <<<"$pods")" -eq "$1" ]; } ||
    { why="pods (name node ready restarts probe): $(tr '\n' ';' <<<"$pods")"; return 1; }
  note="$(awk '{print $1}' <<<"$pods" | paste -sd' ') on $NODE_NAME"
}

# The container of an operator pod seen from the node: the process runs as 65532, with
# the in-cluster config (the kubernetes Service's address in its environment, no
# KUBECONFIG) and the ServiceAccount's token as its only credentials.
restricted_in_cluster() {
  local pod id pid uid env sa
  pod=$(operator_pods)
  pod=${pod%%$'\n'*}
  [ "$(k get namespace "$ns" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" = restricted ] ||
    { why="namespace $ns does not enforce restricted"; return 1; }
  sa=$(kn get pod "$pod" -o jsonpath='{.spec.serviceAccountName} {.spec.containers[0].securityContext.readOnlyRootFilesystem} {.spec.containers[0].securityContext.capabilities.drop}')
  [ "$sa" = "$deployment true [\"ALL\"]" ] || { why="serviceAccountName, readOnlyRootFilesystem, drop: $sa"; return 1; }
  id=$(kn get pod "$pod" -o jsonpath='{.status.containerStatuses[0].containerID}')
  id=${id#containerd://}
  pid=$(ctr_node tasks ls 2>/dev/null | awk -v id="$id" '$1 == id {print $2}')
  [ -n "$pid" ] || { why="no containerd task for $pod's container $id"; return 1; }
  uid=$(awk '/^Uid:/ {print $2 "/" $3}' "/proc/$pid/status")
  [ "$uid" = 65532/65532 ] || { why="$pod's process $pid runs as uid $uid"; return 1; }
  env=$(tr '\0' '\n' <"/proc/$pid/environ")
  ! grep -q '^KUBECONFIG=' <<<"$env" || { why="$pod has KUBECONFIG set"; return 1; }
  grep -q '^KUBERNETES_SERVICE_HOST=' <<<"$env" || { why="$pod has no KUBERNETES_SERVICE_HOST"; return 1; }
  [ -s "/proc/$pid/root/var/run/secrets/kubernetes.io/serviceaccount/token" ] ||
    { why="$pod has no ServiceAccount token mounted"; return 1; }
  note="uid 65532, API server $(sed -n 's/^KUBERNETES_SERVICE_HOST=//p' <<<"$env"), token of ServiceAccount $deployment"
}

# one_leader: the Lease is held by one operator pod; its metric says 1, the other's 0.
one_leader() {
  local h pod m leaders=0 values=()
  h=$(holder)
  grep -qx "$h" <<<"$(operator_pods)" || { why="Lease holder '$h' is none of: $(operator_pods | paste -sd' ')"; return 1; }
  for pod in $(operator_pods); do
    m=$(leader_metric "$pod")
    values+=("$pod=$m")
    if [ "$m" = 1 ]; then
      leaders=$((leaders + 1))
      [ "$pod" = "$h" ] || { why="$pod says it leads, the Lease says $h"; return 1; }
    fi
  done
  [ "$leaders" = 1 ] || { why="crane_operator_leader: ${values[*]}"; return 1; }
  note="holder $h; crane_operator_leader ${values[*]}"
}
leader_settled() { one_leader >/dev/null 2>&1; }
one_leader_soon() {
  poll 30 leader_settled || { one_leader; return 1; }
  one_leader
}

crs_applied() {
  kn apply -f - >"$work/out" 2>&1 <<EOF || { why=$(first 4 "$work/out"); return 1; }
apiVersion: crane.dev/v1
kind: CraneReplicaSet
metadata: {name: crane}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: crane}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: crane
        image: $app_image
        imagePullPolicy: Never
        ports: [{containerPort: 7070}]
        readinessProbe: {httpGet: {port: 7070}, periodSeconds: 1}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
EOF
  poll "$timeout" crs_ready 2 || { why="$(crs_state) | $(operator_log | tail -n 8 | tr '\n' ' ')"; return 1; }
  local placed
  placed=$(kn get pods -l crane.dev/replicaset=crane -o jsonpath='{range .items[*]}{.metadata.name}:{.spec.nodeName}:{.status.phase} {end}')
  [ "$(grep -o ":$NODE_NAME:Running" <<<"$placed" | wc -l)" -eq 2 ] || { why="pods: $placed"; return 1; }
  note=$placed
}

service_ports() { kn get service crane-http -o jsonpath='{.spec.type} {.spec.ports[0].port}->{.spec.ports[0].targetPort}' 2>/dev/null; }
default_ports() {
  [ "$(service_ports)" = "LoadBalancer 8080->7070" ] || { why="Service crane-http: $(service_ports)"; return 1; }
  note="targetPort 7070 from the container's containerPort"
}

external_address() {
  poll 30 has_external_ip || { why="no status.service.externalIP after 30 s: $(crs_state) (LB allocator log: .cluster/node/logs/lb-allocator.log)"; return 1; }
  note="kubectl get crs: $(crs_state)"
}

# answers_from_all: curls through the LoadBalancer address until each of the CR's pods
# has answered "You've hit <pod>".
answers_from_all() {
  local url pods got seen=()
  url="http://$(external_ip):8080/"
  pods=$(app_pods)
  local end=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$end" ]; do
    got=$(hit "$url") || true
    if [[ $got =~ ^"You've hit "(.+)$ ]]; then
      grep -qx "${BASH_REMATCH[1]}" <<<"$pods" || { why="answered by '${BASH_REMATCH[1]}', not a pod of the CraneReplicaSet ($pods)"; return 1; }
      [[ " ${seen[*]} " == *" ${BASH_REMATCH[1]} "* ]] || seen+=("${BASH_REMATCH[1]}")
      [ "${#seen[@]}" -lt "$(grep -c . <<<"$pods")" ] || { note="curl $url: You've hit ${seen[*]}"; return 0; }
    fi
  done
  why="curl $url: last answer '$got'; pods that answered: ${seen[*]:-none} of $(paste -sd' ' <<<"$pods")"
  return 1
}

# ready_endpoints_on PORT: the Service's EndpointSlices send to PORT of ready pods.
ready_endpoints_on() {
  kn get endpointslices -l kubernetes.io/service-name=crane-http \
    -o jsonpath='{range .items[*]}{range .endpoints[?(@.conditions.ready==true)]}{.addresses[0]}:{end}{.ports[0].port}{"\n"}{end}' 2>/dev/null |
    grep -qE "^([0-9.]+:)+$1\$"
}
refused() { ! hit "http://$(external_ip):8080/" >"$work/curl"; }
answering() { [[ $(hit "http://$(external_ip):8080/") == "You've hit crane-"* ]]; }

wrong_target_port() {
  kn patch crs crane --type merge -p '{"spec":{"service":{"targetPort":7071}}}' >/dev/null ||
    { why="cannot patch service.targetPort"; return 1; }
  poll 30 ready_endpoints_on 7071 ||
    { why="Service crane-http: $(service_ports); no ready endpoints on port 7071"; return 1; }
  poll 30 refused || { why="the Service still answers on 8080 -> 7071: $(first 1 "$work/curl")"; return 1; }
  note="curl: $(first 1 "$work/curl" | sed 's/^curl: ([0-9]*) //')"
}

default_target_port() {
  kn patch crs crane --type json -p '[{"op":"remove","path":"/spec/service"}]' >/dev/null ||
    { why="cannot remove spec.service"; return 1; }
  poll 30 answering || { why="Service crane-http: $(service_ports); curl: $(hit "http://$(external_ip):8080/")"; return 1; }
  default_ports || return 1
  note="$(service_ports), curl: $(hit "http://$(external_ip):8080/")"
}

metrics_through_service() {
  local ip
  ip=$(kn get service "$metrics_service" -o jsonpath='{.spec.clusterIP}')
  curl -sS --max-time 5 "http://$ip:8080/metrics" >"$work/metrics" 2>&1 || { why="curl: $(first 2 "$work/metrics")"; return 1; }
  { grep -q '^crane_operator_leader [01]$' "$work/metrics" && grep -q '^# EOF$' "$work/metrics"; } ||
    { why="no crane_operator_leader in: $(first 4 "$work/metrics")"; return 1; }
  note="curl http://$ip:8080/metrics: $(grep -c '^crane_operator_' "$work/metrics") samples"
}

helm_test() {
  helm test "$release" --namespace "$ns" --logs --timeout "${timeout}s" >"$work/out" 2>&1 ||
    { why=$(grep -v '^$' "$work/out" | tail -n 6 | tr '\n' ' '); return 1; }
  grep -q 'Phase: *Succeeded' "$work/out" || { why=$(first 8 "$work/out"); return 1; }
  note="test pod: $(sed -n '/POD LOGS/{n;p}' "$work/out")"
}

# The upgrade, with a watch of the CraneReplicaSet's pods from before it starts until the
# CraneReplicaSet is ready again. One of its pods is deleted when the first operator pod
# of the new tag appears (helm is waiting for it), another when the Lease changes hands
# (the old leader stopped on SIGTERM): the operators must replace each exactly once.
victims=()
# delete_app_pod: deletes one of the CraneReplicaSet's pods; says whether helm still runs.
delete_app_pod() {
  local pod
  pod=$(app_pods)
  pod=${pod%%$'\n'*}
  [ -n "$pod" ] || return 0
  kn delete pod "$pod" --wait=false >/dev/null
  victims+=("$pod")
  if kill -0 "$upgrading" 2>/dev/null; then during+=(yes); else during+=(no); fi
}
# Lists are captured, then searched, here and below: under pipefail `list | grep -q` is false
# when the list's writer dies of SIGPIPE after grep's match.
new_operator_pod() { grep -q ":$upgrade_tag\$" <<<"$(active "$operator_selector" '{.spec.containers[0].image}')"; }
upgrade() {
  local before_holder before_transitions h
  before_holder=$(holder)
  before_transitions=$(transitions)
  victims=() during=()
  app_pods | sort >"$work/pods-before"
  k -n "$ns" get pods -l crane.dev/replicaset=crane --watch --output-watch-events \
    -o jsonpath='{.type} {.object.metadata.name} {.object.metadata.deletionTimestamp}{"\n"}' >"$work/watch" 2>&1 &
  watcher=$!
  helm upgrade "$release" "$chart" --namespace "$ns" --reuse-values \
    --set image.tag="$upgrade_tag" --set concurrency=3 --wait --timeout "${timeout}s" >"$work/out" 2>&1 &
  upgrading=$!
  local end=$((SECONDS + timeout))
  while [ "$SECONDS" -lt "$end" ] && [ "${#victims[@]}" -lt 2 ]; do
    if [ "${#victims[@]}" -eq 0 ]; then
      if new_operator_pod; then delete_app_pod; fi
    else
      h=$(holder)
      if [ -n "$h" ] && [ "$h" != "$before_holder" ]; then delete_app_pod; fi
    fi
    sleep 0.2
  done
  wait "$upgrading" || { why="helm upgrade: $(first 6 "$work/out") | $(deployment_state)"; return 1; }
  [ "${#victims[@]}" -eq 2 ] ||
    { why="deleted ${victims[*]:-nothing}: no new operator pod, or the Lease never changed hands (holder $(holder))"; return 1; }
  deployed 2 || return 1
  poll crs_ready 2 || { why="after the upgrade: $(crs_state)"; return 1; }
  note="deleted ${victims[0]} as the first new operator pod started (helm running: ${during[0]}), ${victims[1]} at the hand-over (helm running: ${during[1]}); Lease $before_holder -> $(holder), transitions $before_transitions -> $(transitions)"
}

new_pod_leads() {
  local h
  h=$(holder)
  [ -n "$h" ] && grep -qx "$h" <<<"$(operator_pods)"
}

upgraded() {
  local pods
  pods=$(active "$operator_selector" '{.spec.containers[0].image} {.spec.containers[0].args}')
  [ "$(grep -c . <<<"$pods")" -eq 2 ] || { why="operator pods: $pods"; return 1; }
  ! grep -qv "^$repository:$upgrade_tag .*\"--concurrency=3\"" <<<"$pods" ||
    { why="pods not on the new image and args: $(tr '\n' ';' <<<"$pods")"; return 1; }
  # The old standby may have led for a moment during the rollout and released the Lease
  # as it stopped; a new pod takes it within a retry period (2 s) of that.
  poll 30 new_pod_leads || { why="the Lease holder '$(holder)' is not a new pod after 30 s"; return 1; }
  note="$repository:$upgrade_tag --concurrency=3; leader $(holder)"
}

# exact_pod_count: what the watch saw from before the upgrade to now: the pods of the
# CraneReplicaSet created and deleted, and the most active (not terminating) at once.
watched() {
  local pod
  for pod in "${victims[@]}"; do grep -q "^DELETED $pod" "$work/watch" || return 1; done
  for pod in $(app_pods); do grep -q "^ADDED $pod" "$work/watch" || return 1; done
}
exact_pod_count() {
  poll 30 watched || { why="the watch did not see ${victims[*]} deleted and every pod added: $(tail -n 8 "$work/watch" | tr '\n' ';')"; return 1; }
  kill "$watcher" 2>/dev/null
  wait "$watcher" 2>/dev/null
  watcher=""
  local created removed max
  read -r created removed max < <(awk '
    FNR == NR { before[$1] = 1; next }
    $1 == "ADDED" && !($2 in before) && !($2 in seen) { seen[$2] = 1; created++ }
    $1 == "ADDED" || $1 == "MODIFIED" { if ($3 == "") active[$2] = 1; else delete active[$2] }
    $1 == "DELETED" { delete active[$2]; deleted++ }
    { n = 0; for (p in active) n++; if (n > max) max = n }
    END { printf "%d %d %d\n", created + 0, deleted + 0, max + 0 }' "$work/pods-before" "$work/watch")
  { [ "$created" -eq 2 ] && [ "$removed" -eq 2 ] && [ "$max" -eq 2 ]; } ||
    { why="pods created $created, deleted $removed (want 2 and 2), most active at once $max (want 2); watch: $(tail -n 12 "$work/watch" | tr '\n' ';')"; return 1; }
  note="$(grep -c . "$work/watch") watch events: 2 pods deleted, 2 created, never more than 2 active"
}

rollout_restart() {
  k -n "$ns" rollout restart "deployment/$deployment" >/dev/null || { why="kubectl rollout restart failed"; return 1; }
  k -n "$ns" rollout status "deployment/$deployment" --timeout "${timeout}s" >"$work/out" 2>&1 ||
    { why="$(tail -n 2 "$work/out" | tr '\n' ' ') | $(deployment_state)"; return 1; }
  note=$(tail -n 1 "$work/out")
}

no_app_pods() { absent -n "$ns" pods -l crane.dev/replicaset=crane && absent -n "$ns" service crane-http; }
crs_deleted() {
  kn delete crs crane --wait=false >/dev/null || { why="cannot delete the CraneReplicaSet"; return 1; }
  poll "$timeout" no_app_pods || { why="left: $(kn get pods,services -o name | tr '\n' ' ')"; return 1; }
}

uninstall() {
  helm uninstall "$release" --namespace "$ns" --wait --timeout "${timeout}s" >"$work/out" 2>&1 ||
    { why=$(first 4 "$work/out"); return 1; }
}

namespace_deleted() {
  k delete namespace "$ns" --wait=false >/dev/null || { why="cannot delete namespace $ns"; return 1; }
  poll "$timeout" namespace_gone || { why="namespace $ns is still there after ${timeout} s"; return 1; }
  ctr_node images rm "$repository:$upgrade_tag" >/dev/null 2>&1 || { why="cannot remove the tag $upgrade_tag from $NODE_NAME"; return 1; }
}

# --- run ---------------------------------------------------------------------------------
echo "in-cluster tests: the chart with the operator's image on $NODE_NAME (helm $(helm version --template '{{.Version}}'), KUBECONFIG=$KUBECONFIG)"
start=$SECONDS
trap 'rm -rf "$work"' EXIT
check "API server reachable" reachable
check "real node $NODE_NAME Ready" real_node
check "images of make image on $NODE_NAME" images_on_node
if [ "${#failures[@]}" -gt 0 ]; then summary; fi
trap cleanup EXIT
check "second tag of the operator image: $upgrade_tag" second_tag
check "fresh namespace $ns (restricted Pod Security)" fresh_namespace
check "CRD applied (server-side, manifests/crd.yaml)" crd_applied
check "make deploy (helm upgrade --install --wait): 2 replicas, pullPolicy Never, leader election" install
check "both operator pods Ready on $NODE_NAME (kubelet probes /readyz)" both_ready 2
check "restricted: uid 65532, in-cluster config, ServiceAccount token" restricted_in_cluster
check "exactly one leader (Lease holder, crane_operator_leader)" one_leader_soon
check "a CraneReplicaSet of 2: pods Running and Ready on $NODE_NAME" crs_applied
check "its Service crane-http: LoadBalancer 8080 -> 7070 (default)" default_ports
check "EXTERNAL-IP on the CraneReplicaSet (LB allocator)" external_address
check "curl http://<EXTERNAL-IP>:8080 answered by each of its pods" answers_from_all
check "service.targetPort 7071 (nothing listens): connections fail" wrong_target_port
check "service block removed: the default targetPort answers again" default_target_port
check "/metrics through the metrics Service's ClusterIP" metrics_through_service
check "helm test" helm_test
check "helm upgrade --wait: image tag $upgrade_tag, --concurrency=3" upgrade
check "the operator pods run the new tag and args; a new pod leads" upgraded
check "pod count exact across the upgrade and the hand-over" exact_pod_count
check "the Service still answers after the upgrade" answers_from_all
check "kubectl rollout restart deployment/$deployment: rollout completes" rollout_restart
check "both operator pods Ready after the restart" both_ready 2
check "exactly one leader after the restart" one_leader_soon
check "CraneReplicaSet deleted: its pods and Service are removed" crs_deleted
check "helm uninstall --wait" uninstall
check "namespace $ns deleted" namespace_deleted
echo "in-cluster tests took $((SECONDS - start)) s"
summary
