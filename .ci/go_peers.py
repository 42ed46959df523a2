#!/usr/bin/env python3
"""Build the Go-written test peers from the Go module proxy, into a cache
outside the clone.

    python3 .ci/go_peers.py NAME   (NAME: traefik, cloudflared, dendrite, livekit)

prints the directory holding NAME's binaries (`traefik`; `cloudflared`;
`dendrite`, `create-account`, `generate-config`, `generate-keys`;
`livekit-server`) and exits 0.
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
"""

import fcntl
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


def build(name):
    """Return the directory holding NAME's binaries, building them if needed."""
    if name not in PEERS:
        raise BuildError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    module, version, binaries = PEERS[name]
    root = cache_root()
    dest = root / f"{name}-{version}"
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
        mod_dir, resolved = download(go, module, version, env)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix=f"src-{name}-", dir=root) as tmp:
            # The module cache is read-only; `go build` inside a copy also
            # honours the module's own replace directives.
            src = Path(tmp) / "src"
            shutil.copytree(mod_dir, src, symlinks=True)
            for path in [src, *src.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o200)
            bindir.mkdir()
            for binary, package in binaries.items():
                res = run([go, "build", "-trimpath", "-o", str(bindir / binary), package],
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
    if len(argv) != 2 or argv[1] not in PEERS:
        print(f"usage: {argv[0]} {'|'.join(PEERS)}", file=sys.stderr)
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
