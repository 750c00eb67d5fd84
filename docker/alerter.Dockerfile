# syntax=docker/dockerfile:1.7
#
# The pg_fraud alerter: a release build on Debian bookworm, run as an unprivileged user.
#
#   docker build -f docker/alerter.Dockerfile -t pg_fraud/alerter .      # from the repository root
#   docker run --rm -p 127.0.0.1:9187:9187 \
#       -v "$PWD/alerter.toml:/etc/pg-fraud-alerter/alerter.toml:ro" \
#       -e ALERTER_DATABASE_URL='postgres://alerter:PASSWORD@db:5432/fraud?sslmode=verify-full' \
#       pg_fraud/alerter
#
# The image holds no configuration: mount one (see alerter/alerter.example.toml) with
# `[server] listen = "0.0.0.0:9187"` so the port is reachable from outside the container, and
# pass secrets as environment variables named by its `*_env` keys. Other subcommands:
#   docker run --rm -v ... pg_fraud/alerter check-config
#   docker run --rm -v ... -e ... pg_fraud/alerter send-test --channel slack
#
# The build takes a few minutes (fat LTO, one codegen unit); BuildKit's cache mounts keep
# the registry and the target directory between builds.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
# Cargo loads every workspace member's manifest even to build one package, so the
# extension's crates come along; only the alerter and its dependencies are compiled.
COPY Cargo.toml Cargo.lock ./
COPY pg_fraud ./pg_fraud
COPY alerter ./alerter
# The target directory is a cache mount: the binary must leave it within this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release -p alerter --locked \
 && install -D -m 0755 target/release/alerter /out/alerter

FROM ${RUNTIME_IMAGE}
# ca-certificates for operators' tools (the alerter itself carries the Mozilla roots);
# curl for the health check, here and in docker-compose.yml.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin alerter
COPY --from=builder /out/alerter /usr/local/bin/alerter
COPY alerter/alerter.example.toml /usr/share/doc/pg-fraud-alerter/alerter.example.toml
ENV ALERTER_CONFIG=/etc/pg-fraud-alerter/alerter.toml
# Numeric, so orchestrators can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# /healthz, /readyz, /metrics (server.listen in the configuration).
EXPOSE 9187
# Liveness: /healthz answers while the process runs. /readyz (database reachable, LISTEN
# active) is the better probe for a load balancer or `depends_on: service_healthy`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9187/healthz"]
# SIGTERM: finish in-flight sends (delivery.shutdown_grace), record them, release the rest.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/alerter"]
CMD ["run"]
