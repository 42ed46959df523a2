#!/usr/bin/env bash
# End-to-end suite of matrix-turnify against the real components:
# Synapse 1.163.2 from PyPI, matrix-js-sdk from npm, Debian's nginx (and
# Debian's caddy when the deploy snippet exists), the release binary of the
# daemon and the fake Cloudflare example; for a real call (relay.sh): Debian's
# coturn, Chromium and Firefox ESR, driven by puppeteer-core from npm.
#
#   bash tests/e2e/run.sh            (from the repository root; root on Debian 12)
#
# Everything listens on 127.0.0.1 on ports the kernel hands out. All state
# lives under tests/e2e/.work/: the Synapse venv and signing key are kept
# between runs, everything else (run/) is made anew each run. Reports every
# check, its own and its helpers', through lib/report.py (REPORT_TALLY) and
# ends with "N passed, N failed"; exits 0 iff nothing failed. Processes it started are stopped by PID on exit.
#
# Logs and state of the last run stay in tests/e2e/.work/run/. Knobs:
# E2E_KEEP=1 (on a terminal) keeps the processes up until Enter is pressed;
# E2E_SKIP_CADDY=1 skips the Caddy part; E2E_SKIP_RELAY=1 the browser calls.

set -uo pipefail

SYNAPSE_VERSION=1.163.2
T0=$(date +%s.%N)
E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$E2E/../.." && pwd)
WORK=$E2E/.work
RUN=$WORK/run
VENV=$WORK/venv
JS=$E2E/js
PY=python3
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ beside the helpers
HELP="$PY $E2E/lib/e2e.py"
REPORT="$PY $E2E/lib/report.py"
INSTALL="$PY $E2E/lib/install.py"
# Every check of this run, from bash, Python and node, one word a line.
export REPORT_TALLY=$RUN/results.txt
PIDS=()
cd "$ROOT" || exit 1

rm -rf "$RUN"
mkdir -p "$RUN" "$WORK/keys"
: >"$REPORT_TALLY"

# ---------------------------------------------------------------- reporting
# Bash stays for this suite: it is mostly starting Debian's servers and
# writing their configurations; its checks go through lib/report.py.

elapsed() { $PY -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$1"; }
say() { printf '# %s\n' "$*"; }
pass() { $REPORT pass "$1"; }
fail() { $REPORT fail "$1" "${2:-}"; }
# The checks of a helper that is not Python (node), into the tally too.
collect() { $REPORT collect; }
step_start() { STEP_T=$(date +%s.%N); }
step_done() { say "$1 ($(elapsed "$STEP_T") s)"; }

# A setup step that fails ends the run (as one failed check) with the log tail.
die() {
    fail "$1" "$2"
    if [ -n "${3:-}" ] && [ -f "$3" ]; then
        say "last lines of $3:"
        tail -n 25 "$3" | sed 's/^/#   /'
    fi
    exit 1
}

alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }

cleanup() {
    local rc=$? pid i deadline
    trap - EXIT INT TERM
    if [ "${E2E_KEEP:-0}" = 1 ] && [ -t 0 ]; then
        read -r -p "# E2E_KEEP=1: processes still running (state in $RUN); press Enter to stop them " _ || true
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    deadline=$(($(date +%s) + 10))
    for pid in "${PIDS[@]}"; do
        while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    [ -s "$REPORT_TALLY" ] || fail "e2e: checks ran" "none did (exit status $rc)"
    grep -q '^FAIL$' "$REPORT_TALLY" && say "logs and state: $RUN"
    say "elapsed: $(elapsed "$T0") s"
    $REPORT summary
    exit $?
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start a background process, remember its PID. $1 = log file, rest = command.
start_bg() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}

json_get() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); [d:=d[k] for k in sys.argv[2:]]; print(d)" "$@"; }

# shellcheck source=tests/e2e/relay.sh
. "$E2E/relay.sh"

# ---------------------------------------------------------------- 0. tools

