// One participant of a tests/e2e/firewall.py call: one system browser
// (js/browsers.mjs), one page (js/pair_page.js, js/firewall_page.js, then
// livekit-client's UMD bundle) served from a loopback HTTP server of this
// process. firewall.py runs one of these in each participant's network
// namespace and steps them through a line protocol, so that the other
// participant is in the room and publishing before the timed one joins.
//
//   node firewall_call.mjs PLAN.json
//
// PLAN: {"browser", "executable", "profile", "home", "hostRules",
//        "url", "token", "identity", "peer", "timeoutMs"}
// stdout: "ready" once the page is loaded; "joined JSON" after connect and
// publish (or the error); "media JSON" once the peer's video frames and data
// arrived (or after timeoutMs); "report JSON" (selected pairs, events, state);
// "end". stdin: "go" (join), "report", "leave".

import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { drive } from "./browsers.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));

const FILES = {
    "/": ["text/html", '<!doctype html><meta charset="utf-8"><title>e2e</title>' +
        '<script src="/pair_page.js"></script><script src="/firewall_page.js"></script>' +
        '<script src="/livekit-client.umd.js"></script>'],
    "/pair_page.js": ["text/javascript", fs.readFileSync(path.join(HERE, "pair_page.js"))],
    "/firewall_page.js": ["text/javascript", fs.readFileSync(path.join(HERE, "firewall_page.js"))],
    "/livekit-client.umd.js": ["text/javascript",
        fs.readFileSync(path.join(HERE, "node_modules", "livekit-client", "dist", "livekit-client.umd.js"))],
};
const server = http.createServer((req, res) => {
    const f = FILES[req.url];
    if (!f) {
        res.writeHead(req.url === "/favicon.ico" ? 204 : 404).end();
        return;
    }
    res.writeHead(200, { "Content-Type": f[0], "Cache-Control": "no-store" }).end(f[1]);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const stdin = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (word, obj) => process.stdout.write(obj === undefined ? `${word}\n` : `${word} ${JSON.stringify(obj)}\n`);
async function expect(word) {
    const { value, done } = await stdin.next();
    if (done || value.trim() !== word) throw new Error(`expected "${word}" on stdin, got ${done ? "EOF" : JSON.stringify(value)}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(fn, timeoutMs) {
    const started = Date.now();
    while (Date.now() - started < timeoutMs) {
        if (await fn()) return Date.now() - started;
        await sleep(100);
    }
    return (await fn()) ? Date.now() - started : null;
}

const chromiumArgs = [
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    // Names without DNS (the restricted namespace has none): the same map as its /etc/hosts.
    ...(plan.hostRules ? [`--host-resolver-rules=${plan.hostRules}`] : []),
];
const out = { browser: plan.browser, version: null };
const rc = await drive(plan, out, async (browser) => {
    const page = await browser.newPage();
    const consoleLines = [];
    page.on("console", (m) => consoleLines.push(m.text().slice(0, 300)));
    await page.goto(origin + "/");
    say("ready", { version: out.version });
    await expect("go");
    const joined = await page.evaluate((a) => window.fw.join(a), {
        url: plan.url, token: plan.token, timeoutMs: plan.timeoutMs, identity: plan.identity,
    });
    say("joined", joined);
    if (joined.connectedMs !== null) {
        // The peer's video decoded and its data received, or the bound passed.
        const waited = await until(async () => {
            const s = await page.evaluate(() => window.fw.state());
            return s.firstFrameMs !== null && s.received.some((m) => m.from === plan.peer);
        }, plan.timeoutMs);
        say("media", { waitedMs: waited, ...(await page.evaluate(() => window.fw.state())) });
    }
    await expect("report");
    // A pair can still be in progress a moment after connecting: wait for it to succeed (bounded).
    let pairs = [];
    await until(async () => {
        pairs = await page.evaluate(() => window.fw.selectedPairs());
        return pairs.length > 0 && pairs.every((p) => p.pair && p.pair.state === "succeeded");
    }, joined.connectedMs !== null ? plan.timeoutMs : 0);
    say("report", {
        pairs,
        state: await page.evaluate(() => window.fw.state()),
        events: await page.evaluate(() => window.fw.events()),
        console: consoleLines.slice(-20),
    });
    await expect("leave");
    await page.evaluate(() => window.fw.leave()).catch(() => {});
    return true;
}, chromiumArgs);
server.close();
if (out.error) say("error", { error: out.error });
say("end");
process.exit(rc);
