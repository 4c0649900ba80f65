# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034 # $release, $ns, $timeout, $work, $why and $note belong to the caller (see below)
# Usage: source tests/chart/release.sh        (by tests/chart/test.sh and tests/incluster/test.sh)
#
# What the two Helm test groups share: a release in a namespace of its own that enforces
# the restricted Pod Security Standard, as manifests/operator.yaml and tests/kind/e2e.sh do
# (the operator's pods must pass it). The caller sets $release, $ns, $timeout and $work,
# defines k (kubectl) and sources tests/cluster/checks.sh (poll, $why, $note).

# first N FILE: the first N lines of FILE on one line, for a check's message.
first() { head -n "$1" "$2" | tr '\n' ' ' | sed 's/  */ /g'; }

released() { helm status "$release" --namespace "$ns" >/dev/null 2>&1; }

namespace_gone() { absent namespace "$ns"; }

# fresh_namespace: $ns empty and new, a leftover release or namespace of an earlier run
# removed first.
fresh_namespace() {
  if released; then
    note="uninstalled a leftover release"
    helm uninstall "$release" --namespace "$ns" --wait --timeout "${timeout}s" >/dev/null 2>"$work/err" ||
      { why="cannot uninstall the leftover release: $(first 3 "$work/err")"; return 1; }
  fi
  if ! namespace_gone; then
    note="${note:+$note, }deleted a leftover namespace"
    k delete namespace "$ns" --wait=false >/dev/null
    poll "$timeout" namespace_gone || { why="namespace $ns is still there after ${timeout} s"; return 1; }
  fi
  k create namespace "$ns" >/dev/null || { why="cannot create namespace $ns"; return 1; }
  k label namespace "$ns" pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted >/dev/null
}
