#!/usr/bin/env python3
"""cloudflared's own ingress matcher on deploy/cloudflared/config.yml.

    python3 .ci/cloudflared_checks.py

cloudflared is built from the Go module proxy by .ci/go_peers.py (cached
outside the clone). Its rules are run through `cloudflared tunnel --config …
ingress validate` and `… ingress rule URL`: every turnServer path must pick
the matrix-turnify:4499 rule, also with a query string; the client API's
other paths, among them ones that end in /voip/turnServer (a relation, a
state key), must pick Synapse's. The config is used as shipped but for its
credentials-file line, which points at a throwaway file in a temporary copy
(the rules are not touched).

What this cannot prove: that Cloudflare's edge hands the request to the
tunnel, or the order of routes in a tunnel managed in the Zero Trust
dashboard. Without Cloudflare's edge, asking cloudflared's own matcher is as
far as a test can go.

Reports through tests/e2e/lib/report.py; if the module proxy refuses
cloudflared, prints SKIPPED with the reason and exits 0.
"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "lib"))
import install  # noqa: E402
from report import REPORT  # noqa: E402

CONFIG = ROOT / "deploy" / "cloudflared" / "config.yml"
HOST = "https://matrix.example.com"
TURNIFY = "http://matrix-turnify:4499"
SYNAPSE = "http://synapse:8008"
CASES = [(f"/_matrix/client/{v}/voip/turnServer", TURNIFY) for v in ("v3", "r0", "unstable", "api/v1")] + [
    ("/_matrix/client/v3/voip/turnServer?access_token=x", TURNIFY),
    ("/_matrix/client/versions", SYNAPSE),
    ("/_matrix/client/v1/rooms/!r:x/relations/$e/voip/turnServer", SYNAPSE),
    ("/_matrix/client/v3/rooms/!r:x/state/voip/turnServer", SYNAPSE),
    ("/_matrix/client/v3/voip/turnServer/", SYNAPSE),
]


def report(name, problem=None):
    REPORT.verdict(name, [problem] if problem else [])


def main():
    rc, bindir, err = install.go_peer("cloudflared")
    if rc == 2:
        print(f"SKIPPED: cloudflared cannot be built here: {err}")
        return 0
    if rc != 0:
        report("cloudflared built from the Go module proxy", err[-2000:])
        return 1
    cloudflared = bindir / "cloudflared"
    version = subprocess.run([cloudflared, "--version"], capture_output=True, text=True, timeout=30)
    print(f"      {version.stdout.strip()}")

    text = CONFIG.read_text()
    line = re.compile(r"^credentials-file: .*$", re.M)
    if len(line.findall(text)) != 1:
        report("deploy/cloudflared/config.yml has one credentials-file line", "not exactly one")
        return 1
    with tempfile.TemporaryDirectory(prefix="cloudflared-checks-") as tmp:
        creds = Path(tmp) / "credentials.json"
        creds.write_text('{"AccountTag":"0","TunnelSecret":"AAAA","TunnelID":"00000000-0000-0000-0000-000000000000"}\n')
        config = Path(tmp) / "config.yml"
        config.write_text(line.sub(f"credentials-file: {creds}", text))

        def tunnel(*args):
            return subprocess.run([cloudflared, "tunnel", "--config", config, "ingress", *args],
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

        res = tunnel("validate")
        report("cloudflared tunnel ingress validate accepts the rules",
               None if res.returncode == 0 else f"exit {res.returncode}: {(res.stdout + res.stderr)[-500:]}")
        for path, want in CASES:
            res = tunnel("rule", HOST + path)
            out = res.stdout + res.stderr
            # It prints "Matched rule #N" and the rule's fields, service: last.
            services = re.findall(r"^\s*service:\s*(\S+)\s*$", out, re.M)
            matched = re.search(r"Matched rule #(\d+)", out)
            got = services[-1] if services else None
            report(f"ingress rule {path} -> {want}" + (f" (rule #{matched.group(1)})" if matched else ""),
                   None if res.returncode == 0 and got == want else
                   f"exit {res.returncode}, service {got}: {' | '.join(out.splitlines()[-6:])}")
    return 0


if __name__ == "__main__":
    rc = main()
    if REPORT.passed + REPORT.failed:
        rc = REPORT.finish() or rc
    sys.exit(rc)
