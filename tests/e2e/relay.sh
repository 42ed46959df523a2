# shellcheck shell=bash
# A real call through a real relay, in two real browsers: the part of the
# e2e suite that proves a call connects with the credentials the daemon hands
# out. Sourced by run.sh (it uses run.sh's start_bg, pass/fail, $HELP, $RUN,
# $STATE, the Synapse ports and the built binaries), in two steps:
#
#   relay_prepare  before the Synapses start: picks coturn's ports and secret,
#                  so that Synapse C's turn_uris/turn_shared_secret point at it
#   relay_run      after the daemon checks: starts coturn (and a second one on
#                  127.0.0.1:53 when that port is free), a fake Cloudflare that
#                  mints credentials for it, daemon R in front of Synapse A,
#                  then drives Debian's Chromium and Firefox ESR through
#                  puppeteer-core (js/relay_call.mjs) and checks the result
#                  (lib/relay.py)
#
# Everything listens on loopback. The browsers get iceTransportPolicy "relay",
# so a call can only connect through coturn. What is asserted: both paths of
# the daemon (Cloudflare, and the fallback to Synapse's own coturn
# credentials) connect, relay/relay on both ends, a message each way, coturn
# logged the ALLOCATE for the username; turns: with a certificate from a CA
# made for the run connects over TLS; a wrong password does not connect.
# What is recorded, not asserted: what each browser does with a turn:…:53
# URI, and the time to connected with 5 and with 3 TURN URIs.
#
# Knobs: E2E_SKIP_RELAY=1 skips the browser part; E2E_RELAY_TRIALS (default
# 5) sets the number of timed calls per list length and browser.
#
# Bash, as run.sh that sources it: it starts Debian's coturn with its command
# lines and writes openssl's CA; the result's checks are lib/relay.py's.

RELAY=$RUN/relay

relay_prepare() {
    mkdir -p "$RELAY"
    RELAY_SECRET="e2e-coturn-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    # coturn serves plain TCP and TLS on each TCP listener, so two ports give
    # five distinct URIs: UDP and TCP on RELAY_PORT (Cloudflare's 3478), TCP
    # on RELAY_TLS_PORT (its 80), TLS on RELAY_TLS_PORT (5349) and on
    # RELAY_PORT (443). turns: names localhost: Firefox refuses a turns: URI
    # whose host is an IP address (no candidate, the call fails at once).
    RELAY_SYNAPSE_URIS="turn:127.0.0.1:$RELAY_PORT?transport=udp,turn:127.0.0.1:$RELAY_PORT?transport=tcp,turns:localhost:$RELAY_TLS_PORT?transport=tcp"
}

# coturn on loopback with the TURN REST API scheme. --allow-loopback-peers:
# without it CREATE_PERMISSION towards 127.0.0.1 is "403 Forbidden IP".
# --verbose logs the per-user ALLOCATE lines the checks look for. Relay ports
# above the kernel's ephemeral range, so that no client socket takes them.
relay_coturn() {
    local log=$1 port=$2 minp=$3 maxp=$4
    shift 4
    start_bg "$log" turnserver -n --no-cli --log-file=stdout --simple-log --pidfile="$log.pid" \
        --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$port" \
        --min-port="$minp" --max-port="$maxp" --allow-loopback-peers --no-dtls \
        --use-auth-secret --static-auth-secret="$RELAY_SECRET" --realm=matrix-turnify.e2e \
        --verbose "$@"
}

