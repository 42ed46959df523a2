//! The shipped alert rules and Grafana dashboard (deploy/prometheus/,
//! deploy/grafana/) query only metric names the daemon's `/metrics` exports:
//! a renamed metric would otherwise leave an alert that can never fire and a
//! panel that says "No data", both silently.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use turnify_fakes::{CloudflareOptions, LiveKitOptions, SynapseOptions};

use crate::harness::{ALICE, Stack, WAIT, closed_port, get, metrics, metrics_once_all_ended};
use crate::livekit::{LiveKitStack, next_data};

const RULES: &str = include_str!("../../deploy/prometheus/matrix-turnify.rules.yml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/matrix-turnify.json");

/// The `expr` of every rule in a Prometheus rules file, in the YAML the
/// rules file is written in: a plain or quoted scalar on the key's line, or
/// a block scalar (`|`, `>-`) on the more indented lines after it.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.trim_start_matches("- ").strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let value = value.trim();
        if value.starts_with(['|', '>']) {
            let mut block = Vec::new();
            while let Some(next) =
                lines.next_if(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            {
                block.push(next.trim());
            }
            exprs.push(block.join("\n"));
        } else {
            exprs.push(value.trim_matches(['"', '\'']).to_owned());
        }
    }
    exprs
}

/// Every `expr` in a Grafana dashboard: the panels' queries, wherever they
/// nest (rows, library panels).
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    match dashboard {
        serde_json::Value::Object(fields) => fields
            .iter()
            .flat_map(|(key, value)| match (key.as_str(), value) {
                ("expr", serde_json::Value::String(expr)) => vec![expr.clone()],
                _ => dashboard_exprs(value),
            })
            .collect(),
        serde_json::Value::Array(items) => items.iter().flat_map(dashboard_exprs).collect(),
        _ => Vec::new(),
    }
}

/// The `turnify_` metric names a PromQL expression reads, as written there
/// (a histogram's `_bucket`, `_count` or `_sum`, a counter's `_total`).
/// Quoted strings are label values, not names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            let mut escaped = false;
            for (_, inner) in chars.by_ref() {
                if inner == c && !escaped {
                    break;
                }
                escaped = c != '`' && inner == '\\' && !escaped;
            }
        } else if is_name_char(c) {
            let mut end = start + c.len_utf8();
            while let Some((at, next)) = chars.next_if(|&(_, next)| is_name_char(next)) {
                end = at + next.len_utf8();
            }
            let word = &expr[start..end];
            if word.starts_with("turnify_") {
                names.insert(word.to_owned());
            }
        }
    }
    names
}

/// The names a query may use for what a scrape exports, from its `# TYPE`
/// lines, so that a labelled family with no sample yet counts as well:
/// OpenMetrics writes a counter's samples with `_total` and a histogram's
/// as `_bucket`, `_count` and `_sum`.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .flat_map(|(family, kind)| match kind.trim() {
            "counter" => vec![format!("{family}_total")],
            "histogram" => ["_bucket", "_count", "_sum"]
                .iter()
                .map(|suffix| format!("{family}{suffix}"))
                .collect(),
            _ => vec![family.to_owned()],
        })
        .collect()
}

/// The names the rules' and the dashboard's queries use.
fn used_names() -> BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("deploy/grafana/matrix-turnify.json is JSON");
    rule_exprs(RULES)
        .iter()
        .chain(&dashboard_exprs(&dashboard))
        .flat_map(|expr| metric_names(expr))
        .collect()
}

/// The names a daemon exports, from two: a labelled family is left out of
/// `/metrics` until it has a sample, and a budget that cannot be read
/// withholds every credential, so no one daemon shows them all.
async fn exported() -> BTreeSet<String> {
    let mut names = exported_names(&scrape_after_a_request_and_a_join().await);
    names.extend(exported_names(&scrape_with_usage_and_budgets().await));
    names
}

/// One turnServer request and one LiveKit join give the request, mint and
/// signalling counters their samples.
async fn scrape_after_a_request_and_a_join() -> String {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    get(
        stack.daemon.addr,
        "/_matrix/client/v3/voip/turnServer",
        Some(ALICE),
    )
    .await
    .assert_status(200);
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    client.close(None).await.expect("close");
    metrics_once_all_ended(stack.daemon.addr).await
}

