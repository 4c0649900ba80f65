#!/usr/bin/env bash
# Usage: hack/dashboard-footprint.sh [OBJECTS [PODS_EACH [SECONDS]]]
# Memory and CPU of `crane-operator dashboard` idle over a fleet: OBJECTS CraneReplicaSets
# (default 200) of PODS_EACH pods (default 5) in namespace crane-footprint of the local
# cluster (or KUBECONFIG), their pods left unscheduled (a nodeSelector no node has), so
# that nothing changes while it measures. An operator for that namespace creates the pods;
# then the dashboard serves one open overview page (a server-sent-events client) for
# SECONDS (default 60). Prints RSS and CPU; deletes the namespace afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
objects=${1:-200}
each=${2:-5}
seconds=${3:-60}
ns=crane-footprint
# shellcheck source=SCRIPTDIR/../tests/cluster/env.sh
source tests/cluster/env.sh
log() { printf '[footprint] %s\n' "$*" >&2; }

cargo build --release --locked --quiet
bin=target/release/crane-operator
work=$(mktemp -d)
pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" crd | kubectl apply --server-side --force-conflicts -f - >/dev/null
hack/crd-established.sh 60
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
log "creating $objects CraneReplicaSets of $each unschedulable pods in $ns"
for i in $(seq 1 "$objects"); do
  cat <<YAML
---
apiVersion: crane.dev/v1
kind: CraneReplicaSet
metadata: {name: fp-$i, namespace: $ns}
spec:
  replicas: $each
  service: {enabled: false}
  template:
    metadata: {labels: {app: fp-$i}}
    spec:
      nodeSelector: {crane.dev/footprint: none}
      containers: [{name: app, image: localhost/crane-app:dev}]
YAML
done > "$work/fleet.yaml"
kubectl apply --server-side -f "$work/fleet.yaml" >/dev/null
"$bin" run --namespace "$ns" --metrics-addr 127.0.0.1:0 >"$work/operator.log" 2>&1 &
pids+=($!)
want=$((objects * each))
deadline=$((SECONDS + 300))
until [ "$(kubectl -n "$ns" get pods -l crane.dev/replicaset --no-headers 2>/dev/null | wc -l)" -ge "$want" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { log "the operator did not create $want pods in 300 s"; tail -n 20 "$work/operator.log"; exit 1; }
  sleep 2
done
log "$want pods there; starting the dashboard"
port=18401
"$bin" dashboard --namespace "$ns" --port "$port" >"$work/dashboard.log" 2>&1 &
dash=$!
pids+=("$dash")
# Every request carries the launch's token, from the URL the dashboard prints.
until token=$(grep -o 'token=[0-9a-f]*' "$work/dashboard.log"); do sleep 0.2; done
until curl -fsS -o /dev/null "http://127.0.0.1:$port/assets/style.css?$token"; do sleep 0.2; done
# The first render waits for every watch's list: read the overview once it lists them all.
until [ "$(curl -fsS "http://127.0.0.1:$port/?$token" | grep -o 'data-name=' | wc -l)" -ge "$objects" ]; do sleep 0.5; done
curl -sN "http://127.0.0.1:$port/live/overview?$token" >/dev/null &
pids+=($!)
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$dash/stat"; }
before=$(cpu)
log "idle for $seconds s with one open overview page"
sleep "$seconds"
after=$(cpu)
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$dash/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$dash/status")
echo "dashboard over $objects CraneReplicaSets and $want pods, idle ${seconds} s with one page open:"
echo "  RSS $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB)"
awk -v t=$((after - before)) -v hz="$ticks" -v s="$seconds" \
  'BEGIN { printf "  CPU %.2f s in %d s (%.2f%% of one core)\n", t / hz, s, 100 * t / hz / s }'
