//! A hostile world against the built binary (issue 6): secrets never reach
//! any output, SIGTERM drains a full house of requests, and reaching the
//! connection cap is announced in the log.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnify_fakes::{CfBehaviour, CloudflareOptions, FakeCloudflare, FakeSynapse, IceShape, SynapseOptions};

use crate::binary::{Running, run_to_end};
use crate::harness::{
    ALICE, BOB, CF_KEY, RawResponse, WAIT, connect_and_send, get, parse_response, read_until_closed, send,
    wait_until,
};

const TURN: &str = "/_matrix/client/v3/voip/turnServer";

/// Every secret the hygiene test hands out carries this marker, so even a
/// part of one is found in the output.
const MARKER: &str = "CANARY";
const ACCESS_TOKEN: &str = "syt_CANARY_access_token_7f3a9d";
/// A user whose mints fail, so that its requests fall back to coturn.
const FALLBACK_TOKEN: &str = "syt_CANARY_fallback_token_21c4e8";
/// A user whose one successful mint ends a run of failures.
const RESET_TOKEN: &str = "syt_CANARY_reset_token_b8e05a";
const INVALID_TOKEN: &str = "syt_CANARY_invalid_token_5d17f2";
const CF_API_TOKEN: &str = "CANARY-cloudflare-api-token-9191";
const IDENTIFIER_KEY: &str = "CANARY-custom-identifier-key-4e6b";
const COTURN_USERNAME: &str = "1795352607:CANARY-coturn-user";
const COTURN_PASSWORD: &str = "CANARY-coturn-password-0c3f";
/// Cloudflare's answer names no TURN URL a client can use, so its
/// credential is never handed out, and must not be logged either.
const UNUSABLE_ANSWER: &str = r#"{"iceServers":[{"urls":["stun:stun.cloudflare.com:3478","turn:turn.cloudflare.com:53"],"username":"CANARY-unusable-user","credential":"CANARY-unusable-password"}]}"#;

#[tokio::test]
async fn no_secret_reaches_any_output_even_at_trace_level() {
    tokio::join!(daemon_scenario("text"), daemon_scenario("json"));
    check_scenario().await;
}

/// Every kind of request and upstream failure, with LOG_LEVEL=trace.
/// The settings the daemon and `check` share: every secret a canary, and
/// the most verbose log level.
fn canary_settings<'a>(synapse_url: &'a str, cloudflare_url: &'a str) -> [(&'static str, &'a str); 7] {
    [
        ("LOG_LEVEL", "trace"),
        ("SYNAPSE_BASE_URL", synapse_url),
        ("CF_TURN_API_BASE_URL", cloudflare_url),
        ("CF_TURN_KEY_ID", CF_KEY),
        ("CF_TURN_API_TOKEN", CF_API_TOKEN),
        ("CF_CUSTOM_IDENTIFIER", "hashed"),
        ("CF_CUSTOM_IDENTIFIER_KEY", IDENTIFIER_KEY),
    ]
}

