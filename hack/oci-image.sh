#!/usr/bin/env bash
# Usage: hack/oci-image.sh --name REF --out FILE.tar --add SRC:DEST[:MODE]... [--dir DEST[:MODE]]...
#          [--user UID:GID] [--entrypoint ARG]... [--cmd ARG]... [--env K=V]... [--port N[/PROTO]]...
#          [--label K=V]... [--workdir DIR]
#
# Builds a one-layer image FROM scratch, without a Docker engine or a registry, and writes it
# as an OCI image-layout tarball (oci-layout, index.json, blobs/) that
# `ctr -n k8s.io images import FILE.tar` and `skopeo inspect oci-archive:FILE.tar` read.
# index.json names the image twice, as containerd and the OCI spec want it:
# `io.containerd.image.name: REF` (ctr import uses it as the image name) and
# `org.opencontainers.image.ref.name: TAG`.
#
#   --name REF              full reference, e.g. localhost/crane-app:dev (required)
#   --out FILE.tar          the archive to write (required; replaced atomically)
#   --add SRC:DEST[:MODE]   copy file or directory SRC to DEST in the image (owner 0:0;
#                           MODE in octal, default: 0755 for executables, else 0644)
#   --dir DEST[:MODE]       an empty directory in the image (default mode 0755), e.g. /tmp:1777
#   --user, --workdir       the config's User and WorkingDir
#   --entrypoint ARG        one word of the Entrypoint (repeat for more words); same for --cmd
#   --env K=V, --label K=V, --port N[/tcp|/udp]   repeatable
#
# Deterministic: every file, the layer and the config carry SOURCE_DATE_EPOCH (default: the
# time of the last git commit, else 0), so the same inputs give the same digests.
# The work is done by umoci (Debian package `umoci`, installed with apt-get when missing)
# and GNU tar; umoci's `insert` is not used: 0.4.7 writes layers without the tar trailer
# (opencontainers/umoci#436), whereas `repack` writes valid ones.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
  exit 2
}
die() { echo "oci-image: $*" >&2; exit 1; }
log() { echo "[oci-image] $*"; }

name="" out="" user="" workdir=""
adds=() dirs=() entrypoint=() cmd=() envs=() ports=() labels=()
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage ;;
    --name | --out | --add | --dir | --user | --workdir | --entrypoint | --cmd | --env | --port | --label)
      [ $# -ge 2 ] || { echo "oci-image: $1 needs a value" >&2; usage; } ;;
    *) echo "oci-image: unknown argument $1" >&2; usage ;;
  esac
  case $1 in
    --name) name=$2 ;;
    --out) out=$2 ;;
    --add) adds+=("$2") ;;
    --dir) dirs+=("$2") ;;
    --user) user=$2 ;;
    --workdir) workdir=$2 ;;
    --entrypoint) entrypoint+=("$2") ;;
    --cmd) cmd+=("$2") ;;
    --env) envs+=("$2") ;;
    --port) ports+=("$2") ;;
    --label) labels+=("$2") ;;
  esac
  shift 2
