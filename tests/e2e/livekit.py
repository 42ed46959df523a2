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

Recorded (printed and in tests/e2e/.work/livekit/summary.json): per browser,
path and for the resume, the candidate types of the selected pairs, whether
coturn logged the allocation, the time to connected; and when livekit-client
builds its peer connection (before the join frame or after) and whether it
gathers before the server's ICE servers are set.

Prints "ok - ..." / "not ok - ..." lines and "N passed, M failed"; exits
non-zero on a failure. If the module proxy refuses LiveKit, prints SKIPPED
with the reason and exits 0. Logs stay in tests/e2e/.work/livekit/.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
JS = HERE / "js"
sys.path.insert(0, str(HERE / "lib"))
import e2e  # noqa: E402  (tests/e2e/lib/e2e.py)

WORK = HERE / ".work" / "livekit"
BIN = ROOT / "target" / "release" / "matrix-turnify"
FAKE = ROOT / "target" / "release" / "fake_cloudflare"
CARGO = ["cargo", "build", "--release", "--locked", "-p", "matrix-turnify", "-p", "turnify-fakes",
         "--bin", "matrix-turnify", "--bin", "fake_cloudflare"]
LK_KEY = "e2e-livekit-key"
CF_KEY_ID, CF_TOKEN = "livekit-e2e-key", "livekit-e2e-token"
BROWSERS = {"chromium": "chromium", "firefox": "firefox-esr"}
PATHS = {"v1": ("/rtc/v1", True), "v0": ("/rtc", False)}
TIMEOUT_MS, NEG_TIMEOUT_MS = 15000, 6000

results = {"passed": 0, "failed": 0}
procs = []


def check(name, problems):
    """problems: a list of strings; empty means the check passed."""
    if problems:
        results["failed"] += 1
        print(f"not ok - livekit: {name}: {'; '.join(problems)}")
    else:
        results["passed"] += 1
        print(f"ok - livekit: {name}")
    sys.stdout.flush()


def say(text):
    print(f"# {text}", flush=True)


def start(log, cmd, env=None, cwd=None):
    f = open(log, "wb")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    procs.append(p)
    return p


def stop_all():
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tail(path, n=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret, identity, room):
    """A LiveKit access token: HS256, iss = the API key, sub = the identity."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"iss": LK_KEY, "sub": identity, "nbf": now - 10, "exp": now + 3600,
              "video": {"roomJoin": True, "room": room, "canPublish": True, "canSubscribe": True,
                        "canPublishData": True}}
    signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64url(mac)}"


# --------------------------------------------------------------------------- installs

def apt_install():
    """coturn, Chromium, Firefox ESR from Debian, where missing (as run.sh does)."""
    missing = [pkg for tool, pkg in (("turnserver", "coturn"), ("chromium", "chromium"),
                                     ("firefox-esr", "firefox-esr")) if not shutil.which(tool)]
    if not missing:
        return []
    say(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--no-install-recommends", *missing]
    with open(WORK / "apt.log", "wb") as log:
        if subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    still = [t for t in ("turnserver", "chromium", "firefox-esr") if not shutil.which(t)]
    return [f"{' '.join(still)} not installed (see {WORK / 'apt.log'})"] if still else []


def npm_ci():
    """npm ci in tests/e2e/js when its lock changed since the last install (run.sh's marker)."""
    lock = hashlib.sha256((JS / "package-lock.json").read_bytes()).hexdigest()
    marker = JS / "node_modules" / ".e2e-lock-sha256"
    if marker.exists() and marker.read_text().strip() == lock:
        return []
    with open(WORK / "npm-ci.log", "wb") as log:
        rc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, stdout=log,
                            stderr=subprocess.STDOUT, timeout=1800).returncode
    if rc != 0:
        return [f"npm ci exited {rc}: {tail(WORK / 'npm-ci.log', 5)}"]
    marker.write_text(lock + "\n")
    return []


# --------------------------------------------------------------------------- processes

def start_coturn(port, secret):
    """coturn as tests/e2e/relay.sh runs it: loopback, the TURN REST scheme,
    loopback peers allowed (LiveKit is on 127.0.0.1), --verbose for the
    per-user ALLOCATE lines."""
    log = WORK / "coturn.log"
    p = start(log, ["turnserver", "-n", "--no-cli", "--log-file=stdout", "--simple-log",
                    f"--pidfile={WORK / 'coturn.pid'}", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
                    f"--listening-port={port}", "--min-port=60000", "--max-port=60999",
                    "--allow-loopback-peers", "--no-dtls", "--no-tls", "--use-auth-secret",
                    f"--static-auth-secret={secret}", "--realm=matrix-turnify.e2e", "--verbose"])
    e2e.wait_line(log, re.escape(f"UDP listener opened on: 127.0.0.1:{port}"), 20, p.pid)
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
    p = start(WORK / "livekit.log", [bindir / "livekit-server", "--config", path])
    e2e.wait_http(f"http://127.0.0.1:{port}/", timeout=60, pid=p.pid)
    return f"ws://127.0.0.1:{port}"


def metrics(base):
    """The daemon's signalling counters: {turn word: ended connections}, and the open ones."""
    st, _, body = e2e.request(base, "GET", "/metrics")
    if st != 200:
        raise RuntimeError(f"/metrics answered {st}")
    ended = {}
    opened = 0
    for line in body.decode().splitlines():
        m = re.match(r'^turnify_livekit_signalling_connections_total\{turn="([^"]+)"\} (\d+)$', line)
        if m:
            ended[m.group(1)] = int(m.group(2))
        m = re.match(r"^turnify_livekit_signalling_connections_open (\d+)$", line)
        if m:
            opened = int(m.group(1))
    return ended, opened


