#!/usr/bin/env python3
"""Helpers for tests/e2e/run.sh and the e2e scripts beside it (stdlib only).

Sub-commands:
  ports N                         print N distinct free loopback TCP ports
  wait-http URL [--timeout S] [--status N] [--pid PID]
                                  poll URL every 0.2 s until it answers N
  wait-line FILE REGEX [--timeout S] [--pid PID]
                                  poll FILE until a line matches, print group 1 (or the line)
  synapse-config ...              write homeserver.yaml + log config for one instance
  tokens STATE                    log users in, register guests, update the state JSON

Everything talks to 127.0.0.1 only. Suite is the checks (through report.py), the
started processes and the runner of tests/e2e/dendrite.py and livekit.py.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import install
from report import REPORT
from supervise import SUPERVISOR, WaitError, line, pid_alive, url, wait_http, wait_line, wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]
DAEMON = ROOT / "target" / "release" / "matrix-turnify"
FAKE_CLOUDFLARE = ROOT / "target" / "release" / "fake_cloudflare"
FAKE_SYNAPSE = ROOT / "target" / "release" / "fake_synapse"
# tests/e2e/run.sh builds the first two too.
CARGO_BUILD = ["cargo", "build", "--release", "--locked", "-p", "matrix-turnify", "-p", "turnify-fakes",
               "--bin", "matrix-turnify", "--bin", "fake_cloudflare", "--bin", "fake_synapse"]


# --------------------------------------------------------------------------- ports

def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- nginx

def nginx_conf(d, http, *, connections, error_log="info", access_log=True, user_root=False):
    """The nginx.conf the suites and the bench run Debian's nginx on: one worker
    in the foreground, its pid, logs and temp files under directory D (D/temp
    must exist), HTTP (directives and server blocks, indented) as the http
    block; USER_ROOT for workers that read files only root may."""
    return ("user root;\n" if user_root else "") + f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log {error_log};
events {{ worker_connections {connections}; }}
http {{
    access_log {f"{d}/access.log" if access_log else "off"};
    client_body_temp_path {d}/temp/client_body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
{http}}}
"""


# --------------------------------------------------------------------------- http

def request(base, method, path, headers=None, body=None, timeout=10, source=None):
    """One HTTP/1.1 request on a fresh connection. Returns (status, headers list, body bytes)."""
    u = urllib.parse.urlsplit(base)
    kw = {"timeout": timeout}
    if source:
        kw["source_address"] = (source, 0)
    conn = http.client.HTTPConnection(u.hostname, u.port, **kw)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for k, v in (headers or []):
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheaders(), data
    finally:
        conn.close()


def cmd_wait_http(a):
    try:
        print(f"{wait_http(a.url, a.status, a.timeout, a.pid):.2f}")
    except WaitError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def cmd_wait_line(a):
    try:
        print(wait_line(a.file, a.regex, a.timeout, a.pid))
    except WaitError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def tail(path, n=15):
    """The last N lines of a log, for a failure's message; empty if it cannot be read."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# The fakes crate's processes (fakes/src/bin), and the one client of the fake
# Cloudflare's control API (fakes/src/cloudflare.rs).

def start_fake(binary, log, *args, timeout=30):
    """BINARY (FAKE_CLOUDFLARE, FAKE_SYNAPSE) on an ephemeral loopback port, with
    ARGS, output in LOG; returns (the URL its one line names, the process)."""
    p = SUPERVISOR.start([binary, "--listen", "127.0.0.1:0", *args], log, timeout=timeout,
                         ready=line(log, r"^listening on (http://127\.0\.0\.1:[0-9]+\S*)\s*$", poll=0.05))
    return p.ready, p


def fake_stats(origin, timeout=10):
    """The fake Cloudflare's counters (its /__fake/stats): "requests", "mints", ..."""
    st, _, body = request(origin, "GET", "/__fake/stats", timeout=timeout)
    if st != 200:
        raise RuntimeError(f"fake Cloudflare stats: {st}")
    return json.loads(body)


def fake_mints(origin, timeout=10):
    return fake_stats(origin, timeout)["mints"]


def fake_behaviour(origin, obj, timeout=10):
    """POST /__fake/behaviour: how the fake answers from now on (fail_status,
    latency_ms, ok, ...)."""
    st, _, body = request(origin, "POST", "/__fake/behaviour", [("Content-Type", "application/json")],
                          json.dumps(obj).encode(), timeout=timeout)
    if st // 100 != 2:
        raise RuntimeError(f"fake behaviour {obj}: {st} {body!r}")


