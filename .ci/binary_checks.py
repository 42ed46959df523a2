#!/usr/bin/env python3
"""The six checks of the release binary, run the way the image runs it: as
uid 1000, with an empty environment, from a read-only directory, as PID 1.
Written once for both architectures: .ci/ship_checks.py runs them on the
native musl build, .ci/aarch64-checks.sh on the aarch64 build under
qemu-aarch64-static (stdlib only).

  binary_checks.py BINARY [--qemu QEMU] [--arch WORD] [--ready S] [--stop S]
  binary_checks.py --skip REASON      the six, each SKIP with REASON

--arch: a word `file` must print for the binary (e.g. "ARM aarch64").
Reports through tests/e2e/lib/report.py; exits 1 if a check failed.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "lib"))
import e2e  # noqa: E402  (free_ports, pid_alive, wait_until)
from report import REPORT  # noqa: E402
from supervise import SUPERVISOR  # noqa: E402

COMMAND_TIMEOUT_S = 600


def names(ready_s, stop_s, arch=None):
    return [
        f"binary is a static {arch} ELF" if arch else "binary is statically linked",
        "--version as uid 1000, empty environment, read-only cwd",
        "empty environment: exits non-zero with one stderr line each for CF_TURN_KEY_ID and CF_TURN_API_TOKEN",
        f"serve as PID 1 (uid 1000): healthcheck exits 0 within {ready_s} s",
        f"SIGTERM to PID 1: exits 0 within {stop_s} s",
        "healthcheck exits 1 when nothing listens",
    ]


def skip_all(rep, reason, ready_s, stop_s, arch=None):
    for name in names(ready_s, stop_s, arch):
        rep.skip(f"{name} ({reason})")


def run(cmd, timeout=COMMAND_TIMEOUT_S, **kw):
    """Run cmd, stdout and stderr together in .stdout (text). A missing program
    is exit status 127 and a timeout 124, as in a shell."""
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", timeout=timeout, **kw)
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(cmd, 127, f"{e}\n")
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        return subprocess.CompletedProcess(cmd, 124, f"{out}\ntimed out after {timeout} s\n")


class Daemon:
    """The binary serving as PID 1 of its own PID namespace: `wrapper` is the
    unshare process the supervisor started, in its own process group with
    `pid`, its only child, the daemon (qemu, under emulation)."""

    def __init__(self):
        self.wrapper = None
        self.pid = None

    def kill(self, stop_s):
        if self.wrapper:
            SUPERVISOR.stop(self.wrapper, timeout=stop_s)
        self.wrapper = self.pid = None


def first_child(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def namespace_pid(pid):
    """The process's id in its own PID namespace (the last NSpid field)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line.split()[-1] for line in f if line.startswith("NSpid:")), None)
    except OSError:
        return None


def check_binary(rep, built, ready_s, stop_s, qemu=None, arch=None):
    """The six checks on the file BUILT (copied into a scratch directory);
    under emulation when QEMU is the path of a qemu-user binary."""
    work = Path(tempfile.mkdtemp(prefix="binary-checks.", dir="/tmp"))
    daemon = Daemon()
    try:
        _check(rep, Path(built), work, daemon, ready_s, stop_s, qemu, arch)
    finally:
        daemon.kill(stop_s)
        shutil.rmtree(work, ignore_errors=True)


