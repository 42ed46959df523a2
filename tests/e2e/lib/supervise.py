"""The one process supervisor of every scripted run: the e2e suites, CI's
binary checks and the bench (stdlib only).

    from supervise import SUPERVISOR, url, line
    p = SUPERVISOR.start([binary, ...], log_path, env=env, ready=url("http://127.0.0.1:PORT/healthz"))
    SUPERVISOR.stop(p)            SIGTERM, a bounded wait, then SIGKILL

Each child runs in its own process group, whose id is the child's pid, so a
signal reaches what it forked too (nginx's workers, node's browser) and
nothing else. Readiness is a bounded wait that gives up as soon as the child
exits. Whatever is still running when the script exits, SIGTERM included, is
stopped the same way.
"""

import atexit
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

POLL = 0.2
STOP_TIMEOUT_S = 10


def pid_alive(pid):
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); look at /proc
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_until(pred, timeout, poll=POLL, pid=None):
    """Call pred() every `poll` seconds until it returns something true, for at
    most `timeout` seconds, and no longer than process `pid` (if given) lives.
    Returns pred's last value: false on a timeout or once `pid` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline or not pid_alive(pid):
            return v
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


class WaitError(Exception):
    """A bounded wait gave up; .exited is True when the watched process exited first."""

    def __init__(self, message, exited=False):
        super().__init__(message)
        self.exited = exited


def _status(url):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
    try:
        conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(url, status=200, timeout=60, pid=None, poll=POLL):
    """Poll URL (GET, fresh connection) until it answers STATUS; return the seconds
    it took. Raises WaitError after TIMEOUT seconds, or once PID has exited."""
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise WaitError(f"process {pid} exited while waiting for {url} ({last})", exited=True)
        try:
            st, body = _status(url)
            if st == status:
                return time.monotonic() - start
            last = f"status {st}: {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(poll)
    raise WaitError(f"timeout after {timeout}s waiting for {url}: {last}")


def wait_line(path, regex, timeout=60, pid=None, poll=POLL):
    """Poll the file PATH until a line matches REGEX; return group 1 (or the line).
    Raises WaitError after TIMEOUT seconds, or once PID has exited without it."""
    deadline = time.monotonic() + timeout
    rx = re.compile(regex)
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                for text in f:
                    m = rx.search(text)
                    if m:
                        return m.group(1) if m.groups() else text.rstrip("\n")
        except FileNotFoundError:
            pass
        if not pid_alive(pid):
            raise WaitError(f"process {pid} exited before printing /{regex}/ in {path}", exited=True)
        time.sleep(poll)
    raise WaitError(f"timeout after {timeout}s waiting for /{regex}/ in {path}")


# Readiness conditions for Supervisor.start: each waits for its child, bounded.

def url(address, status=200, poll=POLL):
    """Ready once ADDRESS answers a GET with STATUS; the value is the seconds it took."""
    return lambda p, timeout: wait_http(address, status, timeout, p.pid, poll)


def line(path, regex, poll=POLL):
    """Ready once the file PATH has a line matching REGEX; the value is its group 1 (or the line)."""
    return lambda p, timeout: wait_line(path, regex, timeout, p.pid, poll)


class Supervisor:
    def __init__(self):
        self.children = []
        atexit.register(self.stop_all)

    def start(self, cmd, log=None, *, err=None, ready=None, timeout=60, **popen):
        """Starts CMD in its own process group, with stdin from /dev/null, its
        output in the file LOG (stderr too, or in the file ERR), unless POPEN
        says otherwise. With READY (url(...), line(...)), waits for it at most
        TIMEOUT seconds and sets the child's .ready to its value; raises
        WaitError, the child stopped, if it does not come."""
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # Unwind through atexit, which stops the children, instead of dying with them running.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        popen.setdefault("stdin", subprocess.DEVNULL)
        files = []
        try:
            if log is not None:
                files.append(open(log, "wb"))
                popen["stdout"] = files[-1]
                if err is not None:
                    files.append(open(err, "wb"))
                popen.setdefault("stderr", files[-1] if err is not None else subprocess.STDOUT)
            p = subprocess.Popen([str(c) for c in cmd], process_group=0, **popen)
        finally:
            for f in files:
                f.close()
        self.children.append(p)
        if ready is not None:
            try:
                p.ready = ready(p, timeout)
            except WaitError:
                self.stop(p)
                raise
        return p

    def stop(self, *procs, timeout=STOP_TIMEOUT_S):
        """SIGTERM to each child's group, the last started first; SIGKILL to the
        group of any child still there after TIMEOUT seconds. Reaps them;
        returns their exit statuses."""
        for p in reversed(procs):
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"supervise: pid {p.pid} ignored SIGTERM for {timeout} s; SIGKILL", file=sys.stderr, flush=True)
                # Before the reaping: until then the group's id is the child's.
                _signal_group(p, signal.SIGKILL)
                p.wait()
            if p in self.children:
                self.children.remove(p)
        return [p.returncode for p in procs]

    def stop_all(self, timeout=STOP_TIMEOUT_S):
        self.stop(*self.children, timeout=timeout)


def _signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


# The process's supervisor: every helper module of one process starts its children here.
SUPERVISOR = Supervisor()
