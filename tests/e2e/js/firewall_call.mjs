// One participant of a tests/e2e/firewall.py call: one system browser
// (js/browsers.mjs), one page (js/pair_page.js, js/media_page.js,
// js/firewall_page.js, then livekit-client's UMD bundle) served from a
// loopback HTTP server of this process. firewall.py runs one of these in
// each participant's network namespace and steps them through a line
// protocol (js/browsers.mjs), so that the other participant is in the room
// and publishing before the timed one joins.
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
import { drive, expect, LIVEKIT_UMD, readyPage, say, servePage, succeededPairs, until } from "./browsers.mjs";

const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { origin, server } = await servePage(["pair_page.js", "media_page.js", "firewall_page.js", LIVEKIT_UMD]);

const chromiumArgs = [
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    // Names without DNS (the restricted namespace has none): the same map as its /etc/hosts.
    ...(plan.hostRules ? [`--host-resolver-rules=${plan.hostRules}`] : []),
];
const out = { browser: plan.browser, version: null };
const rc = await drive(plan, out, async (browser) => {
    const { page, consoleLines } = await readyPage(browser, origin, out.version);
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
    const pairs = await succeededPairs(page, "fw", joined.connectedMs !== null ? plan.timeoutMs : 0);
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
