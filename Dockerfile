# syntax=docker/dockerfile:1
# Multi-stage build: a static musl binary on a distroless, non-root base.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the benchmark target: the manifest does not parse
# without its source (nothing of it is built).
COPY benches ./benches
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/snapback /snapback

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /snapback /usr/local/bin/snapback
USER 65532:65532
EXPOSE 8443 9443 9090
ENTRYPOINT ["/usr/local/bin/snapback"]
CMD ["serve"]
