#!/usr/bin/env python3
"""The real-call part of the e2e suite (tests/e2e/relay.sh), stdlib only.

  relay.py plan STATE    ask the daemons for credentials, check their answers,
                         write one call plan per browser for js/relay_call.mjs
  relay.py check STATE   read what the browsers did and coturn's logs, print
                         the checks and record the port-53 and list-length figures

state["relay"] (written by relay.sh) names the coturn ports and logs, the fake
Cloudflare and daemon R, and the browsers. Reports its checks through
report.py, and prints "# ..." lines for what is recorded, not asserted.
"""

import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import TURN, bearer, check, coturn_password, jbody, request, show  # noqa: E402
from e2e import fake_behaviour  # noqa: E402

BROWSERS = ("chromium", "firefox")


def say(text):
    print(f"# {text}", flush=True)


def load(path):
    with open(path) as f:
        return json.load(f)


def dump(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def ice(answer, uris=None, password=None):
    """The RTCIceServer list matrix-js-sdk builds from a Matrix turnServer answer."""
    return [{"urls": uris if uris is not None else answer["uris"], "username": answer["username"],
             "credential": password if password is not None else answer["password"]}]


def mint_raw(R):
    """A credential straight from the fake Cloudflare: its whole answer, STUN and port 53 included."""
    st, _, body = request(R["fake_origin"], "POST", R["fake_mint_path"],
                          [("Authorization", "Bearer e2e-token"), ("Content-Type", "application/json")],
                          b'{"ttl": 3600}')
    if st != 201:
        raise SystemExit(f"fake Cloudflare R did not mint: {st} {body[:200]!r}")
    return json.loads(body)["iceServers"]


# --------------------------------------------------------------------------- plan

def cmd_plan(S):
    R = S["relay"]
    syn = S["synapse"]
    secret, p, pt = R["secret"], R["port"], R["tls_port"]
    filtered = [f"turn:127.0.0.1:{p}?transport=udp", f"turn:127.0.0.1:{p}?transport=tcp",
                f"turn:127.0.0.1:{pt}?transport=tcp", f"turns:localhost:{pt}?transport=tcp",
                f"turns:localhost:{p}?transport=tcp"]
    # The shorter list keeps one URI per transport: UDP, TCP, and TLS on the
    # port that stands for 443.
    short = [filtered[0], filtered[1], filtered[4]]
    answers = {}
    # Daemon C's fake Cloudflare fails, so C answers with Synapse C's coturn
    # credentials (the fallback). Set it again: earlier checks switch it.
    fake_behaviour(S["fake"]["C"]["origin"], {"fail_status": 503})
    for b in BROWSERS:
        cf_r = request(R["daemon"], "GET", TURN, bearer(syn["A"]["tokens"][f"relay_{b}"]))
        cf = jbody(cf_r) or {}
        check(f"relay {b}: daemon R (Cloudflare path) answers 200 with a credential",
              cf_r[0] == 200 and cf.get("username") and cf.get("password"), lambda: show(cf_r))
        check(f"relay {b}: the fake's 2 stun: and 2 port-53 URIs were dropped, 5 TURN URIs left in order",
              cf.get("uris") == filtered, lambda: f"uris {cf.get('uris')!r}, expected {filtered!r}")
        check(f"relay {b}: the Cloudflare-path password is the coturn REST API HMAC of the username",
              cf.get("password") == coturn_password(secret, str(cf.get("username"))), lambda: show(cf_r))
        fb_r = request(S["daemon"]["C"]["url"], "GET", TURN, bearer(syn["C"]["tokens"][f"relay_{b}"]))
        fb = jbody(fb_r) or {}
        check(f"relay {b}: daemon C (Cloudflare failing) falls back to Synapse C's coturn credentials",
              fb_r[0] == 200 and re.match(r"^\d+:@alice:localhost$", str(fb.get("username", "")))
              and fb.get("uris") == syn["C"]["turn_uris"]
              and fb.get("password") == coturn_password(secret, fb["username"]), lambda: show(fb_r))
        raw53, only53 = mint_raw(R), mint_raw(R)
        answers[b] = {"cf": cf, "fallback": fb, "raw53": raw53, "only53": only53}
        t, neg = R["timeout_ms"], R["neg_timeout_ms"]
        cases = [
            {"name": "cf", "iceServers": ice(cf), "timeoutMs": t},
            {"name": "fallback", "iceServers": ice(fb), "timeoutMs": t},
            {"name": "turns", "iceServers": ice(cf, [u for u in cf.get("uris", []) if u.startswith("turns:")]),
             "timeoutMs": t},
            {"name": "wrong-password", "iceServers": ice(cf, password="not" + str(cf.get("password"))),
             "timeoutMs": neg},
        ]
        if R["port53"]:
            only = [{"urls": ["turn:127.0.0.1:53?transport=udp", "turn:127.0.0.1:53?transport=tcp"],
                     "username": only53[1]["username"], "credential": only53[1]["credential"]}]
            # Where port 53 works it connects in well under a second here.
            cases += [{"name": "raw53", "iceServers": raw53, "timeoutMs": t, "gatherMs": R["gather_ms"]},
                      {"name": "only53", "iceServers": only, "timeoutMs": neg, "gatherMs": R["gather_ms"]}]
        for i in range(R["trials"]):
            # Interleaved, so that load on the machine hits both alike.
            cases += [{"name": f"time-full-{i}", "iceServers": ice(cf, filtered), "timeoutMs": t,
                       "gatherMs": R["gather_ms"]},
                      {"name": f"time-short-{i}", "iceServers": ice(cf, short), "timeoutMs": t,
                       "gatherMs": R["gather_ms"]}]
        br = R["browsers"][b]
        dump({"browser": b, "executable": br["executable"], "profile": br["profile"], "home": br["home"],
              "cases": cases}, os.path.join(R["dir"], f"plan-{b}.json"))
    dump({"answers": answers, "filtered": filtered, "short": short}, os.path.join(R["dir"], "answers.json"))
    return 0


# --------------------------------------------------------------------------- check

def logged_users(log_path, pattern):
    """The usernames (group 1 of PATTERN) on lines of coturn's log."""
    users = set()
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                m = re.search(pattern, line)
                if m:
                    users.add(m.group(1))
    except FileNotFoundError:
        pass
    return users


def allocations(log_path):
    """Usernames coturn logged a successful ALLOCATE for (needs --verbose)."""
    return logged_users(log_path, r"user <([^>]*)>: incoming packet ALLOCATE processed, success")


def refused(log_path):
    """Usernames coturn answered 401 to. The first, anonymous request of every
    allocation gets a 401 too, but without a username ("user <>")."""
    return logged_users(log_path, r"user <([^>]+)>: incoming packet .*error 401")


def relayed(r):
    sel = r.get("selected") or {}
    return all((sel.get(side) or {}).get(end, {}) and sel[side][end].get("candidateType") == "relay"
               for side in ("a", "b") for end in ("local", "remote"))


def connected(r):
    return r.get("connectedMs") is not None


def messages(r):
    return (r.get("received") or {}).get("a") == "hello from B" and (r.get("received") or {}).get("b") == "hello from A"


def brief(r):
    sel = r.get("selected") or {}
    loc = lambda s: (sel.get(s) or {}).get("local") or {}  # noqa: E731
    return (f"final {r.get('final')}, connected at {r.get('connectedMs')} ms, received {r.get('received')}, "
            f"local candidates a={loc('a').get('candidateType')}/{loc('a').get('relayProtocol')} "
            f"b={loc('b').get('candidateType')}/{loc('b').get('relayProtocol')}, error {r.get('error')}")


def cmd_check(S):
    R = S["relay"]
    A = load(os.path.join(R["dir"], "answers.json"))
    main_allocs = allocations(R["coturn_log"])
    main_refused = refused(R["coturn_log"])
    allocs53 = allocations(R["coturn53_log"]) if R["port53"] else set()
    summary = {"coturn": R.get("coturn_version"), "browsers": {}}
    for b in BROWSERS:
        try:
            out = load(os.path.join(R["dir"], f"out-{b}.json"))
        except (OSError, ValueError) as e:
            check(f"relay {b}: the browser ran the calls", False, repr(e))
            continue
        check(f"relay {b}: the browser ran the calls ({out.get('version')})", not out.get("error"),
              lambda: str(out.get("error"))[:600])
        res = {r["name"]: r for r in out.get("results", [])}
        ans = A["answers"][b]
        rec = summary["browsers"][b] = {"version": out.get("version"), "candidates": {}}

        for name, label, user in [("cf", "Cloudflare path (daemon R, fake minting for coturn)", ans["cf"].get("username")),
                                  ("fallback", "fallback path (Synapse C's coturn credentials through daemon C)",
                                   ans["fallback"].get("username")),
                                  ("turns", "turns: only (TLS to coturn, certificate from the run's own CA)",
                                   ans["cf"].get("username"))]:
            r = res.get(name)
            if r is None:
                check(f"relay {b} {label}: call made", False, "no result")
                continue
            check(f"relay {b} {label}: both ends connected", connected(r), lambda: brief(r))
            check(f"relay {b} {label}: a message arrived each way", messages(r), lambda: brief(r))
            check(f"relay {b} {label}: the selected candidate pair is relay/relay on both ends", relayed(r),
                  lambda: json.dumps(r.get("selected")))
            check(f"relay {b} {label}: coturn logged an ALLOCATE for that username", user in main_allocs,
                  f"no 'user <{user}>: incoming packet ALLOCATE processed, success' in {R['coturn_log']}")
            if name == "turns":
                protos = [((r.get("selected") or {}).get(s) or {}).get("local", {}).get("relayProtocol") for s in "ab"]
                check(f"relay {b} {label}: both ends relay over TLS (relayProtocol tls)", protos == ["tls", "tls"],
                      f"relayProtocol {protos}")
            sel = r.get("selected") or {}
            rec["candidates"][name] = [{k: ((sel.get(s) or {}).get("local") or {}).get(k)
                                        for k in ("candidateType", "relayProtocol", "url")} for s in "ab"]

        r = res.get("wrong-password")
        check(f"relay {b} negative control: a wrong password does not connect within {R['neg_timeout_ms']} ms",
              r is not None and not connected(r) and not messages(r) and not r.get("error"),
              lambda: brief(r) if r else "no result")
        # It failed where it should: coturn refused the credential (so the
        # browser did try that server with it).
        user = ans["cf"].get("username")
        check(f"relay {b} negative control: coturn answered 401 to that username", user in main_refused,
              f"no 'user <{user}>: incoming packet … error 401' in {R['coturn_log']}")

        # Port 53: recorded, not asserted.
        if R["port53"]:
            for name, what, user in [("raw53", "raw fake answer (2 stun:, 6 turn/turns incl. turn:…:53)",
                                      ans["raw53"][1]["username"]),
                                     ("only53", "only turn:127.0.0.1:53 (udp, tcp)", ans["only53"][1]["username"])]:
                r = res.get(name) or {}
                sel = r.get("selected") or {}
                got = {"connected": connected(r) and messages(r), "relay_both_ends": relayed(r),
                       "connected_ms": r.get("connectedMs"), "gathered_ms": r.get("gatheredMs"),
                       "gathering_at_end": r.get("gathering"), "elapsed_ms": r.get("elapsedMs"),
                       "coturn_on_53_allocated": user in allocs53,
                       "selected_local": [(sel.get(s) or {}).get("local") for s in "ab"],
                       "error": r.get("error")}
                rec[name] = got
                say(f"relay {b} port 53, {what}: connected={got['connected']}, relay both ends={got['relay_both_ends']}, "
                    f"coturn on :53 allocated for it={got['coturn_on_53_allocated']}, "
                    f"gathering complete at {got['gathered_ms']} ms (at the end: {got['gathering_at_end']}), "
                    f"selected local {[(x or {}).get('url') or (x or {}).get('relayProtocol') for x in got['selected_local']]}")
            check(f"relay {b}: port-53 behaviour recorded", "raw53" in res and "only53" in res, "cases missing")
        else:
            say(f"relay {b} port 53: not recorded (127.0.0.1:53 is busy on this machine)")

        # List length: time from offer to both ends connected.
        full = [res[k]["connectedMs"] for k in sorted(res) if k.startswith("time-full-")]
        short = [res[k]["connectedMs"] for k in sorted(res) if k.startswith("time-short-")]
        check(f"relay {b}: every timed call connected ({len(full)} with 5 URIs, {len(short)} with 3)",
              full and short and None not in full + short, f"full {full}, short {short}")
        ok = [x for x in full if x is not None], [x for x in short if x is not None]
        rec["time_to_connected_ms"] = {
            "full_5_uris": {"all": full, "median": statistics.median(ok[0]) if ok[0] else None},
            "short_3_uris": {"all": short, "median": statistics.median(ok[1]) if ok[1] else None},
        }
        # Until ICE gathering completes (offerer side): what a client that
        # does not trickle candidates would wait for.
        gath = {k: [(res[n].get("gatheredMs") or {}).get("a") for n in sorted(res) if n.startswith(f"time-{k}-")]
                for k in ("full", "short")}
        med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None  # noqa: E731
        rec["time_to_gathering_complete_ms"] = {
            "full_5_uris": {"all": gath["full"], "median": med(gath["full"])},
            "short_3_uris": {"all": gath["short"], "median": med(gath["short"])},
        }
        # Every candidate gathered in every call, by type: with the relay
        # policy, only "relay" may appear.
        types = {}
        for r in res.values():
            for side in ("a", "b"):
                for c in (r.get("candidates") or {}).get(side, []):
                    m = re.search(r" typ (\w+)", c.get("candidate", ""))
                    if m:
                        types[m.group(1)] = types.get(m.group(1), 0) + 1
        rec["gathered_candidate_types"] = types
        check(f"relay {b}: only relay candidates were gathered (iceTransportPolicy relay)",
              types and set(types) == {"relay"}, f"types {types}")
        say(f"relay {b} time to connected on loopback (a floor), 5 URIs: median "
            f"{rec['time_to_connected_ms']['full_5_uris']['median']} ms {full}; 3 URIs (udp, tcp, tls): median "
            f"{rec['time_to_connected_ms']['short_3_uris']['median']} ms {short}; gathering complete, median "
            f"{rec['time_to_gathering_complete_ms']['full_5_uris']['median']} ms with 5, "
            f"{rec['time_to_gathering_complete_ms']['short_3_uris']['median']} ms with 3")
    dump(summary, os.path.join(R["dir"], "summary.json"))
    return 0


def main(argv):
    what, state = argv[0], load(argv[1])
    try:
        return {"plan": cmd_plan, "check": cmd_check}[what](state)
    except Exception as e:  # a crash is a failed check, never a silent stop
        import traceback
        check(f"relay {what} ran to the end", False, f"{type(e).__name__}: {e} {traceback.format_exc()[-600:]}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
