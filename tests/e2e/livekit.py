#!/usr/bin/env python3
"""Calls through a real LiveKit v1.13.5 (the Apache-2.0 module
github.com/livekit/livekit-server, built from the Go module proxy by
.ci/go_peers.py into a cache outside the clone), behind the daemon's LiveKit
front door, in Debian's Chromium and Firefox ESR with livekit-client 2.21.0
(npm; the version Element Call's lock resolves).

    python3 tests/e2e/livekit.py        (from anywhere; root on Debian 12)

Everything listens on 127.0.0.1 on ephemeral ports: livekit-server (its own
TURN off, no external IP, its ICE on one UDP port of 127.0.0.1 with loopback
candidates on, no TCP ICE port), Debian's coturn with the TURN REST secret,
the fake Cloudflare minting coturn credentials with that secret (target/
release, built as tests/e2e/run.sh builds it), and the release daemon with
LIVEKIT_SFU_URL pointing at LiveKit. The browsers run through puppeteer-core
(js/livekit_call.mjs); each call is two pages, two participants of one room,
each publishing a canvas video track and sending data. The pages ask for
relay only (iceTransportPolicy "relay") and bring no ICE servers, so the
server's list is used: LiveKit's own holds only a STUN entry, so a call
connects through the TURN entry the daemon adds, or not at all.

Asserted, per browser and signalling path (v1: livekit-client's default,
one peer connection, /rtc/v1; v0: singlePeerConnection false, two, /rtc):
- both participants connect through the front door; each receives the
  other's video track and data message;
- each peer connection's configuration holds LiveKit's STUN entry and then
  the daemon's TURN entry (the fake Cloudflare's URIs and a username it
  minted), and the first candidate is gathered only once that entry is set;
- getStats: every live peer connection's selected candidate pair succeeded,
  its local candidate is `relay`;
- coturn logged a successful ALLOCATE for the injected username;
- the daemon logged each signalling connection on that path, one Cloudflare
  mint per participant;
- a resume: participant A's signalling WebSocket is cut (livekit-client's
  "signal-reconnect" scenario); the client resumes (not a full restart),
  the ReconnectResponse carried the daemon's entry too (the configuration
  livekit-client sets after the resume holds it, and the daemon counted that
  connection "reused": spliced with the same credential), and data goes
  both ways afterwards over a relay pair.
Negative control, per browser: the same call straight to LiveKit under the
relay policy does not connect within a bounded wait.

Then, without a browser (lib/lkclient.py's stdlib signalling client), a
second daemon with the verifying key (LIVEKIT_KEY/LIVEKIT_SECRET = LiveKit's
key) and its own fake Cloudflare beside the first:
- refused tokens (signed with a wrong secret, expired, an unknown `iss`),
  through each daemon: the upgrade gets LiveKit's own answer, its status line
  and body byte for byte and its headers but Date and hop-by-hop ones in
  order (the daemon adds none; it sends the names lower-case), no 101, and
  that daemon's fake Cloudflare mints nothing;
- the verifying key: a fresh identity's join carries the daemon's entry and
  is counted turn="cloudflare" with one mint; its second join, "reused", none;
- LIVEKIT_TURN_FOR=publishers, on a third daemon with the verifying key and
  its own fake Cloudflare: a subscribe-only token (`canPublish: false`,
  `canSubscribe: true`) is admitted, LiveKit's join says `can_publish`
  false, the join carries no entry of the daemon's, the connection is
  counted and logged turn="not-publisher", and nothing is minted, not even
  before LiveKit answers; then a token with the grants lk-jwt-service signs
  for every user (roomJoin, roomCreate false, canPublish, canSubscribe and
  canUpdateOwnMetadata true): LiveKit's join says `can_publish` true, and it
  carries the entry, counted "cloudflare", one mint;
- a client hang-up: with the fake Cloudflare answering in 1 s, a client
  drops its TCP connection once the daemon has asked for the credential;
  the daemon shows 0 open signalling connections before the mint lands and
  logs the connection ended by the client, LiveKit logs the participant
  closing (SIGNAL_SOURCE_CLOSE), the mint lands, and the identity's next
  join is "reused" with no new mint;
- LiveKit's RemoveParticipant (Twirp, an admin token) sent through the front
  door: 200, and the client gets LiveKit's leave and close frame through the
  daemon, which logs the connection ended by LiveKit with that close code;
- `matrix-turnify check` next to the keyed daemon, with its configuration
  (SYNAPSE_BASE_URL is the fakes crate's Synapse, fakes/src/bin/fake_synapse.rs,
  answering check's homeserver probes as Synapse does): exits 0, the test join's line lists the fake
  Cloudflare's URIs, the participant left, LiveKit logged
  CLIENT_REQUEST_LEAVE for it and no "error writing to websocket"; with a
  wrong secret, its only ✗ is "LiveKit refused the test join's token (401",
  exit 1; no token (`eyJ`) in either output;
- Debian's nginx (a minimal loopback server block including a copy of
  deploy/nginx/livekit.conf, only its backend address rewritten to the first
  daemon's front door) and Debian's Caddy (deploy/caddy/livekit.Caddyfile
  imported as shipped, its LIVEKIT_SITE_ADDRESS and
  LIVEKIT_FRONT_DOOR_UPSTREAM placeholders set; admin off, no automatic
  HTTPS, bound to 127.0.0.1), plain HTTP, each installed with apt if missing
  (a proxy apt cannot install fails its own checks only). Through each: a v0
  join, from 127.0.0.3 with the client's own X-Forwarded-For, carries the
  daemon's entry (one mint, turn="cloudflare"); the daemon's line for it,
  once the client ends it with a bare close frame (ended_by client), logs
  the first X-Forwarded-For entry as the client (docs/behaviour.md §8):
  the client's claim through nginx, which appends the address it saw, and
  127.0.0.3 through Caddy, which trusts no proxy before it and replaces the
  chain; the connection stays open through 3 s of quiet, and a ping_req gets
  LiveKit's pong_resp; GET / gets LiveKit's 200 OK; a token signed with the
  wrong secret gets LiveKit's 401 (status line and body as LiveKit's), no
  mint;
- the door's limits: an upgrade declaring `Content-Length: 0` with a refused
  token gets LiveKit's 401 within 2 s (LiveKit waits for a declared body),
  one declaring a body gets the daemon's 400 within 2 s, and a /twirp body
  trickling a byte a second of 100,000 declared gets a 408 at the 20 s body
  deadline;
- each browser's largest client message (the daemon's `largest_from_client`
  over its calls) is under FREE_MESSAGE_BYTES and a quarter of
  MAX_CLIENT_MESSAGE_BYTES;
- LiveKit stopped: 10 GET / and 10 upgrades through the front door each get
  502 (the plain reason "LiveKit is unreachable" for the GETs, no 101), and
  the daemon logs at most one warning for the 20.

Recorded (printed and in tests/e2e/.work/livekit/summary.json): per browser,
path and for the resume, the candidate types of the selected pairs, whether
coturn logged the allocation, the time to connected; and when livekit-client
builds its peer connection (before the join frame or after) and whether it
gathers before the server's ICE servers are set; under "faults", LiveKit's
refusal (status, headers), the keyed joins' times, the hang-up's (how soon
the leg closed, the turn word its connection got, when the mint landed),
the removal's close code and the SignalResponse fields after the join,
check's run time, the proxies' join times and logged clients, the limits'
timings, and the warnings logged with LiveKit down; per browser, its
largest client message.

Output and exit status are lib/e2e.py's Suite's (SKIPPED, exit 0, if the
module proxy refuses LiveKit); logs stay in tests/e2e/.work/livekit/.
"""

import base64
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
JS = HERE / "js"
sys.path.insert(0, str(HERE / "lib"))
import e2e  # noqa: E402  (tests/e2e/lib/e2e.py)
import install  # noqa: E402
from supervise import SUPERVISOR  # noqa: E402
import lkclient  # noqa: E402  (lib/lkclient.py: a stdlib signalling client)
from lkclient import jwt  # noqa: E402

WORK = HERE / ".work" / "livekit"
BIN = e2e.DAEMON
LK_KEY = "e2e-livekit-key"
CF_KEY_ID, CF_TOKEN = "livekit-e2e-key", "livekit-e2e-token"
BROWSERS = {"chromium": "chromium", "firefox": "firefox-esr"}
PATHS = {"v1": ("/rtc/v1", True), "v0": ("/rtc", False)}
TIMEOUT_MS, NEG_TIMEOUT_MS = 15000, 6000

SUITE = e2e.Suite("livekit", WORK)
check, start = SUITE.check, SUITE.start


def say(text):
    print(f"# {text}", flush=True)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(secret, identity, room):
    """A browser participant's token: it publishes video and data, and subscribes."""
    now = int(time.time())
    return jwt(secret, {"iss": LK_KEY, "sub": identity, "nbf": now - 10, "exp": now + 3600,
                        "video": {"roomJoin": True, "room": room, "canPublish": True, "canSubscribe": True,
                                  "canPublishData": True}})


