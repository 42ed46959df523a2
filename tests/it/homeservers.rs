//! docs/behaviour.md §3.1 against a fake of each homeserver family: what each answers on
//! `/voip/turnServer` without TURN, and what the daemon makes of it. No token
//! never gets a credential; a 404 `M_NOT_FOUND` does once `/account/whoami`
//! confirms a user who is not a guest; every other answer goes back as the
//! homeserver gave it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use turnify_fakes::{CfBehaviour, CloudflareOptions, Flavour, SynapseOptions, WhoamiBehaviour};

use crate::harness::{ALICE, RawResponse, Stack, assert_counted, get, metrics};

const V3: &str = "/_matrix/client/v3/voip/turnServer";
const GUEST: &str = "syt_guest_token";
/// Synapse's answer when it has coturn configured, for the fallback and the
/// anonymous cases: it must come back byte for byte.
const COTURN: &str = r#"{"username":"1795352607:@alice:localhost","password":"KvS99azn80Cy/Jo16vRGyGTRIx8=","ttl":3600,"uris":["turn:turn.example.test:3478?transport=udp"]}"#;
const ALL: [Flavour; 4] = [
    Flavour::Synapse,
    Flavour::Dendrite,
    Flavour::ConduitLegacy,
    Flavour::Msc4166,
];

fn homeserver(flavour: Flavour) -> SynapseOptions {
    SynapseOptions {
        flavour,
        ..SynapseOptions::default()
    }
}

async fn start(options: SynapseOptions, extra: &[(&str, &str)]) -> Stack {
    Stack::start_with(options, CloudflareOptions::default(), extra).await
}

/// What the homeserver itself answers, asked directly.
async fn direct(addr: SocketAddr, path: &str, token: Option<&str>) -> RawResponse {
    get(addr, path, token).await
}

/// The daemon's answer is the homeserver's: same status, same body, same
/// headers but the date and the framing (the daemon reads a turnServer
/// answer whole, so it sends a length where the homeserver sent chunks),
/// and the daemon's `Via` last.
#[track_caller]
fn assert_unchanged(through: &RawResponse, direct: &RawResponse, what: &str) {
    assert_eq!(through.status, direct.status, "{what}: {}", through.text());
    assert_eq!(through.text(), direct.text(), "{what}");
    let without_date = |r: &RawResponse| -> Vec<(String, String)> {
        r.headers
            .iter()
            .filter(|(name, _)| {
                !["date", "connection", "content-length", "transfer-encoding"].contains(&name.as_str())
            })
            .cloned()
            .collect()
    };
    let mut expected = without_date(direct);
    expected.push(("via".to_owned(), "1.1 matrix-turnify".to_owned()));
    assert_eq!(without_date(through), expected, "{what}");
}

#[track_caller]
fn assert_credential(response: &RawResponse, what: &str) {
    response.assert_status(200);
    let body = response.json();
    assert!(
        body["username"].as_str().is_some_and(|u| !u.is_empty()),
        "{what}: {body}"
    );
    assert!(
        body["uris"].as_array().is_some_and(|u| !u.is_empty()),
        "{what}: {body}"
    );
    assert_eq!(response.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("*"),
        "{what}"
    );
}

