// matrix-js-sdk's own TURN logic against matrix-turnify (or, to validate this
// harness, against Synapse directly).
//
//   node turn_check.mjs STATE.json
//
// STATE.json (written by tests/e2e/run.sh) has a "js" object:
//   base_url     where the client talks to (nginx in front of the daemon, or the daemon)
//   direct_url   where this script fetches the same endpoint itself, for comparison
//   user_id, token_ok         a user whose call must yield Cloudflare credentials
//   token_fail                a fresh token of the same user (no credential minted yet)
//   fake_url     origin of the fake Cloudflare (POST /__fake/behaviour); absent: skip
//                the failing-Cloudflare scenario
//   expect_empty_fallback     true when the daemon's Synapse has no TURN (fallback = {})
//   guest: {base_url, user_id, token}   a guest refused by Synapse (turn_allow_guests: false)
//   prefix       name prefix for the printed checks
//
// Prints one "PASS  NAME" / "FAIL  NAME" line per check on stdout, details
// indented below a FAIL: the format of tests/e2e/lib/report.py, whose
// `collect` counts them.
// The library's own log goes to $E2E_JS_LOG (or is dropped).

import fs from "node:fs";

const state = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const cfg = state.js;
const prefix = cfg.prefix ?? "js";

// --- keep the library's console output out of our result lines -------------
const logPath = process.env.E2E_JS_LOG;
const logFd = logPath ? fs.openSync(logPath, "a") : null;
const out = (line) => process.stdout.write(line + "\n");
for (const m of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[m] = (...args) => {
        if (logFd === null) return;
        const text = args
            .map((a) => (a instanceof Error ? a.stack : typeof a === "string" ? a : safeJson(a)))
            .join(" ");
        fs.writeSync(logFd, `${new Date().toISOString()} ${m} ${text}\n`);
    };
}
function safeJson(v) {
    try {
        return JSON.stringify(v);
    } catch {
        return String(v);
    }
}

// --- make the library believe WebRTC exists ----------------------------------
// MatrixClient only polls TURN when supportsMatrixCall() is true, which looks
// for window/document and window.RTCPeerConnection. Node has none of those; a
// bare stub is enough: nothing here ever opens a peer connection.
globalThis.window ??= { RTCPeerConnection: function RTCPeerConnection() {} };
globalThis.document ??= {};

const sdk = await import("matrix-js-sdk");

let failed = 0;
function check(name, cond, details) {
    if (cond) {
        out(`PASS  ${prefix}: ${name}`);
    } else {
        failed++;
        const text = String(typeof details === "function" ? details() : details);
        out(`FAIL  ${prefix}: ${name}\n${text.split("\n").map((l) => `      ${l}`).join("\n")}`);
    }
    return cond;
}

async function directTurn(base, token) {
    const res = await fetch(`${base}/_matrix/client/v3/voip/turnServer`, {
        headers: { Authorization: `Bearer ${token}` },
    });
    const text = await res.text();
    let body;
    try {
        body = JSON.parse(text);
    } catch {
        body = { unparsable: text };
    }
    return { status: res.status, body };
}

async function fake(behaviour) {
    const res = await fetch(`${cfg.fake_url}/__fake/behaviour`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(behaviour),
    });
    await res.text();
    if (!res.ok) throw new Error(`fake behaviour ${JSON.stringify(behaviour)}: HTTP ${res.status}`);
}

function newClient(baseUrl, userId, accessToken) {
    const client = sdk.createClient({ baseUrl, userId, accessToken });
    // What startClient() does for TURN, without starting a sync loop: poll
    // every 10 minutes. pollingTurnServers is true while this interval is
    // installed; the library clears it for good on a 403.
    client.checkTurnServersIntervalID = setInterval(() => client.checkTurnServers(), 10 * 60 * 1000);
    const errors = [];
    client.on(sdk.ClientEvent.TurnServersError, (err, fatal) => errors.push({ err, fatal }));
    return { client, errors };
}

function stop(client) {
    // stopClient() returns early for a client that was never started, so
    // clear our polling interval ourselves (the library's own field).
    clearInterval(client.checkTurnServersIntervalID);
    client.checkTurnServersIntervalID = undefined;
    client.stopClient();
}

const show = (v) => JSON.stringify(v);

