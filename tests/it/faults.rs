//! The fault matrix: every way Synapse or Cloudflare can misbehave, one test
//! per cell. Each asserts the status, the body (our Matrix error, or
//! Synapse's own answer unmodified: docs/behaviour.md §3) and a latency bound: the
//! timeout that applies, plus a small margin.

use std::time::{Duration, Instant};

use turnify_fakes::{
    CfBehaviour, CloudflareOptions, FakeCloudflare, FakeSynapse, SynapseBehaviour, SynapseOptions,
};

use crate::harness::{ALICE, Daemon, RawResponse, Stack, assert_counted, closed_port, get, metrics, send};

const V3: &str = "/_matrix/client/v3/voip/turnServer";

/// Both upstream timeouts, short so the slow cells stay quick.
const TIMEOUT: Duration = Duration::from_millis(500);
const TIMEOUTS: [(&str, &str); 2] = [("SYNAPSE_TIMEOUT_SECONDS", "0.5"), ("CF_TIMEOUT_SECONDS", "0.5")];
/// Room for scheduling on a busy two-core machine. A fault with no timeout
/// involved (a refused connection, an error status) must be answered within
/// this alone.
const MARGIN: Duration = Duration::from_secs(1);

/// Synapse's 200 when it has coturn configured: the fallback must hand it
/// back byte for byte.
const COTURN: &str = r#"{"username":"1700086400:@alice:localhost","password":"coturn-password","ttl":86400000,"uris":["turn:turn.example.org:3478?transport=udp","turn:turn.example.org:3478?transport=tcp"]}"#;

async fn timed_get(addr: std::net::SocketAddr) -> (RawResponse, Duration) {
    let started = Instant::now();
    let response = get(addr, V3, Some(ALICE)).await;
    (response, started.elapsed())
}

#[track_caller]
fn assert_within(elapsed: Duration, bound: Duration) {
    assert!(elapsed < bound, "took {elapsed:?}, bound {bound:?}");
}

#[track_caller]
fn assert_synapse_headers(response: &RawResponse) {
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        response.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
}

/// A healthy Synapse with coturn configured, and the daemon sending mints
/// to `cloudflare_url`.
async fn coturn_synapse_and_daemon(cloudflare_url: &str) -> (FakeSynapse, Daemon) {
    let synapse = FakeSynapse::start(SynapseOptions {
        turn_body: COTURN.to_owned(),
        ..SynapseOptions::default()
    })
    .await;
    let daemon = Daemon::start(&synapse.base_url(), cloudflare_url, &TIMEOUTS).await;
    (synapse, daemon)
}

/// One Cloudflare cell: the client gets Synapse's coturn answer unmodified,
/// within the Cloudflare timeout plus the margin, and `/metrics` counts the
/// failure as `result`, so the cell took the path it names. Returns how long
/// the answer took.
async fn assert_cloudflare_falls_back(cloudflare_url: &str, result: &str) -> Duration {
    let (_synapse, daemon) = coturn_synapse_and_daemon(cloudflare_url).await;
    let (response, elapsed) = timed_get(daemon.addr).await;
    response.assert_status(200);
    assert_eq!(response.text(), COTURN);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_synapse_headers(&response);
    assert_within(elapsed, TIMEOUT + MARGIN);
    assert_counted(
        &metrics(daemon.addr).await,
        &format!("turnify_cloudflare_calls_total{{result=\"{result}\"}} 1"),
    );
    elapsed
}

/// A fake Cloudflare with its real key and token, answering with `behaviour`.
async fn cloudflare(behaviour: CfBehaviour) -> FakeCloudflare {
    FakeCloudflare::start(CloudflareOptions {
        behaviour,
        ..CloudflareOptions::default()
    })
    .await
}

/// A fake Cloudflare answering `201` with this JSON body.
async fn cloudflare_answering(body: &str) -> FakeCloudflare {
    cloudflare(CfBehaviour::Raw {
        status: 201,
        content_type: "application/json".into(),
        body: body.into(),
    })
    .await
}

// Cloudflare misbehaves, Synapse is healthy.

#[tokio::test]
async fn cloudflare_refusing_connections_falls_back() {
    let dead = closed_port();
    assert_cloudflare_falls_back(&format!("{}/v1", &*dead), "connect").await;
}

