//! docs/behaviour.md §13 against the fake Cloudflare's GraphQL Analytics
//! API: a monthly budget withholds on both front doors, minted or reused; a
//! month turning opens it again; a reading too old withholds; a per-user
//! budget withholds from one user only; and readings that fail, hang or
//! answer garbage neither flood the log nor stop the daemon.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use turnify_fakes::{
    AnalyticsBehaviour, CloudflareOptions, FakeCloudflare, FakeSynapse, LiveKitOptions, SynapseOptions,
    UsageRecord,
};

use crate::binary::Running;
use crate::hangups::lines_with;
use crate::harness::{ALICE, BOB, CF_KEY, Stack, get, metrics, wait_until};
use crate::livekit::{LiveKitStack, binary, ice_servers, minted, next_data};

const V3: &str = "/_matrix/client/v3/voip/turnServer";
const GB: u64 = 1_000_000_000;
/// The homeserver's own answer: a coturn it knows, which must reach the
/// client unchanged when a budget holds.
const COTURN: &str =
    r#"{"username":"1:coturn","password":"p","ttl":86400,"uris":["turn:coturn.example.org:3478"]}"#;

fn homeserver() -> SynapseOptions {
    SynapseOptions {
        turn_body: COTURN.to_owned(),
        ..SynapseOptions::default()
    }
}

/// The analytics settings of a daemon polling `cloudflare` every second.
fn analytics(cloudflare: &FakeCloudflare) -> Vec<(&'static str, String)> {
    vec![
        ("CF_ACCOUNT_ID", "test-account-id".to_owned()),
        ("CF_ANALYTICS_API_TOKEN", "test-analytics-token".to_owned()),
        ("CF_ANALYTICS_API_URL", cloudflare.analytics_url()),
        ("CF_USAGE_POLL_SECONDS", "1".to_owned()),
        ("CF_TIMEOUT_SECONDS", "1".to_owned()),
    ]
}

