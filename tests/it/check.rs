//! `matrix-turnify check` against the fakes: a clean report, and one per
//! kind of misconfiguration, each naming the variable to fix; with the
//! LiveKit settings, a test join through the daemon's front door.

use std::time::Duration;

use livekit_protocol::{LeaveRequest, SignalRequest, signal_request};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;
use turnify_fakes::{
    CfBehaviour, CloudflareOptions, FakeCloudflare, FakeLiveKit, FakeSynapse, Flavour, LiveKitOptions,
    Session, SessionEnd, SynapseBehaviour, SynapseOptions,
};

use crate::binary::run_to_end;
use crate::harness::{Daemon, assert_counted, closed_port, metrics_once_all_ended, wait_until};

async fn check(synapse: &str, cloudflare: &FakeCloudflare, key: &str, token: &str) -> (Option<i32>, String) {
    let base = cloudflare.base_url();
    let (code, stdout, _) = run_to_end(
        &["check"],
        &[
            ("SYNAPSE_BASE_URL", synapse),
            ("CF_TURN_API_BASE_URL", &base),
            ("CF_TURN_KEY_ID", key),
            ("CF_TURN_API_TOKEN", token),
        ],
    )
    .await;
    (code, stdout)
}

#[tokio::test]
async fn a_good_configuration_passes_and_the_test_credential_is_revoked() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(&synapse.base_url(), &cloudflare, "test-key-id", "test-api-token").await;
    assert_eq!(code, Some(0), "{report}");
    assert!(!report.contains('✗'), "{report}");
    assert!(report.contains("All 8 checks passed, 1 skipped."), "{report}");
    assert!(
        report.contains("✓ the homeserver refuses /_matrix/client/v3/voip/turnServer without a token (401)"),
        "{report}"
    );
    let minted = cloudflare.last_minted().expect("a test credential was minted");
    assert_eq!(minted.ttl, 60);
    assert_eq!(cloudflare.revoked(), std::slice::from_ref(&minted.username));
    assert!(
        report.contains("turns:turn.cloudflare.com:5349?transport=tcp"),
        "{report}"
    );
    assert!(!report.contains(":53?"), "{report}");
    assert!(!report.contains(&minted.credential), "no password in the report");
}

#[tokio::test]
async fn a_bad_api_token_names_the_401_and_the_variable() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(&synapse.base_url(), &cloudflare, "test-key-id", "wrong-token").await;
    assert_eq!(code, Some(1));
    let failure = report
        .lines()
        .find(|l| l.starts_with('✗'))
        .expect("a failed line");
    assert!(failure.contains("401"), "{report}");
    assert!(report.contains("check CF_TURN_API_TOKEN"), "{report}");
    assert!(!report.contains("wrong-token"), "the token is not printed");
}

#[tokio::test]
async fn a_wrong_key_id_names_the_variable() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(&synapse.base_url(), &cloudflare, "another-key", "test-api-token").await;
    assert_eq!(code, Some(1));
    assert!(report.contains("404"), "{report}");
    assert!(report.contains("check CF_TURN_KEY_ID"), "{report}");
}

/// Given a homeserver nothing can reach, `check` says so in one ✗ line with
/// a plain reason (not the HTTP client's error chain), once for the cause
/// rather than once per question, and still checks Cloudflare.
#[tokio::test]
async fn an_unreachable_homeserver_is_one_line_with_a_plain_reason() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let closed = closed_port();
    let place = closed.trim_start_matches("http://").to_owned();
    let cases = [
        (
            closed.to_string(),
            format!("nothing listens on {place} (connection refused)"),
        ),
        // `.invalid` never resolves (RFC 2606).
        (
            "http://synapse.invalid:8008".to_owned(),
            "the name synapse.invalid does not resolve here".to_owned(),
        ),
    ];
    for (base, reason) in cases {
        let (code, report) = check(&base, &cloudflare, "test-key-id", "test-api-token").await;
        assert_eq!(code, Some(1));
        let failures: Vec<&str> = report.lines().filter(|l| l.starts_with('✗')).collect();
        assert_eq!(
            failures,
            [format!(
                "✗ the homeserver at {base} (SYNAPSE_BASE_URL) cannot be reached: {reason}"
            )],
            "{report}"
        );
        assert!(report.contains("→ check SYNAPSE_BASE_URL"), "{report}");
        assert!(report.contains("- 3 more homeserver checks not run"), "{report}");
        for raw in ["client error", "tcp connect error", "os error", "dns error"] {
            assert!(!report.contains(raw), "{raw:?} in {report}");
        }
        // Cloudflare is still checked, so one run shows every problem.
        assert!(report.contains("✓ Cloudflare accepts key"), "{report}");
    }
}

