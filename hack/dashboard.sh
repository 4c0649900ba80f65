#!/usr/bin/env bash
# Usage: hack/dashboard.sh [crane-operator dashboard flags...]
# `make dashboard`: `crane-operator dashboard` on http://127.0.0.1:8001 for the namespace of
# the current context (flags: -n NS, -A, --port N, --open). It prints the URL to open, with
# this launch's token (http://127.0.0.1:8001/?token=...): without it every request is 403. Uses the local cluster (started
# by tests/cluster/up.sh) unless KUBECONFIG is set. The same view as `kubectl crane
# dashboard` once the binary is on PATH as kubectl-crane.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${KUBECONFIG:-}" ]; then
  tests/cluster/up.sh
fi
# shellcheck source=SCRIPTDIR/../tests/cluster/env.sh
source tests/cluster/env.sh

echo "[dashboard] building crane-operator (release)"
cargo build --release --locked --quiet
exec target/release/crane-operator dashboard "$@"
