//! The Cloudflare fake's GraphQL Analytics API on the wire: the daemon's own
//! query, the dataset's filters, limits and ordering, Cloudflare's errors,
//! and each injected behaviour.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnify_fakes::{AnalyticsBehaviour, CloudflareOptions, FakeCloudflare, UsageRecord};

/// The query the daemon sends (per-user identifiers on).
const DAEMON_QUERY: &str = r"query TurnUsage($accountTag: string!, $keyId: string!, $since: Time!, $until: Time!, $limit: uint64!) {
  viewer {
    accounts(filter: { accountTag: $accountTag }) {
      total: callsTurnUsageAdaptiveGroups(
        limit: 1
        filter: { keyId: $keyId, datetimeMinute_geq: $since, datetimeMinute_lt: $until }
      ) {
        sum { egressBytes ingressBytes }
      }
      users: callsTurnUsageAdaptiveGroups(
        limit: $limit
        filter: { keyId: $keyId, datetimeMinute_geq: $since, datetimeMinute_lt: $until }
        orderBy: [sum_egressBytes_DESC]
      ) {
        dimensions { customIdentifier }
        sum { egressBytes ingressBytes }
      }
    }
  }
}";

const TOKEN: &str = "test-analytics-token";

/// `2026-12-DDTHH:MM:00Z`.
fn december(day: u64, hour: u64, minute: u64) -> SystemTime {
    // 2026-12-01T00:00:00Z
    UNIX_EPOCH + Duration::from_secs(1_796_083_200 + ((day - 1) * 24 + hour) * 3600 + minute * 60)
}

fn daemon_variables(limit: u64) -> Value {
    json!({
        "accountTag": "test-account-id",
        "keyId": "test-key-id",
        "since": "2026-12-01T00:00:00Z",
        "until": "2026-12-06T13:04:05Z",
        "limit": limit,
    })
}

/// Two keys, several identifiers, one user without one, and usage of the
/// month before.
fn with_usage(cf: &FakeCloudflare) {
    let records = [
        UsageRecord::new("test-key-id", "u1", 100, 10)
            .identifier("@alice:example.org")
            .at(december(1, 0, 0)),
        UsageRecord::new("test-key-id", "u2", 50, 5)
            .identifier("@alice:example.org")
            .at(december(3, 10, 30)),
        UsageRecord::new("test-key-id", "u3", 300, 30)
            .identifier("@bob:example.org")
            .at(december(6, 13, 4)),
        UsageRecord::new("test-key-id", "u4", 7, 1).at(december(5, 8, 0)),
        UsageRecord::new("other-key-id", "u5", 1_000, 100)
            .identifier("@alice:example.org")
            .at(december(2, 0, 0)),
        // November and the minute after `until`: outside the window.
        UsageRecord::new("test-key-id", "u6", 5_000, 500)
            .identifier("@alice:example.org")
            .at(december(1, 0, 0) - Duration::from_secs(60)),
        UsageRecord::new("test-key-id", "u7", 9_000, 900)
            .identifier("@bob:example.org")
            .at(december(6, 13, 5)),
    ];
    for record in records {
        cf.add_usage(record);
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The one error's message, checking Cloudflare's error shape on the way.
    #[track_caller]
    fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let body = self.json();
        assert_eq!(body["data"], Value::Null, "{body}");
        let errors = body["errors"].as_array().expect("an errors array");
        assert_eq!(errors.len(), 1, "{body}");
        let timestamp = errors[0]["extensions"]["timestamp"]
            .as_str()
            .expect("a timestamp");
        assert!(
            timestamp.starts_with("20") && timestamp.ends_with('Z'),
            "{timestamp}"
        );
        errors[0].clone()
    }

    /// The data of a successful answer.
    #[track_caller]
    fn data(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.body);
        let body = self.json();
        assert_eq!(body["errors"], Value::Null, "{body}");
        body["data"].clone()
    }
}

