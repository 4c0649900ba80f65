#!/usr/bin/env bash
# Usage: tests/cluster/component.sh stop COMPONENT...   kill components of the local cluster
#        tests/cluster/component.sh start                start every stopped one, wait until ready
#        tests/cluster/component.sh status               print each component and its state
#
# For chaos tests against the cluster of up.sh. COMPONENT is one of etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok-controller. Data survive (etcd keeps its
# directory). Things to know:
# - stop sends SIGKILL, as `kwokctl stop cluster` does (a SIGTERM'd kube-apiserver stops
#   listening at once but may take 60 s to exit while watches are open).
# - kube-controller-manager and kube-scheduler exit by themselves when the API server is
#   away for more than ~10 s (they lose their leader lease); nothing restarts them but
#   `start`. After a restart they wait for the old lease to expire (up to 15 s) before
#   their controllers run again.
# - `kwokctl start cluster` skips a component whose pid is still a zombie (this machine's
#   PID 1 reaps orphans only after 1-2 s), so stop and start below wait for the reaping.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/env.sh
source "$here/env.sh"
workdir=$KWOK_WORKDIR/clusters/crane
all=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok-controller)

die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
[ -d "$workdir" ] || die "no cluster in $workdir: run 'make cluster' first"

pid_of() { cat "$workdir/pids/$1.pid" 2>/dev/null || true; }
# state PID: R, S, ... for a live process, Z for a zombie, empty when gone.
state() { if [ -n "$1" ]; then cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null || true; fi; }
# reaped COMPONENT...: wait (10 s at most) until none of them is a zombie.
reaped() {
  local c end=$((SECONDS + 10))
  for c in "$@"; do
    while [ "$(state "$(pid_of "$c")")" = Z ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.1; done
  done
}

case ${1:-} in
  stop)
    shift
    [ $# -gt 0 ] || die "which component? one of: ${all[*]}"
    for c in "$@"; do
      [[ " ${all[*]} " == *" $c "* ]] || die "unknown component '$c': one of ${all[*]}"
      pid=$(pid_of "$c")
      case $(state "$pid") in '' | Z) echo "$c: already stopped" && continue ;; esac
      kill -KILL "$pid"
      echo "$c: killed (pid $pid)"
    done
    reaped "$@"
    ;;
  start)
    reaped "${all[@]}"
    t0=$SECONDS
    kwokctl --name crane -v=WARN start cluster --timeout 60s >/dev/null ||
      die "kwokctl start cluster failed: see the logs in $workdir/logs/"
    end=$((SECONDS + 60))
    until kubectl --kubeconfig "$workdir/kubeconfig.yaml" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; do
      [ "$SECONDS" -lt "$end" ] || die "the API server is not ready 60 s after the start: see $workdir/logs/kube-apiserver.log"
      sleep 0.2
    done
    echo "cluster started, API server ready in $((SECONDS - t0)) s"
    ;;
  status)
    for c in "${all[@]}"; do
      pid=$(pid_of "$c")
      case $(state "$pid") in '' | Z) echo "$c: stopped" ;; *) echo "$c: running (pid $pid)" ;; esac
    done
    ;;
  *) sed -n '2,4s/^# //p' "$0" >&2 && exit 2 ;;
esac