fn borrowed<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A stack whose daemon reads usage, with `extra` settings.
async fn stack(extra: &[(&'static str, &str)]) -> Stack {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let mut vars = analytics(&cloudflare);
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let synapse = FakeSynapse::start(homeserver()).await;
    let daemon =
        crate::harness::Daemon::start(&synapse.base_url(), &cloudflare.base_url(), &borrowed(&vars)).await;
    Stack {
        synapse,
        cloudflare,
        daemon,
    }
}

/// Waits until `/metrics` on `addr` shows `line`.
async fn until_metrics_show(addr: std::net::SocketAddr, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics(addr).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line} never showed in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number `/metrics` shows for the series `name`, 0 when absent.
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = metrics(addr).await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn counted(outcome: &str) -> String {
    format!(r#"turnify_requests_total{{outcome="{outcome}",auth="homeserver"}} 1"#)
}

#[tokio::test]
async fn at_the_budget_turnserver_answers_with_the_homeservers_own_answer_for_minted_and_reused() {
    let stack = stack(&[("TURN_MONTHLY_EGRESS_BUDGET_GB", "2")]).await;
    let addr = stack.daemon.addr;
    until_metrics_show(addr, "turnify_turn_egress_budget_reached 0").await;
    let first = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_ne!(first["username"], "1:coturn");
    // Under the budget by one byte: still handed out.
    stack
        .cloudflare
        .add_usage(UsageRecord::new(CF_KEY, "u", 2 * GB - 1, GB));
    until_metrics_show(addr, "turnify_turn_egress_budget_remaining_bytes 1").await;
    let reused = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_eq!(reused["username"], first["username"]);
    // Usage of another key is not ours.
    stack
        .cloudflare
        .add_usage(UsageRecord::new("another-key", "v", 50 * GB, 0));
    stack.cloudflare.add_usage(UsageRecord::new(CF_KEY, "u", 1, 0));
    until_metrics_show(addr, "turnify_turn_egress_budget_reached 1").await;
    let text = metrics(addr).await;
    for line in [
        "turnify_turn_egress_bytes 2000000000",
        "turnify_turn_ingress_bytes 1000000000",
        "turnify_turn_egress_budget_bytes 2000000000",
        "turnify_turn_egress_budget_remaining_bytes 0",
        "turnify_usage_reading_stale 0",
    ] {
        crate::harness::assert_counted(&text, line);
    }
    let mints = stack.cloudflare.mint_count();
    // Alice's reusable credential and Bob's mint are both withheld.
    for token in [ALICE, BOB] {
        let answer = stack.get(V3, Some(token)).await;
        assert_eq!(answer.assert_status(200).text(), COTURN);
    }
    assert_eq!(stack.cloudflare.mint_count(), mints, "no mint past the budget");
    let text = metrics(addr).await;
    crate::harness::assert_counted(
        &text,
        r#"turnify_requests_total{outcome="over-budget",auth="homeserver"} 2"#,
    );
    // The homeserver still decides: a bad token gets its 401.
    stack.get(V3, Some("nope")).await.assert_status(401);
}

#[tokio::test]
async fn at_the_budget_a_livekit_join_goes_on_unchanged_with_its_own_word() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let cloudflare = &stack.cloudflare;
    // The budgeted daemon shares the stack's fakes: a second daemon on them.
    let mut vars = analytics(cloudflare);
    let sfu = stack.livekit.base_url();
    vars.extend([
        ("LIVEKIT_SFU_URL", sfu),
        ("LIVEKIT_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("TURN_MONTHLY_EGRESS_BUDGET_GB", "1".to_owned()),
    ]);
    let synapse = FakeSynapse::start(homeserver()).await;
    let daemon =
        crate::harness::Daemon::start(&synapse.base_url(), &cloudflare.base_url(), &borrowed(&vars)).await;
    let front = daemon.livekit_addr.expect("LiveKit door");
    until_metrics_show(daemon.addr, "turnify_turn_egress_budget_reached 0").await;
    let join = |identity: &'static str| {
        let token = stack.livekit.token(identity, "room");
        async move {
            let mut client = crate::livekit::connect(front, &format!("/rtc?access_token={token}"), &[])
                .await
                .expect("upgrade");
            let frame = binary(next_data(&mut client).await);
            client.close(None).await.expect("close");
            frame
        }
    };
    let spliced = join("@alice:example.org").await;
    let sent = stack.livekit.join_frame("@alice:example.org");
    assert_eq!(ice_servers(&spliced).len(), ice_servers(&sent).len() + 1);
    let _ = minted(&stack);
    cloudflare.add_usage(UsageRecord::new(CF_KEY, "u", GB, 0));
    until_metrics_show(daemon.addr, "turnify_turn_egress_budget_reached 1").await;
    let mints = cloudflare.mint_count();
    for identity in ["@alice:example.org", "@bob:example.org"] {
        assert_eq!(
            join(identity).await,
            stack.livekit.join_frame(identity),
            "{identity}: unchanged"
        );
    }
    assert_eq!(cloudflare.mint_count(), mints);
    let text = crate::harness::metrics_once_all_ended(daemon.addr).await;
    crate::harness::assert_counted(
        &text,
        r#"turnify_livekit_signalling_connections_total{turn="over-budget"} 2"#,
    );
}

/// The first second of the next UTC month, from `now`.
fn next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 1)
        .single()
        .expect("a date")
}

#[tokio::test]
async fn a_reached_budget_opens_again_when_the_month_turns() {
    let stack = stack(&[("TURN_MONTHLY_EGRESS_BUDGET_GB", "1")]).await;
    let addr = stack.daemon.addr;
    stack
        .cloudflare
        .add_usage(UsageRecord::new(CF_KEY, "u", 3 * GB, 0));
    until_metrics_show(addr, "turnify_turn_egress_budget_reached 1").await;
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    crate::harness::assert_counted(&metrics(addr).await, &counted("over-budget"));
    // The daemon's clocks move to the next month; the usage stays in this one.
    let now = DateTime::<Utc>::from(SystemTime::now());
    let to_next_month = (next_month(now) - now).to_std().expect("ahead");
    stack.daemon.state.clock().advance(to_next_month);
    // The last reading is now weeks old: stale until the next one.
    until_metrics_show(addr, "turnify_usage_reading_stale 0").await;
    until_metrics_show(addr, "turnify_turn_egress_budget_reached 0").await;
    crate::harness::assert_counted(&metrics(addr).await, "turnify_turn_egress_bytes 0");
    let answer = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_ne!(answer["username"], "1:coturn");
    assert_eq!(stack.cloudflare.mint_count(), 1);
    let last_query = stack
        .cloudflare
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query.ends_with("/graphql"))
        .expect("a usage query");
    let body: serde_json::Value = serde_json::from_slice(&last_query.body).expect("json");
    let since = next_month(now).format("%Y-%m-01T00:00:00Z").to_string();
    assert_eq!(body["variables"]["since"], since.as_str());
}

