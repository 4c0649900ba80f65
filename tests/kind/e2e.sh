#!/usr/bin/env bash
# Usage: tests/kind/e2e.sh [CARGO_TEST_ARGS...]
#
# The e2e suite against crane-operator installed by its Helm chart in a kind cluster, for
# machines with Docker (and in .github/workflows/kind-e2e.yml):
#   1. builds the operator image (docker build) and the suite's pod image, the book's app
#      (hack/image.sh crane-app: target/image/crane-app.tar, localhost/crane-app:dev);
#   2. creates the cluster from tests/kind/cluster.yaml (a control plane and three workers:
#      a kind node runs at most 110 pods and one test scales to 200) with the node image
#      pinned in tests/kind/versions.env, or reuses one of the same name; checks that
#      kubectl is within one minor of the nodes;
#   3. loads both images into the nodes (kind load docker-image / image-archive: no test
#      pod pulls from a registry);
#   4. installs the chart with hack/deploy.sh (make deploy), runs `helm test`;
#   5. runs `CRANE_E2E_EXTERNAL_OPERATOR=1 cargo test --test e2e` against the in-cluster
#      operator, without the tests listed in OWN_OPERATOR and NOT_ON_KIND below;
#   6. scales the in-cluster operator to 0 and runs the OWN_OPERATOR tests, which start
#      operator processes of their own (as on the local cluster), against the same cluster.
#   The NOT_ON_KIND tests are left out by name, each with what kind lacks for it.
#   CARGO_TEST_ARGS go to both runs.
# A cluster this script created is deleted on exit unless KEEP_CLUSTER=1.
#
# Environment (all optional):
#   KIND_CLUSTER_NAME  cluster name (default crane-e2e)
#   KIND_NODE_IMAGE    kind node image (default: tests/kind/versions.env's)
#   IMAGE              operator image to build and load (default crane-operator:e2e)
#   SKIP_BUILD=1       do not build IMAGE: it is already in the local Docker engine
#   KEEP_CLUSTER=1     keep the cluster afterwards (to debug; delete with kind delete cluster)
#   RELEASE_NAMESPACE  namespace of the Helm release (default crane-system)
#   HELM_ARGS          extra arguments for helm upgrade --install (word-split)
# Needs docker, kind, helm, kubectl and cargo on PATH, and what hack/image.sh needs (umoci;
# installed from Debian when running as root). No load-balancer controller runs: the suite
# expects LoadBalancer Services to stay <pending> until it sets their status.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$root/tests/kind/versions.env"
cluster=${KIND_CLUSTER_NAME:-crane-e2e}
node_image=${KIND_NODE_IMAGE:-$KIND_NODE_IMAGE}
image=${IMAGE:-crane-operator:e2e}
namespace=${RELEASE_NAMESPACE:-crane-system}
release=crane-operator
app_archive=$root/target/image/crane-app.tar

# The tests that start, scrape or signal operator processes of their own: the in-cluster
# operator (all namespaces) would compete with them, so they run in a second pass with it
# scaled to 0, on the same kind cluster, by full name, each with why.
OWN_OPERATOR='
operations::metrics_and_health_endpoints                         scrapes /metrics of the operator process the test starts
failures::a_permanently_failing_crane_replica_set_backs_off_and_delays_no_one  reads the reconcile-error counter of the operator process the test starts
operations::leader_election_hands_over_without_extra_pods       starts two operator processes that elect a leader
operations::the_operator_takes_a_context_a_boolean_env_and_an_ipv6_metrics_address  starts an operator process with these flags
operations::sigterm_exits_cleanly                                signals an operator process it starts
operations::sigterm_releases_the_leader_lease                    signals an operator process it starts
rbac::namespaced_role_suffices_and_is_minimal                    runs an operator process with the namespaced RBAC token of the chart
rbac::cluster_role_suffices_and_is_minimal                       runs an operator process with the cluster RBAC token of the chart
rbac::a_start_short_of_a_grant_fails_at_once_naming_it           runs operator processes with the namespaced RBAC of the chart short of one grant
poison::an_object_the_operator_cannot_decode_stops_no_other      starts an operator process with an undecodable object present and reads its /readyz
'

# The tests kind cannot run, by full name, each with what kind lacks: they put pods in
# failing states through kwok's stages (label crane.dev/simulate, tests/cluster/kwok.yaml),
# which kind's real kubelets do not have. The local cluster (make e2e, make test) runs
# every one of them. Both lists are checked against the suite's (`cargo test -- --list`):
# a renamed test fails the job rather than run here by surprise, or not at all.
NOT_ON_KIND='
diagnostics::image_pull_backoff_is_reported_with_a_hint_and_clears_when_fixed  kind lacks kwok stages: crane.dev/simulate=ImagePullBackOff holds the pods in that state until the label is removed
diagnostics::crash_loop_backoff_is_reported_with_a_hint_and_clears_when_fixed  kind lacks kwok stages: crane.dev/simulate=CrashLoopBackOff holds the pods in that state until the label is removed
failures::failed_pods_are_replaced_and_not_counted               kind lacks kwok stages: crane.dev/simulate=Failed turns a running pod Failed, which a real kubelet does to a restartPolicy Always pod only on eviction
kstatus::kubectl_wait_for_ready_returns_when_available_and_times_out_when_stalled  kind lacks kwok stages: crane.dev/simulate=ImagePullBackOff makes the stalled object
dashboard::the_dashboard_follows_the_cluster_and_acts_with_the_users_rights  kind lacks kwok stages: its broken object is crane.dev/simulate=ImagePullBackOff (and it needs Debian chromium and chromium-driver on the machine)
'

