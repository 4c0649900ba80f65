#!/usr/bin/env bash
# Usage: hack/demo.sh
# `make demo`: chapter 2 of "Kubernetes in Action" with a CraneReplicaSet, narrated, on the
# local cluster's real node crane-node-0: the book's app runs for real and answers
# `curl http://<EXTERNAL-IP>:8080` through the LoadBalancer Service the operator makes.
# Uses the operator of `make run` if one answers on 127.0.0.1:8080, else starts one for
# the demo. Imports the app's image into the node (building it with make image first when
# target/image/crane-app.tar is missing). Every wait is bounded and says what it waited for.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

local_cluster=""
if [ -z "${KUBECONFIG:-}" ]; then
  tests/cluster/up.sh >/dev/null
  local_cluster=1
fi
# shellcheck source=SCRIPTDIR/../tests/cluster/env.sh
source tests/cluster/env.sh

say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
log() { echo "[demo] $*"; }
die() { echo "[demo] error: $*" >&2; exit 1; }

app_image=localhost/crane-app:dev
socket=.cluster/node/containerd/containerd.sock
operator_pid=""
cleanup() {
  kubectl delete crs crane --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [ -n "$operator_pid" ]; then kill "$operator_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# until_true SECONDS WHAT COMMAND...: poll COMMAND until it succeeds; after SECONDS, fail
# saying what was being waited for.
until_true() {
  local secs=$1 what=$2
  local end=$((SECONDS + secs))
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || die "gave up after $secs s waiting for $what"
    sleep 0.25
  done
}

# The app's image on the node: imported from the archive of make image (built first when
# missing). Only on the local cluster; another cluster must be able to pull it itself.
if [ -n "$local_cluster" ]; then
  # Searched in a captured list: under pipefail `ctr ... | grep -q` is false whenever ctr
  # dies of SIGPIPE after grep's match.
  if ! grep -qx "$app_image" <<<"$(ctr --address "$socket" --namespace k8s.io images ls -q 2>/dev/null)"; then
    if [ ! -f target/image/crane-app.tar ]; then
      log "$app_image is not on crane-node-0 and target/image/crane-app.tar is missing: building the images with make image (the first build takes ~6-12 min on 2 cores)"
      hack/image.sh | sed -n 's/^\[image\] /[demo] make image: /p'
    else
      log "importing $app_image into crane-node-0 from target/image/crane-app.tar (make image built it)"
      tests/cluster/node-import.sh target/image/crane-app.tar >/dev/null
    fi
  fi
fi

# The kubectl plugin (what make install-plugin installs), for this demo only.
log "building crane-operator (release; the first build takes a few minutes)"
cargo build --release --locked --quiet
mkdir -p .cluster/bin
ln -sfn "$PWD/target/release/crane-operator" .cluster/bin/kubectl-crane
export PATH="$PWD/.cluster/bin:$PATH"

if curl -fsS --max-time 1 http://127.0.0.1:8080/readyz >/dev/null 2>&1; then
  log "using the operator already running on 127.0.0.1:8080"
else
  log "no operator on 127.0.0.1:8080: starting one (log: .cluster/demo-operator.log)"
  target/release/crane-operator crd | kubectl apply --server-side --force-conflicts -f - >/dev/null
  # Not kubectl wait: on a CRD just created it fails at once ("<nil> ... expected []interface{}")
  # until the API server has written its first condition.
  hack/crd-established.sh 60
  target/release/crane-operator run --metrics-addr 127.0.0.1:8080 >.cluster/demo-operator.log 2>&1 &
  operator_pid=$!
  operator_ready() {
    kill -0 "$operator_pid" 2>/dev/null || { tail .cluster/demo-operator.log >&2; die "the operator exited"; }
    curl -fsS --max-time 1 http://127.0.0.1:8080/readyz >/dev/null 2>&1
  }
  until_true 30 "the operator's /readyz (log: .cluster/demo-operator.log)" operator_ready
fi

ready() { [ "$(kubectl get crs crane -o jsonpath='{.status.readyReplicas}/{.status.replicas}')" = "$1/$1" ]; }
external_ip() { kubectl get crs crane -o jsonpath='{.status.service.externalIP}'; }
has_external_ip() { [[ $(external_ip) =~ ^[0-9.]+$ ]]; }
# pods: the names of the pods of the CraneReplicaSet that are not terminating.
pods() {
  kubectl get pods -l app=crane -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}|{.metadata.name}{"\n"}{end}' |
    sed -n 's/^|//p'
}
# answered_by POD: a curl through the LoadBalancer is answered by POD.
answered_by() { [ "$(curl -sS --max-time 3 "$url" 2>/dev/null)" = "You've hit $1" ]; }

