//! The usage and budget settings (docs/behaviour.md §13): an analytics
//! token and account, or neither; a budget only with them; a per-user budget
//! only with per-user identifiers to count by.

use std::time::Duration;

use super::env::*;
use super::parse::*;
use super::*;

/// Cloudflare's GB, as it bills: decimal.
pub const BYTES_PER_GB: f64 = 1e9;

/// `Some(None)`: usage is not read; `None`: an error was recorded.
pub(super) fn parse_usage(
    env: &Env,
    custom_identifier: Option<&CustomIdentifier>,
    errors: &mut Errors,
) -> Option<Option<UsageConfig>> {
    let account_id = env.set(&CF_ACCOUNT_ID).map(|id| id.trim().to_owned());
    let api_token = errors.take(secret_or_file(
        env,
        &CF_ANALYTICS_API_TOKEN,
        &CF_ANALYTICS_API_TOKEN_FILE,
    ));
    let api_url = errors.take(parse_cloudflare_url(env, &CF_ANALYTICS_API_URL));
    let poll_interval = errors.take(parse_whole(
        env,
        &CF_USAGE_POLL_SECONDS,
        1..=86_400,
        "a whole number of seconds from 1 to 86400",
    ));
    let monthly_budget = errors.take(parse_budget(env, &TURN_MONTHLY_EGRESS_BUDGET_GB));
    let user_monthly_budget = errors.take(parse_budget(env, &TURN_USER_MONTHLY_EGRESS_BUDGET_GB));
    let access = match (account_id, api_token?) {
        (Some(account_id), Some(api_token)) => Some((account_id, api_token)),
        (None, None) => None,
        (Some(_), None) => {
            errors.0.push(ConfigError::new(
                CF_ANALYTICS_API_TOKEN.name,
                "not set; CF_ACCOUNT_ID needs a token with Account Analytics read permission (or \
                 CF_ANALYTICS_API_TOKEN_FILE), or unset both",
            ));
            return None;
        }
        (None, Some(_)) => {
            errors.0.push(ConfigError::new(
                CF_ACCOUNT_ID.name,
                "not set; the analytics token needs the account ID of the TURN key (the Cloudflare \
                 dashboard's URL shows it), or unset both",
            ));
            return None;
        }
    };
    let (monthly_budget, user_monthly_budget) = (monthly_budget?, user_monthly_budget?);
    if user_monthly_budget.is_some() && custom_identifier == Some(&CustomIdentifier::Off) {
        errors.0.push(ConfigError::new(
            TURN_USER_MONTHLY_EGRESS_BUDGET_GB.name,
            "needs CF_CUSTOM_IDENTIFIER set to user_id or hashed: Cloudflare counts usage per user only by that tag",
        ));
        return None;
    }
    let Some((account_id, api_token)) = access else {
        let budget = [
            (monthly_budget, &TURN_MONTHLY_EGRESS_BUDGET_GB),
            (user_monthly_budget, &TURN_USER_MONTHLY_EGRESS_BUDGET_GB),
        ]
        .into_iter()
        .find_map(|(budget, variable)| budget.map(|_| variable.name));
        if let Some(variable) = budget {
            errors.0.push(ConfigError::new(
                variable,
                "needs CF_ACCOUNT_ID and CF_ANALYTICS_API_TOKEN: a budget is kept by reading the month's usage",
            ));
            return None;
        }
        return Some(None);
    };
    Some(Some(UsageConfig {
        account_id,
        api_token,
        api_url: api_url?,
        poll_interval: Duration::from_secs(poll_interval?),
        monthly_budget,
        user_monthly_budget,
    }))
}

/// A number of GB above 0, fractions allowed, in bytes.
fn parse_budget(env: &Env, variable: &Variable) -> Result<Option<u64>, ConfigError> {
    let Some(value) = env.set(variable) else {
        return Ok(None);
    };
    match value.trim().parse::<f64>() {
        // 10^9 GB is far beyond any bill; the bound keeps the product in u64.
        Ok(gb) if gb > 0.0 && gb <= 1e9 => Ok(Some((gb * BYTES_PER_GB).round() as u64)),
        _ => Err(ConfigError::new(
            variable.name,
            format!("{value:?} is not a number of GB (10^9 bytes) greater than 0, such as 500 or 0.5"),
        )),
    }
}

