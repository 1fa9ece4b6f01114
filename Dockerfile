# syntax=docker/dockerfile:1
# The cloudkeys operator image: built with the Rust toolchain of Debian 12 (bookworm), run on
# distroless cc (glibc, libgcc, CA certificates; no shell, no package manager) as UID 65532.
#
#   docker build -t ghcr.io/cloudkeys/cloudkeys:0.1.0 .
#
# The chart (charts/cloudkeys) runs it as `cloudkeys run` with a read-only root filesystem.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them: build a stub binary
# against the locked dependency set, then the real sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# touch: the stub's build outputs are newer than the copied sources otherwise.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/cloudkeys /cloudkeys \
    && /cloudkeys version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="cloudkeys" \
      org.opencontainers.image.description="Kubernetes operator that issues least-privilege cloud API keys into Secrets and revokes them" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /cloudkeys /cloudkeys
USER 65532:65532
# /metrics, /healthz, /readyz (--metrics-address, default 0.0.0.0:8080).
EXPOSE 8080
ENTRYPOINT ["/cloudkeys"]
CMD ["run"]