# --------------------------------------------------------------------------- a script's checks

class Skip(Exception):
    """Ends a Suite's main: SKIPPED, for the reason given, exit 0."""


class Stop(Exception):
    """Ends a Suite's main after a failed check: exit 1."""


class Suite:
    """One e2e script's checks and processes: reports "LABEL: name" checks
    through report.py, stops what it started, and runs the script's main (run)."""

    def __init__(self, label, work):
        self.label = label
        self.work = work

    def check(self, name, problems):
        """problems: a list of strings; empty means the check passed."""
        REPORT.verdict(f"{self.label}: {name}", problems)

    def require(self, name, problems):
        """Nothing when PROBLEMS is empty; else a failed check, and main stops there."""
        if problems:
            self.check(name, problems)
            raise Stop(name)

    def go_peer(self, name, label):
        """The folder of the binaries .ci/go_peers.py NAME builds; SKIPPED if
        the module proxy refuses LABEL."""
        rc, bindir, err = install.go_peer(name)
        if rc == 2:
            raise Skip(f"{label} cannot be built here: {err}")
        self.require(f"built from the Go module proxy (.ci/go_peers.py {name})", [err[-2000:]] if rc != 0 else [])
        return bindir

    def fresh_work(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)

    def cargo_build(self):
        # Next to nothing after tests/e2e/run.sh, which builds all but fake_synapse.
        build = subprocess.run(CARGO_BUILD, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        self.require("cargo build of the daemon and the fakes",
                     [build.stderr[-2000:]] if build.returncode != 0 else [])

    @staticmethod
    def start_fake_cloudflare(log, *args):
        """The fake Cloudflare on an ephemeral port, with ARGS; returns its base URL (…/v1)."""
        return start_fake(FAKE_CLOUDFLARE, log, *args)[0]

    @staticmethod
    def start_fake_synapse(log, *args):
        """The fake Synapse on an ephemeral port, with ARGS; returns its base URL."""
        return start_fake(FAKE_SYNAPSE, log, *args)[0]

    @staticmethod
    def start(log, cmd, env=None, cwd=None, ready=None, timeout=60):
        """Starts CMD with its output in the file LOG, through the supervisor."""
        return SUPERVISOR.start(cmd, log, env=env, cwd=cwd, ready=ready, timeout=timeout)

    def run(self, main):
        """Runs MAIN (0 or 1), then stops everything and exits: 0 when nothing
        failed, also when nothing ran (main said SKIPPED), else 1. A run that
        ends in an exception is one more failed check, "the run completed"."""
        t0 = time.monotonic()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        rc = 1
        try:
            rc = main()
        except Skip as e:
            print(f"SKIPPED: {e}")
            rc = 0
        except Stop:
            rc = 1
        except (WaitError, SystemExit, OSError, RuntimeError, subprocess.SubprocessError, ValueError) as e:
            if isinstance(e, SystemExit) and e.code in (0, None):
                rc = 0
            else:
                self.check("the run completed", [str(e)])
        finally:
            SUPERVISOR.stop_all()
        if REPORT.failed:
            print(f"# logs: {self.work}")
        print(f"# elapsed: {time.monotonic() - t0:.1f} s")
        if rc == 0 and REPORT.passed + REPORT.failed == 0:
            sys.exit(0)  # SKIPPED, said by main
        sys.exit(1 if REPORT.finish() or rc else 0)


# --------------------------------------------------------------------------- synapse config

def relaxed(per_second=1000, burst=1000):
    return {"per_second": per_second, "burst_count": burst}


def cmd_synapse_config(a):
    d = os.path.abspath(a.dir)
    os.makedirs(os.path.join(d, "media_store"), exist_ok=True)
    log_file = os.path.join(d, "homeserver.log")
    log_config = os.path.join(d, "log.yaml")
    # JSON is valid YAML: no PyYAML needed outside the venv.
    log = {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise", "filename": log_file, "encoding": "utf8"}},
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }
    with open(log_config, "w") as f:
        json.dump(log, f, indent=1)
    rc = relaxed()
    cfg = {
        "server_name": "localhost",
        "public_baseurl": f"http://127.0.0.1:{a.port}/",
        "pid_file": os.path.join(d, "homeserver.pid"),
        "report_stats": False,
        "listeners": [{
            "port": a.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
            "x_forwarded": True, "resources": [{"names": ["client"], "compress": False}],
        }],
        "database": {"name": "sqlite3", "args": {"database": os.path.join(d, "homeserver.db")}},
        "log_config": log_config,
        "media_store_path": os.path.join(d, "media_store"),
        "signing_key_path": os.path.abspath(a.signing_key),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "registration_shared_secret": a.shared_secret,
        "macaroon_secret_key": a.shared_secret + "-macaroon",
        "form_secret": a.shared_secret + "-form",
        "enable_registration": False,
        "allow_guest_access": True,
        "bcrypt_rounds": 4,
        "enable_metrics": False,
        "url_preview_enabled": False,
        "presence": {"enabled": False},
        "rc_message": rc,
        "rc_registration": rc,
        "rc_registration_token_validity": rc,
        "rc_login": {"address": rc, "account": rc, "failed_attempts": rc},
        "rc_admin_redaction": rc,
        "rc_joins": {"local": rc, "remote": rc},
        "rc_joins_per_room": rc,
        "rc_invites": {"per_room": rc, "per_user": rc, "per_issuer": rc},
        "rc_3pid_validation": rc,
        "rc_key_requests": rc,
    }
    if a.variant == "B":
        cfg["turn_allow_guests"] = False
    elif a.variant == "C":
        # --turn-uris/--turn-secret: the coturn of relay.sh, so that a browser
        # can call with the credentials Synapse hands out.
        cfg["turn_uris"] = a.turn_uris.split(",") if a.turn_uris else [
            "turn:turn.example.test:3478?transport=udp",
            "turn:turn.example.test:3478?transport=tcp",
            "turns:turn.example.test:5349?transport=tcp",
        ]
        cfg["turn_shared_secret"] = a.turn_secret or "s3cret-for-tests"
        cfg["turn_user_lifetime"] = "1h"
    with open(os.path.join(d, "homeserver.yaml"), "w") as f:
        json.dump(cfg, f, indent=1)
    return 0


# --------------------------------------------------------------------------- tokens

def post_json(base, path, obj):
    st, _, body = request(base, "POST", path, [("Content-Type", "application/json")], json.dumps(obj).encode())
    try:
        data = json.loads(body)
    except ValueError:
        data = {"raw": body.decode("utf8", "replace")}
    return st, data


def login(base, user, password, device):
    st, data = post_json(base, "/_matrix/client/v3/login", {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        "device_id": device,
        "initial_device_display_name": f"e2e {device}",
    })
    if st != 200 or "access_token" not in data:
        raise SystemExit(f"login {user}@{base} failed: {st} {data}")
    return data["access_token"], data["user_id"]


def guest(base):
    st, data = post_json(base, "/_matrix/client/v3/register?kind=guest", {})
    if st != 200 or "access_token" not in data:
        raise SystemExit(f"guest registration at {base} failed: {st} {data}")
    return data["access_token"], data["user_id"]


def cmd_tokens(a):
    """state["synapse"][X]["logins"] = [[name, user, password], ...]; ["guests"] = [name, ...]"""
    with open(a.state) as f:
        state = json.load(f)
    for name, s in state["synapse"].items():
        base = s["url"]
        toks = s.setdefault("tokens", {})
        users = s.setdefault("users", {})
        for label, user, password in s.get("logins", []):
            toks[label], users[label] = login(base, user, password, f"E2E{label.upper()}")
        for label in s.get("guests", []):
            toks[label], users[label] = guest(base)
    with open(a.state + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(a.state + ".tmp", a.state)
    return 0


# --------------------------------------------------------------------------- main

def main(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("ports")
    q.add_argument("n", type=int)
    q = sub.add_parser("wait-http")
    q.add_argument("url")
    q.add_argument("--timeout", type=float, default=60)
    q.add_argument("--status", type=int, default=200)
    q.add_argument("--pid")
    q = sub.add_parser("wait-line")
    q.add_argument("file")
    q.add_argument("regex")
    q.add_argument("--timeout", type=float, default=60)
    q.add_argument("--pid")
    q = sub.add_parser("synapse-config")
    q.add_argument("--dir", required=True)
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--variant", choices=["A", "B", "C"], required=True)
    q.add_argument("--signing-key", required=True)
    q.add_argument("--shared-secret", required=True)
    q.add_argument("--turn-uris", help="variant C: comma-separated turn_uris")
    q.add_argument("--turn-secret", help="variant C: turn_shared_secret")
    q = sub.add_parser("tokens")
    q.add_argument("state")
    a = p.parse_args(argv)
    if a.cmd == "ports":
        print(" ".join(map(str, free_ports(a.n))))
        return 0
    return {
        "wait-http": cmd_wait_http,
        "wait-line": cmd_wait_line,
        "synapse-config": cmd_synapse_config,
        "tokens": cmd_tokens,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