/// Given a `SYNAPSE_BASE_URL` that leads to the daemon (as the public URL
/// does, through the proxy), `check` names the loop in one ✗ line: its
/// request carries the daemon's `Via`, the daemon answers it at once, and
/// the answer comes back marked as the daemon's.
#[tokio::test]
async fn a_synapse_base_url_that_leads_back_to_the_daemon_is_named_as_a_loop() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let daemon = Daemon::start(&synapse.base_url(), &cloudflare.base_url(), &[]).await;
    let base = format!("http://{}", daemon.addr);
    let (code, report) = check(&base, &cloudflare, "test-key-id", "test-api-token").await;
    assert_eq!(code, Some(1), "{report}");
    let failures: Vec<&str> = report.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(
        failures,
        [format!(
            "✗ a request loop: SYNAPSE_BASE_URL must be the homeserver's own listener, not the public URL \
             (/health at {base} came back through matrix-turnify)"
        )],
        "{report}"
    );
    assert!(
        report.contains("→ set SYNAPSE_BASE_URL to the address"),
        "{report}"
    );
    assert!(
        synapse.requests().is_empty(),
        "the daemon forwarded nothing of check's"
    );
    assert!(report.contains("✓ Cloudflare accepts key"), "{report}");
}

/// Given several settings wrong and a misspelt name, `check` shows the
/// typo warning first, then one ✗ line per wrong setting.
#[tokio::test]
async fn typo_warnings_come_first_then_every_configuration_error() {
    let (code, report, _) = run_to_end(
        &["check"],
        &[("CF_TURN_API_TOKN", "typo"), ("CREDENTIAL_REUSE", "banana")],
    )
    .await;
    assert_eq!(code, Some(1));
    let marked: Vec<&str> = report.lines().filter(|l| l.starts_with(['✗', '!'])).collect();
    assert_eq!(marked.len(), 4, "{report}");
    assert_eq!(
        marked[0],
        "! CF_TURN_API_TOKN is not a matrix-turnify variable; did you mean CF_TURN_API_TOKEN?"
    );
    for (line, variable) in
        marked[1..]
            .iter()
            .zip(["CF_TURN_KEY_ID", "CF_TURN_API_TOKEN", "CREDENTIAL_REUSE"])
    {
        assert!(
            line.starts_with(&format!("✗ configuration: {variable}: ")),
            "{line} in {report}"
        );
    }
    assert!(
        marked[3].contains("true, yes, on, 1") && marked[3].contains("false, no, off, 0"),
        "{report}"
    );
    assert!(!report.contains("typo"), "the value is never shown: {report}");
    assert!(
        report.contains("3 of 4 checks failed, with 1 warning."),
        "{report}"
    );
}

