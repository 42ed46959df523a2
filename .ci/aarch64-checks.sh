#!/usr/bin/env bash
# aarch64 checks for matrix-turnify: cross-compiles the static
# aarch64-unknown-linux-musl binary the way the Dockerfile does for a foreign
# $TARGETPLATFORM (cargo-zigbuild, zig from PyPI), then runs it under
# qemu-aarch64-static:
#   - the binary checks .ci/ship-checks.sh runs for x86_64 (static ELF,
#     --version, the one-line configuration error, serve as PID 1 of its own
#     PID namespace with `healthcheck` passing, SIGTERM exits 0, healthcheck
#     exits 1 once nothing listens);
#   - the daemon's real job against the real Synapse (the e2e suite's version,
#     from PyPI) and the fake Cloudflare (fakes/src/bin/fake_cloudflare.rs, built
#     for the host): valid token, invalid token, 100 requests and one mint,
#     Cloudflare failing;
#   - the arm64 runtime stage of the Dockerfile built with podman
#     (--platform linux/arm64) around that binary, inspected, and run
#     hardened (read-only /, no capabilities) with qemu as its entrypoint.
#
#   bash .ci/aarch64-checks.sh                 (root on Debian 12, from anywhere)
#   bash .ci/aarch64-checks.sh --build-only    (just build; prints the binary's path)
#
# No binfmt handler is registered or needed: qemu is invoked explicitly.
# Caches (zig venv, cargo-zigbuild, zig's cache, the cargo target directory)
# live outside the work tree, in $AARCH64_CACHE_DIR (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/matrix-turnify-arm64), so that CI's fresh
# clone on the same machine reuses them; on a new machine everything comes
# from the registries (PyPI, crates.io, Debian). Every process started here
# listens on, or talks to, 127.0.0.1 only, and is stopped by PID on exit
# (.ci/aarch64_e2e.py starts the servers through tests/e2e/lib/supervise.py).
#
# Reports through tests/e2e/lib/report.py; exits non-zero if anything failed.
# Bash stays for the tools, the build and podman (command lines); the binary
# checks are .ci/binary_checks.py's, the ones ship-checks runs natively, and
# the daemon's real job is .ci/aarch64_e2e.py's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly ROOT="$PWD"
readonly START_SECONDS="$SECONDS"

BUILD_ONLY=0
case "${1:-}" in
    "") ;;
    --build-only) BUILD_ONLY=1 ;;
    *) echo "usage: bash .ci/aarch64-checks.sh [--build-only]" >&2; exit 2 ;;
esac
readonly BUILD_ONLY

readonly TARGET=aarch64-unknown-linux-musl
# Pinned: the pair this script was proven with. ziglang's wheels carry the
# zig toolchain itself (manylinux and musllinux, x86_64 and aarch64).
readonly ZIGLANG_VERSION=0.17.1
readonly CARGO_ZIGBUILD_VERSION=0.24.1
readonly CACHE_DIR="${AARCH64_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/matrix-turnify-arm64}"
readonly ZIG_VENV="$CACHE_DIR/zig-venv"
readonly TOOLS_ROOT="$CACHE_DIR/cargo-zigbuild-$CARGO_ZIGBUILD_VERSION"
readonly ZIGBUILD="$TOOLS_ROOT/bin/cargo-zigbuild"
readonly AARCH64_TARGET_DIR="$CACHE_DIR/target"
readonly BIN_BUILT="$AARCH64_TARGET_DIR/$TARGET/release/matrix-turnify"
# The e2e suite's Synapse version.
SYNAPSE_VERSION=$(sed -n 's/^SYNAPSE_VERSION=\([0-9.]*\)$/\1/p' tests/e2e/run.sh)
readonly SYNAPSE_VERSION
readonly SYN_VENV="$CACHE_DIR/synapse-venv"
# Bounds. Under emulation the daemon starts in well under a second here; the
# margins are for a loaded 2-core machine.
readonly READY_DEADLINE_S=20
readonly STOP_DEADLINE_S=5
# Builds run at a lower priority: the machine's 2 cores are shared with other
# jobs.
readonly NICE=(nice -n 10)

