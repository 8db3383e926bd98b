# Builds the three Arachne binaries and a runtime image with python3 (and venv) and npm, so Python and Node
# spiders run and have their dependencies installed. Everything runs as the unprivileged user `arachne`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv nodejs npm ca-certificates && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --home-dir /var/lib/arachne --shell /usr/sbin/nologin arachne \
    && mkdir -p /var/lib/arachne /var/lib/arachne-worker \
    && chown arachne:arachne /var/lib/arachne /var/lib/arachne-worker \
    && chmod 0700 /var/lib/arachne /var/lib/arachne-worker
COPY --from=build /src/target/release/arachne-master /src/target/release/arachne-worker /src/target/release/arachne-sandbox /src/target/release/arachne /usr/local/bin/
COPY examples /opt/arachne/examples
USER arachne
WORKDIR /var/lib/arachne
EXPOSE 8080 9666
CMD ["arachne-master", "--http", "0.0.0.0:8080", "--grpc", "0.0.0.0:9666", "--examples-dir", "/opt/arachne/examples"]