for tool in python3 node npm cargo; do
    command -v "$tool" >/dev/null || die "tool $tool present" "not found in PATH"
done

# ---------------------------------------------------------------- 1. builds, in the background

step_start
CARGO_LOG=$RUN/cargo-build.log
start_bg "$CARGO_LOG" cargo build --release --locked -p matrix-turnify -p turnify-fakes --bin matrix-turnify --bin fake_cloudflare
CARGO_PID=$LAST_PID

# npm ci only when the lock file changed since the last successful install.
NPM_LOG=$RUN/npm-ci.log
start_bg "$NPM_LOG" $INSTALL npm-ci "$JS"
NPM_PID=$LAST_PID

# ---------------------------------------------------------------- 2. Debian packages

want_caddy=0
if [ -f deploy/caddy/Caddyfile ] && [ "${E2E_SKIP_CADDY:-0}" != 1 ]; then want_caddy=1; fi
APT_LOG=$RUN/apt.log
pkgs=()
command -v nginx >/dev/null || pkgs+=(nginx)
if [ "$want_caddy" = 1 ] && ! command -v caddy >/dev/null; then pkgs+=(caddy); fi
relay_pkgs=()
if [ "${E2E_SKIP_RELAY:-0}" != 1 ]; then
    command -v turnserver >/dev/null || relay_pkgs+=(coturn)
    command -v chromium >/dev/null || relay_pkgs+=(chromium)
    command -v firefox-esr >/dev/null || relay_pkgs+=(firefox-esr)
    command -v certutil >/dev/null || relay_pkgs+=(libnss3-tools)
    pkgs+=("${relay_pkgs[@]}")