# --------------------------------------------------------------------------- installs

def installed():
    """coturn, Chromium, Firefox ESR, nginx and Caddy from Debian, where
    missing (as run.sh does), and node_modules; a proxy that cannot be
    installed fails its own checks only (see proxies())."""
    with open(WORK / "install.log", "w") as log:
        missing = install.apt(["coturn", "chromium", "firefox-esr", "nginx", "caddy"], log)
        npm = install.npm_ci(JS, log)
    still = [p for p in missing if p not in ("nginx", "caddy")]
    return ([f"{' '.join(still)} not installed (see {WORK / 'install.log'})"] if still else []) \
        + ([] if npm else [f"npm ci failed: {e2e.tail(WORK / 'install.log', 5)}"])


# --------------------------------------------------------------------------- processes

def start_coturn(port, secret):
    """coturn as tests/e2e/relay.sh runs it: loopback, the TURN REST scheme,
    loopback peers allowed (LiveKit is on 127.0.0.1), --verbose for the
    per-user ALLOCATE lines."""
    log = WORK / "coturn.log"
    start(log, ["turnserver", "-n", "--no-cli", "--log-file=stdout", "--simple-log",
                f"--pidfile={WORK / 'coturn.pid'}", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
                f"--listening-port={port}", "--min-port=60000", "--max-port=60999",
                "--allow-loopback-peers", "--no-dtls", "--no-tls", "--use-auth-secret",
                f"--static-auth-secret={secret}", "--realm=matrix-turnify.e2e", "--verbose"],
          ready=e2e.line(log, re.escape(f"UDP listener opened on: 127.0.0.1:{port}")), timeout=20)
    return log


def start_livekit(bindir, port, udp_port, secret, stun_port):
    """livekit-server on 127.0.0.1. What makes it offer 127.0.0.1 host
    candidates (mediatransportutil's rtcconfig): enable_loopback_candidate
    (pion's loopback candidates and the UDP mux binding 127.0.0.1) with the
    interface filter on lo; node_ip set, so it neither looks for an external
    IP nor asks STUN servers of its own. tcp_port 0: its TCP ICE listener
    would bind every interface. Its stun_servers is what it hands clients
    instead of Google's and Twilio's, here coturn's own port."""
    cfg = {
        "port": port,
        "bind_addresses": ["127.0.0.1"],
        "keys": {LK_KEY: secret},
        "rtc": {
            "udp_port": udp_port,
            "tcp_port": 0,
            "use_external_ip": False,
            "node_ip": "127.0.0.1",
            "enable_loopback_candidate": True,
            "interfaces": {"includes": ["lo"]},
            "stun_servers": [f"127.0.0.1:{stun_port}"],
        },
        "turn": {"enabled": False},
        "logging": {"level": "info"},
    }
    path = WORK / "livekit.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    p = start(WORK / "livekit.log", [bindir / "livekit-server", "--config", path],
              ready=e2e.url(f"http://127.0.0.1:{port}/"), timeout=60)
    return f"ws://127.0.0.1:{port}", p


def start_fake_cloudflare(name, turn_secret, turn_urls):
    """A fake Cloudflare minting coturn's TURN REST credentials; returns its base URL."""
    return SUITE.start_fake_cloudflare(WORK / f"{name}.log", "--key-id", CF_KEY_ID, "--api-token", CF_TOKEN,
                                       "--turn-secret", turn_secret, "--turn-urls", ",".join(turn_urls))


def daemon_lines(log):
    """The daemon's "signalling connection" lines (LOG_FORMAT=json)."""
    out = []
    for line in Path(log).read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("message") == "signalling connection":
            out.append(obj)
    return out


def allocations(log):
    """Usernames coturn logged a successful ALLOCATE for (needs --verbose)."""
    rx = re.compile(r"user <([^>]*)>: incoming packet ALLOCATE processed, success")
    return {m.group(1) for m in rx.finditer(Path(log).read_text(errors="replace"))}


# --------------------------------------------------------------------------- checks of one call

def ours(servers, turn_urls):
    """The daemon's entry in a recorded iceServers list: the TURN URIs of the fake Cloudflare."""
    return [s for s in servers if s["urls"] == turn_urls and s.get("username")]


def livekit_list_problems(servers, stun_port, turn_urls):
    want_stun = [f"stun:127.0.0.1:{stun_port}"]
    if len(servers) != 2 or servers[0]["urls"] != want_stun or not ours(servers[1:], turn_urls):
        return [f"iceServers {servers}, expected LiveKit's {want_stun} then the daemon's {turn_urls}"]
    return []


def pair_problems(pairs, n_pcs):
    problems = []
    live = [p for p in pairs if p.get("pair")]
    if len(live) != n_pcs:
        problems.append(f"{len(live)} peer connections with a selected pair, expected {n_pcs}: {pairs}")
    for p in live:
        pair = p["pair"]
        if pair.get("state") != "succeeded" or (pair.get("local") or {}).get("candidateType") != "relay":
            problems.append(f"pc {p['pc']}: {pair}")
    return problems


def pair_types(pairs):
    return [f"{(p['pair'].get('local') or {}).get('candidateType')}/"
            f"{(p['pair'].get('remote') or {}).get('candidateType')}"
            f"({(p['pair'].get('local') or {}).get('relayProtocol') or (p['pair'].get('local') or {}).get('protocol')})"
            for p in pairs if p.get("pair")]


def gathering(events):
    """When livekit-client built its first peer connection, with which ICE
    servers, and whether a candidate came before the server's list was set."""
    def first(pred):
        return next((e for e in events if pred(e)), None)
    pc = first(lambda e: e["what"] == "new RTCPeerConnection")
    configured = first(lambda e: e["what"] == "setConfiguration" and e["iceServers"])
    candidate = first(lambda e: e["what"] == "candidate")
    offer = first(lambda e: e["what"] == "setLocalDescription")
    by = ("constructor" if pc and pc["iceServers"] else "setConfiguration" if configured else None)
    servers_ms = pc["ms"] if by == "constructor" else configured["ms"] if by else None
    return {
        # The join carries at least LiveKit's STUN entry: a peer connection
        # built with none was built before the join arrived.
        "pc_built_before_join": bool(pc and not pc["iceServers"]),
        "servers_set_by": by,
        "servers_set_ms": servers_ms,
        "first_setLocalDescription_ms": offer and offer["ms"],
        "first_candidate_ms": candidate and candidate["ms"],
        "gathered_before_servers": bool(candidate and (servers_ms is None or candidate["ms"] < servers_ms)),
    }


