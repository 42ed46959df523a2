#!/usr/bin/env bash
# Benchmark and soak test for matrix-turnify (SPEC §11). See bench/README.md.
#
#   bash bench/run.sh            # scenarios (a)-(f) at 1 and 64 connections, then (g)
#   bash bench/run.sh soak       # 64 connections of mixed traffic, RSS over time
#   bash bench/run.sh aarch64    # only (g): the aarch64 binary under qemu (emulated)
#
# Environment: BENCH_SECONDS (default 10) per wrk run, SOAK_SECONDS (default 60).
# Everything listens on 127.0.0.1 on kernel-chosen ports; every process this
# script starts is stopped by PID on exit. Logs and state stay in bench/.work.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash bench/run.sh [bench|soak|aarch64]
  bench (default)  scenarios (a)-(f) at 1 and 64 connections, then (g) if it can;
                   BENCH_SECONDS per run (default 10)
  soak             SOAK_SECONDS (default 60) at 64 connections of valid, invalid and
                   failing-upstream traffic; checks for unexpected answers and RSS growth
  aarch64          only scenario (g): the aarch64 binary under qemu-aarch64-static,
                   reuse path, 64 connections (emulated; build the binary first with
                   bash .ci/aarch64-checks.sh --build-only, or set AARCH64_BIN)
EOF
}

MODE=${1:-bench}
case $MODE in
    bench | soak | aarch64) ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac
[[ $# -le 1 ]] || { usage >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH=$ROOT/bench
WORK=$BENCH/.work
BENCH_SECONDS=${BENCH_SECONDS:-10}
SOAK_SECONDS=${SOAK_SECONDS:-60}
[[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_SECONDS must be a positive integer" >&2; exit 2; }
[[ $SOAK_SECONDS =~ ^[1-9][0-9]*$ && $SOAK_SECONDS -ge 15 ]] || {
    echo "SOAK_SECONDS must be an integer of at least 15 (5 s warm-up, then samples)" >&2
    exit 2
}

TOKEN=syt_bench_token
TURN_PATH=/_matrix/client/v3/voip/turnServer
CLK_TCK=$(getconf CLK_TCK)
DAEMON_BIN=$ROOT/target/release/matrix-turnify
FAKE_CF_BIN=$ROOT/target/release/fake_cloudflare
# Scenario (g): the cross-compiled aarch64 binary, where .ci/aarch64-checks.sh
# leaves it, run under qemu-user (no binfmt needed: qemu is named explicitly).
AARCH64_BIN=${AARCH64_BIN:-${AARCH64_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/matrix-turnify-arm64}/target/aarch64-unknown-linux-musl/release/matrix-turnify}
START_EPOCH=$(date +%s)

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

# ---------------------------------------------------------------- processes --

# PIDs of the processes this script started and has not yet reaped.
PIDS=()

track() { PIDS+=("$1"); }

untrack() {
    local pid=$1 kept=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]+"${kept[@]}"}")
}

# True while the process exists and has not exited (a zombie counts as gone).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# Stops one of our children: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 i
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$pid" || break
            sleep 0.05
        done
        if alive "$pid"; then
            log "bench: PID $pid ignored SIGTERM for 5 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    untrack "$pid"
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL PID WHAT [CURL ARGS...]: polls URL until it answers 200, for at
# most 20 s, failing early if PID exits.
wait_http() {
    local url=$1 pid=$2 what=$3 deadline code
    shift 3
    deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        alive "$pid" || die "$what (PID $pid) exited before it was ready; see bench/.work"
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.05
    done
    die "$what did not answer 200 on $url within 20 s"
}

# ------------------------------------------------------------- measurements --

# utime + stime of a process (all its threads, dead ones included), in ticks.
cpu_ticks() {
    local stat f
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }          # fields from 3 (state) on; comm may hold spaces
    read -ra f <<<"$stat"
    echo $((f[11] + f[12]))    # fields 14 (utime) and 15 (stime)
}

# status_kib PID FIELD: a kB figure from /proc/PID/status (VmHWM, VmRSS).
status_kib() {
    awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"
}

kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# kv LINE KEY: the value of KEY=value in a space-separated line.
kv() {
    local pair
    for pair in $1; do
        [[ $pair == "$2="* ]] && { echo "${pair#*=}"; return 0; }
    done
    die "no $2 in wrk output: $1"
}

# --------------------------------------------------------------- components --

# nginx_conf KIND PORT [UPSTREAM_PORT]: writes bench/.work/nginx-KIND/nginx.conf.
# KIND is synapse (fast fake Synapse), synapse-soak (the same, 401 for any
# token but the bench one), msc4166 (a homeserver of the Conduit family
# without TURN: 404 M_NOT_FOUND on turnServer, a user on whoami) or proxy
# (the reference hop in front of the fake).
nginx_conf() {
    local kind=$1 port=$2 upstream=${3:-} dir=$WORK/nginx-$1
    rm -rf "$dir"
    mkdir -p "$dir/tmp"
    {
        cat <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # wrk and the daemon keep connections open for the whole run.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
        case $kind in
        synapse | synapse-soak)
            if [[ $kind == synapse-soak ]]; then
                cat <<EOF
    map \$http_authorization \$bench_token_ok {
        "Bearer $TOKEN" 1;
        default 0;
    }
EOF
            fi
            cat <<EOF
    server {
        listen 127.0.0.1:$port;
        location ~ /voip/turnServer\$ {
            default_type application/json;
            add_header Cache-Control "no-cache, no-store, must-revalidate" always;
            add_header Access-Control-Allow-Origin * always;
EOF
            if [[ $kind == synapse-soak ]]; then
                cat <<'EOF'
            if ($bench_token_ok = 0) {
                return 401 '{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}';
            }
EOF
            fi
            cat <<EOF
            return 200 '{}';
        }
        location = /health {
            default_type text/plain;
            return 200 'OK';
        }
    }
}
EOF
            ;;
        msc4166)
            cat <<EOF
    server {
        listen 127.0.0.1:$port;
        location ~ /voip/turnServer\$ {
            default_type application/json;
            add_header Access-Control-Allow-Origin * always;
            return 404 '{"errcode":"M_NOT_FOUND","error":"Not Found"}';
        }
        location = /_matrix/client/v3/account/whoami {
            default_type application/json;
            return 200 '{"user_id":"@bench:localhost","is_guest":false,"device_id":"BENCH"}';
        }
        location = /health {
            default_type text/plain;
            return 200 'OK';
        }
    }
}
EOF
            ;;
        proxy)
            cat <<EOF
    upstream s {
        server 127.0.0.1:$upstream;
        keepalive 32;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
            ;;
        esac
    } >"$dir/nginx.conf"
}

