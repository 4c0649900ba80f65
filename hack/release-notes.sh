#!/usr/bin/env bash
# Usage: hack/release-notes.sh VERSION
# Prints the CHANGELOG.md section of VERSION (X.Y.Z), without its heading: the notes of the
# GitHub release (.github/workflows/release.yml). Exits 1 when CHANGELOG.md has no
# "## [VERSION]" section, or an empty one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ $# -eq 1 ] || { echo "usage: hack/release-notes.sh VERSION (e.g. 0.1.0)" >&2; exit 2; }
notes=$(awk -v heading="## [$1]" '
  index($0, heading) == 1 { inside = 1; next }
  inside && /^## \[/ { exit }
  inside && /^\[[^]]*\]: / { exit }
  inside { print }
' CHANGELOG.md)
[ -n "${notes//[[:space:]]/}" ] || { echo "release notes: CHANGELOG.md has no section '## [$1]' (or it is empty)" >&2; exit 1; }
printf '%s\n' "$notes"
