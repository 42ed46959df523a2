// Runs inside the page of js/firewall_legacy.mjs: one end of a legacy 1:1
// Matrix call of tests/e2e/firewall.py. The ICE servers are what
// matrix-js-sdk made of the homeserver's turnServer answer (the driver passes
// them in), with no ICE policy of the page's own; the offer, answer and
// candidates travel as m.call.* room events, sent and read by the driver.
// Each end sends a canvas video track and data-channel messages.
(() => {
    let pc = null;
    let dc = null;
    let started = null;
    let sender = null;
    let remoteSet = false;
    const pending = [];
    const outbox = [];
    const received = [];
    const events = [];
    let connectedMs = null;
    let firstVideoBytesMs = null;
    let firstFrameMs = null;
    const since = () => Math.round(performance.now() - started);
    const note = (what, extra) => events.push({ ms: since(), what, ...extra });

    function useChannel(channel, identity) {
        dc = channel;
        dc.onmessage = (e) => received.push({ ms: since(), text: String(e.data) });
        dc.onopen = () => {
            let n = 0;
            sender = setInterval(() => dc.readyState === "open" && dc.send(`data from ${identity} #${n++}`), 300);
        };
    }

    async function watchMedia() {
        while (pc && firstFrameMs === null) {
            try {
                const stats = await pc.getStats();
                stats.forEach((s) => {
                    if (s.type !== "inbound-rtp" || s.kind !== "video") return;
                    if (firstVideoBytesMs === null && s.bytesReceived > 0) firstVideoBytesMs = since();
                    if (firstFrameMs === null && s.framesDecoded > 0) firstFrameMs = since();
                });
            } catch {
                // closed meanwhile
            }
            await new Promise((r) => setTimeout(r, 50));
        }
    }

    // The caller's start returns its offer; the callee's (with the offer) its answer.
    async function start({ iceServers, identity, offer }) {
        started = performance.now();
        pc = new RTCPeerConnection({ iceServers });
        note("new RTCPeerConnection", { iceTransportPolicy: pc.getConfiguration().iceTransportPolicy });
        pc.onicecandidate = (e) => {
            if (!e.candidate || !e.candidate.candidate) return;
            const m = / typ (\w+)/.exec(e.candidate.candidate);
            note("candidate", { type: m ? m[1] : null });
            outbox.push({ candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid, sdpMLineIndex: e.candidate.sdpMLineIndex });
        };
        pc.onconnectionstatechange = () => {
            note("connectionState", { state: pc.connectionState });
            if (pc.connectionState === "connected" && connectedMs === null) connectedMs = since();
        };
        pc.ontrack = (e) => {
            const v = document.createElement("video");
            v.muted = true;
            v.autoplay = true;
            v.srcObject = new MediaStream([e.track]);
            document.body.appendChild(v);
        };
        pc.addTrack(window.e2eCanvasTrack());
        watchMedia();
        if (!offer) {
            useChannel(pc.createDataChannel("e2e"), identity);
            await pc.setLocalDescription(await pc.createOffer());
            return { type: pc.localDescription.type, sdp: pc.localDescription.sdp };
        }
        pc.ondatachannel = (e) => useChannel(e.channel, identity);
        await remote(offer);
        await pc.setLocalDescription(await pc.createAnswer());
        return { type: pc.localDescription.type, sdp: pc.localDescription.sdp };
    }

    async function remote(desc) {
        await pc.setRemoteDescription(desc);
        remoteSet = true;
        for (const c of pending.splice(0)) await pc.addIceCandidate(c).catch((e) => note("addIceCandidate", { error: String(e) }));
    }

    async function candidates(list) {
        for (const c of list) {
            if (!remoteSet) pending.push(c);
            else await pc.addIceCandidate(c).catch((e) => note("addIceCandidate", { error: String(e) }));
        }
    }

    async function selectedPairs() {
        if (!pc) return [];
        const stats = await pc.getStats();
        const cfg = pc.getConfiguration();
        return [{
            pc: 0,
            connectionState: pc.connectionState,
            iceServers: (cfg.iceServers || []).map((s) => ({ urls: [].concat(s.urls || []), username: s.username ?? null })),
            iceTransportPolicy: cfg.iceTransportPolicy || null,
            localCandidates: window.e2eLocalCandidates(stats),
            pair: window.e2eSelectedPair(stats),
        }];
    }

    window.leg = {
        start,
        remote,
        candidates,
        selectedPairs,
        takeOutbox: () => outbox.splice(0),
        state: () => ({ connectedMs, firstVideoBytesMs, firstFrameMs, received: received.slice(), connectionState: pc && pc.connectionState }),
        events: () => events.slice(),
        leave: () => {
            if (sender) clearInterval(sender);
            if (pc) pc.close();
            pc = null;
        },
    };
})();
