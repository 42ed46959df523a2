//! Cloudflare's GraphQL Analytics API, for the TURN key's usage this month
//! (<https://developers.cloudflare.com/realtime/turn/analytics/>, dataset
//! `callsTurnUsageAdaptiveGroups`). One request per reading: the key's total
//! and, when mints carry a `customIdentifier`, its heaviest identifiers,
//! both filtered to the key and to the month so far.

use chrono::{DateTime, SecondsFormat, Utc};
use http::header;
use serde_json::{Value, json};
use url::Url;

use crate::config::{Secret, UsageConfig};
use crate::credentials::cloudflare::{CONNECT_TIMEOUT, CloudflareError, read_capped};

/// The most identifiers one reading asks for, heaviest first: a per-user
/// budget is kept for these; `Figures::users_cut_off` says when more may be
/// over it.
pub(crate) const USER_ROWS: u64 = 1000;

/// The key's total for the period: without dimensions, one group (none when
/// nothing was used).
const TOTAL: &str = "total: callsTurnUsageAdaptiveGroups(
        limit: 1
        filter: { keyId: $keyId, datetimeMinute_geq: $since, datetimeMinute_lt: $until }
      ) {
        sum { egressBytes ingressBytes }
      }";

const USERS: &str = "users: callsTurnUsageAdaptiveGroups(
        limit: $limit
        filter: { keyId: $keyId, datetimeMinute_geq: $since, datetimeMinute_lt: $until }
        orderBy: [sum_egressBytes_DESC]
      ) {
        dimensions { customIdentifier }
        sum { egressBytes ingressBytes }
      }";

/// Every key of the account with usage in the period, for `check` to tell a
/// wrong key id from a month without calls.
const KEYS: &str = "keys: callsTurnUsageAdaptiveGroups(
        limit: 10
        filter: { datetimeMinute_geq: $since, datetimeMinute_lt: $until }
        orderBy: [sum_egressBytes_DESC]
      ) {
        dimensions { keyId }
        sum { egressBytes }
      }";

/// Why there is no reading.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    #[error("Cloudflare's analytics API {0}")]
    Cloudflare(#[from] CloudflareError),
    /// Cloudflare's own words: a bad token, a missing permission, an
    /// account the token cannot read.
    #[error("Cloudflare's analytics API refused the query: {0}")]
    GraphQl(String),
}

impl PollError {
    /// A short, fixed label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Cloudflare(e) => e.kind(),
            Self::GraphQl(_) => "graphql-error",
        }
    }
}

/// One identifier's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserFigures {
    pub(crate) identifier: String,
    pub(crate) egress: u64,
    pub(crate) ingress: u64,
}

/// The usage a reading found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) egress: u64,
    pub(crate) ingress: u64,
    /// Heaviest first; empty unless identifiers were asked for. Usage
    /// minted without an identifier is in the total only.
    pub(crate) users: Vec<UserFigures>,
    /// Keys with usage in the period, heaviest first (only for `check`).
    pub(crate) keys: Vec<(String, u64)>,
}

/// What to ask for besides the key's total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Asking {
    pub(crate) users: bool,
    pub(crate) keys: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct AnalyticsClient {
    http: reqwest::Client,
    url: Url,
    token: Secret,
    account_id: String,
    key_id: String,
}

impl AnalyticsClient {
    pub(crate) fn new(
        usage: &UsageConfig,
        key_id: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("matrix-turnify/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            // The token goes only to the configured URL.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            url: usage.api_url.clone(),
            token: usage.api_token.clone(),
            account_id: usage.account_id.clone(),
            key_id: key_id.to_owned(),
        })
    }

    /// The usage from the start of `now`'s UTC month to `now`.
    pub(crate) async fn month_to_date(
        &self,
        now: DateTime<Utc>,
        asking: Asking,
    ) -> Result<Figures, PollError> {
        let body = request_body(&self.account_id, &self.key_id, now, asking);
        let response = self
            .http
            .post(self.url.clone())
            .bearer_auth(self.token.expose())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(CloudflareError::from_reqwest)?;
        let status = response.status();
        let body = read_capped(response).await?;
        // A GraphQL error comes with a 200 or a 4xx; its message says more
        // than the status.
        match parse_answer(&body, asking) {
            Err(PollError::Cloudflare(_)) if !status.is_success() => Err(CloudflareError::Status {
                status,
                retry_after: None,
            }
            .into()),
            answer => answer,
        }
    }
}

