#!/usr/bin/env python3
"""Benchmark and soak test for matrix-turnify (docs/behaviour.md §11). See bench/README.md.

Run it through bench/run.sh (same arguments): bench (default), soak, aarch64,
livekit (the LiveKit front door against a real livekit-server; see tests/e2e/lib/lkclient.py).
Python 3.11 standard library only. Everything listens on 127.0.0.1 on
kernel-chosen ports; every process this script starts is stopped by PID on
exit. Logs and state stay in bench/.work.
"""

import json
import math
import queue
import selectors
import statistics
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
WORK = os.path.join(BENCH, ".work")
sys.dont_write_bytecode = True  # no __pycache__ next to e2e.py
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e", "lib"))
from e2e import WaitError, fake_behaviour, fake_mints, free_ports, request, wait_http, wait_line  # noqa: E402
import lkclient  # noqa: E402  (tests/e2e/lib, with e2e.py)

USAGE = """\
usage: bash bench/run.sh [bench|soak|aarch64|livekit]
  bench (default)  scenarios (a)-(f) at 1 and 64 connections, then (g) if it can;
                   BENCH_SECONDS per run (default 10)
  soak             SOAK_SECONDS (default 60) at 64 connections of valid, invalid and
                   failing-upstream traffic; checks for unexpected answers and RSS growth
  aarch64          only scenario (g): the aarch64 binary under qemu-aarch64-static,
                   reuse path, 64 connections (emulated; build the binary first with
                   bash .ci/aarch64-checks.sh --build-only, or set AARCH64_BIN)
  livekit          the LiveKit front door against a real livekit-server v1.13.5: join
                   latency direct, on a reuse hit and on misses (LIVEKIT_JOINS joins each,
                   default 60), then the daemon's RSS with LIVEKIT_PARTICIPANTS (default
                   200) open signalling connections, with messages at the client's bound,
                   under the memory attack at the door's cap, and how long a silent
                   client stays
"""

TOKEN = "syt_bench_token"
TURN_PATH = "/_matrix/client/v3/voip/turnServer"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DAEMON_BIN = os.path.join(ROOT, "target/release/matrix-turnify")
FAKE_CF_BIN = os.path.join(ROOT, "target/release/fake_cloudflare")
BUILD = ["cargo", "build", "--release", "--locked", "-p", "matrix-turnify", "-p", "turnify-fakes",
         "--bin", "matrix-turnify", "--bin", "fake_cloudflare"]
START_EPOCH = int(time.time())


def env(name, default):
    """Like bash's ${NAME:-default}: unset and empty both give the default."""
    return os.environ.get(name) or default


# Scenario (g): the cross-compiled aarch64 binary, where .ci/aarch64-checks.sh
# leaves it, run under qemu-user (no binfmt needed: qemu is named explicitly).
AARCH64_BIN = env("AARCH64_BIN", os.path.join(
    env("AARCH64_CACHE_DIR", os.path.join(env("XDG_CACHE_HOME", env("HOME", "/root") + "/.cache"),
                                          "matrix-turnify-arm64")),
    "target/aarch64-unknown-linux-musl/release/matrix-turnify"))


class Die(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    raise Die(msg)


def tail(path, n):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:]).rstrip("\n")
    except OSError:
        return ""


# ---------------------------------------------------------------- processes --

# The processes this script started and has not yet stopped, oldest first.
PROCS = []


def spawn(argv, stdout, stderr=subprocess.STDOUT, environ=None):
    """Starts ARGV with output to the file STDOUT (and STDERR, by default the same)."""
    out = open(stdout, "wb")
    err = open(stderr, "wb") if isinstance(stderr, str) else stderr
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=environ)
    finally:
        out.close()
        if err is not stderr:
            err.close()
    PROCS.append(p)
    return p


def stop(p):
    """Stops one of our children: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"bench: PID {p.pid} ignored SIGTERM for 5 s; sending SIGKILL")
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def wait_ready(url, p, what, **kw):
    """Polls URL until it answers 200, for at most 20 s, failing early if P exits."""
    try:
        wait_http(url, timeout=20, pid=p.pid, poll=0.05, **kw)
    except WaitError as e:
        if e.exited:
            die(f"{what} (PID {p.pid}) exited before it was ready; see bench/.work")
        die(f"{what} did not answer 200 on {url} within 20 s")


def free_port():
    return free_ports(1)[0]


def children(pid):
    """PIDs whose parent is PID (what `pgrep -P PID` lists)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(") ", 1)[1].split()[1]) == pid:
                        found.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return found


# ------------------------------------------------------------- measurements --

def cpu_ticks(pid):
    """utime + stime of a process (all its threads, dead ones included), in ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()  # from field 3 (state) on; comm may hold spaces
    return int(fields[11]) + int(fields[12])         # fields 14 (utime) and 15 (stime)


def status_kib(pid, field):
    """A kB figure from /proc/PID/status (VmHWM, VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == field:
                return int(v.split()[0])
    die(f"no {field} in /proc/{pid}/status")


def kib_to_mib(k):
    return f"{k / 1024:.1f}"


def fmt_ms(us):
    return f"{us / 1000:.2f} ms"


def du_h(path):
    """The disk usage of a file as `du -h` prints it (1024-based, rounded up)."""
    n = os.lstat(path).st_blocks * 512
    if n < 1024:
        return str(n)
    for unit in "KMGTPE":
        n /= 1024
        if n < 1024 or unit == "E":
            if n < 10 and math.ceil(n * 10) < 100:
                return f"{math.ceil(n * 10) / 10:.1f}{unit}"
            return f"{math.ceil(n)}{unit}"


def wrk_line(out, tag):
    """The `TAG key=value …` line wrk's Lua script printed, as a dict of ints."""
    try:
        with open(out, errors="replace") as f:
            line = next(l for l in f if l.startswith(tag + " ")).strip()
    except (OSError, StopIteration):
        die(f"no {tag} line in {out}")

    class Line(dict):
        def __missing__(self, key):
            die(f"no {key} in wrk output: {line}")

    return Line((k, int(v)) for k, _, v in (p.partition("=") for p in line.split()[1:]))


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pass_fail(ok, text):
    return f"- {'PASS' if ok else 'FAIL'}: {text}"


# --------------------------------------------------------------- components --

NGINX_HEAD = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    # wrk and the daemon keep connections open for the whole run.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
"""

NGINX_SYNAPSE = """\
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$ {{
            default_type application/json;
            add_header Cache-Control "no-cache, no-store, must-revalidate" always;
            add_header Access-Control-Allow-Origin * always;
{check}            return 200 '{{}}';
        }}
        location = /health {{
            default_type text/plain;
            return 200 'OK';
        }}
    }}
}}
"""

NGINX_SOAK_MAP = """\
    map $http_authorization $bench_token_ok {{
        "Bearer {token}" 1;
        default 0;
    }}
"""

NGINX_SOAK_CHECK = """\
            if ($bench_token_ok = 0) {
                return 401 '{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}';
            }
