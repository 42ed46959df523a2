#!/usr/bin/env python3
"""Build the Go-written test peers from the Go module proxy, into a cache
outside the clone.

    python3 .ci/go_peers.py NAME   (NAME: traefik, cloudflared, dendrite, livekit,
                                    livekit-auth-oracle)

prints the directory holding NAME's binaries (`traefik`; `cloudflared`;
`dendrite`, `create-account`, `generate-config`, `generate-keys`;
`livekit-server`; `livekit-auth-oracle`) and exits 0.
Exit status 2 means the module proxy refuses the module (the reason is on
stderr, and callers print SKIPPED with it); 1, any other failure.

Every peer is pinned to one module version below. The cache is
${XDG_CACHE_HOME:-$HOME/.cache}/matrix-turnify-go/<name>-<version>/bin; a
complete build there (its stamp file written last) is reused, so a warm run
costs nothing. Go's own module and build caches (GOMODCACHE, GOCACHE, the
go command's defaults, also outside the clone) make a rebuild after a version
change cheaper. A lock file per peer keeps concurrent runs from building the
same thing twice or reading a half-written binary.

Only the module proxy is used, never a git clone: `go mod download -json
module@version` fetches the module's zip (checked against go.sum's checksum
database as usual), and the build runs in a writable copy of the module's
directory. That also covers modules whose go.mod has `replace` directives,
which `go install module/cmd@version` refuses. Nothing fetched or built is
ever written inside the clone.

A local peer is a Go module of the test tree (LOCAL below), built from a
copy of its directory with `-mod=readonly`, so its go.mod and go.sum alone
say what is fetched. Its cache entry is <name>-<digest>/bin, the digest
covering its files and the peer it mirrors: an edit builds afresh, an
unchanged tree reuses the build. Before building, every module its go.mod
requires must be required at the same version by the go.mod of the release
it mirrors (whose go.mod lists every module its build uses), so the oracle
runs the very code that release runs.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name: (module, version, {binary name: package in the module})
PEERS = {
    # Traefik v3, the proxy of the Python original's compose file.
    "traefik": ("github.com/traefik/traefik/v3", "v3.6.12", {"traefik": "./cmd/traefik"}),
    # cloudflared, the tunnel of the seed design. Its release tags (YYYY.M.N)
    # are not semantic versions; the proxy resolves such a tag to a
    # pseudo-version. The release of the compose file's image.
    "cloudflared": ("github.com/cloudflare/cloudflared", "2026.6.1",
                    {"cloudflared": "./cmd/cloudflared"}),
    # Dendrite from matrix-org (Apache-2.0). Never github.com/element-hq/dendrite:
    # that fork is AGPL.
    "dendrite": ("github.com/matrix-org/dendrite", "v0.13.8",
                 {"dendrite": "./cmd/dendrite", "create-account": "./cmd/create-account",
                  "generate-config": "./cmd/generate-config", "generate-keys": "./cmd/generate-keys"}),
    # The LiveKit SFU the front door sits before. v1.13.5 is the newest
    # release the proxy can build: from v1.13.6 on, go.mod replaces pion's
    # webrtc, dtls and ice with LiveKit's "-warp" forks, which it refuses.
    "livekit": ("github.com/livekit/livekit-server", "v1.13.5",
                {"livekit-server": "./cmd/server"}),
}

ROOT = Path(__file__).resolve().parent.parent

# name: (directory in the clone, {binary name: package}, the PEERS entry
# whose module versions it must build with)
LOCAL = {
    # How livekit-server reads a signalling request's token, for
    # tests/it/livekit_reading.rs.
    "livekit-auth-oracle": ("tests/oracle/livekit-auth", {"livekit-auth-oracle": "."}, "livekit"),
}

DOWNLOAD_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 1800
LOCK_TIMEOUT_S = BUILD_TIMEOUT_S + DOWNLOAD_TIMEOUT_S + 60
STAMP = "complete.json"


class Unavailable(Exception):
    """The module proxy refuses the module or version: not a failure of ours."""


class BuildError(Exception):
    pass


def go_binary():
    found = shutil.which("go")
    if found:
        return found
    if os.access("/usr/local/go/bin/go", os.X_OK):
        return "/usr/local/go/bin/go"
    # Debian's Go is older than these modules need, and GOTOOLCHAIN=local
    # fetches no other: without the machine's Go, none can be built here.
    raise Unavailable("no go command (looked on PATH and at /usr/local/go/bin/go)")


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ.get("HOME") or "/root", ".cache")
    return Path(base) / "matrix-turnify-go"


def go_env():
    env = dict(os.environ)
    # The machine's Go builds these; never fetch another toolchain.
    env["GOTOOLCHAIN"] = "local"
    # Only the module proxy: never fall back to cloning a repository.
    env["GOPROXY"] = "https://proxy.golang.org"
    env.pop("GOFLAGS", None)
    return env


def run(cmd, timeout, cwd=None, env=None):
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{' '.join(cmd)}: no result within {timeout} s") from e


def tail(text, lines=30):
    return "\n".join(text.strip().splitlines()[-lines:])


def download(go, module, version, env):
    """Fetch module@version from the proxy; return (its directory, resolved version)."""
    res = run([go, "mod", "download", "-json", f"{module}@{version}"], DOWNLOAD_TIMEOUT_S, env=env)
    try:
        info = json.loads(res.stdout or "{}")
    except json.JSONDecodeError:
        info = {}
    err = info.get("Error") or res.stderr
    if res.returncode != 0 or not info.get("Dir"):
        if "403 Forbidden" in err or "404 Not Found" in err or "410 Gone" in err:
            raise Unavailable(f"the Go module proxy refuses {module}@{version}: {tail(err, 3)}")
        raise BuildError(f"go mod download {module}@{version} failed:\n{tail(err)}")
    return Path(info["Dir"]), info.get("Version", version)


def complete(dest, binaries):
    """A finished build of exactly these binaries (the stamp is written last)."""
    try:
        stamp = json.loads((dest / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("binaries") == sorted(binaries) and all(
        os.access(dest / "bin" / b, os.X_OK) for b in binaries)


def local_digest(src, peer):
    """What a local peer's build depends on: its files and the mirrored peer's pin."""
    h = hashlib.sha256(repr(PEERS[peer]).encode())
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def required(go, gomod, env):
    """{module: version} of a go.mod's require lines."""
    res = run([go, "mod", "edit", "-json", str(gomod)], 60, env=env)
    if res.returncode != 0:
        raise BuildError(f"go mod edit -json {gomod} failed:\n{tail(res.stderr)}")
    return {r["Path"]: r["Version"] for r in json.loads(res.stdout).get("Require") or []}