# start_nginx KIND PORT [UPSTREAM_PORT]: sets NGINX_MASTER and NGINX_WORKER.
start_nginx() {
    local kind=$1 port=$2 dir=$WORK/nginx-$1 i children
    nginx_conf "$@"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" 2>"$dir/config-test.log" ||
        die "nginx rejected $dir/nginx.conf: $(cat "$dir/config-test.log")"
    nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    NGINX_MASTER=$!
    track "$NGINX_MASTER"
    wait_http "http://127.0.0.1:$port/health" "$NGINX_MASTER" "nginx ($kind)"
    NGINX_WORKER=
    for ((i = 0; i < 200; i++)); do
        children=$(pgrep -P "$NGINX_MASTER" || true)
        if [[ -n $children && $children != *$'\n'* ]]; then
            NGINX_WORKER=$children
            break
        fi
        sleep 0.05
    done
    [[ -n $NGINX_WORKER ]] || die "could not find the single worker of nginx ($kind), master PID $NGINX_MASTER"
}

# start_fake_cf LATENCY_MS: sets CF_PID, CF_BASE (…/v1) and CF_ORIGIN.
start_fake_cf() {
    local latency=$1 out=$WORK/fake-cloudflare-$1ms.log i line=
    "$FAKE_CF_BIN" --listen 127.0.0.1:0 --key-id bench-key --api-token bench-token \
        --latency-ms "$latency" >"$out" 2>"$out.stderr" &
    CF_PID=$!
    track "$CF_PID"
    for ((i = 0; i < 400; i++)); do
        line=$(grep -m1 '^listening on ' "$out" || true)
        [[ -n $line ]] && break
        alive "$CF_PID" || die "fake Cloudflare exited; see $out.stderr"
        sleep 0.05
    done
    [[ -n $line ]] || die "fake Cloudflare printed no 'listening on' line within 20 s"
    CF_BASE=${line#listening on }
    CF_ORIGIN=${CF_BASE%/v1}
    wait_http "$CF_ORIGIN/__fake/stats" "$CF_PID" "fake Cloudflare"
}

cf_mints() {
    curl -sf --max-time 5 "$CF_ORIGIN/__fake/stats" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["mints"])'
}