def mints(fake_origin):
    st, _, body = e2e.request(fake_origin, "GET", "/__fake/stats")
    if st != 200:
        raise RuntimeError(f"fake Cloudflare stats: {st}")
    return json.loads(body)["mints"]


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


def wait_connections(daemon, before, want, timeout=10):
    """Waits until the daemon counted WANT more ended signalling connections; returns the delta."""
    def delta():
        now, _ = metrics(daemon)
        return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}
    e2e.wait_until(lambda: sum(delta().values()) >= sum(want.values()), timeout)
    return delta()


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


# --------------------------------------------------------------------------- main

def main():
    go = subprocess.run([sys.executable, ROOT / ".ci" / "go_peers.py", "livekit"],
                        capture_output=True, text=True, timeout=3600)
    if go.returncode == 2:
        print(f"SKIPPED: LiveKit cannot be built here: {go.stderr.strip()}")
        return 0
    if go.returncode != 0:
        check("built from the Go module proxy (.ci/go_peers.py livekit)", [go.stderr.strip()[-2000:]])
        return 1
    bindir = Path(go.stdout.strip())

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    problems = apt_install() + npm_ci()
    if problems:
        check("coturn, Chromium, Firefox ESR (apt) and livekit-client, puppeteer-core (npm) installed", problems)
        return 1
    # A no-op after tests/e2e/run.sh, which builds the same.
    build = subprocess.run(CARGO, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        check("cargo build of the daemon and the fake Cloudflare", [build.stderr[-2000:]])
        return 1

    lk_port, coturn_port, listen_port, front_port, spare = e2e.free_ports(5)
    lk_secret = "e2e-livekit-secret-" + os.urandom(16).hex()
    turn_secret = "e2e-coturn-" + os.urandom(8).hex()
    coturn_log = start_coturn(coturn_port, turn_secret)
    direct = start_livekit(bindir, lk_port, free_udp_port(), lk_secret, coturn_port)
    turn_urls = [f"turn:127.0.0.1:{coturn_port}?transport=udp", f"turn:127.0.0.1:{coturn_port}?transport=tcp"]
    fake_log = WORK / "fake-cloudflare.log"
    fp = start(fake_log, [FAKE, "--listen", "127.0.0.1:0", "--key-id", CF_KEY_ID, "--api-token", CF_TOKEN,
                          "--turn-secret", turn_secret, "--turn-urls", ",".join(turn_urls)])
    fake_base = e2e.wait_line(fake_log, r"^listening on (http://127\.0\.0\.1:[0-9]+/v1)\s*$", 30, fp.pid)
    daemon = f"http://127.0.0.1:{listen_port}"
    daemon_log = WORK / "daemon.log"
    # The LiveKit front door uses no Synapse: any loopback URL will do.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "LISTEN_ADDR": f"127.0.0.1:{listen_port}", "SYNAPSE_BASE_URL": f"http://127.0.0.1:{spare}",
           "CF_TURN_KEY_ID": CF_KEY_ID, "CF_TURN_API_TOKEN": CF_TOKEN, "CF_TURN_API_BASE_URL": fake_base,
           "LIVEKIT_SFU_URL": f"http://127.0.0.1:{lk_port}", "LIVEKIT_LISTEN_ADDR": f"127.0.0.1:{front_port}",
           "LOG_LEVEL": "info", "LOG_FORMAT": "json"}
    tp = start(daemon_log, [BIN], env=env)
    e2e.wait_http(daemon + "/healthz", timeout=30, pid=tp.pid)
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
        node = subprocess.Popen(["timeout", "300", "node", JS / "livekit_call.mjs", pfile, ofile], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        procs.append(node)
        previous = None

        def close(prev):
            ended, n_mints, seen = marks[prev]
            want = expected(by_name[prev])
            delta = wait_connections(ctx["daemon"], ended, want)
            lines = daemon_lines(ctx["daemon_log"])[seen:]
            after[prev] = (delta, lines, mints(ctx["fake_origin"]) - n_mints)

        by_name = {c["name"]: c for c in cases}
        for line in node.stdout:
            word, _, name = line.strip().partition(" ")
            if word not in ("ready", "end"):
                continue
            if previous is not None:
                close(previous)
            if word == "end":
                break
            marks[name] = (metrics(ctx["daemon"])[0], mints(ctx["fake_origin"]), len(daemon_lines(ctx["daemon_log"])))
            previous = name
            node.stdin.write("go\n")
            node.stdin.flush()
        node.stdin.close()
        rc = node.wait(timeout=60)
    say(f"{b}: the browser's calls took {time.monotonic() - t:.1f} s")
    try:
        out = json.loads(ofile.read_text())
    except (OSError, ValueError):
        check(f"{b}: the browser driver ran", [f"exit {rc}: {tail(WORK / f'node-{b}.log')}"])
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
    say(f"{b}: {record['version']}, livekit-client {record['livekit_client']}")
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


if __name__ == "__main__":
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rc = 1
    try:
        rc = main()
    except (e2e.WaitError, SystemExit, OSError, RuntimeError, subprocess.SubprocessError, ValueError) as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            rc = 0
        else:
            check("the run completed", [str(e)])
    finally:
        stop_all()
    if results["failed"]:
        print(f"# logs: {WORK}")
    print(f"# elapsed: {time.monotonic() - t0:.1f} s")
    if rc == 0 and results["passed"] + results["failed"] == 0:
        sys.exit(0)  # SKIPPED, said above
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(0 if results["failed"] == 0 and rc == 0 else 1)