/// Given each homeserver, a valid user token gets a Cloudflare credential;
/// only the MSC4166 family needs whoami for it.
#[tokio::test]
async fn a_valid_token_gets_a_credential_from_every_homeserver() {
    for flavour in ALL {
        let stack = start(homeserver(flavour), &[]).await;
        assert_credential(&stack.get(V3, Some(ALICE)).await, &format!("{flavour:?}"));
        assert_eq!(stack.cloudflare.mint_count(), 1, "{flavour:?}");
        let expected_whoami = usize::from(flavour == Flavour::Msc4166);
        assert_eq!(stack.whoami_calls(), expected_whoami, "{flavour:?}");
        let auth = if flavour == Flavour::Msc4166 {
            "whoami"
        } else {
            "homeserver"
        };
        assert_counted(
            &metrics(stack.daemon.addr).await,
            &format!(r#"turnify_requests_total{{outcome="cloudflare",auth="{auth}"}} 1"#),
        );
    }
}

/// Given each homeserver, an invalid token and no token get the
/// homeserver's own 401, and nothing is minted.
#[tokio::test]
async fn invalid_and_missing_tokens_get_the_homeservers_401() {
    for flavour in ALL {
        let stack = start(homeserver(flavour), &[]).await;
        for token in [Some("syt_not_a_real_token"), None] {
            let what = format!("{flavour:?} with token {token:?}");
            let through = stack.get(V3, token).await;
            let direct = direct(stack.synapse.addr(), V3, token).await;
            through.assert_status(401);
            assert_unchanged(&through, &direct, &what);
        }
        assert_eq!(stack.cloudflare.mint_count(), 0, "{flavour:?}");
        assert_eq!(stack.whoami_calls(), 0, "{flavour:?}: a 401 needs no whoami");
    }
}

/// Given each homeserver and a guest token: the homeserver's 403 or the
/// MSC4166 404 goes back unchanged (whoami says "guest"); a homeserver that
/// answers a guest 200 decided to serve it, so the guest gets a credential.
#[tokio::test]
async fn guests_get_what_their_homeserver_decides() {
    for (flavour, allow_guests, expected) in [
        (Flavour::Synapse, true, 200),
        (Flavour::Synapse, false, 403),
        (Flavour::Dendrite, true, 403),
        (Flavour::ConduitLegacy, true, 200),
        (Flavour::Msc4166, true, 404),
        (Flavour::Msc4166, false, 403),
    ] {
        let what = format!("{flavour:?}, turn_allow_guests {allow_guests}");
        let options = SynapseOptions {
            allow_guests,
            ..homeserver(flavour)
        };
        let stack = start(options, &[]).await;
        let through = stack.get(V3, Some(GUEST)).await;
        if expected == 200 {
            assert_credential(&through, &what);
        } else {
            let direct = direct(stack.synapse.addr(), V3, Some(GUEST)).await;
            direct.assert_status(expected);
            assert_unchanged(&through, &direct, &what);
            assert_eq!(stack.cloudflare.mint_count(), 0, "{what}");
        }
        let expected_whoami = usize::from(flavour == Flavour::Msc4166 && expected == 404);
        assert_eq!(stack.whoami_calls(), expected_whoami, "{what}");
    }
}

/// Given Cloudflare failing, each homeserver's own answer goes back: its
/// 200 for the fallback, the MSC4166 family's 404.
#[tokio::test]
async fn with_cloudflare_failing_the_homeservers_answer_goes_back() {
    for flavour in ALL {
        let stack = Stack::start_with(
            homeserver(flavour),
            CloudflareOptions {
                behaviour: CfBehaviour::fail(503),
                ..CloudflareOptions::default()
            },
            &[],
        )
        .await;
        let through = stack.get(V3, Some(ALICE)).await;
        let direct = direct(stack.synapse.addr(), V3, Some(ALICE)).await;
        let expected = if flavour == Flavour::Msc4166 { 404 } else { 200 };
        direct.assert_status(expected);
        assert_unchanged(&through, &direct, &format!("{flavour:?}"));
        assert_counted(
            &metrics(stack.daemon.addr).await,
            r#"turnify_cloudflare_calls_total{result="status"} 1"#,
        );
    }
}

/// Given each homeserver, a path it does not serve gets its own 404
/// `M_UNRECOGNIZED` unchanged: no whoami, no mint.
#[tokio::test]
async fn paths_a_homeserver_does_not_serve_get_its_404() {
    for (flavour, path) in [
        (Flavour::Synapse, "/_matrix/client/v1/voip/turnServer"),
        (Flavour::Dendrite, "/_matrix/client/unstable/voip/turnServer"),
        (Flavour::Dendrite, "/_matrix/client/api/v1/voip/turnServer"),
        (Flavour::ConduitLegacy, "/_matrix/client/unstable/voip/turnServer"),
        (Flavour::Msc4166, "/_matrix/client/unstable/voip/turnServer"),
        (Flavour::Msc4166, "/_matrix/client/api/v1/voip/turnServer"),
    ] {
        let stack = start(homeserver(flavour), &[]).await;
        let through = stack.get(path, Some(ALICE)).await;
        let direct = direct(stack.synapse.addr(), path, Some(ALICE)).await;
        through.assert_matrix_error(404, "M_UNRECOGNIZED");
        assert_unchanged(&through, &direct, &format!("{flavour:?} {path}"));
        assert_eq!(stack.whoami_calls(), 0, "{flavour:?} {path}");
        assert_eq!(stack.cloudflare.mint_count(), 0, "{flavour:?} {path}");
    }
}

/// Given the MSC4166 404, every way whoami can fail to confirm a user gives
/// the 404 back unchanged, without a mint, within the timeout.
#[tokio::test]
async fn whoami_that_does_not_confirm_a_user_leaves_the_404() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    /// Scheduling room on a busy two-core machine.
    const MARGIN: Duration = Duration::from_secs(1);
    let cases = [
        (
            "whoami 500",
            WhoamiBehaviour::Status {
                status: 500,
                body: r#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#.into(),
            },
        ),
        (
            "whoami 401",
            WhoamiBehaviour::Status {
                status: 401,
                body: r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}"#.into(),
            },
        ),
        ("whoami slower than the timeout", WhoamiBehaviour::Delay(TIMEOUT * 3)),
        ("whoami never answers", WhoamiBehaviour::Hang),
        ("whoami breaks the connection", WhoamiBehaviour::Broken),
        (
            "whoami: a user_id that is a number",
            WhoamiBehaviour::Status {
                status: 200,
                body: r#"{"user_id":42}"#.into(),
            },
        ),
        (
            "whoami: not a user ID",
            WhoamiBehaviour::Status {
                status: 200,
                body: r#"{"user_id":"alice"}"#.into(),
            },
        ),
        (
            "whoami: an empty object",
            WhoamiBehaviour::Status {
                status: 200,
                body: "{}".into(),
            },
        ),
        (
            "whoami: HTML",
            WhoamiBehaviour::Status {
                status: 200,
                body: "<html>ok</html>".into(),
            },
        ),
        (
            "whoami: a guest",
            WhoamiBehaviour::Status {
                status: 200,
                body: r#"{"user_id":"@1:localhost","is_guest":true}"#.into(),
            },
        ),
    ];
    let stack = start(
        homeserver(Flavour::Msc4166),
        &[("SYNAPSE_TIMEOUT_SECONDS", "0.5")],
    )
    .await;
    let direct = direct(stack.synapse.addr(), V3, Some(ALICE)).await;
    direct.assert_matrix_error(404, "M_NOT_FOUND");
    for (what, behaviour) in cases {
        stack.synapse.set_whoami(behaviour);
        let started = Instant::now();
        let through = stack.get(V3, Some(ALICE)).await;
        let took = started.elapsed();
        assert_unchanged(&through, &direct, what);
        assert!(took < TIMEOUT + MARGIN, "{what}: took {took:?}");
    }
    assert_eq!(stack.cloudflare.mint_count(), 0);
    assert_counted(
        &metrics(stack.daemon.addr).await,
        r#"turnify_requests_total{outcome="passed-through",auth="whoami"} 10"#,
    );
}

