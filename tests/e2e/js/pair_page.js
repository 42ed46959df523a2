// Runs inside the browser pages of relay_call.mjs (evaluated before
// relay_page.js) and livekit_call.mjs (a script of the page, before
// livekit_page.js): reads the candidate pair in use from a getStats() report.
//
// The transport's selectedCandidatePairId (Chromium), else the pair flagged
// `selected` (Firefox), else a nominated succeeded one; null if none.
window.e2eSelectedPair = function e2eSelectedPair(stats) {
    const all = new Map();
    stats.forEach((s) => all.set(s.id, s));
    let pair = null;
    for (const s of all.values()) {
        if (s.type === "transport" && s.selectedCandidatePairId) pair = all.get(s.selectedCandidatePairId) || pair;
    }
    if (!pair) for (const s of all.values()) if (s.type === "candidate-pair" && s.selected) pair = s;
    if (!pair) {
        for (const s of all.values()) {
            if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
        }
    }
    if (!pair) return null;
    const side = (id) => {
        const c = all.get(id);
        if (!c) return null;
        return {
            candidateType: c.candidateType,
            protocol: c.protocol,
            relayProtocol: c.relayProtocol ?? null,
            address: c.address ?? c.ip ?? null,
            port: c.port,
            url: c.url ?? null,
        };
    };
    return { state: pair.state, local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId) };
};
