//! The turnServer route against the fakes: one test per row of docs/behaviour.md §3's
//! decision table, and what reaches each upstream.

use std::time::Duration;

use turnify_fakes::{
    CfBehaviour, CloudflareOptions, FakeCloudflare, IceShape, SynapseBehaviour, SynapseOptions,
};

use crate::harness::{ALICE, CF_KEY, CF_TOKEN, Daemon, Stack, closed_port, send};

const V3: &str = "/_matrix/client/v3/voip/turnServer";

const CLOUDFLARE_TURN_URIS: [&str; 5] = [
    "turn:turn.cloudflare.com:3478?transport=udp",
    "turn:turn.cloudflare.com:3478?transport=tcp",
    "turn:turn.cloudflare.com:80?transport=tcp",
    "turns:turn.cloudflare.com:5349?transport=tcp",
    "turns:turn.cloudflare.com:443?transport=tcp",
];

const CORS: [(&str, &str); 4] = [
    ("access-control-allow-origin", "*"),
    (
        "access-control-allow-methods",
        "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    ),
    (
        "access-control-allow-headers",
        "X-Requested-With, Content-Type, Authorization, Date",
    ),
    ("access-control-expose-headers", "Synapse-Trace-Id, Server"),
];

#[track_caller]
fn assert_cors(response: &crate::harness::RawResponse) {
    for (name, value) in CORS {
        assert_eq!(response.header(name), Some(value), "{name} in {response:#?}");
    }
}

#[tokio::test]
async fn synapse_200_gets_cloudflare_credentials_in_the_matrix_shape() {
    // Given Synapse accepts the token and has no TURN configured ({}),
    let stack = Stack::start().await;
    // when the client asks for TURN credentials,
    let response = stack.get(V3, Some(ALICE)).await;
    // it gets Cloudflare's credential, reshaped, with port 53 gone.
    response.assert_status(200);
    let minted = stack.cloudflare.last_minted().expect("one mint");
    let body = response.json();
    assert_eq!(body["username"], minted.username.as_str());
    assert_eq!(body["password"], minted.credential.as_str());
    assert_eq!(body["uris"], serde_json::json!(CLOUDFLARE_TURN_URIS));
    let ttl = body["ttl"].as_u64().expect("integer ttl");
    assert!((86_398..=86_400).contains(&ttl), "ttl {ttl}");
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["password", "ttl", "uris", "username"],
        "exactly the four Matrix keys"
    );
    assert!(
        response.text().starts_with(r#"{"username":"#),
        "Synapse's key order: {}",
        response.text()
    );
}

#[tokio::test]
async fn the_credential_answer_keeps_synapses_headers_but_is_never_cached() {
    let stack = Stack::start().await;
    let response = stack.get(V3, Some(ALICE)).await;
    response.assert_status(200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str())
    );
    assert!(!response.has_header("transfer-encoding"));
    assert_eq!(response.header("server"), Some("Synapse/1.163.2"));
    assert_cors(&response);
}

#[tokio::test]
async fn synapses_own_coturn_credentials_are_replaced() {
    let synapse = SynapseOptions {
        turn_body: r#"{"username":"1795352607:@alice:localhost","password":"KvS99azn80Cy/Jo16vRGyGTRIx8=","ttl":3600,"uris":["turn:turn.example.test:3478?transport=udp"]}"#.into(),
        ..SynapseOptions::default()
    };
    let stack = Stack::start_with(synapse, CloudflareOptions::default(), &[]).await;
    let response = stack.get(V3, Some(ALICE)).await;
    response.assert_status(200);
    assert_eq!(response.json()["uris"], serde_json::json!(CLOUDFLARE_TURN_URIS));
}

#[tokio::test]
async fn what_reaches_cloudflare_is_the_documented_mint_request() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[("TURN_CREDENTIAL_TTL_SECONDS", "3600")],
    )
    .await;
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    let requests = stack.cloudflare.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let mint = &requests[0];
    assert_eq!(mint.method, "POST");
    assert_eq!(
        mint.path_and_query,
        format!("/v1/turn/keys/{CF_KEY}/credentials/generate-ice-servers")
    );
    assert_eq!(
        mint.header("authorization"),
        Some(format!("Bearer {CF_TOKEN}").as_str())
    );
    assert_eq!(mint.header("content-type"), Some("application/json"));
    assert_eq!(mint.json(), serde_json::json!({"ttl": 3600}));
    // The client's access token never goes to Cloudflare.
    assert!(!format!("{mint:?}").contains(ALICE));
}