def _check(rep, built, work, daemon, ready_s, stop_s, qemu, arch):
    static, version, empty, serve, sigterm, nothing = names(ready_s, stop_s, arch)
    # The binary and a working directory that uid 1000 can read but not
    # write, outside the work tree (which may sit under a 0700 home directory).
    work.chmod(0o755)
    (work / "bin").mkdir(mode=0o755)
    ro = work / "ro"
    ro.mkdir()
    binary = work / "bin" / "matrix-turnify"
    shutil.copyfile(built, binary)
    binary.chmod(0o555)
    ro.chmod(0o555)

    if os.geteuid() == 0:
        as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
        as_pid1 = ["unshare", "--pid", "--fork", "--kill-child=SIGKILL"]
        if run(["unshare", "--pid", "--fork", "true"]).returncode != 0:
            as_pid1 = []
    else:
        rep.info(f"not root: running the binary as {run(['id', '-un']).stdout.strip()} "
                 "instead of uid 1000, and not as PID 1")
        as_user, as_pid1 = [], []

    def command(envs, args):
        # env execs qemu, and qemu loads the foreign ELF.
        return [*as_user, "env", "-i", *envs, *([qemu] if qemu else []), str(binary), *args]

    def run_bin(envs, *args, timeout=30):
        """Run the binary as the image does: (exit status, stdout, stderr);
        status 124 if it outlived the timeout (it is killed)."""
        try:
            r = subprocess.run(command(envs, args), cwd=ro, capture_output=True, text=True,
                               errors="replace", timeout=timeout)
            return r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as e:
            return 124, "", f"timed out after {timeout} s\n{e.stderr or ''}"

    # 1. static (and, when asked, of the given architecture)
    described = run(["file", "-L", str(binary)]).stdout
    f = described + ("" if qemu else run(["ldd", str(binary)]).stdout)
    m = re.search(r"static-pie linked|statically linked", f)
    if (m or "not a dynamic executable" in f) and (not arch or arch in described):
        fields = described.split(": ", 1)[-1].strip().split(",")
        what = (",".join(fields[:2] + [f for f in fields if "linked" in f]) if arch
                else m.group(0) if m else "not a dynamic executable")
        rep.ok(f"{static} ({what})")
    else:
        rep.fail(static, f)

    # 2. --version
    with open(ROOT / "Cargo.toml", "rb") as fh:
        crate_version = tomllib.load(fh)["package"]["version"]
    rc, out, err = run_bin([], "--version")
    if rc == 0 and crate_version in out:
        rep.ok(f"{version}: {(out.splitlines() or [''])[0]}")
    else:
        rep.fail(f"{version} (expected {crate_version} on stdout)", out + err)

    # 3. empty environment: every missing setting at once, one clear line
    # each, no panic.
    rc, out, err = run_bin([])
    lines = err.splitlines()
    named = [next((v for v in ("CF_TURN_KEY_ID", "CF_TURN_API_TOKEN") if f"{v}: " in line), None) for line in lines]
    if rc != 0 and named == ["CF_TURN_KEY_ID", "CF_TURN_API_TOKEN"] and "panick" not in err.lower():
        rep.ok(f"empty environment: exits {rc} with one stderr line each for CF_TURN_KEY_ID and "
               f"CF_TURN_API_TOKEN: {' | '.join(lines)}")
    else:
        rep.fail(empty, f"exit status {rc}, {len(lines)} stderr line(s):\n{err}\nstdout:\n{out}")

    # 4-6. serve, healthcheck, SIGTERM, healthcheck against nothing.
    port = e2e.free_ports(1)[0]
    # Minimal valid configuration; every upstream is a closed loopback port,
    # so nothing leaves the machine even if the daemon tried.
    serve_env = [
        f"LISTEN_ADDR=127.0.0.1:{port}",
        "CF_TURN_KEY_ID=k",
        "CF_TURN_API_TOKEN=t",
        "SYNAPSE_BASE_URL=http://127.0.0.1:9",
        "CF_TURN_API_BASE_URL=http://127.0.0.1:9/v1",
    ]
    serve_err = work / "serve.err"
    daemon.wrapper = SUPERVISOR.start([*as_pid1, *command(serve_env, [])], work / "serve.out", err=serve_err,
                                      cwd=ro)

    def stderr():
        return serve_err.read_text(errors="replace")
    if as_pid1:
        # unshare forks once; its only child becomes the daemon (setpriv
        # and env exec into it), PID 1 of the new namespace.
        daemon.pid = e2e.wait_until(lambda: first_child(daemon.wrapper.pid), 2.5, poll=0.05,
                                    pid=daemon.wrapper.pid)
    else:
        daemon.pid = daemon.wrapper.pid

    last_hc = [""]

    def healthy():
        rc, out, err = run_bin(serve_env, "healthcheck", timeout=ready_s)
        last_hc[0] = out + err
        return rc == 0

    ready = e2e.wait_until(healthy, ready_s, poll=0.1, pid=daemon.wrapper.pid)
    ns_pid = namespace_pid(daemon.pid) if daemon.pid else None
    if ready and (not as_pid1 or ns_pid == "1"):
        rep.ok(f"serve as PID 1 (NSpid {ns_pid or '?'}, uid 1000) on 127.0.0.1:{port}: "
               f"healthcheck exits 0 within {ready_s} s")
    else:
        rep.fail(serve, f"ready: {bool(ready)}, PID in its namespace: {ns_pid or '?'}\n"
                        f"daemon stderr:\n{stderr()}\nlast healthcheck stderr:\n{last_hc[0]}")

    # As PID 1 a process only gets the signals it handles: without a
    # SIGTERM handler `docker stop` waits 10 s and then kills it. qemu-user
    # catches every signal for the guest and hands it on, so under
    # emulation this shows the foreign build's SIGTERM handling.
    if daemon.pid and e2e.pid_alive(daemon.pid):
        os.kill(daemon.pid, signal.SIGTERM)
        try:
            stop_rc = daemon.wrapper.wait(timeout=stop_s)
            stopped = True
        except subprocess.TimeoutExpired:
            stopped = False
            stop_rc = None
        daemon.kill(stop_s)
        if stopped and stop_rc == 0:
            rep.ok(sigterm)
        else:
            rep.fail(sigterm, f"stopped in time: {int(stopped)}, exit status: {stop_rc}\n"
                              f"daemon stderr:\n{stderr()}")
    else:
        daemon.kill(stop_s)
        rep.fail(sigterm, f"daemon exited before SIGTERM; stderr:\n{stderr()}")

    rc, out, err = run_bin(serve_env, "healthcheck")
    if rc == 1:
        rep.ok(f"healthcheck exits 1 when nothing listens on 127.0.0.1:{port}")
    else:
        rep.fail(nothing, f"exit status {rc}\n{out}{err}")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary", nargs="?")
    p.add_argument("--qemu")
    p.add_argument("--arch")
    p.add_argument("--ready", type=int, default=10)
    p.add_argument("--stop", type=int, default=5)
    p.add_argument("--skip", metavar="REASON")
    a = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    # On SIGTERM, unwind through check_binary's cleanup (the daemon, the scratch directory).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.skip:
        skip_all(REPORT, a.skip, a.ready, a.stop, a.arch)
    elif a.binary:
        check_binary(REPORT, a.binary, a.ready, a.stop, a.qemu, a.arch)
    else:
        p.error("BINARY or --skip")
    return REPORT.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
