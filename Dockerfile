# syntax=docker/dockerfile:1
# The EmpactsApp operator image: a static musl `empacts` binary on distroless/static (non-root).
#   docker build -t empacts-operator:0.1.0 .
# Without Docker: deploy/image/build (a static glibc binary on scratch, assembled with crane; see README, "Image").
# The Helm chart (charts/empacts-operator) runs it as UID 65532 with a read-only root filesystem.

# Base images are pinned by digest: a tag can be re-pointed (a new build, or a compromised registry),
# a digest cannot. To upgrade, look the new digest up (`docker buildx imagetools inspect rust:1-alpine`)
# and replace it together with its source note.

# ---- build -------------------------------------------------------------------------------------------
# rust:1-alpine = rust:1.99.0-alpine3.24, multi-platform index digest. Source: public Dockerfiles in a code
# index (Nov 2026) pin `rust:1-alpine@sha256:0cce0a5e…`, `rust:1.99-alpine@…` and `rust:1.99.0-alpine3.24@…`
# to this same digest (not resolved against the registry from here: no network).
FROM rust:1-alpine@sha256:0cce0a5e0e8ba67b455257a3a02a1d99005f382748789d6464460028810f1627 AS build
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
# Multi-platform index digest of gcr.io/distroless/static:nonroot as Renovate resolved it on 2026-08-21
# (github.com/ntnn/docker-imapfilter, imapmemserver.Dockerfile, commit 2415894 "update
# gcr.io/distroless/static:nonroot docker digest to 1c2c046"); other public Dockerfiles pin
# distroless/static-debian13:nonroot to the same digest.
FROM gcr.io/distroless/static:nonroot@sha256:1c2c046bc09ed40fad370b599a0b1ae7987f55b01e247cf27a7c27cd97e5bbc7
LABEL org.opencontainers.image.title="empacts-operator" \
      org.opencontainers.image.description="The EmpactsApp Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0755 /empacts /empacts
# distroless' nonroot user; matches runAsUser 65532 in the chart (PSS restricted).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/empacts"]
CMD ["run"]
