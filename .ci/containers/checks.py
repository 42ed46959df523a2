#!/usr/bin/env python3
"""Judges for .ci/container-checks.sh (stdlib only, runs on the host).

Each sub-command reports through tests/e2e/lib/report.py and exits 0; the
shell script's REPORT_TALLY counts the checks.

    image INSPECT_JSON MAX_BYTES     the image's config and size (from
                                     `podman image inspect` or Docker's API)
    healthcheck INSPECT_JSON LABEL   only the HEALTHCHECK
    process PID LABEL                what the kernel says about a container's
                                     process: uid/gid, capabilities,
                                     no_new_privs, read-only /
    probe PROBE_JSON LABEL           the turnServer answers client.py collected
    route ROUTE_JSON LABEL           client.py route's answers through a proxy
    log LOG_FILE PROBE_JSON LABEL SECRET...
                                     the daemon's log: not empty, none of the
                                     secrets (the given ones, the access token
                                     and the TURN credential from the probe)
"""

import json
import re
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e" / "lib"))
from report import REPORT  # noqa: E402

report = REPORT.verdict


def load_image(path):
    data = json.load(open(path))
    return data[0] if isinstance(data, list) else data


def cmd_healthcheck(path, label):
    img = load_image(path)
    # Docker's API has it in Config; `podman image inspect` one level up.
    hc = (img.get("Config") or {}).get("Healthcheck") or img.get("Healthcheck") or {}
    problems = []
    if hc.get("Test") != ["CMD", "/usr/local/bin/matrix-turnify", "healthcheck"]:
        problems.append(f"Healthcheck.Test is {hc.get('Test')!r}")
    report(f"{label}: image declares HEALTHCHECK {hc.get('Test')} "
           f"(interval {hc.get('Interval', 0) // 10**9} s, timeout {hc.get('Timeout', 0) // 10**9} s, "
           f"retries {hc.get('Retries')})", problems)
    return 0


def cmd_image(path, max_bytes):
    cmd_healthcheck(path, "podman image inspect")
    img = load_image(path)
    cfg = img.get("Config") or {}
    problems = []
    if cfg.get("User") != "1000:1000":
        problems.append(f"User is {cfg.get('User')!r}")
    if cfg.get("Entrypoint") != ["/usr/local/bin/matrix-turnify"]:
        problems.append(f"Entrypoint is {cfg.get('Entrypoint')!r}")
    # `exec` runs its command without the entrypoint, found on PATH.
    path = next((e.split("=", 1)[1] for e in cfg.get("Env") or [] if e.startswith("PATH=")), "")
    if "/usr/local/bin" not in path.split(":"):
        problems.append(f"PATH is {path!r}")
    if "4499/tcp" not in (cfg.get("ExposedPorts") or {}):
        problems.append(f"ExposedPorts is {cfg.get('ExposedPorts')!r}")
    report("image config: User 1000:1000, Entrypoint [/usr/local/bin/matrix-turnify], /usr/local/bin on PATH, "
           "4499/tcp exposed", problems)
    size = int(img.get("Size", 0))
    report(f"image size {size} bytes ({size / 1e6:.2f} MB) < {int(max_bytes) / 1e6:.0f} MB",
           [] if 0 < size < int(max_bytes) else [f"size {size}"])
    return 0


