// Drives one system browser (Chromium over CDP, Firefox ESR over WebDriver
// BiDi) through puppeteer-core and makes the calls a plan file lists; see
// tests/e2e/relay.sh. puppeteer-core downloads no browser: the plan names the
// executable.
//
//   node relay_call.mjs PLAN.json OUT.json
//
// PLAN: {"browser": "chromium"|"firefox", "executable": path, "profile": dir,
//        "home": dir, "cases": [{"name", "iceServers", "timeoutMs"}, ...]}
// OUT:  {"browser", "version", "console": [...], "results": [{"name", ...relayCall() result}]}
// Exits 0 when every case ran (whatever its outcome), 1 otherwise.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { drive } from "./browsers.mjs";

const [planFile, outFile] = process.argv.slice(2);
const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));
const HERE = path.dirname(fileURLToPath(import.meta.url));
const pageScripts = ["pair_page.js", "relay_page.js"].map((f) => fs.readFileSync(path.join(HERE, f), "utf8"));

const out = { browser: plan.browser, version: null, results: [] };
const rc = await drive(plan, out, async (browser) => {
    const page = await browser.newPage();
    // Firefox reports "five or more STUN/TURN servers" on the page's console.
    out.console = [];
    page.on("console", (m) => out.console.push(m.text()));
    await page.goto("about:blank");
    for (const script of pageScripts) await page.evaluate(script);
    for (const c of plan.cases) {
        const started = Date.now();
        const r = await page.evaluate((arg) => window.relayCall(arg), {
            iceServers: c.iceServers,
            timeoutMs: c.timeoutMs,
            gatherMs: c.gatherMs || 0,
        });
        out.results.push({ name: c.name, wallMs: Date.now() - started, ...r });
    }
});
fs.writeFileSync(outFile, JSON.stringify(out, null, 1));
process.exit(rc);
