#!/usr/bin/env bash
# Usage: tests/cluster/node-import.sh OCI-ARCHIVE...
#
# Imports image archives into the real node's containerd (namespace k8s.io, where the
# kubelet finds them), as `kind load image-archive` does for kind: OCI image-layout
# tarballs (or docker-archive ones), named by their index's io.containerd.image.name
# annotation, else by org.opencontainers.image.ref.name when it is a full reference
# (localhost/crane-app:dev). Nothing can be pulled in the local cluster, so pods use these
# images with imagePullPolicy Never, or IfNotPresent with a tag that is not "latest".
# The kubelet never garbage-collects them (tests/cluster/node.sh). Needs the running
# cluster (make cluster) and root. Prints each image's name.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
socket=$(cd "$here/../.." && pwd)/.cluster/node/containerd/containerd.sock

die() {
  printf '[node-import] error: %s\n' "$*" >&2
  exit 1
}
[ $# -gt 0 ] || { sed -n '2s/^# //p' "$0" >&2 && exit 2; }
[ -S "$socket" ] || die "the real node's containerd is not running ($socket): start the cluster with 'make cluster'"

for archive in "$@"; do
  [ -f "$archive" ] || die "$archive: no such file"
  out=$(ctr --address "$socket" --namespace k8s.io images import "$archive" 2>&1) ||
    die "ctr images import $archive failed: $out"
  # ctr prints "unpacking NAME (sha256:...)...done" for each image it names.
  names=$(sed -n 's/^unpacking \(.*\) (sha256:.*$/\1/p' <<<"$out")
  [ -n "$names" ] || die "$archive holds no image: $out"
  # (ctr names an image whose ref.name is only a tag "import-<date>:<tag>".)
  ! grep -q '^import-[0-9-]*:' <<<"$names" ||
    die "$archive names its image only by a tag (ctr imported it as $(head -n1 <<<"$names")): set io.containerd.image.name, or a full reference in org.opencontainers.image.ref.name, in its index.json"
  echo "$names"
done
