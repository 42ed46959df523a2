//! `matrix-turnify check` against the fakes: a clean report, and one per
//! kind of misconfiguration, each naming the variable to fix.

use turnify_fakes::{
    CloudflareOptions, FakeCloudflare, FakeSynapse, Flavour, SynapseBehaviour, SynapseOptions,
};

use crate::binary::run_to_end;
use crate::harness::closed_port_url;

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
    assert!(report.contains("All 8 checks passed."), "{report}");
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

#[tokio::test]
async fn synapse_down_names_synapse_base_url() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (code, report) = check(
        &closed_port_url().await,
        &cloudflare,
        "test-key-id",
        "test-api-token",
    )
    .await;
    assert_eq!(code, Some(1));
    let failures: Vec<&str> = report.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(
        failures.len(),
        4,
        "/health, /versions and two turnServer requests: {report}"
    );
    assert!(report.contains("check SYNAPSE_BASE_URL"), "{report}");
    // Cloudflare is still checked, so one run shows every problem.
    assert!(report.contains("✓ Cloudflare accepts key"), "{report}");
}

#[tokio::test]
async fn a_configuration_error_is_reported_as_a_failed_check() {
    let (code, report, _) = run_to_end(&["check"], &[("CF_TURN_API_TOKEN", "t")]).await;
    assert_eq!(code, Some(1));
    assert!(
        report.starts_with("✗ configuration: CF_TURN_KEY_ID: "),
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
        report.contains("All 8 checks passed, with 1 warning."),
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