/// Given a homeserver that answers 200 to a turnServer request without a
/// token, `check` warns (the daemon will not mint for such requests) and
/// still passes.
#[tokio::test]
async fn a_homeserver_serving_anonymous_turn_is_a_warning() {
    let synapse = FakeSynapse::start(SynapseOptions {
        anonymous_turn: true,
        ..SynapseOptions::default()
    })
    .await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(&synapse.base_url(), &cloudflare, "test-key-id", "test-api-token").await;
    assert_eq!(code, Some(0), "a warning is not a failure: {report}");
    assert!(
        report.contains("! the homeserver answers /_matrix/client/v3/voip/turnServer without a token: 200"),
        "{report}"
    );
    assert!(
        report
            .contains("this homeserver hands TURN to anonymous requests; the daemon will not mint for them"),
        "{report}"
    );
    assert!(
        report.contains("All 8 checks passed, with 1 warning, 1 skipped."),
        "{report}"
    );
}

/// Given an MSC4166 homeserver that answers 404 `M_NOT_FOUND` (here to a
/// request without a token, as conduwuit does with `turn_allow_guests`),
/// `check` says the whoami path is in use.
#[tokio::test]
async fn an_msc4166_homeserver_is_reported_as_such() {
    let synapse = FakeSynapse::start(SynapseOptions {
        behaviour: SynapseBehaviour::Status {
            status: 404,
            body: r#"{"errcode":"M_NOT_FOUND","error":"Not Found"}"#.to_owned(),
            headers: Vec::new(),
        },
        ..SynapseOptions::default()
    })
    .await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(&synapse.base_url(), &cloudflare, "test-key-id", "test-api-token").await;
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("✓ MSC4166 homeserver: whoami path in use"),
        "{report}"
    );
}

/// Finding 6: Conduit 0.10.12 answers `/health` with a 404 and tuwunel has
/// no such route; `check` must not call a working homeserver broken.
#[tokio::test]
async fn a_homeserver_without_health_is_checked_through_versions() {
    let synapse = FakeSynapse::start(SynapseOptions {
        flavour: Flavour::Msc4166,
        ..SynapseOptions::default()
    })
    .await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(&synapse.base_url(), &cloudflare, "test-key-id", "test-api-token").await;
    assert_eq!(code, Some(0), "{report}");
    assert!(!report.contains('✗'), "{report}");
    assert!(
        report.contains("✓ the homeserver has no /health (404); it answers /_matrix/client/versions"),
        "{report}"
    );
}

/// Finding 7: a `SYNAPSE_BASE_URL` that answers 200 to any token would let
/// the daemon mint for anyone; a made-up token finds that out.
#[tokio::test]
async fn a_homeserver_that_accepts_a_made_up_token_fails_the_check() {
    let synapse = FakeSynapse::start(SynapseOptions {
        behaviour: SynapseBehaviour::Status {
            status: 200,
            body: "{}".to_owned(),
            headers: Vec::new(),
        },
        ..SynapseOptions::default()
    })
    .await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(&synapse.base_url(), &cloudflare, "test-key-id", "test-api-token").await;
    assert_eq!(code, Some(1), "{report}");
    let failure = report
        .lines()
        .skip_while(|l| !l.starts_with('✗'))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(failure.contains("made-up token"), "{report}");
    assert!(failure.contains("SYNAPSE_BASE_URL"), "{report}");
}

