#!/usr/bin/env bash
# Usage: hack/deploy.sh [HELM_ARGS...]
# `make deploy`: installs, or upgrades, crane-operator with its Helm chart in the cluster of
# the current kubeconfig (KUBECONFIG, else ~/.kube/config, at its current context):
# `helm upgrade --install --wait` of charts/crane-operator, CRD included (--take-ownership:
# Helm adopts a CRD that make run or manifests/ applied), into a namespace that is created,
# when missing, with the restricted Pod Security level. HELM_ARGS go to helm as they are
# (e.g. --set replicaCount=2). Refuses before changing anything when there is no kubeconfig
# or its cluster does not answer. Also used by tests/kind/e2e.sh.
#
# The image: the chart's (ghcr.io/crane-dev/crane-operator, tag = the chart's appVersion),
# which `make image` builds as target/image/crane-operator.tar. When the context is a kind
# cluster's (kind-NAME) and kind is on PATH, that archive is loaded into its nodes first
# (kind load image-archive), with target/image/crane-app.tar (the image of
# manifests/examples/crane.yaml) when it is there, so that on kind `make image` and `make
# deploy` are all it takes; for minikube run `minikube image load ARCHIVE` first.
#
# Environment (all optional):
#   IMAGE      image repository (default: the chart's)
#   TAG        image tag (default: the chart's appVersion)
#   LOAD=0     do not load target/image/crane-operator.tar into a kind cluster
#   NAMESPACE  the release's namespace (default crane-system)
#   RELEASE    the release's name (default crane-operator)
#   TIMEOUT    how long helm waits for the operator to be ready (default 5m)
# Needs kubectl, and helm 3.17 or newer (else helm is built from its Go module, once).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[deploy] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

namespace=${NAMESPACE:-crane-system}
release=${RELEASE:-crane-operator}
timeout=${TIMEOUT:-5m}
archive=$root/target/image/crane-operator.tar

command -v kubectl >/dev/null || die "kubectl is not on PATH"
if [ -z "${KUBECONFIG:-}" ] && [ ! -f "$HOME/.kube/config" ]; then
  die "no cluster: KUBECONFIG is not set and there is no ~/.kube/config (kind create cluster, minikube start, or export KUBECONFIG=...; the local cluster's is $root/.cluster/kubeconfig)"
fi
context=$(kubectl config current-context 2>/dev/null) ||
  die "the kubeconfig (${KUBECONFIG:-~/.kube/config}) has no current context: kubectl config use-context NAME"
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}' 2>/dev/null || true)
if ! answer=$(kubectl get --raw /readyz --request-timeout=10s 2>&1); then
  die "the cluster of context $context ($server) does not answer: $(head -n 2 <<<"$answer" | tr '\n' ' ')"
fi

# helm: the one on PATH if it has --take-ownership (3.17+), else the pinned one, built once.
helm=helm
version=$(helm version --template '{{.Version}}' 2>/dev/null || true)
if ! [[ $version =~ ^v([0-9]+)\.([0-9]+) ]] ||
  [ "${BASH_REMATCH[1]}" -lt 3 ] || { [ "${BASH_REMATCH[1]}" = 3 ] && [ "${BASH_REMATCH[2]}" -lt 17 ]; }; then
  log "helm ${version:-is not on PATH}: need 3.17 or newer; using the project's (built from its Go module on first use)"
  helm=$("$root/tests/cluster/build.sh" helm | sed -n 's/^HELM_BIN=//p')/helm
fi

# The image of make image, into a kind cluster's nodes.
if [[ $context == kind-* ]] && [ "${LOAD:-1}" != 0 ] && [ -z "${IMAGE:-}${TAG:-}" ] && [ -f "$archive" ]; then
  command -v kind >/dev/null || die "context $context is a kind cluster's, but kind is not on PATH to load $archive (or run with LOAD=0)"
  ref=$(tar -xOf "$archive" index.json | sed -n 's/.*"io.containerd.image.name":"\([^"]*\)".*/\1/p')
  [ -n "$ref" ] || die "$archive does not name its image (make image again)"
  archives=("$archive")
  [ ! -f "$root/target/image/crane-app.tar" ] || archives+=("$root/target/image/crane-app.tar")
  log "loading $ref into the nodes of kind cluster ${context#kind-} (from ${archives[*]})"
  kind load image-archive "${archives[@]}" --name "${context#kind-}"
  IMAGE=${ref%:*} TAG=${ref##*:}
fi

log "installing release $release into namespace $namespace of context $context ($server)"
if ! kubectl get namespace "$namespace" >/dev/null 2>&1; then
  kubectl create namespace "$namespace" >/dev/null
  kubectl label namespace "$namespace" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/warn=restricted >/dev/null
fi
args=(upgrade --install "$release" "$root/charts/crane-operator" --namespace "$namespace"
  --take-ownership --wait --timeout "$timeout")
[ -z "${IMAGE:-}" ] || args+=(--set-string "image.repository=$IMAGE")
[ -z "${TAG:-}" ] || args+=(--set-string "image.tag=$TAG")
if ! "$helm" "${args[@]}" "$@"; then
  kubectl -n "$namespace" get pods -l "app.kubernetes.io/instance=$release" -o wide >&2 || true
  die "helm upgrade --install did not finish (above: the operator's pods). ErrImagePull or ImagePullBackOff: the nodes lack the image; make image, then load target/image/crane-operator.tar into them (kind load image-archive, minikube image load) or push it to a registry and set IMAGE and TAG"
fi
"$root/hack/crd-established.sh" 60
log "crane-operator is running in namespace $namespace: kubectl apply -f manifests/examples/crane.yaml, then kubectl get crs"