async fn send(cf: &FakeCloudflare, method: &str, path: &str, headers: &str, body: &str) -> Option<Answer> {
    let mut stream = TcpStream::connect(cf.addr()).await.expect("connect to the fake");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut raw))
        .await
        .ok()?
        .expect("read the answer");
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Some(Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

async fn post_query(cf: &FakeCloudflare, token: Option<&str>, body: &Value) -> Option<Answer> {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let headers = format!("Content-Type: application/json\r\n{auth}");
    send(cf, "POST", "/client/v4/graphql", &headers, &body.to_string()).await
}

async fn query(cf: &FakeCloudflare, query: &str, variables: Value) -> Answer {
    post_query(
        cf,
        Some(TOKEN),
        &json!({ "query": query, "variables": variables }),
    )
    .await
    .expect("an answer within 2 s")
}

/// `callsTurnUsageAdaptiveGroups(<args>) { <selection> }` for the fake's
/// account, with no variables.
async fn groups(cf: &FakeCloudflare, args: &str, selection: &str) -> Answer {
    let q = format!(
        r#"{{ viewer {{ accounts(filter: {{accountTag: "test-account-id"}}) {{ callsTurnUsageAdaptiveGroups({args}) {{ {selection} }} }} }} }}"#
    );
    query(cf, &q, json!({})).await
}

fn rows(data: &Value) -> Value {
    data["viewer"]["accounts"][0]["callsTurnUsageAdaptiveGroups"].clone()
}

#[tokio::test]
async fn the_daemons_query_answers_the_months_total_and_each_identifier() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    with_usage(&cf);

    let answer = query(&cf, DAEMON_QUERY, daemon_variables(1000)).await;

    assert!(
        answer.head.contains("Content-Type: application/json"),
        "{}",
        answer.head
    );
    assert_eq!(
        answer.data(),
        json!({"viewer": {"accounts": [{
            "total": [{"sum": {"egressBytes": 457, "ingressBytes": 46}}],
            "users": [
                {"dimensions": {"customIdentifier": "@bob:example.org"}, "sum": {"egressBytes": 300, "ingressBytes": 30}},
                {"dimensions": {"customIdentifier": "@alice:example.org"}, "sum": {"egressBytes": 150, "ingressBytes": 15}},
                {"dimensions": {"customIdentifier": ""}, "sum": {"egressBytes": 7, "ingressBytes": 1}},
            ],
        }]}})
    );
    assert_eq!(cf.analytics_queries(), 1);
    let recorded = cf.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path_and_query, "/client/v4/graphql");
    assert_eq!(recorded[0].json()["variables"]["keyId"], "test-key-id");
}

#[tokio::test]
async fn no_matching_usage_is_an_empty_list_even_without_dimensions() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    cf.add_usage(UsageRecord::new("other-key-id", "u1", 10, 1).at(december(2, 0, 0)));

    let data = query(&cf, DAEMON_QUERY, daemon_variables(1000)).await.data();

    assert_eq!(data["viewer"]["accounts"][0]["total"], json!([]));
    assert_eq!(data["viewer"]["accounts"][0]["users"], json!([]));

    cf.clear_usage();
    cf.add_usage(UsageRecord::new("test-key-id", "u1", 10, 1).at(december(2, 0, 0)));
    cf.clear_usage();
    let data = query(&cf, DAEMON_QUERY, daemon_variables(1000)).await.data();
    assert_eq!(data["viewer"]["accounts"][0]["total"], json!([]));
}

