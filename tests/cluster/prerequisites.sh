#!/usr/bin/env bash
# Usage: tests/cluster/prerequisites.sh
# Exits 1 at once, saying what is missing and what to do instead, on a machine that cannot
# run the local cluster: it needs root (the real node's network namespace, mounts, cgroups
# and iptables rules) on Debian or Ubuntu (apt-get installs the node's containerd, runc and
# CNI plugins). tests/cluster/up.sh and `make test` run it first, so that neither fails
# half an hour later, after the control plane has been built.
set -euo pipefail

[ $# -eq 0 ] || { echo "usage: tests/cluster/prerequisites.sh (no arguments)" >&2; exit 2; }
missing=()
[ "$(id -u)" = 0 ] || missing+=("root: run it as root, or with sudo (keeping PATH for go and cargo)")
command -v apt-get >/dev/null ||
  missing+=("Debian or Ubuntu (apt-get installs the real node's containerd, runc and CNI plugins)")
[ ${#missing[@]} -eq 0 ] && exit 0
{
  echo "[cluster] the local cluster (make cluster, make test, make run without KUBECONFIG) needs:"
  printf '[cluster]   - %s\n' "${missing[@]}"
  echo "[cluster] with a cluster of your own instead: KUBECONFIG=... make run (or make demo, make deploy);"
  echo "[cluster] on a machine with Docker: tests/kind/e2e.sh runs the e2e suite on kind"
} >&2
exit 1
