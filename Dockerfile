# The OMS host image: the `oms` binary plus the bundled plugins.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 wasm32-unknown-unknown \
 && scripts/build-plugins /out/plugins \
 && cargo build --release --locked -p oms \
 && cp target/release/oms /out/oms

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/oms oms && mkdir -p /var/lib/oms && chown oms /var/lib/oms
COPY --from=build /out/oms /usr/local/bin/oms
COPY --from=build /out/plugins /opt/oms/plugins
USER oms
WORKDIR /var/lib/oms
EXPOSE 50051
ENTRYPOINT ["oms"]
CMD ["serve"]
