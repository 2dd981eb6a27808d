# ccstream's container image.
#
#   docker build -t ccstream .                      # builds ccstream in the image (default target)
#   docker build --target prebuilt --build-arg BINARY=ccstream -t ccstream DIR
#                                                   # the same runtime image around a binary
#                                                   # built outside (DIR holds it and this file)
#
# The runtime image holds the binary and CA certificates only. It runs as uid/gid 10001 (no
# user entry needed), in /var/lib/ccstream, where the relative default paths (`data/` for the
# SQLite store, the objects spool and the dead letters) resolve: mount a volume at
# /var/lib/ccstream/data. Configuration: `--config /etc/ccstream/ccstream.toml` (a mounted
# file) and/or CCSTREAM_<SECTION>__<KEY> variables. `ccstream healthcheck [--ready]` is the
# probe for runtimes without HTTP probes (no curl in the image).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ccstream \
    && install -s -m 0755 target/release/ccstream /usr/local/bin/ccstream

FROM ${BASE_IMAGE} AS runtime-base
# ca-certificates: the AWS SDK's HTTPS client (S3, Firehose) trusts the system's roots; the
# MQTT, webhook and OpenSearch clients carry their own (webpki-roots). Skipped when the base
# image has them already.
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /var/lib/ccstream/data /etc/ccstream \
    && chown -R 10001:10001 /var/lib/ccstream
# glibc keeps up to 8 malloc arenas per core; two keep ccstream's RSS down at no measurable CPU
# cost (BENCHMARKS.md).
ENV MALLOC_ARENA_MAX=2
WORKDIR /var/lib/ccstream
VOLUME ["/var/lib/ccstream/data"]
EXPOSE 8088
USER 10001:10001
ENTRYPOINT ["ccstream"]

# The runtime image around a binary built outside the image (how it is tested here, where no
# container registry can be reached): the build context holds the binary named by BINARY.
FROM runtime-base AS prebuilt
ARG BINARY=ccstream
COPY --chmod=0755 ${BINARY} /usr/local/bin/ccstream
RUN ["ccstream", "--version"]

# The default: the binary built in the builder stage.
FROM runtime-base AS runtime
COPY --from=builder /usr/local/bin/ccstream /usr/local/bin/ccstream
RUN ["ccstream", "--version"]
