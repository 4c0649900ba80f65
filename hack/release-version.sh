#!/usr/bin/env bash
# Usage: hack/release-version.sh TAG
# The release workflow's first check (.github/workflows/release.yml): a tag vX.Y.Z releases
# version X.Y.Z only if everything that names the version says X.Y.Z: the chart's version
# and appVersion (the image tag the chart deploys by default), its Artifact Hub image
# annotation, and Cargo.toml (the binary's build_info). The chart's image.repository must
# be ghcr.io/crane-dev/crane-operator, where the workflow pushes the image. Prints
# `version=X.Y.Z` (for $GITHUB_OUTPUT) and exits 0, or names every mismatch and exits 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ $# -eq 1 ] || { echo "usage: hack/release-version.sh TAG (e.g. v0.1.0)" >&2; exit 2; }
tag=$1
repository=ghcr.io/crane-dev/crane-operator
chart=charts/crane-operator

# field FILE KEY: a top-level `KEY: value` of a YAML file, quotes removed.
field() { sed -n "/^$2: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/{s//\1/p;q}" "$1"; }

[[ $tag =~ ^v([0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?)$ ]] ||
  { echo "release: tag $tag is not vMAJOR.MINOR.PATCH[-PRERELEASE]" >&2; exit 1; }
version=${BASH_REMATCH[1]}

problems=()
check() { [ "$2" = "$3" ] || problems+=("$1 is '$2', the tag $tag says '$3'"); }
check "$chart/Chart.yaml version" "$(field "$chart/Chart.yaml" version)" "$version"
check "$chart/Chart.yaml appVersion" "$(field "$chart/Chart.yaml" appVersion)" "$version"
check "Cargo.toml version" "$(sed -n '/^version = "\(.*\)"$/{s//\1/p;q}' Cargo.toml)" "$version"
check "$chart/values.yaml image.repository" \
  "$(sed -n '/^image:/,/^[^ ]/s/^  repository: *//p' "$chart/values.yaml")" "$repository"
grep -q "image: $repository:$version\$" "$chart/Chart.yaml" ||
  problems+=("$chart/Chart.yaml: the artifacthub.io/images annotation does not name $repository:$version")

if [ ${#problems[@]} -gt 0 ]; then
  printf 'release: %s\n' "${problems[@]}" >&2
  echo "release: bump them together (Cargo.toml, Cargo.lock, Chart.yaml), commit, and tag that commit" >&2
  exit 1
fi
echo "version=$version"
