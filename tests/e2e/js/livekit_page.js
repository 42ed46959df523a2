// Runs inside each browser page of js/livekit_call.mjs, before livekit-client's
// UMD bundle: one LiveKit participant, driven from Node through window.lk.
// What happens is recorded here; the checks are made in tests/e2e/livekit.py.
//
// RTCPeerConnection is wrapped so that the page sees what livekit-client
// does with it: each construction, setConfiguration and setLocalDescription,
// with the ICE servers of the moment and the time, and every candidate
// gathered. That timeline is how the run shows when the server's ICE
// servers reach the peer connection (before or after gathering starts).
(() => {
    const t0 = performance.now();
    const since = () => Math.round(performance.now() - t0);
    const events = [];
    const pcs = [];
    const note = (what, extra) => events.push({ ms: since(), what, ...extra });
    // Only what the checks need from an RTCIceServer; credentials stay in the page's memory.
    const servers = (cfg) =>
        ((cfg && cfg.iceServers) || []).map((s) => ({
            urls: [].concat(s.urls || []),
            username: s.username ?? null,
        }));
    const Native = window.RTCPeerConnection;
    class RecordedPeerConnection extends Native {
        constructor(cfg, ...rest) {
            super(cfg, ...rest);
            this.e2eIndex = pcs.length;
            pcs.push(this);
            note("new RTCPeerConnection", {
                pc: this.e2eIndex,
                iceServers: servers(cfg),
                iceTransportPolicy: cfg && cfg.iceTransportPolicy,
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
            note("setConfiguration", { pc: this.e2eIndex, iceServers: servers(cfg) });
            return super.setConfiguration(cfg);
        }
        setLocalDescription(...args) {
            note("setLocalDescription", { pc: this.e2eIndex, type: args[0] && args[0].type });
            return super.setLocalDescription(...args);
        }
    }
    window.RTCPeerConnection = RecordedPeerConnection;

    let room = null;
    const received = [];
    const subscribed = [];
    let sender = null;

    async function join({ url, token, singlePeerConnection, timeoutMs }) {
        const LK = window.LivekitClient;
        const started = performance.now();
        const out = { connectedMs: null, error: null, publishedMs: null, version: LK.version };
        room = new LK.Room({ singlePeerConnection });
        room.on(LK.RoomEvent.DataReceived, (payload, participant) => {
            received.push({ ms: since(), from: participant && participant.identity, text: new TextDecoder().decode(payload) });
        });
        room.on(LK.RoomEvent.TrackSubscribed, (track, pub, participant) => {
            subscribed.push({ ms: since(), kind: track.kind, from: participant.identity });
        });
        for (const e of ["resuming", "resumed", "restarting", "restarted", "signalResumed", "signalRestarted"]) {
            room.engine.on(e, () => note(`engine ${e}`));
        }
        for (const e of [LK.RoomEvent.SignalReconnecting, LK.RoomEvent.Reconnecting, LK.RoomEvent.Reconnected, LK.RoomEvent.Disconnected]) {
            room.on(e, () => note(`room ${e}`));
        }
        note("connect called");
        try {
            // No ICE servers of the page's own: livekit-client then takes the
            // server's list. Relay only, so a call connects through TURN or not at all.
            await room.connect(url, token, {
                rtcConfig: { iceTransportPolicy: "relay" },
                maxRetries: 0,
                peerConnectionTimeout: timeoutMs,
                websocketTimeout: timeoutMs,
            });
            out.connectedMs = Math.round(performance.now() - started);
            note("connected");
            await room.localParticipant.publishTrack(window.e2eCanvasTrack(), { name: "e2e-canvas", simulcast: false });
            out.publishedMs = Math.round(performance.now() - started);
        } catch (e) {
            out.error = `${e && e.name}: ${e && e.message}`;
            note("connect failed", { error: out.error });
        }
        return out;
    }

    // Sends TEXT to the room every 300 ms until stop(): a message sent before
    // the other participant is subscribed is not queued for it.
    function startSending(text) {
        stopSending();
        let n = 0;
        const send = () =>
            room.localParticipant
                .publishData(new TextEncoder().encode(`${text} #${n++}`), { reliable: true })
                .catch((e) => note("publishData failed", { error: String(e) }));
        send();
        sender = setInterval(send, 300);
    }

    function stopSending() {
        if (sender) clearInterval(sender);
        sender = null;
    }

    // The candidate pair in use on each live peer connection (pair_page.js),
    // and the video bytes it received.
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
            let bytesReceived = 0;
            stats.forEach((s) => {
                if (s.type === "inbound-rtp" && s.kind === "video") bytesReceived += s.bytesReceived || 0;
            });
            out.push({
                pc: pc.e2eIndex,
                connectionState: pc.connectionState,
                iceServers: servers(pc.getConfiguration()),
                videoBytesReceived: bytesReceived,
                pair: window.e2eSelectedPair(stats),
            });
        }
        return out;
    }

    // Cuts the signalling WebSocket (livekit-client's own "signal-reconnect"
    // scenario closes it as a network loss would); the client resumes on a
    // new one. Resolves once the room says it is reconnected, or after timeoutMs.
    async function resume(timeoutMs) {
        const LK = window.LivekitClient;
        const started = performance.now();
        const done = new Promise((resolve) => {
            room.once(LK.RoomEvent.Reconnected, () => resolve(true));
            setTimeout(() => resolve(false), timeoutMs);
        });
        note("resume: cutting the signalling connection");
        await room.simulateScenario("signal-reconnect");
        const ok = await done;
        return { reconnected: ok, ms: Math.round(performance.now() - started) };
    }

    window.lk = {
        join,
        startSending,
        stopSending,
        selectedPairs,
        resume,
        state: () => ({
            received: received.slice(),
            subscribed: subscribed.slice(),
            remotes: room ? [...room.remoteParticipants.values()].map((p) => p.identity) : [],
            roomState: room ? room.state : null,
        }),
        events: () => events.slice(),
        leave: async () => {
            stopSending();
            if (room) await room.disconnect();
        },
    };
})();
