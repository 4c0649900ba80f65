# syntax=docker/dockerfile:1
# crane-operator image: docker build -t ghcr.io/crane-dev/crane-operator:0.1.0 .
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

ARG RUST_VERSION=1

# Dependencies are compiled in their own layer, from a recipe of Cargo.toml/Cargo.lock
# (cargo-chef stubs every declared target), so editing src/ does not rebuild them.
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /build
# Applies to the --target build only (not to build scripts and proc macros).
ENV RUSTFLAGS="-C target-feature=+crt-static"

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --target "$(rustc -vV | sed -n 's/^host: //p')" \
      --recipe-path recipe.json --bin crane-operator
COPY . .
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
    && cargo build --release --locked --target "$target" --bin crane-operator \
    && file "target/$target/release/crane-operator" | grep -q 'static' \
    && install -D -m 0755 "target/$target/release/crane-operator" /out/crane-operator

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="crane-operator" \
      org.opencontainers.image.description="The ReplicationController of Kubernetes in Action as a CraneReplicaSet custom resource" \
      org.opencontainers.image.source="https://github.com/crane-dev/crane-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/crane-operator /usr/local/bin/crane-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/crane-operator"]
CMD ["run"]
