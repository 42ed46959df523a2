//! Any bytes as a LiveKit frame (docs/behaviour.md §12): the splice never
//! panics, splices only what `kind` calls a join or reconnect, and what it
//! returns is itself a well-formed join or reconnect that can be spliced
//! again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use matrix_turnify::splice;
use matrix_turnify::turn::TurnCredential;

fuzz_target!(|frame: &[u8]| {
    let ours = TurnCredential {
        username: "1700000000:fuzz".to_owned(),
        password: "cGFzc3dvcmQ=".to_owned(),
        uris: vec![
            "turn:turn.cloudflare.com:3478?transport=udp".to_owned(),
            "turns:turn.cloudflare.com:443?transport=tcp".to_owned(),
        ],
    };
    if let Some(spliced) = splice::splice(frame, &ours) {
        assert_eq!(splice::kind(&spliced), splice::kind(frame));
        assert!(splice::kind(frame).is_some());
        assert!(splice::splice(&spliced, &ours).is_some());
    }
});
