# shellcheck shell=bash
# Usage: source tests/cluster/env.sh
#
# For scripts and shells that talk to the local cluster: KUBECONFIG defaults to
# .cluster/kubeconfig (a KUBECONFIG you set yourself is kept), the cached kubectl, helm and
# kwokctl come first on PATH (built by build.sh only when not cached yet), and KWOK_WORKDIR
# lets `kwokctl --name crane ...` find the cluster. Returns non-zero if the build fails.

crane_env_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export KUBECONFIG=${KUBECONFIG:-$crane_env_dir/.cluster/kubeconfig}
export KWOK_WORKDIR=$crane_env_dir/.cluster/kwok
crane_env_bins=$(
  # shellcheck source=SCRIPTDIR/versions.env
  . "$crane_env_dir/tests/cluster/versions.env"
  c=${CRANE_CACHE_DIR:-$HOME/.cache/crane-operator}/bin
  if [ -f "$c/kubernetes-$KUBERNETES_VERSION/.stamp" ] && [ -f "$c/helm-$HELM_VERSION/.stamp" ] &&
    [ -f "$c/kwok-$KWOK_VERSION/.stamp" ]; then
    echo "$c/kubernetes-$KUBERNETES_VERSION:$c/helm-$HELM_VERSION:$c/kwok-$KWOK_VERSION"
  else
    "$crane_env_dir/tests/cluster/build.sh" | sed -n 's/^\(KUBERNETES\|HELM\|KWOK\)_BIN=//p' | paste -sd:
  fi
)
if [ -z "$crane_env_bins" ]; then
  unset crane_env_dir crane_env_bins
  return 1
fi
case ":$PATH:" in *":$crane_env_bins:"*) ;; *) PATH=$crane_env_bins:$PATH ;; esac
unset crane_env_dir crane_env_bins
