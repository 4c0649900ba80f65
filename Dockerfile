# syntax=docker/dockerfile:1
# crane-operator image: docker build -t ghcr.io/crane-dev/crane-operator:0.1.0 .
#
# Final stage: distroless/cc (glibc, libgcc, CA certificates, user nonroot 65532, no shell).
# The binary is built for the default glibc target and links glibc dynamically, so it needs
# cc-debian12 rather than static-debian12. A fully static musl build would fit
# static-debian12 too, but ring (kube's rustls crypto) compiles C and assembly and would
# need a musl cross toolchain in the builder, and musl's allocator is slow under tokio's
# multi-threaded runtime. Builder and runtime are both Debian 12, so the glibc matches.

ARG RUST_VERSION=1

# Dependencies are compiled in their own layer, from a recipe of Cargo.toml/Cargo.lock
# (cargo-chef stubs every declared target), so editing src/ does not rebuild them.
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin crane-operator
COPY . .
RUN cargo build --release --locked --bin crane-operator \
    && install -D -m 0755 target/release/crane-operator /out/crane-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="crane-operator" \
      org.opencontainers.image.description="The ReplicationController of Kubernetes in Action as a CraneReplicaSet custom resource" \
      org.opencontainers.image.source="https://github.com/crane-dev/crane-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/crane-operator /usr/local/bin/crane-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/crane-operator"]
CMD ["run"]