def check_call(ctx, b, label, r, case, seen):
    """Checks of one call through the daemon; returns its record."""
    path, single = PATHS[case["path"]]
    rec = {"path": path, "singlePeerConnection": single}
    joins = r.get("joins") or []
    check(f"{b} {label}: both participants connect through the front door",
          [] if len(joins) == 2 and all(j["connectedMs"] is not None for j in joins) and not r.get("error")
          else [f"joins {joins} {r.get('error') or ''}"[:800]])
    rec["connected_ms"] = [j["connectedMs"] for j in joins]
    rec["published_ms"] = [j.get("publishedMs") for j in joins]
    check(f"{b} {label}: each receives the other's video track and data",
          [] if r.get("videoMs") is not None and r.get("exchangeMs") is not None
          else [f"video after {r.get('videoMs')} ms, data after {r.get('exchangeMs')} ms; states {r.get('states')}"[:800]])
    n_pcs = 1 if single else 2
    pairs = r.get("pairs") or [[], []]
    problems, users = [], set()
    for side, ps in zip("ab", pairs):
        for p in ps:
            problems += [f"{side} pc {p['pc']}: {x}" for x in
                         livekit_list_problems(p["iceServers"], ctx["coturn_port"], ctx["turn_urls"])]
            users |= {s["username"] for s in ours(p["iceServers"], ctx["turn_urls"])}
    check(f"{b} {label}: each peer connection holds LiveKit's STUN entry, then the daemon's TURN entry",
          problems or ([] if len(users) == 2 else [f"{len(users)} injected usernames, expected 2 (one per participant)"]))
    problems = []
    for side, ps in zip("ab", pairs):
        problems += [f"{side}: {x}" for x in pair_problems(ps, n_pcs)]
    check(f"{b} {label}: getStats: {n_pcs} peer connection(s) each, selected pair succeeded, local candidate relay",
          problems)
    rec["selected_pairs"] = {side: pair_types(ps) for side, ps in zip("ab", pairs)}
    allocated = allocations(ctx["coturn_log"])
    rec["injected_usernames"] = sorted(users)
    rec["coturn_allocated"] = bool(users) and users <= allocated
    check(f"{b} {label}: coturn logged an ALLOCATE for each injected username",
          [] if rec["coturn_allocated"] else [f"{sorted(users - allocated)} not in {ctx['coturn_log']}"])
    gath = [gathering(ev) for ev in r.get("events") or []]
    rec["gathering"] = gath
    check(f"{b} {label}: no candidate gathered before the server's ICE servers were set",
          [] if len(gath) == 2 and not any(g["gathered_before_servers"] for g in gath) else [f"{gath}"])

    want = expected(case)
    delta, lines, n_mints = seen
    check(f"{b} {label}: the daemon spliced every signalling connection on {path} "
          f"({', '.join(f'{v} {k}' for k, v in want.items())}), one mint per participant",
          ([] if delta == want else [f"ended connections by turn word {delta}, expected {want}"])
          + ([] if lines and all(x.get("path") == path for x in lines) else
             [f"paths {[x.get('path') for x in lines]}"])
          + ([] if n_mints == 2 else [f"{n_mints} mints"]))

    if case["resume"]:
        res = r.get("resume") or {}
        ev = (r.get("events") or [[]])[0]
        cut = next((i for i, e in enumerate(ev) if e["what"].startswith("resume: cutting")), None)
        after = ev[cut:] if cut is not None else []
        words = [e["what"] for e in after]
        check(f"{b} {label} resume: the client resumed its session (not a full restart) once its WebSocket was cut",
              [] if (res.get("cut") or {}).get("reconnected") and "engine resuming" in words
              and "engine signalResumed" in words and "engine restarting" not in words
              else [f"cut {res.get('cut')}, events {words}"[:800]])
        configs = [e for e in after if e["what"] == "setConfiguration"]
        problems = []
        if not configs:
            problems.append("livekit-client set no configuration after the resume")
        for e in configs:
            problems += livekit_list_problems(e["iceServers"], ctx["coturn_port"], ctx["turn_urls"])
        rpairs = res.get("pairs") or [[], []]
        for p in rpairs[0]:
            problems += [f"getConfiguration of pc {p['pc']}: {x}" for x in
                         livekit_list_problems(p["iceServers"], ctx["coturn_port"], ctx["turn_urls"])]
        check(f"{b} {label} resume: the ReconnectResponse carried the daemon's TURN entry "
              f"(the configuration set from it, and getConfiguration() after, hold it)", problems)
        check(f"{b} {label} resume: data goes both ways afterwards",
              [] if res.get("exchangeMs") is not None else [f"states {r.get('states')}"[:800]])
        problems = []
        for side, ps in zip("ab", rpairs):
            problems += [f"{side}: {x}" for x in pair_problems(ps, n_pcs)]
        check(f"{b} {label} resume: getStats after it: selected pairs succeeded, local candidate relay", problems)
        rec["resume"] = {
            "resumed_ms": (res.get("cut") or {}).get("ms"),
            "data_after_ms": res.get("exchangeMs"),
            "selected_pairs": {side: pair_types(ps) for side, ps in zip("ab", rpairs)},
            "reconnect_spliced": delta.get("reused") == 1,
            "coturn_allocated": rec["coturn_allocated"],
        }
    return rec


# --------------------------------------------------------------------------- faults, the key, check

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}
# SignalResponse.leave (livekit_rtc.proto).
SIGNAL_LEAVE = 8


def join_claims(identity, room, key=LK_KEY, exp_in=600):
    now = int(time.time())
    nbf = min(now - 10, now + exp_in - 10)
    return {"iss": key, "sub": identity, "nbf": nbf, "exp": now + exp_in, "video": {"roomJoin": True, "room": room}}


