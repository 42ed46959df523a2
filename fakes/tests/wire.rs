//! The fakes as a client sees them on the wire: what the daemon's tests rely
//! on without checking it themselves.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnify_fakes::{CfBehaviour, CloudflareOptions, FakeCloudflare, FakeSynapse, RealTurn, SynapseOptions};

/// Sends one raw HTTP/1.1 request (which must ask for `Connection: close`)
/// and returns the raw answer.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the fake");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the fake answers within 5 s")
        .expect("read the answer");
    String::from_utf8(answer).expect("the answer is UTF-8")
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

async fn cf_post(cf: &FakeCloudflare, path: &str, token: &str, body: &str) -> String {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(cf.addr(), &request).await
}

#[tokio::test]
async fn synapse_turn_server_answer_matches_synapse_on_the_wire() {
    // Given the fake with its default users,
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;

    // when alice asks for TURN credentials,
    let answer = exchange(
        synapse.addr(),
        "GET /_matrix/client/v3/voip/turnServer HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer syt_alice_token\r\nConnection: close\r\n\r\n",
    )
    .await;

    // then the header lines and chunked body are those of docs/synapse-facts.md §2
    // (Date's value varies; hyper puts Connection last, Twisted first).
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header block");
    let lines: Vec<&str> = head
        .lines()
        .filter(|l| !l.starts_with("Date: ") && *l != "Connection: close")
        .collect();
    assert_eq!(
        lines,
        [
            "HTTP/1.1 200 OK",
            "Server: Synapse/1.163.2",
            "Content-Type: application/json",
            "Cache-Control: no-cache, no-store, must-revalidate",
            "Access-Control-Allow-Origin: *",
            "Access-Control-Allow-Methods: GET, HEAD, POST, PUT, DELETE, OPTIONS",
            "Access-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization, Date",
            "Access-Control-Expose-Headers: Synapse-Trace-Id, Server",
            "Transfer-Encoding: chunked",
        ],
        "{answer}"
    );
    assert_eq!(head.lines().nth(2).map(|l| &l[..6]), Some("Date: "), "{answer}");
    assert_eq!(body, "2\r\n{}\r\n0\r\n\r\n");
}

#[tokio::test]
async fn cloudflare_checks_token_then_key_then_body_and_records_everything() {
    // Given the fake with its default key and token,
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    let mint_path = "/v1/turn/keys/test-key-id/credentials/generate-ice-servers";

    // a wrong token is refused before the key is looked at,
    let answer = cf_post(&cf, "/v1/turn/keys/other/credentials/generate", "nope", "").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 401 Unauthorized", "{answer}");
    // an unknown key before the body is looked at,
    let answer = cf_post(
        &cf,
        "/v1/turn/keys/other/credentials/generate",
        "test-api-token",
        "",
    )
    .await;
    assert_eq!(status_line(&answer), "HTTP/1.1 404 Not Found", "{answer}");
    // a TTL over 48 h is refused,
    let answer = cf_post(&cf, mint_path, "test-api-token", r#"{"ttl":172801}"#).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{answer}");
    // and a good request mints a credential that can then be revoked.
    let answer = cf_post(
        &cf,
        mint_path,
        "test-api-token",
        r#"{"ttl":172800,"customIdentifier":"u1"}"#,
    )
    .await;
    assert_eq!(status_line(&answer), "HTTP/1.1 201 Created", "{answer}");
    let minted = cf.last_minted().expect("a minted credential");
    assert!(
        answer.contains(&format!(r#""username":"{}""#, minted.username)),
        "{answer}"
    );
    assert_eq!(
        (minted.ttl, minted.custom_identifier.as_deref()),
        (172_800, Some("u1"))
    );
    let revoke_path = format!("/v1/turn/keys/test-key-id/credentials/{}/revoke", minted.username);
    let answer = cf_post(&cf, &revoke_path, "test-api-token", "").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 204 No Content", "{answer}");

    assert_eq!(cf.mint_count(), 1);
    assert_eq!(cf.revoked(), [minted.username]);
    assert_eq!(cf.requests().len(), 5);
    assert_eq!(cf.requests()[3].json()["customIdentifier"], "u1");
}

#[tokio::test]
async fn cloudflare_huge_answer_is_chunked_and_exactly_that_long() {
    // Given a fake told to answer 200 000 bytes,
    let cf = FakeCloudflare::start(CloudflareOptions {
        behaviour: CfBehaviour::Huge { bytes: 200_000 },
        ..CloudflareOptions::default()
    })
    .await;

    // when a credential is asked for,
    let answer = cf_post(
        &cf,
        "/v1/turn/keys/test-key-id/credentials/generate-ice-servers",
        "test-api-token",
        r#"{"ttl":60}"#,
    )
    .await;

    // then the body comes chunked, with no length announced, and adds up.
    let (head, mut chunked) = answer.split_once("\r\n\r\n").expect("a header block");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    let mut total = 0;
    while let Some((size, rest)) = chunked.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).expect("a chunk size");
        total += size;
        chunked = rest
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .unwrap_or_default();
    }
    assert_eq!(total, 200_000);
    assert_eq!(cf.mint_count(), 0);
}

#[tokio::test]
async fn cloudflare_minting_for_a_real_turn_server_lists_its_urls() {
    // Given a fake told to mint for a coturn with these URLs,
    let urls = [
        "stun:127.0.0.1:3478",
        "turn:127.0.0.1:3478?transport=udp",
        "turns:localhost:5349?transport=tcp",
    ];
    let cf = FakeCloudflare::start(CloudflareOptions {
        real_turn: Some(RealTurn {
            secret: "coturn-secret".to_owned(),
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
        }),
        ..CloudflareOptions::default()
    })
    .await;

    // when a credential is asked for,
    let answer = cf_post(
        &cf,
        "/v1/turn/keys/test-key-id/credentials/generate-ice-servers",
        "test-api-token",
        r#"{"ttl":600}"#,
    )
    .await;

    // then the STUN URL has its own entry, the TURN ones carry the credential,
    // and the username is coturn's "<unix expiry>:<name>" with expiry now + ttl.
    let body = answer.split_once("\r\n\r\n").expect("a header block").1;
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    let servers = &json["iceServers"];
    assert_eq!(servers[0]["urls"], serde_json::json!([urls[0]]));
    assert_eq!(servers[1]["urls"], serde_json::json!(urls[1..]));
    let username = servers[1]["username"].as_str().expect("a username");
    let (expiry, name) = username.split_once(':').expect("<expiry>:<name>");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let expiry: u64 = expiry.parse().expect("a unix time");
    assert!(
        (now + 599..=now + 601).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    assert_eq!(name.len(), 32);
    // base64 of a 20-byte HMAC-SHA1 (its value: the unit test beside the fake).
    let credential = servers[1]["credential"].as_str().expect("a credential");
    assert_eq!(credential.len(), 28);
    assert!(credential.ends_with('='));
}