/// The first instant of `now`'s UTC month.
pub(crate) fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{Datelike, TimeZone};
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The query and its variables. Values travel as variables, never spliced
/// into the query text.
pub(crate) fn request_body(account_id: &str, key_id: &str, now: DateTime<Utc>, asking: Asking) -> Value {
    let mut parts = vec![TOTAL];
    if asking.users {
        parts.push(USERS);
    }
    if asking.keys {
        parts.push(KEYS);
    }
    let limit = if asking.users { "\n  $limit: uint64!" } else { "" };
    let query = format!(
        "query TurnUsage(\n  $accountTag: string!\n  $keyId: string!\n  $since: Time!\n  $until: Time!{limit}\n) {{\n  \
         viewer {{\n    accounts(filter: {{ accountTag: $accountTag }}) {{\n      {}\n    }}\n  }}\n}}\n",
        parts.join("\n      ")
    );
    let mut variables = json!({
        "accountTag": account_id,
        "keyId": key_id,
        "since": rfc3339(month_start(now)),
        "until": rfc3339(now),
    });
    if asking.users {
        variables["limit"] = json!(USER_ROWS);
    }
    json!({ "query": query, "variables": variables })
}

/// Reads an answer of the shape the analytics docs show:
/// `{"data": {"viewer": {"accounts": [{"total": [{"sum": {…}}], …}]}}, "errors": null}`.
pub(crate) fn parse_answer(body: &[u8], asking: Asking) -> Result<Figures, PollError> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| CloudflareError::NotJson(e.to_string()))?;
    if let Some(errors) = answer.get("errors").and_then(Value::as_array)
        && !errors.is_empty()
    {
        // A few of Cloudflare's messages say what is wrong; the error ends
        // up in a log line, which a long list must not stretch.
        let messages: Vec<String> = errors
            .iter()
            .take(3)
            .map(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("an error without a message")
            })
            .map(|message| message.chars().take(200).collect())
            .collect();
        return Err(PollError::GraphQl(messages.join("; ")));
    }
    let shape = |what: &str| PollError::from(CloudflareError::Shape(what.to_owned()));
    let accounts = answer
        .pointer("/data/viewer/accounts")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("no data.viewer.accounts"))?;
    let account = match accounts.as_slice() {
        [account] => account,
        [] => {
            return Err(PollError::GraphQl(
                "no such account for this token (CF_ACCOUNT_ID)".to_owned(),
            ));
        }
        _ => return Err(shape("more than one account")),
    };
    let groups = |alias: &str| {
        account
            .get(alias)
            .and_then(Value::as_array)
            .ok_or_else(|| shape(&format!("no {alias} list")))
    };
    let total = groups("total")?;
    let (egress, ingress) = match total.as_slice() {
        [] => (0, 0),
        [group] => sums(group).ok_or_else(|| shape("total without egressBytes and ingressBytes"))?,
        _ => return Err(shape("more than one total")),
    };
    let mut figures = Figures {
        egress,
        ingress,
        ..Figures::default()
    };
    if asking.users {
        for group in groups("users")? {
            let identifier = group
                .pointer("/dimensions/customIdentifier")
                .and_then(Value::as_str)
                .ok_or_else(|| shape("a user group without dimensions.customIdentifier"))?;
            let (egress, ingress) = sums(group).ok_or_else(|| shape("a user group without sums"))?;
            // Mints without an identifier are grouped under an empty one:
            // nobody's budget.
            if !identifier.is_empty() {
                figures.users.push(UserFigures {
                    identifier: identifier.to_owned(),
                    egress,
                    ingress,
                });
            }
        }
    }
    if asking.keys {
        for group in groups("keys")? {
            let key = group
                .pointer("/dimensions/keyId")
                .and_then(Value::as_str)
                .ok_or_else(|| shape("a key group without dimensions.keyId"))?;
            let egress = group
                .pointer("/sum/egressBytes")
                .and_then(bytes)
                .ok_or_else(|| shape("a key group without sum.egressBytes"))?;
            figures.keys.push((key.to_owned(), egress));
        }
    }
    Ok(figures)
}

fn sums(group: &Value) -> Option<(u64, u64)> {
    let sum = group.get("sum")?;
    Some((bytes(sum.get("egressBytes")?)?, bytes(sum.get("ingressBytes")?)?))
}