/// Given a homeserver that answers turnServer with the MSC4166 404 and is
/// gone before whoami is asked (its listener closed: connection refused),
/// the 404 goes back unchanged and nothing is minted.
#[tokio::test]
async fn an_unreachable_whoami_leaves_the_404() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let homeserver = listener.local_addr().expect("addr");
    let cloudflare = turnify_fakes::FakeCloudflare::start(CloudflareOptions::default()).await;
    let daemon =
        crate::harness::Daemon::start(&format!("http://{homeserver}"), &cloudflare.base_url(), &[]).await;
    let answer_once = async move {
        let (mut stream, _) = listener.accept().await.expect("the daemon connects");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buf).await.expect("read the request");
            assert!(read > 0, "the request head ends");
            head.extend_from_slice(&buf[..read]);
        }
        let body = r#"{"errcode":"M_NOT_FOUND","error":"Not Found"}"#;
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.expect("answer");
        // Dropping the listener with the stream: whoami's connection is refused.
    };
    let (through, ()) = tokio::join!(get(daemon.addr, V3, Some(ALICE)), answer_once);
    through.assert_matrix_error(404, "M_NOT_FOUND");
    assert_eq!(cloudflare.mint_count(), 0);
    assert_counted(
        &metrics(daemon.addr).await,
        r#"turnify_requests_total{outcome="passed-through",auth="whoami"} 1"#,
    );
}

