#!/usr/bin/env bash
# Usage: tests/cluster/build.sh [promtool]
# Builds the local cluster (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, kwokctl, helm, and the real node's kubelet and kube-proxy) from Go
# modules and caches the binaries under ~/.cache/crane-operator/bin/<component>-<version>/
# (the node's two in kubernetes-node-<version>/). A component whose stamp exists is not
# rebuilt. Prints the bin directory of each component on stdout as NAME=DIR lines, last.
# With `promtool`, builds only Prometheus' promtool (for make lint), PROMTOOL_BIN=DIR.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"

cache=${CRANE_CACHE_DIR:-$HOME/.cache/crane-operator}
# The wrapper modules of this run: its own directory, since another checkout's build.sh
# may run at the same time (and removes its own when it ends).
work_root=$cache/work/$$
export CGO_ENABLED=0

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] error: %s\n' "$*" >&2; exit 1; }

# built COMPONENT VERSION: is the cached build complete? If not, a build needs Go.
built() {
  [ -f "$cache/bin/$1-$2/.stamp" ] && return 0
  command -v go >/dev/null || die "$1 $2 is not built yet and go is not on PATH: install Go 1.26 or newer (Debian: the golang package is too old; use the go.dev tarball)"
  return 1
}
stamp() { date -u +%FT%TZ > "$cache/bin/$1-$2/.stamp"; }

# wrapper_module DIR MODULE: an empty module that builds others' main packages.
wrapper_module() {
  rm -rf "$1" && mkdir -p "$1"
  printf 'module %s\n\ngo 1.26.0\n' "$2" > "$1/go.mod"
}

# build_kubernetes COMPONENT CMD...: k8s.io/kubernetes/cmd/CMD... into COMPONENT-<version>/.
build_kubernetes() {
  local name=$1 v=$KUBERNETES_VERSION
  shift
  local out="$cache/bin/$name-$v" cmds=("$@")
  built "$name" "$v" && return
  local minor=${v#v1.}; minor=${minor%%.*}
  local staging="v0.${v#v1.}"
  local work="$work_root/kubernetes-$v"
  log "kubernetes $v: resolving the staging modules (replaced by their published $staging twins)"
  wrapper_module "$work" crane.dev/cluster/kubernetes
  local gomod
  gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$v from the Go module proxy (GOPROXY=$(go env GOPROXY))"
  local mods
  mods=$(sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\) => ./staging/.*#\1#p' "$gomod")
  [ -n "$mods" ] || die "no staging replace lines found in $gomod"
  {
    printf 'require k8s.io/kubernetes %s\n' "$v"
    for m in $mods; do printf 'replace %s => %s %s\n' "$m" "$m" "$staging"; done
  } >> "$work/go.mod"
  log "kubernetes $v: $(echo "$mods" | wc -l) staging modules replaced"
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$out"
  local i=0 c
  for c in "${cmds[@]}"; do
    i=$((i + 1))
    log "kubernetes $v: building $c ($i/${#cmds[@]}; measured cold on 2 cores: ~6 min for the first of the control plane, which compiles most of the shared code, ~11 min for all four; then ~1 min each for kubelet and kube-proxy)"
    local t0=$SECONDS
    (cd "$work" && go build -mod=mod -trimpath -ldflags "$ld" -o "$out/$c" "k8s.io/kubernetes/cmd/$c")
    log "kubernetes $v: $c built in $((SECONDS - t0)) s"
  done
  stamp "$name" "$v"
}

build_etcd() {
  local v=$ETCD_VERSION out="$cache/bin/etcd-$ETCD_VERSION"
  built etcd "$v" && return
  local work="$work_root/etcd-$v"
  log "etcd $v: building"
  wrapper_module "$work" crane.dev/cluster/etcd
  printf 'require go.etcd.io/etcd/server/v3 %s\n' "$v" >> "$work/go.mod"
  mkdir -p "$out"
  (cd "$work" && go build -mod=mod -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$v"
}

# go_install COMPONENT VERSION PACKAGE...: modules without replace lines install directly.
go_install() {
  local name=$1 v=$2; shift 2
  local out="$cache/bin/$name-$v"
  built "$name" "$v" && return
  mkdir -p "$out"
  for p in "$@"; do
    log "$name $v: building ${p##*/}"
    GOBIN="$out" go install -trimpath -ldflags "-s -w" "$p@$v"
  done
  stamp "$name" "$v"
}

case ${1:-} in
  promtool)
    # Without the cluster's components: make lint needs only this one.
    go_install promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool
    echo "PROMTOOL_BIN=$cache/bin/promtool-$PROMETHEUS_VERSION"
    exit 0
    ;;
  '') ;;
  *) echo "usage: tests/cluster/build.sh [promtool]" >&2; exit 2 ;;
esac

start=$SECONDS
build_kubernetes kubernetes kube-apiserver kube-controller-manager kube-scheduler kubectl
build_kubernetes kubernetes-node kubelet kube-proxy
build_etcd
go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
go_install helm "$HELM_VERSION" helm.sh/helm/v4/cmd/helm
rm -rf "$work_root"
rmdir "$cache/work" 2>/dev/null || true
[ $((SECONDS - start)) -gt 5 ] && log "done in $((SECONDS - start)) s; binaries take $(du -sh "$cache/bin" | cut -f1)"
echo "KUBERNETES_BIN=$cache/bin/kubernetes-$KUBERNETES_VERSION"
echo "KUBERNETES_NODE_BIN=$cache/bin/kubernetes-node-$KUBERNETES_VERSION"
echo "ETCD_BIN=$cache/bin/etcd-$ETCD_VERSION"
echo "KWOK_BIN=$cache/bin/kwok-$KWOK_VERSION"
echo "HELM_BIN=$cache/bin/helm-$HELM_VERSION"