#[tokio::test]
async fn cloudflare_hanging_falls_back_at_its_timeout() {
    let fake = cloudflare(CfBehaviour::Hang).await;
    let elapsed = assert_cloudflare_falls_back(&fake.base_url(), "timeout").await;
    assert!(elapsed >= TIMEOUT - Duration::from_millis(50), "{elapsed:?}");
}

#[tokio::test]
async fn cloudflare_400_falls_back() {
    let fake = cloudflare(CfBehaviour::fail(400)).await;
    assert_cloudflare_falls_back(&fake.base_url(), "status").await;
}

#[tokio::test]
async fn cloudflare_refusing_the_api_token_falls_back() {
    let fake = FakeCloudflare::start(CloudflareOptions {
        api_token: "some-other-token".into(),
        ..CloudflareOptions::default()
    })
    .await;
    assert_cloudflare_falls_back(&fake.base_url(), "status").await;
    assert_eq!(fake.mint_count(), 0);
}

#[tokio::test]
async fn cloudflare_403_falls_back() {
    let fake = cloudflare(CfBehaviour::fail(403)).await;
    assert_cloudflare_falls_back(&fake.base_url(), "status").await;
}

#[tokio::test]
async fn cloudflare_not_knowing_the_key_id_falls_back() {
    let fake = FakeCloudflare::start(CloudflareOptions {
        key_id: "some-other-key".into(),
        ..CloudflareOptions::default()
    })
    .await;
    assert_cloudflare_falls_back(&fake.base_url(), "status").await;
    assert_eq!(fake.mint_count(), 0);
}

