#!/usr/bin/env bash
# Usage: hack/demo.sh
# `make demo`: chapter 2 of "Kubernetes in Action" with a CraneReplicaSet, narrated. Uses the
# operator of `make run` if one answers on 127.0.0.1:8080, else starts one for the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${KUBECONFIG:-}" ]; then
  tests/cluster/up.sh >/dev/null
fi
# shellcheck source=SCRIPTDIR/../tests/cluster/env.sh
source tests/cluster/env.sh

say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

operator_pid=""
cleanup() {
  kubectl delete crs crane --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [ -n "$operator_pid" ]; then kill "$operator_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

if curl -fsS --max-time 1 http://127.0.0.1:8080/readyz >/dev/null 2>&1; then
  echo "[demo] using the operator already running on 127.0.0.1:8080"
else
  echo "[demo] no operator on 127.0.0.1:8080: starting one (log: .cluster/demo-operator.log)"
  cargo build --release --locked --quiet
  target/release/crane-operator crd | kubectl apply --server-side --force-conflicts -f - >/dev/null
  hack/crd-established.sh 60
  target/release/crane-operator run --metrics-addr 127.0.0.1:8080 >.cluster/demo-operator.log 2>&1 &
  operator_pid=$!
  for _ in $(seq 1 50); do
    curl -fsS --max-time 1 http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
    kill -0 "$operator_pid" 2>/dev/null || { echo "[demo] the operator exited:" >&2; tail .cluster/demo-operator.log >&2; exit 1; }
    sleep 0.2
  done
fi

say "The cluster: a real API server, scheduler and controller manager, with kwok nodes"
run kubectl get nodes

say "The book's ReplicationController, as a CraneReplicaSet (1 replica of the book's app, localhost/crane-app:dev, port 7070)"
run cat manifests/examples/crane.yaml
run kubectl apply -f manifests/examples/crane.yaml
run kubectl wait --for=jsonpath='{.status.readyReplicas}'=1 crs/crane --timeout=60s
run kubectl get crs

say "Its pod, named crane-<5 random characters>"
run kubectl get pods -o wide -l app=crane

say "Delete the pod by force: the CraneReplicaSet makes a new one"
pod=$(kubectl get pods -l app=crane -o jsonpath='{.items[0].metadata.name}')
run kubectl delete pod "$pod" --force --grace-period=0
run kubectl wait --for=jsonpath='{.status.readyReplicas}'=1 crs/crane --timeout=60s
run kubectl get pods -l app=crane

say "Scale it like an RC: desired state 3, and the controller reconciles"
run kubectl scale crs crane --replicas=3
run kubectl wait --for=jsonpath='{.status.readyReplicas}'=3 crs/crane --timeout=60s
run kubectl get crs crane
run kubectl get pods -o wide -l app=crane

say "The LoadBalancer Service it made by itself: port 8080 -> targetPort 7070"
run kubectl get service crane-http -o wide
say "(EXTERNAL-IP stays <pending> until a load balancer answers, as with minikube before 'minikube tunnel')"

say "What kubectl describe says"
run kubectl describe crs crane
run kubectl describe pod "$(kubectl get pods -l app=crane -o jsonpath='{.items[0].metadata.name}')"

say "Clean up: deleting the CraneReplicaSet lets the garbage collector remove its pods and Service"
run kubectl delete crs crane
run kubectl wait --for=delete pod -l app=crane --timeout=60s
trap - EXIT
cleanup