log() { printf '[kind-e2e] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

for tool in docker kind helm kubectl cargo; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
[[ ${image##*/} == *:* ]] || die "IMAGE must name a tag (REPOSITORY:TAG), got $image"

work=$(mktemp -d)
export KUBECONFIG=$work/kubeconfig
created=0

cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ -s "$KUBECONFIG" ]; then
    log "failed (exit $rc): operator state and logs follow"
    kubectl get nodes -o wide
    kubectl -n "$namespace" get deployment,pods,services,leases -o wide
    kubectl -n "$namespace" describe pods -l "app.kubernetes.io/instance=$release"
    kubectl -n "$namespace" logs -l "app.kubernetes.io/instance=$release" --all-containers --prefix --tail=300
    kubectl get events -A --sort-by=.lastTimestamp | tail -n 50
  fi
  if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster"
  elif [ "$created" = 1 ]; then
    log "kept kind cluster $cluster (kind delete cluster --name $cluster)"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# Compile the suite before there is a cluster to wait on, and check the list above.
cd "$root"
cargo test --locked --test e2e --no-run
cargo test --locked --test e2e -- --list --format terse 2>/dev/null | sed -n 's/: test$//p' >"$work/tests"
skips=() own=()
while read -r name reason; do
  [ -n "$name" ] || continue
  grep -qx "$name" "$work/tests" || die "OWN_OPERATOR names $name, which the suite does not have (renamed? update the list in $0)"
  skips+=(--skip "$name")
  own+=("$name")
  log "run with the in-cluster operator scaled to 0: $name: $reason"
done <<<"$OWN_OPERATOR"
not_on_kind=0
while read -r name reason; do
  [ -n "$name" ] || continue
  grep -qx "$name" "$work/tests" || die "NOT_ON_KIND names $name, which the suite does not have (renamed? update the list in $0)"
  skips+=(--skip "$name")
  not_on_kind=$((not_on_kind + 1))
  log "not run on kind: $name: $reason"
done <<<"$NOT_ON_KIND"
total=$(wc -l <"$work/tests")
log "$((total - not_on_kind)) of $total e2e tests run here: $((total - not_on_kind - ${#own[@]})) with the in-cluster operator, then ${#own[@]} with operators of their own"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building image $image"
  # BuildKit attaches a provenance attestation by default, and an image carrying one is an
  # index that `kind load` cannot import into the nodes (kind issue 3795). The legacy
  # builder has no such flag (and attaches none).
  no_provenance=()
  if docker buildx version >/dev/null 2>&1; then no_provenance=(--provenance=false); fi
  docker build "${no_provenance[@]}" -t "$image" "$root"
fi
log "building the suite's pod image (hack/image.sh crane-app)"
"$root/hack/image.sh" crane-app

if grep -qx "$cluster" <<<"$(kind get clusters 2>/dev/null)"; then
  log "reusing kind cluster $cluster"
  kind get kubeconfig --name "$cluster" >"$KUBECONFIG"
else
  log "creating kind cluster $cluster ($node_image, tests/kind/cluster.yaml)"
  created=1
  kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 180s \
    --config "$root/tests/kind/cluster.yaml" --image "$node_image"
fi

# kubectl supports one minor of skew with the API server; the suite runs kubectl wait,
# scale, label and get against it.
minors=$(kubectl version -o json | sed -n 's/^ *"minor": "\([0-9]*\).*/\1/p' | paste -sd' ') ||
  die "kubectl version failed: the cluster does not answer"
read -r client_minor server_minor <<<"$minors"
{ [ -n "${client_minor:-}" ] && [ -n "${server_minor:-}" ]; } || die "cannot read kubectl's and the API server's versions (kubectl version -o json)"
skew=$((client_minor - server_minor))
[ "${skew#-}" -le 1 ] ||
  die "kubectl 1.$client_minor is more than one minor away from the nodes' 1.$server_minor: use kubectl $KUBECTL_VERSION (tests/kind/versions.env)"

log "loading $image and localhost/crane-app:dev into the nodes"
kind load docker-image "$image" --name "$cluster"
kind load image-archive "$app_archive" --name "$cluster"

log "installing the chart (hack/deploy.sh)"
# shellcheck disable=SC2086 # HELM_ARGS is a list of words on purpose
IMAGE=${image%:*} TAG=${image##*:} NAMESPACE=$namespace RELEASE=$release \
  "$root/hack/deploy.sh" --set image.pullPolicy=Never --set logFormat=text ${HELM_ARGS:-}
helm test "$release" --namespace "$namespace" --logs --timeout 3m

log "running the e2e suite against the in-cluster operator"
CRANE_E2E_EXTERNAL_OPERATOR=1 cargo test --locked --test e2e -- "${skips[@]}" "$@"

# The tests with operators of their own: the in-cluster one stopped first (its pods gone),
# started again afterwards for a cluster that is kept or reused.
operator_pods=app.kubernetes.io/name=crane-operator,app.kubernetes.io/instance=$release
replicas=$(kubectl -n "$namespace" get deployment -l "$operator_pods" -o jsonpath='{.items[0].spec.replicas}')
log "scaling the in-cluster operator to 0 (from $replicas) for the tests that start operators of their own"
kubectl -n "$namespace" scale deployment -l "$operator_pods" --replicas=0
kubectl -n "$namespace" wait --for=delete pod -l "$operator_pods" --timeout=120s
cargo test --locked --test e2e -- --exact "${own[@]}" "$@"
kubectl -n "$namespace" scale deployment -l "$operator_pods" --replicas="$replicas"
log "passed"
