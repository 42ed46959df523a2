"""What bench/bench.py's modes share: settings, the processes they start
(through tests/e2e/lib/supervise.py), measurements read from /proc, the
fake Synapse (nginx), the fake Cloudflare, the daemon, and the report
each mode prints. Python 3.11 standard library only.
"""

import math
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
WORK = os.path.join(BENCH, ".work")
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e", "lib"))
from e2e import FAKE_CLOUDFLARE, fake_mints, free_ports, nginx_conf as nginx_scaffold, request, start_fake, tail  # noqa: E402
import install  # noqa: E402
import supervise  # noqa: E402
from supervise import SUPERVISOR, WaitError  # noqa: E402

TOKEN = "syt_bench_token"
TURN_PATH = "/_matrix/client/v3/voip/turnServer"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DAEMON_BIN = os.path.join(ROOT, "target/release/matrix-turnify")
BUILD = ["cargo", "build", "--release", "--locked", "-p", "matrix-turnify", "-p", "turnify-fakes",
         "--bin", "matrix-turnify", "--bin", "fake_cloudflare"]
START_EPOCH = int(time.time())
# How long a started process has to be ready, and to exit after SIGTERM.
READY_S, STOP_S = 20, 5


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


# ---------------------------------------------------------------- processes --

def start(what, argv, out, err=None, environ=None, ready=None):
    """Starts ARGV through the supervisor, output to the file OUT (stderr to ERR
    if given); waits at most READY_S for READY (supervise.url or .line)."""
    try:
        return SUPERVISOR.start(argv, out, err=err, env=environ, ready=ready, timeout=READY_S)
    except WaitError as e:
        if e.exited:
            die(f"{what} exited before it was ready; see bench/.work")
        die(f"{what} was not ready within {READY_S} s: {e}")


def stop(*procs):
    SUPERVISOR.stop(*procs, timeout=STOP_S)


def ready_url(address):
    return supervise.url(address, poll=0.05)


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

NGINX_KEEPALIVE = """\
    # wrk and the daemon keep connections open for the whole run.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
"""

# A fake homeserver: TURN as {turn} answers it, a user on whoami.
NGINX_HOMESERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$ {{
            default_type application/json;
{turn}        }}
        location = /_matrix/client/v3/account/whoami {{
            default_type application/json;
            return 200 '{{"user_id":"@bench:localhost","is_guest":false,"device_id":"BENCH"}}';
        }}
        location = /health {{
            default_type text/plain;
            return 200 'OK';
        }}
    }}
"""

# Synapse with TURN configured ({check}: the soak's token check, or nothing).
NGINX_SYNAPSE_TURN = """\
            add_header Cache-Control "no-cache, no-store, must-revalidate" always;
            add_header Access-Control-Allow-Origin * always;
{check}            return 200 '{{}}';
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

# A homeserver of the Conduit family without TURN (MSC4166).
NGINX_MSC4166_TURN = """\
            add_header Access-Control-Allow-Origin * always;
            return 404 '{"errcode":"M_NOT_FOUND","error":"Not Found"}';
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
"""


def nginx_conf(kind, port, upstream=None):
    """The nginx.conf of KIND: synapse (fast fake Synapse), synapse-soak (the same,
    401 for any token but the bench one), msc4166 (a homeserver of the Conduit
    family without TURN: 404 M_NOT_FOUND on turnServer, a user on whoami) or
    proxy (the reference hop in front of the fake on UPSTREAM)."""
    d = os.path.join(WORK, f"nginx-{kind}")
    conf = NGINX_KEEPALIVE
    if kind == "synapse":
        conf += NGINX_HOMESERVER.format(port=port, turn=NGINX_SYNAPSE_TURN.format(check=""))
    elif kind == "synapse-soak":
        turn = NGINX_SYNAPSE_TURN.format(check=NGINX_SOAK_CHECK)
        conf += NGINX_SOAK_MAP.format(token=TOKEN) + NGINX_HOMESERVER.format(port=port, turn=turn)
    elif kind == "msc4166":
        conf += NGINX_HOMESERVER.format(port=port, turn=NGINX_MSC4166_TURN)
    elif kind == "proxy":
        conf += NGINX_PROXY.format(port=port, upstream=upstream)
    return nginx_scaffold(d, conf, connections=1024, error_log="warn", access_log=False)


def start_nginx(kind, port, upstream=None):
    """Writes bench/.work/nginx-KIND/nginx.conf, starts nginx on it; returns
    (master, worker PID)."""
    d = os.path.join(WORK, f"nginx-{kind}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "temp"))
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(kind, port, upstream))
    test = subprocess.run(["nginx", "-t", "-q", "-p", d, "-c", conf], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=30)
    with open(os.path.join(d, "config-test.log"), "w") as f:
        f.write(test.stderr)
    if test.returncode != 0:
        die(f"nginx rejected {conf}: {test.stderr.rstrip()}")
    master = start(f"nginx ({kind})", ["nginx", "-p", d, "-c", conf], os.path.join(d, "stdout.log"),
                   os.path.join(d, "stderr.log"), ready=ready_url(f"http://127.0.0.1:{port}/health"))
    for _ in range(200):
        kids = children(master.pid)
        if len(kids) == 1:
            return master, kids[0]
        time.sleep(0.05)
    die(f"could not find the single worker of nginx ({kind}), master PID {master.pid}")


class FakeCloudflare:
    """fakes/src/bin/fake_cloudflare.rs, started and read through tests/e2e/lib."""

    def __init__(self, latency_ms):
        out = os.path.join(WORK, f"fake-cloudflare-{latency_ms}ms.log")
        try:
            self.base, self.proc = start_fake(FAKE_CLOUDFLARE, out, "--key-id", "bench-key", "--api-token",
                                              "bench-token", "--latency-ms", str(latency_ms), timeout=READY_S)
        except WaitError as e:
            die(f"fake Cloudflare: {e}; see {out}")
        self.origin = self.base.removesuffix("/v1")

    def mints(self):
        try:
            return int(fake_mints(self.origin, timeout=5))
        except (OSError, ValueError, KeyError, RuntimeError):
            die(f"could not read the mint count from {self.origin}/__fake/stats")

    def stop(self):
        stop(self.proc)


def start_daemon(name, reuse, synapse_port, cf, command=None, extra=None):
    """Starts the daemon (COMMAND, by default the release binary; for the aarch64
    binary the process is qemu itself) in a clean environment, with EXTRA
    variables; returns (Popen, URL)."""
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
        **(extra or {}),
    }
    base = f"http://127.0.0.1:{port}"
    p = start(f"matrix-turnify ({name})", command or [DAEMON_BIN], os.path.join(WORK, f"daemon-{name}.log"),
              environ=environ, ready=ready_url(f"{base}/healthz"))
    return p, base


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
        if install.apt(missing, sys.stderr):
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
    if not (os.access(DAEMON_BIN, os.X_OK) and os.access(FAKE_CLOUDFLARE, os.X_OK)):
        die(f"build produced no {DAEMON_BIN} or {FAKE_CLOUDFLARE}")


class Report:
    """What every mode's printed report shares: the machine, the load, the footer."""

    def __init__(self):
        self.load_start = loadavg()

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

    @staticmethod
    def footer():
        return f"Load average at end: {loadavg()}; total run time {int(time.time()) - START_EPOCH} s."

    @staticmethod
    def emit(lines, name):
        text = "\n".join(lines) + "\n"
        sys.stdout.write(text)
        sys.stdout.flush()
        with open(os.path.join(WORK, name), "w") as f:
            f.write(text)