done
{ [ -n "$name" ] && [ -n "$out" ]; } || usage
[ ${#adds[@]} -gt 0 ] || [ ${#dirs[@]} -gt 0 ] || die "nothing to put in the image: give --add or --dir"

# REF = [host[:port]/]path[:tag] as in the distribution reference grammar (no @digest);
# the tag defaults to latest.
component='[a-z0-9]+([._-]+[a-z0-9]+)*'
[[ $name =~ ^([a-z0-9.-]+(:[0-9]+)?/)?$component(/$component)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$ ]] \
  || die "--name must be [HOST/]REPOSITORY[:TAG] in lower case, got $name"
last=${name##*/}
if [[ $last == *:* ]]; then tag=${last##*:}; else tag=latest; name="$name:latest"; fi

"$(dirname "${BASH_SOURCE[0]}")/debian-packages.sh" "hack/oci-image.sh" umoci:umoci jq:jq ||
  die "umoci and jq are needed (see above)"
grep -q 'GNU tar' <<<"$(tar --version 2>/dev/null)" || die "GNU tar is needed"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$(dirname "${BASH_SOURCE[0]}")" log -1 --format=%ct 2>/dev/null || echo 0)
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, got $SOURCE_DATE_EPOCH"
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.oci-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
layout=$work/layout bundle=$work/bundle rootfs=$work/bundle/rootfs
umask 022

# A blank image, unpacked to a bundle whose rootfs/ becomes the one layer.
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$bundle" >/dev/null

for spec in "${dirs[@]}"; do
  dest=${spec%%:*} mode=0755
  [[ $spec == *:* ]] && mode=${spec#*:}
  [[ $dest == /* ]] || die "--dir $spec: DEST must be absolute"
  install -d -m "$mode" "$rootfs$dest"
done
for spec in "${adds[@]}"; do
  IFS=: read -r src dest mode <<<"$spec"
  { [ -n "$src" ] && [[ $dest == /* ]]; } || die "--add $spec: want SRC:/ABSOLUTE/DEST[:MODE]"
  [ -e "$src" ] || die "--add $spec: $src does not exist"
  if [ -d "$src" ]; then
    mkdir -p "$rootfs$dest"
    cp -R "$src/." "$rootfs$dest/"
    [ -z "$mode" ] || chmod "$mode" "$rootfs$dest"
  else
    if [ -z "$mode" ]; then
      if [ -x "$src" ]; then mode=0755; else mode=0644; fi
    fi
    install -D -m "$mode" "$src" "$rootfs$dest"
  fi
done
# Owner root, one timestamp: a layer depends on the inputs' bytes and modes only. Without
# root, umoci's rootless mode records the caller's files as root's.
rootless=()
if [ "$(id -u)" = 0 ]; then chown -R -h 0:0 "$rootfs"; else rootless=(--rootless); fi
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

umoci repack "${rootless[@]}" --image "$layout:$tag" \
  --history.created "$created" --history.created_by "hack/oci-image.sh (FROM scratch)" "$bundle"

config=(--created "$created" --os linux --architecture amd64 --no-history)
[ -z "$user" ] || config+=(--config.user "$user")
[ -z "$workdir" ] || config+=(--config.workingdir "$workdir")
for x in "${entrypoint[@]}"; do config+=(--config.entrypoint "$x"); done
for x in "${cmd[@]}"; do config+=(--config.cmd "$x"); done
for x in "${envs[@]}"; do config+=(--config.env "$x"); done
for x in "${ports[@]}"; do
  [[ $x == */* ]] || x="$x/tcp"
  config+=(--config.exposedports "$x")
done
for x in "${labels[@]}"; do config+=(--config.label "$x"); done
umoci config --image "$layout:$tag" "${config[@]}"
umoci gc --layout "$layout"

# umoci named the manifest by its tag; add the full name for containerd (ctr import) and
# the platform, as multi-platform tools expect it in the index.
jq -c --arg name "$name" --arg tag "$tag" \
  '.manifests |= map(.annotations = {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}
                     | .platform = {"architecture": "amd64", "os": "linux"})' \
  "$layout/index.json" >"$work/index.json"
mv "$work/index.json" "$layout/index.json"
[ "$(jq '.manifests | length' "$layout/index.json")" = 1 ] || die "expected one manifest in $layout/index.json"

tar --create --file "$work/image.tar" --directory "$layout" --sort=name --format=gnu \
  --owner=0 --group=0 --numeric-owner --mode=a+rX,go-w --mtime="@$SOURCE_DATE_EPOCH" oci-layout index.json blobs
mv "$work/image.tar" "$out"

digest=$(jq -r '.manifests[0].digest' "$layout/index.json")
log "$name -> $out ($(du -h "$out" | cut -f1), manifest $digest)"
