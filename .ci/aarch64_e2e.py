#!/usr/bin/env python3
"""The daemon's real job, for .ci/aarch64-checks.sh (stdlib only).

  aarch64_e2e.py STATE.json

STATE names one real Synapse (configured with turn_uris and
turn_shared_secret, like the e2e suite's Synapse C), its tokens, the fake
Cloudflare and the daemon under test (the aarch64 binary under qemu). The
checks are the e2e suite's core cases, with its own helpers
(tests/e2e/lib/checks.py), in this order:

  1. a valid token gets Cloudflare credentials;
  2. an invalid token gets Synapse's 401, status, body and headers;
  3. 100 requests with one fresh token cause exactly one mint;
  4. Cloudflare failing (503): Synapse's own 200 comes back unchanged.

Reports through tests/e2e/lib/report.py; exits 1 if any check failed.
"""

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e", "lib"))
from checks import TURN, bearer, check, cloudflare_answer, identical, jbody, section, show  # noqa: E402
from e2e import fake_behaviour, fake_stats, request  # noqa: E402
from report import REPORT  # noqa: E402


def main(path):
    with open(path) as f:
        S = json.load(f)
    syn, dmn, fake = S["synapse"], S["daemon"], S["fake"]
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

    return REPORT.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
