#!/usr/bin/env bash
# Usage: hack/release-version.sh TAG
# The release workflow's first check (.github/workflows/release.yml): a tag vX.Y.Z releases
# version X.Y.Z only if everything that names the version says X.Y.Z: the chart's version
# and appVersion (the image tag the chart deploys by default), its Artifact Hub image
# annotation, and Cargo.toml (the binary's build_info); and CHANGELOG.md has a section
# "## [X.Y.Z]" (the release's notes). The chart's image.repository must be
# ghcr.io/crane-dev/crane-operator, where the workflow pushes the image. Prints
# `version=X.Y.Z` (for $GITHUB_OUTPUT) and exits 0, or names every mismatch and exits 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ $# -eq 1 ] || { echo "usage: hack/release-version.sh TAG (e.g. v0.1.0)" >&2; exit 2; }
tag=$1
repository=ghcr.io/crane-dev/crane-operator
chart=charts/crane-operator

# PyYAML for hack/field.py (Python's own tomllib reads Cargo.toml).
hack/debian-packages.sh "hack/release-version.sh" python3:python3 /usr/lib/python3/dist-packages/yaml/__init__.py:python3-yaml
# field FILE KEY...: the value there, or empty when it is not there (field.py says which).
field() { hack/field.py "$@" || true; }

[[ $tag =~ ^v([0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?)$ ]] ||
  { echo "release: tag $tag is not vMAJOR.MINOR.PATCH[-PRERELEASE]" >&2; exit 1; }
version=${BASH_REMATCH[1]}

problems=()
check() { [ "$2" = "$3" ] || problems+=("$1 is '$2', the tag $tag says '$3'"); }
check "$chart/Chart.yaml version" "$(field "$chart/Chart.yaml" version)" "$version"
check "$chart/Chart.yaml appVersion" "$(field "$chart/Chart.yaml" appVersion)" "$version"
check "Cargo.toml version" "$(field Cargo.toml package version)" "$version"
check "$chart/values.yaml image.repository" "$(field "$chart/values.yaml" image repository)" "$repository"
check "$chart/Chart.yaml annotation artifacthub.io/images" \
  "$(field "$chart/Chart.yaml" annotations artifacthub.io/images 0 image)" "$repository:$version"
hack/release-notes.sh "$version" >/dev/null 2>&1 ||
  problems+=("CHANGELOG.md has no section '## [$version]': move the Unreleased entries under it")

if [ ${#problems[@]} -gt 0 ]; then
  printf 'release: %s\n' "${problems[@]}" >&2
  echo "release: bump them together (Cargo.toml, Cargo.lock, Chart.yaml, CHANGELOG.md), commit, and tag that commit" >&2
  exit 1
fi
echo "version=$version"
