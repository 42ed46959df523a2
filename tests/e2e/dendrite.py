#!/usr/bin/env python3
"""The daemon in front of a real Dendrite v0.13.8 (the Apache-2.0 module
github.com/matrix-org/dendrite, built from the Go module proxy by
.ci/go_peers.py into a cache outside the clone).

    python3 tests/e2e/dendrite.py        (from anywhere; root on Debian 12)

Dendrite runs in its SQLite mode on 127.0.0.1 (an ephemeral port), without
TURN of its own, with open registration switched on for guests only to be
able to register (it listens on loopback only). Its users are made with its
own create-account tool. The release daemon and the fake Cloudflare
(target/release, built as tests/e2e/run.sh builds them) run beside it.

Checks, each asked of Dendrite directly and through the daemon:
- a user gets a Cloudflare credential on the 200 path (v3 and r0);
- a guest gets Dendrite's 403 unchanged;
- the `unstable` and `api/v1` paths get Dendrite's 404 unchanged;
- a bad token gets Dendrite's 401 byte for byte (status, body, headers);
- 100 requests with one token cost one mint at the fake Cloudflare;
- `matrix-turnify check` passes against Dendrite.
"Unchanged" compares the status, the body byte for byte and every header
but Date (a clock, which may tick between the two requests), in order; the
daemon adds only its `Via: 1.1 matrix-turnify`.

Logs stay in tests/e2e/.work/dendrite/. lib/e2e.py's Suite reports the
checks (lib/report.py) and exits (SKIPPED if the module proxy refuses Dendrite).
"""

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "lib"))
import e2e  # noqa: E402  (tests/e2e/lib/e2e.py)

WORK = HERE / ".work" / "dendrite"
BIN = e2e.DAEMON
KEY_ID, API_TOKEN = "dendrite-e2e-key", "dendrite-e2e-token"
USER, PASSWORD = "alice", "alice-dendrite-password"
BAD_TOKEN = "syt_bad_dendrite_e2e_token"
PATHS = {v: f"/_matrix/client/{v}/voip/turnServer" for v in ("v3", "r0", "unstable", "api/v1")}

SUITE = e2e.Suite("dendrite", WORK)
check, start = SUITE.check, SUITE.start


def get(base, path, token=None, header=True):
    headers = []
    if token and header:
        headers.append(("Authorization", f"Bearer {token}"))
    elif token:
        path += ("&" if "?" in path else "?") + "access_token=" + urllib.parse.quote(token)
    return e2e.request(base, "GET", path, headers)


def without_date(headers):
    return [(k.lower(), v) for k, v in headers if k.lower() != "date"]


# Every answer on the turnServer route names the daemon (RFC 9110 §7.6.3).
OUR_VIA = ("via", "1.1 matrix-turnify")


def same_answer(direct, via):
    """Problems if VIA is not DIRECT unchanged: status, body bytes, and the
    headers in order but Date, plus the daemon's own Via at the end."""
    problems = []
    if direct[0] != via[0]:
        problems.append(f"status {via[0]}, Dendrite's {direct[0]}")
    if direct[2] != via[2]:
        problems.append(f"body {via[2][:200]!r}, Dendrite's {direct[2][:200]!r}")
    if without_date(direct[1]) + [OUR_VIA] != without_date(via[1]):
        problems.append(f"headers {without_date(via[1])}, Dendrite's {without_date(direct[1])}")
    return problems


def errcode(answer):
    try:
        return json.loads(answer[2]).get("errcode")
    except (ValueError, AttributeError):
        return None


def credential_problems(answer):
    status, headers, body = answer
    if status != 200:
        return [f"status {status}: {body[:200]!r}"]
    try:
        cred = json.loads(body)
    except ValueError:
        return [f"body not JSON: {body[:200]!r}"]
    problems = []
    if not isinstance(cred, dict) or set(cred) != {"username", "password", "ttl", "uris"}:
        return [f"not a TURN credential: {body[:200]!r}"]
    if not cred["username"] or not cred["password"]:
        problems.append("empty username or password")
    if not cred["uris"] or any(not u.startswith(("turn:", "turns:")) for u in cred["uris"]):
        problems.append(f"uris {cred['uris']}")
    if not isinstance(cred["ttl"], int) or cred["ttl"] <= 0:
        problems.append(f"ttl {cred['ttl']!r}")
    if dict((k.lower(), v) for k, v in headers).get("cache-control") != "no-store":
        problems.append("no Cache-Control: no-store")
    return problems


