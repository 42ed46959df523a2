// Runs inside the one page of js/firewall_call.mjs, before livekit-client's
// UMD bundle: one LiveKit participant of tests/e2e/firewall.py, with no ICE
// policy of its own (unlike livekit_page.js, which forces relay): the
// browser gathers every candidate type it can and ICE picks what works.
//
// RTCPeerConnection is wrapped to record the ICE servers each peer
// connection was given (URLs and username, never the credential) and every
// candidate gathered, so that the suite can tie the selected relay
// candidate to the daemon's entry and its username.
(() => {
    const t0 = performance.now();
    const since = () => Math.round(performance.now() - t0);
    const events = [];
    const pcs = [];
    const note = (what, extra) => events.push({ ms: since(), what, ...extra });
    const servers = (cfg) =>
        ((cfg && cfg.iceServers) || []).map((s) => ({ urls: [].concat(s.urls || []), username: s.username ?? null }));
    const Native = window.RTCPeerConnection;
    class RecordedPeerConnection extends Native {
        constructor(cfg, ...rest) {
            super(cfg, ...rest);
            this.e2eIndex = pcs.length;
            pcs.push(this);
            note("new RTCPeerConnection", {
                pc: this.e2eIndex,
                iceServers: servers(cfg),
                iceTransportPolicy: (cfg && cfg.iceTransportPolicy) || null,
            });
            this.addEventListener("icecandidate", (e) => {
                if (!e.candidate || !e.candidate.candidate) return;
                const m = / typ (\w+)/.exec(e.candidate.candidate);
                note("candidate", { pc: this.e2eIndex, type: m ? m[1] : null, url: e.url || null });
            });
            this.addEventListener("connectionstatechange", () =>
                note("connectionState", { pc: this.e2eIndex, state: this.connectionState }),
            );
        }
        setConfiguration(cfg) {
            note("setConfiguration", {
                pc: this.e2eIndex,
                iceServers: servers(cfg),
                iceTransportPolicy: (cfg && cfg.iceTransportPolicy) || null,
            });
            return super.setConfiguration(cfg);
        }
    }
    window.RTCPeerConnection = RecordedPeerConnection;

    let room = null;
    let started = null;
    let sender = null;
    const received = [];
    const subscribed = [];
    let firstVideoBytesMs = null;
    let firstFrameMs = null;

    // Time to first media: from connect() to the first inbound video bytes
    // and the first decoded frame of the other participant's track, read
    // from getStats every 50 ms (no event says "a frame arrived").
    async function watchMedia() {
        while (room && firstFrameMs === null) {
            for (const pc of pcs) {
                if (pc.connectionState === "closed") continue;
                let stats;
                try {
                    stats = await pc.getStats();
                } catch {
                    continue;
                }
                stats.forEach((s) => {
                    if (s.type !== "inbound-rtp" || s.kind !== "video") return;
                    const now = Math.round(performance.now() - started);
                    if (firstVideoBytesMs === null && s.bytesReceived > 0) firstVideoBytesMs = now;
                    if (firstFrameMs === null && s.framesDecoded > 0) firstFrameMs = now;
                });
            }
            await new Promise((r) => setTimeout(r, 50));
        }
    }

    async function join({ url, token, timeoutMs, identity }) {
        const LK = window.LivekitClient;
        started = performance.now();
        const out = { connectedMs: null, publishedMs: null, error: null, version: LK.version };
        room = new LK.Room();
        room.on(LK.RoomEvent.DataReceived, (payload, participant) => {
            received.push({ ms: since(), from: participant && participant.identity, text: new TextDecoder().decode(payload) });
        });
        room.on(LK.RoomEvent.TrackSubscribed, (track, pub, participant) => {
            subscribed.push({ ms: Math.round(performance.now() - started), kind: track.kind, from: participant.identity });
        });
        note("connect called");
        watchMedia();
        try {
            // No rtcConfig: livekit-client takes the server's ICE servers and the default policy ("all").
            await room.connect(url, token, { maxRetries: 0, peerConnectionTimeout: timeoutMs, websocketTimeout: timeoutMs });
            out.connectedMs = Math.round(performance.now() - started);
            note("connected");
            await room.localParticipant.publishTrack(window.e2eCanvasTrack(), { name: "e2e-canvas", simulcast: false });
            out.publishedMs = Math.round(performance.now() - started);
            let n = 0;
            const send = () =>
                room.localParticipant
                    .publishData(new TextEncoder().encode(`data from ${identity} #${n++}`), { reliable: true })
                    .catch((e) => note("publishData failed", { error: String(e) }));
            send();
            sender = setInterval(send, 300);
        } catch (e) {
            out.error = `${e && e.name}: ${e && e.message}`;
            note("connect failed", { error: out.error });
        }
        return out;
    }

    async function selectedPairs() {
        const out = [];
        for (const pc of pcs) {
            if (pc.connectionState === "closed") continue;
            let stats;
            try {
                stats = await pc.getStats();
            } catch (e) {
                out.push({ pc: pc.e2eIndex, error: String(e) });
                continue;
            }
            out.push({
                pc: pc.e2eIndex,
                connectionState: pc.connectionState,
                iceServers: servers(pc.getConfiguration()),
                iceTransportPolicy: pc.getConfiguration().iceTransportPolicy || null,
                localCandidates: window.e2eLocalCandidates(stats),
                pair: window.e2eSelectedPair(stats),
            });
        }
        return out;
    }

    window.fw = {
        join,
        selectedPairs,
        state: () => ({
            received: received.slice(),
            subscribed: subscribed.slice(),
            firstVideoBytesMs,
            firstFrameMs,
            remotes: room ? [...room.remoteParticipants.values()].map((p) => p.identity) : [],
        }),
        events: () => events.slice(),
        leave: async () => {
            if (sender) clearInterval(sender);
            sender = null;
            const r = room;
            room = null;
            if (r) await r.disconnect();
        },
    };
})();