fi
if [ ${#pkgs[@]} -gt 0 ]; then
    say "installing ${pkgs[*]} with apt-get"
    # What is still missing is said below: nginx ends the run, the others their own checks.
    $INSTALL apt "${pkgs[@]}" >>"$APT_LOG" 2>&1 || say "$(tail -n 1 "$APT_LOG") (see $APT_LOG)"
fi
command -v nginx >/dev/null || die "nginx installed" "no nginx binary after apt-get"
have_caddy=0
if [ "$want_caddy" = 1 ] && command -v caddy >/dev/null; then have_caddy=1; fi

# ---------------------------------------------------------------- 3. Synapse venv

step_start
$INSTALL venv "$VENV" "matrix-synapse==$SYNAPSE_VERSION" >"$RUN/pip.log" 2>&1 ||
    die "pip install matrix-synapse==$SYNAPSE_VERSION" "failed" "$RUN/pip.log"
step_done "matrix-synapse $SYNAPSE_VERSION in $VENV"
KEY=$WORK/keys/signing.key
if [ ! -s "$KEY" ]; then
    "$VENV/bin/generate_signing_key" -o "$KEY.tmp" && mv "$KEY.tmp" "$KEY" || die "signing key" "generate_signing_key failed"
fi

# ---------------------------------------------------------------- 4. three Synapses
#   A: no TURN            (main checks, nginx/caddy, matrix-js-sdk)
#   B: turn_allow_guests: false
#   C: turn_uris + turn_shared_secret (fallback), pointing at relay.sh's coturn

step_start
read -r SP_A SP_B SP_C DP_A DP_B DP_C NGX_PORT CADDY_PORT RELAY_PORT RELAY_TLS_PORT RELAY_DAEMON_PORT NGX_SHADOW_PORT < <($HELP ports 12)
relay_prepare
SECRET="e2e-registration-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
declare -A SYN_PID
for v in A B C; do
    port_var=SP_$v
    d=$RUN/synapse-$v
    $HELP synapse-config --dir "$d" --port "${!port_var}" --variant "$v" --signing-key "$KEY" --shared-secret "$SECRET" \
        --turn-uris "$RELAY_SYNAPSE_URIS" --turn-secret "$RELAY_SECRET" ||
        die "synapse $v config" "generation failed"
    start_bg "$d/stdout.log" "$VENV/bin/python" -m synapse.app.homeserver -c "$d/homeserver.yaml"
    SYN_PID[$v]=$LAST_PID
done
for v in A B C; do
    port_var=SP_$v
    d=$RUN/synapse-$v
    $HELP wait-http "http://127.0.0.1:${!port_var}/health" --timeout 60 --pid "${SYN_PID[$v]}" >/dev/null 2>"$d/wait.err" ||
        die "synapse $v up" "$(cat "$d/wait.err")" "$d/homeserver.log"
done
step_done "Synapse A/B/C healthy on ports $SP_A $SP_B $SP_C"

step_start
declare -A REG_PID
for v in A B C; do
    port_var=SP_$v
    "$VENV/bin/register_new_matrix_user" -u alice -p alice-password -a \
        -c "$RUN/synapse-$v/homeserver.yaml" "http://127.0.0.1:${!port_var}" >"$RUN/synapse-$v/register.log" 2>&1 &
    REG_PID[$v]=$!
done
# A second user on A, for the per-user budget.
"$VENV/bin/register_new_matrix_user" -u bob -p bob-password --no-admin \
    -c "$RUN/synapse-A/homeserver.yaml" "http://127.0.0.1:$SP_A" >"$RUN/synapse-A/register-bob.log" 2>&1 &
REG_PID[bob]=$!
for v in A B C; do
    wait "${REG_PID[$v]}" || die "register_new_matrix_user on Synapse $v" "failed" "$RUN/synapse-$v/register.log"
done
wait "${REG_PID[bob]}" || die "register_new_matrix_user bob on Synapse A" "failed" "$RUN/synapse-A/register-bob.log"

STATE=$RUN/state.json
$PY - "$STATE" <<EOF || die "state file" "could not write $STATE"
import json, sys
u = lambda p: f"http://127.0.0.1:{p}"
alice = lambda *labels: [[l, "alice", "alice-password"] for l in labels]
s = {
  "synapse": {
    "A": {"url": u($SP_A), "log": "$RUN/synapse-A/homeserver.log",
          "logins": alice("main", "query", "head", "js_ok", "js_fail", "nginx", "caddy", "odd_x", "odd_y",
                          "relay_chromium", "relay_firefox", "budget", "budget_fresh")
              + [[l, "bob", "bob-password"] for l in ("budget_bob", "budget_bob_fresh")]},
    "B": {"url": u($SP_B), "log": "$RUN/synapse-B/homeserver.log",
          "logins": alice("main"), "guests": ["guest"]},
    "C": {"url": u($SP_C), "log": "$RUN/synapse-C/homeserver.log",
          "logins": alice("main", "second", "relay_chromium", "relay_firefox"),
          "turn_shared_secret": "$RELAY_SECRET",
          "turn_uris": "$RELAY_SYNAPSE_URIS".split(",")},
  },
}
json.dump(s, open(sys.argv[1], "w"), indent=1)
EOF
$HELP tokens "$STATE" 2>"$RUN/tokens.err" || die "log in users and register guests" "$(tail -n 3 "$RUN/tokens.err")"
step_done "users registered and logged in"

# ---------------------------------------------------------------- 5. daemon + fake Cloudflare

step_start
wait "$CARGO_PID"
CARGO_RC=$?
[ "$CARGO_RC" -eq 0 ] || die "cargo build --release --locked -p matrix-turnify -p turnify-fakes --bin matrix-turnify --bin fake_cloudflare" "exit $CARGO_RC" "$CARGO_LOG"
step_done "cargo build done (started at the beginning, in parallel)"
BIN=$ROOT/target/release/matrix-turnify
FAKE=$ROOT/target/release/fake_cloudflare
[ -x "$BIN" ] && [ -x "$FAKE" ] || die "built binaries present" "$BIN or $FAKE missing"

step_start
declare -A FAKE_BASE
for v in A B C; do
    extra=()
    [ "$v" = C ] && extra=(--fail-status 503)
    log=$RUN/fake-cloudflare-$v.log
    start_bg "$log" "$FAKE" --listen 127.0.0.1:0 --key-id e2e-key --api-token e2e-token "${extra[@]}"
    base=$($HELP wait-line "$log" '^listening on (http://127\.0\.0\.1:[0-9]+/v1)\s*$' --timeout 30 --pid "$LAST_PID" 2>"$log.err") ||
        die "fake Cloudflare $v started" "$(cat "$log.err")" "$log"
    FAKE_BASE[$v]=$base
done

declare -A DAEMON_PID
for v in A B C; do
    dport_var=DP_$v
    sport_var=SP_$v
    log=$RUN/daemon-$v.log
    # B's short Synapse timeout is what the synapse-down checks wait out.
    timeout=10
    [ "$v" = B ] && timeout=2
    start_bg "$log" env -i PATH="$PATH" HOME="$HOME" \
        LISTEN_ADDR="127.0.0.1:${!dport_var}" \
        SYNAPSE_TIMEOUT_SECONDS="$timeout" \
        SYNAPSE_BASE_URL="http://127.0.0.1:${!sport_var}" \
        CF_TURN_KEY_ID=e2e-key CF_TURN_API_TOKEN=e2e-token \
        CF_TURN_API_BASE_URL="${FAKE_BASE[$v]}" \
        LOG_LEVEL=debug "$BIN"
    DAEMON_PID[$v]=$LAST_PID
done
for v in A B C; do
    dport_var=DP_$v
    $HELP wait-http "http://127.0.0.1:${!dport_var}/healthz" --timeout 30 --pid "${DAEMON_PID[$v]}" >/dev/null 2>"$RUN/daemon-$v.wait" ||
        die "matrix-turnify $v /healthz" "$(cat "$RUN/daemon-$v.wait")" "$RUN/daemon-$v.log"
done
step_done "fake Cloudflare and matrix-turnify A/B/C up on ports $DP_A $DP_B $DP_C"

$PY - "$STATE" <<EOF || die "state file" "could not update $STATE"
import json, sys, urllib.parse
s = json.load(open(sys.argv[1]))
fakes = {"A": "${FAKE_BASE[A]}", "B": "${FAKE_BASE[B]}", "C": "${FAKE_BASE[C]}"}
s["fake"] = {k: {"base": v, "origin": "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(v))} for k, v in fakes.items()}
s["daemon"] = {k: {"url": f"http://127.0.0.1:{p}", "log": f"$RUN/daemon-{k}.log"}
               for k, p in {"A": $DP_A, "B": $DP_B, "C": $DP_C}.items()}
s["daemon"]["B"]["synapse_timeout"] = 2
s["synapse"]["B"]["pid"] = ${SYN_PID[B]}
json.dump(s, open(sys.argv[1], "w"), indent=1)
EOF

# ---------------------------------------------------------------- 6. reverse proxies (deploy/ snippets)

step_start
NGX=$RUN/nginx
mkdir -p "$NGX/temp"
nginx_ok=0
if [ ! -f deploy/nginx/upstreams.conf ] || [ ! -f deploy/nginx/matrix-turnify.conf ]; then
    fail "nginx: deploy/nginx/upstreams.conf and matrix-turnify.conf exist" "missing"
else
    # Only the two backend addresses change; the location rules are included as shipped.
    sed -e "s/server[[:space:]]\+matrix-turnify:4499;/server 127.0.0.1:$DP_A;/" \
        -e "s/server[[:space:]]\+synapse:8008;/server 127.0.0.1:$SP_A;/" \
        deploy/nginx/upstreams.conf >"$NGX/upstreams.conf"
    if [ "$(grep -c "server 127.0.0.1:\($DP_A\|$SP_A\);" "$NGX/upstreams.conf")" != 2 ]; then
        fail "nginx: upstreams.conf has 'server matrix-turnify:4499;' and 'server synapse:8008;'" \
            "substitution did not find both lines"
    else
        {
            [ "$(id -u)" = 0 ] && echo "user root;"
            cat <<EOF
worker_processes 1;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/error.log info;
events { worker_connections 256; }
http {
    access_log $NGX/access.log;
    client_body_temp_path $NGX/temp/client_body;
    proxy_temp_path $NGX/temp/proxy;
    fastcgi_temp_path $NGX/temp/fastcgi;
    uwsgi_temp_path $NGX/temp/uwsgi;
    scgi_temp_path $NGX/temp/scgi;
    include $NGX/upstreams.conf;
    server {
        listen 127.0.0.1:$NGX_PORT;
        server_name localhost;
        include $ROOT/deploy/nginx/matrix-turnify.conf;
    }
    # The trap of Synapse's own nginx guide: its regex location, written
    # before ours, wins for every /_matrix path (check --public-url must
    # say so).
    server {
        listen 127.0.0.1:$NGX_SHADOW_PORT;
        server_name localhost;
        location ~ ^(/_matrix|/_synapse/client) {
            proxy_pass http://synapse;
        }
        include $ROOT/deploy/nginx/matrix-turnify.conf;
    }
}
EOF
        } >"$NGX/nginx.conf"
        if ! nginx -t -q -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" >"$NGX/test.log" 2>&1; then
            fail "nginx: configuration with the deploy snippets is valid (nginx -t)" "$(tr '\n' ' ' <"$NGX/test.log")"
        else
            start_bg "$NGX/stdout.log" nginx -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log"
            if $HELP wait-http "http://127.0.0.1:$NGX_PORT/_matrix/client/versions" --timeout 20 --pid "$LAST_PID" >/dev/null 2>"$NGX/wait.err"; then
                pass "nginx: started with deploy/nginx/upstreams.conf + matrix-turnify.conf"
                nginx_ok=1
            else
                fail "nginx: started with the deploy snippets" "$(cat "$NGX/wait.err"; tail -n 5 "$NGX/error.log")"
            fi
        fi
    fi
fi

caddy_ok=0
CADDY=$RUN/caddy
if [ "$want_caddy" = 1 ] && [ "$have_caddy" = 0 ]; then
    fail "caddy: Debian package installed for deploy/caddy/Caddyfile" "no caddy binary (see $APT_LOG)"
elif [ "$have_caddy" = 1 ]; then
    mkdir -p "$CADDY/home"
    # Global options must come first; the shipped Caddyfile is imported as is and
    # its backend and site addresses are set through the environment placeholders
    # it documents.
    cat >"$CADDY/Caddyfile" <<EOF
{
	admin off
	auto_https off
	storage file_system $CADDY/home/data
}
import $ROOT/deploy/caddy/Caddyfile
EOF
    caddy_env=(env -i PATH="$PATH" HOME="$CADDY/home" XDG_DATA_HOME="$CADDY/home/data" XDG_CONFIG_HOME="$CADDY/home/config"
        MATRIX_SITE_ADDRESS="http://127.0.0.1:$CADDY_PORT"
        MATRIX_TURNIFY_UPSTREAM="127.0.0.1:$DP_A"
        SYNAPSE_UPSTREAM="127.0.0.1:$SP_A")
    if ! "${caddy_env[@]}" caddy validate --config "$CADDY/Caddyfile" --adapter caddyfile >"$CADDY/validate.log" 2>&1; then
        fail "caddy: configuration with deploy/caddy/Caddyfile is valid (caddy validate)" "$(tail -n 3 "$CADDY/validate.log" | tr '\n' ' ')"
    else
        start_bg "$CADDY/caddy.log" "${caddy_env[@]}" caddy run --config "$CADDY/Caddyfile" --adapter caddyfile
        if $HELP wait-http "http://127.0.0.1:$CADDY_PORT/_matrix/client/versions" --timeout 20 --pid "$LAST_PID" >/dev/null 2>"$CADDY/wait.err"; then
            pass "caddy: started with deploy/caddy/Caddyfile ($(caddy version 2>/dev/null | cut -d' ' -f1))"
            caddy_ok=1
        else
            fail "caddy: started with deploy/caddy/Caddyfile" "$(cat "$CADDY/wait.err"; tail -n 5 "$CADDY/caddy.log")"
        fi
    fi
else
    say "caddy: skipped (no deploy/caddy/Caddyfile, or E2E_SKIP_CADDY=1)"
fi
step_done "reverse proxies"

$PY - "$STATE" <<EOF || die "state file" "could not update $STATE"
import json, sys
s = json.load(open(sys.argv[1]))
s["proxy"] = {}
if $nginx_ok: s["proxy"]["nginx"] = {"url": "http://127.0.0.1:$NGX_PORT"}
if $caddy_ok: s["proxy"]["caddy"] = {"url": "http://127.0.0.1:$CADDY_PORT"}
A, B = s["synapse"]["A"], s["synapse"]["B"]
s["js"] = {
    "prefix": "matrix-js-sdk",
    "base_url": s["proxy"]["nginx"]["url"] if $nginx_ok else s["daemon"]["A"]["url"],
    "direct_url": s["daemon"]["A"]["url"],
    "user_id": A["users"]["js_ok"],
    "token_ok": A["tokens"]["js_ok"],
    "token_fail": A["tokens"]["js_fail"],
    "fake_url": s["fake"]["A"]["origin"],
    "expect_empty_fallback": True,
    "guest": {"base_url": s["daemon"]["B"]["url"], "user_id": B["users"]["guest"], "token": B["tokens"]["guest"]},
}
json.dump(s, open(sys.argv[1], "w"), indent=1)
EOF

# ---------------------------------------------------------------- 7. checks

step_start
$PY "$E2E/lib/checks.py" "$STATE" daemon
step_done "daemon checks"

step_start
wait "$NPM_PID" || die "npm ci (tests/e2e/js)" "failed" "$NPM_LOG"
E2E_JS_LOG=$RUN/js-library.log node "$JS/turn_check.mjs" "$STATE" 2>"$RUN/js-stderr.log" | tee "$RUN/js.out" | collect
js_rc=${PIPESTATUS[0]}
if [ "$js_rc" -ne 0 ] && ! grep -q '^FAIL  matrix-js-sdk' "$RUN/js.out"; then
    fail "matrix-js-sdk: turn_check.mjs ran" "exit $js_rc: $(tail -n 5 "$RUN/js-stderr.log" | tr '\n' ' ')"
fi
step_done "matrix-js-sdk checks (library log: $RUN/js-library.log)"

step_start
for p in nginx caddy; do
    ok_var=${p}_ok
    [ "${!ok_var}" = 1 ] && $PY "$E2E/lib/checks.py" "$STATE" proxy "$p"
done
step_done "reverse proxy checks"
step_start
# `matrix-turnify check` against the real Synapse: clean with a working
# Cloudflare (A), and naming the failure with a failing one (C).
# The fallback checks switched fake C back to minting: make it fail again.
$PY -c 'import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], data=b"{\"fail_status\":503}", method="POST"), timeout=10)' \
    "$(dirname "${FAKE_BASE[C]}")/__fake/behaviour" || die "fake Cloudflare C set to fail" "POST /__fake/behaviour failed"
for v in A C; do
    sport_var=SP_$v
    out=$RUN/check-$v.out
    env -i PATH="$PATH" HOME="$HOME" \
        SYNAPSE_BASE_URL="http://127.0.0.1:${!sport_var}" \
        CF_TURN_KEY_ID=e2e-key CF_TURN_API_TOKEN=e2e-token \
        CF_TURN_API_BASE_URL="${FAKE_BASE[$v]}" \
        timeout 30 "$BIN" check >"$out" 2>&1
    rc=$?
    if [ "$v" = A ]; then
        if [ "$rc" -eq 0 ] && grep -q '^All 8 checks passed, 1 skipped\.$' "$out" && grep -q '^✓ Synapse answers /health' "$out" &&
            grep -q '^✓ the homeserver refuses /_matrix/client/v3/voip/turnServer without a token (401)$' "$out" &&
            grep -q '^✓ the homeserver refuses /_matrix/client/v3/voip/turnServer with a made-up token (401)$' "$out"; then
            pass "check: a good configuration passes against the real Synapse"
        else
            fail "check: a good configuration passes against the real Synapse" "exit $rc: $(tr '\n' ' ' <"$out")"
        fi
    elif [ "$rc" -eq 1 ] && grep -q '^✗ Cloudflare did not mint a test credential: answered HTTP 503' "$out" &&
        grep -q '^✓ Synapse answers /_matrix/client/versions' "$out"; then
        pass "check: a failing Cloudflare is reported, Synapse still passes"
    else
        fail "check: a failing Cloudflare is reported, Synapse still passes" "exit $rc: $(tr '\n' ' ' <"$out")"
    fi
done
if [ "$nginx_ok" = 1 ]; then
    # The routing self-test through real nginx: routed by the shipped
    # snippet, and shadowed by a regex location written before it.
    ngx_token=$(json_get "$STATE" synapse A tokens nginx)
    for route in routed shadowed; do
        port=$NGX_PORT
        [ "$route" = shadowed ] && port=$NGX_SHADOW_PORT
        out=$RUN/check-public-$route.out
        env -i PATH="$PATH" HOME="$HOME" \
            SYNAPSE_BASE_URL="http://127.0.0.1:$SP_A" \
            CF_TURN_KEY_ID=e2e-key CF_TURN_API_TOKEN=e2e-token \
            CF_TURN_API_BASE_URL="${FAKE_BASE[A]}" \
            timeout 30 "$BIN" check --public-url "http://127.0.0.1:$port" --token "$ngx_token" >"$out" 2>&1
        rc=$?
        url="http://127.0.0.1:$port"
        if [ "$route" = routed ]; then
            if [ "$rc" -eq 0 ] &&
                grep -qF "✓ /_matrix/client/v3/voip/turnServer through $url: a TURN credential from matrix-turnify" "$out" &&
                [ "$(grep -c "^✓ /_matrix/client/.*/voip/turnServer through $url reaches matrix-turnify" "$out")" = 3 ] &&
                grep -qF "✓ /_matrix/client/versions through $url goes straight to the homeserver (200)" "$out"; then
                pass "check --public-url through nginx with deploy/nginx: every turnServer path reaches the daemon, a credential on v3, versions straight to Synapse"
            else
                fail "check --public-url through nginx with deploy/nginx" "exit $rc: $(tr '\n' ' ' <"$out")"
            fi
        else
            if [ "$rc" -eq 1 ] &&
                [ "$(grep -c "^✗ /_matrix/client/.*/voip/turnServer through $url did not pass through matrix-turnify" "$out")" = 4 ] &&
                # shellcheck disable=SC2016 # the backquotes are the hint's own text
                grep -qF 'nginx: the `location ~ ^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$` block is missing, or another regex location' "$out"; then
                pass "check --public-url through nginx with Synapse's regex location first: four ✗, naming the nginx rule"
            else
                fail "check --public-url through nginx with Synapse's regex location first" "exit $rc: $(tr '\n' ' ' <"$out")"
            fi
        fi
    done
fi
! grep -q "$(json_get "$STATE" synapse A tokens nginx)" "$RUN"/check-public-*.out 2>/dev/null ||
    fail "check --public-url prints no access token" "found in $RUN/check-public-*.out"
step_done "check subcommand"

step_start
$PY "$E2E/lib/checks.py" "$STATE" budget
step_done "budget checks (a daemon with egress budgets, its fake Cloudflare's usage set per check)"

# A real call in Chromium and Firefox ESR through coturn (relay.sh).
relay_run

$PY "$E2E/lib/checks.py" "$STATE" final

# ---------------------------------------------------------------- 8. Synapse failing

# Last: it leaves Synapse B dead.
$PY "$E2E/lib/checks.py" "$STATE" synapse-down
# cleanup (EXIT trap) stops everything and prints the summary.