def cmd_process(pid, label):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
    status = {k: v.strip() for k, v in status.items()}
    problems = []
    uids, gids = status["Uid"].split(), status["Gid"].split()
    if set(uids) != {"1000"} or set(gids) != {"1000"}:
        problems.append(f"Uid {uids}, Gid {gids}")
    report(f"{label}: process runs as uid 1000, gid 1000 (real, effective, saved, fs)", problems)
    caps = {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    report(f"{label}: no capability at all (CapPrm, CapEff, CapBnd, CapAmb all 0)",
           [f"{k} {v}" for k, v in caps.items() if int(v, 16) != 0])
    report(f"{label}: no_new_privs set (NoNewPrivs: {status.get('NoNewPrivs')})",
           [] if status.get("NoNewPrivs") == "1" else ["NoNewPrivs is not 1"])
    root = None
    for line in open(f"/proc/{pid}/mountinfo"):
        fields = line.split()
        if fields[4] == "/":
            root = fields  # the last mount on / is the one the process sees
    opts = root[5].split(",") if root else []
    report(f"{label}: root filesystem mounted read-only ({root[5] if root else 'no / mount'})",
           [] if "ro" in opts else [f"mount options of /: {opts}"])
    writable = sorted({l.split()[4] for l in open(f"/proc/{pid}/mountinfo")
                       if "rw" in l.split()[5].split(",")
                       and not l.split()[4].startswith(("/proc", "/sys", "/dev"))})
    print(f"      writable mounts besides /proc, /sys, /dev: {', '.join(writable) or 'none'}")
    return 0


def credential_problems(ans):
    problems = []
    if not ans or ans.get("status") != 200:
        return [f"answer {ans and ans.get('status')}: {ans and ans.get('body')!r}"]
    body = ans.get("json")
    if not isinstance(body, dict) or set(body) != {"username", "password", "ttl", "uris"}:
        return [f"body {ans.get('body')!r}"]
    if not (isinstance(body["username"], str) and body["username"] and isinstance(body["password"], str) and body["password"]):
        problems.append("empty username or password")
    if not (isinstance(body["ttl"], int) and body["ttl"] > 0):
        problems.append(f"ttl {body['ttl']!r}")
    uris = body["uris"]
    if not (isinstance(uris, list) and uris):
        problems.append(f"uris {uris!r}")
    for u in uris if isinstance(uris, list) else []:
        scheme, _, rest = u.partition(":")
        port = re.match(r"[^:?]+:(\d+)", rest)
        if scheme not in ("turn", "turns") or (port and port.group(1) == "53"):
            problems.append(f"uri {u!r} should have been dropped")
    if ans.get("cache_control") != "no-store":
        problems.append(f"Cache-Control {ans.get('cache_control')!r}")
    return problems


def errcode_problems(ans, status, errcode):
    if not ans:
        return ["no answer recorded"]
    body = ans.get("json") or {}
    if ans.get("status") != status or body.get("errcode") != errcode:
        return [f"answer {ans.get('status')}: {ans.get('body')!r}"]
    return []


def cmd_probe(path, label):
    p = json.load(open(path))
    report(f"{label}: user logs in at Synapse (login {(p.get('login') or {}).get('status')})",
           [] if p.get("token") else [f"login answered {(p.get('login') or {}).get('status')}"])
    v = p.get("valid") or {}
    vb = v.get("json") if isinstance(v.get("json"), dict) else {}
    report(f"{label}: valid token (Authorization) -> 200 with Cloudflare credentials "
           f"(ttl {vb.get('ttl')}, {len(vb.get('uris') or [])} TURN URIs, Cache-Control no-store)",
           credential_problems(v))
    report(f"{label}: valid token (?access_token=) -> 200 with credentials",
           credential_problems(p.get("valid_query")))
    report(f"{label}: invalid token -> Synapse's 401 M_UNKNOWN_TOKEN, unchanged",
           errcode_problems(p.get("invalid"), 401, "M_UNKNOWN_TOKEN"))
    report(f"{label}: no token -> Synapse's 401 M_MISSING_TOKEN, unchanged",
           errcode_problems(p.get("missing"), 401, "M_MISSING_TOKEN"))
    stats = p.get("fake_stats") or {}
    report(f"{label}: the fake Cloudflare minted for it (mints: {stats.get('mints')})",
           [] if isinstance(stats.get("mints"), int) and stats["mints"] >= 1 else [f"stats {stats!r}"])
    return 0


def cmd_log(log_path, probe_path, label, *secrets):
    text = open(log_path, errors="replace").read()
    p = json.load(open(probe_path))
    named = {f"given secret #{i + 1}": s for i, s in enumerate(secrets)}
    if p.get("token"):
        named["access token"] = p["token"]
        named["access token, URL-encoded"] = urllib.parse.quote(p["token"])
    for key in ("valid", "valid_query"):
        body = (p.get(key) or {}).get("json")
        if isinstance(body, dict):
            named[f"TURN username ({key})"] = str(body.get("username"))
            named[f"TURN password ({key})"] = str(body.get("password"))
    lines = [l for l in text.splitlines() if l.strip()]
    problems = [f"log holds the {name}" for name, value in named.items() if value and value in text]
    requests = sum("turnServer" in l for l in lines)
    if requests < 4:
        problems.append(f"only {requests} log line(s) name turnServer: the log is not the one expected")
    report(f"{label}: log ({len(lines)} lines, {requests} turnServer requests) holds none of "
           f"{len(named)} secrets (API token, access tokens, TURN username and password)", problems)
    return 0


def cmd_route(path, label):
    """client.py route's answers: every turnServer path reached the daemon
    (a credential: this Synapse has no TURN, so its own answer is {}), the
    other paths reached Synapse unchanged."""
    p = json.load(open(path))
    for turn_path, ans in p["turn"].items():
        report(f"{label}: {turn_path} reaches the daemon (a Cloudflare credential)", credential_problems(ans))
    before, after = p.get("mints_before"), p.get("mints_after")
    report(f"{label}: the four paths with one token cost one mint ({before} -> {after})",
           [] if isinstance(before, int) and after == before + 1 else [f"mints {before} -> {after}"])
    for syn_path, pair in p["synapse"].items():
        a, b = pair["proxy"], pair["direct"]
        drop = {"date"}
        ha = [(k.lower(), v) for k, v in a["headers"] if k.lower() not in drop]
        hb = [(k.lower(), v) for k, v in b["headers"] if k.lower() not in drop]
        problems = []
        if (a["status"], a["body"]) != (b["status"], b["body"]):
            problems.append(f"through the proxy {a['status']} {a['body'][:200]!r}, Synapse {b['status']} {b['body'][:200]!r}")
        if sorted(ha) != sorted(hb):
            problems.append(f"headers through the proxy {sorted(ha)}, Synapse's {sorted(hb)}")
        if any(k == "via" and "matrix-turnify" in v for k, v in ha):
            problems.append("the daemon's Via: it went through the daemon")
        report(f"{label}: {syn_path} reaches Synapse unchanged ({a['status']}; status, body, headers but Date)", problems)
    return 0


def main(argv):
    cmds = {"route": (cmd_route, 2), "image": (cmd_image, 2), "healthcheck": (cmd_healthcheck, 2), "process": (cmd_process, 2), "probe": (cmd_probe, 2), "log": (cmd_log, None)}
    if not argv or argv[0] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    fn, n = cmds[argv[0]]
    if n is not None and len(argv) - 1 != n:
        print(__doc__, file=sys.stderr)
        return 2
    return fn(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