#[tokio::test]
async fn a_reading_older_than_three_polls_withholds_and_a_good_one_hands_out_again() {
    let stack = stack(&[("TURN_MONTHLY_EGRESS_BUDGET_GB", "100")]).await;
    let addr = stack.daemon.addr;
    until_metrics_show(addr, "turnify_usage_reading_stale 0").await;
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    stack.cloudflare.set_analytics(AnalyticsBehaviour::Hang);
    until_metrics_show(addr, "turnify_usage_reading_stale 1").await;
    let answer = stack.get(V3, Some(ALICE)).await;
    assert_eq!(
        answer.assert_status(200).text(),
        COTURN,
        "the reused credential is withheld too"
    );
    crate::harness::assert_counted(&metrics(addr).await, &counted("usage-unknown"));
    assert!(metric(addr, r#"turnify_usage_polls_total{result="timeout"}"#).await >= 1.0);
    stack.cloudflare.set_analytics(AnalyticsBehaviour::default());
    until_metrics_show(addr, "turnify_usage_reading_stale 0").await;
    let answer = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_ne!(answer["username"], "1:coturn");
}

#[tokio::test]
async fn without_a_first_reading_a_budget_withholds_and_no_budget_does_not() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions {
        analytics: AnalyticsBehaviour::Garbage,
        ..CloudflareOptions::default()
    })
    .await;
    let synapse = FakeSynapse::start(homeserver()).await;
    let mut vars = analytics(&cloudflare);
    let unbudgeted =
        crate::harness::Daemon::start(&synapse.base_url(), &cloudflare.base_url(), &borrowed(&vars)).await;
    vars.push(("TURN_MONTHLY_EGRESS_BUDGET_GB", "100".to_owned()));
    let budgeted =
        crate::harness::Daemon::start(&synapse.base_url(), &cloudflare.base_url(), &borrowed(&vars)).await;
    for daemon in [&unbudgeted, &budgeted] {
        wait_until("a garbage reading", || cloudflare.analytics_queries() >= 2).await;
        until_metrics_show(daemon.addr, "turnify_usage_last_reading_timestamp_seconds 0").await;
        crate::harness::assert_counted(&metrics(daemon.addr).await, "turnify_usage_reading_stale 1");
    }
    let answer = get(unbudgeted.addr, V3, Some(ALICE))
        .await
        .assert_status(200)
        .json();
    assert_ne!(answer["username"], "1:coturn");
    let answer = get(budgeted.addr, V3, Some(ALICE)).await;
    assert_eq!(answer.assert_status(200).text(), COTURN);
    let text = metrics(budgeted.addr).await;
    assert!(!text.contains("turnify_users_over_budget"), "{text}");
    let text = metrics(unbudgeted.addr).await;
    assert!(
        !text.contains("turnify_turn_egress_budget"),
        "no budget, no budget gauges:\n{text}"
    );
}