def setup_dendrite(bindir, port):
    """Keys, config, the server; return (its base URL, its process)."""
    d = WORK / "server"
    d.mkdir(parents=True)
    key = d / "matrix_key.pem"
    subprocess.run([bindir / "generate-keys", "-private-key", key], check=True, timeout=60,
                   capture_output=True)
    cfg = subprocess.run([bindir / "generate-config", "-dir", d, "-server", "localhost"], check=True,
                         timeout=60, capture_output=True, text=True).stdout
    secret = "dendrite-e2e-" + os.urandom(8).hex()
    # generate-config writes SQLite files under -dir; set what this test needs.
    edits = [
        ("  private_key: matrix_key.pem\n", f"  private_key: {key}\n"),
        # Guests can only register where registration is open; with no
        # reCAPTCHA that needs -really-enable-open-registration too.
        ("  registration_disabled: true\n", "  registration_disabled: false\n"),
        ("  registration_shared_secret: \"\"\n", f"  registration_shared_secret: \"{secret}\"\n"),
        # 100 requests in a row are the reuse check, not abuse.
        ("  rate_limiting:\n    enabled: true\n", "  rate_limiting:\n    enabled: false\n"),
    ]
    for old, new in edits:
        if cfg.count(old) != 1:
            raise RuntimeError(f"generate-config's output does not have exactly one {old.strip()!r}")
        cfg = cfg.replace(old, new)
    if "  guests_disabled: false\n" not in cfg or "    turn_uris: []\n" not in cfg:
        raise RuntimeError("generate-config's defaults changed: guests_disabled / turn_uris")
    (d / "dendrite.yaml").write_text(cfg)
    base = f"http://127.0.0.1:{port}"
    start(WORK / "dendrite.log", [bindir / "dendrite", "-config", d / "dendrite.yaml", "-http-bind-address",
                                  f"127.0.0.1:{port}", "-really-enable-open-registration"],
          ready=e2e.url(base + "/_matrix/client/versions"), timeout=120)
    return base, d / "dendrite.yaml"