say "The cluster: a real API server, scheduler and controller manager; kwok nodes for the tests, and one real node, crane-node-0"
run kubectl get nodes

say "The book's first command, kubectl run crane --image=... --port=7070, made a ReplicationController in its day; kubectl crane run makes a CraneReplicaSet (1 replica of the book's app, $app_image)"
run kubectl crane run crane --image="$app_image" --port=7070
run kubectl wait --for=jsonpath='{.status.readyReplicas}'=1 crs/crane --timeout=60s

say "Its pod, named crane-<5 random characters>, running on the real node"
run kubectl get pods -o wide -l app=crane

say "What it made is what the book's replication-controller.json describes, as a CraneReplicaSet (kubectl apply -f takes this file as well)"
run cat manifests/examples/crane.yaml

say "The LoadBalancer Service it made by itself (port 8080 -> targetPort 7070); the cluster's load balancer gives it an address"
run kubectl get crs
if ! has_external_ip; then
  say "(EXTERNAL-IP is <pending> until the load balancer answers, as with minikube before 'minikube tunnel')"
  until_true 30 "an EXTERNAL-IP on crs/crane (the LoadBalancer allocator: .cluster/node/logs/lb-allocator.log)" has_external_ip
  run kubectl get crs
fi
run kubectl get service crane-http -o wide
url="http://$(external_ip):8080"

say "What the book did with curl, through the LoadBalancer address"
pod=$(pods)
until_true 30 "$pod to answer on $url" answered_by "$pod"
run curl -sS --max-time 5 "$url"

say "Delete the pod by force: the CraneReplicaSet makes a new one, and the Service sends to it"
run kubectl delete pod "$pod" --force --grace-period=0
new_pod() { [ -n "$(pods)" ] && [ "$(pods)" != "$pod" ] && ready 1; }
until_true 60 "a replacement of $pod, Ready" new_pod
run kubectl get pods -o wide -l app=crane
replacement=$(pods)
until_true 30 "$replacement to answer on $url" answered_by "$replacement"
run curl -sS --max-time 5 "$url"

say "Scale it like an RC: desired state 3, and the controller reconciles"
run kubectl scale crs crane --replicas=3
run kubectl wait --for=jsonpath='{.status.readyReplicas}'=3 crs/crane --timeout=60s
run kubectl get crs crane
run kubectl get pods -o wide -l app=crane

# kube-proxy programs the new endpoints a moment after the pods are Ready: wait until each
# pod has answered once, so that the loop below shows the Service as it now is.
reached_all() {
  local answer
  answer=$(curl -sS --max-time 3 "$url" 2>/dev/null) || return 1
  reached[${answer#"You've hit "}]=1
  [ "${#reached[@]}" -ge 3 ]
}
declare -A reached=()
until_true 30 "kube-proxy on crane-node-0 to send to each of the 3 pods" reached_all

say "Every request may go to another pod: curl until each of the 3 has answered (at most 30 requests)"
# shellcheck disable=SC2016 # the command line is printed, not run
printf '$ for i in $(seq 1 30); do curl -sS %s; done   # stopped once all 3 pods answered\n' "$url"
declare -A answered=()
for _ in $(seq 1 30); do
  answer=$(curl -sS --max-time 5 "$url") || die "curl $url: $answer"
  echo "$answer"
  answered[${answer#"You've hit "}]=1
  [ "${#answered[@]}" -lt 3 ] || break
done
[ "${#answered[@]}" -eq 3 ] || die "30 requests reached only ${#answered[@]} of the 3 pods: ${!answered[*]}"
log "answered by ${#answered[@]} different pods: ${!answered[*]}"

say "What the app logged: one line per request it answered"
run kubectl logs "$replacement"

say "What kubectl describe says"
run kubectl describe crs crane
run kubectl describe pod "$replacement"

say "Clean up: deleting the CraneReplicaSet lets the garbage collector remove its pods and Service"
run kubectl delete crs crane
run kubectl wait --for=delete pod -l app=crane --timeout=60s
trap - EXIT
cleanup