// --- 1. a user gets credentials through the library ---------------------------
{
    const direct = await directTurn(cfg.direct_url, cfg.token_ok);
    check(
        "direct turnServer answer for the test user is 200 with uris",
        direct.status === 200 && Array.isArray(direct.body.uris) && direct.body.uris.length > 0,
        () => `got ${direct.status} ${show(direct.body)}`,
    );
    const tDirect = Date.now();
    const { client, errors } = newClient(cfg.base_url, cfg.user_id, cfg.token_ok);
    check("library supports VoIP (TURN polling enabled)", client.supportsVoip() && client.pollingTurnServers, "canSupportVoip false");
    const good = await client.checkTurnServers();
    const servers = client.getTurnServers();
    check("checkTurnServers() returns true", good === true, () => `returned ${good}; errors ${errors.map((e) => e.err?.message)}`);
    check(
        "getTurnServers() is one entry {urls, username, credential}",
        Array.isArray(servers) &&
            servers.length === 1 &&
            show(Object.keys(servers[0]).sort()) === show(["credential", "urls", "username"]),
        () => `got ${show(servers)}`,
    );
    const s = servers[0] ?? {};
    check("library urls equal the direct answer's uris", show(s.urls) === show(direct.body.uris), () => `library ${show(s.urls)} vs direct ${show(direct.body.uris)}`);
    const reused = s.username === direct.body.username && s.credential === direct.body.password;
    check(
        reused ? "library credential equals the direct one (reused)" : "library credential has the same shape as the direct one",
        typeof s.username === "string" && s.username.length > 0 && typeof s.credential === "string" && s.credential.length > 0,
        () => `got ${show(s)}`,
    );
    const expiry = client.getTurnServersExpiry();
    const want = tDirect + direct.body.ttl * 1000;
    check(
        "getTurnServersExpiry() is now + ttl (within 5 s)",
        Number.isFinite(expiry) && Math.abs(expiry - want) <= 5000,
        () => `expiry ${expiry}, expected ${want} (ttl ${direct.body.ttl}), diff ${expiry - want} ms`,
    );
    check("no TurnServersError", errors.length === 0, () => errors.map((e) => `${e.fatal ? "fatal" : "non-fatal"} ${e.err?.httpStatus} ${e.err?.message}`).join("; "));
    // Fresh credentials are good for > 10 min, so the library does not refetch.
    const again = await client.checkTurnServers();
    check("second checkTurnServers() keeps the credentials without refetching", again === true && show(client.getTurnServers()) === show(servers), () => `returned ${again}`);
    stop(client);
}

// --- 2. Cloudflare failing: the library does not give up ---------------------
if (cfg.fake_url) {
    await fake({ fail_status: 503 });
    let client;
    try {
        const c = newClient(cfg.base_url, cfg.user_id, cfg.token_fail);
        client = c.client;
        const { errors } = c;
        const good = await client.checkTurnServers();
        const fatal = errors.filter((e) => e.fatal);
        check(
            "Cloudflare failing: checkTurnServers() returns false, stores nothing",
            good === false && client.getTurnServers().length === 0 && client.getTurnServersExpiry() === 0,
            () => `returned ${good}, servers ${show(client.getTurnServers())}, expiry ${client.getTurnServersExpiry()}`,
        );
        if (cfg.expect_empty_fallback) {
            check("Cloudflare failing: no TurnServersError (fallback answer is a 200 {})", errors.length === 0, () => errors.map((e) => `${e.err?.httpStatus} ${e.err?.message}`).join("; "));
        }
        check("Cloudflare failing: TURN polling not disabled", client.pollingTurnServers && fatal.length === 0, () => `pollingTurnServers ${client.pollingTurnServers}, fatal errors ${fatal.map((e) => e.err?.message)}`);
    } finally {
        await fake({ ok: true, latency_ms: 0 });
    }
    const good = await client.checkTurnServers();
    const servers = client.getTurnServers();
    check(
        "Cloudflare recovered: the next checkTurnServers() gets credentials",
        good === true && servers.length === 1 && Array.isArray(servers[0].urls) && servers[0].urls.length > 0,
        () => `returned ${good}, servers ${show(servers)}`,
    );
    stop(client);
}

// --- 3. guest refused: the library stops polling ------------------------------
if (cfg.guest) {
    const g = cfg.guest;
    const { client, errors } = newClient(g.base_url, g.user_id, g.token);
    const good = await client.checkTurnServers();
    const fatal = errors.filter((e) => e.fatal);
    check(
        "guest refused (403): library reports a fatal TurnServersError and stops polling",
        good === false && fatal.length === 1 && fatal[0].err?.httpStatus === 403 && fatal[0].err?.errcode === "M_GUEST_ACCESS_FORBIDDEN" && !client.pollingTurnServers,
        () => `returned ${good}, errors ${errors.map((e) => `${e.fatal} ${e.err?.httpStatus} ${e.err?.errcode}`)}, polling ${client.pollingTurnServers}`,
    );
    stop(client);
}

// Nothing of ours should keep the event loop alive; exit explicitly anyway so
// that a stray library timer cannot hold the run.
process.exit(failed === 0 ? 0 : 1);
