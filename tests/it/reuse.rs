//! docs/behaviour.md §5 against the recording fake Cloudflare: reuse per token, single
//! flight, serve-while-failing, back-off, attribution, custom domain, metrics.
//! Time is moved with the daemon's clock, never slept through.

use std::time::{Duration, Instant};

use turnify_fakes::{CfBehaviour, CloudflareOptions, IceShape, SynapseOptions};

use crate::harness::{ALICE, BOB, Stack, concurrent_gets, send, slow_cloudflare};

const V3: &str = "/_matrix/client/v3/voip/turnServer";
const HOUR: Duration = Duration::from_secs(3600);

fn ttl(body: &serde_json::Value) -> u64 {
    body["ttl"].as_u64().expect("integer ttl")
}

#[tokio::test]
async fn a_thousand_requests_with_one_token_mint_once() {
    let stack = Stack::start().await;
    let first = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    for _ in 0..999 {
        let body = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
        assert_eq!(body["username"], first["username"]);
    }
    assert_eq!(stack.cloudflare.mint_count(), 1);
    // Reuse never skips authentication.
    assert_eq!(stack.synapse.requests().len(), 1000);
}

#[tokio::test]
async fn a_hundred_concurrent_first_requests_share_one_mint() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        slow_cloudflare(Duration::from_millis(300)),
        &[],
    )
    .await;
    let responses = concurrent_gets(stack.daemon.addr, V3, ALICE, 100).await;
    let mut usernames = std::collections::HashSet::new();
    for response in responses {
        let body = response.assert_status(200).json();
        usernames.insert(body["username"].as_str().expect("username").to_owned());
    }
    assert_eq!(usernames.len(), 1);
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

#[tokio::test]
async fn two_tokens_get_two_credentials() {
    let stack = Stack::start().await;
    let alice = stack.get(V3, Some(ALICE)).await.json();
    let bob = stack.get(V3, Some(BOB)).await.json();
    assert_ne!(alice["username"], bob["username"]);
    assert_eq!(stack.cloudflare.mint_count(), 2);
    // The query-parameter form is the same token, so the same credential.
    let by_query = send(
        stack.daemon.addr,
        &format!("GET {V3}?access_token={ALICE} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(by_query.json()["username"], alice["username"]);
}

#[tokio::test]
async fn ttl_counts_down_and_a_new_credential_comes_after_the_half_life() {
    let stack = Stack::start().await;
    let clock = stack.daemon.state.clock();
    let first = stack.get(V3, Some(ALICE)).await.json();
    assert!(ttl(&first) >= 86_399);

    clock.advance(10 * HOUR);
    let later = stack.get(V3, Some(ALICE)).await.json();
    assert_eq!(later["username"], first["username"]);
    let remaining = ttl(&later);
    assert!(
        (50_398..=50_400).contains(&remaining),
        "the true remaining lifetime, got {remaining}"
    );

    clock.advance(2 * HOUR);
    let fresh = stack.get(V3, Some(ALICE)).await.json();
    assert_ne!(
        fresh["username"], first["username"],
        "half the lifetime is gone: mint again"
    );
    assert!(ttl(&fresh) >= 86_399);
    assert_eq!(stack.cloudflare.mint_count(), 2);
}

#[tokio::test]
async fn short_lifetimes_are_reused_only_while_20_minutes_remain() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[("TURN_CREDENTIAL_TTL_SECONDS", "1800")],
    )
    .await;
    let clock = stack.daemon.state.clock();
    let first = stack.get(V3, Some(ALICE)).await.json();
    clock.advance(Duration::from_secs(500));
    assert_eq!(
        stack.get(V3, Some(ALICE)).await.json()["username"],
        first["username"]
    );
    clock.advance(Duration::from_secs(200));
    assert_ne!(
        stack.get(V3, Some(ALICE)).await.json()["username"],
        first["username"]
    );
}