/// With usage read and both budgets set, the usage and budget series are
/// registered; the analytics API refuses connections, and the poll at start
/// gives the polls counter its sample.
async fn scrape_with_usage_and_budgets() -> String {
    let analytics = closed_port();
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[
            ("CF_ACCOUNT_ID", "test-account"),
            ("CF_ANALYTICS_API_TOKEN", "test-analytics-token"),
            ("CF_ANALYTICS_API_URL", &analytics),
            ("CF_CUSTOM_IDENTIFIER", "user_id"),
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "1000"),
            ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "10"),
        ],
    )
    .await;
    // Polled (an await, which wait_until cannot do) under the same deadline.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(stack.daemon.addr).await;
        if text.contains("turnify_usage_polls_total{") {
            return text;
        }
        assert!(Instant::now() < deadline, "no usage poll counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_rules_and_the_dashboard_query_only_exported_metrics() {
    // Given what the daemon's /metrics exports,
    let exported = exported().await;
    // every name the alert rules and the dashboard query is in it.
    let missing: Vec<String> = used_names().difference(&exported).cloned().collect();
    assert!(
        missing.is_empty(),
        "the rules or the dashboard query names /metrics does not export: {missing:?}"
    );
}

#[test]
fn every_alert_and_every_panel_query_is_read() {
    let alerts = RULES.matches("- alert:").count();
    assert_eq!(rule_exprs(RULES).len(), alerts, "one expr per alert rule");
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let targets = DASHBOARD.matches("\"refId\"").count();
    assert_eq!(
        dashboard_exprs(&dashboard).len(),
        targets,
        "one expr per panel query"
    );
    for expr in rule_exprs(RULES).iter().chain(&dashboard_exprs(&dashboard)) {
        assert!(!metric_names(expr).is_empty(), "no turnify_ metric in {expr:?}");
    }
}

#[test]
fn rule_exprs_reads_plain_quoted_and_block_scalars() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n      \
                - alert: B\n        expr: \"a > 1\"\n      - alert: C\n        expr: |\n          x\n\n          \
                or y\n        for: 5m\n      - record: r\n        expr: >-\n          z\n";
    assert_eq!(rule_exprs(yaml), ["up == 0", "a > 1", "x\n\nor y", "z"]);
}

#[test]
fn metric_names_are_the_turnify_names_outside_strings() {
    let cases: [(&str, &[&str]); 6] = [
        (
            r#"sum without (result) (rate(turnify_cloudflare_calls_total{result!~"ok|skipped-backoff"}[10m]))"#,
            &["turnify_cloudflare_calls_total"],
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(turnify_synapse_request_duration_seconds_bucket[$__rate_interval])))",
            &["turnify_synapse_request_duration_seconds_bucket"],
        ),
        (
            "time() - turnify_usage_last_reading_timestamp_seconds and turnify_usage_last_reading_timestamp_seconds > 0",
            &["turnify_usage_last_reading_timestamp_seconds"],
        ),
        (
            "turnify_a == 1 and (turnify_b or turnify_c)",
            &["turnify_a", "turnify_b", "turnify_c"],
        ),
        (
            r#"up{job="turnify_job", instance='turnify_x\'y', path=`turnify_raw`}"#,
            &[],
        ),
        ("job:turnify_requests:rate5m + not_turnify_x", &[]),
    ];
    for (expr, want) in cases {
        let want: BTreeSet<String> = want.iter().map(|name| (*name).to_owned()).collect();
        assert_eq!(metric_names(expr), want, "in {expr:?}");
    }
}

#[test]
fn exported_names_come_from_the_type_lines() {
    let scrape = "# HELP turnify_requests Requests answered.\n# TYPE turnify_requests counter\n\
                  # TYPE turnify_cloudflare_request_duration_seconds histogram\n\
                  turnify_cloudflare_request_duration_seconds_sum 0.0\n\
                  # TYPE turnify_cloudflare_backoff_active gauge\nturnify_cloudflare_backoff_active 0\n# EOF\n";
    let want: BTreeSet<String> = [
        "turnify_requests_total",
        "turnify_cloudflare_request_duration_seconds_bucket",
        "turnify_cloudflare_request_duration_seconds_count",
        "turnify_cloudflare_request_duration_seconds_sum",
        "turnify_cloudflare_backoff_active",
    ]
    .iter()
    .map(|name| (*name).to_owned())
    .collect();
    assert_eq!(exported_names(scrape), want);
}
