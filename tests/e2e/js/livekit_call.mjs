// Drives one system browser (Chromium over CDP, Firefox ESR over WebDriver
// BiDi) through puppeteer-core and makes the LiveKit calls a plan file lists;
// see tests/e2e/livekit.py. Each call is two pages of that browser, two
// participants of one room, each running livekit-client's UMD bundle
// (node_modules), js/pair_page.js, js/media_page.js and js/livekit_page.js,
// served from a loopback HTTP server of this process: getUserMedia-free, but
// a page of its own origin. js/browsers.mjs launches the browser and serves
// the page.
//
//   node livekit_call.mjs PLAN.json OUT.json
//
// Before each case it prints "ready NAME" and waits for a line on stdin, so
// that the caller can read the daemon's counters between calls; "end" after
// the last one.
//
// PLAN: {"browser": "chromium"|"firefox", "executable", "profile", "home",
//        "cases": [{"name", "url", "tokens": [a, b], "singlePeerConnection",
//                   "timeoutMs", "expectConnect", "resume"}]}
// OUT:  {"browser", "version", "livekitClient", "results": [{"name", ...}]}
// Exits 0 when every case ran (whatever its outcome), 1 otherwise.

import fs from "node:fs";
import { drive, LIVEKIT_UMD, nextLine, say, servePage, until } from "./browsers.mjs";

const [planFile, outFile] = process.argv.slice(2);
const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));

// The page scripts first: livekit_page.js wraps RTCPeerConnection before livekit-client loads.
const { origin, server } = await servePage(["pair_page.js", "media_page.js", "livekit_page.js", LIVEKIT_UMD]);

// Both pages send TAG until each has received the other's: returns the ms it took, or null.
async function exchange(pages, tag, timeoutMs) {
    await Promise.all(pages.map((p, i) => p.evaluate((t) => window.lk.startSending(t), `${tag} from ${"ab"[i]}`)));
    const ms = await until(async () => {
        const states = await Promise.all(pages.map((p) => p.evaluate(() => window.lk.state())));
        return states.every((s, i) => s.received.some((m) => m.text.startsWith(`${tag} from ${"ba"[i]}`)));
    }, timeoutMs);
    await Promise.all(pages.map((p) => p.evaluate(() => window.lk.stopSending())));
    return ms;
}

// Every live peer connection's selected pair, once each has succeeded (an
// ICE restart's new pair is "in-progress" for a moment) or after timeoutMs.
async function settledPairs(pages, timeoutMs) {
    let pairs = null;
    await until(async () => {
        pairs = await Promise.all(pages.map((p) => p.evaluate(() => window.lk.selectedPairs())));
        return pairs.every((ps) => ps.every((x) => x.pair && x.pair.state === "succeeded"));
    }, timeoutMs);
    return pairs;
}

async function runCase(browser, c) {
    const r = { name: c.name, joins: null, exchangeMs: null, videoMs: null, pairs: null, resume: null, console: [] };
    const pages = [];
    try {
        for (let i = 0; i < 2; i++) {
            const p = await browser.newPage();
            p.on("console", (m) => r.console.push(`${"ab"[i]}: ${m.text()}`.slice(0, 300)));
            await p.goto(origin + "/");
            pages.push(p);
        }
        const args = (i) => ({ url: c.url, token: c.tokens[i], singlePeerConnection: c.singlePeerConnection, timeoutMs: c.timeoutMs });
        r.joins = await Promise.all(pages.map((p, i) => p.evaluate((a) => window.lk.join(a), args(i))));
        if (r.joins.every((j) => j.connectedMs !== null)) {
            // Each sees the other's video track, then data goes both ways.
            r.videoMs = await until(async () => {
                const states = await Promise.all(pages.map((p) => p.evaluate(() => window.lk.state())));
                return states.every((s) => s.subscribed.some((t) => t.kind === "video"));
            }, c.timeoutMs);
            r.exchangeMs = await exchange(pages, "before", c.timeoutMs);
            r.pairs = await settledPairs(pages, c.timeoutMs);
            if (c.resume) {
                const res = { cut: null, exchangeMs: null, pairs: null };
                res.cut = await pages[0].evaluate((t) => window.lk.resume(t), c.timeoutMs);
                res.exchangeMs = await exchange(pages, "after resume", c.timeoutMs);
                res.pairs = await settledPairs(pages, c.timeoutMs);
                r.resume = res;
            }
        }
        r.states = await Promise.all(pages.map((p) => p.evaluate(() => window.lk.state())));
        r.events = await Promise.all(pages.map((p) => p.evaluate(() => window.lk.events())));
        await Promise.all(pages.map((p) => p.evaluate(() => window.lk.leave()).catch(() => {})));
    } catch (e) {
        r.error = String(e && e.stack ? e.stack : e);
    } finally {
        for (const p of pages) await p.close().catch(() => {});
    }
    return r;
}

const out = { browser: plan.browser, version: null, livekitClient: null, results: [] };
const chromiumArgs = [
    // Two pages of one call: a hidden one must not be throttled.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];
const rc = await drive(plan, out, async (browser) => {
    let ran = true;
    for (const c of plan.cases) {
        say(`ready ${c.name}`);
        await nextLine();
        const started = Date.now();
        const r = await runCase(browser, c);
        r.wallMs = Date.now() - started;
        out.livekitClient = out.livekitClient || (r.joins && r.joins[0] && r.joins[0].version);
        out.results.push(r);
        if (r.error) ran = false;
    }
    return ran;
}, chromiumArgs);
server.close();
say("end");
fs.writeFileSync(outFile, JSON.stringify(out, null, 1));
process.exit(rc);
