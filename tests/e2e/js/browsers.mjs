// What the browser drivers (relay_call.mjs, livekit_call.mjs,
// firewall_call.mjs, firewall_legacy.mjs) share: the launch of one system
// browser through puppeteer-core (Debian's Chromium over CDP, or its Firefox
// ESR over WebDriver BiDi; puppeteer-core downloads no browser: the plan
// names the executable), the loopback server of their page, and the line
// protocol through which the Python suites step them.

import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));

// PLAN: {"browser": "chromium"|"firefox", "executable", "profile", "home"};
// chromiumArgs: flags a driver needs on top of these.
function launchOptions(plan, chromiumArgs = []) {
    const common = {
        executablePath: plan.executable,
        headless: true,
        userDataDir: plan.profile, // Firefox's holds cert9.db with the test CA
        // HOME holds the NSS database (~/.pki/nssdb) with the test CA for Chromium.
        env: { ...process.env, HOME: plan.home },
    };
    if (plan.browser === "firefox") {
        return {
            ...common,
            browser: "firefox",
            protocol: "webDriverBiDi", // puppeteer's default for Firefox; said, not assumed
            extraPrefsFirefox: {
                // Lets Firefox use a TURN server on 127.0.0.1: for this loopback test only.
                "media.peerconnection.ice.loopback": true,
            },
        };
    }
    return {
        ...common,
        browser: "chrome",
        args: [
            "--no-sandbox", // runs as root in CI
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            ...chromiumArgs,
        ],
    };
}

// Launches the plan's browser, records its version in OUT and runs
// body(browser), then closes the browser. Returns the exit status: 0, or 1
// when body threw (OUT.error says what) or returned false.
export async function drive(plan, out, body, chromiumArgs = []) {
    let browser;
    let rc = 0;
    try {
        const options = launchOptions(plan, chromiumArgs);
        browser = await puppeteer.launch({ ...options, timeout: 60_000, protocolTimeout: 120_000 });
        out.version = await browser.version();
        if ((await body(browser)) === false) rc = 1;
    } catch (e) {
        out.error = String(e && e.stack ? e.stack : e);
        rc = 1;
    } finally {
        if (browser) await browser.close().catch(() => {});
    }
    return rc;
}

// livekit-client's UMD bundle, for servePage.
export const LIVEKIT_UMD = path.join("node_modules", "livekit-client", "dist", "livekit-client.umd.js");

// Serves one page from a loopback HTTP server of this process: SCRIPTS (paths
// under this directory) as its script tags, in that order. Returns the
// page's origin and the server.
export async function servePage(scripts) {
    const files = {
        "/": ["text/html", '<!doctype html><meta charset="utf-8"><title>e2e</title>' +
            scripts.map((s) => `<script src="/${path.basename(s)}"></script>`).join("")],
    };
    for (const s of scripts) files[`/${path.basename(s)}`] = ["text/javascript", fs.readFileSync(path.join(HERE, s))];
    const server = http.createServer((req, res) => {
        const f = files[req.url];
        if (!f) {
            res.writeHead(req.url === "/favicon.ico" ? 204 : 404).end();
            return;
        }
        res.writeHead(200, { "Content-Type": f[0], "Cache-Control": "no-store" }).end(f[1]);
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    return { origin: `http://127.0.0.1:${server.address().port}`, server };
}

// The line protocol: a word (and JSON) per line on stdout, the suite's
// answers on stdin.
let stdin = null;
export const say = (word, obj) => process.stdout.write(obj === undefined ? `${word}\n` : `${word} ${JSON.stringify(obj)}\n`);

// The next line on stdin, or null at its end.
export async function nextLine() {
    stdin ??= readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    const { value, done } = await stdin.next();
    return done ? null : value;
}

export async function expect(word) {
    const line = await nextLine();
    if (line === null || line.trim() !== word) {
        throw new Error(`expected "${word}" on stdin, got ${line === null ? "EOF" : JSON.stringify(line)}`);
    }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls fn() every 100 ms until it is true or timeoutMs passed; returns the
// milliseconds it took, or null.
export async function until(fn, timeoutMs) {
    const started = Date.now();
    while (Date.now() - started < timeoutMs) {
        if (await fn()) return Date.now() - started;
        await sleep(100);
    }
    return (await fn()) ? Date.now() - started : null;
}

// The first steps of a stepped driver (firewall_call.mjs, firewall_legacy.mjs):
// a new page of BROWSER on the served page, "ready" with the browser's
// version, then the suite's "go". Returns the page and its console lines
// (kept for the report, each cut to 300 characters).
export async function readyPage(browser, origin, version) {
    const page = await browser.newPage();
    const consoleLines = [];
    page.on("console", (m) => consoleLines.push(m.text().slice(0, 300)));
    await page.goto(origin + "/");
    say("ready", { version });
    await expect("go");
    return { page, consoleLines };
}

// The selected pairs of the page's window[API], once there is one and every
// one has succeeded (a pair can still be in progress a moment after
// connecting), or after timeoutMs.
export async function succeededPairs(page, api, timeoutMs) {
    let pairs = [];
    await until(async () => {
        pairs = await page.evaluate((a) => window[a].selectedPairs(), api);
        return pairs.length > 0 && pairs.every((p) => p.pair && p.pair.state === "succeeded");
    }, timeoutMs);
    return pairs;
}
