#!/usr/bin/env bash
# Usage: tests/chart/test.sh                                   (make chart; part of make test)
#
# Checks of the Helm chart charts/crane-operator and the plain manifests/:
#   - helm lint --strict with the default values and with variants (tests/chart/knobs.yaml
#     sets every availability, placement, container and network knob at once); each knob
#     renders where it belongs (tests/chart/compare.py value); values.schema.json and the
#     chart's own checks refuse bad values with a message;
#   - manifests/ equal the chart's default render (tests/chart/compare.py; objects compared
#     parsed, apart from the labels only Helm sets), and the chart's CRD equals
#     manifests/crd.yaml apart from its labels and helm.sh/resource-policy: keep;
#   - on the cluster (KUBECONFIG, else the local one: make cluster): the render, also with
#     tests/chart/knobs.yaml, passes `kubectl apply --server-side --dry-run=server`, and so
#     does a client-side `kubectl apply` of manifests/crd.yaml (as the README says); helm
#     install --wait, helm upgrade with changed values, helm uninstall, after which the CRD
#     is still there.
# The release and its namespace are both "crane-chart-test"; the namespace enforces the
# restricted Pod Security Standard, so the operator's pods must pass it. A leftover of an
# earlier run is removed first. The CRD is never deleted: the e2e tests use it.
#
# `helm test` runs for real in tests/incluster/test.sh (make incluster), where the operator
# runs from its image on the real node. Here the release's pods are on kwok's simulated
# nodes, where no container runs, so the check below only proves the hook is part of the
# release.
#
# Ends with the line "N passed, M failed"; exits non-zero when anything failed.
# Environment: CRANE_CHART_TIMEOUT  seconds for each helm --wait (default 120)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/../cluster/env.sh
source "$root/tests/cluster/env.sh"

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  '') ;;
  *) echo "usage: tests/chart/test.sh (no arguments)" >&2; exit 2 ;;
esac

# PyYAML: compare.py parses the renders without a cluster (else kubectl converts them).
"$root/hack/debian-packages.sh" "make chart" python3:python3 /usr/lib/python3/dist-packages/yaml/__init__.py:python3-yaml

chart=$root/charts/crane-operator
release=crane-chart-test
ns=crane-chart-test
crd=cranereplicasets.crane.dev
timeout=${CRANE_CHART_TIMEOUT:-120}
work=$(mktemp -d)
k() { kubectl --request-timeout=30s "$@"; }
CHECK_WIDTH=66
# shellcheck source=SCRIPTDIR/../cluster/checks.sh
source "$root/tests/cluster/checks.sh"
# shellcheck source=SCRIPTDIR/release.sh
source "$here/release.sh"
# first N FILE: the first N lines of FILE on one line, for $why.

# Never deletes the CRD: helm uninstall keeps it (helm.sh/resource-policy: keep).
cleanup() {
  local rc=$?
  set +e
  if released; then helm uninstall "$release" --namespace "$ns" --wait --timeout 60s >/dev/null 2>&1; fi
  k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1
  rm -rf "$work"
  exit "$rc"
}

# --- checks without a cluster ------------------------------------------------------------

# lint [--set K=V ...]
lint() {
  helm lint --strict "$chart" "$@" >"$work/lint" 2>&1 || { why=$(grep -E 'ERROR|WARNING|Error' "$work/lint" | head -n 3 | tr '\n' ' '); return 1; }
}

# refused PATTERN [--set K=V ...]: helm template fails, with a message matching PATTERN.
refused() {
  local pattern=$1
  shift
  if helm template "$release" "$chart" --namespace "$ns" "$@" >/dev/null 2>"$work/refused"; then
    why="helm template $* succeeded"
    return 1
  fi
  grep -qE "$pattern" "$work/refused" || { why="refused, but the message does not match /$pattern/: $(first 4 "$work/refused")"; return 1; }
  note=$(grep -E "$pattern" "$work/refused" | head -n 1 | sed 's/^ *//; s/^- //' | cut -c1-90)
}

render_default() {
  helm template crane-operator "$chart" --namespace crane-system >"$work/default.yaml" 2>"$work/err" ||
    { why=$(first 3 "$work/err"); return 1; }
}

# compare MODE FILES...: tests/chart/compare.py; its output becomes $why or $note.
compare() {
  if python3 "$here/compare.py" "$@" >"$work/compare" 2>&1; then
    note=$(tail -n 1 "$work/compare")
  else
    why="$(wc -l <"$work/compare") differences: $(first 6 "$work/compare")"
    return 1
  fi
}

# render [--set K=V ...]: helm template of the release, into $work/render.yaml.
render() {
  helm template "$release" "$chart" --namespace "$ns" "$@" >"$work/render.yaml" 2>"$work/err" ||
    { why=$(first 3 "$work/err"); return 1; }
}

