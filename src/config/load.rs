//! The whole configuration, validated in one pass that gathers every error
//! (docs/behaviour.md §7).

use std::net::SocketAddr;

use super::env::*;
use super::parse::*;
use super::unrecognised::unrecognised;
use super::usage::parse_usage;
use super::*;

impl Config {
    /// Parses and validates the configuration from `(name, value)` pairs:
    /// the process environment in `main`, a literal list in tests. Every
    /// variable is checked, so all that is wrong is reported at once.
    pub fn from_vars<I>(vars: I) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let unrecognised_variables = unrecognised(vars.iter().map(|(name, _)| name.as_str()));
        let env = Env::new(vars);
        let mut errors = Errors::default();
        let cf_key_id = errors.take(parse_key_id(&env));
        let cf_api_token = errors.take(parse_api_token(&env));
        let synapse_base_url = errors.take(parse_synapse_base_url(&env));
        let turn_ttl_seconds = errors.take(parse_ttl(&env));
        let log_level = errors.take(parse_log_level(&env));
        let log_format = errors.take(parse_log_format(&env));
        let listen_addr = errors.take(parse_listen_addr(&env));
        let cf_api_base_url = errors.take(parse_cf_base_url(&env));
        let synapse_timeout = errors.take(parse_timeout(&env, &SYNAPSE_TIMEOUT_SECONDS));
        let cf_timeout = errors.take(parse_timeout(&env, &CF_TIMEOUT_SECONDS));
        let credential_reuse = errors.take(parse_bool(&env, &CREDENTIAL_REUSE));
        let reuse_max_entries = errors.take(parse_whole(
            &env,
            &REUSE_MAX_ENTRIES,
            1..=10_000_000,
            "a whole number from 1 to 10000000",
        ));
        let custom_identifier = errors.take(parse_custom_identifier(&env));
        let turn_custom_domain = errors.take(parse_custom_domain(&env));
        let max_connections = errors.take(parse_whole(
            &env,
            &MAX_CONNECTIONS,
            1..=u64::MAX,
            "a whole number of at least 1",
        ));
        let shutdown_grace = errors.take(parse_timeout(&env, &SHUTDOWN_GRACE_SECONDS));
        let livekit = parse_livekit(&env, listen_addr, &mut errors);
        let usage = parse_usage(&env, custom_identifier.as_ref(), &mut errors);
        // A parser that gave nothing recorded why in `errors`.
        if let (
            Some(listen_addr),
            Some(synapse_base_url),
            Some(synapse_timeout),
            Some(cf_key_id),
            Some(cf_api_token),
            Some(cf_api_base_url),
            Some(cf_timeout),
            Some(turn_ttl_seconds),
            Some(log_level),
            Some(log_format),
            Some(max_connections),
            Some(shutdown_grace),
            Some(credential_reuse),
            Some(reuse_max_entries),
            Some(custom_identifier),
            Some(turn_custom_domain),
            Some(livekit),
            Some(usage),
        ) = (
            listen_addr,
            synapse_base_url,
            synapse_timeout,
            cf_key_id,
            cf_api_token,
            cf_api_base_url,
            cf_timeout,
            turn_ttl_seconds,
            log_level,
            log_format,
            max_connections,
            shutdown_grace,
            credential_reuse,
            reuse_max_entries,
            custom_identifier,
            turn_custom_domain,
            livekit,
            usage,
        ) {
            return Ok(Self {
                listen_addr,
                synapse_base_url,
                synapse_timeout,
                cf_key_id,
                cf_api_token,
                cf_api_base_url,
                cf_timeout,
                turn_ttl_seconds,
                log_level,
                log_format,
                max_connections,
                shutdown_grace,
                credential_reuse,
                reuse_max_entries,
                custom_identifier,
                turn_custom_domain,
                livekit,
                usage,
                unrecognised_variables,
            });
        }
        let mut errors = errors.0;
        errors.sort_by_key(|e| VARIABLES.iter().position(|v| v.name == e.variable));
        Err(ConfigErrors {
            warnings: unrecognised_variables,
            errors,
        })
    }
}