#[tokio::test]
async fn a_logged_out_token_gets_synapses_401_despite_its_cached_credential() {
    let stack = Stack::start().await;
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    stack.synapse.revoke_token(ALICE);
    let response = stack.get(V3, Some(ALICE)).await;
    response.assert_status(401);
    assert_eq!(response.json()["errcode"], "M_UNKNOWN_TOKEN");
    let metrics = send(stack.daemon.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .text();
    assert!(
        metrics.contains("turnify_credential_cache_entries 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_still_valid_credential_is_served_while_cloudflare_fails() {
    let stack = Stack::start().await;
    let clock = stack.daemon.state.clock();
    let first = stack.get(V3, Some(ALICE)).await.json();
    clock.advance(20 * HOUR);
    stack.cloudflare.set_behaviour(CfBehaviour::fail(503));
    let during = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_eq!(during["username"], first["username"]);
    let remaining = ttl(&during);
    assert!(
        (14_398..=14_400).contains(&remaining),
        "remaining ttl, got {remaining}"
    );

    // With under a minute of life left it is no longer worth handing out.
    clock.advance(Duration::from_secs(4 * 3600 - 30));
    stack.cloudflare.set_behaviour(CfBehaviour::fail(503));
    let response = stack.get(V3, Some(ALICE)).await.assert_status(200).text();
    assert_eq!(response, "{}", "Synapse's own answer");
}

#[tokio::test]
async fn a_failed_shared_mint_sends_every_waiter_to_the_fallback_at_once() {
    let stack = Stack::start_with(SynapseOptions::default(), CloudflareOptions::default(), &[]).await;
    stack.cloudflare.set_behaviour(CfBehaviour::Raw {
        status: 500,
        content_type: "application/json".into(),
        body: "{}".into(),
    });
    let responses = concurrent_gets(stack.daemon.addr, V3, ALICE, 20).await;
    for response in responses {
        assert_eq!(response.assert_status(200).text(), "{}");
    }
    // Far fewer calls than requests: waiters do not retry on their own, and
    // after three failures the back-off skips Cloudflare.
    let calls = stack.cloudflare.requests().len();
    assert!((1..=3).contains(&calls), "{calls} Cloudflare calls");
}

#[tokio::test]
async fn after_three_failures_cloudflare_is_skipped_until_the_cool_down_ends() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions {
            behaviour: CfBehaviour::Hang,
            ..CloudflareOptions::default()
        },
        &[("CREDENTIAL_REUSE", "false"), ("CF_TIMEOUT_SECONDS", "0.3")],
    )
    .await;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(stack.get(V3, Some(ALICE)).await.text(), "{}");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "waited for the timeout"
        );
    }
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(stack.get(V3, Some(ALICE)).await.text(), "{}");
    }
    // Waiting for Cloudflare would cost each request its 0.3 s timeout,
    // 15 s in all; half of that leaves a busy machine plenty of room. The
    // count of Cloudflare requests below is the exact proof.
    assert!(
        started.elapsed() < Duration::from_millis(7500),
        "50 backed-off requests took {:?}",
        started.elapsed()
    );
    assert_eq!(stack.cloudflare.requests().len(), 3);

    // After the cool-down one request probes, and Cloudflare is back.
    stack.cloudflare.set_behaviour(CfBehaviour::Mint {
        shape: IceShape::List,
        latency: Duration::ZERO,
    });
    stack.daemon.state.clock().advance(Duration::from_secs(30));
    let probe = stack.get(V3, Some(ALICE)).await.json();
    assert!(probe["password"].is_string());
    assert_eq!(stack.cloudflare.requests().len(), 4);
    let metrics = send(stack.daemon.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .text();
    assert!(
        metrics.contains("turnify_cloudflare_calls_total{result=\"skipped-backoff\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnify_cloudflare_calls_total{result=\"timeout\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnify_cloudflare_backoff_active 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_429_retry_after_sets_the_cool_down() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions {
            behaviour: CfBehaviour::Status {
                status: 429,
                body: r#"{"error":"rate limited"}"#.into(),
                retry_after: Some(120),
            },
            ..CloudflareOptions::default()
        },
        &[("CREDENTIAL_REUSE", "false")],
    )
    .await;
    assert_eq!(stack.get(V3, Some(ALICE)).await.text(), "{}");
    stack.cloudflare.set_behaviour(CfBehaviour::Mint {
        shape: IceShape::List,
        latency: Duration::ZERO,
    });
    let clock = stack.daemon.state.clock();
    clock.advance(Duration::from_secs(119));
    assert_eq!(
        stack.get(V3, Some(ALICE)).await.text(),
        "{}",
        "still cooling down"
    );
    assert_eq!(stack.cloudflare.requests().len(), 1);
    let metrics = send(stack.daemon.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .text();
    assert!(
        metrics.contains("turnify_cloudflare_backoff_active 1"),
        "{metrics}"
    );
    clock.advance(Duration::from_secs(1));
    assert!(stack.get(V3, Some(ALICE)).await.json()["password"].is_string());
}

#[tokio::test]
async fn reuse_off_mints_every_time() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[("CREDENTIAL_REUSE", "false")],
    )
    .await;
    for _ in 0..5 {
        stack.get(V3, Some(ALICE)).await.assert_status(200);
    }
    assert_eq!(stack.cloudflare.mint_count(), 5);
}

