// The launch of one system browser through puppeteer-core, shared by
// relay_call.mjs and livekit_call.mjs: Debian's Chromium over CDP, or its
// Firefox ESR over WebDriver BiDi. puppeteer-core downloads no browser: the
// plan names the executable.

import puppeteer from "puppeteer-core";

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