/// `check --public-url`: through the daemon every turnServer path reaches
/// it, and with a token the v3 path brings a credential; straight to the
/// homeserver (a route missing or shadowed) each path is a ✗ naming the
/// rule to look at.
#[tokio::test]
async fn the_routing_self_test_tells_a_routed_path_from_a_shadowed_one() {
    let stack = crate::harness::Stack::start().await;
    let synapse = stack.synapse.base_url();
    let cf = stack.cloudflare.base_url();
    let vars = [
        ("SYNAPSE_BASE_URL", synapse.as_str()),
        ("CF_TURN_API_BASE_URL", cf.as_str()),
        ("CF_TURN_KEY_ID", "test-key-id"),
        ("CF_TURN_API_TOKEN", "test-api-token"),
    ];
    let routed = format!("http://{}", stack.daemon.addr);
    let (code, report, _) = run_to_end(
        &["check", "--public-url", &routed, "--token", crate::harness::ALICE],
        &vars,
    )
    .await;
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!(
            "✓ /_matrix/client/v3/voip/turnServer through {routed}: a TURN credential from matrix-turnify"
        )),
        "{report}"
    );
    for path in ["r0", "unstable", "api/v1"] {
        assert!(
            report.contains(&format!(
                "✓ /_matrix/client/{path}/voip/turnServer through {routed} reaches matrix-turnify (200)"
            )),
            "{report}"
        );
    }
    assert!(
        report.contains("! /_matrix/client/versions through")
            && report.contains("also passed through matrix-turnify"),
        "the daemon itself is no proxy that keeps other paths away: {report}"
    );
    assert!(
        !report.contains(crate::harness::ALICE),
        "the token is not printed"
    );

    let (code, report, _) = run_to_end(&["check", "--public-url", &synapse], &vars).await;
    assert_eq!(code, Some(1), "{report}");
    let shadowed: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with('✗') && l.contains("did not pass through matrix-turnify"))
        .collect();
    assert_eq!(shadowed.len(), 4, "{report}");
    assert!(report.contains("Server: Synapse/1.163.2"), "{report}");
    assert!(
        report.contains("PathRegexp(`^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$`)"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "✓ /_matrix/client/versions through {synapse} goes straight to the homeserver (200)"
        )),
        "{report}"
    );
}

/// A daemon with its LiveKit front door before a fake LiveKit, and `check`
/// run next to it as an admin runs it in the daemon's container, with the
/// same configuration.
struct LiveKitCheck {
    livekit: FakeLiveKit,
    cloudflare: FakeCloudflare,
    _synapse: FakeSynapse,
    daemon: Daemon,
}

impl LiveKitCheck {
    async fn start(cloudflare: CloudflareOptions) -> Self {
        let livekit = FakeLiveKit::start(LiveKitOptions::default()).await;
        let synapse = FakeSynapse::start(SynapseOptions::default()).await;
        let cloudflare = FakeCloudflare::start(cloudflare).await;
        let daemon = Daemon::start(
            &synapse.base_url(),
            &cloudflare.base_url(),
            &[
                ("LIVEKIT_SFU_URL", &livekit.base_url()),
                ("LIVEKIT_LISTEN_ADDR", "127.0.0.1:0"),
            ],
        )
        .await;
        Self {
            livekit,
            cloudflare,
            _synapse: synapse,
            daemon,
        }
    }

    fn front_door(&self) -> String {
        self.daemon
            .livekit_addr
            .expect("the front door is on")
            .to_string()
    }

    /// `check` with LiveKit's key and this secret, or with neither.
    async fn check(&self, secret: Option<&str>) -> (Option<i32>, String) {
        let synapse = self._synapse.base_url();
        let cloudflare = self.cloudflare.base_url();
        let sfu = self.livekit.base_url();
        let front = self.front_door();
        let mut vars = vec![
            ("SYNAPSE_BASE_URL", synapse.as_str()),
            ("CF_TURN_API_BASE_URL", cloudflare.as_str()),
            ("CF_TURN_KEY_ID", "test-key-id"),
            ("CF_TURN_API_TOKEN", "test-api-token"),
            ("LIVEKIT_SFU_URL", sfu.as_str()),
            ("LIVEKIT_LISTEN_ADDR", front.as_str()),
        ];
        let key = LiveKitOptions::default().api_key;
        if let Some(secret) = secret {
            vars.extend([("LIVEKIT_KEY", key.as_str()), ("LIVEKIT_SECRET", secret)]);
        }
        let (code, stdout, _) = run_to_end(&["check"], &vars).await;
        (code, stdout)
    }

