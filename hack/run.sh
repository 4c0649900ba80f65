#!/usr/bin/env bash
# Usage: hack/run.sh [crane-operator run flags...]
# `make run`: the operator in the foreground, with its CRD installed. Uses the local cluster
# (started, and built on first use, by tests/cluster/up.sh) unless KUBECONFIG is set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${KUBECONFIG:-}" ]; then
  tests/cluster/up.sh
fi
# shellcheck source=SCRIPTDIR/../tests/cluster/env.sh
source tests/cluster/env.sh
echo "[run] cluster: $(kubectl config current-context) ($KUBECONFIG)"

echo "[run] building crane-operator (release)"
cargo build --release --locked --quiet
bin=target/release/crane-operator

echo "[run] installing the CraneReplicaSet CRD (server-side apply: the CRD is too large for client-side apply)"
"$bin" crd | kubectl apply --server-side --force-conflicts -f -
# Not kubectl wait: on a CRD just created it fails at once ("<nil> ... expected []interface{}")
# until the API server has written its first condition.
established() {
  [ "$(kubectl get crd cranereplicasets.crane.dev -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]
}
for _ in $(seq 1 120); do established && break; sleep 0.5; done
established || { echo "[run] the CRD cranereplicasets.crane.dev is not Established after 60 s" >&2; exit 1; }

echo "[run] starting the operator; in another shell: export KUBECONFIG=$KUBECONFIG; make demo"
exec "$bin" run --metrics-addr "${CRANE_METRICS_ADDR:-127.0.0.1:8080}" "$@"