/// Only the listen address: what the `healthcheck` subcommand needs, parsed by
/// the same code as the server's, so the two cannot drift apart.
pub fn listen_addr_from_vars<I>(vars: I) -> Result<SocketAddr, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    parse_listen_addr(&Env::new(vars))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn the_originals_variable_names_work_unchanged() {
        let config = Config::from_vars(vars(&[
            ("SYNAPSE_BASE_URL", "http://synapse:8008/"),
            ("CF_TURN_TOKEN_ID", "0123abcd"),
            ("CF_TURN_API_TOKEN", "secret"),
            ("TURN_CREDENTIAL_TTL_SECONDS", "3600"),
            ("LOG_LEVEL", "WARNING"),
        ]))
        .expect("original config is valid");
        assert_eq!(config.cf_key_id, "0123abcd");
        assert_eq!(config.synapse_base_url, "http://synapse:8008");
        assert_eq!(config.turn_ttl_seconds, 3600);
        assert_eq!(config.log_level, LevelFilter::WARN);
    }

    #[test]
    fn missing_required_settings_name_their_variable() {
        let err = Config::from_vars(vars(&[("CF_TURN_API_TOKEN", "t")])).expect_err("no key id");
        assert_eq!(named(Err(err)), ["CF_TURN_KEY_ID"]);
        let err = Config::from_vars(vars(&[("CF_TURN_KEY_ID", "k")])).expect_err("no token");
        assert!(err.to_string().starts_with("CF_TURN_API_TOKEN: "), "{err}");
        assert_eq!(named(Err(err)), ["CF_TURN_API_TOKEN"]);
    }

    #[test]
    fn every_error_is_reported_at_once_in_the_tables_order() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[], &["CF_TURN_KEY_ID", "CF_TURN_API_TOKEN"]),
            (
                &[("CF_TURN_TOKEN_ID", "k"), ("LOG_LEVEL", "loud")],
                &["CF_TURN_API_TOKEN", "LOG_LEVEL"],
            ),
            (
                &[
                    ("CF_TURN_KEY_ID", "k"),
                    ("CF_TURN_API_TOKEN", "t"),
                    ("SHUTDOWN_GRACE_SECONDS", "soon"),
                    ("LISTEN_ADDR", "everywhere"),
                    ("CREDENTIAL_REUSE", "banana"),
                    ("SYNAPSE_BASE_URL", "synapse"),
                ],
                &[
                    "SYNAPSE_BASE_URL",
                    "LISTEN_ADDR",
                    "CREDENTIAL_REUSE",
                    "SHUTDOWN_GRACE_SECONDS",
                ],
            ),
            (
                &[
                    ("CF_TURN_KEY_ID", "k"),
                    ("CF_TURN_API_TOKEN", "t"),
                    ("LISTEN_ADDR", "everywhere"),
                    ("LIVEKIT_SFU_URL", "livekit:7880"),
                    ("LIVEKIT_LISTEN_ADDR", "7880"),
                    ("LIVEKIT_KEY", "k"),
                ],
                &[
                    "LISTEN_ADDR",
                    "LIVEKIT_SFU_URL",
                    "LIVEKIT_LISTEN_ADDR",
                    "LIVEKIT_SECRET",
                ],
            ),
        ];
        for (env, expected) in cases {
            assert_eq!(named(Config::from_vars(vars(env))), *expected, "{env:?}");
        }
    }

    #[test]
    fn a_typo_warning_comes_with_the_errors_it_explains() {
        let err = Config::from_vars(vars(&[("CF_TURN_KEY_ID", "k"), ("CF_TURN_API_TOKN", "typo")]))
            .expect_err("the token is not set");
        assert_eq!(
            err.warnings,
            ["CF_TURN_API_TOKN is not a matrix-turnify variable; did you mean CF_TURN_API_TOKEN?"]
        );
        assert_eq!(named(Err(err)), ["CF_TURN_API_TOKEN"]);
    }

    #[test]
    fn healthcheck_probes_loopback_for_a_wildcard_listen_address() {
        let v4 = listen_addr_from_vars(vars(&[])).expect("default");
        assert_eq!(local_probe_addr(v4), "127.0.0.1:4499".parse().expect("addr"));
        let v6 = listen_addr_from_vars(vars(&[("LISTEN_ADDR", "[::]:8080")])).expect("v6");
        assert_eq!(local_probe_addr(v6), "[::1]:8080".parse().expect("addr"));
        let exact = listen_addr_from_vars(vars(&[("LISTEN_ADDR", "127.0.0.2:1")])).expect("v4");
        assert_eq!(local_probe_addr(exact), exact);
    }
}
