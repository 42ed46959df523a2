#!/usr/bin/env python3
"""The one installer of what the scripted runs need (stdlib only): Debian
packages, a pip venv, `npm ci`, the Go peers.

One convention for everything kept between runs (a venv, node_modules): it
is made under an flock on the directory that holds it, so that two runs at
once do not build it under each other, and carries a marker naming what it
was made from, so that a rerun with the same inputs does nothing.

    install.py apt PKG...           the missing Debian packages; exit 1 if any is still missing
    install.py npm-ci DIR           npm ci in DIR when its package-lock.json changed
    install.py venv DIR REQ...      a venv in DIR with pip's REQ..., unless it has them
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
# apt may wait 600 s for the dpkg lock, then download and install.
APT_TIMEOUT_S = 1800
LOCK_TIMEOUT_S = 1800


@contextlib.contextmanager
def locked(directory):
    """Holds an flock on DIRECTORY itself (no lock file to leave behind or
    to be deleted under a holder); raises TimeoutError after LOCK_TIMEOUT_S."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another run holds the lock on {directory}") from None
                time.sleep(1)
        yield
    finally:
        os.close(fd)


def _run(cmd, log, **kw):
    """CMD with its output appended to the open file LOG; its exit status."""
    log.flush()
    return subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                          **kw).returncode


def apt_missing(pkgs):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *pkgs], capture_output=True, text=True)
    installed = {line.split()[0] for line in out.stdout.splitlines() if line.endswith("install ok installed")}
    return [p for p in pkgs if p not in installed]


def apt(pkgs, log):
    """Installs the Debian packages of PKGS that are missing, all at once; if
    that fails, after an apt-get update, one at a time, so that one Debian
    lacks costs only its own checks. Returns those still missing."""
    missing = apt_missing(pkgs)
    if not missing or os.geteuid() != 0:
        return missing
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*APT, "install", "-y", "-q", "--no-install-recommends"]
    if _run([*install, *missing], log, env=env, timeout=APT_TIMEOUT_S) != 0:
        _run([*APT, "update", "-q"], log, env=env, timeout=APT_TIMEOUT_S)
        for p in missing:
            _run([*install, p], log, env=env, timeout=APT_TIMEOUT_S)
    return apt_missing(pkgs)


def venv(path, requirements, log):
    """A venv at PATH with pip's REQUIREMENTS (pinned), made by this
    interpreter; True once it is there."""
    path = Path(path)
    marker = path / ".requirements"
    want = "\n".join([sys.version, *requirements]) + "\n"
    with locked(path.parent):
        if marker.is_file() and marker.read_text() == want:
            return True
        if subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
            apt(["python3-venv"], log)
        shutil.rmtree(path, ignore_errors=True)
        for cmd in ([sys.executable, "-m", "venv", path],
                    [path / "bin" / "pip", "install", "-q", "--disable-pip-version-check", *requirements]):
            if _run(cmd, log, timeout=APT_TIMEOUT_S) != 0:
                return False
        marker.write_text(want)
        return True


def npm_ci(directory, log):
    """npm ci in DIRECTORY when its package-lock.json changed since the last
    install there; True once node_modules matches it."""
    directory = Path(directory)
    lock_sum = hashlib.sha256((directory / "package-lock.json").read_bytes()).hexdigest()
    marker = directory / "node_modules" / ".e2e-lock-sha256"
    with locked(directory):
        if marker.is_file() and marker.read_text().strip() == lock_sum:
            return True
        if _run(["npm", "ci", "--no-audit", "--no-fund"], log, cwd=directory, timeout=APT_TIMEOUT_S) != 0:
            return False
        marker.write_text(lock_sum + "\n")
        return True


def go_peer(name):
    """.ci/go_peers.py NAME (it keeps its own cache and locks): (exit status,
    the folder of the binaries, its stderr). Status 2: the module proxy
    refuses it."""
    r = subprocess.run([sys.executable, ROOT / ".ci" / "go_peers.py", name], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=3600)
    return r.returncode, Path(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None, r.stderr.strip()


def main(argv):
    """For bash: what each step did goes to stdout, for the caller's log."""
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "apt" and args:
        still = apt(args, sys.stdout)
        if still:
            print(f"not installed: {' '.join(still)}", flush=True)
        return 1 if still else 0
    if cmd == "npm-ci" and len(args) == 1:
        return 0 if npm_ci(args[0], sys.stdout) else 1
    if cmd == "venv" and len(args) >= 2:
        return 0 if venv(args[0], args[1:], sys.stdout) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