# renders KIND PATH JSON [--set K=V ...]: the render with these values has one KIND, whose
# value at PATH (dots, [N] for list items) equals JSON (tests/chart/compare.py value).
renders() {
  local kind=$1 path=$2 want=$3
  shift 3
  render "$@" || return 1
  compare value "$work/render.yaml" "$kind" "$path" "$want"
}

servicemonitor_rendered() {
  helm template "$release" "$chart" --namespace "$ns" --set serviceMonitor.enabled=true \
    --api-versions monitoring.coreos.com/v1/ServiceMonitor --show-only templates/servicemonitor.yaml >"$work/sm" 2>&1 ||
    { why=$(first 3 "$work/sm"); return 1; }
  grep -q '^kind: ServiceMonitor' "$work/sm" || { why="no ServiceMonitor rendered"; return 1; }
  # And none without the monitoring API (helm template's default capabilities). Rendered to
  # a file, then searched: under pipefail `helm template | grep -q` is false when grep stops
  # at its match and helm dies of SIGPIPE, which would read as "not rendered".
  render --set serviceMonitor.enabled=true || return 1
  if grep -q '^kind: ServiceMonitor' "$work/render.yaml"; then
    why="a ServiceMonitor is rendered although the cluster does not serve monitoring.coreos.com/v1"
    return 1
  fi
}

prometheusrule_rendered() {
  helm template "$release" "$chart" --namespace "$ns" --set prometheusRule.enabled=true --set prometheusRule.labels.release=kube-prometheus \
    --api-versions monitoring.coreos.com/v1/PrometheusRule --show-only templates/prometheusrule.yaml >"$work/pr" 2>&1 ||
    { why=$(first 3 "$work/pr"); return 1; }
  grep -q '^kind: PrometheusRule' "$work/pr" || { why="no PrometheusRule rendered"; return 1; }
  grep -q '^    release: kube-prometheus' "$work/pr" || { why="prometheusRule.labels not rendered"; return 1; }
  local want have
  want=$(grep -c -- '- alert:' "$chart/files/alerts.yaml")
  have=$(grep -c -- '- alert:' "$work/pr")
  [ "$want" = "$have" ] || { why="$have alerts rendered, files/alerts.yaml has $want"; return 1; }
  note="$have alerts"
  render --set prometheusRule.enabled=true || return 1
  if grep -q '^kind: PrometheusRule' "$work/render.yaml"; then
    why="a PrometheusRule is rendered although the cluster does not serve monitoring.coreos.com/v1"
    return 1
  fi
}

dashboard_rendered() {
  helm template "$release" "$chart" --namespace "$ns" --set dashboards.enabled=true \
    --show-only templates/dashboard.yaml >"$work/dash" 2>&1 || { why=$(first 3 "$work/dash"); return 1; }
  grep -q '^    grafana_dashboard: "1"' "$work/dash" || { why="no grafana_dashboard label: $(first 12 "$work/dash")"; return 1; }
  # The ConfigMap's data (the block scalar, its last key) is the dashboard, unchanged.
  sed -n '/^  crane-operator.json: |-$/,$p' "$work/dash" | tail -n +2 | sed 's/^    //' >"$work/dash.json"
  python3 -c 'import json, sys; assert json.load(open(sys.argv[1])) == json.load(open(sys.argv[2]))' \
    "$work/dash.json" "$chart/files/dashboard.json" 2>"$work/err" ||
    { why="the ConfigMap does not hold files/dashboard.json: $(tail -n 1 "$work/err")"; return 1; }
  render || return 1
  if grep -q 'grafana_dashboard' "$work/render.yaml"; then
    why="a dashboard ConfigMap is rendered with dashboards.enabled=false"
    return 1
  fi
}

# labelled LABEL VALUE [--set K=V ...]: every object of the render, and every pod template,
# carries LABEL=VALUE, and no selector uses it (tests/chart/compare.py labelled).
labelled() {
  local label=$1 value=$2
  shift 2
  render "$@" || return 1
  compare labelled "$work/render.yaml" "$label" "$value"
}

# no_cluster_roles [--set K=V ...]: the render has no ClusterRole at all.
no_cluster_roles() {
  render "$@" || return 1
  ! grep -q '^kind: ClusterRole$' "$work/render.yaml" || { why="ClusterRoles: $(grep -A2 '^kind: ClusterRole$' "$work/render.yaml" | grep name: | tr '\n' ' ')"; return 1; }
}