def raw_upgrade(port, path, extra=""):
    """A signalling upgrade on a fresh connection, as livekit-client sends it
    (plus EXTRA, whole header lines); returns (status line, [(name, value)],
    body) of the answer, read to its Content-Length (or chunked end, or EOF)."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: e2e\r\n{extra}\r\n").encode())
        rest = b""

        def more(enough):
            """Reads on into rest until enough(rest); False at EOF before that."""
            nonlocal rest
            while not enough(rest):
                chunk = s.recv(65536)
                if not chunk:
                    return False
                rest += chunk
            return True

        def at_least(n):
            return lambda r: len(r) >= n

        more(lambda r: b"\r\n\r\n" in r)
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        h = {k.lower(): v for k, v in headers}
        if lines[0].split(" ")[1:2] == ["101"]:
            return lines[0], headers, b""
        if "content-length" in h:
            n = int(h["content-length"])
            more(at_least(n))
            return lines[0], headers, rest[:n]
        if h.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                if not more(lambda r: b"\r\n" in r):
                    return lines[0], headers, body
                size_line, _, rest = rest.partition(b"\r\n")
                n = int(size_line.split(b";")[0], 16)
                more(at_least(n + 2))
                body, rest = body + rest[:n], rest[n + 2:]
                if n == 0:
                    return lines[0], headers, body
        s.settimeout(5)
        more(lambda r: False)  # to EOF
        return lines[0], headers, rest


def end_to_end(headers):
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != "date"]


def rtc_query(tok):
    return "/rtc?" + urllib.parse.urlencode({"access_token": tok, "auto_subscribe": "1", "sdk": "js",
                                              "version": "2.21.0", "protocol": "16"})


def lk_join(port, tok):
    """A v0 join (lib/lkclient.py); returns (conn, ICE server URLs)."""
    conn, _, urls = lkclient.join("127.0.0.1", port, tok, timeout=10)
    return conn, urls


def ended_delta(daemon, before, n, timeout=10):
    """Waits until the daemon counted N more ended signalling connections; returns the delta by turn word."""
    def delta():
        now, _ = lkclient.counters(daemon)
        return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}
    e2e.wait_until(lambda: sum(delta().values()) >= n, timeout)
    return delta()


def start_daemon(name, port, env):
    """The release daemon on 127.0.0.1:PORT; returns its URL, its log and its environment."""
    log = WORK / f"{name}.log"
    env = {**env, "LISTEN_ADDR": f"127.0.0.1:{port}"}
    start(log, [BIN], env=env, ready=e2e.url(f"http://127.0.0.1:{port}/healthz"), timeout=30)
    return f"http://127.0.0.1:{port}", log, env


def warnings_since(log, offset):
    n = 0
    for line in Path(log).read_bytes()[offset:].decode(errors="replace").splitlines():
        try:
            if json.loads(line).get("level") == "WARN":
                n += 1
        except ValueError:
            pass
    return n


def refused(ctx, lk, daemons):
    """Three tokens LiveKit refuses, straight and through each daemon: its
    answer comes back as it is, no 101, no mint."""
    secret = lk["secret"]
    cases = {
        "signed with the wrong secret": lambda i: jwt("not-" + secret, join_claims(i, "refused")),
        "expired (exp an hour ago)": lambda i: jwt(secret, join_claims(i, "refused", exp_in=-3600)),
        "of an unknown key (iss)": lambda i: jwt(secret, join_claims(i, "refused", key="no-such-key")),
    }
    for what, make in cases.items():
        tok = make(f"refused-{os.urandom(4).hex()}")
        path = rtc_query(tok)
        want = raw_upgrade(lk["port"], path)
        for label, d in daemons.items():
            before = e2e.fake_mints(d["fake"])
            got = raw_upgrade(d["front_port"], path)
            problems = []
            if want[0].split(" ")[1:2] == ["101"] or not want[0].startswith("HTTP/1.1 4"):
                problems.append(f"LiveKit itself answered {want[0]!r}")
            if got[0] != want[0]:
                problems.append(f"status line {got[0]!r}, LiveKit's {want[0]!r}")
            if got[2] != want[2]:
                problems.append(f"body {got[2][:200]!r}, LiveKit's {want[2][:200]!r}")
            # Names compared as HTTP compares them: the daemon (hyper) sends them lower-case.
            g, w = end_to_end(got[1]), end_to_end(want[1])
            if [(k.lower(), v) for k, v in g] != [(k.lower(), v) for k, v in w]:
                problems.append(f"headers {g}, LiveKit's {w}")
            n = e2e.fake_mints(d["fake"]) - before
            if n:
                problems.append(f"{n} mints")
            check(f"refused token, {what}, through the daemon {label}: LiveKit's answer "
                  f"({want[0].split(' ', 1)[1]}, {len(want[2])}-byte body) byte for byte, its headers but Date and "
                  f"hop-by-hop ones in order, nothing added, no 101, no mint", problems)
        lk["record"].setdefault("refused", {})[what] = {
            "status": want[0], "body_bytes": len(want[2]),
            "headers": [f"{k}: {v}" for k, v in end_to_end(want[1])]}


def join_on(d, query):
    """A v0 join through the daemon D with the query written as given; returns (admitted identity, ICE URLs)."""
    conn, _, body = lkclient.join_on("127.0.0.1", d["front_port"], f"/rtc?{query}&auto_subscribe=1&protocol=16")
    conn.leave(time.monotonic() + 5)
    return lkclient.admitted(body), lkclient.ice_urls(body)


def identity(ctx, lk, daemons):
    """The identity is LiveKit's word, against the real LiveKit: a forged token
    in a pair Go drops, claims Go reads otherwise than a plain JSON reader,
    `jti` for an empty `sub`, fractional dates, and a token without a room
    join grant. Each is what LiveKit admits (or refuses), and what the daemon
    hands out for it."""
    secret = lk["secret"]
    now = int(time.time())
    for label, d in daemons.items():
        room = f"identity-{os.urandom(4).hex()}"
        alice, mallory = f"alice-{room}", f"mallory-{room}"
        m0 = e2e.fake_mints(d["fake"])
        _, alice_urls = join_on(d, f"access_token={jwt(secret, join_claims(alice, room))}")
        forged = jwt("not-" + secret, join_claims(alice, room))
        own = jwt(secret, join_claims(mallory, room))
        problems = [] if alice_urls[-1:] == [ctx["turn_urls"]] else [f"Alice's join: {alice_urls}"]
        tries = 0
        for n in range(15):
            for sep in (";", "%zz"):
                who, urls = join_on(d, f"access_token={forged}{sep}&access_token={own}&n={n}")
                tries += 1
                if who != mallory:
                    problems.append(f"LiveKit admitted {who!r} on {sep!r}")
                if ctx["turn_urls"] in urls:
                    problems.append(f"the daemon's entry in Mallory's join on {sep!r}")
        got = e2e.fake_mints(d["fake"]) - m0
        check(f"identity, {label}: Mallory's real token behind a forged one naming Alice in a pair Go drops "
              f"(';', '%zz'), {tries} joins: LiveKit admits Mallory each time, no join carries the daemon's entry, "
              f"1 mint in all (Alice's)", problems + ([] if got == 1 else [f"{got} mints"]))
        lk["record"].setdefault("identity", {})[label] = {"forged_joins": tries, "mints": got}

        m0, problems = e2e.fake_mints(d["fake"]), []
        head = f'"iss":"{LK_KEY}","nbf":{now - 10},"exp":{now + 600},"video":{{"roomJoin":true,"room":"{room}"}}'
        for claims, admits in ((f'"sub":"carol-{room}","SUB":"dave-{room}"', f"dave-{room}"),
                               (f'"Sub":"dave-{room}"', f"dave-{room}"),
                               (f'"sub":"carol-{room}","\u017fub":"dave-{room}"', f"dave-{room}")):
            who, urls = join_on(d, f"access_token={lkclient.sign(secret, '{' + head + ',' + claims + '}')}")
            if who != admits:
                problems.append(f"{claims}: LiveKit admitted {who!r}")
            if ctx["turn_urls"] in urls:
                problems.append(f"{claims}: the daemon's entry")
        got = e2e.fake_mints(d["fake"]) - m0
        check(f"identity, {label}: claims Go folds (SUB, Sub, \u017fub): LiveKit admits the folded key's "
              f"participant, the daemon hands out nothing and mints nothing",
              problems + ([] if got == 0 else [f"{got} mints"]))

        m0, problems = e2e.fake_mints(d["fake"]), []
        for jti in ("p1", "p2"):
            payload = (f'{{"iss":"{LK_KEY}","sub":"","jti":"{jti}-{room}","nbf":{now - 10}.25,"exp":{now + 600}.5,'
                       f'"video":{{"roomJoin":true,"room":"{room}"}}}}')
            who, urls = join_on(d, f"access_token={lkclient.sign(secret, payload)}")
            if who != f"{jti}-{room}":
                problems.append(f"LiveKit admitted {who!r} for jti {jti}")
            if urls[-1:] != [ctx["turn_urls"]]:
                problems.append(f"jti {jti}: no entry ({urls})")
        got = e2e.fake_mints(d["fake"]) - m0
        check(f"identity, {label}: an empty sub and a jti, fractional nbf and exp: LiveKit admits the jti, each "
              f"participant's join carries the daemon's entry, one mint each",
              problems + ([] if got == 2 else [f"{got} mints"]))

    d = daemons["with LIVEKIT_KEY"]
    m0, problems = e2e.fake_mints(d["fake"]), []
    for video in ('{"room":"r"}', '{"roomJoin":false,"room":"r"}', "null"):
        payload = f'{{"iss":"{LK_KEY}","sub":"joinless-{os.urandom(4).hex()}","exp":{now + 600},"video":{video}}}'
        status = raw_upgrade(d["front_port"], rtc_query(lkclient.sign(secret, payload)))[0]
        if status.split(" ")[1:2] != ["401"]:
            problems.append(f"video {video}: {status}")
    got = e2e.fake_mints(d["fake"]) - m0
    check("identity, with LIVEKIT_KEY: three correctly signed tokens without a room join grant: LiveKit's 401 "
          "each time, no mint", problems + ([] if got == 0 else [f"{got} mints"]))


def verified(ctx, lk, d):
    """The keyed daemon: a fresh identity's join mints, a second join of it reuses."""
    ident, room = f"keyed-{os.urandom(4).hex()}", f"keyed-{os.urandom(4).hex()}"
    tok = jwt(lk["secret"], join_claims(ident, room))
    for n, word in ((1, "cloudflare"), (0, "reused")):
        before, m0 = lkclient.counters(d["daemon"])[0], e2e.fake_mints(d["fake"])
        t = time.monotonic()
        conn, urls = lk_join(d["front_port"], tok)
        ms = round((time.monotonic() - t) * 1000, 1)
        conn.leave(time.monotonic() + 5)
        delta = ended_delta(d["daemon"], before, 1)
        got = e2e.fake_mints(d["fake"]) - m0
        check(f"verifying key: {'a fresh identity' if n else 'the same identity again'}: the join carries the "
              f"daemon's entry, counted turn=\"{word}\", {n} mint{'s' if n != 1 else ''}",
              ([] if urls and urls[-1] == ctx["turn_urls"] else [f"ICE server URLs {urls}"])
              + ([] if delta == {word: 1} else [f"ended connections {delta}"])
              + ([] if got == n else [f"{got} mints"]))
        lk["record"].setdefault("keyed_join_ms", {})[word] = ms


def publishers(ctx, lk, env):
    """A daemon with LIVEKIT_TURN_FOR=publishers and the verifying key: a
    subscribe-only participant gets no entry and costs no mint, a publishing
    one (lk-jwt-service's grants) gets it."""
    fake_base = start_fake_cloudflare("fake-cloudflare-publishers", lk["turn_secret"], ctx["turn_urls"])
    front_port, port = e2e.free_ports(2)
    daemon, log, _ = start_daemon("daemon-publishers", port, {
        **env, "CF_TURN_API_BASE_URL": fake_base, "LIVEKIT_LISTEN_ADDR": f"127.0.0.1:{front_port}",
        "LIVEKIT_TURN_FOR": "publishers", "LIVEKIT_KEY": LK_KEY, "LIVEKIT_SECRET": lk["secret"]})
    fake = fake_base.rsplit("/v1", 1)[0]
    room = f"publishers-{os.urandom(4).hex()}"
    cases = (
        ("a subscribe-only token (canPublish false, canSubscribe true)", "subscriber",
         {"canPublish": False, "canSubscribe": True}, False, "not-publisher", 0),
        ("a token with lk-jwt-service's grants (roomCreate false; canPublish, canSubscribe, canUpdateOwnMetadata "
         "true)", "publisher",
         {"roomCreate": False, "canPublish": True, "canSubscribe": True, "canUpdateOwnMetadata": True},
         True, "cloudflare", 1),
    )
    for what, who, grants, publishes, word, mints in cases:
        claims = join_claims(f"{who}-{room}", room)
        claims["video"].update(grants)
        before, m0 = lkclient.counters(daemon)[0], e2e.fake_mints(fake)
        seen = len(daemon_lines(log))
        conn, _, body = lkclient.join_on("127.0.0.1", front_port, rtc_query(jwt(lk["secret"], claims)))
        conn.leave(time.monotonic() + 5)
        delta = ended_delta(daemon, before, 1)
        lines = e2e.wait_until(lambda: daemon_lines(log)[seen:], 10)
        got = e2e.fake_mints(fake) - m0
        said, urls = lkclient.can_publish(body), lkclient.ice_urls(body)
        check(f"LIVEKIT_TURN_FOR=publishers: {what}: LiveKit's join says can_publish {str(publishes).lower()}, "
              f"{'carries' if publishes else 'does not carry'} the daemon's entry, counted and logged "
              f"turn=\"{word}\", {mints} mint{'s' if mints != 1 else ''}",
              ([] if said is publishes else [f"LiveKit's join says can_publish {said}"])
              + ([] if (ctx["turn_urls"] in urls) is publishes else [f"ICE server URLs {urls}"])
              + ([] if delta == {word: 1} else [f"ended connections {delta}"])
              + ([] if [x.get("turn") for x in lines] == [word] else [f"logged turn {[x.get('turn') for x in lines]}"])
              + ([] if got == mints else [f"{got} mints"]))
        lk["record"].setdefault("publishers", {})[who] = {"can_publish": said, "turn": word, "mints": got}