/// What the mint request's `customIdentifier` should be.
enum Tag {
    Absent,
    Exactly(&'static str),
    KeyedHash,
}

#[tokio::test]
async fn custom_identifier_is_sent_only_when_enabled_in_its_form() {
    let user_id: &[(&str, &str)] = &[("CF_CUSTOM_IDENTIFIER", "user_id")];
    let hashed: &[(&str, &str)] = &[
        ("CF_CUSTOM_IDENTIFIER", "hashed"),
        ("CF_CUSTOM_IDENTIFIER_KEY", "pepper"),
    ];
    for (settings, expected) in [
        (&[][..], Tag::Absent),
        (user_id, Tag::Exactly("@alice:localhost")),
        (hashed, Tag::KeyedHash),
    ] {
        let stack =
            Stack::start_with(SynapseOptions::default(), CloudflareOptions::default(), settings).await;
        stack.get(V3, Some(ALICE)).await.assert_status(200);
        let mint = stack.cloudflare.requests().pop().expect("a mint").json();
        match expected {
            Tag::Absent => {
                assert_eq!(mint, serde_json::json!({"ttl": 86400}), "off by default");
                assert_eq!(stack.whoami_calls(), 0);
            }
            Tag::Exactly(user_id) => assert_eq!(mint["customIdentifier"], user_id),
            Tag::KeyedHash => {
                let tag = mint["customIdentifier"].as_str().expect("tag");
                assert_eq!(tag.len(), 32);
                assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
            }
        }
        // Only when minting: a reused credential asks Synapse no whoami.
        let before = stack.whoami_calls();
        stack.get(V3, Some(ALICE)).await.assert_status(200);
        assert_eq!(stack.whoami_calls(), before);
    }
}

#[tokio::test]
async fn a_custom_domain_rewrites_only_turn_uris() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[("TURN_CUSTOM_DOMAIN", "turn.example.org")],
    )
    .await;
    let body = stack.get(V3, Some(ALICE)).await.json();
    assert_eq!(
        body["uris"],
        serde_json::json!([
            "turn:turn.example.org:3478?transport=udp",
            "turn:turn.example.org:3478?transport=tcp",
            "turn:turn.example.org:80?transport=tcp",
            "turns:turn.cloudflare.com:5349?transport=tcp",
            "turns:turn.cloudflare.com:443?transport=tcp",
        ])
    );
}

#[tokio::test]
async fn metrics_move_with_the_requests() {
    let stack = Stack::start().await;
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    stack.get(V3, Some("syt_nope")).await.assert_status(401);
    let response = send(stack.daemon.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    response.assert_status(200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.contains("openmetrics-text"))
    );
    let text = response.text();
    for line in [
        "turnify_requests_total{outcome=\"cloudflare\",auth=\"homeserver\"} 1",
        "turnify_requests_total{outcome=\"reused\",auth=\"homeserver\"} 1",
        "turnify_requests_total{outcome=\"passed-through\",auth=\"homeserver\"} 1",
        "turnify_cloudflare_calls_total{result=\"ok\"} 1",
        "turnify_synapse_request_duration_seconds_count 3",
        "turnify_cloudflare_request_duration_seconds_count 1",
        "turnify_credential_cache_entries 1",
        "turnify_cloudflare_backoff_active 0",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    assert!(!text.contains(ALICE));
}

/// Finding 10: serve-while-failing judges the earlier credential by the
/// clock after the failed mint, not before it: a slow failure must not hand
/// out a credential with less than a minute left.
#[tokio::test]
async fn serve_while_failing_reads_the_clock_after_the_failed_mint() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[("CF_TIMEOUT_SECONDS", "1")],
    )
    .await;
    let clock = stack.daemon.state.clock();
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    // 61 s of life left: not reusable, but enough to serve while failing.
    clock.advance(Duration::from_secs(86_400 - 61));
    stack.cloudflare.set_behaviour(CfBehaviour::Hang);
    let addr = stack.daemon.addr;
    let request = tokio::spawn(async move { crate::harness::get(addr, V3, Some(ALICE)).await });
    crate::harness::wait_until("the second mint reaches Cloudflare", || {
        stack.cloudflare.requests().len() == 2
    })
    .await;
    // While Cloudflare keeps the daemon waiting, the credential ages.
    clock.advance(Duration::from_secs(30));
    let response = request.await.expect("request task");
    assert_eq!(
        response.assert_status(200).text(),
        "{}",
        "31 s left at answer time: Synapse's own answer, not the old credential"
    );
}
