#!/usr/bin/env bash
# The image and the compose stack under a real container engine (podman 4.3
# from Debian, and Debian's docker-compose 1.29 on podman's Docker API).
#
#   bash .ci/container-checks.sh          (root, Debian 12; from anywhere)
#
# Part 2, the image: the Dockerfile's runtime stage is built for real with the
# static musl binary .ci/ship-checks.sh builds (the build stage's Rust image
# cannot be pulled here: see .ci/containers/runtime_stage.py), then run as
# the compose file runs it (read-only /, cap_drop ALL, no-new-privileges, the
# image's own user) next to a real Synapse and the fake Cloudflare.
# Part 3, the compose stack: docker-compose.example.yml unchanged plus the
# test-only .ci/containers/compose.ci.yml, brought up with docker-compose.
# Part 4, real Traefik v3 (built from the Go module proxy by .ci/go_peers.py)
# with its Docker provider on podman's API, routing by the compose file's own
# labels: every turnServer path reaches the daemon, Synapse's paths reach
# Synapse unchanged, also with Synapse's router at its default priority;
# with deploy/livekit/front-door.compose.yml, the LiveKit host reaches the
# daemon's front door on 7880 and, through it, LiveKit (a stub); and
# the start window (Traefik skips a container whose health is `starting`)
# measured with a control image carrying the old 30 s HEALTHCHECK and with
# the Dockerfile's. Podman here has no systemd to schedule health checks, so
# the script runs `podman healthcheck run` on the schedule the HEALTHCHECK
# declares (hc_schedule). SKIPPED if the module proxy refuses Traefik.
#
# It installs what it lacks from Debian. Images it builds (a Debian rootfs
# from mmdebstrap, Synapse from PyPI on it) are tagged with a hash of what
# went into them and kept in podman storage of its own under
# ${XDG_CACHE_HOME:-~/.cache}/matrix-turnify-containers, outside the clone,
# so a later run, in another clone too, reuses them.
#
# Traffic stays on loopback and on internal podman networks (no route out);
# only image builds use the host network, to reach the package registries.
#
# Bash stays: nearly every step is a podman, mmdebstrap or docker-compose
# command line as an admin would type it; the checks that read JSON are
# Python (.ci/containers/), and Debian packages come from tests/e2e/lib/install.py.
# Every container, network and process it starts is removed by id on exit.
# Reports through tests/e2e/lib/report.py; exits non-zero on failure. Bash
# stays: the script is podman and docker-compose command lines.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
readonly ROOT="$PWD"
readonly START_SECONDS="$SECONDS"

readonly SYNAPSE_VERSION=1.163.2
readonly MUSL_TARGET=x86_64-unknown-linux-musl
# Same target directory as .ci/ship-checks.sh (outside the clone, so it
# survives CI's fresh clones): in .ci/run the binary is already built when
# this runs, and cargo has nothing to do.
readonly SHIP_TARGET_DIR="${SHIP_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/matrix-turnify-ship/target}"
readonly BIN_BUILT="$SHIP_TARGET_DIR/$MUSL_TARGET/release/matrix-turnify"
# Built by tests/e2e/run.sh with this same command, so shared with it.
readonly FAKE_CF_BUILT="$ROOT/target/release/fake_cloudflare"
readonly CACHE_DIR="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/matrix-turnify-containers"
# Podman's run state belongs on a tmpfs: it must not outlive a reboot.
readonly RUNROOT=/run/matrix-turnify-containers
readonly IMAGE_REPO=localhost/matrix-turnify-ci
# The compose file names this image; part 2 builds it under that name.
readonly TURNIFY_IMAGE=localhost/matrix-turnify:local
# The compose override that turns on the daemon's LiveKit front door (part 4).
readonly FRONT_DOOR_OVERRIDE=deploy/livekit/front-door.compose.yml
readonly MAX_IMAGE_BYTES=10000000
# docker's and podman's default stop timeout, and compose's.
readonly STOP_GRACE_S=10
readonly HEALTHY_DEADLINE_S=20
readonly SYNAPSE_DEADLINE_S=120

# Test values. The secrets are canaries, searched for in the daemon's log.
readonly CF_KEY_ID=ci-key-id
readonly CF_API_TOKEN=CANARY-container-checks-cf-api-token-5e1d
readonly USER_NAME=alice
readonly USER_PASSWORD=CANARY-container-checks-password-77b2
readonly INVALID_TOKEN=syt_CANARY_container_checks_invalid_93ac
readonly SERVER_NAME=example.test

# Every name this run creates starts with this, and every container and
# network it starts with podman carries this label: the cleanup finds by it
# what an interruption kept from being recorded, and removes it by id.
readonly RUN_NAME="mtci$$"
readonly RUN_LABEL="matrix-turnify-ci.run=$RUN_NAME"

WORK="$(mktemp -d /tmp/container-checks.XXXXXX)"
readonly WORK
# This script's checks and those of the judges it runs, one word a line.
export REPORT_TALLY="$WORK/tally"
chmod 0755 "$WORK"
CONTAINERS=()
NETWORKS=()
SERVICE_PID=""
COMPOSE_UP=0

section() { printf '\n== %s (%d s)\n' "$1" "$((SECONDS - START_SECONDS))"; }
report() { python3 "$ROOT/tests/e2e/lib/report.py" "$@"; }
pass() { report pass "$1"; }
# fail NAME [DETAIL_FILE]: the detail, if any, is shown indented (last 30 lines).
fail() { report fail "$1" "$([[ $# -ge 2 && -s "$2" ]] && tail -n 30 "$2")"; }
info() { printf '      %s\n' "$1"; }
# judge COMMAND...: run a judge from checks.py (it tallies its own checks).
judge() {
    local out
    out="$("$@" 2>&1)" || { fail "judge $3 crashed"; printf '%s\n' "$out" | sed 's/^/      /'; return; }
    printf '%s\n' "$out"
}
CHECKS=(python3 "$ROOT/.ci/containers/checks.py")

export CONTAINERS_CONF="$CACHE_DIR/containers.conf"
PODMAN=(podman --root "$CACHE_DIR/storage" --runroot "$RUNROOT")
pm() { "${PODMAN[@]}" "$@"; }

# dc ARGS...: docker-compose on the example file and the CI override, against
# podman's Docker API (DOCKER_HOST is set once the service runs).
COMPOSE_DIR="$WORK/compose"
DC=(docker-compose --project-directory "$COMPOSE_DIR" --project-name "$RUN_NAME"
    --env-file "$COMPOSE_DIR/deploy/stack.env.example"
    -f "$COMPOSE_DIR/docker-compose.example.yml" -f "$COMPOSE_DIR/compose.ci.yml")
dc() { "${DC[@]}" "$@"; }

# as_typed OUT COMMAND...: a command the docs print, run as an admin types
# it, in a terminal (util-linux `script` gives it one): `exec` without -T
# asks for a terminal, and CI has none. Carriage returns are dropped from
# OUT; the exit status is the command's.
as_typed() {
    local out="$1" rc=0
    shift
    script -qefc "$(printf '%q ' "$@")" /dev/null </dev/null >"$out" 2>&1 || rc=$?
    sed -i 's/\r$//' "$out"
    return "$rc"
}