cf_behaviour() {
    curl -sf --max-time 5 -o /dev/null -X POST -H 'Content-Type: application/json' \
        -d "$1" "$CF_ORIGIN/__fake/behaviour"
}

# start_daemon NAME REUSE SYNAPSE_PORT [COMMAND...]: sets DAEMON_PID and
# DAEMON_URL. COMMAND defaults to the release binary; DAEMON_PID is the
# process that runs it (qemu itself for the aarch64 binary: env execs it).
start_daemon() {
    local name=$1 reuse=$2 synapse_port=$3 port
    shift 3
    local cmd=("$@")
    [[ ${#cmd[@]} -gt 0 ]] || cmd=("$DAEMON_BIN")
    port=$(free_port)
    env -i PATH="$PATH" \
        LISTEN_ADDR="127.0.0.1:$port" \
        SYNAPSE_BASE_URL="http://127.0.0.1:$synapse_port" \
        CF_TURN_KEY_ID=bench-key \
        CF_TURN_API_TOKEN=bench-token \
        CF_TURN_API_BASE_URL="$CF_BASE" \
        LOG_LEVEL=warn \
        CREDENTIAL_REUSE="$reuse" \
        "${cmd[@]}" >"$WORK/daemon-$name.log" 2>&1 &
    DAEMON_PID=$!
    track "$DAEMON_PID"
    DAEMON_URL=http://127.0.0.1:$port
    wait_http "$DAEMON_URL/healthz" "$DAEMON_PID" "matrix-turnify ($name)"
}

# One request with the bench token; prints the body, fails on a non-200.
probe() {
    local url=$1 what=$2 out=$WORK/probe.out code
    code=$(curl -s -o "$out" -w '%{http_code}' --max-time 10 \
        -H "Authorization: Bearer $TOKEN" "$url") || true
    [[ $code == 200 ]] || die "$what: probe of $url answered '$code': $(head -c 300 "$out" 2>/dev/null)"
    cat "$out"
}

# --------------------------------------------------------------- bench mode --

ROWS=()
declare -A RPS CPU HWM MINTS
AARCH64_NOTE=""

# run_case ID LABEL CONNS URL PID USE_CF
run_case() {
    local id=$1 label=$2 conns=$3 url=$4 pid=$5 use_cf=$6
    local threads=1 out=$WORK/wrk-$1-c$3.log line
    local m0=0 m1=0 t0 t1 requests duration p50 p99 errors rps cpu hwm mints=-
    if ((conns > 1)); then threads=2; fi
    log "bench: ($id) $label, $conns connection(s), ${BENCH_SECONDS} s"
    if [[ $use_cf == 1 ]]; then m0=$(cf_mints); fi
    t0=$(cpu_ticks "$pid")
    wrk -t"$threads" -c"$conns" -d"${BENCH_SECONDS}s" --latency -s "$BENCH/report.lua" \
        -H "Authorization: Bearer $TOKEN" "$url" >"$out" 2>&1 ||
        die "wrk failed; see $out: $(tail -n 5 "$out")"
    t1=$(cpu_ticks "$pid")
    if [[ $use_cf == 1 ]]; then m1=$(cf_mints); fi
    hwm=$(status_kib "$pid" VmHWM)
    line=$(grep '^BENCH ' "$out") || die "no BENCH line in $out"
    requests=$(kv "$line" requests)
    duration=$(kv "$line" duration_us)
    p50=$(kv "$line" p50_us)
    p99=$(kv "$line" p99_us)
    errors=$(($(kv "$line" non2xx3xx) + $(kv "$line" connect) + $(kv "$line" read) +
        $(kv "$line" write) + $(kv "$line" timeout)))
    ((requests > 0)) || die "wrk completed no requests; see $out"
    rps=$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / r }')
    if [[ $use_cf == 1 ]]; then mints=$(awk -v m=$((m1 - m0)) -v r="$requests" 'BEGIN { printf "%.2f", m * 1000 / r }'); fi
    RPS[$id$conns]=$rps
    CPU[$id$conns]=$cpu
    HWM[$id$conns]=$hwm
    MINTS[$id$conns]=$mints
    ROWS+=("| ($id) $label | $conns | $rps | $(fmt_ms "$p50") | $(fmt_ms "$p99") | $errors | $cpu | $(kib_to_mib "$hwm") | $mints |")
}

fmt_ms() { awk -v us="$1" 'BEGIN { printf "%.2f ms", us / 1000 }'; }

pass_fail() { # pass_fail CONDITION(0/1) TEXT
    if [[ $1 == 1 ]]; then echo "- PASS: $2"; else echo "- FAIL: $2"; fi
}

ensure_tools() {
    local missing=() tool
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    if ((${#missing[@]})); then
        log "bench: installing ${missing[*]} with apt-get"
        apt-get install -y "${missing[@]}" >&2 ||
            { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; } ||
            die "could not install ${missing[*]}"
    fi
    for tool in curl python3 pgrep getconf cargo; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
}

build() {
    log "bench: cargo build --release --locked -p matrix-turnify -p turnify-fakes --bin matrix-turnify --bin fake_cloudflare"
    cargo build --release --locked -p matrix-turnify -p turnify-fakes --bin matrix-turnify --bin fake_cloudflare \
        >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "build failed; see bench/.work/build.log"; }
}

machine_info() {
    local commit dirty=""
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null || true) ]]; then dirty=" (uncommitted changes in src/)"; fi
    echo "## Machine"
    echo
    echo "- nproc: $(nproc)"
    echo "- CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- kernel: $(uname -srm)"
    echo "- load average before measuring: $LOAD_START (1/5/15 min; others' work on the 2 cores skews figures)"
    echo "- tools: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $( (wrk -v 2>&1 || true) | head -n1 | cut -d' ' -f1-2), $(rustc --version 2>/dev/null | cut -d' ' -f1-2)"
    echo "- commit: $commit$dirty"
    echo "- clock ticks: $CLK_TCK/s (CPU figures resolve to 1 tick ÷ requests)"
    echo
}

# Scenario (g): the aarch64 build on the reuse path, under qemu-aarch64-static.
# Emulated: its CPU figure is the qemu process's (translation included) and
# its RSS is qemu's plus the guest's, so it is no hardware figure; next to (c)
# it shows that the aarch64 build does nothing pathological. Needs the fake
# Synapse on SYNAPSE_PORT; starts and stops its own fake Cloudflare.
aarch64_case() {
    local synapse_port=$1 qemu body
    qemu=$(command -v qemu-aarch64-static || true)
    if [[ -z $qemu || ! -x $AARCH64_BIN ]]; then
        AARCH64_NOTE="(g) skipped: needs qemu-aarch64-static and $AARCH64_BIN (bash .ci/aarch64-checks.sh --build-only builds it)"
        log "bench: $AARCH64_NOTE"
        return 0
    fi
    start_fake_cf 0
    start_daemon aarch64-qemu true "$synapse_port" "$qemu" "$AARCH64_BIN"
    body=$(probe "$DAEMON_URL$TURN_PATH" "aarch64 daemon under qemu (reuse)")
    [[ $body == *'"uris"'* ]] || log "bench: warning: the warm-up answer carried no credentials: ${body:0:200}"
    run_case g "aarch64 binary under qemu-user, reuse path (EMULATED)" 64 "$DAEMON_URL$TURN_PATH" "$DAEMON_PID" 1
    stop_pid "$DAEMON_PID"
    stop_pid "$CF_PID"
    AARCH64_NOTE="(g) is EMULATED: $AARCH64_BIN ($(stat -c %s "$AARCH64_BIN") bytes) under $("$qemu" --version | sed -n 1p) on this $(uname -m) machine. CPU is the qemu process's (translation included), RSS qemu's plus the guest's: not a hardware figure."
}

results_header() {
    echo "| scenario | connections | requests/s | p50 | p99 | errors | CPU µs / request | peak RSS MiB | CF mints / 1,000 requests |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
}

aarch64_mode() {
    local synapse_port
    synapse_port=$(free_port)
    start_nginx synapse "$synapse_port"
    probe "http://127.0.0.1:$synapse_port$TURN_PATH" "fake Synapse" >/dev/null
    aarch64_case "$synapse_port"
    [[ ${#ROWS[@]} -gt 0 ]] || die "$AARCH64_NOTE"
    stop_pid "$NGINX_MASTER"
    {
        echo "# matrix-turnify benchmark, scenario (g) only"
        echo
        echo "Command: \`BENCH_SECONDS=$BENCH_SECONDS bash bench/run.sh aarch64\`"
        echo
        machine_info
        results_header
        printf '%s\n' "${ROWS[@]}"
        echo
        echo "$AARCH64_NOTE"
        echo
        echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg); total run time $(($(date +%s) - START_EPOCH)) s."
    } | tee "$WORK/results-aarch64.md"
}

bench_mode() {
    local synapse_port proxy_port fake_worker proxy_worker body
    local wrk_cmd="wrk -t1 -c1 | -t2 -c64 -d${BENCH_SECONDS}s --latency -s bench/report.lua -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:PORT$TURN_PATH"

    synapse_port=$(free_port)
    start_nginx synapse "$synapse_port"
    fake_worker=$NGINX_WORKER
    proxy_port=$(free_port)
    start_nginx proxy "$proxy_port" "$synapse_port"
    proxy_worker=$NGINX_WORKER
    probe "http://127.0.0.1:$synapse_port$TURN_PATH" "fake Synapse" >/dev/null
    probe "http://127.0.0.1:$proxy_port$TURN_PATH" "nginx proxy hop" >/dev/null

    for c in 1 64; do
        run_case a "fake Synapse direct (ceiling)" "$c" "http://127.0.0.1:$synapse_port$TURN_PATH" "$fake_worker" 0
    done
    for c in 1 64; do
        run_case b "nginx proxy hop (reference)" "$c" "http://127.0.0.1:$proxy_port$TURN_PATH" "$proxy_worker" 0
    done

    start_fake_cf 0
    start_daemon reuse true "$synapse_port"
    body=$(probe "$DAEMON_URL$TURN_PATH" "daemon (reuse)")
    [[ $body == *'"uris"'* ]] || log "bench: warning: the warm-up answer carried no credentials: ${body:0:200}"
    for c in 1 64; do
        run_case c "daemon, reuse path" "$c" "$DAEMON_URL$TURN_PATH" "$DAEMON_PID" 1
    done
    stop_pid "$DAEMON_PID"

    # The MSC4166 path: every request is a turnServer 404 plus a whoami.
    local msc4166_port
    msc4166_port=$(free_port)
    start_nginx msc4166 "$msc4166_port"
    start_daemon reuse-whoami true "$msc4166_port"
    body=$(probe "$DAEMON_URL$TURN_PATH" "daemon (reuse, whoami path)")
    [[ $body == *'"uris"'* ]] || log "bench: warning: the warm-up answer through whoami carried no credentials: ${body:0:200}"
    for c in 1 64; do
        run_case f "daemon, reuse path through 404 + whoami" "$c" "$DAEMON_URL$TURN_PATH" "$DAEMON_PID" 1
    done
    stop_pid "$DAEMON_PID"

    start_daemon mint false "$synapse_port"
    probe "$DAEMON_URL$TURN_PATH" "daemon (mint)" >/dev/null
    for c in 1 64; do
        run_case d "daemon, mint every request" "$c" "$DAEMON_URL$TURN_PATH" "$DAEMON_PID" 1
    done
    stop_pid "$DAEMON_PID"
    stop_pid "$CF_PID"

    start_fake_cf 150
    start_daemon mint-150ms false "$synapse_port"
    probe "$DAEMON_URL$TURN_PATH" "daemon (mint, CF +150 ms)" >/dev/null
    for c in 1 64; do
        run_case e "daemon, mint, CF latency 150 ms" "$c" "$DAEMON_URL$TURN_PATH" "$DAEMON_PID" 1
    done
    stop_pid "$DAEMON_PID"
    stop_pid "$CF_PID"

    aarch64_case "$synapse_port"

    {
        echo "# matrix-turnify benchmark"
        echo
        echo "Command: \`BENCH_SECONDS=$BENCH_SECONDS bash bench/run.sh\`"
        echo
        echo "Each row: \`$wrk_cmd\`"
        echo
        machine_info
        echo "## Results"
        echo
        results_header
        printf '%s\n' "${ROWS[@]}"
        echo
        echo "CPU and RSS are of the process under test: (a) the fake Synapse's nginx worker, (b) the proxy's"
        echo "nginx worker, (c)-(f) the daemon (a fresh one per scenario; RSS is VmHWM, peak since start)."
        echo "(f) asks the homeserver twice per request (turnServer, then /account/whoami: SPEC §3.1)."
        echo "$AARCH64_NOTE"
        echo "Errors are wrk's non-2xx/3xx answers plus socket errors."
        echo
        echo "## Targets (SPEC §11)"
        echo
        local c ratio ok max_hwm=0 id
        for c in 1 64; do
            ratio=$(awk -v d="${CPU[c$c]}" -v n="${CPU[b$c]}" 'BEGIN { if (n > 0) printf "%.2f", d / n; else print "inf" }')
            ok=$(awk -v r="$ratio" 'BEGIN { print (r != "inf" && r <= 2) ? 1 : 0 }')
            pass_fail "$ok" "reuse path CPU/request ÷ nginx hop CPU/request at $c connection(s) = ${CPU[c$c]} ÷ ${CPU[b$c]} = ${ratio}× (≤ 2×)"
        done
        for c in 1 64; do
            ratio=$(awk -v f="${CPU[f$c]}" -v r="${CPU[c$c]}" 'BEGIN { if (r > 0) printf "%.2f", f / r; else print "inf" }')
            echo "- whoami path at $c connection(s): ${CPU[f$c]} CPU µs/request, ${ratio}× the plain reuse path (${CPU[c$c]})"
        done
        for id in c1 c64 d1 d64 e1 e64 f1 f64; do
            if ((HWM[$id] > max_hwm)); then max_hwm=${HWM[$id]}; fi
        done
        pass_fail "$((max_hwm < 20 * 1024 ? 1 : 0))" "daemon peak RSS $(kib_to_mib "$max_hwm") MiB (< 20 MiB)"
        pass_fail "$((RPS[e64] >= 400 ? 1 : 0))" "(e) CF latency 150 ms at 64 connections: ${RPS[e64]} requests/s (≥ 400)"
        for c in 1 64; do
            ok=$(awk -v m="${MINTS[c$c]}" 'BEGIN { print (m <= 1) ? 1 : 0 }')
            pass_fail "$ok" "reuse path at $c connection(s): ${MINTS[c$c]} Cloudflare mints per 1,000 requests (≤ 1)"
        done
        echo
        echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg); total run time $(($(date +%s) - START_EPOCH)) s."
    } | tee "$WORK/results.md"
}

# ---------------------------------------------------------------- soak mode --

# sleep_until EPOCH_SECONDS (a timing point of the soak, not a readiness wait)
sleep_until() {
    local now
    now=$(date +%s.%N)
    awk -v t="$1" -v n="$now" 'BEGIN { exit !(t > n) }' &&
        sleep "$(awk -v t="$1" -v n="$now" 'BEGIN { printf "%.3f", t - n }')"
    return 0
}

# since EPOCH: seconds elapsed, one decimal.
since() { awk -v t="$1" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - t }'; }

# Flips the fake Cloudflare between healthy (as it starts) and failing (503)
# every 5 s. The daemon's back-off (SPEC §5: 30 s after 3 failures) means it
# may skip Cloudflare through several healthy windows; that is expected.
flipper() {
    local sp=
    trap '[[ -n $sp ]] && kill "$sp" 2>/dev/null; exit 0' TERM
    while :; do
        sleep 5 & sp=$!; wait "$sp"
        cf_behaviour '{"fail_status":503}' && echo "$(date +%T) fail_status 503" || echo "$(date +%T) flip to fail failed"
        sleep 5 & sp=$!; wait "$sp"
        cf_behaviour '{"ok":true,"latency_ms":0}' && echo "$(date +%T) ok" || echo "$(date +%T) flip to ok failed"
    done
}

soak_mode() {
    local synapse_port body code t0 wrk_pid flip_pid out=$WORK/wrk-soak.log
    local rss_start rss_mid rss_end rss_after hwm line m0 m1 wrk_rc=0 at_start at_mid at_end

    synapse_port=$(free_port)
    start_nginx synapse-soak "$synapse_port"
    start_fake_cf 0
    start_daemon soak false "$synapse_port"

    body=$(probe "$DAEMON_URL$TURN_PATH" "daemon (soak, valid token)")
    [[ $body == *'"uris"'* ]] || log "bench: warning: the valid-token probe carried no credentials: ${body:0:200}"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
        -H 'Authorization: Bearer syt_not_a_valid_token' "$DAEMON_URL$TURN_PATH" || true)
    [[ $code == 401 ]] || die "an invalid token should get 401 from the daemon, got '$code'"
    m0=$(cf_mints)

    flipper >"$WORK/flipper.log" 2>&1 &
    flip_pid=$!
    track "$flip_pid"

    log "bench: soak, 64 connections, ${SOAK_SECONDS} s"
    t0=$(date +%s.%N)
    wrk -t2 -c64 -d"${SOAK_SECONDS}s" --timeout 2s --latency -s "$BENCH/soak.lua" \
        "$DAEMON_URL$TURN_PATH" >"$out" 2>&1 &
    wrk_pid=$!
    track "$wrk_pid"

    sleep_until "$(awk -v t="$t0" 'BEGIN { printf "%.3f", t + 5 }')"
    rss_start=$(status_kib "$DAEMON_PID" VmRSS) at_start=$(since "$t0")
    sleep_until "$(awk -v t="$t0" -v s="$SOAK_SECONDS" 'BEGIN { printf "%.3f", t + s / 2 }')"
    rss_mid=$(status_kib "$DAEMON_PID" VmRSS) at_mid=$(since "$t0")
    sleep_until "$(awk -v t="$t0" -v s="$SOAK_SECONDS" 'BEGIN { printf "%.3f", t + s - 1 }')"
    rss_end=$(status_kib "$DAEMON_PID" VmRSS) at_end=$(since "$t0")

    wait "$wrk_pid" || wrk_rc=$?
    untrack "$wrk_pid"
    stop_pid "$flip_pid"
    ((wrk_rc == 0)) || die "wrk failed ($wrk_rc); see $out: $(tail -n 5 "$out")"
    alive "$DAEMON_PID" || die "the daemon died during the soak; see bench/.work/daemon-soak.log"
    rss_after=$(status_kib "$DAEMON_PID" VmRSS)
    hwm=$(status_kib "$DAEMON_PID" VmHWM)
    m1=$(cf_mints)
    line=$(grep '^SOAK ' "$out") || die "no SOAK line in $out"

    local requests duration unexpected growth rps socket
    requests=$(kv "$line" requests)
    duration=$(kv "$line" duration_us)
    unexpected=$(kv "$line" unexpected)
    socket=$(($(kv "$line" connect) + $(kv "$line" read) + $(kv "$line" write) + $(kv "$line" timeout)))
    rps=$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    growth=$(awk -v a="$rss_start" -v b="$rss_end" 'BEGIN { printf "%.1f", (b - a) * 100 / a }')

    {
        echo "# matrix-turnify soak"
        echo
        echo "Command: \`SOAK_SECONDS=$SOAK_SECONDS bash bench/run.sh soak\`"
        echo
        echo "Load: \`wrk -t2 -c64 -d${SOAK_SECONDS}s --timeout 2s --latency -s bench/soak.lua http://127.0.0.1:PORT$TURN_PATH\`,"
        echo "rotating valid token (v3 path), invalid token, valid token (r0 path); the daemon runs with"
        echo "CREDENTIAL_REUSE=false and the fake Cloudflare flips between healthy and 503 every 5 s."
        echo
        machine_info
        echo "## Results"
        echo
        echo "| measure | value |"
        echo "|---|---:|"
        echo "| requests served | $requests |"
        echo "| requests/s | $rps |"
        echo "| p50 / p99 | $(fmt_ms "$(kv "$line" p50_us)") / $(fmt_ms "$(kv "$line" p99_us)") |"
        echo "| sent with a valid / an invalid token | $(kv "$line" sent_valid) / $(kv "$line" sent_invalid) |"
        echo "| 200 with Cloudflare credentials | $(kv "$line" ok_credentials) |"
        echo "| 200 fallback (Synapse's \`{}\`) | $(kv "$line" ok_fallback) |"
        echo "| 401 | $(kv "$line" unauthorized) |"
        echo "| 5xx | $(kv "$line" status_5xx) |"
        echo "| other statuses | $(kv "$line" status_other) |"
        echo "| socket errors (connect/read/write/timeout) | $socket ($(kv "$line" connect)/$(kv "$line" read)/$(kv "$line" write)/$(kv "$line" timeout)) |"
        echo "| answers of the wrong class | $(kv "$line" misattributed) |"
        echo "| **unexpected** | **$unexpected** |"
        echo "| Cloudflare mints during the soak | $((m1 - m0)) |"
        echo "| fake Cloudflare flips | $(grep -c . "$WORK/flipper.log" || true) |"
        echo "| daemon VmRSS after 5 s warm-up (t = $at_start s) | $(kib_to_mib "$rss_start") MiB |"
        echo "| daemon VmRSS at middle (t = $at_mid s) | $(kib_to_mib "$rss_mid") MiB |"
        echo "| daemon VmRSS at end (t = $at_end s, wrk still running) | $(kib_to_mib "$rss_end") MiB |"
        echo "| daemon VmRSS after the load | $(kib_to_mib "$rss_after") MiB |"
        echo "| daemon peak RSS (VmHWM) | $(kib_to_mib "$hwm") MiB |"
        echo "| daemon log (LOG_LEVEL=warn) | $(wc -l <"$WORK/daemon-soak.log") lines, $(du -h "$WORK/daemon-soak.log" | cut -f1) |"
        echo "| daemon threads at end | $(ls "/proc/$DAEMON_PID/task" | wc -l) |"
        echo "| RSS growth, warm-up → end | $growth % |"
        echo
        echo "## Targets"
        echo
        pass_fail "$((unexpected == 0 ? 1 : 0))" "unexpected answers: $unexpected (must be 0)"
        pass_fail "$(awk -v g="$growth" 'BEGIN { print (g < 10) ? 1 : 0 }')" "RSS growth from after warm-up to end: $growth % (< 10 %)"
        pass_fail "$((hwm < 20 * 1024 ? 1 : 0))" "daemon peak RSS $(kib_to_mib "$hwm") MiB (< 20 MiB)"
        echo
        echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg); total run time $(($(date +%s) - START_EPOCH)) s."
    } | tee "$WORK/soak-results.md"
}

# ------------------------------------------------------------------- main --

mkdir -p "$WORK"
ensure_tools
build
[[ -x $DAEMON_BIN && -x $FAKE_CF_BIN ]] || die "build produced no $DAEMON_BIN or $FAKE_CF_BIN"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
case $MODE in
    bench) bench_mode ;;
    soak) soak_mode ;;
    aarch64) aarch64_mode ;;
esac