#[tokio::test]
async fn a_user_past_the_per_user_budget_gets_nothing_while_others_do() {
    let stack = stack(&[
        ("CF_CUSTOM_IDENTIFIER", "user_id"),
        ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "1"),
    ])
    .await;
    let addr = stack.daemon.addr;
    until_metrics_show(addr, "turnify_users_over_budget 0").await;
    let alice = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_ne!(alice["username"], "1:coturn");
    stack
        .cloudflare
        .add_usage(UsageRecord::new(CF_KEY, "u", GB, 0).identifier("@alice:localhost"));
    stack
        .cloudflare
        .add_usage(UsageRecord::new(CF_KEY, "v", GB - 1, 0).identifier("@bob:localhost"));
    until_metrics_show(addr, "turnify_users_over_budget 1").await;
    let mints = stack.cloudflare.mint_count();
    // Alice's reusable credential is withheld; Bob, just under, mints.
    assert_eq!(stack.get(V3, Some(ALICE)).await.assert_status(200).text(), COTURN);
    let bob = stack.get(V3, Some(BOB)).await.assert_status(200).json();
    assert_ne!(bob["username"], "1:coturn");
    assert_eq!(stack.cloudflare.mint_count(), mints + 1);
    crate::harness::assert_counted(&metrics(addr).await, &counted("user-over-budget"));
}

#[tokio::test]
async fn a_hashed_identifier_past_its_budget_costs_no_mint() {
    let stack = stack(&[
        ("CF_CUSTOM_IDENTIFIER", "hashed"),
        ("CF_CUSTOM_IDENTIFIER_KEY", "pepper"),
        ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "1"),
        ("CREDENTIAL_REUSE", "false"),
    ])
    .await;
    let addr = stack.daemon.addr;
    until_metrics_show(addr, "turnify_users_over_budget 0").await;
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    let tag = stack
        .cloudflare
        .last_minted()
        .expect("minted")
        .custom_identifier
        .expect("tagged");
    stack
        .cloudflare
        .add_usage(UsageRecord::new(CF_KEY, "u", 5 * GB, 0).identifier(tag));
    until_metrics_show(addr, "turnify_users_over_budget 1").await;
    let mints = stack.cloudflare.mint_count();
    assert_eq!(stack.get(V3, Some(ALICE)).await.assert_status(200).text(), COTURN);
    assert_eq!(stack.cloudflare.mint_count(), mints);
    stack.get(V3, Some(BOB)).await.assert_status(200);
    assert_eq!(stack.cloudflare.mint_count(), mints + 1);
}

/// Given readings that fail, then answer garbage, then hang, for many polls
/// while requests keep coming, the log says that readings fail once and
/// that the reading went stale once, and the daemon serves throughout.
#[tokio::test]
async fn failing_garbage_and_hanging_readings_write_a_handful_of_lines() {
    let synapse = FakeSynapse::start(homeserver()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let mut vars = analytics(&cloudflare);
    vars.push(("TURN_MONTHLY_EGRESS_BUDGET_GB", "100".to_owned()));
    let daemon = Running::against(&synapse, &cloudflare, &borrowed(&vars)).await;
    until_metrics_show(daemon.addr, "turnify_usage_reading_stale 0").await;
    for (behaviour, result) in [
        (
            AnalyticsBehaviour::Status {
                status: 503,
                body: "{}".to_owned(),
            },
            "status",
        ),
        (AnalyticsBehaviour::Garbage, "not-json"),
        (
            AnalyticsBehaviour::GraphqlError {
                status: 200,
                message: "not authorized".to_owned(),
            },
            "graphql-error",
        ),
        (AnalyticsBehaviour::Hang, "timeout"),
    ] {
        cloudflare.set_analytics(behaviour);
        let series = format!(r#"turnify_usage_polls_total{{result="{result}"}}"#);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while metric(daemon.addr, &series).await < 3.0 {
            assert!(tokio::time::Instant::now() < deadline, "{series} stays under 3");
            get(daemon.addr, V3, Some(ALICE)).await.assert_status(200);
        }
    }
    crate::harness::assert_counted(&metrics(daemon.addr).await, "turnify_usage_reading_stale 1");
    let log = daemon.terminate().await.stderr;
    assert_eq!(
        lines_with(&log, "reading Cloudflare's TURN usage failed"),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "no reading of Cloudflare's TURN usage younger"),
        1,
        "{log}"
    );
    assert_eq!(lines_with(&log, "TURN usage this month (UTC) read"), 1, "{log}");
    assert!(
        !log.contains("test-analytics-token"),
        "the token never reaches the log"
    );
}