#[tokio::test]
async fn cloudflare_429_with_retry_after_falls_back_and_is_left_alone_meanwhile() {
    let fake = cloudflare(CfBehaviour::Status {
        status: 429,
        body: r#"{"error":"rate limited"}"#.into(),
        retry_after: Some(120),
    })
    .await;
    let (_synapse, daemon) = coturn_synapse_and_daemon(&fake.base_url()).await;
    for _ in 0..3 {
        let (response, elapsed) = timed_get(daemon.addr).await;
        response.assert_status(200);
        assert_eq!(response.text(), COTURN);
        assert_within(elapsed, MARGIN);
    }
    assert_eq!(fake.requests().len(), 1, "Retry-After is honoured at once");
    let metrics = metrics(daemon.addr).await;
    assert_counted(&metrics, r#"turnify_cloudflare_calls_total{result="status"} 1"#);
    assert_counted(&metrics, "turnify_cloudflare_backoff_active 1");
}

#[tokio::test]
async fn cloudflare_500_falls_back() {
    let fake = cloudflare(CfBehaviour::fail(500)).await;
    assert_cloudflare_falls_back(&fake.base_url(), "status").await;
}

#[tokio::test]
async fn cloudflare_503_falls_back() {
    let fake = cloudflare(CfBehaviour::fail(503)).await;
    assert_cloudflare_falls_back(&fake.base_url(), "status").await;
}

#[tokio::test]
async fn cloudflare_answering_html_falls_back() {
    let fake = cloudflare(CfBehaviour::Raw {
        status: 201,
        content_type: "text/html".into(),
        body: "<html><body>Bad gateway</body></html>".into(),
    })
    .await;
    assert_cloudflare_falls_back(&fake.base_url(), "not-json").await;
}

#[tokio::test]
async fn cloudflare_json_without_ice_servers_falls_back() {
    let fake = cloudflare_answering(r#"{"success":true,"result":{}}"#).await;
    assert_cloudflare_falls_back(&fake.base_url(), "shape").await;
}

#[tokio::test]
async fn cloudflare_empty_ice_servers_falls_back() {
    let fake = cloudflare_answering(r#"{"iceServers":[]}"#).await;
    assert_cloudflare_falls_back(&fake.base_url(), "unusable").await;
}

#[tokio::test]
async fn cloudflare_turn_only_on_port_53_falls_back() {
    let fake = cloudflare_answering(
        r#"{"iceServers":[{"urls":["turn:turn.cloudflare.com:53?transport=udp","turns:turn.cloudflare.com:53?transport=tcp"],"username":"u","credential":"p"}]}"#,
    )
    .await;
    assert_cloudflare_falls_back(&fake.base_url(), "unusable").await;
}

#[tokio::test]
async fn cloudflare_stun_only_falls_back() {
    let fake = cloudflare_answering(
        r#"{"iceServers":[{"urls":["stun:stun.cloudflare.com:3478"],"username":"u","credential":"p"}]}"#,
    )
    .await;
    assert_cloudflare_falls_back(&fake.base_url(), "unusable").await;
}

#[tokio::test]
async fn cloudflare_turn_entry_without_credential_falls_back() {
    let fake = cloudflare_answering(
        r#"{"iceServers":[{"urls":["turn:turn.cloudflare.com:3478?transport=udp"],"username":"u"}]}"#,
    )
    .await;
    assert_cloudflare_falls_back(&fake.base_url(), "unusable").await;
}

#[tokio::test]
async fn cloudflare_entries_with_different_credentials_fall_back() {
    let fake = cloudflare_answering(
        r#"{"iceServers":[
            {"urls":["turn:a.example.com:3478?transport=udp"],"username":"u1","credential":"p1"},
            {"urls":["turn:b.example.com:3478?transport=udp"],"username":"u2","credential":"p2"}]}"#,
    )
    .await;
    assert_cloudflare_falls_back(&fake.base_url(), "unusable").await;
}

#[tokio::test]
async fn cloudflare_10_mb_answer_is_cut_off_by_the_size_cap() {
    const SIZE: usize = 10_000_000;
    let fake = cloudflare(CfBehaviour::Huge { bytes: SIZE }).await;
    assert_cloudflare_falls_back(&fake.base_url(), "too-large").await;
    // The read stopped at the cap and the connection was dropped, so the fake
    // never got to the end: loopback socket buffers let it write some
    // megabytes past the 1 MiB cap (4.4 MB measured), not the whole body.
    let sent = fake.huge_bytes_sent();
    assert!(sent < SIZE, "{sent} of {SIZE} bytes were pulled");
}

// Synapse misbehaves.

/// A stack with Synapse behaving like `behaviour` and the short timeouts.
async fn stack_with_synapse(behaviour: SynapseBehaviour) -> Stack {
    let synapse = SynapseOptions {
        behaviour,
        turn_body: COTURN.to_owned(),
        ..SynapseOptions::default()
    };
    Stack::start_with(synapse, CloudflareOptions::default(), &TIMEOUTS).await
}

#[track_caller]
fn assert_our_error(response: &RawResponse, status: u16, error: &str) {
    response.assert_matrix_error(status, "M_UNKNOWN");
    assert_eq!(response.json()["error"], error);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_synapse_headers(response);
}

#[tokio::test]
async fn synapse_refusing_connections_is_a_502() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let dead = closed_port();
    let daemon = Daemon::start(&dead, &cloudflare.base_url(), &TIMEOUTS).await;
    let (response, elapsed) = timed_get(daemon.addr).await;
    assert_our_error(&response, 502, "The homeserver could not be reached");
    assert_within(elapsed, MARGIN);
    assert_eq!(cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn synapse_unresolvable_is_a_502() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    // `.invalid` never resolves (RFC 2606), so no packet leaves the machine.
    let daemon = Daemon::start("http://synapse.invalid:8008", &cloudflare.base_url(), &TIMEOUTS).await;
    let started = Instant::now();
    let response = send(daemon.addr, &format!("GET {V3} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_our_error(&response, 502, "The homeserver could not be reached");
    assert_within(started.elapsed(), TIMEOUT + MARGIN);
}

#[tokio::test]
async fn synapse_silent_is_a_504_at_its_timeout() {
    let stack = stack_with_synapse(SynapseBehaviour::Hang).await;
    let (response, elapsed) = timed_get(stack.daemon.addr).await;
    assert_our_error(&response, 504, "The homeserver did not answer in time");
    assert!(elapsed >= TIMEOUT - Duration::from_millis(50), "{elapsed:?}");
    assert_within(elapsed, TIMEOUT + MARGIN);
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn synapse_500_is_passed_on_unchanged() {
    let body = r#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#;
    let stack = stack_with_synapse(SynapseBehaviour::Status {
        status: 500,
        body: body.into(),
        headers: vec![],
    })
    .await;
    let (response, elapsed) = timed_get(stack.daemon.addr).await;
    response.assert_status(500);
    assert_eq!(response.text(), body);
    assert_synapse_headers(&response);
    assert_within(elapsed, MARGIN);
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn synapse_200_with_a_non_json_body_still_gets_credentials_or_comes_back_unchanged() {
    // docs/behaviour.md §3: any 200 means "authenticated"; its body only matters as the fallback.
    let html = "<html><body>It works!</body></html>";
    let stack = stack_with_synapse(SynapseBehaviour::Real).await;
    stack.synapse.set_turn_body(html);
    let (response, elapsed) = timed_get(stack.daemon.addr).await;
    response.assert_status(200);
    let minted = stack.cloudflare.last_minted().expect("a mint");
    assert_eq!(response.json()["password"], minted.credential.as_str());
    assert_within(elapsed, MARGIN);

    stack.cloudflare.set_behaviour(CfBehaviour::fail(503));
    let response = stack.get(V3, Some(crate::harness::BOB)).await;
    response.assert_status(200);
    assert_eq!(response.text(), html);
}

#[tokio::test]
async fn synapse_closing_mid_answer_is_a_502() {
    let stack = stack_with_synapse(SynapseBehaviour::CloseMidAnswer).await;
    let (response, elapsed) = timed_get(stack.daemon.addr).await;
    assert_our_error(&response, 502, "The homeserver sent an invalid answer");
    assert_within(elapsed, MARGIN);
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn synapse_trickling_past_its_timeout_is_a_504_at_the_timeout() {
    // COTURN at 50 ms a byte would take 10 s.
    let stack = stack_with_synapse(SynapseBehaviour::Trickle(Duration::from_millis(50))).await;
    let (response, elapsed) = timed_get(stack.daemon.addr).await;
    assert_our_error(&response, 504, "The homeserver did not answer in time");
    assert!(elapsed >= TIMEOUT - Duration::from_millis(50), "{elapsed:?}");
    assert_within(elapsed, TIMEOUT + MARGIN);
}

#[tokio::test]
async fn synapse_trickling_within_its_timeout_is_read_whole() {
    // 200 bytes, one every millisecond, under a 5 s timeout; Cloudflare
    // failing, so the reassembled answer is what the client gets.
    let synapse = SynapseOptions {
        behaviour: SynapseBehaviour::Trickle(Duration::from_millis(1)),
        turn_body: COTURN.to_owned(),
        ..SynapseOptions::default()
    };
    let stack = Stack::start_with(
        synapse,
        CloudflareOptions {
            behaviour: CfBehaviour::fail(503),
            ..CloudflareOptions::default()
        },
        &[("SYNAPSE_TIMEOUT_SECONDS", "5")],
    )
    .await;
    let (response, elapsed) = timed_get(stack.daemon.addr).await;
    response.assert_status(200);
    assert_eq!(response.text(), COTURN);
    assert_within(elapsed, Duration::from_secs(5) + MARGIN);
}

// Both: a long Cloudflare outage with every request minting.

#[tokio::test]
async fn a_thousand_requests_during_a_cloudflare_outage_stay_fast_without_reuse() {
    let fake = cloudflare(CfBehaviour::Hang).await;
    let synapse = FakeSynapse::start(SynapseOptions {
        turn_body: COTURN.to_owned(),
        ..SynapseOptions::default()
    })
    .await;
    // Only Cloudflare's timeout is short. On a loaded machine one of a
    // thousand answers of the fake Synapse now and then takes longer than
    // half a second, and a 504 for it says nothing about Cloudflare.
    let daemon = Daemon::start(
        &synapse.base_url(),
        &fake.base_url(),
        &[TIMEOUTS[1], ("CREDENTIAL_REUSE", "false")],
    )
    .await;
    let mut latencies = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let (response, elapsed) = timed_get(daemon.addr).await;
        response.assert_status(200);
        assert_eq!(response.text(), COTURN);
        latencies.push(elapsed);
    }
    // Three timeouts, each within its deadline, open the back-off; no
    // further request waits on Cloudflare, and most are answered at once
    // (the median: one request slowed by the machine is not the daemon's).
    assert_eq!(fake.requests().len(), 3);
    let mut skipped = latencies.split_off(3);
    for waited in latencies {
        assert_within(waited, TIMEOUT + MARGIN);
    }
    skipped.sort();
    let median = skipped[skipped.len() / 2];
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert_counted(
        &metrics(daemon.addr).await,
        r#"turnify_cloudflare_calls_total{result="skipped-backoff"} 997"#,
    );
}