def main():
    bindir = SUITE.go_peer("dendrite", "Dendrite")
    SUITE.fresh_work()
    SUITE.cargo_build()

    dport, tport = e2e.free_ports(2)
    try:
        dendrite, cfg = setup_dendrite(bindir, dport)
    except (e2e.WaitError, RuntimeError, subprocess.SubprocessError) as e:
        check("Dendrite v0.13.8 up (SQLite, 127.0.0.1)", [str(e), e2e.tail(WORK / "dendrite.log")])
        return 1
    made = subprocess.run([bindir / "create-account", "-config", cfg, "-url", dendrite,
                           "-username", USER, "-passwordstdin"], input=PASSWORD, text=True,
                          capture_output=True, timeout=60)
    check("create-account (Dendrite's own tool) makes a user", [] if made.returncode == 0 else
          [f"exit {made.returncode}: {(made.stdout + made.stderr)[-500:]}"])
    main_tok, _ = e2e.login(dendrite, USER, PASSWORD, "DENDRITEMAIN")
    reuse_tok, _ = e2e.login(dendrite, USER, PASSWORD, "DENDRITEREUSE")
    guest_tok, guest_id = e2e.guest(dendrite)

    fake_base = SUITE.start_fake_cloudflare(WORK / "fake-cloudflare.log", "--key-id", KEY_ID, "--api-token", API_TOKEN)
    fake_origin = fake_base.rsplit("/v1", 1)[0]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "SYNAPSE_BASE_URL": dendrite, "CF_TURN_KEY_ID": KEY_ID, "CF_TURN_API_TOKEN": API_TOKEN,
           "CF_TURN_API_BASE_URL": fake_base}
    daemon = f"http://127.0.0.1:{tport}"
    start(WORK / "daemon.log", [BIN], env={**env, "LISTEN_ADDR": f"127.0.0.1:{tport}", "LOG_LEVEL": "debug"},
          ready=e2e.url(daemon + "/healthz"), timeout=30)

    # The 200 path: Dendrite without TURN answers a user 200 {}.
    direct = get(dendrite, PATHS["v3"], main_tok)
    before = e2e.fake_mints(fake_origin)
    via = get(daemon, PATHS["v3"], main_tok)
    check("v3: a user gets a Cloudflare credential (Dendrite itself answers 200 {})",
          ([] if direct[0] == 200 and json.loads(direct[2]) == {} else
           [f"Dendrite answered {direct[0]} {direct[2][:200]!r}"])
          + credential_problems(via) + ([] if e2e.fake_mints(fake_origin) == before + 1 else ["not one mint"]))
    via_r0 = get(daemon, PATHS["r0"], main_tok, header=False)
    check("r0 with ?access_token=: the user's credential, reused", credential_problems(via_r0) + (
        [] if via_r0[0] == 200 and json.loads(via_r0[2])["username"] == json.loads(via[2])["username"]
        and e2e.fake_mints(fake_origin) == before + 1 else ["not the reused credential"]))

    # A guest: Dendrite's MakeAuthAPI refuses guests on this route with 403.
    before = e2e.fake_mints(fake_origin)
    direct = get(dendrite, PATHS["v3"], guest_tok)
    via = get(daemon, PATHS["v3"], guest_tok)
    check(f"a guest ({guest_id}, registered with kind=guest) gets Dendrite's 403 unchanged",
          ([] if direct[0] == 403 and errcode(direct) == "M_GUEST_ACCESS_FORBIDDEN" else
           [f"Dendrite answered the guest {direct[0]} {direct[2][:200]!r}"])
          + same_answer(direct, via) + ([] if e2e.fake_mints(fake_origin) == before else ["minted"]))

    # Paths Dendrite does not serve.
    for v in ("unstable", "api/v1"):
        direct = get(dendrite, PATHS[v], main_tok)
        via = get(daemon, PATHS[v], main_tok)
        check(f"{v}: Dendrite's 404 unchanged",
              ([] if direct[0] == 404 else [f"Dendrite answered {direct[0]}"]) + same_answer(direct, via))

    # A bad token, byte for byte.
    for label, header in (("Authorization header", True), ("?access_token=", False)):
        direct = get(dendrite, PATHS["v3"], BAD_TOKEN, header)
        via = get(daemon, PATHS["v3"], BAD_TOKEN, header)
        check(f"a bad token ({label}) gets Dendrite's 401 byte for byte (status, body, headers)",
              ([] if direct[0] == 401 else [f"Dendrite answered {direct[0]}"]) + same_answer(direct, via))

    # Reuse: 100 requests with a fresh token, one mint.
    before = e2e.fake_mints(fake_origin)
    creds, problems = set(), []
    for _ in range(100):
        answer = get(daemon, PATHS["v3"], reuse_tok)
        p = credential_problems(answer)
        if p:
            problems = p
            break
        c = json.loads(answer[2])
        creds.add((c["username"], c["password"]))
    n = e2e.fake_mints(fake_origin) - before
    check("reuse: 100 requests with one token, 1 mint, one credential",
          problems + ([] if n == 1 else [f"{n} mints"]) + ([] if len(creds) == 1 else [f"{len(creds)} credentials"]))

    out = subprocess.run([BIN, "check"], env=env, capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    (WORK / "check.out").write_text(text)
    check("matrix-turnify check passes against Dendrite",
          [] if out.returncode == 0 and "✗" not in text else [f"exit {out.returncode}: {' | '.join(text.splitlines())}"])
    return 0


if __name__ == "__main__":
    SUITE.run(main)