pub(super) fn parse_turn_for(env: &Env) -> Result<TurnFor, ConfigError> {
    parse_word(
        env,
        &LIVEKIT_TURN_FOR,
        &[
            (&["everyone"], TurnFor::Everyone),
            (&["publishers"], TurnFor::Publishers),
        ],
        "everyone or publishers",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    const ANALYTICS: &[(&str, &str)] = &[("CF_ACCOUNT_ID", "acc"), ("CF_ANALYTICS_API_TOKEN", "an-token")];

    fn with_analytics(extra: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let mut all = ANALYTICS.to_vec();
        all.extend_from_slice(extra);
        with(&all)
    }

    #[test]
    fn usage_is_off_without_an_account_and_token_and_read_with_both() {
        assert!(with(&[]).expect("minimal").usage.is_none());
        let usage = with_analytics(&[]).expect("valid").usage.expect("on");
        assert_eq!(usage.account_id, "acc");
        assert_eq!(usage.api_token.expose(), "an-token");
        assert_eq!(
            usage.api_url.as_str(),
            "https://api.cloudflare.com/client/v4/graphql"
        );
        assert_eq!(usage.poll_interval, Duration::from_secs(300));
        assert_eq!((usage.monthly_budget, usage.user_monthly_budget), (None, None));
    }

    #[test]
    fn budgets_are_decimal_gigabytes() {
        let usage = with_analytics(&[
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "1000"),
            ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "0.5"),
            ("CF_CUSTOM_IDENTIFIER", "user_id"),
        ])
        .expect("valid")
        .usage
        .expect("on");
        assert_eq!(usage.monthly_budget, Some(1_000_000_000_000));
        assert_eq!(usage.user_monthly_budget, Some(500_000_000));
    }

    #[test]
    fn a_wrong_usage_setting_names_its_variable() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[("CF_ACCOUNT_ID", "acc")], &["CF_ANALYTICS_API_TOKEN"]),
            (&[("CF_ANALYTICS_API_TOKEN", "t")], &["CF_ACCOUNT_ID"]),
            (
                &[("TURN_MONTHLY_EGRESS_BUDGET_GB", "10")],
                &["TURN_MONTHLY_EGRESS_BUDGET_GB"],
            ),
            (
                &[
                    ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "1"),
                    ("CF_CUSTOM_IDENTIFIER", "user_id"),
                ],
                &["TURN_USER_MONTHLY_EGRESS_BUDGET_GB"],
            ),
        ];
        for (env, expected) in cases {
            assert_eq!(named(with(env)), *expected, "{env:?}");
        }
        for (variable, value) in [
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "0"),
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "-1"),
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "lots"),
            ("TURN_MONTHLY_EGRESS_BUDGET_GB", "NaN"),
            ("CF_USAGE_POLL_SECONDS", "0"),
            ("CF_USAGE_POLL_SECONDS", "5m"),
            (
                "CF_ANALYTICS_API_URL",
                "http://api.cloudflare.com/client/v4/graphql",
            ),
        ] {
            assert_eq!(named(with_analytics(&[(variable, value)])), [variable], "{value}");
        }
        assert!(with_analytics(&[("CF_ANALYTICS_API_URL", "http://127.0.0.1:9/graphql")]).is_ok());
    }

    #[test]
    fn a_per_user_budget_without_identifiers_names_both_variables() {
        let err = with_analytics(&[("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", "5")]).expect_err("refused");
        assert_eq!(err.errors.len(), 1);
        let line = err.to_string();
        assert!(line.starts_with("TURN_USER_MONTHLY_EGRESS_BUDGET_GB: "), "{line}");
        assert!(line.contains("CF_CUSTOM_IDENTIFIER"), "{line}");
    }

    #[test]
    fn livekit_turn_for_is_everyone_or_publishers() {
        let livekit = |value: &str| {
            with(&[
                ("LIVEKIT_SFU_URL", "http://livekit:7880"),
                ("LIVEKIT_TURN_FOR", value),
            ])
        };
        let turn_for = |value: &str| livekit(value).expect("valid").livekit.expect("on").turn_for;
        assert_eq!(turn_for("everyone"), TurnFor::Everyone);
        assert_eq!(turn_for("Publishers"), TurnFor::Publishers);
        assert_eq!(named(livekit("subscribers")), ["LIVEKIT_TURN_FOR"]);
    }
}