# The cleanup may run from a signal trap inside a command whose output is
# redirected; these keep the script's own stdout and stderr for it.
exec 3>&1 4>&2
cleanup() {
    local rc=$? c n i
    trap - EXIT INT TERM
    exec 1>&3 2>&4
    if [[ $COMPOSE_UP -eq 1 ]]; then
        dc rm --stop --force matrix-turnify >"$WORK/down.log" 2>&1 || true
        dc down --remove-orphans --volumes --timeout 5 >"$WORK/down.log" 2>&1 || true
        # Whatever compose left behind (a `run` interrupted, say): by id.
        for c in $(pm ps -aq --filter "label=com.docker.compose.project=$RUN_NAME" 2>/dev/null); do
            pm rm -f --depend -t 2 "$c" >/dev/null 2>&1 || true
        done
        for n in $(pm network ls -q --filter "label=com.docker.compose.project=$RUN_NAME" 2>/dev/null); do
            pm network rm -f "$n" >/dev/null 2>&1 || true
        done
    fi
    for ((i = ${#CONTAINERS[@]} - 1; i >= 0; i--)); do
        pm rm -f -t 2 "${CONTAINERS[i]}" >/dev/null 2>&1 || true
    done
    if [[ -f "$CONTAINERS_CONF" ]]; then
        # --depend: a container whose network namespace another one shares
        # can only go together with it.
        for c in $(pm ps -aq --filter "label=$RUN_LABEL" 2>/dev/null); do
            pm rm -f --depend -t 2 "$c" >/dev/null 2>&1 || true
        done
    fi
    for n in "${NETWORKS[@]}"; do
        pm network rm -f "$n" >/dev/null 2>&1 || true
    done
    if [[ -n "$SERVICE_PID" ]] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM "$SERVICE_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    printf '\ncontainer-checks: %d s\n' "$((SECONDS - START_SECONDS))"
    if [[ $rc -ne 0 ]] && ! grep -q '^FAIL$' "$REPORT_TALLY" 2>/dev/null; then
        fail "stopped early (exit status $rc)"
    elif ! [[ -s "$REPORT_TALLY" ]]; then
        fail "no check ran"
    fi
    rc=0
    report summary || rc=1
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# give_up NAME [DETAIL_FILE]: a setup step failed; later checks cannot run.
give_up() { fail "$1" "${2:-}"; exit 1; }

# ---------------------------------------------------------------- tools ------

section "tools"
# podman runs containers with runc, not crun: crun 1.8 refuses the hybrid
# cgroup v1/v2 layout of CI's machines. netavark + aardvark-dns give
# container-name DNS on podman networks (with CNI that needs another plugin);
# netavark sets up its bridges with iptables but does not depend on it.
readonly APT_PACKAGES=(podman runc netavark aardvark-dns iptables docker-compose mmdebstrap musl-tools)
python3 "$ROOT/tests/e2e/lib/install.py" apt "${APT_PACKAGES[@]}" >"$WORK/apt.log" 2>&1 ||
    give_up "apt-get install ${APT_PACKAGES[*]}" "$WORK/apt.log"
pass "Debian packages: ${APT_PACKAGES[*]}"

mkdir -p "$CACHE_DIR/storage" "$CACHE_DIR/networks" "$RUNROOT"
# Podman's settings for this script only (CONTAINERS_CONF replaces the
# system's files), so it neither depends on nor changes the host's podman:
# - ulimits: podman's defaults for root exceed the VM's hard limits, and
#   runc then fails with "error setting rlimit";
# - cgroupfs and a file event log: there is no systemd on CI's machines (so
#   no healthcheck timers either: the checks run `podman healthcheck run`
#   themselves, which is what such a timer runs).
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[network]
network_backend = "netavark"
network_config_dir = "$CACHE_DIR/networks"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
info "$(podman --version), runc $(runc --version | awk 'NR == 1 {print $3}'), docker-compose $(docker-compose version --short)"
info "podman storage: $CACHE_DIR/storage (inspect with: CONTAINERS_CONF=$CONTAINERS_CONF podman --root $CACHE_DIR/storage --runroot $RUNROOT images)"

# --------------------------------------------------------------- binaries ----

section "binaries"
if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    rustup target add "$MUSL_TARGET" >"$WORK/rustup.log" 2>&1 || give_up "rustup target add $MUSL_TARGET" "$WORK/rustup.log"
fi
t=$SECONDS
# The build stage's cargo flags and target (.ci/ship-checks.sh checks the
# Dockerfile still uses them).
if CARGO_TARGET_DIR="$SHIP_TARGET_DIR" nice cargo build --release --locked \
    --target "$MUSL_TARGET" -p matrix-turnify >"$WORK/build.log" 2>&1; then
    pass "static binary: cargo build --release --locked --target $MUSL_TARGET -p matrix-turnify ($((SECONDS - t)) s)"
else
    give_up "cargo build --release --locked --target $MUSL_TARGET -p matrix-turnify" "$WORK/build.log"
fi
t=$SECONDS
if nice cargo build --release --locked -p matrix-turnify -p turnify-fakes --bin matrix-turnify --bin fake_cloudflare >"$WORK/build-fake.log" 2>&1; then
    pass "fake Cloudflare: cargo build --release --locked -p turnify-fakes --bin fake_cloudflare ($((SECONDS - t)) s)"
else
    give_up "cargo build --release --locked -p turnify-fakes --bin fake_cloudflare" "$WORK/build-fake.log"
fi

# ----------------------------------------------------------------- images ----

section "images"
# drop_stale REPO KEEP_TAG: remove the other tags of a repository this
# script owns, so that the cache holds one image per repository.
drop_stale() {
    local ref
    for ref in $(pm images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$1" 2>/dev/null); do
        [[ "$ref" == "$1:$2" ]] || pm rmi "$ref" >/dev/null 2>&1 || true
    done
}

# Debian rootfs with python3, from the host's own Debian sources.
suite="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)"
[[ -n "$suite" ]] || give_up "Debian suite from /etc/os-release"
sources=()
[[ -f /etc/apt/sources.list.d/debian.sources ]] && sources=(/etc/apt/sources.list.d/debian.sources)
# shellcheck disable=SC2054 # the comma separates mmdebstrap's package names
mmdebstrap_args=(--variant=essential --include=python3,python3-venv
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' "$suite")
debian_key="$({ printf '%s\n' "${mmdebstrap_args[@]}" "$(dpkg --print-architecture)"
    [[ ${#sources[@]} -gt 0 ]] && cat "${sources[0]}"; } | sha256sum | cut -c1-16)"
DEBIAN_IMAGE="$IMAGE_REPO/debian-python:$debian_key"
if pm image exists "$DEBIAN_IMAGE"; then
    pass "Debian $suite rootfs with python3: cached ($DEBIAN_IMAGE)"
else
    t=$SECONDS
    if nice mmdebstrap "${mmdebstrap_args[@]}" "$WORK/rootfs.tar" "${sources[@]}" >"$WORK/mmdebstrap.log" 2>&1 \
        && pm import "$WORK/rootfs.tar" "$DEBIAN_IMAGE" >>"$WORK/mmdebstrap.log" 2>&1; then
        pass "Debian $suite rootfs with python3: mmdebstrap + podman import ($((SECONDS - t)) s, $DEBIAN_IMAGE)"
        drop_stale "$IMAGE_REPO/debian-python" "$debian_key"
    else
        give_up "Debian rootfs: mmdebstrap + podman import" "$WORK/mmdebstrap.log"
    fi
    rm -f "$WORK/rootfs.tar"
fi

synapse_key="$(cat <(echo "$debian_key $SYNAPSE_VERSION") .ci/containers/Containerfile.synapse \
    .ci/containers/synapse-start.py | sha256sum | cut -c1-16)"
SYNAPSE_IMAGE="$IMAGE_REPO/synapse:$synapse_key"
if pm image exists "$SYNAPSE_IMAGE"; then
    pass "Synapse $SYNAPSE_VERSION image: cached ($SYNAPSE_IMAGE)"
else
    t=$SECONDS
    # --network host: pip reaches PyPI from the build; the host's CA bundle
    # because registry traffic here is re-signed by a CA pip does not ship.
    if nice "${PODMAN[@]}" build --format docker --layers=false --network host \
        -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro \
        --build-arg "BASE=$DEBIAN_IMAGE" --build-arg "SYNAPSE_VERSION=$SYNAPSE_VERSION" \
        -f .ci/containers/Containerfile.synapse -t "$SYNAPSE_IMAGE" .ci/containers \
        >"$WORK/synapse-build.log" 2>&1; then
        pass "Synapse $SYNAPSE_VERSION image: pip install in podman build ($((SECONDS - t)) s, $SYNAPSE_IMAGE)"
        drop_stale "$IMAGE_REPO/synapse" "$synapse_key"
    else
        give_up "Synapse image build" "$WORK/synapse-build.log"
    fi
fi

# The Dockerfile's runtime stage, as shipped but for the binary's source.
mkdir -p "$WORK/image"
if python3 .ci/containers/runtime_stage.py Dockerfile "$WORK/Containerfile.runtime" matrix-turnify \
    >"$WORK/stage.log" 2>&1; then
    pass "runtime stage taken from the Dockerfile (last FROM to the end)"
    sed 's/^/      /' "$WORK/stage.log"
else
    give_up "runtime stage taken from the Dockerfile" "$WORK/stage.log"
fi
# The mode the build stage's `install -m 0555` gives it; COPY keeps it.
install -m 0555 "$BIN_BUILT" "$WORK/image/matrix-turnify"
t=$SECONDS
if pm build --format docker --layers=false -f "$WORK/Containerfile.runtime" \
    --build-arg "VERSION=$(git describe --tags --always 2>/dev/null || echo dev)" \
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$TURNIFY_IMAGE" "$WORK/image" >"$WORK/turnify-build.log" 2>&1; then
    pass "podman build --format docker of the runtime stage ($((SECONDS - t)) s, $TURNIFY_IMAGE)"
else
    give_up "podman build of the runtime stage" "$WORK/turnify-build.log"
fi
# Earlier builds of the tag are left untagged: the cache keeps only this one.
pm image prune -f >/dev/null 2>&1 || true
if pm image inspect "$TURNIFY_IMAGE" >"$WORK/turnify-image.json" 2>"$WORK/inspect.log"; then
    judge "${CHECKS[@]}" image "$WORK/turnify-image.json" "$MAX_IMAGE_BYTES"
else
    fail "podman image inspect $TURNIFY_IMAGE" "$WORK/inspect.log"
fi

# ----------------------------------------------- part 2: the image, podman ---

section "the image under podman: read-only /, cap_drop ALL, no-new-privileges"
# wait_healthy CONTAINER: run the image's HEALTHCHECK until it passes.
wait_healthy() {
    local deadline=$((SECONDS + HEALTHY_DEADLINE_S))
    while [[ $SECONDS -lt $deadline ]]; do
        pm healthcheck run "$1" >"$WORK/hc.log" 2>&1 && return 0
        [[ "$(pm inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" == true ]] || return 1
        sleep 0.2
    done
    return 1
}
# stop_check LABEL CONTAINER STOP_COMMAND...: the stop command exits 0 within
# the grace period and the daemon itself exits 0 (not killed after it).
stop_check() {
    local label="$1" ctr="$2" t0 rc=0 took code
    shift 2
    t0=$(date +%s%N)
    "$@" >"$WORK/stop.log" 2>&1 || rc=$?
    took=$((($(date +%s%N) - t0) / 1000000))
    code="$(pm inspect --format '{{.State.ExitCode}}' "$ctr" 2>>"$WORK/stop.log")"
    if [[ $rc -eq 0 && "$code" == 0 && $took -lt $((STOP_GRACE_S * 1000)) ]]; then
        pass "$label: exits 0 after $took ms (grace ${STOP_GRACE_S} s); the daemon's exit status 0"
    else
        echo "stop exit $rc after $took ms; container exit code '$code'" >>"$WORK/stop.log"
        fail "$label: exits 0 within ${STOP_GRACE_S} s" "$WORK/stop.log"
    fi
}
# client CONTAINER ARGS...: .ci/containers/client.py in CONTAINER's network
# namespace, where the daemon and the fake Cloudflare are on loopback and
# Synapse is `synapse`. A container of its own rather than `exec`: podman
# keeps a conmon process per exec session for 5 minutes after it ends.
client() {
    local ns="$1"
    shift
    pm run --rm --label "$RUN_LABEL" --network "container:$ns" -v "$ROOT/.ci/containers:/ci:ro" \
        "$DEBIAN_IMAGE" python3 /ci/client.py "$@"
}
# probe CONTAINER OUT: client.py's turnServer requests, from CONTAINER.
probe() {
    client "$1" probe http://synapse:8008 http://127.0.0.1:4499 \
        "$USER_NAME" "$USER_PASSWORD" "$INVALID_TOKEN" http://127.0.0.1:8787/__fake/stats >"$2" 2>"$2.err"
}
# register SYNAPSE_CONTAINER DATA_DIR: the test user, with Synapse's own tool.
register() {
    pm run --rm --label "$RUN_LABEL" --network "container:$1" -v "$2:/data:ro" "$SYNAPSE_IMAGE" \
        register_new_matrix_user -c /data/homeserver.yaml -u "$USER_NAME" -p "$USER_PASSWORD" \
        --no-admin http://localhost:8008
}

part2() {
    local net="$RUN_NAME-net" data="$WORK/p2-synapse" syn fcf tfy pid
    # --internal: the network has no route out of the machine.
    pm network create --internal --label "$RUN_LABEL" "$net" >"$WORK/p2.log" 2>&1 || { give_up "podman network create --internal" "$WORK/p2.log"; }
    NETWORKS+=("$net")
    mkdir -p "$data"
    pm run --rm --label "$RUN_LABEL" -v "$data:/data" -e "SYNAPSE_SERVER_NAME=$SERVER_NAME" -e SYNAPSE_REPORT_STATS=no \
        "$SYNAPSE_IMAGE" generate >"$WORK/p2-generate.log" 2>&1 || give_up "Synapse generate" "$WORK/p2-generate.log"
    syn=$(pm run -d --label "$RUN_LABEL" --name "$RUN_NAME-synapse" --network "$net" --network-alias synapse -v "$data:/data" \
        "$SYNAPSE_IMAGE" 2>"$WORK/p2.log") || give_up "start Synapse" "$WORK/p2.log"
    CONTAINERS+=("$syn")
    fcf=$(pm run -d --label "$RUN_LABEL" --name "$RUN_NAME-fake-cloudflare" --network "$net" \
        -v "$FAKE_CF_BUILT:/usr/local/bin/fake_cloudflare:ro" \
        "$DEBIAN_IMAGE" /usr/local/bin/fake_cloudflare --listen 127.0.0.1:8787 \
        --key-id "$CF_KEY_ID" --api-token "$CF_API_TOKEN" 2>"$WORK/p2.log") || give_up "start the fake Cloudflare" "$WORK/p2.log"
    CONTAINERS+=("$fcf")
    if ! took=$(client "$fcf" wait http://synapse:8008/health "$SYNAPSE_DEADLINE_S" 2>"$WORK/p2.log"); then
        pm logs "$syn" >>"$WORK/p2.log" 2>&1
        give_up "Synapse healthy within $SYNAPSE_DEADLINE_S s" "$WORK/p2.log"
    fi
    info "Synapse healthy after $took s"
    client "$fcf" wait http://127.0.0.1:8787/__fake/stats 30 >/dev/null 2>"$WORK/p2.log" \
        || give_up "fake Cloudflare listening" "$WORK/p2.log"
    register "$syn" "$data" >"$WORK/p2.log" 2>&1 || give_up "register_new_matrix_user" "$WORK/p2.log"

    # No SYNAPSE_BASE_URL: the default, http://synapse:8008, must resolve.
    # LOG_LEVEL=debug, so that the secret check covers the most talkative log.
    printf '%s\n' "CF_TURN_KEY_ID=$CF_KEY_ID" "CF_TURN_API_TOKEN=$CF_API_TOKEN" \
        "CF_TURN_API_BASE_URL=http://127.0.0.1:8787/v1" "LOG_LEVEL=debug" >"$WORK/p2-turnify.env"
    # As docker-compose.example.yml runs it, except the user: here the
    # image's own USER, which is what is being checked. Podman would add
    # writable tmpfs on /tmp, /var/tmp and /run to a read-only container;
    # Docker does not, and the daemon needs none.
    tfy=$(pm run -d --label "$RUN_LABEL" --name "$RUN_NAME-matrix-turnify" --network "container:$fcf" \
        --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges \
        --env-file "$WORK/p2-turnify.env" "$TURNIFY_IMAGE" 2>"$WORK/p2.log") || give_up "start the image" "$WORK/p2.log"
    CONTAINERS+=("$tfy")

    t=$SECONDS
    if wait_healthy "$tfy"; then
        pass "podman healthcheck run: the image's HEALTHCHECK passes ($((SECONDS - t)) s after start; status $(pm inspect --format '{{.State.Health.Status}}' "$tfy"))"
    else
        pm logs "$tfy" >>"$WORK/hc.log" 2>&1
        fail "podman healthcheck run passes within $HEALTHY_DEADLINE_S s" "$WORK/hc.log"
    fi
    pid=$(pm inspect --format '{{.State.Pid}}' "$tfy")
    if [[ "$pid" =~ ^[1-9][0-9]*$ ]]; then
        judge "${CHECKS[@]}" process "$pid" "podman run"
    else
        fail "the container's process is running (pid '$pid')"
    fi

    if probe "$fcf" "$WORK/p2-probe.json"; then
        judge "${CHECKS[@]}" probe "$WORK/p2-probe.json" "podman run"
    else
        fail "turnServer requests from inside the network" "$WORK/p2-probe.json.err"
    fi
    # The 401 above is Synapse's, so the daemon found it by name.
    local env resolv
    env="$(pm inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$tfy")"
    resolv="$(grep -m1 '^nameserver' "/proc/$pid/root/etc/resolv.conf" 2>/dev/null)"
    if ! grep -q '^SYNAPSE_BASE_URL=' <<<"$env" && grep -q '"M_UNKNOWN_TOKEN"' "$WORK/p2-probe.json"; then
        pass "default SYNAPSE_BASE_URL=http://synapse:8008 resolves from scratch (alias synapse on podman network $net; $resolv)"
    else
        fail "default SYNAPSE_BASE_URL=http://synapse:8008 resolves from scratch" "$WORK/p2-probe.json"
    fi

    # The same image as a member of the network itself, as the example
    # file runs it. Cloudflare is a closed loopback port here, so this
    # asks only what needs Synapse: resolution by name and its 401.
    local direct answer
    printf '%s\n' "CF_TURN_KEY_ID=$CF_KEY_ID" "CF_TURN_API_TOKEN=$CF_API_TOKEN" \
        "CF_TURN_API_BASE_URL=http://127.0.0.1:9/v1" >"$WORK/p2-direct.env"
    direct=$(pm run -d --label "$RUN_LABEL" --name "$RUN_NAME-turnify-direct" --network "$net" \
        --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges \
        --env-file "$WORK/p2-direct.env" "$TURNIFY_IMAGE" 2>"$WORK/p2.log") || give_up "start the image on the network" "$WORK/p2.log"
    CONTAINERS+=("$direct")
    # Its address rather than its name: a name just added to podman's DNS
    # server (aardvark-dns) was sometimes not served for seconds, and that is
    # the test harness's question, not the daemon's.
    local direct_ip
    direct_ip="$(pm inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$direct")"
    if wait_healthy "$direct" \
        && answer="$(client "$fcf" get "http://$direct_ip:4499/_matrix/client/v3/voip/turnServer" "$INVALID_TOKEN" 2>&1)" \
        && [[ "$answer" == 401*'"M_UNKNOWN_TOKEN"'* ]]; then
        pass "the image joined to the network itself: resolves synapse:8008 and passes on Synapse's 401 M_UNKNOWN_TOKEN"
    else
        { echo "answer: ${answer:-none}"; cat "$WORK/hc.log"; pm logs "$direct"; } >"$WORK/p2-direct.log" 2>&1
        fail "the image joined to the network itself: resolves synapse:8008" "$WORK/p2-direct.log"
    fi
    pm rm -f -t 2 "$direct" >/dev/null 2>&1

    stop_check "podman stop -t $STOP_GRACE_S" "$tfy" pm stop -t "$STOP_GRACE_S" "$tfy"
    pm logs "$tfy" >"$WORK/p2-turnify.log" 2>&1
    judge "${CHECKS[@]}" log "$WORK/p2-turnify.log" "$WORK/p2-probe.json" "podman run" \
        "$CF_API_TOKEN" "$USER_PASSWORD" "$INVALID_TOKEN"
    info "log excerpt: $(grep -m1 turnServer "$WORK/p2-turnify.log" | cut -c1-200)"

    pm rm -f -t 2 "$tfy" "$fcf" "$syn" >/dev/null 2>&1
    pm network rm -f "$net" >/dev/null 2>&1
}
part2

# ------------------------------------------- part 3: the compose stack -------

section "the compose stack: docker-compose $(docker-compose version --short 2>/dev/null) on podman's Docker API"
part3() {
    local sock="$WORK/podman.sock" tfy pid
    # Not through pm(): $! must be podman's own pid, not a subshell's.
    "${PODMAN[@]}" system service --time=0 "unix://$sock" >"$WORK/service.log" 2>&1 &
    SERVICE_PID=$!
    export DOCKER_HOST="unix://$sock"
    if ! python3 - "$sock" >>"$WORK/service.log" 2>&1 <<'PY'
import socket, sys, time
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        if b"OK" in s.recv(4096):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit("podman's API did not answer /_ping within 30 s")
PY
    then
        give_up "podman system service answers /_ping" "$WORK/service.log"
    fi
    pass "podman system service: Docker API on $sock"

    # A project directory with the example file unchanged, as a user has it.
    mkdir -p "$COMPOSE_DIR/synapse-data"
    cp docker-compose.example.yml .ci/containers/compose.ci.yml "$COMPOSE_DIR/"
    cp -r deploy "$COMPOSE_DIR/"
    printf '%s\n' "CF_TURN_KEY_ID=$CF_KEY_ID" "CF_TURN_API_TOKEN=$CF_API_TOKEN" \
        "CF_TURN_API_BASE_URL=http://127.0.0.1:8787/v1" >"$COMPOSE_DIR/.env"
    export MTCI_MATRIX_HOST="$MATRIX_HOST" MTCI_SYNAPSE_IMAGE="$SYNAPSE_IMAGE" MTCI_DEBIAN_IMAGE="$DEBIAN_IMAGE" \
        MTCI_CF_KEY_ID="$CF_KEY_ID" MTCI_CF_API_TOKEN="$CF_API_TOKEN" \
        MTCI_FAKE_CLOUDFLARE="$FAKE_CF_BUILT"
    COMPOSE_UP=1

    if dc run --rm -e "SYNAPSE_SERVER_NAME=$SERVER_NAME" -e SYNAPSE_REPORT_STATS=no synapse generate \
        >"$WORK/p3-generate.log" 2>&1 && [[ -s "$COMPOSE_DIR/synapse-data/homeserver.yaml" ]]; then
        pass "docker-compose run --rm synapse generate (the deployment guide's command) writes homeserver.yaml"
    else
        give_up "docker-compose run --rm synapse generate" "$WORK/p3-generate.log"
    fi
    # The deployment guide's order (phase 1, steps 3, 5 and 6): Synapse up,
    # `check` before serving, then `up -d`.
    t=$SECONDS
    if dc up -d --no-build synapse fake-cloudflare >"$WORK/p3-up.log" 2>&1; then
        pass "docker-compose up -d synapse fake-cloudflare ($((SECONDS - t)) s)"
    else
        give_up "docker-compose up -d synapse fake-cloudflare" "$WORK/p3-up.log"
    fi
    local fcf syn
    fcf="$(dc ps -q fake-cloudflare 2>/dev/null | head -n 1)"
    syn="$(dc ps -q synapse 2>/dev/null | head -n 1)"
    [[ -n "$fcf" && -n "$syn" ]] || give_up "docker-compose ps -q: synapse and fake-cloudflare containers" "$WORK/p3-up.log"
    if ! took=$(client "$fcf" wait http://synapse:8008/health "$SYNAPSE_DEADLINE_S" 2>"$WORK/p3.log"); then
        dc logs synapse >>"$WORK/p3.log" 2>&1
        give_up "Synapse healthy within $SYNAPSE_DEADLINE_S s" "$WORK/p3.log"
    fi
    info "Synapse healthy after $took s"
    client "$fcf" wait http://127.0.0.1:8787/__fake/stats 30 >/dev/null 2>"$WORK/p3.log" \
        || give_up "fake Cloudflare listening" "$WORK/p3.log"
    register "$syn" "$COMPOSE_DIR/synapse-data" >"$WORK/p3.log" 2>&1 || give_up "register_new_matrix_user" "$WORK/p3.log"

    # Before `up`: with the service's own container running, compose 1.29
    # gives the one-off container a link to it, which podman refuses next
    # to network_mode service:.
    if dc run --rm matrix-turnify check >"$WORK/p3-check.log" 2>&1; then
        pass "docker-compose run --rm matrix-turnify check: exit 0"
        grep -E '✓|✗' "$WORK/p3-check.log" | sed 's/^/      /'
    else
        fail "docker-compose run --rm matrix-turnify check" "$WORK/p3-check.log"
    fi
    t=$SECONDS
    if dc up -d --no-build >"$WORK/p3-up.log" 2>&1; then
        pass "docker-compose up -d: $(pm ps --filter "label=com.docker.compose.project=$RUN_NAME" --format '{{.Names}}' | sort | tr '\n' ' ')($((SECONDS - t)) s)"
    else
        give_up "docker-compose up -d" "$WORK/p3-up.log"
    fi

    tfy="$(dc ps -q matrix-turnify 2>/dev/null | head -n 1)"
    if [[ -z "$tfy" ]]; then
        dc ps >>"$WORK/p3-up.log" 2>&1
        give_up "matrix-turnify container running" "$WORK/p3-up.log"
    fi
    t=$SECONDS
    # The compose file declares no healthcheck: this is the image's.
    if wait_healthy "$tfy"; then
        pass "compose: the image's HEALTHCHECK passes ($((SECONDS - t)) s)"
    else
        fail "compose: the image's HEALTHCHECK passes within $HEALTHY_DEADLINE_S s" "$WORK/hc.log"
    fi
    # What phase 1 step 6 tells the reader to look for.
    dc ps matrix-turnify >"$WORK/ps.log" 2>&1
    if grep -q 'Up (healthy)' "$WORK/ps.log"; then
        pass "docker-compose ps: $(tail -n 1 "$WORK/ps.log" | tr -s ' ')"
    else
        fail "docker-compose ps shows matrix-turnify Up (healthy)" "$WORK/ps.log"
    fi
    # The docs' command for the running daemon (README, operations.md,
    # deployment.md, --help, check's own hint), as printed: `exec` runs it
    # without the image's entrypoint, so the binary must be on its PATH.
    if as_typed "$WORK/p3-exec.log" "${DC[@]}" exec matrix-turnify matrix-turnify check \
        && grep -q '^All [0-9]* checks passed' "$WORK/p3-exec.log"; then
        pass "docker-compose exec matrix-turnify matrix-turnify check (as printed, in a terminal): exit 0, $(grep '^All' "$WORK/p3-exec.log")"
    else
        fail "docker-compose exec matrix-turnify matrix-turnify check (as printed, in a terminal)" "$WORK/p3-exec.log"
    fi
    pid=$(pm inspect --format '{{.State.Pid}}' "$tfy")
    if [[ "$pid" =~ ^[1-9][0-9]*$ ]]; then
        judge "${CHECKS[@]}" process "$pid" "compose"
    else
        fail "compose: the container's process is running (pid '$pid')"
    fi
    if probe "$fcf" "$WORK/p3-probe.json"; then
        judge "${CHECKS[@]}" probe "$WORK/p3-probe.json" "compose"
    else
        fail "compose: turnServer requests through the stack" "$WORK/p3-probe.json.err"
    fi
    stop_check "docker-compose stop -t $STOP_GRACE_S matrix-turnify" "$tfy" dc stop -t "$STOP_GRACE_S" matrix-turnify
    pm logs "$tfy" >"$WORK/p3-turnify.log" 2>&1
    judge "${CHECKS[@]}" log "$WORK/p3-turnify.log" "$WORK/p3-probe.json" "compose" \
        "$CF_API_TOKEN" "$USER_PASSWORD" "$INVALID_TOKEN"
    section "Traefik on the compose file's labels, through podman's Docker API"
    part4 "$fcf" "$sock"
    # Podman, unlike Docker, refuses to remove a container whose network
    # namespace another one uses, and compose removes them in parallel.
    dc rm --force matrix-turnify >"$WORK/down.log" 2>&1
    if dc down --remove-orphans --volumes --timeout 5 >>"$WORK/down.log" 2>&1; then
        pass "docker-compose down"
        COMPOSE_UP=0
    else
        fail "docker-compose down" "$WORK/down.log"
    fi
}
# ------------------------------- part 4: real Traefik on the stack's labels --

# Traefik v3, built from the Go module proxy by .ci/go_peers.py, with its
# Docker provider on podman's Docker API, reading the labels of
# docker-compose.example.yml as compose set them. It runs in the network
# namespace of the fake Cloudflare's container (as the daemon does, so the
# client reaches Traefik, the daemon's counters and Synapse from one place),
# with the file's entrypoint name, websecure, on plain HTTP on 127.0.0.1:8443
# there: the test needs no certificate, and the routers do not care.
readonly TRAEFIK_PORT=8443
MATRIX_HOST="$(sed -n 's/^MATRIX_HOST=//p' deploy/stack.env.example)"
readonly MATRIX_HOST
# The first turnServer request must reach the daemon within this of the
# container's start: one interval of the HEALTHCHECK (5 s), or two where
# podman's health_status event reached Traefik before the new status did
# (podman 4.3 does that at times: Traefik re-lists on the event, still sees
# `starting`, and waits for the next probe's event; Docker sends the event
# after the change), plus a second for Traefik.
readonly START_WINDOW_MAX_S=11

# hc_schedule CONTAINER STARTED LIMIT_S: run `podman healthcheck run
# CONTAINER` on the schedule its HEALTHCHECK declares, as Docker's daemon
# does: the first probe one interval after the start (STARTED, epoch s), then every interval; during the start
# period every start interval where one is declared. Podman here has no
# systemd, so nothing else runs its health checks (with systemd, podman's
# timers run this same command). Runs in the background until killed, or
# for LIMIT_S seconds.
hc_schedule() {
    local hc
    hc="$(pm inspect --format '{{json .Config.Healthcheck}}' "$1")"
    python3 - "$hc" "$2" "$3" "${PODMAN[@]}" healthcheck run "$1" <<'PY'
import json, subprocess, sys, time
hc = json.loads(sys.argv[1]) or {}
limit = float(sys.argv[3])
cmd = sys.argv[4:]
ns = lambda k, default: (hc.get(k) or default) / 1e9
interval, start_period, start_interval = ns("Interval", 30e9), ns("StartPeriod", 0), ns("StartInterval", 0)
# The container's start, on this clock.
start = time.monotonic() - (time.time() - float(sys.argv[2]))
last = start
while last - start < limit:
    in_start = last - start < start_period
    due = last + (start_interval if in_start and start_interval else interval)
    time.sleep(max(0.0, due - time.monotonic()))
    last = time.monotonic()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode
    print(f"{time.time():.3f} healthcheck run: exit {rc}", flush=True)
PY
}

# start_window LABEL IMAGE BOUND_S: bring the daemon up from IMAGE and
# measure, with its health checks run on schedule, the time from `up` until
# the first turnServer request through Traefik gets a credential. Sets
# WINDOW_S ("" if none came within BOUND_S); WINDOW_LOG holds the answers seen.
start_window() {
    local label="$1" image="$2" bound="$3" cpid hpid t0 deadline ctr started
    WINDOW_S=""
    WINDOW_LOG="$WORK/p4-window-$label.json"
    dc rm --stop --force matrix-turnify >"$WORK/p4-rm.log" 2>&1
    printf 'services:\n  matrix-turnify:\n    image: %s\n' "$image" >"$COMPOSE_DIR/compose.window.yml"
    # The client logs in and polls first; `up` follows once it polls.
    pm run --rm --label "$RUN_LABEL" --network "container:$P4_FCF" -v "$ROOT/.ci/containers:/ci:ro" \
        "$DEBIAN_IMAGE" python3 /ci/client.py first "http://127.0.0.1:$TRAEFIK_PORT" "$MATRIX_HOST" \
        http://synapse:8008 "$USER_NAME" "$USER_PASSWORD" "$bound" >"$WINDOW_LOG" 2>"$WINDOW_LOG.err" &
    cpid=$!
    deadline=$((SECONDS + 60))
    while ! grep -q '^polling$' "$WINDOW_LOG" && kill -0 "$cpid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do
        sleep 0.1
    done
    t0=$(date +%s.%N)
    dc -f "$COMPOSE_DIR/compose.window.yml" up -d --no-build --no-deps matrix-turnify >"$WORK/p4-up-$label.log" 2>&1
    ctr="$(dc ps -q matrix-turnify 2>/dev/null | head -n 1)"
    started="$(pm inspect --format '{{.State.StartedAt.UnixNano}}' "$ctr" 2>/dev/null | awk '{printf "%.3f", $1 / 1e9}')"
    [[ -n "$started" ]] || started="$t0"
    hc_schedule "$ctr" "$started" "$((bound + 10))" >"$WORK/p4-hc-$label.log" 2>&1 &
    hpid=$!
    wait "$cpid"
    kill "$hpid" 2>/dev/null
    wait "$hpid" 2>/dev/null
    # The window opens when the container starts (Traefik's Docker provider
    # sees it from then on); `up` itself took UP_S before that.
    UP_S="$(awk -v a="$t0" -v b="$started" 'BEGIN {printf "%.1f", b - a}')"
    WINDOW_S="$(python3 - "$WINDOW_LOG" "$started" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
d = json.loads(lines[-1]) if lines else {}
if d.get("first_credential"):
    print(f"{d['first_credential'] - float(sys.argv[2]):.1f}")
PY
)"
    # What answered before the credential did, in order (as "status body").
    WINDOW_SEEN="$(python3 - "$WINDOW_LOG" "$started" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
d = json.loads(lines[-1]) if lines else {"answers": []}
t0 = float(sys.argv[2])
print("; ".join(f"{max(0.0, t - t0):.1f} s: {s} {b[:60]}" for t, s, b in d["answers"]))
PY
)"
    info "$label: \`up\` started the container after $UP_S s; from its start, the answers: $WINDOW_SEEN"
    info "$label: health checks run at $(awk -v t0="$started" '{printf "%.1f s (exit %s) ", $1 - t0, $NF}' "$WORK/p4-hc-$label.log")"
}

# public_url_check LABEL EXPECT: `check --public-url` through Traefik, as
# the docs print it: with the daemon running, `exec matrix-turnify
# matrix-turnify check --public-url URL` in its container; without it, `run
# --rm matrix-turnify check --public-url URL` (deployment.md). Both run in
# the fake Cloudflare's network namespace (compose.ci.yml), where Traefik
# listens and MATRIX_HOST resolves to 127.0.0.1 (its extra_hosts: the
# routers match on Host). EXPECT is `routed` (every turnServer path ✓
# through the daemon) or `missing` (each ✗, naming Traefik's rule).
public_url_check() {
    local label="$1" expect="$2" out="$WORK/p4-public-$2.out" url rc=0 how
    url="http://$MATRIX_HOST:$TRAEFIK_PORT"
    if [[ "$expect" = routed ]]; then
        how="exec matrix-turnify matrix-turnify check --public-url $url"
        as_typed "$out" "${DC[@]}" exec matrix-turnify matrix-turnify check --public-url "$url" || rc=$?
        if [[ $(grep -c "^✓ /_matrix/client/.*/voip/turnServer through $url reaches matrix-turnify" "$out") -eq 4 ]] \
            && grep -qF "✓ /_matrix/client/versions through $url goes straight to the homeserver" "$out" \
            && [[ $rc -eq 0 ]]; then
            pass "docker-compose $how ($label): all four turnServer paths reach the daemon through Traefik, versions goes to Synapse"
        else
            fail "docker-compose $how ($label): exit $rc" "$out"
        fi
        return
    fi
    how="run --rm matrix-turnify check --public-url $url"
    dc run --rm matrix-turnify check --public-url "$url" >"$out" 2>&1 || rc=$?
    if [[ $(grep -c "^✗ /_matrix/client/.*/voip/turnServer through $url did not pass through matrix-turnify" "$out") -eq 4 ]] \
        && grep -qF 'Traefik: the matrix-turnify router needs' "$out" && [[ $rc -eq 1 ]]; then
        pass "docker-compose $how ($label): four ✗, each naming Traefik's router rule and priority"
    else
        fail "docker-compose $how ($label): four ✗ naming Traefik's rule, exit 1 (exit $rc)" "$out"
    fi
}

# livekit_front_door: phase 2 with deploy/livekit/front-door.compose.yml
# under the same Traefik. The LiveKit host's router, with the labels compose
# resolves for the livekit service, must reach the daemon's front door on
# 7880, and the daemon LiveKit behind it. LiveKit is a stub answering plain
# HTTP on 7880 under the alias `livekit` (the real server's image is not
# here, and the example file's livekit service publishes host ports); it
# carries those labels. The daemon is recreated with the override, reading
# livekit_secret made as the deployment guide makes it (phase 2, step 2).
# Proof that the request passed through the daemon: the stub sees two
# X-Forwarded-For entries (Traefik's client, then the daemon's peer), and
# the daemon logs it as the LiveKit front door's.
livekit_front_door() {
    local override="$COMPOSE_DIR/deploy/livekit/front-door.compose.yml" host net stub tfy out rc
    local labels=()
    host="$(sed -n 's/^LIVEKIT_HOST=//p' deploy/stack.env.example)"
    python3 -c 'import secrets; print(secrets.token_hex(32))' >"$COMPOSE_DIR/livekit_secret"
    chmod 600 "$COMPOSE_DIR/livekit_secret"
    chown 1000:1000 "$COMPOSE_DIR/livekit_secret"
    # PyYAML comes with Debian's docker-compose.
    if ! dc -f "$override" --profile phase2 config >"$WORK/p4-lk-config.yml" 2>"$WORK/p4-lk.log" \
        || ! mapfile -t labels < <(python3 - "$WORK/p4-lk-config.yml" <<'PY'
import sys, yaml
for k, v in yaml.safe_load(open(sys.argv[1]))["services"]["livekit"]["labels"].items():
    print(f"--label={k}={v}")
PY
) || [[ ${#labels[@]} -eq 0 ]]; then
        fail "docker-compose config with $FRONT_DOOR_OVERRIDE: the livekit service's labels" "$WORK/p4-lk.log"
        return
    fi
    net="${RUN_NAME}_default"
    stub=$(pm run -d --label "$RUN_LABEL" "${labels[@]}" --name "$RUN_NAME-livekit-stub" \
        --network "$net" --network-alias livekit "$DEBIAN_IMAGE" python3 -c '
import http.server
class Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        forwarded = self.headers.get("X-Forwarded-For", "")
        body = f"livekit-stub {self.path} {forwarded}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 7880), Stub).serve_forever()
' 2>"$WORK/p4-lk.log") || { fail "start the LiveKit stub on $net" "$WORK/p4-lk.log"; return; }
    CONTAINERS+=("$stub")
    if ! dc -f "$override" up -d --no-build --no-deps matrix-turnify >"$WORK/p4-lk-up.log" 2>&1 \
        || ! tfy="$(dc ps -q matrix-turnify 2>/dev/null | head -n 1)" || [[ -z "$tfy" ]] || ! wait_healthy "$tfy"; then
        { cat "$WORK/p4-lk-up.log"; [[ -n "${tfy:-}" ]] && pm logs "$tfy"; } >"$WORK/p4-lk.log" 2>&1
        fail "matrix-turnify recreated with $FRONT_DOOR_OVERRIDE, healthy" "$WORK/p4-lk.log"
        return
    fi
    # Traefik takes the daemon once its health is no longer `starting`;
    # until then (and until it has seen the stub) the answer is a 404 or
    # 502 of its own: retried within a bound, as a client would.
    out="$(pm run --rm --label "$RUN_LABEL" --network "container:$P4_FCF" "$DEBIAN_IMAGE" python3 -c '
import sys, time, urllib.error, urllib.request
url, host = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": host}), timeout=5) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    except OSError as e:
        status, body = None, repr(e)
    if status == 200 or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(status, body)
' "http://127.0.0.1:$TRAEFIK_PORT/rtc/validate" "$host" 2>&1)"
    pm logs "$tfy" >"$WORK/p4-lk-turnify.log" 2>&1
    # "200 livekit-stub /rtc/validate CLIENT, DAEMON'S PEER"
    if [[ "$out" =~ ^200\ livekit-stub\ /rtc/validate\ [^,\ ]+,\ [^,\ ]+$ ]] \
        && grep 'front="livekit"' "$WORK/p4-lk-turnify.log" | grep -q '/rtc/validate'; then
        pass "Traefik with $FRONT_DOOR_OVERRIDE: Host($host) reaches the daemon's front door on 7880, which passes it to LiveKit (${out#200 })"
        # The daemon's container now has two Traefik services: its
        # turnServer router must still reach it (a router that names no
        # service would be dropped, and Synapse would answer).
        local route="$WORK/p4-route-front-door.json"
        if pm run --rm --label "$RUN_LABEL" --network "container:$P4_FCF" -v "$ROOT/.ci/containers:/ci:ro" \
            "$DEBIAN_IMAGE" python3 /ci/client.py route "http://127.0.0.1:$TRAEFIK_PORT" "$MATRIX_HOST" \
            http://synapse:8008 "$USER_NAME" "$USER_PASSWORD" http://127.0.0.1:8787/__fake/stats >"$route" 2>"$route.err"; then
            judge "${CHECKS[@]}" route "$route" "Traefik (labels with $FRONT_DOOR_OVERRIDE: two services on the daemon)"
        else
            fail "Traefik with $FRONT_DOOR_OVERRIDE: turnServer requests through it" "$route.err"
        fi
    else
        { echo "answer: $out"; tail -n 20 "$WORK/p4-lk-turnify.log"; } >"$WORK/p4-lk.log"
        fail "Traefik with $FRONT_DOOR_OVERRIDE: Host($host) through matrix-turnify:7880 to LiveKit" "$WORK/p4-lk.log"
    fi
    # Nothing to shut down: SIGKILL at once (python3 as PID 1 ignores SIGTERM).
    pm rm -f -t 0 "$stub" >/dev/null 2>&1
}

part4() {
    P4_FCF="$1"
    local sock="$2" bindir traefik route
    local t=$SECONDS
    if ! bindir="$(python3 "$ROOT/.ci/go_peers.py" traefik 2>"$WORK/p4-go.log")"; then
        if grep -q 'refuses' "$WORK/p4-go.log"; then
            echo "SKIPPED  Traefik: $(head -c 300 "$WORK/p4-go.log")"
            return
        fi
        fail "Traefik built from the Go module proxy (.ci/go_peers.py traefik)" "$WORK/p4-go.log"
        return
    fi
    local built="${bindir%/bin}"
    pass "Traefik: ${built##*/} from the Go module proxy ($((SECONDS - t)) s; cached in $bindir)"
    traefik=$(pm run -d --label "$RUN_LABEL" --name "$RUN_NAME-traefik" --network "container:$P4_FCF" \
        -v "$bindir/traefik:/usr/local/bin/traefik:ro" -v "$sock:/var/run/docker.sock" \
        "$DEBIAN_IMAGE" /usr/local/bin/traefik \
        --providers.docker=true --providers.docker.exposedbydefault=false \
        --providers.docker.endpoint=unix:///var/run/docker.sock \
        "--entrypoints.websecure.address=127.0.0.1:$TRAEFIK_PORT" \
        --log.level=DEBUG --accesslog=true 2>"$WORK/p4.log") || { fail "start Traefik" "$WORK/p4.log"; return; }
    CONTAINERS+=("$traefik")

    # The control: this image with the HEALTHCHECK it had before (first probe
    # 30 s after the start). It shows the window is there to be seen:
    # Synapse's router answers turnServer ({}) until the first probe passes.
    local control="$IMAGE_REPO/healthcheck-30s:$RUN_NAME"
    printf '%s\n' "FROM $TURNIFY_IMAGE" \
        'HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["/usr/local/bin/matrix-turnify", "healthcheck"]' \
        >"$WORK/Containerfile.hc30"
    if pm build --format docker -q -t "$control" -f "$WORK/Containerfile.hc30" "$WORK" >"$WORK/p4-build.log" 2>&1; then
        start_window "control, 30 s interval" "$control" 80
        if [[ -n "$WINDOW_S" ]] && awk -v w="$WINDOW_S" 'BEGIN {exit !(w >= 25)}' && grep -q '200 {}' <<<"$WINDOW_SEEN"; then
            pass "start window, control (the old HEALTHCHECK, --interval=30s): Synapse's router answered turnServer {} for $WINDOW_S s after the container's start"
        else
            fail "start window, control (--interval=30s): Synapse answers turnServer for 25 s or more after \`up\` (window ${WINDOW_S:-over 80} s; $WINDOW_SEEN)" "$WINDOW_LOG.err"
        fi
        pm rmi -f "$control" >/dev/null 2>&1
    else
        fail "build the control image (the old HEALTHCHECK)" "$WORK/p4-build.log"
    fi
    # The image as the Dockerfile builds it.
    start_window "this image" "$TURNIFY_IMAGE" 60
    if [[ -n "$WINDOW_S" ]] && awk -v w="$WINDOW_S" -v m="$START_WINDOW_MAX_S" 'BEGIN {exit !(w <= m)}'; then
        pass "start window: the first turnServer request through Traefik reaches the daemon $WINDOW_S s after the container's start (at most $START_WINDOW_MAX_S s; \`up\` took $UP_S s before it)"
    else
        pm logs "$traefik" 2>&1 | grep -i -E 'error|matrix-turnify' | tail -n 20 >>"$WINDOW_LOG.err"
        fail "start window: the first turnServer request through Traefik reaches the daemon within $START_WINDOW_MAX_S s of the container's start (took ${WINDOW_S:-more than 60} s)" "$WINDOW_LOG.err"
    fi

    route=$WORK/p4-route.json
    if pm run --rm --label "$RUN_LABEL" --network "container:$P4_FCF" -v "$ROOT/.ci/containers:/ci:ro" \
        "$DEBIAN_IMAGE" python3 /ci/client.py route "http://127.0.0.1:$TRAEFIK_PORT" "$MATRIX_HOST" \
        http://synapse:8008 "$USER_NAME" "$USER_PASSWORD" http://127.0.0.1:8787/__fake/stats >"$route" 2>"$route.err"; then
        judge "${CHECKS[@]}" route "$route" "Traefik (labels as shipped)"
    else
        fail "Traefik: requests through it" "$route.err"
    fi
    public_url_check "labels as shipped" routed

    # Synapse's router at Traefik's default priority (the rule's length): the
    # example file less its synapse priority label, which no override can
    # remove. Synapse is recreated with those labels; its data stays.
    local nop="$COMPOSE_DIR/docker-compose.default-priority.yml" syn labels
    grep -v '^      traefik\.http\.routers\.synapse\.priority:' "$COMPOSE_DIR/docker-compose.example.yml" >"$nop"
    if [[ $(($(wc -l <"$COMPOSE_DIR/docker-compose.example.yml") - $(wc -l <"$nop"))) -ne 1 ]]; then
        fail "the example file has one traefik.http.routers.synapse.priority label to remove"
    elif docker-compose --project-directory "$COMPOSE_DIR" --project-name "$RUN_NAME" \
        --env-file "$COMPOSE_DIR/deploy/stack.env.example" -f "$nop" -f "$COMPOSE_DIR/compose.ci.yml" \
        up -d --no-build --no-deps synapse >"$WORK/p4-synapse.log" 2>&1 \
        && syn="$(dc ps -q synapse 2>/dev/null | head -n 1)" \
        && client "$P4_FCF" wait http://synapse:8008/health "$SYNAPSE_DEADLINE_S" >/dev/null 2>>"$WORK/p4-synapse.log"; then
        # shellcheck disable=SC2016 # a Go template, not shell
        labels="$(pm inspect --format '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{println}}{{end}}' "$syn")"
        if grep -q '^traefik\.http\.routers\.synapse\.rule=' <<<"$labels" && ! grep -q 'routers\.synapse\.priority' <<<"$labels"; then
            route=$WORK/p4-route-default.json
            # Traefik sees the new container through its Docker events; the
            # client's bounded retries cover that (connection errors only).
            if client "$P4_FCF" wait http://synapse:8008/health 30 >/dev/null 2>&1 \
                && pm run --rm --label "$RUN_LABEL" --network "container:$P4_FCF" -v "$ROOT/.ci/containers:/ci:ro" \
                    "$DEBIAN_IMAGE" python3 /ci/client.py route "http://127.0.0.1:$TRAEFIK_PORT" "$MATRIX_HOST" \
                    http://synapse:8008 "$USER_NAME" "$USER_PASSWORD" http://127.0.0.1:8787/__fake/stats >"$route" 2>"$route.err"; then
                judge "${CHECKS[@]}" route "$route" "Traefik (synapse router at its default priority)"
            else
                fail "Traefik (synapse router at its default priority): requests through it" "$route.err"
            fi
        else
            fail "recreated synapse has its router rule and no priority label" <(printf '%s\n' "$labels")
        fi
    else
        fail "synapse recreated from the example file less its priority label" "$WORK/p4-synapse.log"
    fi
    livekit_front_door
    pm logs "$traefik" >"$WORK/p4-traefik.log" 2>&1
    # Left running by start_window; part 3 removes only stopped ones.
    dc rm --stop --force matrix-turnify >"$WORK/p4-rm.log" 2>&1
    # Without the daemon's container Traefik has no router for turnServer:
    # the route is missing, and Synapse's router answers.
    public_url_check "the daemon's container gone: its router missing" missing
    # It shares the fake Cloudflare's network namespace: it goes first.
    # Traefik takes about 2 s to stop; when it exits just as the timeout
    # sends SIGKILL, podman 4.3's rm fails ("container state improper:
    # stopped") and leaves it there, stopped: the second rm removes it.
    pm rm -f -t 2 "$traefik" >/dev/null 2>&1 || pm rm -f "$traefik" >/dev/null 2>&1
}

part3