#[tokio::test]
async fn ttl_is_the_configured_lifetime_for_a_fresh_credential() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[("TURN_CREDENTIAL_TTL_SECONDS", "1200")],
    )
    .await;
    let ttl = stack.get(V3, Some(ALICE)).await.json()["ttl"]
        .as_u64()
        .expect("ttl");
    assert!((1198..=1200).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn the_legacy_single_object_answer_is_accepted() {
    let cloudflare = CloudflareOptions {
        behaviour: CfBehaviour::Raw {
            status: 201,
            content_type: "application/json".into(),
            body: r#"{"iceServers":{"urls":["stun:stun.cloudflare.com:3478","turn:turn.cloudflare.com:3478?transport=udp","turn:turn.cloudflare.com:53?transport=udp","turns:turn.cloudflare.com:5349?transport=tcp"],"username":"legacy-user","credential":"legacy-pass"}}"#.into(),
        },
        ..CloudflareOptions::default()
    };
    let stack = Stack::start_with(SynapseOptions::default(), cloudflare, &[]).await;
    let body = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_eq!(body["username"], "legacy-user");
    assert_eq!(body["password"], "legacy-pass");
    assert_eq!(
        body["uris"],
        serde_json::json!([
            "turn:turn.cloudflare.com:3478?transport=udp",
            "turns:turn.cloudflare.com:5349?transport=tcp"
        ])
    );
}

#[tokio::test]
async fn the_fakes_legacy_shape_is_accepted_too() {
    let cloudflare = CloudflareOptions {
        behaviour: CfBehaviour::Mint {
            shape: IceShape::LegacyObject,
            latency: Duration::ZERO,
        },
        ..CloudflareOptions::default()
    };
    let stack = Stack::start_with(SynapseOptions::default(), cloudflare, &[]).await;
    let body = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    let uris = body["uris"].as_array().expect("uris");
    assert!(!uris.is_empty());
    assert!(
        uris.iter().all(|u| !u.as_str().unwrap_or(":53").contains(":53?")),
        "{uris:?}"
    );
}

#[tokio::test]
async fn cloudflare_failure_returns_synapses_200_unchanged() {
    let coturn = r#"{"username":"1795352607:@alice:localhost","password":"KvS99azn80Cy/Jo16vRGyGTRIx8=","ttl":3600,"uris":["turn:turn.example.test:3478?transport=udp"]}"#;
    let synapse = SynapseOptions {
        turn_body: coturn.into(),
        ..SynapseOptions::default()
    };
    let cloudflare = CloudflareOptions {
        behaviour: CfBehaviour::fail(500),
        ..CloudflareOptions::default()
    };
    let stack = Stack::start_with(synapse, cloudflare, &[]).await;
    let response = stack.get(V3, Some(ALICE)).await;
    response.assert_status(200);
    assert_eq!(response.text(), coturn);
    // Synapse's own headers, its Cache-Control among them.
    assert_eq!(
        response.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_cors(&response);
}

#[tokio::test]
async fn invalid_token_gets_synapses_401_unchanged_and_no_mint() {
    let stack = Stack::start().await;
    let response = stack.get(V3, Some("syt_not_a_real_token")).await;
    response.assert_status(401);
    assert_eq!(
        response.text(),
        r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}"#
    );
    assert_eq!(
        response.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
    assert_cors(&response);
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn missing_token_gets_synapses_401_unchanged() {
    let stack = Stack::start().await;
    let response = stack.get(V3, None).await;
    response.assert_status(401);
    assert_eq!(
        response.text(),
        r#"{"errcode":"M_MISSING_TOKEN","error":"Missing access token"}"#
    );
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn synapse_errors_pass_through_with_their_headers() {
    let stack = Stack::start().await;
    let cases = [
        (
            403,
            r#"{"errcode":"M_GUEST_ACCESS_FORBIDDEN","error":"Guest access not allowed"}"#,
            vec![],
        ),
        (
            429,
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":2000}"#,
            vec![("Retry-After".to_owned(), "2".to_owned())],
        ),
        (
            401,
            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":true}"#,
            vec![("WWW-Authenticate".to_owned(), "Bearer".to_owned())],
        ),
        (
            500,
            r#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#,
            vec![],
        ),
        (503, "<html>maintenance</html>", vec![]),
    ];
    for (status, body, headers) in cases {
        stack.synapse.set_behaviour(SynapseBehaviour::Status {
            status,
            body: body.to_owned(),
            headers: headers.clone(),
        });
        let response = stack.get(V3, Some(ALICE)).await;
        response.assert_status(status);
        assert_eq!(response.text(), body);
        for (name, value) in &headers {
            assert_eq!(
                response.header(&name.to_ascii_lowercase()),
                Some(value.as_str()),
                "{status}"
            );
        }
        assert_cors(&response);
    }
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn what_reaches_synapse_is_what_the_client_sent() {
    let stack = Stack::start().await;
    let path = "/_matrix/client/r0/voip/turnServer?foo=bar&x=%20y&z=%2F";
    let response = send(
        stack.daemon.addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: matrix.example.org\r\nAuthorization: Bearer {ALICE}\r\n\
             X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.9\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: matrix.example.org\r\nUser-Agent: Element/1.11\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Hop: 1\r\nConnection: X-Hop\r\n\r\n"
        ),
    )
    .await;
    response.assert_status(200);
    let requests = stack.synapse.requests();
    assert_eq!(requests.len(), 1);
    let upstream = &requests[0];
    assert_eq!(upstream.method, "GET");
    assert_eq!(upstream.path_and_query, path, "path and query byte for byte");
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {ALICE}").as_str())
    );
    assert_eq!(
        upstream.header_all("x-forwarded-for"),
        ["203.0.113.7, 198.51.100.9, 127.0.0.1"],
        "merged into one line with the peer appended"
    );
    assert_eq!(upstream.header("x-forwarded-proto"), Some("https"));
    assert_eq!(upstream.header("x-forwarded-host"), Some("matrix.example.org"));
    assert_eq!(upstream.header("user-agent"), Some("Element/1.11"));
    let mut names: Vec<&str> = upstream.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    // Only the client's end-to-end headers, plus the Host of Synapse itself
    // and the daemon's Via (so that a request loop is known).
    assert_eq!(
        names,
        [
            "authorization",
            "host",
            "user-agent",
            "via",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto"
        ]
    );
    assert_eq!(upstream.header_all("via"), ["1.1 matrix-turnify"]);
    assert_eq!(
        upstream.header("host"),
        Some(stack.synapse.addr().to_string().as_str())
    );
}

#[tokio::test]
async fn access_token_in_the_query_works_and_no_header_is_added() {
    let stack = Stack::start().await;
    let path = format!("{V3}?access_token={ALICE}");
    let response = send(
        stack.daemon.addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    response.assert_status(200);
    assert!(response.json()["uris"].is_array());
    let upstream = &stack.synapse.requests()[0];
    assert_eq!(upstream.path_and_query, path);
    assert_eq!(
        upstream.header("authorization"),
        None,
        "Synapse refuses header + query together"
    );
}

#[tokio::test]
async fn all_turn_server_paths_are_handled() {
    let stack = Stack::start().await;
    for version in ["v3", "r0", "unstable", "api/v1"] {
        let response = stack
            .get(&format!("/_matrix/client/{version}/voip/turnServer"), Some(ALICE))
            .await;
        response.assert_status(200);
        assert!(response.json()["password"].is_string(), "{version}");
    }
    // One token: the first answer's credential is reused on the other paths.
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

#[tokio::test]
async fn head_is_forwarded_as_head_without_minting() {
    let stack = Stack::start().await;
    let response = send(
        stack.daemon.addr,
        &format!("HEAD {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n"),
    )
    .await;
    response.assert_status(200);
    assert!(response.body.is_empty());
    assert_eq!(stack.synapse.requests()[0].method, "HEAD");
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn post_is_forwarded_and_synapses_405_returned() {
    let stack = Stack::start().await;
    let response = send(
        stack.daemon.addr,
        &format!(
            "POST {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        ),
    )
    .await;
    response.assert_status(405);
    assert_eq!(
        response.text(),
        r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#
    );
    let upstream = &stack.synapse.requests()[0];
    assert_eq!(upstream.method, "POST");
    assert_eq!(&upstream.body[..], b"{}");
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn cors_preflight_is_answered_locally_even_with_synapse_down() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let dead = closed_port();
    let daemon = Daemon::start(&dead, &cloudflare.base_url(), &[]).await;
    let response = send(
        daemon.addr,
        &format!(
            "OPTIONS {V3} HTTP/1.1\r\nHost: x\r\nOrigin: https://app.element.io\r\n\
             Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
        ),
    )
    .await;
    response.assert_status(204);
    assert!(response.body.is_empty());
    assert!(!response.has_header("content-type"));
    assert!(!response.has_header("access-control-max-age"));
    assert_cors(&response);
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_synapse() {
    let stack = Stack::start().await;
    let body = "x".repeat(64 * 1024 + 1);
    let response = send(
        stack.daemon.addr,
        &format!(
            "GET {V3} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    response.assert_matrix_error(413, "M_TOO_LARGE");
    assert!(stack.synapse.requests().is_empty());
}

#[tokio::test]
async fn a_body_within_the_cap_is_forwarded() {
    let stack = Stack::start().await;
    let response = send(
        stack.daemon.addr,
        &format!(
            "GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: 5\r\n\r\nhello"
        ),
    )
    .await;
    response.assert_status(200);
    assert_eq!(&stack.synapse.requests()[0].body[..], b"hello");
}

#[tokio::test]
async fn two_users_get_their_own_credentials() {
    let stack = Stack::start().await;
    let alice = stack.get(V3, Some(ALICE)).await.json();
    let bob = stack.get(V3, Some(crate::harness::BOB)).await.json();
    assert_ne!(alice["username"], bob["username"]);
}
