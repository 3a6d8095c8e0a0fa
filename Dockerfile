# Multi-stage build: compile with the full toolchain, run from a minimal non-root image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin splitproxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/splitproxy /usr/local/bin/splitproxy
# configuration from a ConfigMap, certificates from a Secret (config/kubernetes/)
VOLUME ["/etc/splitproxy"]
EXPOSE 8443 9901
USER nonroot:nonroot
ENTRYPOINT ["splitproxy"]
CMD ["run", "--config", "/etc/splitproxy"]