/// Given the MSC4166 404 path, 1,000 requests with one token mint once and
/// ask whoami every time; once the token is logged out, the homeserver's
/// 401 goes back even though a credential is cached for it.
#[tokio::test]
async fn reuse_through_the_404_path_mints_once_and_never_skips_authentication() {
    let stack = start(homeserver(Flavour::Msc4166), &[]).await;
    let first = stack.get(V3, Some(ALICE)).await;
    assert_credential(&first, "first");
    for _ in 0..999 {
        let again = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
        assert_eq!(again["username"], first.json()["username"]);
    }
    assert_eq!(stack.cloudflare.mint_count(), 1);
    assert_eq!(stack.whoami_calls(), 1000, "authentication is never cached");
    assert_counted(
        &metrics(stack.daemon.addr).await,
        r#"turnify_requests_total{outcome="reused",auth="whoami"} 999"#,
    );

    stack.synapse.revoke_token(ALICE);
    let through = stack.get(V3, Some(ALICE)).await;
    through.assert_matrix_error(401, "M_UNKNOWN_TOKEN");
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

/// Given a homeserver that answers 200 to a request with no token at all,
/// the daemon passes that answer on and never asks Cloudflare: no token, no
/// credential.
#[tokio::test]
async fn an_anonymous_200_never_gets_a_credential() {
    for flavour in ALL {
        let options = SynapseOptions {
            anonymous_turn: true,
            turn_body: COTURN.to_owned(),
            ..homeserver(flavour)
        };
        let stack = start(options, &[]).await;
        for path in [V3, &format!("{V3}?foo=bar")] {
            let through = stack.get(path, None).await;
            let direct = direct(stack.synapse.addr(), path, None).await;
            direct.assert_status(200);
            assert_unchanged(&through, &direct, &format!("{flavour:?} {path}"));
        }
        assert_eq!(
            stack.cloudflare.requests().len(),
            0,
            "{flavour:?}: Cloudflare never asked"
        );
        assert_eq!(stack.whoami_calls(), 0, "{flavour:?}");
        assert_counted(
            &metrics(stack.daemon.addr).await,
            r#"turnify_requests_total{outcome="passed-through",auth="homeserver"} 2"#,
        );
    }
}

/// Given the whoami path with `CF_CUSTOM_IDENTIFIER=user_id`, the user ID
/// whoami gave is the identifier: whoami is asked once per request, not
/// again for the mint.
#[tokio::test]
async fn the_whoami_answer_also_names_the_user_for_cloudflare() {
    let stack = start(
        homeserver(Flavour::Msc4166),
        &[("CF_CUSTOM_IDENTIFIER", "user_id")],
    )
    .await;
    assert_credential(&stack.get(V3, Some(ALICE)).await, "whoami path");
    assert_eq!(stack.whoami_calls(), 1);
    let mint = stack.cloudflare.requests().pop().expect("a mint");
    assert_eq!(mint.json()["customIdentifier"], "@alice:localhost");
}

/// Finding 6: readiness falls back to `/_matrix/client/versions` on the
/// homeservers that have no Synapse `/health`.
#[tokio::test]
async fn readiness_needs_no_synapse_health() {
    for flavour in [Flavour::Dendrite, Flavour::ConduitLegacy, Flavour::Msc4166] {
        let stack = start(homeserver(flavour), &[]).await;
        let health = get(stack.synapse.addr(), "/health", None).await;
        assert_eq!(health.status, 404, "{flavour:?} has no /health");
        stack.get("/readyz", None).await.assert_status(200);
    }
}
