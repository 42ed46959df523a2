use crate::livekit::splice;

use super::finding::*;
use super::livekit::*;
use super::render::*;

#[test]
fn report_marks_each_line_and_counts_failures() {
    let text = render(&[
        Finding::pass("configuration parses"),
        Finding::fail(
            "Cloudflare answered HTTP 401 Unauthorized",
            "check CF_TURN_API_TOKEN",
        ),
    ]);
    assert_eq!(
        text,
        "✓ configuration parses\n✗ Cloudflare answered HTTP 401 Unauthorized\n    → check CF_TURN_API_TOKEN\n1 of 2 checks failed.\n"
    );
}

#[test]
fn a_refusal_is_shown_without_the_token_it_quotes() {
    let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJrIn0.c2lnbmF0dXJl";
    let body =
        format!("invalid token: {token}, error: go-jose/go-jose: error in cryptographic primitive\nmore");
    assert_eq!(
        refusal_reason(body.as_bytes(), token),
        "invalid token: [the test token], error: go-jose/go-jose: error in cryptographic primitive"
    );
}

#[test]
fn skipped_lines_are_marked_and_not_counted() {
    let text = render(&[
        Finding::pass("LiveKit answers"),
        Finding::warn(
            "nothing answers on 127.0.0.1:7880",
            "run check next to the daemon",
        ),
        Finding::skip("no test join", "the daemon is not running here"),
    ]);
    assert_eq!(
        text,
        "✓ LiveKit answers\n! nothing answers on 127.0.0.1:7880\n    → run check next to the daemon\n\
         - no test join\n    → the daemon is not running here\nAll 2 checks passed, with 1 warning, 1 skipped.\n"
    );
}

#[test]
fn our_entry_is_told_by_the_uris_check_got_or_else_by_cloudflares_host() {
    let entry = |urls: &[&str], username: &str| splice::IceServerSeen {
        urls: urls.iter().map(|url| (*url).to_owned()).collect(),
        username: username.to_owned(),
    };
    let minted = OurEntry {
        uris: Some(vec![
            "turn:turn.example.org:3478?transport=udp".to_owned(),
            "turns:turn.example.org:443?transport=tcp".to_owned(),
        ]),
        custom_domain: None,
    };
    assert!(minted.is(&entry(&["turns:turn.example.org:443?transport=tcp"], "u")));
    assert!(!minted.is(&entry(&["turns:turn.example.org:443?transport=tcp"], "")));
    assert!(!minted.is(&entry(&["stun:stun.l.google.com:19302"], "")));
    assert!(!minted.is(&entry(&[], "u")));
    let unknown = OurEntry {
        uris: None,
        custom_domain: Some("turn.example.com"),
    };
    assert!(unknown.is(&entry(
        &[
            "turn:turn.example.com:3478?transport=udp",
            "turns:turn.cloudflare.com:443?transport=tcp"
        ],
        "u"
    )));
    assert!(!unknown.is(&entry(&["turn:livekit.example.com:3478"], "u")));
}
