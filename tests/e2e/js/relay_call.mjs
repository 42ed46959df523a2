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
import puppeteer from "puppeteer-core";

const [planFile, outFile] = process.argv.slice(2);
const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));
const pageScript = fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), "relay_page.js"), "utf8");

function launchOptions() {
    // HOME holds the NSS database (~/.pki/nssdb) with the test CA for Chromium.
    const env = { ...process.env, HOME: plan.home };
    if (plan.browser === "firefox") {
        return {
            browser: "firefox",
            protocol: "webDriverBiDi", // puppeteer's default for Firefox; said, not assumed
            executablePath: plan.executable,
            headless: true,
            userDataDir: plan.profile, // holds cert9.db with the test CA
            env,
            extraPrefsFirefox: {
                // Lets Firefox use a TURN server on 127.0.0.1: for this loopback test only.
                "media.peerconnection.ice.loopback": true,
            },
        };
    }
    return {
        browser: "chrome",
        executablePath: plan.executable,
        headless: true,
        userDataDir: plan.profile,
        env,
        args: [
            "--no-sandbox", // runs as root in CI
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    };
}

const out = { browser: plan.browser, version: null, results: [] };
let browser;
let rc = 0;
try {
    browser = await puppeteer.launch({ ...launchOptions(), timeout: 60_000, protocolTimeout: 120_000 });
    out.version = await browser.version();
    const page = await browser.newPage();
    // Firefox reports "five or more STUN/TURN servers" on the page's console.
    out.console = [];
    page.on("console", (m) => out.console.push(m.text()));
    await page.goto("about:blank");
    await page.evaluate(pageScript);
    for (const c of plan.cases) {
        const started = Date.now();
        const r = await page.evaluate((arg) => window.relayCall(arg), {
            iceServers: c.iceServers,
            timeoutMs: c.timeoutMs,
            gatherMs: c.gatherMs || 0,
        });
        out.results.push({ name: c.name, wallMs: Date.now() - started, ...r });
    }
} catch (e) {
    out.error = String(e && e.stack ? e.stack : e);
    rc = 1;
} finally {
    if (browser) await browser.close().catch(() => {});
}
fs.writeFileSync(outFile, JSON.stringify(out, null, 1));
process.exit(rc);
