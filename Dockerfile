# Builds the three Arachne binaries and a runtime image with python3 (and venv) and npm, so Python and Node
# spiders run and have their dependencies installed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv nodejs npm ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/arachne-master /src/target/release/arachne-worker /src/target/release/arachne /usr/local/bin/
COPY examples /opt/arachne/examples
WORKDIR /var/lib/arachne
EXPOSE 8080 9666
CMD ["arachne-master", "--http", "0.0.0.0:8080", "--grpc", "0.0.0.0:9666", "--examples-dir", "/opt/arachne/examples"]