#[tokio::test]
async fn grouping_by_key_without_a_key_filter_tells_keys_apart() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    with_usage(&cf);
    let q = r"query Keys($accountTag: string!, $since: Time!, $until: Time!) {
      viewer { accounts(filter: {accountTag: $accountTag}) {
        keys: callsTurnUsageAdaptiveGroups(limit: 10, filter: {datetime_geq: $since, datetime_lt: $until}, orderBy: [sum_egressBytes_DESC]) {
          dimensions { keyId } sum { egressBytes }
        }
      } }
    }";
    let variables = json!({"accountTag": "test-account-id", "since": "2026-12-01T00:00:00Z", "until": "2026-12-06T13:04:05Z"});

    let data = query(&cf, q, variables).await.data();

    assert_eq!(
        data["viewer"]["accounts"][0]["keys"],
        json!([
            {"dimensions": {"keyId": "other-key-id"}, "sum": {"egressBytes": 1000}},
            {"dimensions": {"keyId": "test-key-id"}, "sum": {"egressBytes": 457}},
        ])
    );
}

#[tokio::test]
async fn limit_cuts_after_ordering_and_is_bounded() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    with_usage(&cf);
    let selection = "dimensions { username } sum { egressBytes }";
    let users = |rows: &Value| -> Vec<String> {
        rows.as_array()
            .expect("a list")
            .iter()
            .map(|r| {
                r["dimensions"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };

    let asc = groups(
        &cf,
        r#"limit: 2, filter: {keyId: "test-key-id"}, orderBy: [sum_egressBytes_ASC]"#,
        selection,
    )
    .await;
    assert_eq!(users(&rows(&asc.data())), ["u4", "u2"]);

    let desc = groups(&cf, r"limit: 3, orderBy: [sum_egressBytes_DESC]", selection).await;
    assert_eq!(users(&rows(&desc.data())), ["u7", "u6", "u5"]);

    // No orderBy: in the order of the dimensions.
    let plain = groups(&cf, r"limit: 10000", selection).await;
    assert_eq!(
        users(&rows(&plain.data())),
        ["u1", "u2", "u3", "u4", "u5", "u6", "u7"]
    );

    let by_name = groups(&cf, r"limit: 2, orderBy: [username_DESC]", selection).await;
    assert_eq!(users(&rows(&by_name.data())), ["u7", "u6"]);

    for limit in ["0", "10001"] {
        let e = groups(&cf, &format!("limit: {limit}"), selection)
            .await
            .error(400);
        assert_eq!(
            e["message"],
            "limit must be positive number and not greater than 10000"
        );
        assert_eq!(
            e["path"],
            json!(["viewer", "accounts", "0", "callsTurnUsageAdaptiveGroups"])
        );
    }
    let missing = groups(&cf, r#"filter: {keyId: "test-key-id"}"#, selection)
        .await
        .error(400);
    assert!(
        missing["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("error parsing args"),
        "{missing}"
    );

    let not_requested = groups(&cf, r"limit: 2, orderBy: [keyId_ASC]", selection)
        .await
        .error(400);
    assert!(
        not_requested["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("error parsing args")
    );
}

#[tokio::test]
async fn filters_follow_the_documented_operators() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    with_usage(&cf);
    let selection = "sum { egressBytes }";
    let egress = |answer: Answer| rows(&answer.data())[0]["sum"]["egressBytes"].clone();

    let cases = [
        (r#"username_in: ["u1", "u3"]"#, json!(400)),
        (r#"username_neq: "u7", keyId: "test-key-id""#, json!(5_457)),
        (r#"customIdentifier_like: "@alice%""#, json!(6_150)),
        (r#"customIdentifier: """#, json!(7)),
        (r#"OR: [{username: "u1"}, {username: "u5"}]"#, json!(1_100)),
        (
            r#"AND: [{keyId: "test-key-id"}, {datetimeHour_leq: "2026-12-01T00:00:00Z"}]"#,
            json!(5_100),
        ),
        (r#"datetime_gt: "2026-12-06T13:04:00Z""#, json!(9_000)),
        (r#"date_geq: "2026-12-06", date_leq: "2026-12-06""#, json!(9_300)),
        (r#"datetimeFifteenMinutes: "2026-12-03T10:30:00Z""#, json!(50)),
        (r#"datetimeMinute_geq: "2026-12-06T14:04:05+01:00""#, json!(9_000)),
    ];
    for (filter, expected) in cases {
        let answer = groups(&cf, &format!("limit: 1, filter: {{{filter}}}"), selection).await;
        assert_eq!(egress(answer), expected, "{filter}");
    }

    let unknown = groups(&cf, r#"limit: 1, filter: {colo: "FRA"}"#, selection)
        .await
        .error(400);
    assert!(
        unknown["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("error parsing args")
    );
    let not_a_time = groups(&cf, r#"limit: 1, filter: {datetime_geq: "yesterday"}"#, selection)
        .await
        .error(400);
    assert!(
        not_a_time["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is not a Time"),
        "{not_a_time}"
    );
}

#[tokio::test]
async fn dimensions_metrics_aliases_and_fragments_are_answered() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    cf.add_usage(
        UsageRecord::new("test-key-id", "u1", 10, 1)
            .connections(2)
            .at(december(3, 10, 31)),
    );
    cf.add_usage(
        UsageRecord::new("test-key-id", "u2", 20, 2)
            .connections(3)
            .at(december(3, 10, 44)),
    );
    let q = r#"query Other { viewer { accounts(filter: {accountTag: "x"}) { callsTurnUsageAdaptiveGroups(limit: 1) { sum { egressBytes } } } } }
    query Series {
      v: viewer { a: accounts(filter: {accountTag_in: ["test-account-id"]}) {
        s: callsTurnUsageAdaptiveGroups(limit: 10) {
          d: dimensions { minute: datetimeMinute datetimeFiveMinutes datetimeFifteenMinutes datetimeHour date datacenterCode }
          ...Totals
        }
      } }
    }
    fragment Totals on callsTurnUsageAdaptiveGroups { total: sum { out: egressBytes } avg { concurrentConnections concurrentConnectionsFiveMinutes } }"#;

    let answer = post_query(&cf, Some(TOKEN), &json!({"query": q, "operationName": "Series"}))
        .await
        .expect("an answer");

    assert_eq!(
        answer.data(),
        json!({"v": {"a": [{"s": [
            {
                "d": {"minute": "2026-12-03T10:31:00Z", "datetimeFiveMinutes": "2026-12-03T10:30:00Z",
                      "datetimeFifteenMinutes": "2026-12-03T10:30:00Z", "datetimeHour": "2026-12-03T10:00:00Z",
                      "date": "2026-12-03", "datacenterCode": "FRA"},
                "total": {"out": 10},
                "avg": {"concurrentConnections": 2, "concurrentConnectionsFiveMinutes": 2},
            },
            {
                "d": {"minute": "2026-12-03T10:44:00Z", "datetimeFiveMinutes": "2026-12-03T10:40:00Z",
                      "datetimeFifteenMinutes": "2026-12-03T10:30:00Z", "datetimeHour": "2026-12-03T10:00:00Z",
                      "date": "2026-12-03", "datacenterCode": "FRA"},
                "total": {"out": 20},
                "avg": {"concurrentConnections": 3, "concurrentConnectionsFiveMinutes": 3},
            },
        ]}]}})
    );

    let hourly = groups(
        &cf,
        "limit: 10",
        "dimensions { datetimeHour } avg { concurrentConnections }",
    )
    .await;
    assert_eq!(
        rows(&hourly.data()),
        json!([{"dimensions": {"datetimeHour": "2026-12-03T10:00:00Z"}, "avg": {"concurrentConnections": 2.5}}])
    );
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthorized() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    let body = json!({"query": DAEMON_QUERY, "variables": daemon_variables(10)});

    for token in [None, Some("wrong"), Some("test-api-token")] {
        let answer = post_query(&cf, token, &body).await.expect("an answer");
        let e = answer.error(401);
        assert_eq!(e["message"], "Unauthorized", "{token:?}");
    }
    assert_eq!(cf.analytics_queries(), 3);
}

#[tokio::test]
async fn another_account_or_a_token_without_analytics_permission_is_forbidden() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    let mut variables = daemon_variables(10);
    variables["accountTag"] = json!("someone-elses-account");

    let e = query(&cf, DAEMON_QUERY, variables).await.error(403);
    assert_eq!(e["message"], "not authorized for that account");
    assert_eq!(e["path"], json!(["viewer", "accounts"]));
    assert_eq!(e["extensions"]["code"], "authz");

    let unpermitted = FakeCloudflare::start(CloudflareOptions {
        analytics_permission: false,
        ..CloudflareOptions::default()
    })
    .await;
    let e = query(&unpermitted, DAEMON_QUERY, daemon_variables(10))
        .await
        .error(403);
    assert_eq!(e["message"], "not authorized for that account");
}

#[tokio::test]
async fn malformed_queries_get_cloudflares_parse_errors() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;

    let e = groups(&cf, "limit: 1", "sum { egressBytes bytes }")
        .await
        .error(400);
    assert_eq!(e["message"], "unknown field \"bytes\" on sum");
    assert_eq!(
        e["path"],
        json!([
            "viewer",
            "accounts",
            "0",
            "callsTurnUsageAdaptiveGroups",
            "sum",
            "bytes"
        ])
    );

    let e = query(&cf, r#"{ viewer { accounts(filter: {accountTag: "test-account-id"}) { httpRequestsAdaptiveGroups(limit: 1) { count } } } }"#, json!({}))
        .await
        .error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("unknown field")
    );

    let e = groups(&cf, "limit: 1", "sum { egressBytes { value } }")
        .await
        .error(400);
    assert_eq!(e["message"], "scalar fields must have no selections");
    let e = groups(&cf, "limit: 1", "sum").await.error(400);
    assert_eq!(e["message"], "object field must have selections");
    let e = groups(&cf, "limit: 1, sample: 10", "sum { egressBytes }")
        .await
        .error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("error parsing args")
    );

    // GraphQL's spelling of the types instead of Cloudflare's.
    let wrong_types = DAEMON_QUERY.replace("$since: Time!", "$since: String!");
    let e = query(&cf, &wrong_types, daemon_variables(10)).await.error(400);
    assert!(
        e["message"].as_str().unwrap_or_default().contains("$since"),
        "{e}"
    );
    let mut missing = daemon_variables(10);
    missing.as_object_mut().map(|v| v.remove("until"));
    let e = query(&cf, DAEMON_QUERY, missing).await.error(400);
    assert!(
        e["message"].as_str().unwrap_or_default().contains("$until"),
        "{e}"
    );

    let e = query(&cf, "{ viewer { accounts(", json!({})).await.error(400);
    assert_eq!(e["message"], "query contains error, please review it and retry");
    let e = post_query(&cf, Some(TOKEN), &json!("not a request"))
        .await
        .expect("an answer")
        .error(400);
    assert_eq!(e["message"], "query contains error, please review it and retry");
    let e = query(
        &cf,
        r#"{ viewer { accounts { callsTurnUsageAdaptiveGroups(limit: 1) { sum { egressBytes } } } } }"#,
        json!({}),
    )
    .await
    .error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("account filter")
    );
}

#[tokio::test]
async fn each_behaviour_answers_as_told_once_the_checks_pass() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    let body = json!({"query": DAEMON_QUERY, "variables": daemon_variables(10)});

    cf.set_analytics(AnalyticsBehaviour::Answer {
        latency: Duration::from_millis(300),
    });
    let started = Instant::now();
    post_query(&cf, Some(TOKEN), &body)
        .await
        .expect("an answer")
        .data();
    assert!(started.elapsed() >= Duration::from_millis(300));

    cf.set_analytics(AnalyticsBehaviour::Status {
        status: 503,
        body: r#"{"oops":1}"#.to_owned(),
    });
    let answer = post_query(&cf, Some(TOKEN), &body).await.expect("an answer");
    assert_eq!((answer.status, answer.body.as_str()), (503, r#"{"oops":1}"#));

    cf.set_analytics(AnalyticsBehaviour::Garbage);
    let answer = post_query(&cf, Some(TOKEN), &body).await.expect("an answer");
    assert_eq!(answer.status, 200);
    assert!(
        serde_json::from_str::<Value>(&answer.body).is_err(),
        "{}",
        answer.body
    );

    cf.set_analytics(AnalyticsBehaviour::GraphqlError {
        status: 429,
        message: "rate limiter budget depleted, try again after 5 minutes".to_owned(),
    });
    let e = post_query(&cf, Some(TOKEN), &body)
        .await
        .expect("an answer")
        .error(429);
    assert_eq!(
        e["message"],
        "rate limiter budget depleted, try again after 5 minutes"
    );

    // The checks come first: a bad token is still 401.
    cf.set_analytics(AnalyticsBehaviour::Hang);
    post_query(&cf, Some("wrong"), &body)
        .await
        .expect("an answer")
        .error(401);
    assert!(
        post_query(&cf, Some(TOKEN), &body).await.is_none(),
        "a hanging fake answered"
    );

    assert_eq!(cf.analytics_queries(), 6);
}

#[tokio::test]
async fn the_control_endpoints_set_usage_and_behaviour_over_http() {
    let cf = FakeCloudflare::start(CloudflareOptions::default()).await;
    let control = |method: &'static str, path: &'static str, body: Value| {
        let cf = &cf;
        async move {
            send(
                cf,
                method,
                path,
                "Content-Type: application/json\r\n",
                &body.to_string(),
            )
            .await
            .expect("an answer")
            .status
        }
    };
    let record = json!({"key_id": "test-key-id", "username": "u1", "custom_identifier": "@alice:example.org",
                        "egress_bytes": 42, "ingress_bytes": 4, "at": "2026-12-02T00:00:00Z"});

    assert_eq!(control("POST", "/__fake/usage", record.clone()).await, 204);
    assert_eq!(
        control("POST", "/__fake/usage", json!({"key_id": "k"})).await,
        400
    );
    let data = query(&cf, DAEMON_QUERY, daemon_variables(10)).await.data();
    assert_eq!(
        data["viewer"]["accounts"][0]["total"],
        json!([{"sum": {"egressBytes": 42, "ingressBytes": 4}}])
    );

    assert_eq!(control("DELETE", "/__fake/usage", json!(null)).await, 204);
    let data = query(&cf, DAEMON_QUERY, daemon_variables(10)).await.data();
    assert_eq!(data["viewer"]["accounts"][0]["total"], json!([]));

    assert_eq!(
        control("POST", "/__fake/analytics", json!({"garbage": true})).await,
        204
    );
    let answer = query(&cf, DAEMON_QUERY, daemon_variables(10)).await;
    assert!(serde_json::from_str::<Value>(&answer.body).is_err());
    assert_eq!(
        control("POST", "/__fake/analytics", json!({"graphql_error": "boom"})).await,
        204
    );
    query(&cf, DAEMON_QUERY, daemon_variables(10)).await.error(200);
    assert_eq!(
        control("POST", "/__fake/analytics", json!({"status": 502, "body": "{}"})).await,
        204
    );
    assert_eq!(query(&cf, DAEMON_QUERY, daemon_variables(10)).await.status, 502);
    assert_eq!(
        control(
            "POST",
            "/__fake/analytics",
            json!({"hang": true, "garbage": true})
        )
        .await,
        400
    );
    assert_eq!(
        control("POST", "/__fake/analytics", json!({"ok": true, "latency_ms": 0})).await,
        204
    );
    query(&cf, DAEMON_QUERY, daemon_variables(10)).await.data();

    let stats = send(&cf, "GET", "/__fake/stats", "", "")
        .await
        .expect("an answer")
        .json();
    assert_eq!(stats["analytics_queries"], 6);
    assert_eq!(stats["usage_records"], 0);
    assert_eq!(
        cf.analytics_url(),
        format!("http://{}/client/v4/graphql", cf.addr())
    );
}