# leases_apart: two releases in one namespace (each watching its own, say) compete for
# two Leases, and each release's Role grants exactly the Lease its operator is told.
leases_apart() {
  local r lease out leases=()
  for r in one two; do
    helm template "$r" "$chart" --namespace "$ns" >"$work/$r.yaml" 2>"$work/err" || { why=$(first 3 "$work/err"); return 1; }
    lease=$(grep -o -- '--leader-elect-lease-name=.*' "$work/$r.yaml" | cut -d= -f2)
    out=$(python3 "$here/compare.py" value "$work/$r.yaml" "Role/$r-crane-operator-leader-election" 'rules[1].resourceNames' "[\"$lease\"]" 2>&1) ||
      { why="release $r, told the Lease '$lease': $out"; return 1; }
    leases+=("$lease")
  done
  [ "${leases[0]}" != "${leases[1]}" ] || { why="both releases are told the Lease '${leases[0]}'"; return 1; }
  note="${leases[*]}"
}

# --- checks on the cluster ---------------------------------------------------------------

reachable() {
  k get --raw /readyz >/dev/null 2>&1 && return
  why="no API server answers (KUBECONFIG=$KUBECONFIG): start it with 'make cluster'"
  return 1
}


# dry_run [--set K=V ...]: the render, applied with --dry-run=server (admission included).
dry_run() {
  render "$@" || return 1
  k apply --server-side --dry-run=server -f "$work/render.yaml" >"$work/out" 2>&1 ||
    { why=$(first 6 "$work/out"); return 1; }
  # PSA warnings (restricted) are not failures of kubectl apply: make them failures.
  ! grep -qi 'warning' "$work/out" || { why=$(grep -i warning "$work/out" | head -n 3 | tr '\n' ' '); return 1; }
  note="$(grep -c . "$work/out") objects"
}

# The README says plain (client-side) `kubectl apply` installs the CRD: its copy in the
# last-applied-configuration annotation fits the API server's 256 KiB for annotations.
crd_client_side_apply() {
  k apply --dry-run=server -f "$root/manifests/crd.yaml" -o json >"$work/crd.json" 2>"$work/err" ||
    { why=$(first 4 "$work/err"); return 1; }
  local size
  size=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]))' \
    "$work/crd.json" 2>"$work/err") || { why="no last-applied-configuration in the answer: $(first 2 "$work/err")"; return 1; }
  note="its last-applied copy: $((size / 1024)) KiB of 256"
}

