#!/usr/bin/env bash
# Usage: tests/release/test.sh                                 (make unit; no cluster)
#
# The release workflow's own scripts, on a copy of the files they read (so any version and
# changelog can be tried): hack/release-version.sh lets a tag through only when the chart,
# Cargo.toml and CHANGELOG.md all name its version, and names every mismatch;
# hack/release-notes.sh prints the version's changelog section; hack/krew-manifest.py
# fills plugins/crane.yaml with the archives' sha256s and refuses a missing archive.
# Ends with the line "N passed, M failed"; exits non-zero when anything failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case ${1:-} in
  '') ;;
  *) echo "usage: tests/release/test.sh (no arguments)" >&2; exit 2 ;;
esac
"$root/hack/debian-packages.sh" "tests/release/test.sh" python3:python3 /usr/lib/python3/dist-packages/yaml/__init__.py:python3-yaml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
copy=$work/repo
CHECK_WIDTH=70
# shellcheck source=SCRIPTDIR/../cluster/checks.sh
source "$root/tests/cluster/checks.sh"

version=$("$root/hack/field.py" "$root/Cargo.toml" package version)

# fresh_copy: the files the scripts read, with a changelog that has a section for $version.
fresh_copy() {
  rm -rf "$copy"
  mkdir -p "$copy/charts"
  cp -r "$root/hack" "$root/plugins" "$root/Cargo.toml" "$copy/"
  cp -r "$root/charts/crane-operator" "$copy/charts/"
  printf '# Changelog\n\n## [Unreleased]\n\n## [%s] - 2026-12-07\n\n### Added\n\n- Everything.\n\n## [0.0.1] - 2026-01-01\n\n- Older.\n' \
    "$version" >"$copy/CHANGELOG.md"
}

# out COMMAND...: runs COMMAND, its stdout and stderr in $work/out; its status.
out() { "$@" >"$work/out" 2>&1; }
said() { grep -qF -- "$1" "$work/out" || { why="no '$1' in: $(head -c 400 "$work/out" | tr '\n' ' ')"; return 1; }; }

version_accepted() {
  fresh_copy
  out "$copy/hack/release-version.sh" "v$version" || { why=$(head -c 400 "$work/out"); return 1; }
  [ "$(cat "$work/out")" = "version=$version" ] || { why="printed: $(cat "$work/out")"; return 1; }
}

# Quoting, a comment and another key order are YAML all the same: a parser reads them.
version_read_by_a_parser() {
  fresh_copy
  python3 - "$copy/charts/crane-operator/Chart.yaml" <<'PY'
import sys
path = sys.argv[1]
lines = open(path).read().splitlines()
app = [l for l in lines if l.startswith("appVersion:")]
rest = [l for l in lines if not l.startswith("appVersion:")]
open(path, "w").write("\n".join(app).replace('"', "'") + "   # the image tag\n" + "\n".join(rest) + "\n")
PY
  out "$copy/hack/release-version.sh" "v$version" || { why=$(head -c 400 "$work/out"); return 1; }
}

other_version_refused() {
  fresh_copy
  if out "$copy/hack/release-version.sh" v9.9.9; then why="v9.9.9 accepted"; return 1; fi
  local what
  for what in "Chart.yaml version is '$version'" "Chart.yaml appVersion" "Cargo.toml version" \
    "artifacthub.io/images" "CHANGELOG.md has no section '## [9.9.9]'"; do
    said "$what" || return 1
  done
}

missing_changelog_refused() {
  fresh_copy
  sed -i "/^## \[$version\]/d" "$copy/CHANGELOG.md"
  if out "$copy/hack/release-version.sh" "v$version"; then why="accepted without a changelog section"; return 1; fi
  said "CHANGELOG.md has no section '## [$version]'"
}

notes_are_the_section() {
  fresh_copy
  out "$copy/hack/release-notes.sh" "$version" || { why=$(head -c 400 "$work/out"); return 1; }
  said "- Everything." || return 1
  if grep -qF -- "Older" "$work/out"; then why="the next section leaked in: $(tr '\n' ' ' <"$work/out")"; return 1; fi
}

# archives DIR: one fake archive per platform, each with other bytes.
archives() {
  mkdir -p "$1"
  local p
  for p in linux_amd64 linux_arm64 darwin_amd64 darwin_arm64; do
    echo "kubectl-crane for $p" >"$1/kubectl-crane_v${version}_$p.tar.gz"
  done
}

krew_manifest_filled() {
  fresh_copy
  archives "$work/dist"
  out "$copy/hack/krew-manifest.py" "$version" "$work/dist" || { why=$(head -c 400 "$work/out"); return 1; }
  python3 - "$work/out" "$work/dist" "$version" <<'PY' 2>"$work/err" || { why=$(head -c 400 "$work/err"); return 1; }
import hashlib, sys, yaml
manifest, dist, version = sys.argv[1:]
plugin = yaml.safe_load(open(manifest))
assert plugin["kind"] == "Plugin" and plugin["metadata"]["name"] == "crane", plugin["metadata"]
assert plugin["spec"]["version"] == f"v{version}", plugin["spec"]["version"]
for p in plugin["spec"]["platforms"]:
    labels = p["selector"]["matchLabels"]
    name = f"kubectl-crane_v{version}_{labels['os']}_{labels['arch']}.tar.gz"
    want = hashlib.sha256(open(f"{dist}/{name}", "rb").read()).hexdigest()
    assert p["sha256"] == want, (labels, p["sha256"], want)
    assert p["uri"].endswith(f"/releases/download/v{version}/{name}"), p["uri"]
    assert p["bin"] == "kubectl-crane", p["bin"]
assert "$" not in open(manifest).read(), "a placeholder left"
PY
  note="4 platforms, each sha256 its archive's"
}

krew_manifest_refuses_a_missing_archive() {
  fresh_copy
  rm -rf "$work/dist"
  archives "$work/dist"
  rm "$work/dist/kubectl-crane_v${version}_darwin_arm64.tar.gz"
  if out "$copy/hack/krew-manifest.py" "$version" "$work/dist"; then why="rendered without the darwin arm64 archive"; return 1; fi
  said "kubectl-crane_v${version}_darwin_arm64.tar.gz"
}

check "release-version.sh: v$version accepted (chart, Cargo.toml, changelog agree)" version_accepted
check "release-version.sh: fields read by a parser (quotes, comment, order)" version_read_by_a_parser
check "release-version.sh: v9.9.9 refused, every mismatch named" other_version_refused
check "release-version.sh: refused without a changelog section" missing_changelog_refused
check "release-notes.sh: the version's section, nothing after it" notes_are_the_section
check "krew-manifest.py: version and each archive's sha256 filled in" krew_manifest_filled
check "krew-manifest.py: refuses a missing archive, naming it" krew_manifest_refuses_a_missing_archive
summary