relay_run() {
    if [ "${E2E_SKIP_RELAY:-0}" = 1 ]; then
        say "relay: skipped (E2E_SKIP_RELAY=1)"
        return
    fi
    step_start
    local t
    for t in turnserver chromium firefox-esr certutil openssl node; do
        command -v "$t" >/dev/null || {
            fail "relay: tool $t present" "not in PATH (Debian packages coturn chromium firefox-esr libnss3-tools)"
            return
        }
    done

    # A throwaway CA and a certificate for coturn's TLS (localhost and
    # 127.0.0.1), trusted by the browsers through their NSS databases: the
    # ~/.pki/nssdb Chromium reads (HOME points at the run's own home) and the
    # Firefox profile's cert9.db.
    local ca=$RELAY/ca
    mkdir -p "$ca"
    if ! {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=matrix-turnify e2e throwaway CA" -keyout "$ca/ca.key" -out "$ca/ca.pem" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
                -keyout "$ca/turn.key" -out "$ca/turn.csr" &&
            printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" \
                "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" >"$ca/ext.cnf" &&
            openssl x509 -req -in "$ca/turn.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial \
                -days 2 -extfile "$ca/ext.cnf" -out "$ca/turn.pem"
    } >"$ca/openssl.log" 2>&1; then
        fail "relay: test CA and coturn certificate made with openssl" "$(tail -n 3 "$ca/openssl.log" | tr '\n' ' ')"
        return
    fi
    local chome=$RELAY/chromium-home cprof=$RELAY/chromium-profile fprof=$RELAY/firefox-profile db
    mkdir -p "$chome/.pki/nssdb" "$cprof" "$fprof"
    for db in "$chome/.pki/nssdb" "$fprof"; do
        if ! { certutil -N -d "sql:$db" --empty-password &&
            certutil -A -d "sql:$db" -n "matrix-turnify e2e CA" -t C,, -i "$ca/ca.pem"; } >>"$ca/certutil.log" 2>&1; then
            fail "relay: test CA added to $db with certutil" "$(tail -n 3 "$ca/certutil.log" | tr '\n' ' ')"
            return
        fi
    done

    local cot=$RELAY/coturn.log cot53=$RELAY/coturn53.log port53=False
    relay_coturn "$cot" "$RELAY_PORT" 61000 62999 --tls-listening-port="$RELAY_TLS_PORT" \
        --cert="$ca/turn.pem" --pkey="$ca/turn.key"
    local cot_pid=$LAST_PID
    for t in "UDP listener opened on: 127.0.0.1:$RELAY_PORT" "TLS/TCP listener opened on : 127.0.0.1:$RELAY_TLS_PORT"; do
        $HELP wait-line "$cot" "$t" --timeout 20 --pid "$cot_pid" >/dev/null 2>"$cot.wait" || {
            fail "relay: coturn listening ($t)" "$(cat "$cot.wait"; tail -n 5 "$cot")"
            return
        }
    done
    # The second coturn answers on port 53 (UDP and TCP) when nothing else does.
    if $PY -c '
import socket, sys
for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", 53))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
'; then
        relay_coturn "$cot53" 53 63000 64999 --no-tls
        if $HELP wait-line "$cot53" "UDP listener opened on: 127.0.0.1:53" --timeout 20 --pid "$LAST_PID" >/dev/null 2>"$cot53.wait"; then
            port53=True
        else
            say "relay: coturn on 127.0.0.1:53 did not start ($(cat "$cot53.wait")); port 53 not recorded"
        fi
    fi

    # The fake Cloudflare lists Cloudflare's eight URLs, mapped onto the coturn:
    # two stun: and a port-53 turn: the daemon must drop, and the five others.
    local p=$RELAY_PORT pt=$RELAY_TLS_PORT urls base flog=$RELAY/fake-cloudflare.log
    urls="stun:127.0.0.1:$p,stun:127.0.0.1:53"
    urls+=",turn:127.0.0.1:$p?transport=udp,turn:127.0.0.1:53?transport=udp,turn:127.0.0.1:$p?transport=tcp"
    urls+=",turn:127.0.0.1:$pt?transport=tcp,turns:localhost:$pt?transport=tcp,turns:localhost:$p?transport=tcp"
    start_bg "$flog" "$FAKE" --listen 127.0.0.1:0 --key-id e2e-key --api-token e2e-token \
        --turn-secret "$RELAY_SECRET" --turn-urls "$urls"
    base=$($HELP wait-line "$flog" '^listening on (http://127\.0\.0\.1:[0-9]+/v1)\s*$' --timeout 30 --pid "$LAST_PID" 2>"$flog.err") || {
        fail "relay: fake Cloudflare R started" "$(cat "$flog.err")"
        return
    }
    start_bg "$RELAY/daemon.log" env -i PATH="$PATH" HOME="$HOME" \
        LISTEN_ADDR="127.0.0.1:$RELAY_DAEMON_PORT" SYNAPSE_BASE_URL="http://127.0.0.1:$SP_A" \
        CF_TURN_KEY_ID=e2e-key CF_TURN_API_TOKEN=e2e-token CF_TURN_API_BASE_URL="$base" \
        LOG_LEVEL=debug "$BIN"
    $HELP wait-http "http://127.0.0.1:$RELAY_DAEMON_PORT/healthz" --timeout 30 --pid "$LAST_PID" >/dev/null 2>"$RELAY/daemon.wait" || {
        fail "relay: matrix-turnify R /healthz" "$(cat "$RELAY/daemon.wait")"
        return
    }
    step_done "relay: coturn 127.0.0.1:$p/$pt (port 53: $port53), fake Cloudflare R and daemon R up"

    $PY - "$STATE" <<EOF || { fail "relay: state file" "could not update $STATE"; return; }
import json, sys
s = json.load(open(sys.argv[1]))
s["relay"] = {
    "dir": "$RELAY", "secret": "$RELAY_SECRET", "port": $p, "tls_port": $pt, "port53": $port53,
    "coturn_log": "$cot", "coturn53_log": "$cot53", "coturn_version": "$(turnserver --version 2>/dev/null | head -n 1)",
    "daemon": "http://127.0.0.1:$RELAY_DAEMON_PORT",
    "fake_origin": "${base%/v1}", "fake_mint_path": "/v1/turn/keys/e2e-key/credentials/generate-ice-servers",
    "timeout_ms": 15000, "neg_timeout_ms": 5000, "gather_ms": 3000, "trials": ${E2E_RELAY_TRIALS:-5},
    "browsers": {
        "chromium": {"executable": "$(command -v chromium)", "home": "$chome", "profile": "$cprof"},
        "firefox": {"executable": "$(command -v firefox-esr)", "home": "$chome", "profile": "$fprof"},
    },
}
# final checks read daemon R's log for leaked tokens like the others'.
s["daemon"]["R"] = {"url": "http://127.0.0.1:$RELAY_DAEMON_PORT", "log": "$RELAY/daemon.log"}
json.dump(s, open(sys.argv[1], "w"), indent=1)
EOF
    $PY "$E2E/lib/relay.py" plan "$STATE"
    [ -s "$RELAY/plan-firefox.json" ] || return

    step_start
    # One browser after the other, so that the timed calls do not compete.
    local b rc
    for b in chromium firefox; do
        start_bg "$RELAY/node-$b.log" timeout 300 node "$JS/relay_call.mjs" "$RELAY/plan-$b.json" "$RELAY/out-$b.json"
        wait "$LAST_PID"
        rc=$?
        [ "$rc" -eq 0 ] || say "relay: relay_call.mjs for $b exited $rc (see $RELAY/node-$b.log)"
    done
    $PY "$E2E/lib/relay.py" check "$STATE"
    step_done "relay: calls in Chromium and Firefox ESR (details: $RELAY/summary.json)"
}
