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


TURN_PATHS = [f"/_matrix/client/{v}/voip/turnServer" for v in ("v3", "r0", "unstable", "api/v1")]
SYNAPSE_PATHS = ["/_matrix/client/versions",
                 "/_matrix/client/v1/rooms/!r:x/relations/$e/voip/turnServer"]


def full(status, headers, body):
    out = answer(status, headers, body)
    out["headers"] = [[k, v] for k, v in headers.items()]
    return out


def login(synapse, user, password):
    status, _, body = call("POST", synapse + "/_matrix/client/v3/login",
                           {"Content-Type": "application/json"},
                           json.dumps({"type": "m.login.password",
                                       "identifier": {"type": "m.id.user", "user": user},
                                       "password": password}).encode())
    if status != 200:
        raise SystemExit(f"login at {synapse}: {status} {body[:200]}")
    return json.loads(body)["access_token"]


def route(proxy, host, synapse, user, password, fake_stats):
    token = login(synapse, user, password)
    auth = {"Authorization": f"Bearer {token}"}
    out = {"turn": {}, "synapse": {}}
    status, _, body = call("GET", fake_stats)
    out["mints_before"] = json.loads(body)["mints"] if status == 200 else None
    for path in TURN_PATHS:
        out["turn"][path] = full(*call("GET", proxy + path, {**auth, "Host": host}))
    for path in SYNAPSE_PATHS:
        quoted = urllib.parse.quote(path, safe="/$:")
        out["synapse"][path] = {"proxy": full(*call("GET", proxy + quoted, {**auth, "Host": host})),
                                "direct": full(*call("GET", synapse + quoted, auth))}
    status, _, body = call("GET", fake_stats)
    out["mints_after"] = json.loads(body)["mints"] if status == 200 else None
    print(json.dumps(out, indent=1))
    return 0


def first(proxy, host, synapse, user, password, timeout):
    token = login(synapse, user, password)
    headers = {"Authorization": f"Bearer {token}", "Host": host}
    deadline = time.monotonic() + float(timeout)
    seen, last = [], None
    # Ready to poll: the host starts the daemon once it reads this line.
    print("polling", flush=True)
    while time.monotonic() < deadline:
        try:
            status, _, body = call("GET", proxy + TURN_PATHS[0], headers, timeout=5)
            credential = status == 200 and '"uris"' in body
            what = [status, body[:120]]
        except OSError as e:
            credential, what = False, [None, repr(e)[:120]]
        if (what[0], credential) != last:
            seen.append([time.time()] + what)
            last = (what[0], credential)
        if credential:
            print(json.dumps({"first_credential": seen[-1][0], "answers": seen}))
            return 0
        time.sleep(0.1)
    print(json.dumps({"first_credential": None, "answers": seen}))
    return 1


def main(argv):
    if argv[:1] == ["route"] and len(argv) == 7:
        return route(*argv[1:])
    if argv[:1] == ["first"] and len(argv) == 7:
        return first(*argv[1:])
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
