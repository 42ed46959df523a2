//! The usage check (docs/behaviour.md §13): one reading, as the daemon takes
//! it, with the account's keys beside it, so that a wrong token, account or
//! key id each show as what they are.

use std::fmt::Write as _;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::{Config, CustomIdentifier, UsageConfig};
use crate::credentials::cloudflare::CloudflareError;
use crate::usage::analytics::{AnalyticsClient, Asking, PollError};
use crate::usage::{Limits, Reading, in_gb};

use super::*;

/// Cloudflare's free TURN egress a month, in bytes (shared with its SFU).
const FREE_EGRESS: u64 = 1_000_000_000_000;

fn gb(bytes: u64) -> String {
    format!("{:.3} GB", in_gb(bytes))
}

fn poll_hint(e: &PollError, budget_set: bool) -> String {
    let what = match e {
        PollError::GraphQl(_) | PollError::Cloudflare(CloudflareError::Status { .. }) => {
            "check CF_ANALYTICS_API_TOKEN (or its _FILE): it needs Account Analytics read permission on \
             CF_ACCOUNT_ID, the account that holds the TURN key; it is not the TURN key's token"
        }
        PollError::Cloudflare(
            CloudflareError::Connect(_) | CloudflareError::Timeout | CloudflareError::Transport(_),
        ) => "check CF_ANALYTICS_API_URL, CF_TIMEOUT_SECONDS and that this host may reach api.cloudflare.com",
        PollError::Cloudflare(_) => {
            "check CF_ANALYTICS_API_URL: what answers there is not Cloudflare's GraphQL Analytics API"
        }
    };
    if budget_set {
        format!(
            "{what}. While no reading succeeds, the budget (TURN_MONTHLY_EGRESS_BUDGET_GB or \
             TURN_USER_MONTHLY_EGRESS_BUDGET_GB) withholds every credential"
        )
    } else {
        what.to_owned()
    }
}

pub(super) async fn check_usage(config: &Config) -> Vec<Finding> {
    let Some(usage) = &config.usage else {
        return vec![Finding::skip(
            "Cloudflare usage: not read",
            "set CF_ACCOUNT_ID and CF_ANALYTICS_API_TOKEN to see the month's TURN egress on /metrics and to \
             set a budget (docs/operations.md, \"Cost\")",
        )];
    };
    let client = match AnalyticsClient::new(usage, &config.cf_key_id, config.cf_timeout) {
        Ok(client) => client,
        Err(e) => {
            return vec![Finding::fail(
                format!("the analytics client cannot be built: {e}"),
                "this is a bug or a broken TLS set-up; please report it",
            )];
        }
    };
    let per_user = config.custom_identifier != CustomIdentifier::Off;
    let now = DateTime::<Utc>::from(std::time::SystemTime::now());
    let budget_set = usage.monthly_budget.is_some() || usage.user_monthly_budget.is_some();
    let figures = match client
        .month_to_date(
            now,
            Asking {
                users: per_user,
                keys: true,
            },
        )
        .await
    {
        Ok(figures) => figures,
        Err(e) => {
            return vec![Finding::fail(
                format!("Cloudflare's usage could not be read: {e}"),
                poll_hint(&e, budget_set),
            )];
        }
    };
    let reading = Reading::new(figures, &Limits::of(usage), Instant::now(), now);
    findings(config, usage, &reading, now)
}

