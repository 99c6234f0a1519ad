# syntax=docker/dockerfile:1
#
# credgate container image.
#
#   docker build -t credgate:0.1.0 .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 \
#     -e CREDGATE_ADMIN_TOKEN -v "$PWD/my.toml:/etc/credgate/credgate.toml:ro" credgate:0.1.0
#
# Stage 1 builds the release binary from the committed Cargo.lock (--locked: a
# lock file that does not match Cargo.toml fails the build instead of being
# rewritten). Stage 2 is distroless: glibc, CA certificates, /etc/passwd with
# the `nonroot` user (65532) and nothing else: no shell, no package manager.
#
# Pin the base images by digest (@sha256:…) in your registry mirror; tags are
# used here so the file reads without network access.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin credgate \
    && install -D -m 0755 target/release/credgate /out/usr/local/bin/credgate \
    && install -d -m 0750 /out/var/lib/credgate/data

# Bookworm-based like the builder, so the binary's glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="credgate" \
      org.opencontainers.image.description="Credential-injecting sidecar proxy for MCP servers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usr/local/bin/credgate /usr/local/bin/credgate
# The embedded store's default location (store.path = "data/credgate.store",
# relative to the working directory). With backend = "vault" nothing is written.
COPY --from=builder --chown=65532:65532 /out/var/lib/credgate /var/lib/credgate
COPY config/credgate.toml /etc/credgate/credgate.toml
WORKDIR /var/lib/credgate
# A container is reached through its own interfaces, not 127.0.0.1: listen on
# all of them. These override the file's [proxy]/[ops] listen (docs/configuration.md);
# pass -e CREDGATE_OPS__LISTEN=127.0.0.1:9090 to keep the ops port private.
ENV CREDGATE_PROXY__LISTEN=0.0.0.0:8080 \
    CREDGATE_OPS__LISTEN=0.0.0.0:9090
# 8080: proxy (OAuth endpoints, admin API, proxied MCP traffic).
# 9090: ops (/metrics, /healthz, /readyz) — never publish it to agents.
EXPOSE 8080 9090
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# No HEALTHCHECK: distroless has no shell, curl or wget to run one, and
# credgate has no self-probe subcommand. Probe from outside instead:
# GET :9090/healthz (liveness) and :9090/readyz (readiness), as k8s/ does.
ENTRYPOINT ["/usr/local/bin/credgate"]
CMD ["serve", "--config", "/etc/credgate/credgate.toml"]
