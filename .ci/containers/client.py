"""HTTP client for .ci/container-checks.sh, run inside the stack (Debian's
python3, stdlib only): in the network namespace of the fake Cloudflare's
container, which the daemon shares, so that it reaches the daemon on
127.0.0.1:4499 and Synapse by its service name, with no port published to
the host.

    client.py wait URL [TIMEOUT_S]
        poll URL until it answers 200 (bounded); print the seconds it took
    client.py get URL TOKEN
        GET URL with `Authorization: Bearer TOKEN`; print the status and body
        (failures to connect are retried for up to 15 s)
    client.py probe SYNAPSE DAEMON USER PASSWORD INVALID_TOKEN FAKE_STATS_URL
        log USER in at SYNAPSE, then ask DAEMON's turnServer with that token
        (Authorization header and ?access_token=), with INVALID_TOKEN, and
        with none; read the fake Cloudflare's counters; print one JSON object
        with every status, body and the token used, for the host to judge
"""

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TURN_PATH = "/_matrix/client/v3/voip/turnServer"


def call(method, url, headers=None, body=None, timeout=15):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read().decode("utf8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf8", "replace")


def wait(url, timeout=60.0):
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout:
        try:
            status, _, body = call("GET", url, timeout=2)
            if status == 200:
                print(f"{time.monotonic() - start:.1f}")
                return 0
            last = f"status {status}: {body[:200]}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.2)
    print(f"{url}: no 200 within {timeout:.0f} s ({last})", file=sys.stderr)
    return 1


def answer(status, headers, body):
    # headers: an email.message.Message, whose get() ignores case.
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return {"status": status, "json": parsed, "body": body[:2000],
            "content_type": headers.get("Content-Type"), "cache_control": headers.get("Cache-Control")}


def probe(synapse, daemon, user, password, invalid, fake_stats):
    out = {}
    status, _, body = call("POST", synapse + "/_matrix/client/v3/login",
                           {"Content-Type": "application/json"},
                           json.dumps({"type": "m.login.password",
                                       "identifier": {"type": "m.id.user", "user": user},
                                       "password": password}).encode())
    out["login"] = {"status": status}
    token = json.loads(body).get("access_token") if status == 200 else None
    out["token"] = token
    turn = daemon + TURN_PATH
    if token:
        out["valid"] = answer(*call("GET", turn, {"Authorization": f"Bearer {token}"}))
        out["valid_query"] = answer(*call("GET", turn + "?access_token=" + urllib.parse.quote(token)))
    out["invalid"] = answer(*call("GET", turn, {"Authorization": f"Bearer {invalid}"}))
    out["missing"] = answer(*call("GET", turn))
    status, _, body = call("GET", fake_stats)
    out["fake_stats"] = json.loads(body) if status == 200 else {"status": status}
    print(json.dumps(out, indent=1))
    return 0


def main(argv):
    if argv[:1] == ["get"] and len(argv) == 3:
        # A container that has just started may not be in podman's DNS yet
        # (aardvark-dns reloads on its own time): retry failures to connect,
        # never an HTTP answer, within a bound.
        deadline = time.monotonic() + 15
        while True:
            try:
                status, _, body = call("GET", argv[1], {"Authorization": f"Bearer {argv[2]}"})
                break
            except urllib.error.URLError as e:
                if isinstance(e, urllib.error.HTTPError) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(status, body)
        return 0
    if argv[:1] == ["wait"] and len(argv) in (2, 3):
        return wait(argv[1], float(argv[2]) if len(argv) == 3 else 60.0)
    if argv[:1] == ["probe"] and len(argv) == 7:
        return probe(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
