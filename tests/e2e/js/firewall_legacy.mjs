// One end of a legacy 1:1 Matrix call of tests/e2e/firewall.py, run in that
// participant's network namespace: matrix-js-sdk logs the user in through
// the HTTPS ingress and asks turnServer (checkTurnServers), and its
// getTurnServers() list goes to the page (js/firewall_legacy_page.js) as
// the peer connection's ICE servers. The offer, answer and candidates are
// m.call.invite / m.call.answer / m.call.candidates events of a room both
// users are in, sent with matrix-js-sdk and read back from /messages. The
// same line protocol as js/firewall_call.mjs; node trusts the run's CA
// through NODE_EXTRA_CA_CERTS.
//
//   node firewall_legacy.mjs PLAN.json
//
// PLAN: {"browser", "executable", "profile", "home", "hostRules", "baseUrl",
//        "user", "password", "roomId", "callId", "caller", "identity", "peer",
//        "timeoutMs"}

import fs from "node:fs";
import { drive, expect, readyPage, say, servePage, sleep, succeededPairs, until } from "./browsers.mjs";

// MatrixClient asks turnServer only when it believes WebRTC exists (as in turn_check.mjs).
globalThis.window ??= { RTCPeerConnection: function RTCPeerConnection() {} };
globalThis.document ??= {};
const sdk = await import("matrix-js-sdk");

const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { origin, server } = await servePage(["pair_page.js", "media_page.js", "firewall_legacy_page.js"]);

const partyId = `${plan.identity}-party`;
let client = null;
let signalling = true;

// Polls the room for the other end's m.call.* events of this call and hands them to the page.
async function readSignals(page) {
    const seen = new Set();
    let answered = false;
    while (signalling) {
        let chunk = [];
        try {
            const res = await client.createMessagesRequest(plan.roomId, null, 100, sdk.Direction.Backward);
            chunk = (res.chunk || []).reverse();
        } catch (e) {
            await sleep(500);
            continue;
        }
        for (const ev of chunk) {
            if (seen.has(ev.event_id) || ev.sender === client.getUserId()) continue;
            seen.add(ev.event_id);
            const c = ev.content || {};
            if (c.call_id !== plan.callId) continue;
            if (ev.type === "m.call.answer" && plan.caller && !answered) {
                answered = true;
                await page.evaluate((d) => window.leg.remote(d), c.answer);
            } else if (ev.type === "m.call.candidates") {
                await page.evaluate((l) => window.leg.candidates(l), c.candidates);
            } else if (ev.type === "m.call.invite" && !plan.caller && !answered) {
                answered = true;
                const answer = await page.evaluate((a) => window.leg.start(a), {
                    iceServers: plan.iceServers, identity: plan.identity, offer: c.offer,
                });
                await client.sendEvent(plan.roomId, "m.call.answer", {
                    call_id: plan.callId, party_id: partyId, version: "1", answer,
                });
            }
        }
        await sleep(250);
    }
}

// Sends the page's gathered candidates every 250 ms as m.call.candidates.
async function sendCandidates(page) {
    while (signalling) {
        const list = await page.evaluate(() => window.leg.takeOutbox()).catch(() => []);
        if (list.length) {
            await client.sendEvent(plan.roomId, "m.call.candidates", {
                call_id: plan.callId, party_id: partyId, version: "1", candidates: list,
            }).catch(() => {});
        }
        await sleep(250);
    }
}

const chromiumArgs = [
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    ...(plan.hostRules ? [`--host-resolver-rules=${plan.hostRules}`] : []),
    // No camera: the canvas track plays without a user gesture.
    "--autoplay-policy=no-user-gesture-required",
];
const out = { browser: plan.browser, version: null };
const rc = await drive(plan, out, async (browser) => {
    const { page, consoleLines } = await readyPage(browser, origin, out.version);
    const joined = { connectedMs: null, error: null, loginMs: null, turnMs: null, turn: null };
    const t0 = Date.now();
    try {
        const anon = sdk.createClient({ baseUrl: plan.baseUrl });
        const login = await anon.loginRequest({
            type: "m.login.password", identifier: { type: "m.id.user", user: plan.user }, password: plan.password,
        });
        joined.loginMs = Date.now() - t0;
        client = sdk.createClient({ baseUrl: plan.baseUrl, userId: login.user_id, accessToken: login.access_token });
        const ok = await client.checkTurnServers();
        plan.iceServers = client.getTurnServers();
        joined.turnMs = Date.now() - t0;
        joined.turn = { ok, servers: plan.iceServers.map((s) => ({ urls: s.urls, username: s.username ?? null })) };
        readSignals(page);
        sendCandidates(page);
        if (plan.caller) {
            const offer = await page.evaluate((a) => window.leg.start(a), {
                iceServers: plan.iceServers, identity: plan.identity,
            });
            await client.sendEvent(plan.roomId, "m.call.invite", {
                call_id: plan.callId, party_id: partyId, version: "1", lifetime: 60000, offer,
            });
            await until(async () => (await page.evaluate(() => window.leg.state())).connectedMs !== null, plan.timeoutMs);
            joined.connectedMs = (await page.evaluate(() => window.leg.state())).connectedMs;
            if (joined.connectedMs === null) joined.error = `not connected within ${plan.timeoutMs} ms`;
        } else {
            // The callee is ready once it can answer: its connection comes with the caller's.
            joined.connectedMs = 0;
        }
    } catch (e) {
        joined.error = String(e && e.message ? e.message : e);
    }
    say("joined", joined);
    if (!joined.error) {
        const waited = await until(async () => {
            const s = await page.evaluate(() => window.leg.state());
            return s.firstFrameMs !== null && s.received.some((m) => m.text.startsWith(`data from ${plan.peer}`));
        }, plan.timeoutMs * (plan.caller ? 1 : 2));
        say("media", { waitedMs: waited, ...(await page.evaluate(() => window.leg.state())) });
    }
    await expect("report");
    const pairs = await succeededPairs(page, "leg", joined.error ? 0 : plan.timeoutMs);
    say("report", { pairs, turn: joined.turn, events: await page.evaluate(() => window.leg.events()), console: consoleLines.slice(-20) });
    await expect("leave");
    signalling = false;
    await page.evaluate(() => window.leg.leave()).catch(() => {});
    return true;
}, chromiumArgs);
server.close();
if (client) client.stopClient();
if (out.error) say("error", { error: out.error });
say("end");
process.exit(rc);
