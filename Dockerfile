# The engine: pipelined (the daemon) and pipectl, with the event schemas and example pipelines.
#   docker build -t pipelines .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p daemon -p pipectl

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/pipelined --create-home pipelined
COPY --from=build /src/target/release/pipelined /src/target/release/pipectl /usr/local/bin/
COPY schemas /opt/pipelines/schemas
COPY pipelines /opt/pipelines/pipelines
WORKDIR /opt/pipelines
USER pipelined
EXPOSE 8080
ENTRYPOINT ["pipelined"]
CMD ["--listen", "0.0.0.0:8080", "--state-dir", "/var/lib/pipelined", "--schemas", "/opt/pipelines/schemas"]