/// A byte count: a whole number, or a sampled estimate in floating point.
fn bytes(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.round() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Asking = Asking {
        users: true,
        keys: true,
    };
    const TOTAL_ONLY: Asking = Asking {
        users: false,
        keys: false,
    };

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_request_asks_for_the_key_and_the_month_so_far_in_variables() {
        let body = request_body("acc", "key\"} evil", at("2026-12-06T13:04:05.9Z"), TOTAL_ONLY);
        assert_eq!(
            body["variables"],
            json!({"accountTag": "acc", "keyId": "key\"} evil", "since": "2026-12-01T00:00:00Z", "until": "2026-12-06T13:04:05Z"})
        );
        let query = body["query"].as_str().expect("query");
        assert!(!query.contains("evil"), "{query}");
        assert!(query.contains("total: callsTurnUsageAdaptiveGroups"), "{query}");
        assert!(!query.contains("users:") && !query.contains("$limit"), "{query}");
        let with_users = request_body("acc", "k", at("2026-01-01T00:00:00Z"), ALL);
        assert_eq!(with_users["variables"]["limit"], json!(USER_ROWS));
        assert_eq!(with_users["variables"]["since"], json!("2026-01-01T00:00:00Z"));
        let query = with_users["query"].as_str().expect("query");
        assert!(
            query.contains("orderBy: [sum_egressBytes_DESC]") && query.contains("keys:"),
            "{query}"
        );
    }

    #[test]
    fn an_answer_gives_the_total_the_heaviest_identifiers_and_the_keys() {
        let answer = json!({"data": {"viewer": {"accounts": [{
            "total": [{"sum": {"egressBytes": 502_614_982_u64, "ingressBytes": 4_853_235}}],
            "users": [
                {"dimensions": {"customIdentifier": "@alice:example.org"}, "sum": {"egressBytes": 400, "ingressBytes": 4}},
                {"dimensions": {"customIdentifier": ""}, "sum": {"egressBytes": 300, "ingressBytes": 3}},
                {"dimensions": {"customIdentifier": "@bob:example.org"}, "sum": {"egressBytes": 2.6e2, "ingressBytes": 2}}
            ],
            "keys": [{"dimensions": {"keyId": "k"}, "sum": {"egressBytes": 9}}]
        }]}}, "errors": null});
        let figures = parse_answer(answer.to_string().as_bytes(), ALL).expect("figures");
        assert_eq!((figures.egress, figures.ingress), (502_614_982, 4_853_235));
        let users: Vec<(&str, u64)> = figures
            .users
            .iter()
            .map(|u| (u.identifier.as_str(), u.egress))
            .collect();
        assert_eq!(users, [("@alice:example.org", 400), ("@bob:example.org", 260)]);
        assert_eq!(figures.keys, [("k".to_owned(), 9)]);
    }

    #[test]
    fn a_month_without_usage_is_zero() {
        let answer = br#"{"data":{"viewer":{"accounts":[{"total":[]}]}},"errors":null}"#;
        assert_eq!(
            parse_answer(answer, TOTAL_ONLY).expect("figures"),
            Figures::default()
        );
    }

    #[test]
    fn a_long_list_of_errors_is_told_by_its_first_three() {
        let errors: Vec<Value> = (1..=50).map(|n| json!({"message": format!("e{n}")})).collect();
        let body = json!({"data": null, "errors": errors}).to_string();
        let refused = parse_answer(body.as_bytes(), TOTAL_ONLY).expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "Cloudflare's analytics API refused the query: e1; e2; e3"
        );
    }

    #[test]
    fn errors_garbage_and_wrong_shapes_are_no_reading() {
        let kind = |body: &str, asking| {
            parse_answer(body.as_bytes(), asking)
                .map(|_| ())
                .map_err(|e| e.kind())
        };
        let refused = parse_answer(
            br#"{"data":null,"errors":[{"message":"not authorized","path":["viewer"],"extensions":{"code":"authz"}}]}"#,
            TOTAL_ONLY,
        )
        .expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "Cloudflare's analytics API refused the query: not authorized"
        );
        for (body, asking, expected) in [
            ("<html>", TOTAL_ONLY, "not-json"),
            ("{}", TOTAL_ONLY, "shape"),
            (
                r#"{"data":{"viewer":{"accounts":[]}}}"#,
                TOTAL_ONLY,
                "graphql-error",
            ),
            (r#"{"data":{"viewer":{"accounts":[{}]}}}"#, TOTAL_ONLY, "shape"),
            (
                r#"{"data":{"viewer":{"accounts":[{"total":[{"sum":{"egressBytes":-1,"ingressBytes":0}}]}]}}}"#,
                TOTAL_ONLY,
                "shape",
            ),
            (
                r#"{"data":{"viewer":{"accounts":[{"total":[{"sum":{"egressBytes":"1","ingressBytes":0}}]}]}}}"#,
                TOTAL_ONLY,
                "shape",
            ),
            (
                r#"{"data":{"viewer":{"accounts":[{"total":[{},{}]}]}}}"#,
                TOTAL_ONLY,
                "shape",
            ),
            (r#"{"data":{"viewer":{"accounts":[{"total":[]}]}}}"#, ALL, "shape"),
            (
                r#"{"data":{"viewer":{"accounts":[{"total":[],"users":[{"sum":{"egressBytes":1,"ingressBytes":1}}],"keys":[]}]}}}"#,
                ALL,
                "shape",
            ),
        ] {
            assert_eq!(kind(body, asking), Err(expected), "{body}");
        }
    }

    #[test]
    fn the_month_starts_at_midnight_utc_on_the_first() {
        assert_eq!(
            month_start(at("2026-12-31T23:59:59Z")),
            at("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            month_start(at("2027-01-01T00:00:00Z")),
            at("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            month_start(at("2024-02-29T12:00:00+14:00")),
            at("2024-02-01T00:00:00Z")
        );
    }
}