def hang_up(ctx, lk, d):
    """A client that drops its TCP connection while its join is held for a
    1 s mint: LiveKit's leg ends, the mint lands, the next join reuses it."""
    ident, room = f"hangup-{os.urandom(4).hex()}", f"hangup-{os.urandom(4).hex()}"
    tok = jwt(lk["secret"], join_claims(ident, room))
    e2e.fake_behaviour(d["fake"], {"ok": True, "latency_ms": 1000})
    try:
        before, stats0 = lkclient.counters(d["daemon"])[0], e2e.fake_stats(d["fake"])
        seen_lines = len(daemon_lines(d["log"]))
        t = time.monotonic()
        conn = lkclient.Conn("127.0.0.1", d["front_port"], rtc_query(tok), 10)
        asked = e2e.wait_until(lambda: e2e.fake_stats(d["fake"])["requests"] > stats0["requests"], 5, poll=0.02)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
        dropped = time.monotonic()
        closed = e2e.wait_until(lambda: lkclient.counters(d["daemon"])[1] == 0, 5, poll=0.02)
        closed_ms = round((time.monotonic() - dropped) * 1000)
        minted_then = e2e.fake_stats(d["fake"])["mints"] - stats0["mints"]
        check("client hang-up while its join is held: LiveKit's leg is closed (0 open signalling connections) "
              "before the slow mint lands",
              ([] if asked else ["the daemon did not ask the fake Cloudflare within 5 s"])
              + ([] if closed else ["still open after 5 s"]) + ([] if minted_then == 0 else
                                                                ["the mint had landed first: nothing was held"]))
        gone = e2e.wait_until(lambda: any(
            "participant closing" in line and f'"participant": "{ident}"' in line and "SIGNAL_SOURCE_CLOSE" in line
            for line in (WORK / "livekit.log").read_text(errors="replace").splitlines()), 5)
        check("client hang-up: LiveKit logged the participant closing (SIGNAL_SOURCE_CLOSE)",
              [] if gone else [f"no 'participant closing' line for {ident} in {WORK / 'livekit.log'}"])
        landed = e2e.wait_until(lambda: e2e.fake_stats(d["fake"])["mints"] - stats0["mints"] == 1, 5, poll=0.05)
        delta = ended_delta(d["daemon"], before, 1)
        lines = daemon_lines(d["log"])[seen_lines:]
        ends = [x.get("ended_by") for x in lines]
        check("client hang-up: the daemon logged the connection ended by the client",
              [] if ends == ["client"] else [f"ended_by of its signalling connection lines: {ends}"])
        # LiveKit sends its join at once, so it is almost always held when the
        # client leaves; either way the word says which happened.
        came = [x.get("frames_from_livekit") for x in lines]
        word = "left-while-held" if came == [1] else "no-join"
        check(f"client hang-up: the connection is counted turn={word!r} (LiveKit's frames: {came})",
              [] if delta == {word: 1} else [f"ended connections by turn word: {delta}"])
        # 1: LiveKit's join had come and was held when the client left; 0: it had not come yet.
        lk["record"]["hang_up"] = {"closed_ms_after_drop": closed_ms, "turn": delta,
                                   "frames_from_livekit": [x.get("frames_from_livekit") for x in lines],
                                   "mint_landed_ms_after_upgrade": round((time.monotonic() - t) * 1000)}
    finally:
        e2e.fake_behaviour(d["fake"], {"ok": True})
    before, m0 = lkclient.counters(d["daemon"])[0], e2e.fake_mints(d["fake"])
    conn, urls = lk_join(d["front_port"], tok)
    conn.leave(time.monotonic() + 5)
    after = ended_delta(d["daemon"], before, 1)
    check("client hang-up: the mint still lands, and the identity's next join reuses it",
          ([] if landed else ["the fake Cloudflare counted no mint within 5 s"])
          + ([] if urls and urls[-1] == ctx["turn_urls"] else [f"ICE server URLs {urls}"])
          + ([] if after == {"reused": 1} and e2e.fake_mints(d["fake"]) == m0 else
             [f"next join counted {after}, {e2e.fake_mints(d['fake']) - m0} mints"]))


def removed(lk, d):
    """LiveKit ends a live connection (RemoveParticipant through the front
    door's /twirp): its leave and close reach the client through the daemon."""
    ident, room = f"removed-{os.urandom(4).hex()}", f"removed-{os.urandom(4).hex()}"
    before = lkclient.counters(d["daemon"])[0]
    seen_lines = len(daemon_lines(d["log"]))
    conn, _ = lk_join(d["front_port"], jwt(lk["secret"], join_claims(ident, room)))
    admin = jwt(lk["secret"], {"iss": LK_KEY, "sub": "e2e-admin", "exp": int(time.time()) + 600,
                               "video": {"roomAdmin": True, "room": room}})
    seen, close = [], None
    try:
        st, _, body = e2e.request(f"http://127.0.0.1:{d['front_port']}", "POST",
                                  "/twirp/livekit.RoomService/RemoveParticipant",
                                  [("Authorization", f"Bearer {admin}"), ("Content-Type", "application/json")],
                                  json.dumps({"room": room, "identity": ident}).encode())
        deadline = time.monotonic() + 5
        try:
            while close is None:
                opcode, payload = conn.next_message(deadline)
                if opcode == lkclient.OP_CLOSE:
                    close = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else "no code"
                elif opcode == lkclient.OP_BINARY:
                    seen += [n for n, _, _ in lkclient.fields(payload)]
        except (OSError, lkclient.ProtocolError, TimeoutError) as e:
            close = close or f"no close frame: {e}"
    finally:
        conn.sock.close()
    check("LiveKit removes a participant (RemoveParticipant through the front door's /twirp): "
          "the client gets LiveKit's leave and close frame through the daemon",
          ([] if st == 200 else [f"RemoveParticipant answered {st}: {body[:200]!r}"])
          + ([] if SIGNAL_LEAVE in seen else [f"no leave among the SignalResponse fields {seen}"])
          + ([] if isinstance(close, int) else [str(close)]))
    ended_delta(d["daemon"], before, 1)
    lines = daemon_lines(d["log"])[seen_lines:]
    check("LiveKit removes a participant: the daemon logged the connection ended by LiveKit with its close code",
          [] if [(x.get("ended_by"), x.get("close_code")) for x in lines] == [("livekit", close)]
          else [f"signalling connection lines {lines}"])
    lk["record"]["removed"] = {"close_code": close, "signal_fields_after_join": seen}


