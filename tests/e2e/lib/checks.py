#!/usr/bin/env python3
"""HTTP checks of matrix-turnify against real Synapse instances (stdlib only).

  checks.py STATE.json daemon          checks straight against the daemons
  checks.py STATE.json proxy NAME      checks through the reverse proxy NAME (nginx, caddy)
  checks.py STATE.json budget          a daemon of its own with egress budgets, in front of Synapse A
  checks.py STATE.json synapse-down    Synapse B frozen, then killed (run last: B stays dead)

Every comparison with Synapse is live: the same request is sent to Synapse
directly and to the daemon, and the two answers are compared.
Reports each check through report.py.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import (DAEMON, FAKE_CLOUDFLARE, fake_behaviour, fake_stats, free_ports, pid_alive,  # noqa: E402
                 request, start_fake)
from report import REPORT, check  # noqa: E402
from supervise import SUPERVISOR, url, wait_until  # noqa: E402

TURN = "/_matrix/client/v3/voip/turnServer"
WHOAMI = "/_matrix/client/v3/account/whoami"
CORS = [
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
]
# Headers that legitimately differ between two answers of one origin, or are
# framing/hop-by-hop and may be changed by any proxy.
VOLATILE = {"date", "transfer-encoding", "content-length", "connection", "keep-alive"}
CF_HEX = re.compile(r"^[0-9a-f]{96}$")

def hget(headers, name):
    vals = [v for k, v in headers if k.lower() == name]
    return ", ".join(vals) if vals else None


def hnorm(headers):
    return sorted((k.lower(), v) for k, v in headers if k.lower() not in VOLATILE)


def show(resp):
    st, hs, body = resp
    return f"{st} {hs} {body[:600]!r}"


def bearer(tok):
    return [("Authorization", f"Bearer {tok}")]


def jbody(resp):
    try:
        return json.loads(resp[2])
    except ValueError:
        return None


def port_of(uri):
    # turn:host:port?transport=udp / turns:[v6]:port
    rest = uri.split(":", 1)[1].split("?", 1)[0]
    m = re.search(r":(\d+)$", rest)
    return int(m.group(1)) if m else None


def cloudflare_answer(name, resp, max_ttl=86400, hex_username=True):
    """The rewritten 200 answer (docs/behaviour.md §3, §4), one line per property."""
    st, hs, body = resp
    b = jbody(resp)
    ok = check(f"{name}: status 200 with JSON object", st == 200 and isinstance(b, dict), lambda: show(resp))
    if not ok:
        return None
    check(f"{name}: exactly the keys username, password, ttl, uris",
          sorted(b) == ["password", "ttl", "uris", "username"], lambda: f"keys {sorted(b)}")
    uris = b.get("uris")
    good_list = isinstance(uris, list) and len(uris) > 0 and all(isinstance(u, str) for u in uris)
    check(f"{name}: uris is a non-empty list of turn:/turns: URIs",
          good_list and all(u.startswith(("turn:", "turns:")) for u in uris), lambda: f"uris {uris!r}")
    if good_list:
        check(f"{name}: no URI on port 53", all(port_of(u) != 53 for u in uris), lambda: f"uris {uris!r}")
        check(f"{name}: turns:turn.cloudflare.com:5349?transport=tcp present",
              "turns:turn.cloudflare.com:5349?transport=tcp" in uris, lambda: f"uris {uris!r}")
    ttl = b.get("ttl")
    check(f"{name}: ttl is an integer in 1..={max_ttl}",
          isinstance(ttl, int) and not isinstance(ttl, bool) and 0 < ttl <= max_ttl, lambda: f"ttl {ttl!r}")
    if hex_username:
        check(f"{name}: username/password are the fake Cloudflare's (96 hex digits)",
              isinstance(b.get("username"), str) and CF_HEX.match(b["username"])
              and isinstance(b.get("password"), str) and CF_HEX.match(b["password"]),
              lambda: f"username {b.get('username')!r}")
    cc = hget(hs, "cache-control") or ""
    check(f"{name}: Cache-Control contains no-store", "no-store" in cc, lambda: f"Cache-Control {cc!r}")
    check(f"{name}: Access-Control-Allow-Origin: * kept",
          hget(hs, "access-control-allow-origin") == "*", lambda: f"headers {hs}")
    return b


# The daemon names itself on every answer that went through it.
OUR_VIA = ("via", "1.1 matrix-turnify")


def identical(name, direct, via, headers=True):
    check(f"{name}: status and body identical to Synapse's",
          direct[0] == via[0] and direct[2] == via[2],
          lambda: f"synapse {direct[0]} {direct[2][:300]!r} / via {via[0]} {via[2][:300]!r}")
    if headers:
        check(f"{name}: end-to-end headers identical to Synapse's (ignoring Date and framing), plus the daemon's Via",
              sorted(hnorm(direct[1]) + [OUR_VIA]) == hnorm(via[1]),
              lambda: f"synapse {hnorm(direct[1])} / via {hnorm(via[1])}")


@contextmanager
def section(name):
    """A crash inside one group of checks is one failed check; the next group still runs."""
    try:
        yield
    except Exception as e:
        import traceback
        check(f"{name}: checks ran to the end", False, f"{type(e).__name__}: {e} {traceback.format_exc()[-600:]}")


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(0.2)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def coturn_password(secret, username):
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


# --------------------------------------------------------------------------- daemon

def daemon_checks(S):
    syn, dmn, fake = S["synapse"], S["daemon"], S["fake"]
    A, DA = syn["A"]["url"], dmn["A"]["url"]
    tok = syn["A"]["tokens"]
    B, DB = syn["B"]["url"], dmn["B"]["url"]
    C, DC = syn["C"]["url"], dmn["C"]["url"]

    with section('valid token, v3 and r0 (and the two other paths Synapse serves)'):
        before = fake_stats(fake["A"]["origin"]).get("mints", 0)
        v3 = request(DA, "GET", TURN, bearer(tok["main"]))
        cloudflare_answer("v3 turnServer, valid token", v3)
        r0 = request(DA, "GET", "/_matrix/client/r0/voip/turnServer", bearer(tok["main"]))
        cloudflare_answer("r0 turnServer, valid token", r0)
        for p in ("/_matrix/client/unstable/voip/turnServer", "/_matrix/client/api/v1/voip/turnServer"):
            r = request(DA, "GET", p, bearer(tok["main"]))
            b = jbody(r) or {}
            check(f"{p}, valid token: 200 with Cloudflare credentials",
                  r[0] == 200 and CF_HEX.match(str(b.get("username", ""))), lambda: show(r))
        after = fake_stats(fake["A"]["origin"]).get("mints", 0)
        check("the fake Cloudflare was asked to mint (stats.mints grew)", after > before,
              lambda: f"mints {before} -> {after}")

    with section('invalid / missing token: live comparison with Synapse'):
        for label, hdrs, path in [
            ("invalid token", bearer("syt_not_a_real_token"), TURN),
            ("invalid ?access_token", [], TURN + "?access_token=nope"),
            ("missing token", [], TURN),
            ("header and ?access_token together", bearer(tok["main"]), TURN + "?access_token=" + tok["main"]),
        ]:
            direct = request(A, "GET", path, hdrs)
            via = request(DA, "GET", path, hdrs)
            identical(f"{label}", direct, via)
            if label == "missing token":
                check("missing token: 401 M_MISSING_TOKEN", via[0] == 401 and (jbody(via) or {}).get("errcode") == "M_MISSING_TOKEN",
                      lambda: show(via))
            if label == "invalid token":
                check("invalid token: 401 M_UNKNOWN_TOKEN", via[0] == 401 and (jbody(via) or {}).get("errcode") == "M_UNKNOWN_TOKEN",
                      lambda: show(via))

    with section('no token, no credential: nothing changes for Synapse users (docs/behaviour.md §3.1)'):
        # Every way of sending no token Synapse accepts, on a Synapse without
        # TURN (A) and one with coturn (C): the daemon's answer is Synapse's,
        # byte for byte, and no tokenless request reaches Cloudflare.
        asked = {v: fake_stats(fake[v]["origin"]).get("requests", 0) for v in ("A", "C")}
        for v, base, via_base in (("A", A, DA), ("C", C, DC)):
            for label, hdrs, path in [
                ("no token, another query", [], TURN + "?foo=bar"),
                ("Authorization: Basic", [("Authorization", "Basic YWxpY2U6YWxpY2U=")], TURN),
                ("lower-case bearer", [("Authorization", "bearer " + tok["main"])], TURN),
                ("Authorization: Bearer with no token", [("Authorization", "Bearer")], TURN),
                ("a bare access_token without a value", [], TURN + "?access_token"),
                ("HEAD without a token", [], TURN),
            ]:
                method = "HEAD" if label.startswith("HEAD") else "GET"
                direct = request(base, method, path, hdrs)
                via = request(via_base, method, path, hdrs)
                identical(f"config {v}, {label}", direct, via)
        for v in ("A", "C"):
            now = fake_stats(fake[v]["origin"]).get("requests", 0)
            check(f"config {v}: no tokenless request reached Cloudflare", now == asked[v],
                  lambda: f"requests {asked[v]} -> {now}")

    with section('?access_token= with a valid token'):
        q = request(DA, "GET", TURN + "?access_token=" + tok["query"])
        cloudflare_answer("?access_token=<valid>", q)

    with section('guest refused (config B)'):
        g = syn["B"]["tokens"]["guest"]
        direct = request(B, "GET", TURN, bearer(g))
        via = request(DB, "GET", TURN, bearer(g))
        check("guest refused (turn_allow_guests: false): 403 M_GUEST_ACCESS_FORBIDDEN",
              via[0] == 403 and (jbody(via) or {}).get("errcode") == "M_GUEST_ACCESS_FORBIDDEN", lambda: show(via))
        identical("guest refused", direct, via)
        r = request(DB, "GET", TURN, bearer(syn["B"]["tokens"]["main"]))
        check("turn_allow_guests: false leaves a normal user alone: 200 Cloudflare credentials",
              r[0] == 200 and CF_HEX.match(str((jbody(r) or {}).get("username", ""))), lambda: show(r))

    with section('fallback (config C, Cloudflare failing)'):
        secret = syn["C"]["turn_shared_secret"]
        tc = syn["C"]["tokens"]["main"]
        d1 = request(C, "GET", TURN, bearer(tc))
        via = request(DC, "GET", TURN, bearer(tc))
        d2 = request(C, "GET", TURN, bearer(tc))
        vb, b1, b2 = jbody(via) or {}, jbody(d1) or {}, jbody(d2) or {}
        check("fallback (Cloudflare 503): status 200", via[0] == 200, lambda: show(via))
        if via[2] in (d1[2], d2[2]):
            check("fallback: body byte-identical to Synapse's own coturn answer (same second)", True)
        else:
            user = syn["C"]["users"]["main"]
            un = str(vb.get("username", ""))
            m = re.match(r"^(\d+):(.*)$", un)
            check("fallback: body is Synapse's coturn answer (user part, uris, ttl; expiry within the probe seconds)",
                  m and m.group(2) == user and vb.get("uris") == b1.get("uris") and vb.get("ttl") == b1.get("ttl")
                  and sorted(vb) == sorted(b1)
                  and int(b1["username"].split(":")[0]) <= int(m.group(1)) <= int(b2["username"].split(":")[0]),
                  lambda: f"daemon {via[2]!r} / synapse before {d1[2]!r} after {d2[2]!r}")
        check("fallback: password is Synapse's HMAC of the username",
              vb.get("password") == coturn_password(secret, str(vb.get("username"))), lambda: f"daemon {via[2]!r}")
        check("fallback: uris are the configured turn_uris", vb.get("uris") == syn["C"]["turn_uris"],
              lambda: f"uris {vb.get('uris')!r}")
        check("fallback: Content-Type, Cache-Control and CORS headers are Synapse's",
              all(hget(via[1], h) == hget(d1[1], h) for h in ["content-type", "cache-control"] + CORS),
              lambda: f"synapse {hnorm(d1[1])} / daemon {hnorm(via[1])}")

    with section("Cloudflare recovers: its credentials replace Synapse's coturn ones"):
        fake_behaviour(fake["C"]["origin"], {"ok": True, "latency_ms": 0})
        r = request(DC, "GET", TURN, bearer(syn["C"]["tokens"]["second"]))
        cloudflare_answer("Synapse with coturn configured, Cloudflare back", r)

    with section('CORS preflight'):
        pre = [("Origin", "https://app.element.io"), ("Access-Control-Request-Method", "GET"),
               ("Access-Control-Request-Headers", "authorization")]
        for label, path in [("turnServer", TURN), ("turnServer?access_token", TURN + "?access_token=x")]:
            direct = request(A, "OPTIONS", path, pre)
            via = request(DA, "OPTIONS", path, pre)
            check(f"CORS preflight ({label}): status {direct[0]} like Synapse", via[0] == direct[0] == 204,
                  lambda: f"synapse {direct[0]} / daemon {via[0]}")
            check(f"CORS preflight ({label}): the four Access-Control-* headers equal Synapse's",
                  all(hget(via[1], h) == hget(direct[1], h) is not None for h in CORS),
                  lambda: f"synapse {[(h, hget(direct[1], h)) for h in CORS]} / daemon {[(h, hget(via[1], h)) for h in CORS]}")
            check(f"CORS preflight ({label}): no body", via[2] == b"", lambda: show(via))

    with section("any other path is passed through (use daemon B: daemon A's log must stay free of it)"):
        direct = request(B, "GET", "/_matrix/client/versions")
        via = request(DB, "GET", "/_matrix/client/versions")
        check("/_matrix/client/versions through the daemon: 200", via[0] == 200, lambda: show(via))
        identical("/_matrix/client/versions through the daemon", direct, via)

    with section('HEAD (forwarded as HEAD, never minted for)'):
        mints = fake_stats(fake["A"]["origin"]).get("mints", 0)
        for label, hdrs in [("valid token", bearer(tok["head"])), ("invalid token", bearer("syt_nope"))]:
            direct = request(A, "HEAD", TURN, hdrs)
            via = request(DA, "HEAD", TURN, hdrs)
            check(f"HEAD turnServer, {label}: same status as Synapse ({direct[0]}), no body",
                  via[0] == direct[0] and via[2] == b"", lambda: f"synapse {direct[0]} / daemon {show(via)}")
        after = fake_stats(fake["A"]["origin"]).get("mints", 0)
        check("HEAD turnServer: no Cloudflare mint", after == mints, lambda: f"mints {mints} -> {after}")

    with section("odd paths: Synapse's own answer through the daemon, never a mint"):
        mints = fake_stats(fake["A"]["origin"]).get("mints", 0)
        for path in ["/_matrix/client/v3/voip%2FturnServer", "/_matrix/client/v3/voip%2fturnServer",
                     "//voip/turnServer", "/_matrix/client/v3//voip/turnServer",
                     "/_matrix/client/v3/voip/turnServer/", "/_matrix/client/v3/voip/turnServer;x",
                     "/_matrix/client/v3/voip/turnserver",
                     "/_matrix/client/v3/voip/turnServer%0d%0aInjected:%20yes"]:
            direct = request(A, "GET", path, bearer(tok["main"]))
            via = request(DA, "GET", path, bearer(tok["main"]))
            check(f"{path}: Synapse does not serve it (answers {direct[0]})", direct[0] != 200, lambda: show(direct))
            identical(path, direct, via)
        after = fake_stats(fake["A"]["origin"]).get("mints", 0)
        check("odd paths: no Cloudflare mint", after == mints, lambda: f"mints {mints} -> {after}")

    with section("odd queries: forwarded as sent, still minted for"):
        for label, q in [("percent-encoded invalid UTF-8", "x=%FF%FE"), ("%0d%0a", "x=%0d%0aInjected:%20yes")]:
            path = f"{TURN}?{q}&access_token={tok['query']}"
            direct = request(A, "GET", path)
            via = request(DA, "GET", path)
            check(f"query with {label}: Synapse answers 200, the daemon 200 with Cloudflare credentials",
                  direct[0] == 200 and via[0] == 200 and CF_HEX.match(str((jbody(via) or {}).get("username", ""))),
                  lambda: f"synapse {show(direct)} / daemon {show(via)}")

    with section("a request line over Synapse's own 16 KiB line limit, under the daemon's 32 KiB head limit"):
        path = f"{TURN}?pad={'a' * 20000}&access_token={tok['query']}"
        try:
            direct = request(A, "GET", path)
        except (OSError, http.client.HTTPException) as e:
            direct = e
        check("20 KiB request line: Synapse closes the connection without an answer",
              isinstance(direct, Exception), lambda: show(direct))
        via = request(DA, "GET", path)
        check("20 KiB request line: the daemon answers 502 M_UNKNOWN (never 401 or 403)",
              via[0] == 502 and (jbody(via) or {}).get("errcode") == "M_UNKNOWN", lambda: show(via))

    with section("two tokens in one query: a credential only for a token every homeserver reads alike"):
        # Synapse takes the first access_token (and splits on ';'); Dendrite
        # takes the first in Go's reading, the Conduit family refuses a
        # repeated one and splits on '&' only. Such a query is ambiguous:
        # Synapse's own answer comes back unchanged and nothing is minted.
        # A single token, percent-encoded or not, still gets that device's
        # credential (Synapse's whoami names the device it authenticated).
        def device(query):
            r = request(A, "GET", f"{WHOAMI}?{query}")
            return (jbody(r) or {}).get("device_id") if r[0] == 200 else None

        mints = fake_stats(fake["A"]["origin"]).get("mints", 0)
        tx, ty = tok["odd_x"], tok["odd_y"]
        cred = {}
        for t in (tx, ty):
            r = request(DA, "GET", f"{TURN}?access_token={t}")
            cred[device(f"access_token={t}")] = (jbody(r) or {}).get("username")
        check("two logins: two devices with a Cloudflare credential each",
              len(cred) == 2 and None not in cred and all(CF_HEX.match(str(u)) for u in cred.values()),
              lambda: f"credentials by device {cred}")
        q = "access_token=" + ty.replace("_", "%5F")
        dev = device(q)
        via = request(DA, "GET", f"{TURN}?{q}")
        check(f"percent-encoded token: the credential of the device Synapse authenticated ({dev})",
              dev in cred and via[0] == 200 and (jbody(via) or {}).get("username") == cred[dev],
              lambda: f"whoami device {dev}, credentials by device {cred}, daemon {show(via)}")
        for label, q in [
            ("access_token twice, second login first", f"access_token={ty}&access_token={tx}"),
            ("access_token twice, first login first", f"access_token={tx}&access_token={ty}"),
            ("';' between pairs", f"x=1;access_token={ty}"),
            ("percent-encoded name", f"access%5Ftoken={ty}&access_token={tx}"),
            ("a bare access_token first", f"access_token&access_token={ty}&access_token={tx}"),
        ]:
            direct = request(A, "GET", f"{TURN}?{q}")
            via = request(DA, "GET", f"{TURN}?{q}")
            check(f"{label}: Synapse accepts it ({direct[0]})", direct[0] == 200, lambda: show(direct))
            identical(f"{label}: ambiguous, Synapse's own answer", direct, via)
        for label, hdrs, q in [
            ("a bogus token first", [], f"access_token=bogus&access_token={tx}"),
            ("an empty token first", [], f"access_token=&access_token={tx}"),
            ("only a bare access_token", [], "access_token"),
            ("a non-ASCII token", [], "access_token=%C3%A9"),
            ("header and a percent-encoded access_token name", bearer(tx), f"access%5Ftoken={ty}"),
        ]:
            direct = request(A, "GET", f"{TURN}?{q}", hdrs)
            via = request(DA, "GET", f"{TURN}?{q}", hdrs)
            check(f"{label}: Synapse refuses it ({direct[0]} {direct[2][:120]!r})", direct[0] != 200, lambda: show(direct))
            identical(label, direct, via)
        after = fake_stats(fake["A"]["origin"]).get("mints", 0)
        check("two tokens in one query: one mint per token, none for an ambiguous query", after - mints == 2,
              lambda: f"mints {mints} -> {after}")

    with section("endpoints that merely end in /voip/turnServer: Synapse's answer, never a credential (daemon B)"):
        # Config B refuses guests TURN; a room's relations must not get round
        # that. Alice makes a world-readable room guests may join, with one
        # message; the guest joins it.
        g, alice_b = syn["B"]["tokens"]["guest"], syn["B"]["tokens"]["main"]
        mints = fake_stats(fake["B"]["origin"]).get("mints", 0)
        room = room_with_a_message(B, alice_b)
        st = request(B, "POST", f"/_matrix/client/v3/join/{q_path(room['room_id'])}", bearer(g) + JSON, b"{}")[0]
        check("guest joined alice's room on Synapse B", st == 200, lambda: f"join answered {st}")
        rel = (f"/_matrix/client/v1/rooms/{q_path(room['room_id'])}/relations/"
               f"{q_path(room['event_id'])}/voip/turnServer")
        state = f"/_matrix/client/v3/rooms/{q_path(room['room_id'])}/state/voip/turnServer"
        for label, path, t in [("guest, relations of type voip/turnServer", rel, g),
                               ("user, relations of type voip/turnServer", rel, alice_b),
                               ("user, the state event voip/turnServer", state, alice_b)]:
            direct = request(B, "GET", path, bearer(t))
            via = request(DB, "GET", path, bearer(t))
            check(f"{label}: Synapse answers {direct[0]} {direct[2][:60]!r}", direct[0] in (200, 404), lambda: show(direct))
            identical(label, direct, via)
        after = fake_stats(fake["B"]["origin"]).get("mints", 0)
        check("endpoints ending in /voip/turnServer: no Cloudflare mint", after == mints,
              lambda: f"mints {mints} -> {after}")


JSON = [("Content-Type", "application/json")]


def q_path(segment):
    """One path segment, percent-encoded as clients send room and event IDs."""
    import urllib.parse
    return urllib.parse.quote(segment, safe="")


def room_with_a_message(base, token):
    """A public, world-readable room guests can join, with one message."""
    body = json.dumps({"preset": "public_chat", "initial_state": [
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}},
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}},
    ]}).encode()
    st, _, data = request(base, "POST", "/_matrix/client/v3/createRoom", bearer(token) + JSON, body)
    if st != 200:
        raise SystemExit(f"createRoom at {base}: {st} {data[:200]!r}")
    room_id = json.loads(data)["room_id"]
    txn = f"e2e{random.getrandbits(32):08x}"
    st, _, data = request(base, "PUT", f"/_matrix/client/v3/rooms/{q_path(room_id)}/send/m.room.message/{txn}",
                          bearer(token) + JSON, json.dumps({"msgtype": "m.text", "body": "hello"}).encode())
    if st != 200:
        raise SystemExit(f"send at {base}: {st} {data[:200]!r}")
    return {"room_id": room_id, "event_id": json.loads(data)["event_id"]}


    # --------------------------------------------------------------------------- proxy

def proxy_checks(S, name):
    px = S["proxy"][name]
    P = px["url"]
    syn, dmn = S["synapse"]["A"], S["daemon"]["A"]
    A = syn["url"]
    tok = syn["tokens"][name]
    pfx = f"{name}"

    r = request(P, "GET", TURN, bearer(tok))
    direct_daemon = request(dmn["url"], "GET", TURN, bearer(tok))
    cloudflare_answer(f"{pfx}: v3 turnServer reaches the daemon", r)
    b, d = jbody(r) or {}, jbody(direct_daemon) or {}
    check(f"{pfx}: same credentials shape and URIs as the daemon answers directly",
          b.get("uris") == d.get("uris") and sorted(b) == sorted(d), lambda: f"proxy {r[2]!r} / daemon {direct_daemon[2]!r}")
    r = request(P, "GET", "/_matrix/client/r0/voip/turnServer?access_token=" + tok)
    check(f"{pfx}: r0 turnServer with ?access_token= reaches the daemon (query kept)",
          r[0] == 200 and CF_HEX.match(str((jbody(r) or {}).get("username", ""))), lambda: show(r))

    direct = request(A, "GET", TURN, bearer("syt_not_a_real_token"))
    via = request(P, "GET", TURN, bearer("syt_not_a_real_token"))
    identical(f"{pfx}: invalid token", direct, via, headers=False)

    direct = request(A, "GET", "/_matrix/client/versions")
    via = request(P, "GET", "/_matrix/client/versions")
    identical(f"{pfx}: /_matrix/client/versions", direct, via, headers=False)

    # The snippets route exactly the turnServer endpoint: a room's relations
    # of type voip/turnServer go straight to Synapse.
    room = room_with_a_message(A, tok)
    rel = (f"/_matrix/client/v1/rooms/{q_path(room['room_id'])}/relations/"
           f"{q_path(room['event_id'])}/voip/turnServer")
    direct = request(A, "GET", rel, bearer(tok))
    via = request(P, "GET", rel, bearer(tok))
    identical(f"{pfx}: a room's relations ending in /voip/turnServer", direct, via, headers=False)
    check(f"{pfx}: the relations path went straight to Synapse (daemon A's log never names the room)",
          q_path(room["room_id"]) not in read(dmn["log"]) and room["room_id"] not in read(dmn["log"]),
          lambda: f"{room['room_id']} in {dmn['log']}")

    pre = [("Origin", "https://app.element.io"), ("Access-Control-Request-Method", "GET"),
           ("Access-Control-Request-Headers", "authorization")]
    direct = request(A, "OPTIONS", TURN, pre)
    via = request(P, "OPTIONS", TURN, pre)
    check(f"{pfx}: CORS preflight on turnServer: 204 with Synapse's Access-Control-* headers",
          via[0] == direct[0] == 204 and all(hget(via[1], h) == hget(direct[1], h) is not None for h in CORS),
          lambda: f"synapse {show(direct)} / proxy {show(via)}")

    # the client's address reaches Synapse (X-Forwarded-For), on both routes
    slog = syn["log"]
    for route, path, hdrs in [("turnServer (proxy -> daemon -> Synapse)", TURN, bearer(tok)),
                              ("versions (proxy -> Synapse)", "/_matrix/client/versions", [])]:
        src = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        nonce = f"{random.getrandbits(64):016x}"
        st = request(P, "GET", f"{path}?e2e_probe={nonce}", hdrs, source=src)[0]
        line = wait_for(lambda: next((ln for ln in read(slog).splitlines() if nonce in ln), None), 10)
        check(f"{pfx}: {route}: Synapse sees the client address {src} (X-Forwarded-For)",
              st == 200 and line and f" - {src} - " in line,
              lambda: f"status {st}; Synapse log line: {line!r}")
        if path == TURN:
            rx = re.compile(r"(?<![\d.])" + re.escape(src) + r"(?![\d])")
            dline = wait_for(lambda: rx.search(read(dmn["log"])), 5)
            check(f"{pfx}: the daemon logs the client address {src} (first X-Forwarded-For entry)", dline,
                  lambda: f"{src} not in {dmn['log']}")


def final_checks(S):
    """After everything ran: what the daemons' logs show."""
    log = read(S["daemon"]["A"]["log"])
    check("the daemon logs a misrouted path (daemon B's log names /_matrix/client/versions)",
          "/_matrix/client/versions" in read(S["daemon"]["B"]["log"]), f"not in {S['daemon']['B']['log']}")
    if S.get("proxy"):
        check("reverse proxies route /_matrix/client/versions straight to Synapse (daemon A's log never names it)",
              "turnServer" in log and "/_matrix/client/versions" not in log,
              lambda: "daemon A's log has no turnServer line (cannot tell)" if "turnServer" not in log
              else "daemon A's log names /_matrix/client/versions: "
              + next(ln for ln in log.splitlines() if "/_matrix/client/versions" in ln))
    # docs/behaviour.md §8: never log access tokens or the API token, even with LOG_LEVEL=debug
    secrets = {"Cloudflare API token": "e2e-token"}
    for sname, syn in S["synapse"].items():
        for label, tok in syn.get("tokens", {}).items():
            secrets[f"access token {sname}/{label}"] = tok
    hex96 = re.compile(r"(?<![0-9a-f])[0-9a-f]{96}(?![0-9a-f])")
    for name, d in S["daemon"].items():
        text = read(d["log"])
        leaked = [k for k, v in secrets.items() if v in text]
        if hex96.search(text):
            leaked.append("a TURN username/password of the fake Cloudflare (96 hex digits)")
        check(f"daemon {name}'s debug log contains no access token, API token or TURN credential", text and not leaked,
              lambda: f"empty log {d['log']}" if not text else f"found {leaked} in {d['log']}")
    # docs/behaviour.md §8: the outcome words, one request line each
    for name, words in [("A", ["cloudflare", "passed-through", "synapse-fallback"]), ("C", ["synapse-fallback", "cloudflare"])]:
        text = read(S["daemon"][name]["log"])
        missing = [w for w in words if not re.search(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", text)]
        check(f"daemon {name}'s request log names the outcomes {', '.join(words)}", not missing,
              f"missing {missing} in {S['daemon'][name]['log']}")


def synapse_down_checks(S):
    """Daemon B when its real Synapse stops answering, then dies.

    Frozen with SIGSTOP, Synapse's socket still accepts connections (the
    kernel completes the handshake) but nothing answers: the daemon must give
    its own 504 at SYNAPSE_TIMEOUT_SECONDS. Killed, nothing listens: 502 at
    once. Both are Matrix errors with CORS, never a 401/403 (docs/behaviour.md §3).
    """
    syn, dmn = S["synapse"]["B"], S["daemon"]["B"]
    timeout = float(dmn["synapse_timeout"])
    headers = bearer(syn["tokens"]["main"])

    def ask():
        started = time.monotonic()
        resp = request(dmn["url"], "GET", TURN, headers, timeout=timeout + 10)
        return resp, time.monotonic() - started

    def our_error(resp, status):
        st, hs, body = resp
        try:
            j = json.loads(body)
        except ValueError:
            return False
        return (st == status and j.get("errcode") == "M_UNKNOWN" and isinstance(j.get("error"), str)
                and all(hget(hs, h) for h in CORS))

    os.kill(syn["pid"], signal.SIGSTOP)
    try:
        resp, took = ask()
    finally:
        os.kill(syn["pid"], signal.SIGCONT)
    check(f"Synapse frozen (SIGSTOP): 504 M_UNKNOWN with CORS after SYNAPSE_TIMEOUT_SECONDS={timeout:g}",
          our_error(resp, 504), lambda: show(resp))
    check(f"Synapse frozen: the 504 came within {timeout:g} s + 1 s, not before {timeout:g} s ({took:.2f} s)",
          timeout - 0.05 <= took < timeout + 1, f"{took:.2f} s")

    os.kill(syn["pid"], signal.SIGKILL)
    gone = wait_for(lambda: not pid_alive(syn["pid"]), 10)
    check("Synapse B killed (SIGKILL)", gone, f"pid {syn['pid']} still alive")
    resp, took = ask()
    check("Synapse dead: 502 M_UNKNOWN with CORS", our_error(resp, 502), lambda: show(resp))
    check(f"Synapse dead: the 502 came within 1 s ({took:.2f} s)", took < 1, f"{took:.2f} s")
    st, _, body = request(dmn["url"], "GET", "/healthz")
    check("Synapse dead: the daemon's own /healthz still answers 200", st == 200, f"{st} {body!r}")


# --------------------------------------------------------------------------- budget

GB = 10**9
BUDGET_KEY, BUDGET_API_TOKEN = "e2e-key", "e2e-token"
ACCOUNT, ANALYTICS_TOKEN = "e2e-account", "e2e-analytics-token"
REACHED = "the monthly TURN egress budget is reached"
def metrics(base):
    st, _, body = request(base, "GET", "/metrics")
    return body.decode() if st == 200 else ""


def metric(text, series):
    """The sum of the samples whose series starts with SERIES (labels not named
    there are summed over); None if there is none."""
    values = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
              if ln.startswith(series) and ln[len(series)] in " ,}"]
    return sum(values) if values else None


def outcome(text, word):
    return metric(text, f'turnify_requests_total{{outcome="{word}"') or 0


def until_metrics(base, want, timeout=20):
    """Polls /metrics until every series of WANT has its value; returns the last text."""
    last = [""]

    def shows():
        last[0] = metrics(base)
        return all(metric(last[0], k) == v for k, v in want.items())
    return wait_until(shows, timeout), last[0]


def budget_checks(S):
    """A daemon of its own in front of the real Synapse A with a monthly budget
    of 1 GB and a per-user budget of 0.5 GB, polling the fake Cloudflare's
    analytics every second (docs/behaviour.md §13). Usage is set through the
    fake's control API; every withheld answer is compared with Synapse's own."""
    A = S["synapse"]["A"]
    syn, tok, users = A["url"], A["tokens"], A["users"]
    work = os.path.join(S["run_dir"], "budget")
    os.makedirs(work, exist_ok=True)
    base, _ = start_fake(FAKE_CLOUDFLARE, os.path.join(work, "fake-cloudflare.log"), "--key-id", BUDGET_KEY,
                         "--api-token", BUDGET_API_TOKEN, "--account-id", ACCOUNT, "--analytics-token", ANALYTICS_TOKEN)
    origin = base.rsplit("/v1", 1)[0]
    (port,) = free_ports(1)
    D = f"http://127.0.0.1:{port}"
    config = {
        "SYNAPSE_BASE_URL": syn,
        "CF_TURN_KEY_ID": BUDGET_KEY, "CF_TURN_API_TOKEN": BUDGET_API_TOKEN,
        "CF_ACCOUNT_ID": ACCOUNT, "CF_ANALYTICS_API_TOKEN": ANALYTICS_TOKEN,
        "CF_ANALYTICS_API_URL": f"{origin}/client/v4/graphql",
        "CF_USAGE_POLL_SECONDS": "1",
        "TURN_MONTHLY_EGRESS_BUDGET_GB": "1",
        "TURN_USER_MONTHLY_EGRESS_BUDGET_GB": "0.5",
        "CF_CUSTOM_IDENTIFIER": "user_id",
    }
    base_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    log = os.path.join(work, "daemon.log")
    daemon = SUPERVISOR.start([DAEMON], log, timeout=30, ready=url(f"{D}/healthz"), env={
        **base_env, **config, "CF_TURN_API_BASE_URL": base, "LISTEN_ADDR": f"127.0.0.1:{port}",
        "LOG_LEVEL": "debug"})

    def whoami(t):
        r = request(syn, "GET", WHOAMI, bearer(t))
        return (jbody(r) or {}).get("user_id")

    def mints():
        return fake_stats(origin)["mints"]

    def usage(egress, identifier=None, username="e2e-usage"):
        record = {"key_id": BUDGET_KEY, "username": username, "egress_bytes": egress, "ingress_bytes": 0}
        if identifier:
            record["custom_identifier"] = identifier
        st = request(origin, "POST", "/__fake/usage", JSON, json.dumps(record).encode())[0]
        if st != 204:
            raise RuntimeError(f"POST /__fake/usage answered {st}")

    def withheld(label, t, word):
        """Synapse's own answer for token T through the daemon, counted WORD."""
        before = outcome(metrics(D), word)
        direct = request(syn, "GET", TURN, bearer(t))
        via = request(D, "GET", TURN, bearer(t))
        identical(label, direct, via)
        after = outcome(metrics(D), word)
        check(f"{label}: counted outcome {word}", after == before + 1,
              f"turnify_requests_total{{outcome=\"{word}\"}} {before} -> {after}")

    alice, bob = users["budget"], users["budget_bob"]
    check("budget: the two users are distinct real Synapse users (/account/whoami)",
          whoami(tok["budget"]) == alice and whoami(tok["budget_bob"]) == bob and alice != bob,
          f"whoami {whoami(tok['budget'])} / {whoami(tok['budget_bob'])}")

    with section("budget: before any usage"):
        ok, text = until_metrics(D, {"turnify_usage_reading_stale": 0, "turnify_turn_egress_budget_reached": 0,
                                     "turnify_users_over_budget": 0})
        check("budget: a first reading within 20 s: not stale, budget not reached, nobody over", ok,
              lambda: "\n".join(ln for ln in text.splitlines() if "usage" in ln or "budget" in ln))
        before = outcome(text, "cloudflare")
        r = request(D, "GET", TURN, bearer(tok["budget"]))
        cred = cloudflare_answer("budget: a real user under both budgets", r) or {}
        stats = fake_stats(origin)
        check(f"budget: the mint carries customIdentifier = the user ID Synapse's whoami names ({alice})",
              stats["mints"] == 1 and stats["last_custom_identifier"] == alice, lambda: f"fake's stats {stats}")
        after = outcome(metrics(D), "cloudflare")
        check("budget: counted outcome cloudflare", after == before + 1, f"{before} -> {after}")

    with section("budget: one user past the per-user budget"):
        usage(6 * GB // 10, alice, str(cred.get("username", "e2e-alice")))
        ok, text = until_metrics(D, {"turnify_users_over_budget": 1})
        check("budget: 0.6 GB for the first user: turnify_users_over_budget 1 within 20 s", ok,
              lambda: "\n".join(ln for ln in text.splitlines() if "budget" in ln))
        n = mints()
        withheld("budget: per-user budget reached, the token holding a credential", tok["budget"], "user-over-budget")
        withheld("budget: per-user budget reached, a new login of the same user", tok["budget_fresh"], "user-over-budget")
        check("budget: a user past the per-user budget costs no mint", mints() == n, f"mints {n} -> {mints()}")
        r = request(D, "GET", TURN, bearer(tok["budget_bob"]))
        cloudflare_answer("budget: a second real user under the per-user budget", r)
        stats = fake_stats(origin)
        check(f"budget: the second user's mint carries customIdentifier {bob}",
              stats["mints"] == n + 1 and stats["last_custom_identifier"] == bob,
              lambda: f"mints {n} -> {stats['mints']}, fake's stats {stats}")

    with section("budget: the monthly budget reached"):
        usage(5 * GB // 10)
        ok, text = until_metrics(D, {"turnify_turn_egress_budget_reached": 1})
        check("budget: 1.1 GB in the month: turnify_turn_egress_budget_reached 1 within 20 s", ok,
              lambda: "\n".join(ln for ln in text.splitlines() if "budget" in ln))
        n = mints()
        withheld("budget: monthly budget reached, the second user's token holding a credential",
                 tok["budget_bob"], "over-budget")
        withheld("budget: monthly budget reached, a new login of the second user", tok["budget_bob_fresh"], "over-budget")
        withheld("budget: monthly budget reached, the first user", tok["budget"], "over-budget")
        check("budget: no mint once the monthly budget is reached", mints() == n, f"mints {n} -> {mints()}")
        for label, hdrs in [("a made-up token", bearer("syt_not_a_real_token")), ("no token", [])]:
            before = outcome(metrics(D), "passed-through")
            direct = request(syn, "GET", TURN, hdrs)
            via = request(D, "GET", TURN, hdrs)
            after = outcome(metrics(D), "passed-through")
            check(f"budget: over budget, {label}: Synapse's own 401, counted passed-through (not over-budget)",
                  via[0] == 401 and after == before + 1, lambda: f"passed-through {before} -> {after}; {show(via)}")
            identical(f"budget: over budget, {label}", direct, via)

    with section("budget: the log"):
        polls = metric(metrics(D), 'turnify_usage_polls_total{result="ok"') or 0
        more = wait_until(lambda: (metric(metrics(D), 'turnify_usage_polls_total{result="ok"') or 0) >= polls + 3, 20)
        text = read(log)
        lines = [ln for ln in text.splitlines() if REACHED in ln]
        check(f"budget: the log says \"{REACHED}\" once, three good readings later still once",
              more and len(lines) == 1, lambda: f"after {polls} readings and 3 more ({bool(more)}): {lines}")
        users_over = [ln for ln in text.splitlines() if "reached the per-user monthly TURN egress budget" in ln]
        check(f"budget: the log names the user past the per-user budget ({alice}) once",
              len(users_over) == 1 and alice in users_over[0], lambda: f"{users_over}")
        leaked = [k for k, v in [("the analytics token", ANALYTICS_TOKEN), ("the TURN API token", BUDGET_API_TOKEN)]
                  + [(f"access token {k}", tok[k]) for k in ("budget", "budget_fresh", "budget_bob", "budget_bob_fresh")]
                  if v in text]
        check("budget: the debug log holds no analytics token, API token or access token", text and not leaked,
              lambda: f"found {leaked} in {log}" if text else f"empty log {log}")
    SUPERVISOR.stop(daemon)

    with section("budget: matrix-turnify check"):
        outs = {}
        for label, token in [("right", ANALYTICS_TOKEN), ("wrong", "e2e-not-the-analytics-token")]:
            env = {**base_env, **config, "CF_TURN_API_BASE_URL": base, "CF_ANALYTICS_API_TOKEN": token}
            p = subprocess.run([DAEMON, "check"], env=env, capture_output=True, text=True, timeout=60)
            outs[label] = (p.returncode, p.stdout + p.stderr)
            with open(os.path.join(work, f"check-{label}.out"), "w") as f:
                f.write(outs[label][1])
        rc, out = outs["right"]
        lines = out.splitlines()
        wanted = [
            f"✓ the analytics token reads account {ACCOUNT} (Account Analytics)",
            f"✓ Cloudflare records usage for key {BUDGET_KEY} this month",
            "so far: egress 1.100 GB, ingress 0.000 GB;",
            "! the monthly budget of 1.000 GB is reached",
            f"✓ the heaviest users this month: {alice} 0.600 GB (past the per-user budget)",
            "! per-user budget of 0.500 GB: 1 user has reached it",
        ]
        missing = [w for w in wanted if not any(w in ln for ln in lines)]
        check("budget: check reads the account, the month's egress, the budget reached and the heaviest user past "
              "the per-user budget; no ✗", rc == 0 and not missing and not any(ln.startswith("✗") for ln in lines),
              lambda: f"exit {rc}, missing {missing}: {out}")
        rc, out = outs["wrong"]
        lines = out.splitlines()
        failed = [(ln, lines[i + 1] if i + 1 < len(lines) else "") for i, ln in enumerate(lines) if ln.startswith("✗")]
        check("budget: check with a wrong CF_ANALYTICS_API_TOKEN: exit 1, one ✗, that the usage could not be read, "
              "naming CF_ANALYTICS_API_TOKEN",
              rc == 1 and len(failed) == 1 and "usage could not be read" in failed[0][0]
              and "CF_ANALYTICS_API_TOKEN" in failed[0][1],
              lambda: f"exit {rc}: {out}")
        check("budget: neither check output holds an analytics token",
              not any(t in o for _, o in outs.values() for t in (ANALYTICS_TOKEN, "e2e-not-the-analytics-token")),
              "found in check-right.out or check-wrong.out")


def main(argv):
    with open(argv[0]) as f:
        S = json.load(f)
    S["run_dir"] = os.path.dirname(os.path.abspath(argv[0]))
    what = argv[1]
    try:
        if what == "daemon":
            daemon_checks(S)
        elif what == "proxy":
            proxy_checks(S, argv[2])
        elif what == "final":
            final_checks(S)
        elif what == "budget":
            budget_checks(S)
        elif what == "synapse-down":
            synapse_down_checks(S)
        else:
            raise SystemExit(f"unknown check group {what}")
    except Exception as e:  # a crash is a failed check, never a silent stop
        import traceback
        check(f"{what} checks ran to the end", False, f"{type(e).__name__}: {e} {traceback.format_exc()[-600:]}")
    return REPORT.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
