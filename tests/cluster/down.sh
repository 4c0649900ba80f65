#!/usr/bin/env bash
# Usage: tests/cluster/down.sh                                 (make cluster-down)
#
# Deletes the local cluster started by up.sh: first the real node (tests/cluster/node.sh
# down: its processes, mounts, cgroups, network namespace and sysctls), then `kwokctl
# delete cluster`, then stops any process still running from .cluster/ (etcd, kube-*,
# kwok-controller), then removes .cluster/. Idempotent: does nothing when no cluster
# exists. Never builds anything. tests/cluster/leftovers.sh checks that nothing is left.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster_dir=$repo/.cluster
name=crane

log() { printf '[cluster] %s\n' "$*"; }

# The lock of up.sh (unless up.sh itself runs this script).
if [ -z "${CRANE_CLUSTER_LOCKED:-}" ] && command -v flock >/dev/null; then
  exec 9<"$here/up.sh"
  flock -n 9 || { log "waiting for another tests/cluster/up.sh or down.sh to finish"; flock 9; }
fi

"$here/node.sh" down ||
  { log "error: tests/cluster/node.sh down failed (see above); fix the cause and run make cluster-down again" && exit 1; }

if [ ! -e "$cluster_dir" ]; then
  log "no cluster to delete"
  exit 0
fi

while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^KWOK_' || true)
export KWOK_WORKDIR=$cluster_dir/kwok
workdir=$KWOK_WORKDIR/clusters/$name

# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"
cache=${CRANE_CACHE_DIR:-$HOME/.cache/crane-operator}
kwokctl=$cache/bin/kwok-$KWOK_VERSION/kwokctl
if [ -d "$workdir" ] && [ -x "$kwokctl" ]; then
  # The built kubectl first on PATH, so that kwokctl never tries to fetch one.
  PATH=$cache/bin/kubernetes-$KUBERNETES_VERSION:$PATH \
    "$kwokctl" --name "$name" -v=WARN delete cluster --kubeconfig "$cluster_dir/kubeconfig" ||
    log "kwokctl delete cluster failed; stopping the processes directly"
fi

# Whatever still runs from our work directory: control-plane processes whose command line
# names it (kwokctl starts them as .cluster/kwok/clusters/crane/bin/<name> --flags...).
ours() {
  local f pid argv0
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}
    pid=${pid%/cmdline}
    { IFS= read -r -d '' argv0 <"$f"; } 2>/dev/null || continue # gone, or a zombie
    case ${argv0##*/} in etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kwok-controller) ;; *) continue ;; esac
    # Captured, then searched: under pipefail `tr | grep -q` is false when tr dies of
    # SIGPIPE after grep's match, and a process of ours would be left running.
    grep -qF "$cluster_dir/" <<<"$({ tr '\0' '\n' <"$f"; } 2>/dev/null)" && echo "$pid"
  done
  return 0
}
pids=$(ours | sort -u)
if [ -n "$pids" ]; then
  log "stopping leftover processes: $(echo "$pids" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one pid per word
  kill $pids 2>/dev/null || true
  for _ in $(seq 1 50); do
    pids=$(ours | sort -u)
    [ -z "$pids" ] && break
    sleep 0.2
  done
  if [ -n "$pids" ]; then
    log "killing processes that did not stop within 10 s: $(echo "$pids" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
  fi
fi

rm -rf "$cluster_dir"
log "cluster '$name' deleted"
