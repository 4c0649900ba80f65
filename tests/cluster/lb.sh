#!/usr/bin/env bash
# Usage: tests/cluster/lb.sh KUBECONFIG        (started by node.sh up; runs until killed)
#
# The local cluster's LoadBalancer controller, what `minikube tunnel` or cloud-provider-kind
# do elsewhere: every Service of type LoadBalancer without an address gets the lowest free
# one of LB_FIRST..LB_LAST (tests/cluster/node.env) in status.loadBalancer.ingress, and
# kube-proxy on the real node answers for it (the range is routed to the node). An address
# comes back when its Service is deleted or stops being a LoadBalancer. Bounded: when the
# pool is empty, Services stay <pending> (and the log says so) until an address comes back,
# which goes to the one that waited longest.
# Namespaces labelled crane.dev/lb-allocator=off are left alone: the e2e suite plays the
# cloud controller there itself. One `kubectl get --watch` feeds it; when the watch ends
# (an API server restart), it lists everything again. Logs to stdout.
set -euo pipefail

[ $# -eq 1 ] || { sed -n '2s/^# //p' "$0" >&2 && exit 2; }
kubeconfig=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/node.env
source "$here/node.env"
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"
kubectl=${CRANE_CACHE_DIR:-$HOME/.cache/crane-operator}/bin/kubernetes-$KUBERNETES_VERSION/kubectl

log() { printf '%s [lb] %s\n' "$(date -u +%FT%TZ)" "$*"; }
k() { "$kubectl" --kubeconfig "$kubeconfig" --request-timeout=10s "$@"; }
to_int() {
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  echo $(((a << 24) + (b << 16) + (c << 8) + d))
}
to_ip() { echo "$(($1 >> 24 & 255)).$(($1 >> 16 & 255)).$(($1 >> 8 & 255)).$(($1 & 255))"; }
first=$(to_int "$LB_FIRST")
last=$(to_int "$LB_LAST")
in_pool() {
  local n
  n=$(to_int "$1")
  [ "$n" -ge "$first" ] && [ "$n" -le "$last" ]
}

declare -A owner=() # address -> namespace/name
declare -A given=() # namespace/name -> address
declare -A off=()   # namespace -> 1 when labelled crane.dev/lb-allocator=off
waiting=()          # namespace/name of Services that found the pool empty, oldest first

release() {
  local key=$1 ip=${given[$1]:-}
  [ -n "$ip" ] || return 0
  unset "owner[$ip]" "given[$key]"
  log "$key: released $ip"
  # The address goes to the Service that waited longest and still exists, if any.
  local next
  while [ ${#waiting[@]} -gt 0 ]; do
    next=${waiting[0]}
    waiting=("${waiting[@]:1}")
    assign "$next"
    [ -z "${given[$next]:-}" ] || break
  done
}
unwait() {
  local k rest=()
  for k in "${waiting[@]}"; do [ "$k" = "$1" ] || rest+=("$k"); done
  waiting=("${rest[@]}")
}

# assign NAMESPACE/NAME: give the Service its address (the one it had, else the lowest
# free one) in status.loadBalancer.ingress.
assign() {
  local key=$1 ip
  ip=${given[$key]:-}
  if [ -z "$ip" ]; then
    if ! ip=$(free_address); then
      [[ " ${waiting[*]} " == *" $key "* ]] || waiting+=("$key")
      log "$key: no free address in $LB_FIRST-$LB_LAST; it stays pending until one comes back"
      return
    fi
  fi
  if k -n "${key%%/*}" patch service "${key#*/}" --subresource=status --type=merge \
    -p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$ip\",\"ipMode\":\"VIP\"}]}}}" >/dev/null; then
    owner[$ip]=$key given[$key]=$ip
    log "$key: $ip"
  else
    log "$key: could not set its address (deleted meanwhile?)"
  fi
}

free_address() {
  local n
  for ((n = first; n <= last; n++)); do
    [ -z "${owner[$(to_ip "$n")]:-}" ] && to_ip "$n" && return
  done
  return 1
}

left_alone() {
  local ns=$1
  if [ -z "${off[$ns]:-}" ]; then
    off[$ns]=0
    [ "$(k get namespace "$ns" -o jsonpath='{.metadata.labels.crane\.dev/lb-allocator}' 2>/dev/null)" = off ] && off[$ns]=1
  fi
  [ "${off[$ns]}" = 1 ]
}

# handle EVENT NAMESPACE NAME TYPE [INGRESS-IP...]
handle() {
  local event=$1 ns=$2 name=$3 type=$4
  shift 4
  local key=$ns/$name ip
  if [ "$event" = DELETED ] || [ "$type" != LoadBalancer ]; then
    unwait "$key"
    release "$key"
    return
  fi
  if [ $# -gt 0 ]; then
    # It has an address (ours, after a restart of this loop, or someone else's).
    unwait "$key"
    for ip in "$@"; do
      if in_pool "$ip" && [ "${given[$key]:-}" != "$ip" ]; then
        release "$key"
        owner[$ip]=$key given[$key]=$ip
      fi
    done
    return
  fi
  left_alone "$ns" && return
  assign "$key"
}

log "handing out $LB_FIRST-$LB_LAST to LoadBalancer Services"
template='{.type} {.object.metadata.namespace} {.object.metadata.name} {.object.spec.type} {.object.status.loadBalancer.ingress[*].ip}{"\n"}'
while true; do
  owner=() given=() off=() waiting=()
  # The addresses already given, before any pending Service can take one of them (the
  # watch below lists the Services in no particular order).
  while read -r ns name ips; do
    for ip in $ips; do
      if in_pool "$ip"; then owner[$ip]=$ns/$name given[$ns/$name]=$ip; fi
    done
  done < <(k get services --all-namespaces -o jsonpath='{range .items[?(@.spec.type=="LoadBalancer")]}{.metadata.namespace} {.metadata.name} {.status.loadBalancer.ingress[*].ip}{"\n"}{end}' 2>/dev/null || true)
  # shellcheck disable=SC2086 # the ingress addresses are separate words
  while read -r event ns name type ingress; do
    handle "$event" "$ns" "$name" "$type" $ingress
  done < <("$kubectl" --kubeconfig "$kubeconfig" get services --all-namespaces --watch --output-watch-events -o jsonpath="$template" || true)
  sleep 2
done
