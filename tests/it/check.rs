//! `matrix-turnify check` against the fakes: a clean report, and one per
//! kind of misconfiguration, each naming the variable to fix.

use turnify_fakes::{CloudflareOptions, FakeCloudflare, FakeSynapse, SynapseOptions};

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
    assert!(report.contains("All 6 checks passed."), "{report}");
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
    assert_eq!(failures.len(), 2, "/health and /versions: {report}");
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
