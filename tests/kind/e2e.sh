#!/usr/bin/env bash
# Usage: tests/kind/e2e.sh [CARGO_TEST_ARGS...]
#
# The e2e suite against crane-operator installed by its Helm chart in a kind cluster, for
# machines with Docker (and in .github/workflows/kind-e2e.yml): builds the image, creates
# the cluster (or reuses one of the same name), loads the image, `helm upgrade --install`s
# the chart, waits for the rollout, runs `helm test`, then runs
# `CRANE_E2E_EXTERNAL_OPERATOR=1 cargo test --test e2e -- --skip operations:: --skip rbac::
# CARGO_TEST_ARGS...` (those tests start operators of their own: see below).
# A cluster this script created is deleted on exit unless KEEP_CLUSTER=1.
#
# Environment (all optional):
#   KIND_CLUSTER_NAME  cluster name (default crane-e2e)
#   KIND_NODE_IMAGE    kind node image, e.g. kindest/node:v1.33.1 (default: kind's own)
#   IMAGE              image to build and load (default crane-operator:e2e)
#   SKIP_BUILD=1       do not build IMAGE: it is already in the local Docker engine
#   KEEP_CLUSTER=1     keep the cluster afterwards (to debug; delete with kind delete cluster)
#   RELEASE_NAMESPACE  namespace of the Helm release (default crane-system)
#   HELM_ARGS          extra arguments for helm upgrade --install (word-split)
# Needs docker, kind, helm, kubectl and cargo on PATH. No load-balancer controller runs:
# the suite expects LoadBalancer Services to stay <pending> until it sets their status.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${KIND_CLUSTER_NAME:-crane-e2e}
image=${IMAGE:-crane-operator:e2e}
namespace=${RELEASE_NAMESPACE:-crane-system}
release=crane-operator

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

# Compile the suite before there is a cluster to wait on.
(cd "$root" && cargo test --locked --test e2e --no-run)

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building image $image"
  docker build -t "$image" "$root"
fi

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "reusing kind cluster $cluster"
  kind get kubeconfig --name "$cluster" > "$KUBECONFIG"
else
  log "creating kind cluster $cluster"
  created=1
  kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 120s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi

log "loading $image into the cluster"
kind load docker-image "$image" --name "$cluster"

# The namespace enforces the restricted Pod Security Standard, as manifests/operator.yaml
# does: the chart's pods must pass it.
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$namespace" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted

log "installing the chart"
# shellcheck disable=SC2086 # HELM_ARGS is a list of words on purpose
helm upgrade --install "$release" "$root/charts/crane-operator" \
  --namespace "$namespace" \
  --set-string image.repository="${image%:*}" \
  --set-string image.tag="${image##*:}" \
  --set image.pullPolicy=Never \
  --set logFormat=text \
  --wait --timeout 5m \
  ${HELM_ARGS:-}

"$root/hack/crd-established.sh" 60
kubectl -n "$namespace" rollout status "deployment/$release" --timeout 180s
helm test "$release" --namespace "$namespace" --logs --timeout 3m

log "running the e2e suite against the in-cluster operator"
cd "$root"
# Skipped here: the tests in operations:: (metrics, leader election, SIGTERM) and rbac::
# (the chart's RBAC with a ServiceAccount token) start operator processes of their own,
# which would compete with the in-cluster operator (it watches every namespace). The local
# cluster (make test) runs them.
CRANE_E2E_EXTERNAL_OPERATOR=1 cargo test --locked --test e2e -- \
  --skip operations:: --skip rbac:: "$@"
log "passed"
