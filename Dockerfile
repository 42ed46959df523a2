# matrix-turnify container image: a static musl binary on an empty base.
#
#   docker build -t matrix-turnify .
#   docker build --build-arg VERSION="$(git describe --tags)" \
#                --build-arg REVISION="$(git rev-parse HEAD)" -t matrix-turnify .
#
# .ci/ship-checks.sh builds the binary with the same cargo flags and target
# and checks it without a Docker engine (see the "What CI proves" section of
# the README's deployment guide).

# ---- build: compile a statically linked release binary with musl ----------
# The rust Alpine image already has gcc and musl-dev, which ring needs for its
# C and assembly parts. Its host target is <arch>-unknown-linux-musl, which
# links statically by default; naming it explicitly keeps the output path and
# flags identical to .ci/ship-checks.sh (x86_64 there) and still builds
# natively on an arm64 host.
FROM rust:1.95-alpine3.23 AS build

WORKDIR /src

# Dependencies first, in their own layer: this layer is rebuilt only when a
# manifest or the lockfile changes, not on every edit under src/. fakes/ is a
# workspace member (a dev-dependency only), so its manifest must be present
# for cargo to load the workspace; it is never compiled here, but cargo wants
# at least one target in it, hence the empty lib.rs.
COPY Cargo.toml Cargo.lock ./
COPY fakes/Cargo.toml fakes/Cargo.toml
RUN set -eux; \
    mkdir -p src fakes/src; \
    echo 'fn main() {}' > src/main.rs; \
    : > src/lib.rs; \
    : > fakes/src/lib.rs; \
    cargo build --release --locked --target "$(rustc --print host-tuple)" -p matrix-turnify; \
    rm -rf src

# The real sources. COPY keeps the build context's modification times, which
# can be older than the placeholder build above; touching every source file
# makes cargo rebuild the crate instead of shipping the placeholder binary.
COPY src src
RUN set -eux; \
    find src -name '*.rs' -exec touch {} +; \
    target="$(rustc --print host-tuple)"; \
    cargo build --release --locked --target "$target" -p matrix-turnify; \
    install -D -m 0555 "target/$target/release/matrix-turnify" /out/matrix-turnify; \
    /out/matrix-turnify --version

# ---- runtime: nothing but the binary ---------------------------------------
# No shell, no libc, no CA bundle: TLS roots are compiled in (webpki-roots),
# and musl's resolver reads the /etc/hosts and /etc/resolv.conf that Docker
# mounts into every container, so service names such as `synapse` resolve.
# Nothing is written to the filesystem, so `read_only: true` works.
FROM scratch

ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="matrix-turnify" \
      org.opencontainers.image.description="Hands out Cloudflare Realtime TURN credentials on a Matrix homeserver's /voip/turnServer endpoint" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=build /out/matrix-turnify /matrix-turnify

# Numeric, because scratch has no /etc/passwd to look a name up in.
USER 1000:1000
EXPOSE 4499

# The healthcheck subcommand reads LISTEN_ADDR through the daemon's own config
# code and GETs /healthz on loopback; exec form, since there is no shell.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/matrix-turnify", "healthcheck"]

ENTRYPOINT ["/matrix-turnify"]