async fn daemon_scenario(format: &str) {
    let coturn_answer = format!(
        r#"{{"username":"{COTURN_USERNAME}","password":"{COTURN_PASSWORD}","ttl":86400,"uris":["turn:turn.example.test:3478?transport=udp"]}}"#
    );
    let synapse = FakeSynapse::start(SynapseOptions {
        users: [
            (ACCESS_TOKEN, "@alice:localhost"),
            (FALLBACK_TOKEN, "@bob:localhost"),
            (RESET_TOKEN, "@carol:localhost"),
        ]
        .map(|(token, user)| (token.to_owned(), user.to_owned()))
        .to_vec(),
        turn_body: coturn_answer.clone(),
        ..SynapseOptions::default()
    })
    .await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions {
        api_token: CF_API_TOKEN.to_owned(),
        ..CloudflareOptions::default()
    })
    .await;
    let (synapse_url, cloudflare_url) = (synapse.base_url(), cloudflare.base_url());
    let daemon = Running::start(
        &[
            &canary_settings(&synapse_url, &cloudflare_url)[..],
            &[("LOG_FORMAT", format), ("CF_TIMEOUT_SECONDS", "0.5")],
        ]
        .concat(),
    )
    .await;
    let addr = daemon.addr;
    let mut handed_out = Vec::new();

    // Minted with the token in the header, reused with it in the query.
    let minted = get(addr, TURN, Some(ACCESS_TOKEN)).await;
    handed_out.extend(cloudflare_credential(&minted));
    let reused = send(
        addr,
        &format!("GET {TURN}?access_token={ACCESS_TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(cloudflare_credential(&reused), cloudflare_credential(&minted));
    assert_eq!(cloudflare.mint_count(), 1, "the second answer was reused");

    get(addr, TURN, Some(INVALID_TOKEN))
        .await
        .assert_matrix_error(401, "M_UNKNOWN_TOKEN");
    send(
        addr,
        &format!("GET {TURN}?access_token={INVALID_TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .assert_matrix_error(401, "M_UNKNOWN_TOKEN");

    // Each failure falls back to Synapse's coturn answer. Three in a row
    // start the back-off, so a success comes between the first two and the
    // next three, and the last request finds Cloudflare skipped.
    let failures = [
        CfBehaviour::Hang,
        CfBehaviour::fail(401),
        CfBehaviour::fail(503),
        CfBehaviour::Raw {
            status: 201,
            content_type: "text/html".to_owned(),
            body: "<html>Bad gateway</html>".to_owned(),
        },
        CfBehaviour::Raw {
            status: 201,
            content_type: "application/json".to_owned(),
            body: UNUSABLE_ANSWER.to_owned(),
        },
    ];
    for (round, failure) in failures.into_iter().enumerate() {
        if round == 2 {
            cloudflare.set_behaviour(CloudflareOptions::default().behaviour);
            handed_out.extend(cloudflare_credential(&get(addr, TURN, Some(RESET_TOKEN)).await));
        }
        cloudflare.set_behaviour(failure);
        assert_falls_back(&get(addr, TURN, Some(FALLBACK_TOKEN)).await, &coturn_answer);
    }
    let asked = cloudflare.requests().len();
    assert_falls_back(&get(addr, TURN, Some(FALLBACK_TOKEN)).await, &coturn_answer);
    assert_eq!(cloudflare.requests().len(), asked, "backed off");

    let whoami = format!("/_matrix/client/v3/account/whoami?access_token={ACCESS_TOKEN}");
    get(addr, &whoami, None).await.assert_status(200);
    get(addr, "/readyz", None).await.assert_status(200);
    let metrics = get(addr, "/metrics", None).await;
    metrics.assert_status(200);
    drop(synapse);
    get(addr, TURN, Some(ACCESS_TOKEN))
        .await
        .assert_matrix_error(502, "M_UNKNOWN");

    let exited = daemon.terminate().await;
    assert_eq!(exited.code, Some(0), "{}", exited.stderr);
    assert_no_secret(&format!("{format} stdout"), &exited.stdout, &handed_out);
    assert_no_secret(&format!("{format} log"), &exited.stderr, &handed_out);
    assert_no_secret("/metrics", &metrics.text(), &handed_out);
    // The log still says what happened, one line per request.
    for outcome in [
        "cloudflare",
        "reused",
        "synapse-fallback",
        "passed-through",
        "upstream-error",
    ] {
        let field = match format {
            "json" => format!(r#""outcome":"{outcome}""#),
            _ => format!("outcome={outcome}"),
        };
        assert!(
            exited.stderr.contains(&field),
            "{field} missing:\n{}",
            exited.stderr
        );
    }
}

/// `check` with the same secrets, once passing and once with Cloudflare
/// refusing the API token.
async fn check_scenario() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    for (accepted_token, expected_code) in [(CF_API_TOKEN, 0), ("another-token", 1)] {
        let cloudflare = FakeCloudflare::start(CloudflareOptions {
            api_token: accepted_token.to_owned(),
            ..CloudflareOptions::default()
        })
        .await;
        let (synapse_url, cloudflare_url) = (synapse.base_url(), cloudflare.base_url());
        let (code, stdout, stderr) =
            run_to_end(&["check"], &canary_settings(&synapse_url, &cloudflare_url)).await;
        assert_eq!(code, Some(expected_code), "{stdout}{stderr}");
        let minted: Vec<String> = cloudflare
            .last_minted()
            .map(|m| vec![m.username, m.credential])
            .unwrap_or_default();
        assert_eq!(minted.is_empty(), expected_code == 1, "{stdout}");
        assert_no_secret("check's output", &format!("{stdout}{stderr}"), &minted);
    }
}

#[tokio::test]
async fn sigterm_with_50_requests_in_flight_refuses_new_connections_and_answers_all_50() {
    const IN_FLIGHT: usize = 50;
    const GRACE: Duration = Duration::from_secs(10);
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions {
        behaviour: CfBehaviour::Mint {
            shape: IceShape::List,
            latency: Duration::from_secs(1),
        },
        ..CloudflareOptions::default()
    })
    .await;
    // Without reuse every request mints, so all 50 wait on Cloudflare.
    let daemon = Running::against(
        &synapse,
        &cloudflare,
        &[("CREDENTIAL_REUSE", "false"), ("SHUTDOWN_GRACE_SECONDS", "10")],
    )
    .await;
    let addr = daemon.addr;
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| tokio::spawn(get(addr, TURN, Some(ALICE))))
        .collect();
    wait_until("all 50 requests to wait on Cloudflare", || {
        cloudflare.requests().len() == IN_FLIGHT
    })
    .await;

    let signalled = Instant::now();
    daemon.sigterm().await;
    wait_until("new connections to be refused", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert_eq!(
        cloudflare.mint_count(),
        0,
        "the listener closed while all 50 were still waiting on Cloudflare"
    );

    let mut passwords = HashSet::new();
    for request in requests {
        let response = request.await.expect("request task");
        passwords.insert(cloudflare_credential(&response)[1].clone());
    }
    assert_eq!(passwords.len(), IN_FLIGHT, "each got its own fresh credential");
    let exited = daemon.exit().await;
    let took = signalled.elapsed();
    assert_eq!(exited.code, Some(0), "{}", exited.stderr);
    assert!(took < GRACE, "exited {took:?} after SIGTERM");
    assert!(
        exited.stderr.contains("all connections closed"),
        "drained, not cut off by the grace period:\n{}",
        exited.stderr
    );
}

#[tokio::test]
async fn reaching_max_connections_is_logged_once_and_waiting_connections_are_served_later() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let daemon = Running::against(&synapse, &cloudflare, &[("MAX_CONNECTIONS", "2")]).await;
    let addr = daemon.addr;
    // Two keep-alive connections, idle after one answer each, hold both
    // slots: a permit lives as long as its connection.
    let mut first = TcpStream::connect(addr).await.expect("connect");
    request_keeping_open(&mut first).await.assert_status(200);
    let mut second = TcpStream::connect(addr).await.expect("connect");
    request_keeping_open(&mut second).await.assert_status(200);
    daemon
        .wait_for_log("the connection cap warning", |log| cap_warnings(log).len() == 1)
        .await;

    // The kernel's backlog takes two more; the daemon does not accept them
    // while it keeps answering on the connections it holds.
    let waiting = [ALICE, BOB].map(|token| {
        format!(
            "GET {TURN} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
    });
    let third = connect_and_send(addr, waiting[0].as_bytes()).await;
    let fourth = connect_and_send(addr, waiting[1].as_bytes()).await;
    request_keeping_open(&mut second).await.assert_status(200);
    assert_eq!(
        synapse.requests().len(),
        3,
        "only the two held connections were served"
    );

    // One slot frees: the two waiting connections are served in turn.
    drop(first);
    read_until_closed(third).await.assert_status(200);
    read_until_closed(fourth).await.assert_status(200);

    let log = daemon.terminate().await.stderr;
    let warnings = cap_warnings(&log);
    assert_eq!(
        warnings.len(),
        1,
        "one warning while the cap held, not one per waiting connection:\n{log}"
    );
    let warning = &warnings[0];
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["max_connections"], 2, "{warning}");
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("MAX_CONNECTIONS")),
        "names the setting: {warning}"
    );
}