def check_command(ctx, lk, d):
    """`matrix-turnify check` with the keyed daemon's configuration, next to it."""
    log = WORK / "livekit.log"
    offset = log.stat().st_size
    t = time.monotonic()
    run = subprocess.run([BIN, "check"], env=d["env"], capture_output=True, text=True, timeout=60)
    lk["record"]["check_s"] = round(time.monotonic() - t, 2)
    (WORK / "check.out").write_text(run.stdout + run.stderr)
    out = run.stdout + run.stderr
    want = (f"✓ a test join through the front door on 127.0.0.1:{d['front_port']} carries the Cloudflare entry: "
            f"{' '.join(ctx['turn_urls'])}")
    lines = out.splitlines()
    check("check with LiveKit's key: passes, its test join carries the fake Cloudflare's entry, the participant left",
          ([] if run.returncode == 0 else [f"exit {run.returncode}"])
          + ([] if any(line == want for line in lines) else [f"no line {want!r}"])
          + ([] if any(line.startswith("✓ the test participant left") for line in lines) else ["no leave line"])
          + ([] if "eyJ" not in out else ["a token in the output"]) + ([] if run.returncode == 0 else [out[-1500:]]))

    def leave_logged():
        text = log.read_bytes()[offset:].decode(errors="replace")
        ids = set(re.findall(r"matrix-turnify-check-[A-Za-z0-9_-]+", text))
        return [i for i in ids if any("CLIENT_REQUEST_LEAVE" in line and i in line for line in text.splitlines())]

    left = e2e.wait_until(leave_logged, 5)
    text = log.read_bytes()[offset:].decode(errors="replace")
    check("check: LiveKit logged CLIENT_REQUEST_LEAVE for the check's participant, no 'error writing to websocket'",
          ([] if left else ["no CLIENT_REQUEST_LEAVE line for a matrix-turnify-check-… participant"])
          + ([] if "error writing to websocket" not in text else ["LiveKit logged 'error writing to websocket'"]))

    env = {**d["env"], "LIVEKIT_SECRET": "not-" + lk["secret"]}
    run = subprocess.run([BIN, "check"], env=env, capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    (WORK / "check-wrong-secret.out").write_text(out)
    failed = [line for line in out.splitlines() if line.startswith("✗")]
    check("check with a wrong secret: '✗ LiveKit refused the test join's token (401', the only ✗, exit 1, no token shown",
          ([] if run.returncode == 1 else [f"exit {run.returncode}"])
          + ([] if len(failed) == 1 and failed[0].startswith("✗ LiveKit refused the test join's token (401")
             else [f"✗ lines {failed}"])
          + ([] if "eyJ" not in out else ["a token in the output"]))


# --------------------------------------------------------------------------- the shipped proxy snippets

# What a client behind the proxy claims it forwards for, and the loopback
# address it connects from: the daemon's own peer is the proxy, 127.0.0.1,
# so the logged client tells the three apart.
CLAIMED, SOURCE = "198.51.100.7", "127.0.0.3"
QUIET_S = 3


def start_nginx(front_port):
    """Debian's nginx on a loopback port, a minimal server block including
    deploy/nginx/livekit.conf with only its backend address changed; returns
    (port, process) or raises RuntimeError."""
    d = WORK / "nginx"
    (d / "temp").mkdir(parents=True)
    shipped = (e2e.ROOT / "deploy" / "nginx" / "livekit.conf").read_text()
    conf, n = re.subn(r"proxy_pass(\s+)http://matrix-turnify:7880;", rf"proxy_pass\g<1>http://127.0.0.1:{front_port};",
                      shipped)
    if n != 1:
        raise RuntimeError(f"deploy/nginx/livekit.conf has {n} 'proxy_pass http://matrix-turnify:7880;' lines, not 1")
    (d / "livekit.conf").write_text(conf)
    (port,) = e2e.free_ports(1)
    (d / "nginx.conf").write_text(e2e.nginx_conf(d, f"""    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        include {d}/livekit.conf;
    }}
""", connections=64, user_root=os.getuid() == 0))
    args = ["-p", d, "-c", d / "nginx.conf", "-e", d / "error.log"]
    test = subprocess.run(["nginx", "-t", "-q", *args], capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        raise RuntimeError(f"nginx -t: {(test.stdout + test.stderr).strip()[-500:]}")
    p = start(d / "stdout.log", ["nginx", *args], ready=e2e.url(f"http://127.0.0.1:{port}/"), timeout=20)
    return port, p


def start_caddy(front_port):
    """Debian's Caddy with deploy/caddy/livekit.Caddyfile imported as shipped,
    its addresses set through the placeholders it documents: plain HTTP, bound
    to 127.0.0.1, no admin endpoint, no automatic HTTPS; returns (port, process)."""
    d = WORK / "caddy"
    (d / "home").mkdir(parents=True)
    (port,) = e2e.free_ports(1)
    # Global options come first; default_bind keeps the listener on loopback
    # (a site address names the host matched, not the one bound).
    (d / "Caddyfile").write_text(f"""{{
\tadmin off
\tauto_https off
\tdefault_bind 127.0.0.1
\tstorage file_system {d}/home/data
}}
import {e2e.ROOT}/deploy/caddy/livekit.Caddyfile
""")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(d / "home"), "XDG_DATA_HOME": str(d / "home" / "data"),
           "XDG_CONFIG_HOME": str(d / "home" / "config"), "LIVEKIT_SITE_ADDRESS": f"http://127.0.0.1:{port}",
           "LIVEKIT_FRONT_DOOR_UPSTREAM": f"127.0.0.1:{front_port}"}
    cmd = ["--config", d / "Caddyfile", "--adapter", "caddyfile"]
    test = subprocess.run(["caddy", "validate", *cmd], env=env, capture_output=True, text=True, timeout=60)
    if test.returncode != 0:
        raise RuntimeError(f"caddy validate: {(test.stdout + test.stderr).strip()[-500:]}")
    p = start(d / "caddy.log", ["caddy", "run", *cmd], env=env, ready=e2e.url(f"http://127.0.0.1:{port}/"), timeout=20)
    return port, p


def close_first(conn):
    """A close frame with no LeaveRequest before it, so that the client ends
    the connection: after a leave, LiveKit's own close can reach the daemon
    first (both came, and who ended it is a race)."""
    try:
        conn.send(lkclient.OP_CLOSE, struct.pack("!H", 1000))
        deadline = time.monotonic() + 5
        while not conn.closed:
            conn.next_message(deadline)
    except (OSError, lkclient.ProtocolError, TimeoutError):
        pass
    finally:
        conn.sock.close()


def quiet_then_ping(conn):
    """Reads for QUIET_S seconds with nothing sent, then a ping_req; returns
    the problems: the connection closed in the quiet spell, or no pong_resp."""
    t = time.monotonic()
    deadline = t + QUIET_S
    try:
        while True:
            opcode, payload = conn.next_message(deadline)
            if opcode == lkclient.OP_CLOSE:
                return [f"closed after {time.monotonic() - t:.1f} s of quiet: {payload[:40]!r}"]
    except TimeoutError:
        pass
    except (OSError, lkclient.ProtocolError) as e:
        return [f"ended after {time.monotonic() - t:.1f} s of quiet: {e}"]
    try:
        conn.send_binary(lkclient.ping_request())
        deadline = time.monotonic() + 5
        while True:
            opcode, payload = conn.next_message(deadline)
            if opcode == lkclient.OP_BINARY and lkclient.is_pong(payload):
                return []
            if opcode == lkclient.OP_CLOSE:
                return [f"closed instead of a pong_resp: {payload[:40]!r}"]
    except (OSError, lkclient.ProtocolError, TimeoutError) as e:
        return [f"no pong_resp within 5 s of the ping_req: {e}"]


def proxies(ctx, lk):
    """Real nginx and Caddy with the shipped LiveKit snippets in front of the
    first daemon's front door: a join carries the daemon's entry and is
    logged with the client the proxy forwards for, the connection outlives a
    quiet spell and answers a ping, GET / and a refused token get LiveKit's
    answers."""
    t = time.monotonic()
    daemon, log, fake = ctx["daemon"], ctx["daemon_log"], ctx["fake_origin"]
    direct_get = e2e.request(f"http://127.0.0.1:{lk['port']}", "GET", "/")
    refused_path = rtc_query(jwt("not-" + lk["secret"], join_claims(f"proxy-refused-{os.urandom(4).hex()}", "proxied")))
    direct_refused = raw_upgrade(lk["port"], refused_path)
    # nginx appends the address it saw to the client's chain; Caddy, trusting
    # no proxy before it, replaces the chain with that address. The daemon
    # logs the first entry (docs/behaviour.md §8).
    plan = {"nginx": (start_nginx, CLAIMED, f"appends the client's address to its X-Forwarded-For, "
                                            f"the first entry ({CLAIMED}) logged"),
            "caddy": (start_caddy, SOURCE, f"replaces the client's X-Forwarded-For with the address it saw "
                                           f"({SOURCE}), logged")}
    running = {}
    for name, (starter, _, _) in plan.items():
        if not shutil.which(name):
            check(f"{name} with the shipped LiveKit snippet: SKIPPED, no {name} binary after apt-get",
                  [f"not installed (see {WORK / 'apt.log'})"])
            continue
        try:
            running[name] = starter(lk["front_port"])
        except (RuntimeError, e2e.WaitError) as e:
            check(f"{name} started with the shipped LiveKit snippet", [str(e)])
    record = {}
    try:
        conns = {}
        for name, (port, _) in running.items():
            ident = f"proxied-{name}-{os.urandom(4).hex()}"
            m0, t0 = e2e.fake_mints(fake), time.monotonic()
            try:
                conn, _, urls = lkclient.join("127.0.0.1", port, jwt(lk["secret"], join_claims(ident, "proxied")),
                                              timeout=10, headers=[("X-Forwarded-For", CLAIMED)], source=SOURCE)
            except (OSError, lkclient.ProtocolError, TimeoutError) as e:
                check(f"{name}: a v0 join through deploy/{name}'s LiveKit snippet carries the daemon's entry", [str(e)])
                continue
            record[name] = {"join_ms": round((time.monotonic() - t0) * 1000, 1)}
            conns[name] = (conn, urls, e2e.fake_mints(fake) - m0)
        # One quiet spell for all: what one connection's wait leaves unread
        # waits in the other's socket.
        quiet = {name: quiet_then_ping(c[0]) for name, c in conns.items()}
        for name, (conn, urls, minted) in conns.items():
            before, seen = lkclient.counters(daemon)[0], len(daemon_lines(log))
            close_first(conn)
            delta = ended_delta(daemon, before, 1)
            lines = daemon_lines(log)[seen:]
            _, want_client, how = plan[name]
            check(f"{name}: a v0 join through deploy/{name}'s LiveKit snippet carries the daemon's entry "
                  f"(the fake Cloudflare's URIs), one mint, counted turn=\"cloudflare\"",
                  ([] if urls and urls[-1] == ctx["turn_urls"] else [f"ICE server URLs {urls}"])
                  + ([] if minted == 1 else [f"{minted} mints"])
                  + ([] if delta == {"cloudflare": 1} else [f"ended connections {delta}"]))
            got = [(x.get("client"), x.get("path"), x.get("ended_by")) for x in lines]
            check(f"{name}: the daemon's line for that connection: {name} {how}, path /rtc, ended by the client",
                  [] if got == [(want_client, "/rtc", "client")] else [f"(client, path, ended_by) of its lines: {got}"])
            check(f"{name}: the connection stays open through {QUIET_S} s of quiet, and a ping_req gets "
                  f"LiveKit's pong_resp through it", quiet[name])
            record[name]["client_logged"] = lines[0].get("client") if lines else None
        for name, (port, _) in running.items():
            base = f"http://127.0.0.1:{port}"
            st, _, body = e2e.request(base, "GET", "/")
            check(f"{name}: GET / through it answers LiveKit's {direct_get[0]} {direct_get[2][:20]!r}",
                  [] if direct_get[0] == 200 and (st, body) == direct_get[::2] else
                  [f"{st} {body[:200]!r}, LiveKit's {direct_get[0]} {direct_get[2][:200]!r}"])
            m0 = e2e.fake_mints(fake)
            got = raw_upgrade(port, refused_path)
            check(f"{name}: a token signed with the wrong secret gets LiveKit's {direct_refused[0].split(' ', 1)[1]} "
                  f"through it (status and body as LiveKit's), no 101, no mint",
                  ([] if direct_refused[0].startswith("HTTP/1.1 401") else [f"LiveKit answered {direct_refused[0]!r}"])
                  + ([] if (got[0], got[2]) == (direct_refused[0], direct_refused[2]) else
                     [f"{got[0]!r} {got[2][:200]!r}, LiveKit's {direct_refused[0]!r} {direct_refused[2][:200]!r}"])
                  + ([] if e2e.fake_mints(fake) == m0 else [f"{e2e.fake_mints(fake) - m0} mints"]))
    finally:
        SUPERVISOR.stop(*(p for _, p in running.values()))
    lk["record"]["proxies"] = {**record, "wall_s": round(time.monotonic() - t, 1)}


def door_limits(lk, d):
    """The LiveKit door's deadlines before a real LiveKit (docs/behaviour.md §10):
    an upgrade that declares an empty body reaches LiveKit declaring none (a
    refused token gets LiveKit's 401 at once, where a kept Content-Length made
    LiveKit wait for the body and the client get a 504 after 20 s); one that
    declares a body gets the daemon's 400 at once; a /twirp body that trickles
    (a byte a second of a declared 100,000) gets a 408 at the 20 s body deadline."""
    forged = jwt("not-the-secret", join_claims("limits", "limits"))
    t = time.monotonic()
    status, _, _ = raw_upgrade(d["front_port"], rtc_query(forged), "Content-Length: 0\r\n")
    empty_s = time.monotonic() - t
    check("limits: an upgrade declaring Content-Length: 0 with a refused token gets LiveKit's 401 within 2 s",
          [] if status.startswith("HTTP/1.1 401") and empty_s < 2 else [f"{status} after {empty_s:.1f} s"])
    t = time.monotonic()
    status, _, _ = raw_upgrade(d["front_port"], rtc_query(forged), "Content-Length: 5\r\n")
    body_s = time.monotonic() - t
    check("limits: an upgrade declaring a body gets the daemon's 400 within 2 s",
          [] if status.startswith("HTTP/1.1 400") and body_s < 2 else [f"{status} after {body_s:.1f} s"])
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", d["front_port"]), timeout=40) as s:
        s.sendall(b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: lk\r\n"
                  b"Content-Type: application/protobuf\r\nContent-Length: 100000\r\n\r\n")
        s.setblocking(False)
        answer = b""
        while time.monotonic() - t < 35:
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                try:
                    s.send(b"\0")
                except OSError:
                    pass
                time.sleep(1)
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
    trickle_s = time.monotonic() - t
    line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    check("limits: a /twirp body trickling a byte a second gets 408 at the 20 s body deadline, and the "
          "connection closes", [] if line.startswith("HTTP/1.1 408") and 19 < trickle_s < 25
          else [f"{line!r} after {trickle_s:.1f} s"])
    lk["record"]["limits"] = {"empty_body_upgrade_s": round(empty_s, 3), "body_upgrade_s": round(body_s, 3),
                              "trickle_s": round(trickle_s, 1)}


def largest_client_messages(b, ctx, after):
    """The largest message the browser's livekit-client sent through the daemon
    on any of its calls (the daemon's largest_from_client), checked against
    src/livekit/proxy.rs's FREE_MESSAGE_BYTES (so a spent relay budget ends no real
    call's message) and its MAX_CLIENT_MESSAGE_BYTES with a margin of four."""
    sizes = [x.get("largest_from_client", 0) for _, lines, _ in after.values() for x in lines]
    largest = max(sizes, default=0)
    source = (e2e.ROOT / "src" / "livekit" / "proxy.rs").read_text()

    def const(name):
        m = re.search(rf"pub const {name}: usize = ([0-9 *]+);", source)
        return math.prod(int(x) for x in m.group(1).split("*")) if m else 0

    bound, free = const("MAX_CLIENT_MESSAGE_BYTES"), const("FREE_MESSAGE_BYTES")
    check(f"{b}: the largest client message ({largest} bytes over {len(sizes)} connections) is under "
          f"FREE_MESSAGE_BYTES ({free}) and a quarter of MAX_CLIENT_MESSAGE_BYTES ({bound})",
          [] if sizes and 0 < largest <= free and largest * 4 <= bound else [f"{largest} of {free}, {bound}"])
    return largest


def livekit_down(lk, d):
    """LiveKit stopped: 502s with the plain reason, no 101, one warning at most."""
    SUPERVISOR.stop(lk["proc"], timeout=15)
    offset = d["log"].stat().st_size
    front = f"http://127.0.0.1:{d['front_port']}"
    plain, upgrades = [], []
    for i in range(10):
        st, _, body = e2e.request(front, "GET", "/")
        plain.append((st, body))
        upgrades.append(raw_upgrade(d["front_port"], rtc_query(jwt(lk["secret"], join_claims(f"down-{i}", "down")))))
    check("LiveKit down: GET / through the front door answers 502 'LiveKit is unreachable' (10 requests)",
          sorted({f"{st} {body!r}" for st, body in plain if (st, body) != (502, b"LiveKit is unreachable\n")}))
    check("LiveKit down: a signalling upgrade answers 502, no 101 (10 requests)",
          sorted({a[0] for a in upgrades if not a[0].startswith("HTTP/1.1 502")}))
    # The daemon logs each request's line at info; the warnings are throttled.
    e2e.wait_until(lambda: len([x for x in d["log"].read_bytes()[offset:].splitlines() if b'"front"' in x]) >= 10, 5)
    n = warnings_since(d["log"], offset)
    check("LiveKit down: the daemon logged at most one warning for the 20 requests", [] if n <= 1 else [f"{n} warnings"])
    lk["record"]["down_warnings"] = n


def faults(ctx, lk, env):
    """Everything after the browser calls: refused tokens, the verifying key, a
    hang-up, a removal, check, LiveKit down. Returns its record."""
    t = time.monotonic()
    lk["record"] = {}
    fake_base = start_fake_cloudflare("fake-cloudflare-keyed", lk["turn_secret"], ctx["turn_urls"])
    # Both at once: a port picked alone could be the other, not yet bound.
    front_port, port = e2e.free_ports(2)
    keyed_env = {**env, "CF_TURN_API_BASE_URL": fake_base, "LIVEKIT_LISTEN_ADDR": f"127.0.0.1:{front_port}",
                 "SYNAPSE_BASE_URL": SUITE.start_fake_synapse(WORK / "fake-synapse.log"), "LIVEKIT_KEY": LK_KEY, "LIVEKIT_SECRET": lk["secret"]}
    daemon, log, keyed_env = start_daemon("daemon-keyed", port, keyed_env)
    keyed = {"daemon": daemon, "log": log, "env": keyed_env, "front_port": front_port,
             "fake": fake_base.rsplit("/v1", 1)[0]}
    plain = {"daemon": ctx["daemon"], "front_port": lk["front_port"], "fake": ctx["fake_origin"]}
    refused(ctx, lk, {"without LIVEKIT_KEY": plain, "with LIVEKIT_KEY": keyed})
    identity(ctx, lk, {"without LIVEKIT_KEY": plain, "with LIVEKIT_KEY": keyed})
    verified(ctx, lk, keyed)
    publishers(ctx, lk, env)
    hang_up(ctx, lk, keyed)
    removed(lk, keyed)
    check_command(ctx, lk, keyed)
    proxies(ctx, lk)
    door_limits(lk, plain)
    livekit_down(lk, keyed)
    lk["record"]["wall_s"] = round(time.monotonic() - t, 1)
    return lk["record"]


# --------------------------------------------------------------------------- main

def main():
    bindir = SUITE.go_peer("livekit", "LiveKit")
    SUITE.fresh_work()
    SUITE.require("coturn, Chromium, Firefox ESR (apt) and livekit-client, puppeteer-core (npm) installed",
                  installed())
    SUITE.cargo_build()

    lk_port, coturn_port, listen_port, front_port, spare = e2e.free_ports(5)
    lk_secret = "e2e-livekit-secret-" + os.urandom(16).hex()
    turn_secret = "e2e-coturn-" + os.urandom(8).hex()
    coturn_log = start_coturn(coturn_port, turn_secret)
    direct, lk_proc = start_livekit(bindir, lk_port, free_udp_port(), lk_secret, coturn_port)
    turn_urls = [f"turn:127.0.0.1:{coturn_port}?transport=udp", f"turn:127.0.0.1:{coturn_port}?transport=tcp"]
    fake_base = start_fake_cloudflare("fake-cloudflare", turn_secret, turn_urls)
    # The LiveKit front door uses no Synapse: any loopback URL will do.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "SYNAPSE_BASE_URL": f"http://127.0.0.1:{spare}",
           "CF_TURN_KEY_ID": CF_KEY_ID, "CF_TURN_API_TOKEN": CF_TOKEN, "CF_TURN_API_BASE_URL": fake_base,
           "LIVEKIT_SFU_URL": f"http://127.0.0.1:{lk_port}", "LIVEKIT_LISTEN_ADDR": f"127.0.0.1:{front_port}",
           "LOG_LEVEL": "info", "LOG_FORMAT": "json"}
    daemon, daemon_log, env = start_daemon("daemon", listen_port, env)
    front = f"ws://127.0.0.1:{front_port}"
    lk_version = re.search(r'"version": "([^"]+)"', Path(WORK / "livekit.log").read_text())
    say(f"livekit-server {lk_version.group(1) if lk_version else '?'} on {direct}, front door {front}, "
        f"coturn 127.0.0.1:{coturn_port}")
    ctx = {"daemon": daemon, "daemon_log": daemon_log, "coturn_log": coturn_log, "coturn_port": coturn_port,
           "turn_urls": turn_urls, "fake_origin": fake_base.rsplit("/v1", 1)[0]}

    cases = [{"name": f"{p}", "path": p, "resume": True, "via": True} for p in PATHS]
    cases.append({"name": "direct", "path": "v1", "resume": False, "via": False})
    summary = {"livekit_server": lk_version.group(1) if lk_version else None, "browsers": {}}
    for b, exe in BROWSERS.items():
        plan_cases = []
        for c in cases:
            room = f"{b}-{c['name']}"
            plan_cases.append({
                "name": c["name"], "url": front if c["via"] else direct,
                "tokens": [token(lk_secret, f"{room}-{x}", room) for x in "ab"],
                "singlePeerConnection": PATHS[c["path"]][1],
                "timeoutMs": TIMEOUT_MS if c["via"] else NEG_TIMEOUT_MS, "resume": c["resume"],
            })
        prof = WORK / f"{b}-profile"
        prof.mkdir()
        plan = {"browser": b, "executable": shutil.which(exe), "profile": str(prof), "home": str(WORK),
                "cases": plan_cases}
        out = run_browser(b, plan, ctx, cases)
        summary["browsers"][b] = out
    lk = {"port": lk_port, "secret": lk_secret, "proc": lk_proc, "front_port": front_port, "turn_secret": turn_secret}
    summary["faults"] = faults(ctx, lk, env)
    (WORK / "summary.json").write_text(json.dumps(summary, indent=1))
    print_table(summary)
    return 0


