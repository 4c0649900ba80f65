# syntax=docker/dockerfile:1
# crane-operator image: docker build -t ghcr.io/crane-dev/crane-operator:0.1.0 .
# Multi-arch (what the release workflow pushes):
#   docker buildx build --platform linux/amd64,linux/arm64 -t REF .
#
# The binary is static: the glibc target with `+crt-static` gives a static-pie that loads
# no shared library, so the final stage is distroless/static (no libc, CA certificates,
# tzdata, user nonroot 65532, no shell). `make image` builds the same binary the same way
# and puts it in an image without Docker (hack/image.sh), so what runs in the local
# cluster is what users pull. Static glibc cannot load NSS modules (no name lookups through
# /etc/nsswitch.conf); the operator needs none: in a cluster it reaches the API server by
# the IP in KUBERNETES_SERVICE_HOST. musl is not used: ring (kube's rustls crypto) would
# need a musl cross toolchain, and musl's allocator is slow under tokio's multi-threaded
# runtime.
#
# The Rust stages run on the build machine's own platform (BUILDPLATFORM) and compile for
# the image's architecture (TARGETARCH), with Debian's cross gcc as linker and as the C
# compiler of ring when the two differ: compiling under QEMU emulation instead takes many
# times longer. The final stage is the distroless image of TARGETARCH.

# Both base images are pinned by the digest of their multi-arch index, so that a rebuild of
# one commit uses the same compiler and the same runtime files: rust:1-bookworm as it was
# on 2026-09-20 (Rust 1.98.1), gcr.io/distroless/static-debian12:nonroot as it was on
# 2026-08-26. Dependabot (.github/dependabot.yml, ecosystem docker) proposes newer digests;
# by hand: `docker buildx imagetools inspect IMAGE:TAG` (or `crane digest IMAGE:TAG`) gives
# the index digest of a tag; replace the digest, keep the tag beside it for people.

# Dependencies are compiled in their own layer, from a recipe of Cargo.toml/Cargo.lock
# (cargo-chef stubs every declared target), so editing src/ does not rebuild them.
FROM --platform=$BUILDPLATFORM rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /build
# Applies to the --target build only (not to build scripts and proc macros).
ENV RUSTFLAGS="-C target-feature=+crt-static"

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG TARGETARCH
# /build/target.env: the Rust target of TARGETARCH and, when it is not the build machine's
# own architecture, the cross gcc for cargo and the cc crate. The cross gcc is the one of
# the base image's Debian release, hence no version pin.
# hadolint ignore=DL3008
RUN case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-gnu env_target=X86_64_UNKNOWN_LINUX_GNU gnu=x86_64-linux-gnu \
             gcc_package=gcc-x86-64-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu env_target=AARCH64_UNKNOWN_LINUX_GNU gnu=aarch64-linux-gnu \
             gcc_package=gcc-aarch64-linux-gnu ;; \
      *) echo "TARGETARCH=$TARGETARCH: only amd64 and arm64 are built" >&2; exit 1 ;; \
    esac \
    && echo "export TARGET=$target" > /build/target.env \
    && if [ "$(dpkg --print-architecture)" != "$TARGETARCH" ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends "$gcc_package" "libc6-dev-$TARGETARCH-cross" \
         && rm -rf /var/lib/apt/lists/* \
         && rustup target add "$target" \
         && cc_target=$(echo "$env_target" | tr '[:upper:]' '[:lower:]') \
         && printf 'export %s=%s\n' "CARGO_TARGET_${env_target}_LINKER" "$gnu-gcc" \
              "CC_$cc_target" "$gnu-gcc" "AR_$cc_target" "$gnu-ar" >> /build/target.env; \
       fi \
    && cat /build/target.env
COPY --from=planner /build/recipe.json recipe.json
RUN . /build/target.env \
    && cargo chef cook --release --locked --target "$TARGET" --recipe-path recipe.json --bin crane-operator
COPY . .
# The git commit for --version and the build_info metric (build.rs; .git is not in the
# context): `--build-arg CRANE_GIT_COMMIT=$(git rev-parse HEAD)`, else "unknown". Declared
# after the dependencies' layer, which a new commit must not rebuild.
ARG CRANE_GIT_COMMIT=unknown
RUN . /build/target.env \
    && cargo build --release --locked --target "$TARGET" --bin crane-operator \
    && file "target/$TARGET/release/crane-operator" | grep static >/dev/null \
    && install -D -m 0755 "target/$TARGET/release/crane-operator" /out/crane-operator

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
LABEL org.opencontainers.image.title="crane-operator" \
      org.opencontainers.image.description="The ReplicationController of Kubernetes in Action as a CraneReplicaSet custom resource" \
      org.opencontainers.image.source="https://github.com/crane-dev/crane-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/crane-operator /usr/local/bin/crane-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/crane-operator"]
CMD ["run"]
