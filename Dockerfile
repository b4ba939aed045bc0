# syntax=docker/dockerfile:1.7
# The OMS host image: the `oms` and `omsctl` binaries and the deployable plugins, configured
# to run as it is (SQLite in the volume, listening on all interfaces). docker-compose.yml runs
# it against PostgreSQL and Redpanda; README.md "Running it in containers" walks through it.
#
#   docker build -t oms .                                  production plugin set
#   docker build --build-arg OMS_DEMO_PLUGINS=true -t oms .   plus fakepay, the demo provider

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2 wasm32-unknown-unknown
COPY . .
# The registry and both target directories are BuildKit caches: a rebuild after a source
# change recompiles the workspace's own crates, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/src/plugins/target \
    scripts/build-plugins /out/plugins \
 && cargo build --release --locked -p oms --bin oms --bin omsctl \
 && cp target/release/oms target/release/omsctl /out/

# Which plugins go live. Never the misbehaving test plugins (target/plugins/testing); fakepay
# (a fake payment provider that approves test tokens) only when asked, for demos.
ARG OMS_DEMO_PLUGINS=false
RUN mkdir /out/live \
 && for p in local-stock http-inventory email-text webhook-json; do \
        cp "/out/plugins/$p.wasm" "/out/plugins/$p.toml" /out/live/; \
    done \
 && if [ "$OMS_DEMO_PLUGINS" = true ]; then cp /out/plugins/fakepay.wasm /out/plugins/fakepay.toml /out/live/; fi

FROM debian:bookworm-slim
# ca-certificates: https:// webhooks and plugins' HTTP use compiled-in roots, but librdkafka's
# TLS (broker.properties) reads the system store.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/oms oms \
 && mkdir -p /var/lib/oms/plugin-cache \
 && chown -R 10001 /var/lib/oms
COPY --from=build /out/oms /out/omsctl /usr/local/bin/
COPY --from=build /out/live/ /opt/oms/plugins/
# The image's own defaults (every key is in README.md's configuration table); compose or
# `docker run -e` override them. The admin listener only opens with OMS_ADMIN__TOKEN set.
ENV OMS_GRPC__LISTEN=0.0.0.0:50051 \
    OMS_ADMIN__LISTEN=0.0.0.0:50052 \
    OMS_METRICS__LISTEN=0.0.0.0:9090 \
    OMS_DATABASE__URL=sqlite:///var/lib/oms/oms.db \
    OMS_PLUGINS__DIR=/opt/oms/plugins \
    OMS_PLUGINS__CACHE_DIR=/var/lib/oms/plugin-cache \
    OMS_LOG__FORMAT=json
USER 10001
WORKDIR /var/lib/oms
VOLUME ["/var/lib/oms"]
EXPOSE 50051 50052 9090
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 CMD ["oms", "health"]
ENTRYPOINT ["oms"]
CMD ["serve"]
