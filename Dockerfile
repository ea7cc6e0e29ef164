# syntax=docker/dockerfile:1
# chatrelay container image: `docker compose up -d` (compose.yaml) or
#   docker build -t chatrelay .
#   docker run -d --name chatrelay -p 127.0.0.1:8080:8080 -v chatrelay-data:/data \
#     --stop-timeout 20 chatrelay
#
# Stage 1 builds one statically linked binary (glibc, +crt-static: the same variant as
# scripts/build-static); stage 2 is debian:bookworm-slim with that binary, a non-root user
# and the data volume. The binary needs nothing from the image (no libc, no CA bundle: TLS
# roots are built in), so the same file also runs on `FROM scratch` or a bare host.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# Lets a builder that keeps intermediate images find and prune this stage's (~1 GB each).
LABEL chatrelay.stage=build
WORKDIR /src
COPY . .
# The build context has no .git (.dockerignore): pass the commit for `chatrelay --version`
# (--build-arg CHATRELAY_GIT_COMMIT=$(git rev-parse --short=12 HEAD)). CHATRELAY_BUILD_DATE
# (YYYY-MM-DD) fixes the build day; unset, it is the day of the build. (Not
# SOURCE_DATE_EPOCH: the cc crate watches it, and a new value rebuilds every C dependency.)
ARG CHATRELAY_GIT_COMMIT=unknown
ARG CHATRELAY_BUILD_DATE=
# Cache mounts keep the crates.io downloads and compiled dependencies between builds, so a
# rebuild after a source change compiles only the workspace's own crates.
RUN --mount=type=cache,id=chatrelay-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=chatrelay-target,target=/src/target \
    CHATRELAY_GIT_COMMIT="${CHATRELAY_GIT_COMMIT}" CHATRELAY_BUILD_DATE="${CHATRELAY_BUILD_DATE}" \
    RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin chatrelay \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/chatrelay /out/chatrelay \
 && /out/chatrelay --version

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="chatrelay" \
      org.opencontainers.image.description="Chat platforms to any OpenAI-compatible LLM, with quota and payments"
# A fixed uid/gid (10001) so that a bind-mounted /data can be chowned to it on the host.
RUN groupadd --system --gid 10001 chatrelay \
 && useradd --system --uid 10001 --gid chatrelay --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin chatrelay \
 && install -d -o chatrelay -g chatrelay -m 0700 /data \
 && install -d -m 0755 /etc/chatrelay
COPY --from=build /out/chatrelay /usr/local/bin/chatrelay
COPY docker/chatrelay.toml /etc/chatrelay/chatrelay.toml
# The daemon and `docker exec ... chatrelay admin ...` read the same file (and the same
# CHATRELAY__* environment), so the admin CLI finds the daemon and /data/admin.token.
ENV CHATRELAY_CONFIG=/etc/chatrelay/chatrelay.toml
VOLUME ["/data"]
WORKDIR /data
USER chatrelay:chatrelay
EXPOSE 8080
# SIGTERM ends open streams within server.shutdown_grace_secs (10 s in the shipped config)
# and flushes the database: give it longer than that before SIGKILL (compose.yaml:
# stop_grace_period: 20s; docker run/stop: --stop-timeout 20 / -t 20; Docker's default is 10 s).
STOPSIGNAL SIGTERM
# /readyz answers 200 once the store is open and the daemon serves; the image has bash but
# no curl, so the probe speaks HTTP/1.0 over bash's /dev/tcp. It follows the port of
# CHATRELAY__SERVER__LISTEN if that is changed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/bin/bash", "-c", "port=${CHATRELAY__SERVER__LISTEN##*:}; exec 3<>/dev/tcp/127.0.0.1/${port:-8080} && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
CMD ["chatrelay", "run"]