def expected(case):
    """The daemon's ended signalling connections one call makes, by turn word:
    a mint per participant, and a resume's connection spliced with the reuse."""
    if not case["via"]:
        return {}
    return {"cloudflare": 2, **({"reused": 1} if case["resume"] else {})}


def run_browser(b, plan, ctx, cases):
    """Runs the plan's cases in one browser, reading the daemon's counters
    between them (the driver waits for a line on stdin before each), then
    checks each."""
    record = {"version": None, "livekit_client": None, "calls": {}}
    ofile = WORK / f"out-{b}.json"
    pfile = WORK / f"plan-{b}.json"
    pfile.write_text(json.dumps(plan, indent=1))
    marks = {}  # name -> (ended-connection counts, mints, daemon log lines) before it
    after = {}  # name -> (ended connections by turn word during it, its daemon log lines, its mints)
    t = time.monotonic()
    with open(WORK / f"node-{b}.log", "wb") as err:
        node = SUPERVISOR.start(["timeout", "300", "node", JS / "livekit_call.mjs", pfile, ofile], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        previous = None

        def close(prev):
            ended, n_mints, seen = marks[prev]
            want = expected(by_name[prev])
            delta = ended_delta(ctx["daemon"], ended, sum(want.values()))
            lines = daemon_lines(ctx["daemon_log"])[seen:]
            after[prev] = (delta, lines, e2e.fake_mints(ctx["fake_origin"]) - n_mints)

        by_name = {c["name"]: c for c in cases}
        for line in node.stdout:
            word, _, name = line.strip().partition(" ")
            if word not in ("ready", "end"):
                continue
            if previous is not None:
                close(previous)
            if word == "end":
                break
            marks[name] = (lkclient.counters(ctx["daemon"])[0], e2e.fake_mints(ctx["fake_origin"]),
                           len(daemon_lines(ctx["daemon_log"])))
            previous = name
            node.stdin.write("go\n")
            node.stdin.flush()
        node.stdin.close()
        rc = node.wait(timeout=60)
    say(f"{b}: the browser's calls took {time.monotonic() - t:.1f} s")
    try:
        out = json.loads(ofile.read_text())
    except (OSError, ValueError):
        check(f"{b}: the browser driver ran", [f"exit {rc}: {e2e.tail(WORK / f'node-{b}.log')}"])
        return record
    if out.get("error"):
        check(f"{b}: the browser driver ran", [str(out["error"])[:800]])
    record["version"] = out.get("version")
    record["livekit_client"] = out.get("livekitClient")
    for r in out.get("results") or []:
        c = by_name[r["name"]]
        if r.get("error"):
            check(f"{b} {c['name']}: the call ran to its end", [str(r["error"])[:800]])
            continue
        if c["via"]:
            label = f"{c['path']} ({PATHS[c['path']][0]})"
            rec = check_call(ctx, b, label, r, c, after.get(c["name"], ({}, [], 0)))
            rec["wall_s"] = round(r["wallMs"] / 1000, 1)
            record["calls"][c["name"]] = rec
        else:
            joins = r.get("joins") or []
            check(f"{b} negative control: straight to LiveKit (no daemon), relay only, no call within "
                  f"{NEG_TIMEOUT_MS} ms", [] if joins and all(j["connectedMs"] is None and j["error"] for j in joins)
                  else [f"joins {joins}"])
            record["calls"]["direct"] = {"errors": [j.get("error") for j in joins], "wall_s": round(r["wallMs"] / 1000, 1)}
    record["largest_from_client"] = largest_client_messages(b, ctx, after)
    say(f"{b}: {record['version']}, livekit-client {record['livekit_client']}, largest client message "
        f"{record['largest_from_client']} bytes")
    return record


def print_table(summary):
    say(f"livekit-server {summary['livekit_server']}")
    say("browser  | path         | selected pairs (local/remote), a; b | coturn ALLOCATE | connected a, b (ms)")
    for b, rec in summary["browsers"].items():
        for name, c in rec["calls"].items():
            if name == "direct":
                say(f"{b:8} | direct, v1   | no call: {c['errors'][0]}")
                continue
            say(f"{b:8} | {name} {c['path']:8} | {c['selected_pairs']['a']}; {c['selected_pairs']['b']} | "
                f"{c['coturn_allocated']} | {c['connected_ms']}")
            g = c["gathering"][0] if c.get("gathering") else {}
            say(f"{b:8} | {name} gathering | pc built before the join: {g.get('pc_built_before_join')}, servers set "
                f"by {g.get('servers_set_by')} at {g.get('servers_set_ms')} ms, first setLocalDescription "
                f"{g.get('first_setLocalDescription_ms')} ms, first candidate {g.get('first_candidate_ms')} ms")
            r = c.get("resume")
            if r:
                say(f"{b:8} | {name} resume  | {r['selected_pairs']['a']}; {r['selected_pairs']['b']} | "
                    f"reconnect spliced {r['reconnect_spliced']} | resumed in {r['resumed_ms']} ms, data after "
                    f"{r['data_after_ms']} ms")
    f = summary.get("faults") or {}
    if f:
        for what, r in (f.get("refused") or {}).items():
            say(f"faults: token {what}: LiveKit answers {r['status']}, {r['body_bytes']}-byte body, {r['headers']}")
        say(f"faults: keyed joins (ms, TCP connect to join) {f.get('keyed_join_ms')}; hang-up {f.get('hang_up')}; "
            f"removal {f.get('removed')}; check {f.get('check_s')} s; warnings with LiveKit down "
            f"{f.get('down_warnings')}; all of it {f.get('wall_s')} s")
        say(f"faults: through the shipped proxy snippets {f.get('proxies')}")


if __name__ == "__main__":
    SUITE.run(main)