    /// Once the daemon's relay of the test join has ended: nothing left
    /// open, and the one ended connection counted with this `turn`.
    async fn assert_relay_ended(&self, turn: &str) {
        let text = metrics_once_all_ended(self.daemon.addr).await;
        assert_counted(
            &text,
            &format!(r#"turnify_livekit_signalling_connections_total{{turn="{turn}"}} 1"#),
        );
    }

    /// The one signalling session the test join opened, once it has ended.
    async fn ended_session(&self) -> Session {
        wait_until("the test join's session ends", || {
            self.livekit.sessions().iter().all(|s| s.ended.is_some())
        })
        .await;
        let sessions = self.livekit.sessions();
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        sessions[0].clone()
    }
}

fn right_secret() -> String {
    LiveKitOptions::default().api_secret
}

/// The test join left as a client that hangs up: a `SignalRequest` with
/// `leave`, then close 1000.
#[track_caller]
fn assert_left(session: &Session) {
    assert!(
        session.identity.starts_with("matrix-turnify-check-"),
        "{session:?}"
    );
    let leaves: Vec<_> = session
        .received
        .iter()
        .filter_map(|message| match message {
            Message::Binary(frame) => SignalRequest::decode(frame.as_ref()).ok(),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            leaves.as_slice(),
            [SignalRequest {
                message: Some(signal_request::Message::Leave(LeaveRequest { reason: 1, .. }))
            }]
        ),
        "{session:?}"
    );
    assert_eq!(
        session.ended,
        Some(SessionEnd::Closed(Some((
            1000,
            "matrix-turnify check".to_owned()
        )))),
        "{session:?}"
    );
}

/// `check` with the LiveKit settings: LiveKit answers, the front door
/// answers, and a test join through it carries the Cloudflare entry, whose
/// URIs are shown and whose credential is not; then the participant leaves
/// and the credential is revoked.
#[tokio::test]
async fn a_test_join_through_the_front_door_shows_the_cloudflare_entry_and_leaves() {
    let stack = LiveKitCheck::start(CloudflareOptions::default()).await;
    let started = std::time::Instant::now();
    let (code, report) = stack.check(Some(&right_secret())).await;
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{report}");
    let front = stack.front_door();
    for line in [
        format!(
            "✓ LiveKit answers at {} (GET / → 200 OK)",
            stack.livekit.base_url()
        ),
        format!(
            "✓ the daemon's LiveKit front door answers on {front} (LIVEKIT_LISTEN_ADDR) and passes GET / to LiveKit (200 OK)"
        ),
        format!(
            "✓ a test join through the front door on {front} carries the Cloudflare entry: \
             turn:turn.cloudflare.com:3478?transport=udp turn:turn.cloudflare.com:3478?transport=tcp \
             turn:turn.cloudflare.com:80?transport=tcp turns:turn.cloudflare.com:5349?transport=tcp turns:turn.cloudflare.com:443?transport=tcp"
        ),
        "✓ the test participant left (a leave request, then close 1000)".to_owned(),
        "✓ Cloudflare revoked the test join's credential".to_owned(),
        "All 13 checks passed, 1 skipped.".to_owned(),
    ] {
        assert!(
            report.lines().any(|l| l == line),
            "no line {line:?} in:\n{report}"
        );
    }
    let joined = stack
        .cloudflare
        .last_minted()
        .expect("the daemon minted for the join");
    assert!(!report.contains(&joined.credential), "no password in the report");
    assert!(!report.contains(&joined.username), "{report}");
    assert!(!report.contains(&right_secret()), "{report}");
    assert!(stack.cloudflare.revoked().contains(&joined.username));
    assert_left(&stack.ended_session().await);
    stack.assert_relay_ended("cloudflare").await;
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn livekit_down_is_one_failed_line_naming_livekit_sfu_url() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (synapse, cf) = (synapse.base_url(), cloudflare.base_url());
    let sfu = closed_port();
    let front = closed_port();
    let front = front.trim_start_matches("http://");
    let secret = right_secret();
    let (code, report, _) = run_to_end(
        &["check"],
        &[
            ("SYNAPSE_BASE_URL", &synapse),
            ("CF_TURN_API_BASE_URL", &cf),
            ("CF_TURN_KEY_ID", "test-key-id"),
            ("CF_TURN_API_TOKEN", "test-api-token"),
            ("LIVEKIT_SFU_URL", &sfu),
            ("LIVEKIT_LISTEN_ADDR", front),
            ("LIVEKIT_KEY", "APIfakekey"),
            ("LIVEKIT_SECRET", &secret),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{report}");
    let failures: Vec<&str> = report.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(failures.len(), 1, "{report}");
    assert!(
        failures[0].starts_with(&format!("✗ LiveKit at {} (LIVEKIT_SFU_URL): ", &*sfu))
            && failures[0].contains("Connection refused"),
        "{report}"
    );
    assert!(
        report.contains("check LIVEKIT_SFU_URL: nothing answers there"),
        "{report}"
    );
    // Where check runs without the daemon, it says so, and skips the join.
    assert!(
        report.contains(&format!(
            "! nothing answers on {front} (LIVEKIT_LISTEN_ADDR): the daemon is not running here"
        )),
        "{report}"
    );
    assert!(
        report.contains("docker compose exec matrix-turnify matrix-turnify check"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "- no test join: the daemon's front door is not running on {front}"
        )),
        "{report}"
    );
    assert!(
        report.ends_with("1 of 10 checks failed, with 1 warning, 2 skipped.\n"),
        "{report}"
    );
}

#[tokio::test]
async fn without_livekits_key_and_secret_there_is_no_test_join_and_the_report_says_why() {
    let stack = LiveKitCheck::start(CloudflareOptions::default()).await;
    let (code, report) = stack.check(None).await;
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("- no test join: LIVEKIT_KEY and LIVEKIT_SECRET are not set\n    → set them"),
        "{report}"
    );
    assert!(report.ends_with("All 10 checks passed, 2 skipped.\n"), "{report}");
    assert!(stack.livekit.sessions().is_empty());
}

#[tokio::test]
async fn a_wrong_livekit_secret_fails_the_test_join_naming_key_and_secret() {
    let stack = LiveKitCheck::start(CloudflareOptions::default()).await;
    let wrong = "not-livekits-secret";
    let (code, report) = stack.check(Some(wrong)).await;
    assert_eq!(code, Some(1), "{report}");
    let failures: Vec<&str> = report.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(
        failures,
        ["✗ LiveKit refused the test join's token (401 Unauthorized: invalid token: could not verify)"],
        "{report}"
    );
    assert!(
        report.contains("→ check LIVEKIT_KEY and LIVEKIT_SECRET (or LIVEKIT_SECRET_FILE)"),
        "{report}"
    );
    assert!(!report.contains(wrong), "{report}");
    assert!(stack.livekit.sessions().is_empty());
    let upgrades = stack
        .livekit
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with("/rtc?"))
        .count();
    assert_eq!(upgrades, 1, "the upgrade went through the front door to LiveKit");
}

