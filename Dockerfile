# syntax=docker/dockerfile:1
# The EmpactsApp operator image: a static musl `empacts` binary on distroless/static (non-root).
#   docker build -t empacts-operator:0.1.0 .
# The Helm chart (charts/empacts-operator) runs it as UID 65532 with a read-only root filesystem.

# ---- build -------------------------------------------------------------------------------------------
FROM rust:1-alpine AS build
# musl-dev: libc headers and crt objects to link against; gcc: `ring` compiles C and assembly.
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
# Every workspace member's manifest must be present, even those not built.
COPY Cargo.toml Cargo.lock ./
COPY crates/ crates/
COPY tests/e2e/ tests/e2e/
# On Alpine the host target is *-unknown-linux-musl; crt-static (musl's default, made explicit)
# links libc in, so the binary runs on distroless/static. --locked: exactly the committed Cargo.lock.
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p empacts-cli --bin empacts \
    && cp target/release/empacts /empacts \
    && /empacts --version

# ---- runtime -----------------------------------------------------------------------------------------
FROM gcr.io/distroless/static:nonroot
LABEL org.opencontainers.image.title="empacts-operator" \
      org.opencontainers.image.description="The EmpactsApp Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0755 /empacts /empacts
# distroless' nonroot user; matches runAsUser 65532 in the chart (PSS restricted).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/empacts"]
CMD ["run"]
