#!/usr/bin/env bash
# Usage: hack/crd-established.sh [TIMEOUT_SECONDS [CRD]]
# Waits until a CRD (default: the CraneReplicaSet CRD) is Established (default 60 s). Unlike
# `kubectl wait --for condition=established`, which fails at once on a CRD just created
# ("status.conditions accessor error: <nil>") because it has no conditions yet, it polls.
set -euo pipefail

timeout=${1:-60}
crd=${2:-cranereplicasets.crane.dev}
case $timeout in '' | *[!0-9]*) echo "usage: hack/crd-established.sh [TIMEOUT_SECONDS [CRD]]" >&2; exit 2 ;; esac
deadline=$((SECONDS + timeout))
while :; do
  status=$(kubectl get crd "$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>&1) || true
  [ "$status" = True ] && exit 0
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "the CRD $crd is not Established after ${timeout} s (last seen: ${status:-no conditions yet}); see: kubectl describe crd $crd" >&2
    exit 1
  fi
  sleep 0.2
done
