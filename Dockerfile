# matrix-turnify container image: a static musl binary on an empty base.
#
#   docker build -t matrix-turnify .
#   docker build --build-arg VERSION="$(git describe --tags)" \
#                --build-arg REVISION="$(git rev-parse HEAD)" -t matrix-turnify .
#   docker buildx build --platform linux/amd64,linux/arm64 -t matrix-turnify .
#
# .ci/ship-checks.sh builds the binary with the same cargo flags and target
# and checks it without a Docker engine; .ci/aarch64-checks.sh does the same
# for the cross-compiled arm64 build, under qemu (see "What CI proves" in
# docs/CONTRIBUTING.md).

# ---- build: compile a statically linked release binary with musl ----------
# The build stage always runs on the building machine's own platform
# ($BUILDPLATFORM), never under emulation: an arm64 image built on an amd64
# host is cross-compiled, which takes minutes instead of the hours rustc
# needs under QEMU.
#
# The rust Alpine image already has gcc and musl-dev, which ring needs for its
# C and assembly parts. Its host target is <arch>-unknown-linux-musl, which
# links statically by default. When the image is for the build host's own
# architecture (`docker build`, `docker compose build`, also on a Raspberry
# Pi), the binary is built natively with `cargo build`, with the same target
# and flags as .ci/ship-checks.sh (x86_64 there). For another architecture
# (`docker buildx build --platform ...`), cargo-zigbuild cross-compiles with
# zig as C compiler and linker, with the same flags as .ci/aarch64-checks.sh
# and the same pinned versions (zig from PyPI's ziglang package).
FROM --platform=$BUILDPLATFORM rust:1.95-alpine3.23 AS build

# TARGETARCH is set by BuildKit (docker buildx, docker compose, and the
# default builder since Docker 23) and by podman; without it the image is for
# the build host's architecture.
ARG TARGETARCH
ARG ZIGLANG_VERSION=0.17.1
ARG CARGO_ZIGBUILD_VERSION=0.24.1

WORKDIR /src

# The Rust target for the image's architecture, and for a foreign one the
# cross-compiling tools, in a layer of their own. Alpine keeps only the
# current build of each package in a release branch, so a pinned apk version
# would stop building at its next security update; the release branch is
# pinned by the base image tag instead.
# hadolint ignore=DL3018
RUN set -eux; \
    host="$(rustc --print host-tuple)"; \
    case "${TARGETARCH:-}" in \
        "") target="$host" ;; \
        amd64) target=x86_64-unknown-linux-musl ;; \
        arm64) target=aarch64-unknown-linux-musl ;; \
        *) echo "no musl target for TARGETARCH=$TARGETARCH (supported: amd64, arm64)" >&2; exit 1 ;; \
    esac; \
    echo "$target" >/target-triple; \
    if [ "$target" != "$host" ]; then \
        rustup target add "$target"; \
        apk add --no-cache python3; \
        python3 -m venv /opt/zig; \
        /opt/zig/bin/pip install --no-cache-dir "ziglang==$ZIGLANG_VERSION"; \
        cargo install --locked cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"; \
    fi

# Dependencies first, in their own layer: this layer is rebuilt only when a
# manifest or the lockfile changes, not on every edit under src/. fakes/ is a
# workspace member (a dev-dependency only), so its manifest must be present
# for cargo to load the workspace; it is never compiled here, but cargo wants
# at least one target in it, hence the empty lib.rs.
# cargo-zigbuild runs zig as `python3 -m ziglang`, hence the venv first on
# PATH (a harmless extra entry for a native build).
ENV PATH="/opt/zig/bin:$PATH"
COPY Cargo.toml Cargo.lock ./
COPY fakes/Cargo.toml fakes/Cargo.toml
RUN set -eux; \
    mkdir -p src fakes/src; \
    echo 'fn main() {}' > src/main.rs; \
    : > src/lib.rs; \
    : > fakes/src/lib.rs; \
    target="$(cat /target-triple)"; \
    if [ "$target" = "$(rustc --print host-tuple)" ]; then \
        cargo build --release --locked --target "$target" -p matrix-turnify; \
    else \
        cargo zigbuild --release --locked --target "$target" -p matrix-turnify; \
    fi; \
    rm -rf src

# The real sources. COPY keeps the build context's modification times, which
# can be older than the placeholder build above; touching every source file
# makes cargo rebuild the crate instead of shipping the placeholder binary.
# A native binary is run once as a smoke test; a cross-compiled one cannot
# run here (.ci/aarch64-checks.sh runs it under qemu instead).
COPY src src
RUN set -eux; \
    find src -name '*.rs' -exec touch {} +; \
    target="$(cat /target-triple)"; \
    if [ "$target" = "$(rustc --print host-tuple)" ]; then \
        cargo build --release --locked --target "$target" -p matrix-turnify; \
    else \
        cargo zigbuild --release --locked --target "$target" -p matrix-turnify; \
    fi; \
    install -D -m 0555 "target/$target/release/matrix-turnify" /out/matrix-turnify; \
    if [ "$target" = "$(rustc --print host-tuple)" ]; then /out/matrix-turnify --version; fi

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

# On PATH, so that `docker compose exec matrix-turnify matrix-turnify check`
# finds it: `exec` runs a command in the container without the entrypoint.
COPY --from=build /out/matrix-turnify /usr/local/bin/matrix-turnify
ENV PATH=/usr/local/bin

# Numeric, because scratch has no /etc/passwd to look a name up in.
USER 1000:1000
EXPOSE 4499

# The healthcheck subcommand reads LISTEN_ADDR through the daemon's own config
# code and GETs /healthz on loopback; exec form, since there is no shell.
# The interval is also the start window: Docker runs the first probe one
# interval after the start, and until it passes the container is `starting`,
# which Traefik's Docker provider skips, so Synapse's router answers
# turnServer (with `{}`) meanwhile. With 30 s that window was ~30 s after every
# start or upgrade; with 5 s it is ~5 s (.ci/container-checks.sh measures it
# through real Traefik). --start-interval would shorten only the start, but
# podman 4.3's build refuses that flag, so the interval itself is short; a
# probe is one loopback GET by a static binary.
HEALTHCHECK --interval=5s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/matrix-turnify", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/matrix-turnify"]