/// The findings of a good reading; pure, for the tests.
pub(super) fn findings(
    config: &Config,
    usage: &UsageConfig,
    reading: &Reading,
    now: DateTime<Utc>,
) -> Vec<Finding> {
    let figures = &reading.figures;
    let mut findings = vec![Finding::pass(format!(
        "the analytics token reads account {} (Account Analytics)",
        usage.account_id
    ))];
    let ours = figures.keys.iter().any(|(key, _)| *key == config.cf_key_id);
    findings.push(if figures.egress > 0 || ours {
        Finding::pass(format!(
            "Cloudflare records usage for key {} this month",
            config.cf_key_id
        ))
    } else if figures.keys.is_empty() {
        Finding::pass("no TURN usage on this account this month yet")
    } else {
        let others: Vec<&str> = figures.keys.iter().map(|(key, _)| key.as_str()).collect();
        Finding::warn(
            format!(
                "no usage this month for key {}, but for other keys of the account: {}",
                config.cf_key_id,
                others.join(", ")
            ),
            "if calls did use TURN this month, CF_TURN_KEY_ID names another key than the one minting",
        )
    });
    findings.push(Finding::pass(format!(
        "this month (UTC, {}) so far: egress {}, ingress {}; of the 1000 GB free a month, {} left \
         (shared with Cloudflare's SFU; beyond it, $0.05 a GB)",
        now.format("%B %Y"),
        gb(figures.egress),
        gb(figures.ingress),
        gb(FREE_EGRESS.saturating_sub(figures.egress)),
    )));
    if let Some(budget) = usage.monthly_budget {
        findings.push(if figures.egress >= budget {
            Finding::warn(
                format!("the monthly budget of {} is reached", gb(budget)),
                "no credential is handed out on either front door until the month turns (UTC); raise \
                 TURN_MONTHLY_EGRESS_BUDGET_GB and restart to hand them out again",
            )
        } else {
            Finding::pass(format!(
                "monthly budget: {} left of {}",
                gb(budget - figures.egress),
                gb(budget)
            ))
        });
    }
    if config.custom_identifier == CustomIdentifier::Off {
        findings.push(Finding::skip(
            "the heaviest users: mints carry no customIdentifier",
            "set CF_CUSTOM_IDENTIFIER to user_id or hashed to see usage per user",
        ));
        return findings;
    }
    let top = &figures.users[..figures.users.len().min(5)];
    if top.is_empty() {
        findings.push(Finding::pass("the heaviest users: none with usage this month"));
    } else {
        let mut line = String::from("the heaviest users this month:");
        for user in top {
            let over = if reading.over.contains(&user.identifier) {
                " (past the per-user budget)"
            } else {
                ""
            };
            let _ = write!(line, " {} {}{over};", user.identifier, gb(user.egress));
        }
        findings.push(Finding::pass(line.trim_end_matches(';')));
    }
    if let Some(budget) = usage.user_monthly_budget {
        let over = reading.over.len();
        findings.push(if over == 0 {
            Finding::pass(format!(
                "per-user budget of {}: nobody has reached it",
                gb(budget)
            ))
        } else {
            let who = if over == 1 {
                "1 user has".to_owned()
            } else {
                format!("{over} users have")
            };
            Finding::warn(
                format!("per-user budget of {}: {who} reached it", gb(budget)),
                "they get no credential until the month turns (UTC); the log names them",
            )
        });
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::analytics::{Figures, UserFigures};

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut vars = vec![
            ("CF_TURN_KEY_ID", "our-key"),
            ("CF_TURN_API_TOKEN", "t"),
            ("CF_ACCOUNT_ID", "acc"),
            ("CF_ANALYTICS_API_TOKEN", "a"),
        ];
        vars.extend_from_slice(extra);
        Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).expect("valid")
    }

    fn lines(config: &Config, figures: Figures) -> Vec<(Verdict, String)> {
        let usage = config.usage.as_ref().expect("usage");
        let now = DateTime::parse_from_rfc3339("2026-12-06T13:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let reading = Reading::new(figures, &Limits::of(usage), Instant::now(), now);
        findings(config, usage, &reading, now)
            .into_iter()
            .map(|f| (f.verdict, f.what))
            .collect()
    }

    fn user(identifier: &str, gb: u64) -> UserFigures {
        UserFigures {
            identifier: identifier.to_owned(),
            egress: gb * 1_000_000_000,
            ingress: 0,
        }
    }

    #[test]
    fn a_reading_shows_the_month_the_allowance_the_budget_and_the_heaviest_users() {
        let config = config(&[
            ("CF_CUSTOM_IDENTIFIER", "user_id"),
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "900"),
            ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "50"),
        ]);
        let users: Vec<UserFigures> = (1..=6).map(|i| user(&format!("@u{i}:x"), 70 - 10 * i)).collect();
        let found = lines(
            &config,
            Figures {
                egress: 850_000_000_000,
                ingress: 1_000_000_000,
                users,
                keys: vec![("our-key".into(), 850_000_000_000)],
            },
        );
        let text: Vec<&str> = found.iter().map(|(_, what)| what.as_str()).collect();
        assert_eq!(
            text[0],
            "the analytics token reads account acc (Account Analytics)"
        );
        assert_eq!(text[1], "Cloudflare records usage for key our-key this month");
        assert!(text[2].starts_with("this month (UTC, December 2026) so far: egress 850.000 GB, ingress 1.000 GB; of the 1000 GB free a month, 150.000 GB left"), "{}", text[2]);
        assert_eq!(text[3], "monthly budget: 50.000 GB left of 900.000 GB");
        assert_eq!(
            text[4],
            "the heaviest users this month: @u1:x 60.000 GB (past the per-user budget); @u2:x 50.000 GB (past the \
             per-user budget); @u3:x 40.000 GB; @u4:x 30.000 GB; @u5:x 20.000 GB"
        );
        assert_eq!(
            found[5],
            (
                Verdict::Warning,
                "per-user budget of 50.000 GB: 2 users have reached it".into()
            )
        );
        assert!(found.iter().all(|(verdict, _)| *verdict != Verdict::Failed));
    }

    #[test]
    fn a_reached_budget_and_a_key_without_usage_are_warnings() {
        let config = config(&[("TURN_MONTHLY_EGRESS_BUDGET_GB", "1")]);
        let found = lines(
            &config,
            Figures {
                egress: 0,
                keys: vec![("other-key".into(), 5)],
                ..Figures::default()
            },
        );
        assert_eq!(found[1].0, Verdict::Warning);
        assert!(
            found[1].1.contains("other keys of the account: other-key"),
            "{}",
            found[1].1
        );
        let reached = lines(
            &config,
            Figures {
                egress: 1_000_000_000,
                keys: vec![("our-key".into(), 1_000_000_000)],
                ..Figures::default()
            },
        );
        assert_eq!(
            reached[3],
            (
                Verdict::Warning,
                "the monthly budget of 1.000 GB is reached".into()
            )
        );
        assert_eq!(
            reached.last().map(|(verdict, _)| *verdict),
            Some(Verdict::Skipped)
        );
    }

    #[test]
    fn a_failed_reading_names_the_variables_and_what_a_budget_does_meanwhile() {
        let refused = PollError::GraphQl("not authorized".into());
        let hint = poll_hint(&refused, true);
        for variable in [
            "CF_ANALYTICS_API_TOKEN",
            "CF_ACCOUNT_ID",
            "TURN_MONTHLY_EGRESS_BUDGET_GB",
        ] {
            assert!(hint.contains(variable), "{hint}");
        }
        assert!(!poll_hint(&refused, false).contains("TURN_MONTHLY_EGRESS_BUDGET_GB"));
        let hint = poll_hint(&PollError::Cloudflare(CloudflareError::Timeout), false);
        assert!(hint.contains("CF_ANALYTICS_API_URL"), "{hint}");
    }
}
