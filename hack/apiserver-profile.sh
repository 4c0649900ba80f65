#!/usr/bin/env bash
# Takes a CPU profile of the local cluster's kube-apiserver while each bench run of a kind
# happens: start it, then `make bench` (or one scenario of it) in another shell.
#
#   hack/apiserver-profile.sh [PATTERN] [SECONDS]
#
# PATTERN (default `-1000$`): the bench namespaces to profile (grep -E), e.g. the fan-out's
# and the N=1000 scale-up's `cb-<run>-<n>-crane-1000` and `...-native-1000`. Each profile
# starts when its namespace appears and lasts SECONDS (default 8); the profiles go to
# target/apiserver-profiles/<namespace>.pprof. Read one with
#   go tool pprof -top -cum target/apiserver-profiles/<namespace>.pprof
# Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
pattern=${1:--1000$}
seconds=${2:-8}
out=target/apiserver-profiles
mkdir -p "$out"
# shellcheck source=/dev/null
source tests/cluster/env.sh
if ! kubectl get --raw /healthz >/dev/null 2>&1; then
  echo "[profile] no API server answers at KUBECONFIG=$KUBECONFIG: start the cluster (make cluster, or make bench)" >&2
  exit 1
fi
echo "[profile] waiting for namespaces matching '$pattern'; profiles of ${seconds} s go to $out/ (Ctrl-C stops)"
declare -A seen=()
while true; do
  while read -r ns; do
    [[ -z "$ns" || -n "${seen[$ns]:-}" ]] && continue
    seen[$ns]=1
    echo "[profile] $(date +%T) $ns: profiling kube-apiserver for ${seconds} s"
    kubectl get --raw "/debug/pprof/profile?seconds=${seconds}" >"$out/$ns.pprof" &
  done < <(kubectl get namespaces -o name | sed 's|^namespace/||' | grep -E "$pattern" || true)
  sleep 0.2
done
