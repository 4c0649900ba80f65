#!/usr/bin/env bash
# Usage: hack/image.sh [crane-operator] [crane-app]
# `make image`: the operator image and the book's app image (or only the ones named), as
# OCI archives under target/image/, with no Docker engine and no registry:
#   target/image/crane-operator.tar  ghcr.io/crane-dev/crane-operator:<version> (the chart's
#                                    default image: repository from values.yaml, tag =
#                                    appVersion = the Cargo version)
#   target/image/crane-app.tar       localhost/crane-app:dev (manifests/examples/crane.yaml)
# Both binaries are static (glibc with +crt-static, a static-pie), as in the Dockerfile, so
# the images need no libc. Then the archives are imported into the local real node's
# containerd when tests/cluster/node-import.sh is there and the node is up; without the
# local cluster nothing more is done (the script says how to load them into kind or
# minikube). Honours CARGO_TARGET_DIR for the binaries.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "[image] $*"; }
die() { echo "[image] $*" >&2; exit 1; }

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(crane-operator crane-app)
packages=()
for image in "${images[@]}"; do
  case $image in
    crane-operator | crane-app) packages+=(-p "$image") ;;
    *) echo "usage: hack/image.sh [crane-operator] [crane-app]" >&2; exit 2 ;;
  esac
done
# wants IMAGE: was IMAGE asked for?
wants() { [[ " ${images[*]} " == *" $1 "* ]]; }

target=x86_64-unknown-linux-gnu
release=${CARGO_TARGET_DIR:-target}/$target/release
out=target/image
hack/debian-packages.sh "make image" python3:python3 /usr/lib/python3/dist-packages/yaml/__init__.py:python3-yaml
version=$(hack/field.py Cargo.toml package version) || die "cannot read the version from Cargo.toml"
repository=$(hack/field.py charts/crane-operator/values.yaml image repository) || die "cannot read image.repository from the chart"
app_version=$(hack/field.py charts/crane-operator/Chart.yaml appVersion) || die "cannot read the chart's appVersion"
[ "$version" = "$app_version" ] \
  || log "warning: Cargo version $version differs from the chart's appVersion $app_version: the chart's default tag will not find this image"

start=$SECONDS
if [ -x "$release/${images[0]}" ]; then
  log "building static ${images[*]} in $release (warm: seconds, unless dependencies changed)"
else
  log "building static ${images[*]} in $release: the first build compiles every dependency again for this target, ~6 min on 2 idle cores"
fi
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" "${packages[@]}"
for bin in "${images[@]}"; do
  kind=$(file -b "$release/$bin")
  [[ $kind == *"static-pie linked"* || $kind == *"statically linked"* ]] \
    || die "$release/$bin is not static: $kind"
  if ldd "$release/$bin" >/dev/null 2>&1 && ! grep -q 'statically linked' <<<"$(ldd "$release/$bin" 2>&1)"; then
    die "$release/$bin loads shared libraries: $(ldd "$release/$bin" 2>&1 | tr '\n' ' ')"
  fi
done
sizes=$(for bin in "${images[@]}"; do echo "$bin $(du -h "$release/$bin" | cut -f1)"; done | paste -sd, | sed 's/,/, /g')
log "binaries built in $((SECONDS - start)) s, static ($sizes)"

# What distroless/static's nonroot flavour puts around the binary and the operator or the
# app can use: the users (uid 65532 has a name) and a writable /tmp. Not its CA bundle or
# tzdata: the operator trusts only the cluster CA of its kubeconfig or ServiceAccount.
mkdir -p "$out/etc"
cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
base=(--add "$out/etc/passwd:/etc/passwd:0644" --add "$out/etc/group:/etc/group:0644" --dir /tmp:1777
  --user 65532:65532 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
labels=(--label org.opencontainers.image.source=https://github.com/crane-dev/crane-operator
  --label org.opencontainers.image.licenses=Apache-2.0)

archives=()
if wants crane-operator; then
  # The Dockerfile's final stage, label for label.
  archives+=("$out/crane-operator.tar")
  hack/oci-image.sh --name "$repository:$version" --out "$out/crane-operator.tar" "${base[@]}" \
    --add "$release/crane-operator:/usr/local/bin/crane-operator:0755" \
    --entrypoint /usr/local/bin/crane-operator --cmd run --port 8080 \
    --label org.opencontainers.image.title=crane-operator \
    --label "org.opencontainers.image.description=The ReplicationController of Kubernetes in Action as a CraneReplicaSet custom resource" \
    "${labels[@]}"
fi
if wants crane-app; then
  archives+=("$out/crane-app.tar")
  hack/oci-image.sh --name localhost/crane-app:dev --out "$out/crane-app.tar" "${base[@]}" \
    --add "$release/crane-app:/usr/local/bin/crane-app:0755" \
    --entrypoint /usr/local/bin/crane-app --port 7070 \
    --label org.opencontainers.image.title=crane-app \
    --label "org.opencontainers.image.description=The book's app (kubia): answers every GET with You've hit <hostname>" \
    "${labels[@]}"
fi

# Into the local cluster's real node, when it runs (make cluster); sourcing env.sh is cheap
# then, as the cluster's binaries are cached.
node=crane-node-0
other="for another cluster: kind load image-archive ARCHIVE (kind), minikube image load ARCHIVE (minikube), or push them to a registry; then make deploy"
if [ ! -x tests/cluster/node-import.sh ]; then
  log "images not imported into a node: this checkout has no tests/cluster/node-import.sh (no real node); $other"
elif [ ! -f .cluster/kubeconfig ]; then
  log "images not imported: the local cluster is not running (make cluster, then make image again); $other"
elif ! (source tests/cluster/env.sh && kubectl --kubeconfig .cluster/kubeconfig get node "$node" --request-timeout=10s) >/dev/null 2>&1; then
  log "images not imported: the local cluster has no node $node (make cluster-down; make cluster, then make image again); $other"
else
  tests/cluster/node-import.sh "${archives[@]}" | sed "s/^/[image] imported into $node: /"
fi
log "done in $((SECONDS - start)) s: ${archives[*]}"
