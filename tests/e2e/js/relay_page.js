// Runs inside the browser page (evaluated by relay_call.mjs): one call between
// two RTCPeerConnections of the same page, relay candidates only, signalled
// in the page. Returns what happened; the checks are made outside.
//
// The ICE configuration is built the way matrix-js-sdk maps a Matrix
// turnServer answer: one entry {urls: uris, username, credential: password}.
window.relayCall = async function relayCall({ iceServers, timeoutMs, gatherMs = 0 }) {
    const t0 = performance.now();
    const since = () => Math.round(performance.now() - t0);
    const config = { iceServers, iceTransportPolicy: "relay" };
    const out = {
        connectedMs: null, // both connectionState "connected"
        messagesMs: null, // both messages received
        gatheredMs: { a: null, b: null }, // iceGatheringState "complete"
        states: { a: [], b: [] },
        candidates: { a: [], b: [] },
        received: { a: null, b: null },
        error: null,
    };
    let a, b;
    try {
        a = new RTCPeerConnection(config);
        b = new RTCPeerConnection(config);
    } catch (e) {
        out.error = `RTCPeerConnection: ${e.name}: ${e.message}`;
        return out;
    }
    let settle;
    let gatherTimer = null;
    const done = new Promise((resolve) => (settle = resolve));
    const check = () => {
        if (out.connectedMs === null && a.connectionState === "connected" && b.connectionState === "connected") {
            out.connectedMs = since();
        }
        if (out.received.a !== null && out.received.b !== null && out.messagesMs === null) out.messagesMs = since();
        if (out.connectedMs !== null && out.messagesMs !== null) {
            // Optionally wait (at most gatherMs more) for ICE gathering to complete.
            const gathered = out.gatheredMs.a !== null && out.gatheredMs.b !== null;
            if (gathered || gatherMs <= 0) settle();
            else if (!gatherTimer) gatherTimer = setTimeout(settle, gatherMs);
        }
        if (a.connectionState === "failed" || b.connectionState === "failed") settle();
    };
    // Trickle ICE, holding candidates until the remote description is set.
    const held = { a: [], b: [] };
    const wire = (from, to, name, other) => {
        from.onicecandidate = (e) => {
            if (!e.candidate) return;
            out.candidates[name].push({ ms: since(), candidate: e.candidate.candidate, url: e.url || null });
            if (to.remoteDescription) to.addIceCandidate(e.candidate).catch(() => {});
            else held[other].push(e.candidate);
        };
        from.onicegatheringstatechange = () => {
            if (from.iceGatheringState === "complete" && out.gatheredMs[name] === null) {
                out.gatheredMs[name] = since();
                check();
            }
        };
        from.onconnectionstatechange = () => {
            out.states[name].push([since(), from.connectionState]);
            check();
        };
    };
    wire(a, b, "a", "b");
    wire(b, a, "b", "a");
    const flush = async (pc, name) => {
        for (const c of held[name].splice(0)) await pc.addIceCandidate(c).catch(() => {});
    };

    // A speaks first; B answers A's message. (B sending from inside
    // ondatachannel was occasionally lost in Chromium.)
    const chA = a.createDataChannel("e2e");
    chA.onopen = () => chA.send("hello from A");
    chA.onmessage = (e) => {
        out.received.a = String(e.data);
        check();
    };
    b.ondatachannel = (e) => {
        const chB = e.channel;
        chB.onmessage = (m) => {
            out.received.b = String(m.data);
            chB.send("hello from B");
            check();
        };
    };

    const timer = setTimeout(settle, timeoutMs);
    try {
        await a.setLocalDescription(await a.createOffer());
        await b.setRemoteDescription(a.localDescription);
        await flush(b, "b");
        await b.setLocalDescription(await b.createAnswer());
        await a.setRemoteDescription(b.localDescription);
        await flush(a, "a");
        await done;
    } catch (e) {
        out.error = `${e.name}: ${e.message}`;
    }
    clearTimeout(timer);
    clearTimeout(gatherTimer);
    out.elapsedMs = since();
    out.final = { a: a.connectionState, b: b.connectionState };
    out.gathering = { a: a.iceGatheringState, b: b.iceGatheringState };
    out.selected = { a: await selectedPair(a), b: await selectedPair(b) };
    a.close();
    b.close();
    return out;
};

// The candidate pair in use (pair_page.js).
async function selectedPair(pc) {
    try {
        return window.e2eSelectedPair(await pc.getStats());
    } catch (e) {
        return { error: String(e) };
    }
}