/// The JSON log events about the connection cap.
fn cap_warnings(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.contains("connection limit reached"))
        })
        .collect()
}

/// One turnServer request on a connection that stays open, and its whole
/// answer (read by its Content-Length).
async fn request_keeping_open(stream: &mut TcpStream) -> RawResponse {
    let request = format!("GET {TURN} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let read = stream.read(&mut buf).await.expect("read answer");
            assert!(read > 0, "closed mid-answer: {:?}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..read]);
            if raw.windows(4).any(|w| w == b"\r\n\r\n") {
                let response = parse_response(&raw);
                let length: usize = response
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .expect("a Content-Length");
                if response.body.len() >= length {
                    return response;
                }
            }
        }
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("answer within the wait")
}

/// The username and password of a Cloudflare answer.
#[track_caller]
fn cloudflare_credential(response: &RawResponse) -> [String; 2] {
    response.assert_status(200);
    let body = response.json();
    assert!(
        body["uris"][0]
            .as_str()
            .is_some_and(|uri| uri.contains("turn.cloudflare.com")),
        "{body}"
    );
    ["username", "password"].map(|field| body[field].as_str().expect("a string").to_owned())
}

/// Synapse's coturn answer, unchanged: the coturn password really was in play.
#[track_caller]
fn assert_falls_back(response: &RawResponse, coturn_answer: &str) {
    response.assert_status(200);
    assert_eq!(response.text(), coturn_answer);
}

#[track_caller]
fn assert_no_secret(output: &str, text: &str, handed_out: &[String]) {
    for line in text.lines() {
        assert!(!line.contains(MARKER), "a secret leaked into {output}: {line}");
        for secret in handed_out {
            assert!(
                !line.contains(secret.as_str()),
                "a Cloudflare credential leaked into {output}: {line}"
            );
        }
    }
}
