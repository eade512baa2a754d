# syntax=docker/dockerfile:1
# Drawbridge: a multi-stage build with cargo-chef, so dependencies are cached
# in their own layer and a source change rebuilds only the crate itself.
#
#   docker build -t drawbridge .
#   docker run --stop-timeout 40 -v drawbridge-data:/data -e DRAWBRIDGE__DISCORD__TOKEN=... drawbridge
#
# The image sets no DRAWBRIDGE__* variable: its settings are a config file,
# /etc/drawbridge/drawbridge.toml (config/container.toml), named by
# DRAWBRIDGE_CONFIG. Replace that file, or point DRAWBRIDGE_CONFIG at yours;
# run, healthcheck and every other command read the same file.
#
# No sqlx query macros are used, so the build needs no database (nothing like
# SQLX_OFFLINE); migrations and config/default.toml are embedded in the binary.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# make: jemalloc, the binary's allocator, is built from C source (gcc is in
# the image already).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /app

# The dependency recipe: changes only when Cargo.toml or Cargo.lock do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin drawbridge \
 && strip target/release/drawbridge

FROM debian:bookworm-slim AS runtime
# CA certificates for TLS to Discord and Azure (the ARM client verifies
# against the system store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 drawbridge \
 && useradd --system --uid 10001 --gid drawbridge --home-dir /data --shell /usr/sbin/nologin drawbridge \
 && mkdir -p /data \
 && chown drawbridge:drawbridge /data
COPY --from=builder /app/target/release/drawbridge /usr/local/bin/drawbridge
COPY config/container.toml /etc/drawbridge/drawbridge.toml

# The SQLite database (with its -wal and -shm files) lives on the volume.
VOLUME ["/data"]
WORKDIR /data
ENV DRAWBRIDGE_CONFIG=/etc/drawbridge/drawbridge.toml
# 8080: the interactions endpoint (HTTP mode);
# 9090: /healthz, /readyz and /metrics (both modes; publish it internally only).
EXPOSE 8080 9090
USER drawbridge:drawbridge

# No curl in the image: the binary probes its own /healthz on ops.listen,
# read from DRAWBRIDGE_CONFIG like the bot's own settings.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["drawbridge", "healthcheck"]

# SIGTERM (docker stop) shuts down gracefully: in-flight requests finish.
# Shutdown can take up to about 25 s (docs/operations.md), longer than
# Docker's default 10 s stop timeout: run with --stop-timeout 40 (Kubernetes:
# terminationGracePeriodSeconds: 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["drawbridge"]
CMD ["run"]