def check_pins(go, name, src, peer, env):
    """Refuse to build a local peer whose modules differ from the release it mirrors."""
    module, version, _ = PEERS[peer]
    res = run([go, "list", "-m", "-json", f"{module}@{version}"], DOWNLOAD_TIMEOUT_S, env=env)
    try:
        gomod = json.loads(res.stdout or "{}").get("GoMod")
    except json.JSONDecodeError:
        gomod = None
    if res.returncode != 0 or not gomod:
        err = res.stderr
        if "403 Forbidden" in err or "404 Not Found" in err or "410 Gone" in err:
            raise Unavailable(f"the Go module proxy refuses {module}@{version}: {tail(err, 3)}")
        raise BuildError(f"go list -m {module}@{version} failed:\n{tail(err)}")
    theirs = required(go, gomod, env)
    ours = required(go, src / "go.mod", env)
    wrong = [f"{m} {v} (theirs: {theirs.get(m, 'not required')})"
             for m, v in sorted(ours.items()) if theirs.get(m) != v]
    if wrong:
        raise BuildError(f"{name}'s go.mod must require what {module}@{version} requires:\n  "
                         + "\n  ".join(wrong))


def writable_copy(src, dest):
    """A copy the build may write to (the module cache is read-only)."""
    shutil.copytree(src, dest, symlinks=True)
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)


def build(name):
    """Return the directory holding NAME's binaries, building them if needed."""
    if name in PEERS:
        module, version, binaries = PEERS[name]
        dest_name = f"{name}-{version}"
    elif name in LOCAL:
        where, binaries, peer = LOCAL[name]
        local_src = ROOT / where
        module, version = f"{where} (local)", local_digest(local_src, peer)
        dest_name = f"{name}-{version}"
    else:
        raise BuildError(f"unknown peer {name!r}; known: {', '.join([*PEERS, *LOCAL])}")
    root = cache_root()
    dest = root / dest_name
    bindir = dest / "bin"
    if complete(dest, binaries):
        return bindir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"another build of {name} held {root / (name + '.lock')} "
                                     f"for over {LOCK_TIMEOUT_S} s")
                time.sleep(1)
        # Another run may have finished it while this one waited.
        if complete(dest, binaries):
            return bindir
        go = go_binary()
        env = go_env()
        started = time.monotonic()
        if name in PEERS:
            mod_dir, resolved = download(go, module, version, env)
            flags = []
        else:
            check_pins(go, name, local_src, peer, env)
            mod_dir, resolved = local_src, version
            # go.mod and go.sum as committed, nothing resolved anew.
            flags = ["-mod=readonly"]
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix=f"src-{name}-", dir=root) as tmp:
            # `go build` inside a copy also honours the module's own replace
            # directives, and writes nothing where the source came from.
            src = Path(tmp) / "src"
            writable_copy(mod_dir, src)
            bindir.mkdir()
            for binary, package in binaries.items():
                res = run([go, "build", "-trimpath", *flags, "-o", str(bindir / binary), package],
                          BUILD_TIMEOUT_S, cwd=src, env=env)
                if res.returncode != 0:
                    if "403 Forbidden" in res.stderr:
                        # A dependency the proxy does not serve: no build of
                        # this version can succeed here.
                        refused = sorted({line.split(": reading ")[0].rsplit(": ", 1)[-1]
                                          for line in res.stderr.splitlines() if "403 Forbidden" in line})
                        raise Unavailable(f"the Go module proxy refuses dependencies of "
                                          f"{module}@{resolved}: {', '.join(refused)}")
                    raise BuildError(f"go build {package} ({module}@{resolved}) failed:\n"
                                     f"{tail(res.stderr)}")
        stamp = {"module": module, "version": version, "resolved": resolved,
                 "binaries": sorted(binaries), "go": run([go, "version"], 30, env=env).stdout.strip(),
                 "build_seconds": round(time.monotonic() - started, 1)}
        (dest / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        return bindir


def main(argv):
    if len(argv) != 2 or argv[1] not in [*PEERS, *LOCAL]:
        print(f"usage: {argv[0]} {'|'.join([*PEERS, *LOCAL])}", file=sys.stderr)
        return 1
    try:
        print(build(argv[1]))
    except Unavailable as e:
        print(e, file=sys.stderr)
        return 2
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
