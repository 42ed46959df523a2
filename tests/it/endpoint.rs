//! The turnServer endpoint, exactly (docs/behaviour.md §3, §3.1, §10): other endpoints
//! whose path merely ends in `/voip/turnServer` are passed through, an answer
//! too large to be a turnServer answer streams on unchanged, and the daemon
//! asks for answers it can read.

use turnify_fakes::{CloudflareOptions, Flavour, SynapseOptions};

use crate::harness::{ALICE, Stack, send};

const V3: &str = "/_matrix/client/v3/voip/turnServer";
const GUEST: &str = "syt_guest_token";
const RELATIONS: &str = "/_matrix/client/v1/rooms/!room:localhost/relations/$event/voip/turnServer";
const STATE: &str = "/_matrix/client/v3/rooms/!room:localhost/state/voip/turnServer";

/// Finding 4: with `turn_allow_guests: false` a guest is refused TURN, and
/// the relations endpoint must not become a way around that.
#[tokio::test]
async fn a_rooms_relations_of_type_voip_are_not_the_turn_server_endpoint() {
    let no_guests = SynapseOptions {
        allow_guests: false,
        ..SynapseOptions::default()
    };
    let stack = Stack::start_with(no_guests, CloudflareOptions::default(), &[]).await;
    stack
        .get(V3, Some(GUEST))
        .await
        .assert_matrix_error(403, "M_GUEST_ACCESS_FORBIDDEN");
    for token in [GUEST, ALICE] {
        let response = stack.get(RELATIONS, Some(token)).await;
        response.assert_status(200);
        assert_eq!(response.text(), r#"{"chunk":[]}"#, "the chunk asked for");
    }
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

/// A state event of type `voip` with state key `turnServer` is a 404
/// `M_NOT_FOUND` like MSC4166's, but it is no turnServer answer: no whoami.
#[tokio::test]
async fn a_state_event_path_is_passed_through_without_whoami() {
    let stack = Stack::start().await;
    stack
        .get(STATE, Some(ALICE))
        .await
        .assert_matrix_error(404, "M_NOT_FOUND");
    assert_eq!(stack.whoami_calls(), 0);
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

/// A body over 64 KiB is not a turnServer answer (a real one is under
/// 1 KiB): it goes on as the homeserver sent it, and nothing is minted.
#[tokio::test]
async fn an_answer_over_64_kib_streams_on_unchanged() {
    let stack = Stack::start().await;
    let big = format!(r#"{{"padding":"{}"}}"#, "x".repeat(100 * 1024));
    stack.synapse.set_turn_body(&big);
    let response = stack.get(V3, Some(ALICE)).await;
    response.assert_status(200);
    assert_eq!(response.text(), big);
    assert_eq!(stack.cloudflare.mint_count(), 0);

    let small = format!(r#"{{"padding":"{}"}}"#, "x".repeat(60 * 1024));
    stack.synapse.set_turn_body(&small);
    let response = stack.get(V3, Some(ALICE)).await;
    assert!(
        response.assert_status(200).json()["uris"].is_array(),
        "under 64 KiB it is read"
    );
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

/// Finding 5: a browser's `Accept-Encoding` reaching a compressing
/// homeserver (or proxy) would hide the 404's errcode from the daemon.
#[tokio::test]
async fn accept_encoding_is_not_forwarded_on_the_turn_server_route() {
    let compressing_msc4166 = SynapseOptions {
        flavour: Flavour::Msc4166,
        gzip: true,
        ..SynapseOptions::default()
    };
    let stack = Stack::start_with(compressing_msc4166, CloudflareOptions::default(), &[]).await;
    let response = send(
        stack.daemon.addr,
        &format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n"),
    )
    .await;
    assert!(response.assert_status(200).json()["uris"].is_array());
    let turn_server = stack
        .synapse
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == V3)
        .expect("the turnServer request");
    assert_eq!(turn_server.header("accept-encoding"), None);

    // Anywhere else the client's own headers go through unchanged.
    send(
        stack.daemon.addr,
        "GET /echo/x HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
    )
    .await
    .assert_status(200);
    let echoed = stack.synapse.requests().pop().expect("the echo request");
    assert_eq!(echoed.header("accept-encoding"), Some("gzip"));
}

/// Every answer that went through the daemon names it, so `check
/// --public-url` (and an admin with curl) can tell it from one the proxy
/// took straight to the homeserver; its own local endpoints do not.
#[tokio::test]
async fn answers_through_the_daemon_carry_its_via() {
    let stack = Stack::start().await;
    let via = |response: &crate::harness::RawResponse| {
        response
            .headers
            .iter()
            .filter(|(name, _)| name == "via")
            .map(|(_, value)| value.clone())
            .collect::<Vec<_>>()
    };
    let ours = ["1.1 matrix-turnify".to_owned()];
    for (what, response) in [
        ("a credential", stack.get(V3, Some(ALICE)).await),
        ("the homeserver's 401", stack.get(V3, Some("syt_nobody")).await),
        (
            "a passed-through path",
            stack.get("/_matrix/client/versions", None).await,
        ),
        ("the relations path", stack.get(RELATIONS, Some(ALICE)).await),
        (
            "a preflight",
            send(
                stack.daemon.addr,
                &format!("OPTIONS {V3} HTTP/1.1\r\nHost: x\r\nOrigin: https://app.element.io\r\n\r\n"),
            )
            .await,
        ),
    ] {
        assert_eq!(via(&response), ours, "{what}");
    }
    for local in ["/healthz", "/metrics"] {
        assert!(via(&stack.get(local, None).await).is_empty(), "{local}");
    }
    let nobody = crate::harness::closed_port();
    let unreachable = crate::harness::Daemon::start(&nobody, &stack.cloudflare.base_url(), &[]).await;
    let response = crate::harness::get(unreachable.addr, V3, Some(ALICE)).await;
    assert_eq!(response.status, 502);
    assert_eq!(via(&response), ours, "the daemon's own 502");
}
