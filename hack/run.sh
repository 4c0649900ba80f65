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

# Server-side and forced: it takes over the fields that the tests or a Helm release applied
# before, and keeps no 70 KB last-applied-configuration copy on the CRD.
echo "[run] installing the CraneReplicaSet CRD (server-side apply)"
"$bin" crd | kubectl apply --server-side --force-conflicts -f -
hack/crd-established.sh 60

echo "[run] starting the operator; in another shell: export KUBECONFIG=$KUBECONFIG; make demo"
exec "$bin" run --metrics-addr "${CRANE_METRICS_ADDR:-127.0.0.1:8080}" "$@"