"""

NGINX_MSC4166 = """\
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$ {{
            default_type application/json;
            add_header Access-Control-Allow-Origin * always;
            return 404 '{{"errcode":"M_NOT_FOUND","error":"Not Found"}}';
        }}
        location = /_matrix/client/v3/account/whoami {{
            default_type application/json;
            return 200 '{{"user_id":"@bench:localhost","is_guest":false,"device_id":"BENCH"}}';
        }}
        location = /health {{
            default_type text/plain;
            return 200 'OK';
        }}
    }}
}}
"""

NGINX_PROXY = """\
    upstream s {{
        server 127.0.0.1:{upstream};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_conf(kind, port, upstream=None):
    """The nginx.conf of KIND: synapse (fast fake Synapse), synapse-soak (the same,
    401 for any token but the bench one), msc4166 (a homeserver of the Conduit
    family without TURN: 404 M_NOT_FOUND on turnServer, a user on whoami) or
    proxy (the reference hop in front of the fake on UPSTREAM)."""
    d = os.path.join(WORK, f"nginx-{kind}")
    conf = NGINX_HEAD.format(dir=d)
    if kind == "synapse":
        conf += NGINX_SYNAPSE.format(port=port, check="")
    elif kind == "synapse-soak":
        conf += NGINX_SOAK_MAP.format(token=TOKEN) + NGINX_SYNAPSE.format(port=port, check=NGINX_SOAK_CHECK)
    elif kind == "msc4166":
        conf += NGINX_MSC4166.format(port=port)
    elif kind == "proxy":
        conf += NGINX_PROXY.format(port=port, upstream=upstream)
    return conf


def start_nginx(kind, port, upstream=None):
    """Writes bench/.work/nginx-KIND/nginx.conf, starts nginx on it; returns
    (master, worker PID)."""
    d = os.path.join(WORK, f"nginx-{kind}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "tmp"))
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(kind, port, upstream))
    test = subprocess.run(["nginx", "-t", "-q", "-p", d, "-c", conf], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=30)
    with open(os.path.join(d, "config-test.log"), "w") as f:
        f.write(test.stderr)
    if test.returncode != 0:
        die(f"nginx rejected {conf}: {test.stderr.rstrip()}")
    master = spawn(["nginx", "-p", d, "-c", conf], os.path.join(d, "stdout.log"), os.path.join(d, "stderr.log"))
    wait_ready(f"http://127.0.0.1:{port}/health", master, f"nginx ({kind})")
    for _ in range(200):
        kids = children(master.pid)
        if len(kids) == 1:
            return master, kids[0]
        time.sleep(0.05)
    die(f"could not find the single worker of nginx ({kind}), master PID {master.pid}")


class FakeCloudflare:
    def __init__(self, latency_ms):
        out = os.path.join(WORK, f"fake-cloudflare-{latency_ms}ms.log")
        self.proc = spawn([FAKE_CF_BIN, "--listen", "127.0.0.1:0", "--key-id", "bench-key",
                           "--api-token", "bench-token", "--latency-ms", str(latency_ms)], out, out + ".stderr")
        try:
            self.base = wait_line(out, r"^listening on (.*)", timeout=20, pid=self.proc.pid, poll=0.05)
        except WaitError as e:
            if e.exited:
                die(f"fake Cloudflare exited; see {out}.stderr")
            die("fake Cloudflare printed no 'listening on' line within 20 s")
        self.origin = self.base.removesuffix("/v1")
        wait_ready(f"{self.origin}/__fake/stats", self.proc, "fake Cloudflare")

    def mints(self):
        try:
            return int(fake_mints(self.origin, timeout=5))
        except (OSError, ValueError, KeyError, RuntimeError):
            die(f"could not read the mint count from {self.origin}/__fake/stats")

    def behaviour(self, obj):
        """POST /__fake/behaviour; True if the fake took it."""
        try:
            fake_behaviour(self.origin, obj, timeout=5)
            return True
        except (OSError, RuntimeError):
            return False

    def stop(self):
        stop(self.proc)


def start_daemon(name, reuse, synapse_port, cf, command=None):
    """Starts the daemon (COMMAND, by default the release binary; for the aarch64
    binary the process is qemu itself) in a clean environment; returns (Popen, URL)."""
    port = free_port()
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "SYNAPSE_BASE_URL": f"http://127.0.0.1:{synapse_port}",
        "CF_TURN_KEY_ID": "bench-key",
        "CF_TURN_API_TOKEN": "bench-token",
        "CF_TURN_API_BASE_URL": cf.base,
        "LOG_LEVEL": "warn",
        "CREDENTIAL_REUSE": reuse,
    }
    p = spawn(command or [DAEMON_BIN], os.path.join(WORK, f"daemon-{name}.log"), environ=environ)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", p, f"matrix-turnify ({name})")
    return p, url


def get(url, token, timeout=10):
    """GET URL with a bearer token; returns (status as curl prints it, body)."""
    m = re.match(r"(https?://[^/]+)(.*)", url)
    try:
        status, _, body = request(m[1], "GET", m[2] or "/", [("Authorization", f"Bearer {token}")], timeout=timeout)
        return f"{status:03d}", body.decode("utf-8", "replace")
    except OSError:
        return "000", ""


def probe(url, what):
    """One request with the bench token; returns the body, fails on a non-200."""
    code, body = get(url, TOKEN)
    if code != "200":
        die(f"{what}: probe of {url} answered '{code}': {body[:300]}")
    return body


def warm_up(url, what, warning="the warm-up answer"):
    body = probe(url, what)
    if '"uris"' not in body:
        log(f"bench: warning: {warning} carried no credentials: {body[:200]}")


# ------------------------------------------------------ the LiveKit front door --

LK_KEY = "benchkey"
LK_SECRET = "bench-livekit-secret-0123456789abcdef"  # livekit-server wants 32 characters or more
# What a through-daemon join must carry: the fake Cloudflare's TURN host.
CF_TURN_HOST = "turn.cloudflare.com"

LIVEKIT_YAML = """\
# livekit-server for bench/run.sh livekit: loopback only, one UDP mux port,
# its own TURN off, one API key.
port: {port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {tcp_port}
  udp_port: {udp_port}
  use_external_ip: false
  node_ip: 127.0.0.1
  enable_loopback_candidate: true
  interfaces:
    includes: [lo]
  ips:
    includes: [127.0.0.1/32]
turn:
  enabled: false
keys:
  {key}: {secret}
logging:
  level: warn
"""


def livekit_bin():
    """The livekit-server binary .ci/go_peers.py builds (and caches outside the clone)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "go_peers.py"), "livekit"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        die(f"python3 .ci/go_peers.py livekit failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    path = os.path.join(r.stdout.strip().splitlines()[-1], "livekit-server")
    if not os.access(path, os.X_OK):
        die(f"no livekit-server at {path}")
    return path


class LiveKit:
    def __init__(self, binary):
        d = os.path.join(WORK, "livekit")
        os.makedirs(d, exist_ok=True)
        self.port, tcp_port, udp_port = free_ports(3)
        conf = os.path.join(d, "livekit.yaml")
        with open(conf, "w") as f:
            f.write(LIVEKIT_YAML.format(port=self.port, tcp_port=tcp_port, udp_port=udp_port,
                                        key=LK_KEY, secret=LK_SECRET))
        self.proc = spawn([binary, "--config", conf], os.path.join(d, "livekit.log"))
        wait_ready(f"http://127.0.0.1:{self.port}/", self.proc, "livekit-server")

    def stop(self):
        stop(self.proc)


class FrontDoor:
    """The daemon with its LiveKit front door before LIVEKIT_PORT (reuse on; with
    LIVEKIT_KEY and LIVEKIT_SECRET when VERIFY). No homeserver is asked on this
    path: SYNAPSE_BASE_URL names a port nobody listens on."""

    def __init__(self, name, cf, livekit_port, verify, log_level="warn"):
        port, self.port, nobody = free_ports(3)
        environ = {
            "PATH": os.environ.get("PATH", ""),
            "LISTEN_ADDR": f"127.0.0.1:{port}",
            "SYNAPSE_BASE_URL": f"http://127.0.0.1:{nobody}",
            "CF_TURN_KEY_ID": "bench-key",
            "CF_TURN_API_TOKEN": "bench-token",
            "CF_TURN_API_BASE_URL": cf.base,
            "LOG_LEVEL": log_level,
            "CREDENTIAL_REUSE": "true",
            "LIVEKIT_SFU_URL": f"http://127.0.0.1:{livekit_port}",
            "LIVEKIT_LISTEN_ADDR": f"127.0.0.1:{self.port}",
        }
        if verify:
            environ |= {"LIVEKIT_KEY": LK_KEY, "LIVEKIT_SECRET": LK_SECRET}
        self.log = os.path.join(WORK, f"daemon-{name}.log")
        self.proc = spawn([DAEMON_BIN], self.log, environ=environ)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(f"{self.url}/healthz", self.proc, f"matrix-turnify ({name})")
        # LiveKit's own "/" answers 200 OK, through the front door as a plain request.
        wait_ready(f"http://127.0.0.1:{self.port}/", self.proc, f"matrix-turnify's front door ({name})")

    def signalling(self):
        """From /metrics: (connections open, {turn outcome: connections ended})."""
        try:
            status, _, body = request(self.url, "GET", "/metrics", timeout=5)
        except OSError as e:
            die(f"GET {self.url}/metrics: {e}")
        if status != 200:
            die(f"GET {self.url}/metrics answered {status}")
        open_now, ended = None, {}
        for line in body.decode().splitlines():
            if line.startswith("turnify_livekit_signalling_connections_open "):
                open_now = int(float(line.split()[1]))
            elif m := re.match(r'turnify_livekit_signalling_connections_total\{turn="([^"]+)"\} (\S+)', line):
                ended[m[1]] = int(float(m[2]))
        if open_now is None:
            die(f"no turnify_livekit_signalling_connections_open in {self.url}/metrics")
        return open_now, ended

    def ended(self, timeout=10):
        """The outcome counters once every relayed connection has ended (the
        daemon counts one when both legs are done, up to CLOSE_LINGER after a
        close), waiting at most TIMEOUT seconds for that."""
        deadline = time.monotonic() + timeout
        while True:
            open_now, ended = self.signalling()
            if open_now == 0 or time.monotonic() >= deadline:
                return open_now, ended
            time.sleep(0.05)

    def stop(self):
        stop(self.proc)


def livekit_const(name):
    """A byte count src/livekit/proxy.rs sets (a product of integers): MAX_CLIENT_MESSAGE_BYTES, RELAY_BUDGET_BYTES."""
    with open(os.path.join(ROOT, "src", "livekit", "proxy.rs")) as f:
        m = re.search(rf"pub const {name}: usize = ([0-9_ *]+);", f.read())
    if not m:
        die(f"no {name} in src/livekit/proxy.rs")
    return math.prod(int(x.replace("_", "")) for x in m[1].split("*"))


def log_field(path, message, field):
    """FIELD of the daemon's first text log line holding MESSAGE (LOG_FORMAT=text)."""
    with open(path, errors="replace") as f:
        for line in f:
            if message in line and (m := re.search(rf"\b{field}=(\S+)", line)):
                return m[1].strip('"')
    die(f"no {message!r} line with {field} in {path}")


def client_frame_head(length):
    """A masked binary frame's head for LENGTH bytes, as a client sends it (mask 0: payload as is)."""
    return bytes([0x82, 0x80 | 127]) + length.to_bytes(8, "big") + bytes(4)


def has_cloudflare(servers):
    return any(CF_TURN_HOST in url for urls in servers for url in urls)


def lk_join(port, identity, room, timeout=15):
    """One join through PORT as IDENTITY: (conn, seconds to the join, Cloudflare entry?)."""
    tok = lkclient.token(LK_KEY, LK_SECRET, identity, room)
    try:
        conn, secs, servers = lkclient.join("127.0.0.1", port, tok, timeout=timeout)
    except (OSError, TimeoutError, lkclient.ProtocolError) as e:
        die(f"join of {identity} to {room} on port {port} failed: {e}")
    return conn, secs, has_cloudflare(servers)


def socket_fds(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def nearest_rank(sorted_values, q):
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


class Keeper:
    """Keeps signalling connections alive the way livekit-client does: a
    SignalRequest ping_req as each arrives and every PING_INTERVAL seconds
    after (JoinResponse.ping_interval is 5 s in livekit-server v1.13.5), WebSocket
    pings answered, and everything LiveKit sends read (participant updates), so
    neither leg backs up. One thread, one selector; a connection handed to `add`
    belongs to it until `stop`."""

    PING_INTERVAL = 5

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.incoming = queue.Queue()
        self.conns = []
        self.stopping = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def add(self, conn):
        self.incoming.put(conn)

    def ping(self, conn):
        try:
            conn.send_binary(lkclient.ping_request())
            conn.pings += 1
        except OSError as e:
            conn.dead = True
            self.errors.append(f"ping: {e}")

    def run(self):
        next_round = time.monotonic() + self.PING_INTERVAL
        while not self.stopping.is_set():
            while not self.incoming.empty():
                conn = self.incoming.get()
                conn.pings = conn.pongs = 0
                conn.dead = False
                conn.sock.setblocking(False)
                self.sel.register(conn.sock, selectors.EVENT_READ, conn)
                self.conns.append(conn)
                self.ping(conn)
            wait = max(0.0, min(0.1, next_round - time.monotonic()))
            for key, _ in self.sel.select(wait):
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data = b""
                    self.errors.append(f"recv: {e}")
                if not data:
                    conn.dead = True
                    self.sel.unregister(conn.sock)
                    continue
                conn.buf += data
                try:
                    while (m := conn.message()) is not None:
                        opcode, payload = m
                        if opcode == lkclient.OP_CLOSE:
                            conn.dead = True
                        elif opcode == lkclient.OP_BINARY and lkclient.is_pong(payload):
                            conn.pongs += 1
                except (lkclient.ProtocolError, OSError) as e:
                    conn.dead = True
                    self.errors.append(f"frame: {e}")
            if time.monotonic() >= next_round:
                next_round += self.PING_INTERVAL
                for conn in self.conns:
                    if not conn.dead:
                        self.ping(conn)

    def alive_and_answered(self, pongs):
        """How many connections are open and have answered at least PONGS pings."""
        return sum(1 for c in list(self.conns) if not c.dead and c.pongs >= pongs)

    def stop(self):
        """Stops the thread and gives the connections back, blocking again."""
        self.stopping.set()
        self.thread.join(timeout=10)
        for conn in self.conns:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.setblocking(True)
        self.sel.close()
        return self.conns


# ----------------------------------------------------------------- the run --

def git(*args):
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return r.stdout if r.returncode == 0 else None
    except OSError:
        return None


def tool_version(argv, n=None):
    """The first N space-separated words (all by default) of the first line ARGV
    prints (stdout or stderr)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return ""
    lines = (r.stdout + r.stderr).splitlines() or [""]
    return " ".join(lines[0].split(" ")[:n])


def ensure_tools(mode):
    # The livekit mode drives the daemon with its own client (tests/e2e/lib/lkclient.py).
    missing = [t for t in ("wrk", "nginx") if mode != "livekit" and not shutil.which(t)]
    if missing:
        log(f"bench: installing {' '.join(missing)} with apt-get")
        install = ["apt-get", "install", "-y", *missing]
        if (subprocess.run(install, stdout=sys.stderr).returncode != 0
                and (subprocess.run(["apt-get", "update"], stdout=sys.stderr).returncode != 0
                     or subprocess.run(install, stdout=sys.stderr).returncode != 0)):
            die(f"could not install {' '.join(missing)}")
    if not shutil.which("cargo"):
        die("cargo is required")


def build():
    log(f"bench: {' '.join(BUILD)}")
    build_log = os.path.join(WORK, "build.log")
    with open(build_log, "wb") as f:
        rc = subprocess.run(BUILD, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        log(tail(build_log, 40))
        die("build failed; see bench/.work/build.log")
    if not (os.access(DAEMON_BIN, os.X_OK) and os.access(FAKE_CF_BIN, os.X_OK)):
        die(f"build produced no {DAEMON_BIN} or {FAKE_CF_BIN}")


class Run:
    def __init__(self, bench_seconds, soak_seconds):
        self.bench_seconds = bench_seconds
        self.soak_seconds = soak_seconds
        self.rows = []
        self.results = {}  # "c64" -> dict(rps=, cpu=, hwm=, mints=), all as printed
        self.aarch64_note = ""
        self.load_start = loadavg()
        self.lk_rows = []
        self.lk_joins = env("LIVEKIT_JOINS", "60")
        self.lk_late_joins = env("LIVEKIT_LATE_JOINS", "10")
        self.lk_participants = env("LIVEKIT_PARTICIPANTS", "200")

    def machine_info(self):
        commit = (git("rev-parse", "--short", "HEAD") or "unknown\n").strip()
        dirty = " (uncommitted changes in src/)" if (git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock") or "").strip() else ""
        cpu = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(": ", 1)[1].rstrip("\n")
                    break
        u = os.uname()
        nginx = tool_version(["nginx", "-v"]).removeprefix("nginx version: ")
        return [
            "## Machine",
            "",
            f"- nproc: {len(os.sched_getaffinity(0))}",
            f"- CPU: {cpu}",
            f"- kernel: {u.sysname} {u.release} {u.machine}",
            f"- load average before measuring: {self.load_start} (1/5/15 min; others' work on the 2 cores skews figures)",
            f"- tools: {nginx}, {tool_version(['wrk', '-v'], 2)}, {tool_version(['rustc', '--version'], 2)}",
            f"- commit: {commit}{dirty}",
            f"- clock ticks: {CLK_TCK}/s (CPU figures resolve to 1 tick ÷ requests)",
            "",
        ]

    def footer(self):
        return f"Load average at end: {loadavg()}; total run time {int(time.time()) - START_EPOCH} s."

    @staticmethod
    def emit(lines, name):
        text = "\n".join(lines) + "\n"
        sys.stdout.write(text)
        sys.stdout.flush()
        with open(os.path.join(WORK, name), "w") as f:
            f.write(text)

    # ------------------------------------------------------------ bench mode --

    def run_case(self, id, label, conns, url, pid, cf=None):
        """One wrk run against URL, measuring the process PID (and CF's mints)."""
        threads = 2 if conns > 1 else 1
        out = os.path.join(WORK, f"wrk-{id}-c{conns}.log")
        log(f"bench: ({id}) {label}, {conns} connection(s), {self.bench_seconds} s")
        m0 = cf.mints() if cf else 0
        t0 = cpu_ticks(pid)
        with open(out, "wb") as f:
            try:
                rc = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{self.bench_seconds}s", "--latency",
                                     "-s", os.path.join(BENCH, "report.lua"), "-H", f"Authorization: Bearer {TOKEN}", url],
                                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=int(self.bench_seconds) + 60).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0:
            die(f"wrk failed; see {out}: {tail(out, 5)}")
        t1 = cpu_ticks(pid)
        m1 = cf.mints() if cf else 0
        hwm = status_kib(pid, "VmHWM")
        line = wrk_line(out, "BENCH")
        requests, duration = line["requests"], line["duration_us"]
        p50, p99 = line["p50_us"], line["p99_us"]
        errors = line["non2xx3xx"] + line["connect"] + line["read"] + line["write"] + line["timeout"]
        if requests <= 0:
            die(f"wrk completed no requests; see {out}")
        rps = f"{requests / (duration / 1e6):.0f}"
        cpu = f"{(t1 - t0) / CLK_TCK * 1e6 / requests:.1f}"
        mints = f"{(m1 - m0) * 1000 / requests:.2f}" if cf else "-"
        self.results[f"{id}{conns}"] = dict(rps=rps, cpu=cpu, hwm=hwm, mints=mints)
        self.rows.append(f"| ({id}) {label} | {conns} | {rps} | {fmt_ms(p50)} | {fmt_ms(p99)} | {errors} | {cpu} "
                         f"| {kib_to_mib(hwm)} | {mints} |")

    def aarch64_case(self, synapse_port):
        """Scenario (g): the aarch64 build on the reuse path, under qemu-aarch64-static.
        Emulated: its CPU figure is the qemu process's (translation included) and its
        RSS is qemu's plus the guest's, so it is no hardware figure; next to (c) it
        shows that the aarch64 build does nothing pathological. Needs the fake Synapse
        on SYNAPSE_PORT; starts and stops its own fake Cloudflare."""
        qemu = shutil.which("qemu-aarch64-static")
        if not qemu or not os.access(AARCH64_BIN, os.X_OK):
            self.aarch64_note = (f"(g) skipped: needs qemu-aarch64-static and {AARCH64_BIN} "
                                 "(bash .ci/aarch64-checks.sh --build-only builds it)")
            log(f"bench: {self.aarch64_note}")
            return
        cf = FakeCloudflare(0)
        daemon, url = start_daemon("aarch64-qemu", "true", synapse_port, cf, [qemu, AARCH64_BIN])
        warm_up(url + TURN_PATH, "aarch64 daemon under qemu (reuse)")
        self.run_case("g", "aarch64 binary under qemu-user, reuse path (EMULATED)", 64, url + TURN_PATH, daemon.pid, cf)
        stop(daemon)
        cf.stop()
        qemu_version = tool_version([qemu, "--version"])
        self.aarch64_note = (f"(g) is EMULATED: {AARCH64_BIN} ({os.path.getsize(AARCH64_BIN)} bytes) under "
                             f"{qemu_version} on this {os.uname().machine} machine. CPU is the qemu process's "
                             "(translation included), RSS qemu's plus the guest's: not a hardware figure.")

    @staticmethod
    def results_header():
        return ["| scenario | connections | requests/s | p50 | p99 | errors | CPU µs / request | peak RSS MiB "
                "| CF mints / 1,000 requests |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def aarch64_mode(self):
        synapse_port = free_port()
        nginx, _ = start_nginx("synapse", synapse_port)
        probe(f"http://127.0.0.1:{synapse_port}{TURN_PATH}", "fake Synapse")
        self.aarch64_case(synapse_port)
        if not self.rows:
            die(self.aarch64_note)
        stop(nginx)
        self.emit([
            "# matrix-turnify benchmark, scenario (g) only",
            "",
            f"Command: `BENCH_SECONDS={self.bench_seconds} bash bench/run.sh aarch64`",
            "",
            *self.machine_info(),
            *self.results_header(),
            *self.rows,
            "",
            self.aarch64_note,
            "",
            self.footer(),
        ], "results-aarch64.md")

    def bench_mode(self):
        synapse_port = free_port()
        _, fake_worker = start_nginx("synapse", synapse_port)
        proxy_port = free_port()
        _, proxy_worker = start_nginx("proxy", proxy_port, synapse_port)
        synapse = f"http://127.0.0.1:{synapse_port}{TURN_PATH}"
        proxy = f"http://127.0.0.1:{proxy_port}{TURN_PATH}"
        probe(synapse, "fake Synapse")
        probe(proxy, "nginx proxy hop")

        for c in (1, 64):
            self.run_case("a", "fake Synapse direct (ceiling)", c, synapse, fake_worker)
        for c in (1, 64):
            self.run_case("b", "nginx proxy hop (reference)", c, proxy, proxy_worker)

        cf = FakeCloudflare(0)
        daemon, url = start_daemon("reuse", "true", synapse_port, cf)
        warm_up(url + TURN_PATH, "daemon (reuse)")
        for c in (1, 64):
            self.run_case("c", "daemon, reuse path", c, url + TURN_PATH, daemon.pid, cf)
        stop(daemon)

        # The MSC4166 path: every request is a turnServer 404 plus a whoami.
        msc4166_port = free_port()
        start_nginx("msc4166", msc4166_port)
        daemon, url = start_daemon("reuse-whoami", "true", msc4166_port, cf)
        warm_up(url + TURN_PATH, "daemon (reuse, whoami path)", "the warm-up answer through whoami")
        for c in (1, 64):
            self.run_case("f", "daemon, reuse path through 404 + whoami", c, url + TURN_PATH, daemon.pid, cf)
        stop(daemon)

        daemon, url = start_daemon("mint", "false", synapse_port, cf)
        probe(url + TURN_PATH, "daemon (mint)")
        for c in (1, 64):
            self.run_case("d", "daemon, mint every request", c, url + TURN_PATH, daemon.pid, cf)
        stop(daemon)
        cf.stop()

        cf = FakeCloudflare(150)
        daemon, url = start_daemon("mint-150ms", "false", synapse_port, cf)
        probe(url + TURN_PATH, "daemon (mint, CF +150 ms)")
        for c in (1, 64):
            self.run_case("e", "daemon, mint, CF latency 150 ms", c, url + TURN_PATH, daemon.pid, cf)
        stop(daemon)
        cf.stop()

        self.aarch64_case(synapse_port)

        wrk_cmd = (f"wrk -t1 -c1 | -t2 -c64 -d{self.bench_seconds}s --latency -s bench/report.lua "
                   f"-H 'Authorization: Bearer {TOKEN}' http://127.0.0.1:PORT{TURN_PATH}")
        self.emit([
            "# matrix-turnify benchmark",
            "",
            f"Command: `BENCH_SECONDS={self.bench_seconds} bash bench/run.sh`",
            "",
            f"Each row: `{wrk_cmd}`",
            "",
            *self.machine_info(),
            "## Results",
            "",
            *self.results_header(),
            *self.rows,
            "",
            "CPU and RSS are of the process under test: (a) the fake Synapse's nginx worker, (b) the proxy's",
            "nginx worker, (c)-(f) the daemon (a fresh one per scenario; RSS is VmHWM, peak since start).",
            "(f) asks the homeserver twice per request (turnServer, then /account/whoami: docs/behaviour.md §3.1).",
            self.aarch64_note,
            "Errors are wrk's non-2xx/3xx answers plus socket errors.",
            "",
            "## Targets (docs/behaviour.md §11)",
            "",
            *self.targets(),
            "",
            self.footer(),
        ], "results.md")

    def targets(self):
        r = self.results

        def ratio(num, den):
            # Of the figures as printed, like the table (so the line can be checked by hand).
            return f"{float(num) / float(den):.2f}" if float(den) > 0 else "inf"

        lines = []
        for c in (1, 64):
            cpu_c, cpu_b = r[f"c{c}"]["cpu"], r[f"b{c}"]["cpu"]
            q = ratio(cpu_c, cpu_b)
            lines.append(pass_fail(q != "inf" and float(q) <= 2, f"reuse path CPU/request ÷ nginx hop CPU/request at "
                                   f"{c} connection(s) = {cpu_c} ÷ {cpu_b} = {q}× (≤ 2×)"))
        for c in (1, 64):
            cpu_f, cpu_c = r[f"f{c}"]["cpu"], r[f"c{c}"]["cpu"]
            lines.append(f"- whoami path at {c} connection(s): {cpu_f} CPU µs/request, "
                         f"{ratio(cpu_f, cpu_c)}× the plain reuse path ({cpu_c})")
        max_hwm = max([0] + [r[k]["hwm"] for k in ("c1", "c64", "d1", "d64", "e1", "e64", "f1", "f64")])
        lines.append(pass_fail(max_hwm < 20 * 1024, f"daemon peak RSS {kib_to_mib(max_hwm)} MiB (< 20 MiB)"))
        rps = r["e64"]["rps"]
        lines.append(pass_fail(int(rps) >= 400, f"(e) CF latency 150 ms at 64 connections: {rps} requests/s (≥ 400)"))
        for c in (1, 64):
            m = r[f"c{c}"]["mints"]
            lines.append(pass_fail(float(m) <= 1, f"reuse path at {c} connection(s): {m} Cloudflare mints per "
                                   "1,000 requests (≤ 1)"))
        return lines

    # ------------------------------------------------------------- soak mode --

    def soak_mode(self):
        seconds = int(self.soak_seconds)
        synapse_port = free_port()
        start_nginx("synapse-soak", synapse_port)
        cf = FakeCloudflare(0)
        daemon, url = start_daemon("soak", "false", synapse_port, cf)
        daemon_log = os.path.join(WORK, "daemon-soak.log")
        warm_up(url + TURN_PATH, "daemon (soak, valid token)", "the valid-token probe")
        code, _ = get(url + TURN_PATH, "syt_not_a_valid_token")
        if code != "401":
            die(f"an invalid token should get 401 from the daemon, got '{code}'")
        m0 = cf.mints()

        flipper = Flipper(cf, os.path.join(WORK, "flipper.log"))
        out = os.path.join(WORK, "wrk-soak.log")
        log(f"bench: soak, 64 connections, {seconds} s")
        t0 = time.monotonic()
        wrk = spawn(["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "2s", "--latency",
                     "-s", os.path.join(BENCH, "soak.lua"), url + TURN_PATH], out)

        # The sampling points of the soak (timing, not readiness waits).
        def sample_at(offset):
            time.sleep(max(0.0, t0 + offset - time.monotonic()))
            return status_kib(daemon.pid, "VmRSS"), f"{time.monotonic() - t0:.1f}"

        rss_start, at_start = sample_at(5)
        rss_mid, at_mid = sample_at(seconds / 2)
        rss_end, at_end = sample_at(seconds - 1)

        try:
            wrk_rc = wrk.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            wrk_rc = "timeout"
        stop(wrk)
        flipper.stop()
        if wrk_rc != 0:
            die(f"wrk failed ({wrk_rc}); see {out}: {tail(out, 5)}")
        if daemon.poll() is not None:
            die("the daemon died during the soak; see bench/.work/daemon-soak.log")
        rss_after = status_kib(daemon.pid, "VmRSS")
        hwm = status_kib(daemon.pid, "VmHWM")
        m1 = cf.mints()
        line = wrk_line(out, "SOAK")

        requests, unexpected = line["requests"], line["unexpected"]
        socket_errors = line["connect"] + line["read"] + line["write"] + line["timeout"]
        rps = f"{requests / (line['duration_us'] / 1e6):.0f}"
        growth = f"{(rss_end - rss_start) * 100 / rss_start:.1f}"
        with open(daemon_log, "rb") as f:
            log_lines = f.read().count(b"\n")
        threads = len(os.listdir(f"/proc/{daemon.pid}/task"))

        self.emit([
            "# matrix-turnify soak",
            "",
            f"Command: `SOAK_SECONDS={self.soak_seconds} bash bench/run.sh soak`",
            "",
            f"Load: `wrk -t2 -c64 -d{seconds}s --timeout 2s --latency -s bench/soak.lua http://127.0.0.1:PORT{TURN_PATH}`,",
            "rotating valid token (v3 path), invalid token, valid token (r0 path); the daemon runs with",
            "CREDENTIAL_REUSE=false and the fake Cloudflare flips between healthy and 503 every 5 s.",
            "",
            *self.machine_info(),
            "## Results",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| requests served | {requests} |",
            f"| requests/s | {rps} |",
            f"| p50 / p99 | {fmt_ms(line['p50_us'])} / {fmt_ms(line['p99_us'])} |",
            f"| sent with a valid / an invalid token | {line['sent_valid']} / {line['sent_invalid']} |",
            f"| 200 with Cloudflare credentials | {line['ok_credentials']} |",
            f"| 200 fallback (Synapse's `{{}}`) | {line['ok_fallback']} |",
            f"| 401 | {line['unauthorized']} |",
            f"| 5xx | {line['status_5xx']} |",
            f"| other statuses | {line['status_other']} |",
            f"| socket errors (connect/read/write/timeout) | {socket_errors} "
            f"({line['connect']}/{line['read']}/{line['write']}/{line['timeout']}) |",
            f"| answers of the wrong class | {line['misattributed']} |",
            f"| **unexpected** | **{unexpected}** |",
            f"| Cloudflare mints during the soak | {m1 - m0} |",
            f"| fake Cloudflare flips | {flipper.flips()} |",
            f"| daemon VmRSS after 5 s warm-up (t = {at_start} s) | {kib_to_mib(rss_start)} MiB |",
            f"| daemon VmRSS at middle (t = {at_mid} s) | {kib_to_mib(rss_mid)} MiB |",
            f"| daemon VmRSS at end (t = {at_end} s, wrk still running) | {kib_to_mib(rss_end)} MiB |",
            f"| daemon VmRSS after the load | {kib_to_mib(rss_after)} MiB |",
            f"| daemon peak RSS (VmHWM) | {kib_to_mib(hwm)} MiB |",
            f"| daemon log (LOG_LEVEL=warn) | {log_lines} lines, {du_h(daemon_log)} |",
            f"| daemon threads at end | {threads} |",
            f"| RSS growth, warm-up → end | {growth} % |",
            "",
            "## Targets",
            "",
            pass_fail(unexpected == 0, f"unexpected answers: {unexpected} (must be 0)"),
            pass_fail(float(growth) < 10, f"RSS growth from after warm-up to end: {growth} % (< 10 %)"),
            pass_fail(hwm < 20 * 1024, f"daemon peak RSS {kib_to_mib(hwm)} MiB (< 20 MiB)"),
            "",
            self.footer(),
        ], "soak-results.md")

    # ---------------------------------------------------------- livekit mode --

    def join_rows(self, cases, joins):
        """Rows of the join table for CASES, each a dict: label, port (LiveKit's
        or a front door's), identity (a function of the join's number: 0 is the
        warm-up, not counted), room (a function of the identity), and for a
        front door its cf and door, one each per case. The cases take turns,
        one join each per round, in an order rotated every round, so that
        whatever else runs on the machine weighs on all alike; each join is
        left cleanly before the next."""
        log(f"bench: livekit: {joins} joins each, in turns: " + "; ".join(c["label"] for c in cases))
        for c in cases:
            conn, _, _ = lk_join(c["port"], c["identity"](0), c["room"](c["identity"](0)))
            conn.leave(time.monotonic() + 5)
            c["mints0"] = c["cf"].mints() if c.get("cf") else 0
            c["ended0"] = c["door"].ended()[1] if c.get("door") else {}
            c["times"], c["carried"] = [], 0
        for i in range(1, joins + 1):
            turn = (i - 1) % len(cases)
            for c in cases[turn:] + cases[:turn]:
                identity = c["identity"](i)
                conn, secs, cloudflare = lk_join(c["port"], identity, c["room"](identity))
                conn.leave(time.monotonic() + 5)
                c["times"].append(secs * 1000)
                c["carried"] += cloudflare
        for c in cases:
            outcomes, mints = "-", None
            if c.get("door"):
                still_open, ended = c["door"].ended()
                counts = {k: v - c["ended0"].get(k, 0) for k, v in sorted(ended.items()) if v > c["ended0"].get(k, 0)}
                outcomes = ", ".join(f"{k} {v}" for k, v in counts.items())
                outcomes += f" ({still_open} still open)" if still_open else ""
                mints = c["cf"].mints() - c["mints0"]
            times = sorted(c["times"])
            self.lk_rows.append(dict(label=c["label"], n=len(times), median=statistics.median(times),
                                     p90=nearest_rank(times, 0.9), min=times[0], max=times[-1],
                                     carried=c["carried"], mints=mints, outcomes=outcomes))

    @staticmethod
    def join_table(rows):
        out = ["| case | n | median | p90 | min | max | joins carrying the Cloudflare entry "
               "| daemon's `turn` outcomes | CF mints |",
               "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in rows:
            carried = "-" if r["mints"] is None else f"{r['carried']}/{r['n']} ({r['carried'] * 100 / r['n']:.0f} %)"
            mints = "-" if r["mints"] is None else str(r["mints"])
            out.append(f"| {r['label']} | {r['n']} | {r['median']:.1f} ms | {r['p90']:.1f} ms "
                       f"| {r['min']:.1f} ms | {r['max']:.1f} ms | {carried} | {r['outcomes']} | {mints} |")
        return out

    def memory(self, lk, cf, participants, rooms):
        """The daemon's RSS idle, then with PARTICIPANTS open signalling connections
        (ROOMS rooms), kept alive with pings; LiveKit's next to it."""
        door = FrontDoor("lk-memory", cf, lk.port, verify=False, log_level="info")
        pid = door.pid
        m = {"idle_rss": status_kib(pid, "VmRSS"), "idle_hwm": status_kib(pid, "VmHWM"),
             "idle_sockets": socket_fds(pid), "lk_idle_rss": status_kib(lk.proc.pid, "VmRSS")}
        log(f"bench: livekit: {participants} signalling connections through the daemon, {rooms} rooms")
        keeper = Keeper()
        carried = []
        lock = threading.Lock()
        failures = []

        def joiner(indices):
            for i in indices:
                try:
                    conn, _, cloudflare = lk_join(door.port, f"member-{i:04d}", f"bench-memory-{i % rooms:02d}")
                except Die as e:
                    with lock:
                        failures.append(str(e))
                    return
                with lock:
                    carried.append(cloudflare)
                keeper.add(conn)

        t0 = time.monotonic()
        workers = [threading.Thread(target=joiner, args=(range(w, participants, 8),)) for w in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        m["join_seconds"] = time.monotonic() - t0
        if failures:
            keeper.stop()
            die(f"{len(failures)} of {participants} joins failed; first: {failures[0]}")
        # Measured once every connection is open and has answered a ping
        # through the daemon (bounded: three ping rounds).
        deadline = time.monotonic() + 3 * Keeper.PING_INTERVAL
        while keeper.alive_and_answered(1) < participants and time.monotonic() < deadline:
            time.sleep(0.05)
        m["answered"] = keeper.alive_and_answered(1)
        m["at"] = time.monotonic() - t0
        m["rss"] = status_kib(pid, "VmRSS")
        m["hwm"] = status_kib(pid, "VmHWM")
        m["sockets"] = socket_fds(pid)
        m["relayed"] = door.signalling()[0]
        m["threads"] = len(os.listdir(f"/proc/{pid}/task"))
        m["lk_rss"] = status_kib(lk.proc.pid, "VmRSS")
        m["lk_hwm"] = status_kib(lk.proc.pid, "VmHWM")
        # Once more two ping rounds later (a sampling point, as in soak mode):
        # still open, still the same size.
        time.sleep(2 * Keeper.PING_INTERVAL)
        m["answered2"] = keeper.alive_and_answered(2)
        m["at2"] = time.monotonic() - t0
        m["rss2"] = status_kib(pid, "VmRSS")
        conns = keeper.stop()
        m["keeper_errors"] = keeper.errors
        m["pings"] = sum(c.pings for c in conns)
        m["pongs"] = sum(c.pongs for c in conns)
        m["carried"] = sum(carried)

        def leaver(part):
            for conn in part:
                conn.leave(time.monotonic() + 5)

        leavers = [threading.Thread(target=leaver, args=(conns[w::8],)) for w in range(8)]
        for w in leavers:
            w.start()
        for w in leavers:
            w.join()
        m["after_open"], _ = door.ended()
        m["after_sockets"] = socket_fds(pid)
        m["after_rss"] = status_kib(pid, "VmRSS")

        # The client's message bound: one connection, two messages of exactly
        # MAX_CLIENT_MESSAGE_BYTES, each followed by a ping whose pong shows
        # LiveKit has had the whole message through the daemon.
        m["max_bytes"] = livekit_const("MAX_CLIENT_MESSAGE_BYTES")
        conn, _, _ = lk_join(door.port, f"large-{START_EPOCH:x}", f"bench-large-{START_EPOCH:x}")
        m["large_before"] = status_kib(pid, "VmRSS")
        large = lkclient.filler_request(m["max_bytes"])
        for k in (1, 2):
            conn.send_binary(large)
            conn.send_binary(lkclient.ping_request())
            deadline = time.monotonic() + 30
            try:
                while True:
                    opcode, payload = conn.next_message(deadline)
                    if opcode == lkclient.OP_BINARY and lkclient.is_pong(payload):
                        break
            except (OSError, TimeoutError, lkclient.ProtocolError) as e:
                die(f"no pong after a {m['max_bytes']}-byte message: {e}")
            m[f"large_{k}"] = status_kib(pid, "VmRSS")
        conn.leave(time.monotonic() + 5)
        door.ended()
        m["large_after"] = status_kib(pid, "VmRSS")
        self.attack(door, m)
        self.silent(door, m)
        door.stop()
        return m

    def attack(self, door, m):
        """The memory attack: as many signalling connections as the door's cap
        allows, each joined with a valid token, then sending the start of a
        message declared at MAX_CLIENT_MESSAGE_BYTES and holding it there: its
        FREE_MESSAGE_BYTES and an even share of RELAY_BUDGET_BYTES, the most
        they can hold together. Measured: the daemon's RSS and peak while they
        hold, how many it ended for the relay budget, RSS once they are gone."""
        pid = door.pid
        cap = int(log_field(door.log, "connection caps", "livekit_max_connections"))
        m["attack_cap"] = cap
        m["budget"] = livekit_const("RELAY_BUDGET_BYTES")
        m["attack_hold"] = livekit_const("FREE_MESSAGE_BYTES") + m["budget"] // cap
        m["attack_before"] = status_kib(pid, "VmRSS")
        log(f"bench: livekit: memory attack, {cap} connections each holding {m['attack_hold']} bytes of a message")
        held, lock, failures = [], threading.Lock(), []
        head = client_frame_head(m["max_bytes"])
        body = bytes(m["attack_hold"])

        def attacker(indices):
            for i in indices:
                try:
                    conn, _, _ = lk_join(door.port, f"attacker-{START_EPOCH:x}-{i:04d}",
                                         f"bench-attack-{START_EPOCH:x}-{i % 100:02d}")
                    conn.sock.sendall(head + body)
                except (Die, OSError) as e:
                    with lock:
                        failures.append(str(e))
                    continue
                with lock:
                    held.append(conn)

        t0 = time.monotonic()
        workers = [threading.Thread(target=attacker, args=(range(w, cap, 8),)) for w in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        # Settled: the relayed count no longer moves for a second.
        last, still = None, time.monotonic()
        while time.monotonic() - still < 1 and time.monotonic() - t0 < 60:
            now = door.signalling()[0]
            if now != last:
                last, still = now, time.monotonic()
            time.sleep(0.1)
        m["attack_seconds"] = time.monotonic() - t0
        m["attack_joined"] = len(held)
        m["attack_failures"] = failures[:3]
        m["attack_open"] = door.signalling()[0]
        m["attack_rss"] = status_kib(pid, "VmRSS")
        m["attack_hwm"] = status_kib(pid, "VmHWM")
        for conn in held:
            conn.sock.close()
        door.ended(timeout=30)
        m["attack_after"] = status_kib(pid, "VmRSS")
        with open(door.log, errors="replace") as f:
            m["attack_budget_lines"] = sum(1 for line in f if "memory budget is spent" in line)

    def silent(self, door, m):
        """A client that joins and then neither reads nor sends: how long until
        its connection ends, and who ended it (the daemon's log line)."""
        log("bench: livekit: a silent client (joins, then neither reads nor sends; up to 180 s)")
        open_before = door.signalling()[0]
        conn, _, _ = lk_join(door.port, f"silent-{START_EPOCH:x}", f"bench-silent-{START_EPOCH:x}")
        t0 = time.monotonic()
        while door.signalling()[0] > open_before and time.monotonic() - t0 < 180:
            time.sleep(0.5)
        m["silent_seconds"] = time.monotonic() - t0
        m["silent_ended_by"] = "still open after 180 s"
        if door.signalling()[0] <= open_before:
            # Its line is the last: every other connection had ended before it opened.
            with open(door.log, errors="replace") as f:
                last = [line for line in f if "signalling connection" in line][-1]
            code = re.search(r"close_code=(\d+)", last)
            m["silent_ended_by"] = (re.search(r"ended_by=(\S+)", last)[1]
                                    + (f", close code {code[1]}" if code else ", no close frame"))
        conn.sock.close()

    def livekit_mode(self):
        joins = int(self.lk_joins)
        participants = int(self.lk_participants)
        rooms = max(1, participants // 10)
        binary = livekit_bin()
        lk = LiveKit(binary)
        run_id = f"{START_EPOCH:x}"  # fresh identities and rooms per run
        started = []  # (fake Cloudflare, front door) pairs, to stop after each group

        def case(label, prefix, room, cf_latency=None, verify=False, same_identity=False):
            c = {"label": label, "port": lk.port,
                 "identity": (lambda i: f"{prefix}-{run_id}") if same_identity else (lambda i: f"{prefix}-{run_id}-{i:04d}"),
                 "room": room if callable(room) else (lambda _identity: f"{room}-{run_id}")}
            if cf_latency is not None:
                c["cf"] = FakeCloudflare(cf_latency)
                c["door"] = FrontDoor(prefix, c["cf"], lk.port, verify)
                c["port"] = c["door"].port
                started.append((c["cf"], c["door"]))
            return c

        def stop_started():
            for cf, door in started:
                door.stop()
                cf.stop()
            started.clear()

        # One room per row, there before the counted joins (the warm-up made it).
        # A hit: one identity throughout; the warm-up join minted its credential.
        self.join_rows([
            case("straight to LiveKit (no daemon)", "direct", "direct"),
            case("daemon, reuse hit (same identity; CF 150 ms)", "hit", "hit", 150, same_identity=True),
            case("daemon, miss, CF 150 ms, no verifying key", "miss", "miss", 150),
            case("daemon, miss, CF 150 ms, LIVEKIT_KEY + LIVEKIT_SECRET", "early", "early", 150, verify=True),
        ], joins)
        stop_started()
        # Past the hold bound: the join goes on as LiveKit sent it.
        self.join_rows([case("daemon, miss, CF 2000 ms (past JOIN_HOLD), no verifying key", "late", "late", 2000)],
                       int(self.lk_late_joins))
        stop_started()

        cf0 = FakeCloudflare(0)
        mem = self.memory(lk, cf0, participants, rooms)
        cf0.stop()

        # A new room per join: LiveKit creates it before its join, the set-up
        # an early mint overlaps. Last, so that these rooms (LiveKit keeps an
        # empty one for its departure timeout, 20 s) do not count in its RSS above.
        def own_room(identity):
            return f"room-of-{identity}"

        self.join_rows([
            case("straight to LiveKit, new room per join", "direct-new", own_room),
            case("daemon, miss, CF 150 ms, no verifying key, new room per join", "miss-new", own_room, 150),
            case("daemon, miss, CF 150 ms, LIVEKIT_KEY + LIVEKIT_SECRET, new room per join", "early-new", own_room,
                 150, verify=True),
        ], joins)
        stop_started()
        lk_version = tool_version([binary, "--version"])
        lk.stop()
        self.emit_livekit(mem, participants, rooms, lk_version)

    def emit_livekit(self, m, participants, rooms, lk_version):
        mib = kib_to_mib
        per_conn = (m["rss"] - m["idle_rss"]) / participants
        rows = self.lk_rows
        lines = [
            "# matrix-turnify benchmark: the LiveKit front door",
            "",
            f"Command: `LIVEKIT_JOINS={self.lk_joins} LIVEKIT_LATE_JOINS={self.lk_late_joins} "
            f"LIVEKIT_PARTICIPANTS={self.lk_participants} bash bench/run.sh livekit`",
            "",
            "## Machine",
            "",
            f"- nproc: {len(os.sched_getaffinity(0))}",
            f"- load average before measuring: {self.load_start} (1/5/15 min)",
            f"- LiveKit: {lk_version} (real, from .ci/go_peers.py; loopback, its TURN off)",
            f"- tools: {tool_version(['rustc', '--version'], 2)}, Python {sys.version.split()[0]}",
            f"- commit: {(git('rev-parse', '--short', 'HEAD') or 'unknown').strip()}",
            "",
            "## Join latency",
            "",
            "Every row against the real livekit-server, each through a daemon and fake Cloudflare of its",
            "own. From the start of the TCP connect (the WebSocket upgrade on a fresh connection) to the",
            "whole first binary message, LiveKit's SignalResponse join; each join is left (LeaveRequest,",
            "close frame) before the next. The rows of a group (first four, fifth, last three) take turns,",
            "one join each per round. The first join of each row is a warm-up and not counted; on the hit",
            "row it is the join that minted the credential.",
            "Carrying the entry: the join's ICE servers include the fake Cloudflare's turn.cloudflare.com",
            "URIs, as the client read them. The daemon's `turn` outcomes: its",
            "turnify_livekit_signalling_connections_total{turn} over the counted joins. CF mints: the fake",
            "Cloudflare's count over them (a mint still under way when the row ends is not in it).",
            "",
            *self.join_table(rows),
            "",
            "## Memory",
            "",
            f"{participants} signalling connections through the daemon to LiveKit ({rooms} rooms of "
            f"{participants // rooms}), reuse on, no verifying key, CF latency 0; opened by 8 threads in "
            f"{m['join_seconds']:.1f} s, each then sent a ping_req at once and every {Keeper.PING_INTERVAL} s "
            "(LiveKit's ping interval), WebSocket pings answered.",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| daemon VmRSS idle (front door up, no connection) | {mib(m['idle_rss'])} MiB |",
            f"| daemon VmHWM idle | {mib(m['idle_hwm'])} MiB |",
            f"| connections open and answering pings (t = {m['at']:.1f} s after the first join) "
            f"| {m['answered']}/{participants} |",
            f"| daemon VmRSS with {participants} connections | {mib(m['rss'])} MiB |",
            f"| daemon VmHWM with {participants} connections | {mib(m['hwm'])} MiB |",
            f"| daemon RSS per connection ((with − idle) ÷ {participants}) | {per_conn:.1f} KiB |",
            f"| connections the daemon relayed then (its /metrics) | {m['relayed']} |",
            f"| daemon sockets idle / with {participants} connections | {m['idle_sockets']} / {m['sockets']} |",
            f"| daemon threads | {m['threads']} |",
            f"| still open after two more ping rounds (t = {m['at2']:.1f} s) | {m['answered2']}/{participants} |",
            f"| daemon VmRSS then | {mib(m['rss2'])} MiB |",
            f"| daemon VmRSS after all left ({m['after_open']} relayed, {m['after_sockets']} sockets) "
            f"| {mib(m['after_rss'])} MiB |",
            f"| LiveKit VmRSS idle / with {participants} participants (VmHWM) "
            f"| {mib(m['lk_idle_rss'])} / {mib(m['lk_rss'])} MiB ({mib(m['lk_hwm'])}) |",
            f"| joins that carried the Cloudflare entry | {m['carried']}/{participants} |",
            f"| pings sent / pongs received | {m['pings']} / {m['pongs']} |",
            "",
            "LiveKit removes a participant that has not connected its media within a minute of joining",
            "(room.go, ParticipantCloseReasonJoinTimeout); these connections have no media, so every",
            "reading above is taken within that minute.",
            "",
            f"Then, on the same daemon, one connection and two client messages of exactly MAX_CLIENT_MESSAGE_BYTES "
            f"({m['max_bytes']} bytes, a SignalRequest with only a field LiveKit does not know, so nothing "
            "comes back), each followed by a ping whose pong shows it went through:",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| daemon VmRSS, one connection open | {mib(m['large_before'])} MiB |",
            f"| after the first message | {mib(m['large_1'])} MiB "
            f"(+{(m['large_1'] - m['large_before']) / 1024:.1f} MiB) |",
            f"| after the second, same connection | {mib(m['large_2'])} MiB |",
            f"| after the connection closed | {mib(m['large_after'])} MiB |",
            "",
            f"The memory attack: as many connections as the LiveKit door's cap ({m['attack_cap']}), each joined "
            f"with a valid token (100 rooms), then holding the first {m['attack_hold']} bytes of a message declared "
            f"at {m['max_bytes']} bytes: FREE_MESSAGE_BYTES and an even share of RELAY_BUDGET_BYTES "
            f"({m['budget'] // 1048576} MiB), the most they can hold together:",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| daemon VmRSS before | {mib(m['attack_before'])} MiB |",
            f"| connections joined and holding / still relayed once settled ({m['attack_seconds']:.1f} s) "
            f"| {m['attack_joined']} / {m['attack_open']} |",
            f"| daemon VmRSS while they hold | {mib(m['attack_rss'])} MiB |",
            f"| daemon VmHWM (peak since start) | {mib(m['attack_hwm'])} MiB |",
            f"| \"memory budget is spent\" warnings (throttled) | {m['attack_budget_lines']} |",
            f"| daemon VmRSS once they are gone | {mib(m['attack_after'])} MiB |",
            "",
            f"A silent client (joins, then neither reads nor sends): its connection ended after "
            f"{m['silent_seconds']:.1f} s ({m['silent_ended_by']}).",

        ]
        if m["keeper_errors"]:
            lines += ["", f"Keeper errors ({len(m['keeper_errors'])}): {m['keeper_errors'][:3]}"]
        hit, miss, early, late = rows[1], rows[2], rows[3], rows[4]
        spliced = [hit, miss, early, rows[6], rows[7]]
        misses = [miss, early, rows[6], rows[7]]
        lines += [
            "",
            "## Checks",
            "",
            *[pass_fail(r["carried"] == r["n"], f"{r['label']}: {r['carried']}/{r['n']} joins carried the "
                        "Cloudflare entry (all)") for r in spliced],
            pass_fail(hit["mints"] == 0, f"reuse hit: {hit['mints']} mints over {hit['n']} joins (0)"),
            *[pass_fail(r["mints"] == r["n"], f"{r['label']}: {r['mints']} mints over {r['n']} joins (one each)")
              for r in misses],
            pass_fail(late["carried"] == 0 and late["min"] >= 1500,
                      f"past JOIN_HOLD: {late['carried']}/{late['n']} carried the entry, fastest join "
                      f"{late['min']:.0f} ms (none; the join is held 1.5 s, then goes on unchanged)"),
            pass_fail(m["answered"] == participants and m["answered2"] == participants,
                      f"{participants} connections open and answering pings, twice ({m['answered']}, "
                      f"{m['answered2']})"),
            pass_fail(m["carried"] == participants,
                      f"memory run: {m['carried']}/{participants} joins carried the Cloudflare entry"),
            pass_fail(m["hwm"] < 20 * 1024, f"daemon peak RSS {mib(m['hwm'])} MiB with {participants} "
                      "connections (< 20 MiB)"),
            "",
            self.footer(),
        ]
        self.emit(lines, "livekit-results.md")


class Flipper:
    """Flips the fake Cloudflare between healthy (as it starts) and failing (503)
    every 5 s, logging each flip. The daemon's back-off (docs/behaviour.md §5: 30 s after 3
    failures) means it may skip Cloudflare through several healthy windows; that
    is expected."""

    def __init__(self, cf, path):
        self.cf, self.path = cf, path
        self.stopping = threading.Event()
        self.log = open(path, "w")
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        FLIPPERS.append(self)

    def run(self):
        steps = [({"fail_status": 503}, "fail_status 503", "flip to fail failed"),
                 ({"ok": True, "latency_ms": 0}, "ok", "flip to ok failed")]
        i = 0
        while not self.stopping.wait(5):
            body, done, failed = steps[i % 2]
            ok = self.cf.behaviour(body)
            print(f"{time.strftime('%H:%M:%S')} {done if ok else failed}", file=self.log, flush=True)
            i += 1

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.log.close()
        if self in FLIPPERS:
            FLIPPERS.remove(self)

    def flips(self):
        with open(self.path) as f:
            return sum(1 for line in f if line.strip())


FLIPPERS = []


# ------------------------------------------------------------------- main --

def main(argv):
    mode = argv[0] if argv and argv[0] else "bench"
    if mode in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if mode not in ("bench", "soak", "aarch64", "livekit") or len(argv) > 1:
        sys.stderr.write(USAGE)
        return 2
    bench_seconds = env("BENCH_SECONDS", "10")
    soak_seconds = env("SOAK_SECONDS", "60")
    if not re.fullmatch(r"[1-9][0-9]*", bench_seconds):
        log("BENCH_SECONDS must be a positive integer")
        return 2
    if not (re.fullmatch(r"[1-9][0-9]*", soak_seconds) and int(soak_seconds) >= 15):
        log("SOAK_SECONDS must be an integer of at least 15 (5 s warm-up, then samples)")
        return 2
    for name, default in (("LIVEKIT_JOINS", "60"), ("LIVEKIT_LATE_JOINS", "10"), ("LIVEKIT_PARTICIPANTS", "200")):
        if not re.fullmatch(r"[1-9][0-9]*", env(name, default)):
            log(f"{name} must be a positive integer")
            return 2

    def on_term(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    os.chdir(ROOT)
    try:
        os.makedirs(WORK, exist_ok=True)
        ensure_tools(mode)
        build()
        run = Run(bench_seconds, soak_seconds)
        {"bench": run.bench_mode, "soak": run.soak_mode, "aarch64": run.aarch64_mode,
         "livekit": run.livekit_mode}[mode]()
        return 0
    except Die as e:
        log(f"bench: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for f in list(FLIPPERS):
            f.stop()
        for p in reversed(list(PROCS)):
            stop(p)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
