// Runs inside the call pages of livekit_call.mjs, firewall_call.mjs and
// firewall_legacy.mjs (a script of the page, before the page's own script):
// what those pages need alike to publish media and describe their
// peer connections.

// A video track that needs no camera: a canvas redrawn ten times a second.
window.e2eCanvasTrack = function e2eCanvasTrack() {
    const canvas = document.createElement("canvas");
    canvas.width = 160;
    canvas.height = 120;
    const g = canvas.getContext("2d");
    let n = 0;
    setInterval(() => {
        g.fillStyle = `hsl(${(n += 7) % 360} 80% 50%)`;
        g.fillRect(0, 0, canvas.width, canvas.height);
    }, 100);
    return canvas.captureStream(10).getVideoTracks()[0];
};

// The local candidates of a getStats() report, counted by type and relay
// protocol ("host", "srflx", "relay/udp", ...).
window.e2eLocalCandidates = function e2eLocalCandidates(stats) {
    const gathered = {};
    stats.forEach((s) => {
        if (s.type === "local-candidate") {
            const k = `${s.candidateType}${s.relayProtocol ? "/" + s.relayProtocol : ""}`;
            gathered[k] = (gathered[k] || 0) + 1;
        }
    });
    return gathered;
};
