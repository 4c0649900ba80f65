#!/usr/bin/env bash
# Usage: tests/argocd/test.sh                                   (part of make unit)
# Runs docs/integrations/argocd-health.lua, the Argo CD health check, against the cases of
# tests/argocd/health_test.yaml (Argo CD's format) with Lua 5.1, whose semantics Argo CD's
# gopher-lua has; see health_test.lua. Installs Debian's lua5.1 and lua-yaml (lyaml) when
# missing. Ends with "N passed, M failed"; exits non-zero when a case failed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

case ${1:-} in
  '') ;;
  *) echo "usage: tests/argocd/test.sh (no arguments)" >&2; exit 2 ;;
esac
"$root/hack/debian-packages.sh" "tests/argocd/test.sh" lua5.1:lua5.1 /usr/share/lua/5.1/lyaml/init.lua:lua-yaml
echo "[argocd] $(lua5.1 -v 2>&1): docs/integrations/argocd-health.lua against tests/argocd/health_test.yaml"
lua5.1 "$here/health_test.lua" "$root/docs/integrations/argocd-health.lua" "$here/health_test.yaml"