WORK="$(mktemp -d /tmp/aarch64-checks.XXXXXX)"
readonly WORK
# This script's checks and those of the Python checks it runs, one word a line.
export REPORT_TALLY="$WORK/tally"
PODMAN_CLEANUP=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # A container left running by an interrupted podman check, by its id.
    if [[ ${#PODMAN_CLEANUP[@]} -gt 0 ]]; then
        "${PODMAN_CLEANUP[@]}" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section() { printf '\n== %s\n' "$1"; }
report() { python3 "$ROOT/tests/e2e/lib/report.py" "$@"; }
pass() { report pass "$1"; }
skip() { report skip "$1"; }
# fail NAME [DETAIL_FILE]: the detail, if any, is shown indented (last 40 lines).
fail() { report fail "$1" "$([[ $# -ge 2 && -s "$2" ]] && cat "$2")"; }
info() { printf '      %s\n' "$1"; }

finish() {
    printf '\naarch64-checks: %d s\n' "$((SECONDS - START_SECONDS))"
    report summary
}

# ---------------------------------------------------------------- tools ------

# ensure_apt PACKAGE...: install the Debian packages that are missing.
INSTALL=(python3 "$ROOT/tests/e2e/lib/install.py")
ensure_apt() { "${INSTALL[@]}" apt "$@"; }

ensure_zigbuild() {
    if [[ -x "$ZIGBUILD" ]] && "$ZIGBUILD" --version 2>/dev/null | grep -q "$CARGO_ZIGBUILD_VERSION"; then
        return 0
    fi
    # Its own scratch target directory (not the shared one), removed after.
    CARGO_TARGET_DIR="$CACHE_DIR/install-target" "${NICE[@]}" \
        cargo install --locked --root "$TOOLS_ROOT" cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
    rm -rf "$CACHE_DIR/install-target"
}

mkdir -p "$CACHE_DIR"
# Two runs at once (a developer and CI) would install cargo-zigbuild under
# each other; cargo locks its target directory itself, install.py the venvs. Processes
# that may outlive a step (servers, podman's conmon) get fd 9 closed, so
# none of them can keep holding the lock.
exec 9>"$CACHE_DIR/lock"
if ! flock -w 1800 9; then
    echo "another aarch64-checks run holds $CACHE_DIR/lock for 30 min" >&2
    exit 1
fi

section "tools (cache: $CACHE_DIR)"
tools_ok=1
t0=$SECONDS
if ensure_apt qemu-user-static file >"$WORK/apt.log" 2>&1; then
    pass "Debian packages present: qemu-user-static ($(qemu-aarch64-static --version | sed -n 1p)), file"
else
    fail "Debian packages present: qemu-user-static, file" "$WORK/apt.log"
    tools_ok=0
fi
if rustup target list --installed 2>/dev/null | grep -qx "$TARGET" \
    || rustup target add "$TARGET" >"$WORK/rustup.log" 2>&1; then
    pass "rustup target $TARGET installed"
else
    fail "rustup target add $TARGET" "$WORK/rustup.log"
    tools_ok=0
fi
if "${INSTALL[@]}" venv "$ZIG_VENV" "ziglang==$ZIGLANG_VERSION" >"$WORK/zig-venv.log" 2>&1; then
    pass "venv with ziglang $ZIGLANG_VERSION from PyPI ($ZIG_VENV)"
else
    fail "venv with ziglang $ZIGLANG_VERSION" "$WORK/zig-venv.log"
    tools_ok=0
fi
if ensure_zigbuild >"$WORK/zigbuild-install.log" 2>&1; then
    pass "cargo-zigbuild $CARGO_ZIGBUILD_VERSION (cargo install --locked, in $TOOLS_ROOT)"
else
    fail "cargo install --locked cargo-zigbuild --version $CARGO_ZIGBUILD_VERSION" "$WORK/zigbuild-install.log"
    tools_ok=0
fi
info "tools: $((SECONDS - t0)) s"

# ---------------------------------------------------------------- build ------

section "build: cargo zigbuild --release --locked --target $TARGET -p matrix-turnify"
built=0
if [[ $tools_ok -eq 1 ]]; then
    t0=$SECONDS
    # cargo-zigbuild runs `python3 -m ziglang` when no `zig` is on PATH, so the
    # venv's python must come first. zig keeps its cache under $HOME unless
    # told otherwise; keep it with the other caches. No CC/AR: cargo-zigbuild
    # sets up zig as the C compiler and linker for ring's C and assembly.
    if PATH="$ZIG_VENV/bin:$PATH" \
        ZIG_GLOBAL_CACHE_DIR="$CACHE_DIR/zig-cache" \
        CARGO_TARGET_DIR="$AARCH64_TARGET_DIR" \
        "${NICE[@]}" "$ZIGBUILD" zigbuild --release --locked --target "$TARGET" -p matrix-turnify \
        >"$WORK/build.log" 2>&1; then
        size=$(stat -c %s "$BIN_BUILT")
        pass "built in $((SECONDS - t0)) s: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB)"
        built=1
    else
        fail "cargo zigbuild --release --locked --target $TARGET -p matrix-turnify" "$WORK/build.log"
    fi
else
    skip "build (tools missing)"
fi

if [[ $BUILD_ONLY -eq 1 ]]; then
    [[ $built -eq 1 ]] && echo "binary: $BIN_BUILT"
    finish
    exit $?
fi

# --------------------------------------------------- binary under qemu ------

crate_version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')

section "the aarch64 binary under qemu-aarch64-static (ship-checks' binary checks)"
QEMU=$(command -v qemu-aarch64-static || true)
BIN="$BIN_BUILT"
binary_checks=(python3 "$ROOT/.ci/binary_checks.py" --arch "ARM aarch64" --ready "$READY_DEADLINE_S" --stop "$STOP_DEADLINE_S")
if [[ $built -eq 0 || -z "$QEMU" ]]; then
    "${binary_checks[@]}" --skip "no binary or no qemu" || true
else
    # Their failures are counted in the tally; the run goes on.
    "${binary_checks[@]}" --qemu "$QEMU" "$BIN" 9>&- || true
fi


# ------------------------------------- the real job: Synapse + fake Cloudflare --

section "turnServer under qemu: real Synapse $SYNAPSE_VERSION, fake Cloudflare"
if [[ $built -eq 0 || -z "$QEMU" ]]; then
    python3 "$ROOT/.ci/aarch64_e2e.py" --skip "no binary or no qemu" || true
else
    # Its failures are counted in the tally; the run goes on.
    python3 "$ROOT/.ci/aarch64_e2e.py" "$WORK" "$QEMU" "$BIN" "$SYN_VENV" "$SYNAPSE_VERSION" "$READY_DEADLINE_S" \
        9>&- || true
fi

# ------------------------------------------- arm64 runtime stage with podman --

# podman_run_checks: the arm64 image under a real container runtime, hardened
# as the compose file runs it (read-only root, no capabilities,
# no-new-privileges, its own user 1000:1000), with no network but loopback.
# Without binfmt the kernel cannot exec the image's aarch64 entrypoint, so
# qemu-aarch64-static (static itself) is bind-mounted into the container and
# made the entrypoint, with the image's /usr/local/bin/matrix-turnify as its
# argument.
# crun refuses this machine's hybrid cgroup layout; runc with cgroupfs works.
podman_run_checks() {
    local name="matrix-turnify-aarch64-checks-$$" cid="" i ok=0 code
    if [[ -z "$QEMU" ]]; then
        skip "podman run of the arm64 image (no qemu-aarch64-static)"
        return 0
    fi
    if ! ensure_apt runc >"$WORK/apt-runc.log" 2>&1; then
        fail "Debian package runc installed (podman run)" "$WORK/apt-runc.log"
        return 0
    fi
    local run_cmd=("${podman_cmd[@]}" --cgroup-manager=cgroupfs --runtime "$(command -v runc)")
    if ! cid=$("${run_cmd[@]}" run -d --name "$name" --platform linux/arm64 --no-healthcheck \
            --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
            --read-only --cap-drop ALL --security-opt no-new-privileges --network none \
            -e CF_TURN_KEY_ID=k -e CF_TURN_API_TOKEN=t \
            -e SYNAPSE_BASE_URL=http://127.0.0.1:9 -e CF_TURN_API_BASE_URL=http://127.0.0.1:9/v1 \
            -v "$QEMU:/qemu-aarch64-static:ro" --entrypoint /qemu-aarch64-static \
            "$image" /usr/local/bin/matrix-turnify 2>"$PD/run.log" 9>&-); then
        fail "podman run of the arm64 image (read-only, cap-drop ALL, qemu as entrypoint)" "$PD/run.log"
        "${run_cmd[@]}" rm -f "$name" >/dev/null 2>&1 || true
        return 0
    fi
    PODMAN_CLEANUP=("${run_cmd[@]}" rm -f -t 0 "$cid")
    for ((i = 0; i < READY_DEADLINE_S * 5; i++)); do
        if "${run_cmd[@]}" exec "$cid" /qemu-aarch64-static /usr/local/bin/matrix-turnify healthcheck >"$PD/hc.log" 2>&1; then
            ok=1
            break
        fi
        sleep 0.2
    done
    "${run_cmd[@]}" top "$cid" user pid args >"$PD/top.log" 2>&1 || true
    # The hardening as the kernel sees it, read from the host: no effective
    # capabilities, no_new_privs set, and / mounted read-only.
    local hpid
    hpid=$("${run_cmd[@]}" inspect "$cid" --format '{{.State.Pid}}' 2>/dev/null || echo 0)
    {
        grep -E '^(CapEff|NoNewPrivs):' "/proc/$hpid/status"
        awk '$5 == "/" { print "root mount options:", $6 }' "/proc/$hpid/mountinfo"
    } >>"$PD/top.log" 2>&1 || true
    if [[ $ok -eq 1 ]] && grep -Eq '^1000 +1 +/qemu-aarch64-static /usr/local/bin/matrix-turnify' "$PD/top.log" \
        && grep -Eq '^CapEff:[[:space:]]+0+$' "$PD/top.log" && grep -Eq '^NoNewPrivs:[[:space:]]+1$' "$PD/top.log" \
        && grep -Eq '^root mount options: ro(,|$)' "$PD/top.log"; then
        pass "podman run (runc): the arm64 image serves as PID 1, uid 1000, read-only root, no capabilities; healthcheck exits 0"
    else
        { cat "$PD/hc.log" "$PD/top.log"; "${run_cmd[@]}" logs "$cid" 2>&1 | tail -n 20; } >"$PD/serve.log"
        fail "podman run (runc): the arm64 image serves as PID 1 with healthcheck passing" "$PD/serve.log"
    fi
    "${run_cmd[@]}" stop -t "$STOP_DEADLINE_S" "$cid" >/dev/null 2>"$PD/stop.log" || true
    code=$("${run_cmd[@]}" inspect "$cid" --format '{{.State.ExitCode}} {{.State.Status}}' 2>>"$PD/stop.log" || true)
    # To a file first: `podman logs | grep -q` would fail under pipefail
    # whenever grep stops reading early.
    "${run_cmd[@]}" logs "$cid" >"$PD/container.log" 2>&1 || true
    if [[ "$code" == "0 exited" ]] && grep -q 'SIGTERM received' "$PD/container.log"; then
        pass "podman stop: SIGTERM, exit 0 within ${STOP_DEADLINE_S} s"
    else
        { echo "state: $code"; cat "$PD/stop.log"; tail -n 20 "$PD/container.log"; } >"$PD/stop2.log"
        fail "podman stop: SIGTERM, exit 0 within ${STOP_DEADLINE_S} s" "$PD/stop2.log"
    fi
    "${run_cmd[@]}" rm -f -t 0 "$cid" >/dev/null 2>&1 || true
    PODMAN_CLEANUP=()
}

section "the Dockerfile's runtime stage for linux/arm64, built with podman"
# The runtime stage is everything from the Dockerfile's last FROM on, taken as
# it stands; a two-line stage named `build` puts the aarch64 binary where its
# `COPY --from=build /out/matrix-turnify` expects it. The runtime stage runs
# nothing (no RUN: scratch has no shell), so podman builds it for arm64
# without binfmt. Podman's storage is private to this run and removed after.
# Podman 4.3 as root needs the ulimits below (its defaults exceed this
# machine's hard limits).
if [[ $built -eq 0 ]]; then
    skip "podman build --platform linux/arm64 (no binary)"
elif ! ensure_apt podman >"$WORK/apt-podman.log" 2>&1 || ! command -v podman >/dev/null; then
    fail "Debian package podman installed" "$WORK/apt-podman.log"
else
    PD="$WORK/podman"
    mkdir -p "$PD/ctx"
    install -m 0555 "$BIN_BUILT" "$PD/ctx/matrix-turnify"
    {
        printf '# the aarch64 binary from .ci/aarch64-checks.sh\nFROM scratch AS build\nCOPY matrix-turnify /out/matrix-turnify\n\n'
        awk '/^FROM[[:space:]]/ { stage = "" } { stage = stage $0 "\n" } END { printf "%s", stage }' Dockerfile
    } >"$PD/Containerfile"
    podman_cmd=(podman --root "$PD/storage" --runroot "$PD/run" --storage-driver overlay)
    image=localhost/matrix-turnify:aarch64-checks
    t0=$SECONDS
    if "${podman_cmd[@]}" build --platform linux/arm64 --format docker \
            --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
            --build-arg VERSION="$crate_version" --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
            -t "$image" -f "$PD/Containerfile" "$PD/ctx" >"$PD/build.log" 2>&1; then
        pass "podman $(podman --version | awk '{print $3}') build --platform linux/arm64 --format docker of the runtime stage ($((SECONDS - t0)) s)"
        "${podman_cmd[@]}" image inspect "$image" \
            --format '{{.Architecture}} {{.Os}} {{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Healthcheck.Test}} {{json .Config.ExposedPorts}}' \
            >"$PD/inspect.log" 2>&1 || true
        if grep -qx 'arm64 linux 1000:1000 \["/usr/local/bin/matrix-turnify"\] \["CMD","/usr/local/bin/matrix-turnify","healthcheck"\] {"4499/tcp":{}}' "$PD/inspect.log"; then
            pass "podman image inspect: $(cat "$PD/inspect.log")"
        else
            fail "podman image inspect: Architecture arm64, linux, user 1000:1000, entrypoint, healthcheck, port 4499" "$PD/inspect.log"
        fi
        # The file in the image is the binary that passed the checks above.
        if mnt=$("${podman_cmd[@]}" image mount "$image" 2>"$PD/mount.log"); then
            if cmp -s "$mnt/usr/local/bin/matrix-turnify" "$BIN_BUILT" && [[ "$(stat -c %a "$mnt/usr/local/bin/matrix-turnify")" == 555 ]]; then
                pass "/usr/local/bin/matrix-turnify in the image is the tested aarch64 binary (cmp), mode 0555"
            else
                ls -l "$mnt/usr/local/bin" >"$PD/mount.log" 2>&1
                fail "/usr/local/bin/matrix-turnify in the image is the tested aarch64 binary" "$PD/mount.log"
            fi
            "${podman_cmd[@]}" image unmount "$image" >/dev/null 2>&1 || true
        else
            fail "podman image mount" "$PD/mount.log"
        fi
        podman_run_checks
        "${podman_cmd[@]}" rmi -f "$image" >/dev/null 2>&1 || true
    else
        fail "podman build --platform linux/arm64 of the runtime stage" "$PD/build.log"
    fi
fi

finish
