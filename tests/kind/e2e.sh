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
#   5. runs `CRANE_E2E_EXTERNAL_OPERATOR=1 cargo test --test e2e` with the tests listed in
#      NOT_HERE below left out by name, each for a stated reason, and CARGO_TEST_ARGS.
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

# The tests that cannot pass against an in-cluster operator on kind, by full name, each
# with why; the local cluster (make e2e, make test) runs every one of them. The list is
# checked against the suite's (`cargo test -- --list`): a renamed test fails the job
# rather than run here by surprise.
NOT_HERE='
operations::metrics_and_health_endpoints                         scrapes /metrics of the operator process the test starts; here the operator runs in the cluster
failures::a_permanently_failing_crane_replica_set_backs_off_and_delays_no_one  reads the reconcile-error counter of the operator process the test starts
operations::leader_election_hands_over_without_extra_pods       starts operator processes of its own, which the in-cluster operator (all namespaces) would compete with
operations::the_operator_takes_a_context_a_boolean_env_and_an_ipv6_metrics_address  starts an operator process of its own, which the in-cluster operator would compete with
operations::sigterm_exits_cleanly                                signals an operator process it starts
operations::sigterm_releases_the_leader_lease                    signals an operator process it starts
rbac::namespaced_role_suffices_and_is_minimal                    runs an operator process of its own with the chart RBAC token, which the in-cluster operator would compete with
rbac::cluster_role_suffices_and_is_minimal                       runs an operator process of its own with the chart RBAC token, which the in-cluster operator would compete with
diagnostics::image_pull_backoff_is_reported_with_a_hint_and_clears_when_fixed  needs kwok simulated pod states (label crane.dev/simulate, tests/cluster/kwok.yaml)
diagnostics::crash_loop_backoff_is_reported_with_a_hint_and_clears_when_fixed  needs kwok simulated pod states (crane.dev/simulate=CrashLoopBackOff)
failures::failed_pods_are_replaced_and_not_counted               needs kwok simulated pod states (crane.dev/simulate=Failed turns a running pod Failed)
kstatus::kubectl_wait_for_ready_returns_when_available_and_times_out_when_stalled  needs kwok simulated pod states (crane.dev/simulate=ImagePullBackOff for the stalled object)
dashboard::the_dashboard_follows_the_cluster_and_acts_with_the_users_rights  needs kwok simulated pod states (its broken object is crane.dev/simulate=ImagePullBackOff), and Debian chromium and chromium-driver on this machine
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
skips=()
while read -r name reason; do
  [ -n "$name" ] || continue
  grep -qx "$name" "$work/tests" || die "NOT_HERE names $name, which the suite does not have (renamed? update the list in $0)"
  skips+=(--skip "$name")
  log "not run here: $name: $reason"
done <<<"$NOT_HERE"
log "$(($(wc -l <"$work/tests") - ${#skips[@]} / 2)) of $(wc -l <"$work/tests") e2e tests run here"

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
log "passed"