/// Cloudflare failing: the join goes on as LiveKit sent it, and check says
/// it carries no Cloudflare entry, pointing at the Cloudflare lines; the
/// test participant still leaves.
#[tokio::test]
async fn a_join_without_the_cloudflare_entry_fails_and_points_at_cloudflare() {
    let stack = LiveKitCheck::start(CloudflareOptions {
        behaviour: CfBehaviour::fail(500),
        ..CloudflareOptions::default()
    })
    .await;
    let (code, report) = stack.check(Some(&right_secret())).await;
    assert_eq!(code, Some(1), "{report}");
    let front = stack.front_door();
    let line = format!(
        "✗ the test join through {front} carries no Cloudflare entry (its ICE servers: stun:stun.l.google.com:19302)"
    );
    assert!(
        report.lines().any(|l| l == line),
        "no line {line:?} in:\n{report}"
    );
    assert!(report.contains("see the Cloudflare lines above"), "{report}");
    assert!(
        report.contains("✗ Cloudflare did not mint a test credential"),
        "{report}"
    );
    assert!(report.contains("✓ the test participant left"), "{report}");
    assert!(!report.contains("revoked the test join"), "{report}");
    assert_left(&stack.ended_session().await);
    stack.assert_relay_ended("cloudflare-failed").await;
}