deployment_available() {
  local want=$1 st
  st=$(k -n "$ns" get deployment "$release-crane-operator" -o jsonpath='{.status.observedGeneration}={.metadata.generation} {.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas} {.status.conditions[?(@.type=="Available")].status}' 2>/dev/null) || return 1
  [[ $st =~ ^([0-9]+)=([0-9]+)\ $want/$want/$want\ True$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]
}
deployment_state() {
  k -n "$ns" get deployment "$release-crane-operator" -o jsonpath='generation {.metadata.generation}, observed {.status.observedGeneration}, updated/ready/available {.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas}, Available={.status.conditions[?(@.type=="Available")].status}' 2>&1
}

install() {
  # --take-ownership: the e2e harness applies the CRD itself (field manager crane-e2e, no
  # Helm ownership metadata), and Helm refuses to adopt such an object without it
  # ("invalid ownership metadata"). Adopting it changes nothing in its spec (the same
  # generated CRD), and helm.sh/resource-policy: keep makes uninstall leave it.
  # The operator's pods go to the simulated nodes, which make them Ready without running
  # them (the image is not on the local node): tolerate their taint and ask for one.
  helm install "$release" "$chart" --namespace "$ns" --take-ownership \
    --set-json 'tolerations=[{"key":"kwok.x-k8s.io/node","operator":"Equal","value":"fake","effect":"NoSchedule"}]' \
    --set nodeSelector.type=kwok \
    --wait --timeout "${timeout}s" >"$work/out" 2>&1 ||
    { why=$(first 6 "$work/out"); return 1; }
  deployed 1
}

# deployed REVISION: helm status says the release is deployed at REVISION.
deployed() {
  local st
  st=$(helm status "$release" --namespace "$ns" | sed -n 's/^\(STATUS\|REVISION\): //p' | paste -sd' ')
  [ "$st" = "deployed $1" ] || { why="helm status: '$st', expected 'deployed $1'"; return 1; }
}

available() {
  poll 30 deployment_available "$1" || { why=$(deployment_state); return 1; }
  note=$(deployment_state | sed 's/.*updated/updated/')
}

crd_owned_by_release() {
  local owner
  owner=$(k get crd "$crd" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}/{.metadata.annotations.helm\.sh/resource-policy}')
  [ "$owner" = "$release/keep" ] || { why="CRD annotations release-name/resource-policy: '$owner'"; return 1; }
}

test_hook_registered() {
  helm get hooks "$release" --namespace "$ns" >"$work/hooks" 2>&1 || { why=$(first 3 "$work/hooks"); return 1; }
  { grep -q "name: $release-crane-operator-test-readyz" "$work/hooks" && grep -q 'helm.sh/hook: test' "$work/hooks"; } ||
    { why="no test hook pod in: $(first 8 "$work/hooks")"; return 1; }
  note="helm test itself runs in make incluster"
}

upgrade() {
  helm upgrade "$release" "$chart" --namespace "$ns" --reuse-values \
    --set logFormat=text --set replicaCount=2 --wait --timeout "${timeout}s" >"$work/out" 2>&1 ||
    { why=$(first 6 "$work/out"); return 1; }
  deployed 2
}

upgraded_args() {
  local args
  args=$(k -n "$ns" get deployment "$release-crane-operator" -o jsonpath='{.spec.replicas} {.spec.template.spec.containers[0].args}')
  [[ $args == "2 "*'"--log-format=text"'* ]] || { why="replicas and args: $args"; return 1; }
  k -n "$ns" rollout status deployment "$release-crane-operator" --timeout "${timeout}s" >"$work/out" 2>&1 ||
    { why=$(first 3 "$work/out"); return 1; }
  note=$(tail -n 1 "$work/out")
}

uninstall() {
  helm uninstall "$release" --namespace "$ns" --wait --timeout "${timeout}s" >"$work/out" 2>&1 ||
    { why=$(first 6 "$work/out"); return 1; }
  { grep -q "kept due to the resource policy" "$work/out" && grep -q "$crd" "$work/out"; } ||
    { why="helm did not say it kept the CRD: $(first 6 "$work/out")"; return 1; }
}

left_over() {
  {
    k -n "$ns" get deployment,service,serviceaccount,role,rolebinding,pod -l "app.kubernetes.io/instance=$release" -o name
    k get clusterrole,clusterrolebinding -l "app.kubernetes.io/instance=$release" -o name
  } 2>/dev/null
}
nothing_left() { [ -z "$(left_over)" ]; }
release_objects_gone() {
  poll "$timeout" nothing_left || { why="left: $(left_over | tr '\n' ' ')"; return 1; }
}

crd_kept() {
  local established
  established=$(k get crd "$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>&1) ||
    { why="the CRD is gone: $established"; return 1; }
  [ "$established" = True ] || { why="the CRD is not Established: $established"; return 1; }
  # Leave it as the e2e harness made it (manifests/crd.yaml has no labels): without the
  # chart's labels and Helm's ownership metadata, so that nothing points at a release that
  # is gone and a later `helm install` of another release needs no --take-ownership.
  {
    k label crd "$crd" helm.sh/chart- app.kubernetes.io/managed-by- app.kubernetes.io/name- \
      app.kubernetes.io/instance- app.kubernetes.io/version- >/dev/null &&
      k annotate crd "$crd" meta.helm.sh/release-name- meta.helm.sh/release-namespace- \
        helm.sh/resource-policy- >/dev/null
  } ||
    { why="cannot remove the chart's labels and Helm's ownership metadata from the CRD"; return 1; }
}

namespace_deleted() {
  k delete namespace "$ns" --wait=false >/dev/null || { why="cannot delete namespace $ns"; return 1; }
  poll "$timeout" namespace_gone || { why="namespace $ns is still there after ${timeout} s"; return 1; }
}

# --- run ---------------------------------------------------------------------------------
echo "chart tests: $chart (helm $(helm version --template '{{.Version}}'), KUBECONFIG=$KUBECONFIG)"
trap 'rm -rf "$work"' EXIT
check "helm lint --strict: defaults" lint
check "helm lint --strict: watchNamespace=crane-watched" lint --set watchNamespace=crane-watched
check "helm lint --strict: leaderElection.enabled=false" lint --set leaderElection.enabled=false
check "helm lint --strict: rbac.create=false, serviceAccount.create=false" lint --set rbac.create=false --set serviceAccount.create=false
check "helm lint --strict: serviceMonitor.enabled=true" lint --set serviceMonitor.enabled=true
check "helm lint --strict: replicaCount=2, crds.enabled=false, logFormat=text" lint --set replicaCount=2 --set crds.enabled=false --set logFormat=text
check "helm lint --strict: dashboards.enabled=true, prometheusRule.enabled=true" lint --set dashboards.enabled=true --set prometheusRule.enabled=true
check "helm lint --strict: every knob of tests/chart/knobs.yaml" lint -f "$here/knobs.yaml"
check "ServiceMonitor rendered only where monitoring.coreos.com/v1 is served" servicemonitor_rendered
check "PrometheusRule rendered only where monitoring.coreos.com/v1 is served, with the alerts" prometheusrule_rendered
check "dashboard ConfigMap rendered with the sidecar's label and the dashboard" dashboard_rendered
sm_always='--set serviceMonitor.enabled=true --set serviceMonitor.renderMode=alwaysRender'
pr_always='--set prometheusRule.enabled=true --set prometheusRule.renderMode=alwaysRender'
# shellcheck disable=SC2086 # the two words of each pair of --set
check "serviceMonitor.renderMode=alwaysRender: rendered without the monitoring API" renders ServiceMonitor 'spec.endpoints[0].port' '"http-metrics"' $sm_always
check "serviceMonitor.renderMode=failIfMissing: refused without the monitoring API" refused "does not serve monitoring.coreos.com/v1 ServiceMonitor.*failIfMissing" \
  --set serviceMonitor.enabled=true --set serviceMonitor.renderMode=failIfMissing
check "serviceMonitor.renderMode=failIfMissing: rendered where the API is served" renders ServiceMonitor 'spec.endpoints[0].port' '"http-metrics"' \
  --set serviceMonitor.enabled=true --set serviceMonitor.renderMode=failIfMissing --api-versions monitoring.coreos.com/v1/ServiceMonitor
# shellcheck disable=SC2086
check "prometheusRule.renderMode=alwaysRender: rendered without the monitoring API" renders PrometheusRule 'spec.groups[0].rules[0].alert' \
  "\"$(hack/field.py "$chart/files/alerts.yaml" groups 0 rules 0 alert)\"" $pr_always
check "prometheusRule.renderMode=failIfMissing: refused without the monitoring API" refused "does not serve monitoring.coreos.com/v1 PrometheusRule.*failIfMissing" \
  --set prometheusRule.enabled=true --set prometheusRule.renderMode=failIfMissing
check "schema refuses serviceMonitor.renderMode=sometimes" refused "serviceMonitor/renderMode.*must be one of" --set serviceMonitor.renderMode=sometimes
# shellcheck disable=SC2086
check "commonLabels: on every object and pod template, in no selector" labelled team platform --set commonLabels.team=platform \
  --set podDisruptionBudget.enabled=true --set networkPolicy.enabled=true --set dashboards.enabled=true $sm_always $pr_always
check "commonLabels: with watchNamespace (Role) too" labelled team platform --set commonLabels.team=platform --set watchNamespace=crane-watched
check "chart refuses commonLabels that repeat its own (app.kubernetes.io/name)" refused "commonLabels.app.kubernetes.io/name: the chart sets" \
  --set 'commonLabels.app\.kubernetes\.io/name=other'
check "schema refuses a commonLabels value that is not a string" refused "commonLabels/team.*string" --set-json 'commonLabels={"team":1}'
check "extraObjects: a mapping, through tpl" renders ConfigMap metadata.name "\"$release-extra\"" \
  --set-json 'extraObjects=[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"{{ .Release.Name }}-extra"}}]'
check "extraObjects: a string, through tpl" renders ConfigMap data.namespace "\"$ns\"" \
  --set-json 'extraObjects=["apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata:\n  namespace: {{ .Release.Namespace }}\n"]'
check "schema refuses an extraObjects item without a kind" refused "extraObjects/0" --set-json 'extraObjects=[{"apiVersion":"v1"}]'
check "enableServiceLinks: false on the operator pods" renders Deployment spec.template.spec.enableServiceLinks false
check "enableServiceLinks: true on the helm test pod (it reads the Service's address)" renders Pod spec.enableServiceLinks true
check "the Lease is named after the release, and the Role grants that one" renders Role "rules[1].resourceNames" "[\"$release-crane-operator-leader\"]"
check "the operator is told the release's Lease" renders Deployment 'spec.template.spec.containers[0].args[4]' "\"--leader-elect-lease-name=$release-crane-operator-leader\""
check "two releases in one namespace: two Leases" leases_apart
check "leaderElection.leaseName: an old Lease kept for an upgrade" renders Role "rules[1].resourceNames" '["crane-operator-leader"]' \
  --set leaderElection.leaseName=crane-operator-leader
check "schema refuses leaderElection.leaseName=Not_A_Name" refused "leaderElection/leaseName.*pattern" --set leaderElection.leaseName=Not_A_Name
view=$release-crane-operator-view
edit=$release-crane-operator-edit
aggregate='metadata.labels["rbac.authorization.k8s.io/aggregate-to-'
check "aggregated ClusterRole $view: get, list, watch, status and scale included" renders "ClusterRole/$view" rules \
  '[{"apiGroups":["crane.dev"],"resources":["cranereplicasets","cranereplicasets/status","cranereplicasets/scale"],"verbs":["get","list","watch"]}]'
check "aggregated ClusterRole $view: taken in by view" renders "ClusterRole/$view" "${aggregate}view\"]" '"true"'
check "aggregated ClusterRole $edit: writes, scale update and patch" renders "ClusterRole/$edit" rules \
  '[{"apiGroups":["crane.dev"],"resources":["cranereplicasets"],"verbs":["create","update","patch","delete","deletecollection"]},{"apiGroups":["crane.dev"],"resources":["cranereplicasets/scale"],"verbs":["update","patch"]}]'
check "aggregated ClusterRole $edit: taken in by edit" renders "ClusterRole/$edit" "${aggregate}edit\"]" '"true"'
check "aggregated ClusterRole $edit: taken in by admin" renders "ClusterRole/$edit" "${aggregate}admin\"]" '"true"'
check "aggregated ClusterRole $edit: not by view" renders "ClusterRole/$edit" "${aggregate}view\"]" null
check "rbac.aggregateToDefaultRoles=false: only the operator's ClusterRole" renders ClusterRole metadata.name "\"$release-crane-operator\"" \
  --set rbac.aggregateToDefaultRoles=false
check "rbac.create=false: no ClusterRole at all" no_cluster_roles --set rbac.create=false
check "schema refuses rbac.aggregateToDefaultRoles=yes" refused "aggregateToDefaultRoles.*boolean" --set-string rbac.aggregateToDefaultRoles=yes
digest=sha256:$(printf '%064d' 1)
check "image.digest: the operator runs repository@digest" renders Deployment 'spec.template.spec.containers[0].image' "\"ghcr.io/crane-dev/crane-operator@$digest\"" --set image.digest="$digest"
check "image.digest: so does the helm test pod" renders Pod 'spec.containers[0].image' "\"ghcr.io/crane-dev/crane-operator@$digest\"" --set image.digest="$digest"
check "schema refuses image.digest=latest" refused "image/digest.*(pattern|match)" --set image.digest=latest
zone_spread='{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway"}'
zone_spread_own='{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"app.kubernetes.io/instance":"'"$release"'"}}}'
check "strategy: passed to the Deployment" renders Deployment spec.strategy '{"type":"Recreate"}' --set strategy.type=Recreate
check "revisionHistoryLimit: on the Deployment" renders Deployment spec.revisionHistoryLimit 3 --set revisionHistoryLimit=3
check "priorityClassName: on the pods" renders Deployment spec.template.spec.priorityClassName '"system-cluster-critical"' --set priorityClassName=system-cluster-critical
check "topologySpreadConstraints: on the pods, labelSelector defaulted" renders Deployment 'spec.template.spec.topologySpreadConstraints[0].labelSelector' \
  '{"matchLabels":{"app.kubernetes.io/name":"crane-operator","app.kubernetes.io/instance":"'"$release"'"}}' --set-json "topologySpreadConstraints=[$zone_spread]"
check "topologySpreadConstraints: a labelSelector given is kept" renders Deployment spec.template.spec.topologySpreadConstraints \
  "[$zone_spread_own]" --set-json "topologySpreadConstraints=[$zone_spread_own]"
check "schema refuses strategy.type=Blue" refused "strategy/type.*must be one of" --set strategy.type=Blue
check "schema refuses revisionHistoryLimit=-1" refused "revisionHistoryLimit.*(minimum|>=)" --set revisionHistoryLimit=-1
check "schema refuses priorityClassName=Not_A_Name" refused "priorityClassName.*pattern" --set priorityClassName=Not_A_Name
check "schema refuses a topologySpreadConstraint without topologyKey" refused "topologySpreadConstraints/0.*topologyKey" \
  --set-json 'topologySpreadConstraints=[{"maxSkew":1,"whenUnsatisfiable":"DoNotSchedule"}]'
volume='{"name":"scratch","emptyDir":{"sizeLimit":"16Mi"}}'
mount='{"name":"scratch","mountPath":"/scratch"}'
env_var='{"name":"RUST_BACKTRACE","value":"1"}'
check "extraArgs: after the chart's own" renders Deployment 'spec.template.spec.containers[0].args' \
  "[\"run\", \"--metrics-addr=0.0.0.0:8080\", \"--log-format=json\", \"--leader-elect\", \"--leader-elect-lease-name=$release-crane-operator-leader\", \"--x=1\"]" \
  --set 'extraArgs[0]=--x=1'
check "extraEnv: after the chart's own" renders Deployment 'spec.template.spec.containers[0].env[-1]' "$env_var" --set-json "extraEnv=[$env_var]"
check "extraVolumes: on the pods" renders Deployment spec.template.spec.volumes "[$volume]" --set-json "extraVolumes=[$volume]"
check "extraVolumeMounts: on the container" renders Deployment 'spec.template.spec.containers[0].volumeMounts' "[$mount]" --set-json "extraVolumeMounts=[$mount]"
check "schema refuses extraArgs that are not strings" refused "extraArgs/0.*want string" --set-json 'extraArgs=[1]'
check "schema refuses an extraEnv item without a name" refused "extraEnv/0.*name" --set-json 'extraEnv=[{"value":"x"}]'
check "schema refuses an extraVolume with no known source" refused "extraVolumes/0" --set-json 'extraVolumes=[{"name":"x","emptyDirr":{}}]'
check "schema refuses an extraVolumeMount without mountPath" refused "extraVolumeMounts/0.*mountPath" --set-json 'extraVolumeMounts=[{"name":"x"}]'
startup='{"httpGet":{"path":"/healthz","port":"http-metrics"},"periodSeconds":2,"failureThreshold":30}'
check "livenessProbe: overrides merge into the default" renders Deployment 'spec.template.spec.containers[0].livenessProbe' \
  '{"httpGet":{"path":"/healthz","port":"http-metrics"},"initialDelaySeconds":5,"periodSeconds":20,"failureThreshold":3}' --set livenessProbe.periodSeconds=20
check "readinessProbe: null leaves it out" renders Deployment 'spec.template.spec.containers[0].readinessProbe' null --set readinessProbe=null
check "startupProbe: on the container" renders Deployment 'spec.template.spec.containers[0].startupProbe' "$startup" --set-json "startupProbe=$startup"
check "schema refuses an unknown probe field (livenessProbe.initialDelay)" refused "livenessProbe.*initialDelay" --set livenessProbe.initialDelay=3
check "schema refuses two probe handlers (readinessProbe.tcpSocket)" refused "readinessProbe.*oneOf" --set readinessProbe.tcpSocket.port=8080
check "schema refuses startupProbe.periodSeconds=0" refused "startupProbe/periodSeconds.*minimum" --set-json "startupProbe=$startup" --set startupProbe.periodSeconds=0
check "metrics.bindAddress: IPv4 by default" renders Deployment 'spec.template.spec.containers[0].args[1]' '"--metrics-addr=0.0.0.0:8080"'
check "metrics.bindAddress=:: listens on IPv6 (and IPv4 on a dual-stack pod)" renders Deployment 'spec.template.spec.containers[0].args[1]' '"--metrics-addr=[::]:8080"' --set metrics.bindAddress=::
check "schema refuses metrics.bindAddress=localhost" refused "metrics/bindAddress.*must be one of" --set metrics.bindAddress=localhost
check "serviceAccount.automount=false: on the ServiceAccount" renders ServiceAccount automountServiceAccountToken false --set serviceAccount.automount=false
check "serviceAccount.automount=false: the operator pods still mount their token" renders Deployment spec.template.spec.automountServiceAccountToken true --set serviceAccount.automount=false
check "schema refuses serviceAccount.automount=yes" refused "serviceAccount/automount.*boolean" --set-string serviceAccount.automount=yes
check "podDisruptionBudget: maxUnavailable 1 by default, selecting the operator pods" renders PodDisruptionBudget spec \
  '{"maxUnavailable":1,"selector":{"matchLabels":{"app.kubernetes.io/name":"crane-operator","app.kubernetes.io/instance":"'"$release"'"}}}' \
  --set podDisruptionBudget.enabled=true
check "podDisruptionBudget.minAvailable=0: rendered as 0" renders PodDisruptionBudget spec.minAvailable 0 \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=0
check "podDisruptionBudget.maxUnavailable=50%: rendered" renders PodDisruptionBudget spec.maxUnavailable '"50%"' \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.maxUnavailable=50%
check "chart refuses podDisruptionBudget with minAvailable and maxUnavailable" refused "set minAvailable or maxUnavailable, not both" \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=1 --set podDisruptionBudget.maxUnavailable=1
check "schema refuses podDisruptionBudget.minAvailable=half" refused "podDisruptionBudget/minAvailable" --set podDisruptionBudget.minAvailable=half
check "schema refuses podDisruptionBudget.enabled=yes" refused "podDisruptionBudget/enabled.*boolean" --set-string podDisruptionBudget.enabled=yes
monitoring='{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}'
proxy='{"ports":[{"port":3128,"protocol":"TCP"}],"to":[{"ipBlock":{"cidr":"10.1.0.0/16"}}]}'
check "networkPolicy: selects the operator pods" renders NetworkPolicy spec.podSelector \
  '{"matchLabels":{"app.kubernetes.io/name":"crane-operator","app.kubernetes.io/instance":"'"$release"'"}}' --set networkPolicy.enabled=true
check "networkPolicy: ingress to the metrics port from anywhere by default" renders NetworkPolicy spec.ingress \
  '[{"ports":[{"port":8080,"protocol":"TCP"}]}]' --set networkPolicy.enabled=true
check "networkPolicy: egress to the API server (443, 6443) and DNS by default" renders NetworkPolicy spec.egress \
  '[{"ports":[{"port":443,"protocol":"TCP"},{"port":6443,"protocol":"TCP"}]},{"ports":[{"port":53,"protocol":"UDP"},{"port":53,"protocol":"TCP"}]}]' \
  --set networkPolicy.enabled=true
check "networkPolicy.apiServer: ports and cidrs" renders NetworkPolicy 'spec.egress[0]' \
  '{"ports":[{"port":16443,"protocol":"TCP"}],"to":[{"ipBlock":{"cidr":"10.0.0.1/32"}}]}' \
  --set networkPolicy.enabled=true --set-json 'networkPolicy.apiServer.ports=[16443]' --set-json 'networkPolicy.apiServer.cidrs=["10.0.0.1/32"]'
check "networkPolicy.metrics.from: the peers, and the helm test pod" renders NetworkPolicy 'spec.ingress[0].from' \
  "[$monitoring,"'{"podSelector":{"matchLabels":{"app.kubernetes.io/instance":"'"$release"'","app.kubernetes.io/component":"helm-test"}}}]' \
  --set networkPolicy.enabled=true --set-json "networkPolicy.metrics.from=[$monitoring]"
check "networkPolicy.extraEgress: after the chart's rules" renders NetworkPolicy 'spec.egress[-1]' "$proxy" \
  --set networkPolicy.enabled=true --set-json "networkPolicy.extraEgress=[$proxy]"
check "schema refuses networkPolicy.enabled=yes" refused "networkPolicy/enabled.*boolean" --set-string networkPolicy.enabled=yes
check "schema refuses networkPolicy.apiServer.cidrs=[kubernetes]" refused "networkPolicy/apiServer/cidrs/0.*pattern" --set-json 'networkPolicy.apiServer.cidrs=["kubernetes"]'
check "schema refuses networkPolicy.apiServer.ports=[]" refused "networkPolicy/apiServer/ports.*minItems" --set-json 'networkPolicy.apiServer.ports=[]'
check "schema refuses an unknown networkPolicy.metrics.from peer field" refused "networkPolicy/metrics/from/0.*namespace" \
  --set-json 'networkPolicy.metrics.from=[{"namespace":"monitoring"}]'
check "schema refuses an extraEgress port with protocol HTTP" refused "networkPolicy/extraEgress/0/ports/0/protocol" \
  --set-json 'networkPolicy.extraEgress=[{"ports":[{"port":3128,"protocol":"HTTP"}]}]'
check "schema refuses dashboards.enabled=yes" refused "dashboards.enabled.*boolean|boolean.*dashboards" --set-string dashboards.enabled=yes
check "schema refuses an unknown prometheusRule value (prometheusRule.rules)" refused "additional ?propert.*rules|rules.*not allowed" --set prometheusRule.rules=x
check "schema refuses replicaCount=abc" refused "replicaCount.*(integer|string)" --set replicaCount=abc
check "schema refuses logFormat=xml" refused "logFormat" --set logFormat=xml
check "schema refuses an unknown value (replicas=3)" refused "additional ?propert.*replicas|replicas.*not allowed" --set replicas=3
check "chart refuses replicaCount=2 without leader election" refused "needs leaderElection.enabled" --set replicaCount=2 --set leaderElection.enabled=false
check "helm template: default render (crane-operator in crane-system)" render_default
check "manifests/ equal the chart's default render" compare manifests "$work/default.yaml" "$root"/manifests/*.yaml
check "the chart's CRD equals manifests/crd.yaml, with resource-policy keep" compare crd "$work/default.yaml" "$root/manifests/crd.yaml"

check "API server reachable" reachable
if [ "${#failures[@]}" -gt 0 ]; then summary; fi
trap cleanup EXIT
check "fresh namespace $ns (restricted Pod Security)" fresh_namespace
check "server dry-run of the render: defaults (ClusterRole)" dry_run
check "server dry-run of the render: watchNamespace=$ns (Role)" dry_run --set watchNamespace="$ns"
check "server dry-run of the render: every knob of tests/chart/knobs.yaml" dry_run -f "$here/knobs.yaml"
check "server dry-run of the render: replicaCount=2, rbac.create=false" dry_run --set replicaCount=2 --set rbac.create=false --set serviceAccount.create=false
check "client-side kubectl apply of manifests/crd.yaml (server dry run)" crd_client_side_apply
check "helm install --wait --take-ownership" install
check "Deployment available (1 replica)" available 1
check "the release owns the CRD, with resource-policy keep" crd_owned_by_release
check "helm test hook is part of the release" test_hook_registered
check "helm upgrade --set logFormat=text,replicaCount=2 --wait" upgrade
check "Deployment rolled out with 2 replicas and --log-format=text" upgraded_args
check "Deployment available (2 replicas)" available 2
check "helm uninstall --wait, keeping the CRD" uninstall
check "the release's objects are gone (namespaced and cluster-wide)" release_objects_gone
check "the CRD is still there and Established" crd_kept
check "namespace $ns deleted" namespace_deleted
summary
