#!/usr/bin/env python3
"""The daemon's real job under qemu, for .ci/aarch64-checks.sh (stdlib only).

  aarch64_e2e.py WORK QEMU BINARY SYNAPSE_VENV SYNAPSE_VERSION READY_S
  aarch64_e2e.py --skip REASON

Starts, through tests/e2e/lib (install, supervise, e2e), a real Synapse
configured like the e2e suite's Synapse C (turn_uris and a shared secret,
so that its own 200 carries coturn credentials), the fake Cloudflare built
for the host, and BINARY under QEMU in front of them; logs alice in, then
runs the e2e suite's core cases with its own helpers
(tests/e2e/lib/checks.py), in this order:

  1. a valid token gets Cloudflare credentials;
  2. an invalid token gets Synapse's 401, status, body and headers;
  3. 100 requests with one fresh token cause exactly one mint;
  4. Cloudflare failing (503): Synapse's own 200 comes back unchanged.

Logs go to WORK (the caller's, removed by it). Reports through
tests/e2e/lib/report.py, into the caller's REPORT_TALLY.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "lib"))
import e2e  # noqa: E402
import install  # noqa: E402
from checks import TURN, bearer, check, cloudflare_answer, identical, jbody, section, show  # noqa: E402
from e2e import fake_behaviour, fake_stats, request  # noqa: E402
from report import REPORT  # noqa: E402
from supervise import SUPERVISOR, WaitError  # noqa: E402

# tests/e2e/lib/e2e.py's variant C.
TURN_URIS = ["turn:turn.example.test:3478?transport=udp", "turn:turn.example.test:3478?transport=tcp",
             "turns:turn.example.test:5349?transport=tcp"]


def failed(name, detail):
    """A setup step failed: the checks after it cannot run."""
    REPORT.fail(name, detail)


def run(cmd, log, **kw):
    with open(log, "a") as f:
        return subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                              **kw).returncode == 0


def main(work, qemu, binary, venv, version, ready_s):
    t0 = time.monotonic()
    with open(work / "synapse-pip.log", "w") as log:
        if not install.venv(venv, [f"matrix-synapse=={version}"], log):
            return failed(f"pip install matrix-synapse=={version}", e2e.tail(work / "synapse-pip.log", 40))
    # The fake Cloudflare is test equipment: built for the host, in the work
    # tree's target directory like the e2e suite's (already built there in CI).
    build = ["cargo", "build", "--release", "--locked", "-p", "turnify-fakes", "--bin", "fake_cloudflare"]
    if not run(["nice", "-n", "10", *build], work / "fake-build.log", cwd=ROOT):
        return failed(" ".join(build), e2e.tail(work / "fake-build.log", 40))
    sp, dp = e2e.free_ports(2)
    syn = work / "synapse"
    secret = f"aarch64-registration-{os.urandom(8).hex()}"
    if not (run([venv / "bin" / "generate_signing_key", "-o", work / "signing.key"], work / "synapse-config.log")
            and run([sys.executable, ROOT / "tests" / "e2e" / "lib" / "e2e.py", "synapse-config", "--dir", syn,
                     "--port", sp, "--variant", "C", "--signing-key", work / "signing.key",
                     "--shared-secret", secret], work / "synapse-config.log")):
        return failed("Synapse signing key and configuration", e2e.tail(work / "synapse-config.log", 40))
    synapse = SUPERVISOR.start([venv / "bin" / "python", "-m", "synapse.app.homeserver", "-c",
                                syn / "homeserver.yaml"], syn / "stdout.log")
    try:
        fake_base, _ = e2e.start_fake(e2e.FAKE_CLOUDFLARE, work / "fake-cloudflare.log", "--key-id", "e2e-key",
                                      "--api-token", "e2e-token")
        REPORT.ok(f"fake Cloudflare (host) listening on {fake_base}")
    except WaitError as e:
        return failed("fake Cloudflare started", f"{e}\n{e2e.tail(work / 'fake-cloudflare.log')}")
    # The daemon under qemu, started while Synapse boots: it needs Synapse
    # only per request.
    env = {"PATH": os.environ["PATH"], "LISTEN_ADDR": f"127.0.0.1:{dp}", "SYNAPSE_BASE_URL": f"http://127.0.0.1:{sp}",
           "SYNAPSE_TIMEOUT_SECONDS": "10", "CF_TURN_KEY_ID": "e2e-key", "CF_TURN_API_TOKEN": "e2e-token",
           "CF_TURN_API_BASE_URL": fake_base, "CREDENTIAL_REUSE": "true", "LOG_LEVEL": "info"}
    dmn = f"http://127.0.0.1:{dp}"
    try:
        daemon = SUPERVISOR.start([qemu, binary], work / "daemon.log", env=env, ready=e2e.url(f"{dmn}/healthz"),
                                  timeout=ready_s)
        REPORT.ok(f"aarch64 daemon under qemu answers /healthz on 127.0.0.1:{dp} (after {daemon.ready:.2f} s)")
    except WaitError as e:
        return failed("aarch64 daemon under qemu answers /healthz", f"{e}\n{e2e.tail(work / 'daemon.log', 40)}")
    try:
        t = e2e.wait_http(f"http://127.0.0.1:{sp}/health", timeout=60, pid=synapse.pid)
        REPORT.ok(f"Synapse {version} healthy on 127.0.0.1:{sp} (after {t:.2f} s)")
    except WaitError as e:
        return failed(f"Synapse {version} healthy", f"{e}\n{e2e.tail(syn / 'homeserver.log', 20)}")
    if not run([venv / "bin" / "register_new_matrix_user", "-u", "alice", "-p", "alice-password", "-a", "-c",
                syn / "homeserver.yaml", f"http://127.0.0.1:{sp}"], work / "register.log"):
        return failed("register and log in alice on Synapse", e2e.tail(work / "register.log", 40))
    try:
        tok = {label: e2e.login(f"http://127.0.0.1:{sp}", "alice", "alice-password", f"E2E{label.upper()}")[0]
               for label in ("main", "reuse", "fallback")}
    except SystemExit as e:  # e2e.login's way to say it failed
        return failed("register and log in alice on Synapse", str(e))
    checks({"url": f"http://127.0.0.1:{sp}", "tokens": tok, "turn_uris": TURN_URIS}, dmn,
           {"origin": fake_base.removesuffix("/v1")})
    if daemon.poll() is not None:
        REPORT.fail("aarch64 daemon still running after the checks", e2e.tail(work / "daemon.log", 40))
    REPORT.info(f"turnServer checks: {time.monotonic() - t0:.0f} s (Synapse start included)")


def checks(syn, dmn, fake):
    tok = syn["tokens"]

    with section("valid token"):
        t = time.monotonic()
        before = fake_stats(fake["origin"]).get("mints", 0)
        r = request(dmn, "GET", TURN, bearer(tok["main"]))
        cloudflare_answer("valid token", r)
        after = fake_stats(fake["origin"]).get("mints", 0)
        check(f"valid token: one mint at the fake Cloudflare ({time.monotonic() - t:.2f} s)",
              after == before + 1, lambda: f"mints {before} -> {after}")

    with section("invalid token"):
        hdrs = bearer("syt_not_a_real_token")
        direct = request(syn["url"], "GET", TURN, hdrs)
        via = request(dmn, "GET", TURN, hdrs)
        check("invalid token: 401 M_UNKNOWN_TOKEN",
              via[0] == 401 and (jbody(via) or {}).get("errcode") == "M_UNKNOWN_TOKEN", lambda: show(via))
        identical("invalid token", direct, via)

    with section("reuse: 100 requests, one token"):
        t = time.monotonic()
        before = fake_stats(fake["origin"]).get("mints", 0)
        answers = [request(dmn, "GET", TURN, bearer(tok["reuse"])) for _ in range(100)]
        after = fake_stats(fake["origin"]).get("mints", 0)
        took = time.monotonic() - t
        bodies = [jbody(a) or {} for a in answers]
        check("reuse: 100 requests all answered 200", all(a[0] == 200 for a in answers),
              lambda: show(next(a for a in answers if a[0] != 200)))
        creds = {(b.get("username"), b.get("password")) for b in bodies}
        check("reuse: the same username and password in all 100 answers",
              len(creds) == 1 and None not in next(iter(creds)), lambda: f"{len(creds)} distinct credentials")
        check(f"reuse: 1 Cloudflare mint for 100 requests ({took:.2f} s, {took * 10:.1f} ms per request)",
              after - before == 1, lambda: f"mints {before} -> {after}")

    with section("fallback"):
        # A token the reuse cache has never seen, so the daemon must ask Cloudflare.
        fake_behaviour(fake["origin"], {"fail_status": 503})
        tc = tok["fallback"]
        d1 = request(syn["url"], "GET", TURN, bearer(tc))
        via = request(dmn, "GET", TURN, bearer(tc))
        d2 = request(syn["url"], "GET", TURN, bearer(tc))
        check("fallback (Cloudflare 503): status 200", via[0] == 200, lambda: show(via))
        # Synapse's coturn username embeds the expiry second, so the daemon's
        # answer equals one of the two direct answers that bracket it.
        same = next((d for d in (d1, d2) if d[2] == via[2]), None)
        check("fallback: body byte-identical to Synapse's own coturn answer",
              same is not None, lambda: f"daemon {via[2]!r} / synapse {d1[2]!r} {d2[2]!r}")
        if same is not None:
            identical("fallback", same, via)
        vb = jbody(via) or {}
        check("fallback: uris are Synapse's turn_uris", vb.get("uris") == syn["turn_uris"],
              lambda: f"uris {vb.get('uris')!r}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--skip"]:
        REPORT.skip(f"turnServer checks under qemu ({sys.argv[2]})")
    else:
        work, qemu, binary, venv, version, ready_s = sys.argv[1:]
        try:
            main(Path(work), qemu, binary, Path(venv), version, float(ready_s))
        except Exception as e:  # one failed check, not a traceback outside the tally
            import traceback
            REPORT.fail("aarch64_e2e.py ran to the end", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
    sys.exit(REPORT.finish())