/// `check` with usage read: one reading of the fake's GraphQL endpoint.
async fn check_usage(
    cloudflare: &FakeCloudflare,
    analytics_token: &str,
    extra: &[(&str, &str)],
) -> (Option<i32>, String) {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let (synapse_url, base, analytics) = (
        synapse.base_url(),
        cloudflare.base_url(),
        cloudflare.analytics_url(),
    );
    let mut vars = vec![
        ("SYNAPSE_BASE_URL", synapse_url.as_str()),
        ("CF_TURN_API_BASE_URL", base.as_str()),
        ("CF_TURN_KEY_ID", "test-key-id"),
        ("CF_TURN_API_TOKEN", "test-api-token"),
        ("CF_ACCOUNT_ID", "test-account-id"),
        ("CF_ANALYTICS_API_TOKEN", analytics_token),
        ("CF_ANALYTICS_API_URL", analytics.as_str()),
    ];
    vars.extend_from_slice(extra);
    let (code, stdout, _) = run_to_end(&["check"], &vars).await;
    (code, stdout)
}

#[tokio::test]
async fn usage_shows_the_month_the_budget_and_the_heaviest_users() {
    use turnify_fakes::UsageRecord;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    for (user, gb) in [("@alice:localhost", 3), ("@bob:localhost", 1)] {
        cloudflare.add_usage(UsageRecord::new("test-key-id", "u", gb * 1_000_000_000, 0).identifier(user));
    }
    let (code, report) = check_usage(
        &cloudflare,
        "test-analytics-token",
        &[
            ("CF_CUSTOM_IDENTIFIER", "user_id"),
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "10"),
            ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "2"),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{report}");
    for line in [
        "✓ the analytics token reads account test-account-id (Account Analytics)",
        "✓ Cloudflare records usage for key test-key-id this month",
        "✓ monthly budget: 6.000 GB left of 10.000 GB",
        "✓ the heaviest users this month: @alice:localhost 3.000 GB (past the per-user budget); @bob:localhost 1.000 GB",
        "! per-user budget of 2.000 GB: 1 user has reached it",
    ] {
        assert!(
            report.lines().any(|l| l == line),
            "no line {line:?} in:\n{report}"
        );
    }
    assert!(
        report.contains(
            "so far: egress 4.000 GB, ingress 0.000 GB; of the 1000 GB free a month, 996.000 GB left"
        ),
        "{report}"
    );
    assert!(!report.contains("test-analytics-token"), "{report}");
}

#[tokio::test]
async fn a_budget_whose_usage_cannot_be_read_is_a_failure_naming_the_variables() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check_usage(
        &cloudflare,
        "wrong-token",
        &[("TURN_MONTHLY_EGRESS_BUDGET_GB", "10")],
    )
    .await;
    assert_eq!(code, Some(1), "{report}");
    let failed: Vec<&str> = report.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(failed.len(), 1, "{report}");
    assert!(
        failed[0].starts_with("✗ Cloudflare's usage could not be read: "),
        "{report}"
    );
    for variable in [
        "CF_ANALYTICS_API_TOKEN",
        "CF_ACCOUNT_ID",
        "TURN_MONTHLY_EGRESS_BUDGET_GB",
    ] {
        assert!(report.contains(variable), "{variable} in:\n{report}");
    }
    assert!(!report.contains("wrong-token"), "{report}");
    // A key without usage, while another key of the account has some.
    cloudflare.add_usage(turnify_fakes::UsageRecord::new("another-key", "u", 5, 0));
    let (code, report) = check_usage(&cloudflare, "test-analytics-token", &[]).await;
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(
            "! no usage this month for key test-key-id, but for other keys of the account: another-key"
        ),
        "{report}"
    );
}
