use super::load::*;
use super::parse::*;
use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const MINIMAL: &[(&str, &str)] = &[("CF_TURN_KEY_ID", "abc123"), ("CF_TURN_API_TOKEN", "tok-en")];

fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut all = vars(MINIMAL);
    all.extend(vars(extra));
    Config::from_vars(all)
}

/// The variables the errors name, in order.
#[track_caller]
fn named(result: Result<Config, ConfigErrors>) -> Vec<&'static str> {
    match result {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.errors.iter().map(|e| e.variable).collect(),
    }
}

/// The variable of the one error `extra` causes on top of a valid minimum.
#[track_caller]
fn error_variable(extra: &[(&str, &str)]) -> &'static str {
    match named(with(extra))[..] {
        [variable] => variable,
        ref more => panic!("expected one error, got {more:?}"),
    }
}

#[test]
fn defaults_match_the_documented_ones() {
    let config = with(&[]).expect("minimal config is valid");
    assert_eq!(config.listen_addr, "0.0.0.0:4499".parse().expect("addr"));
    assert_eq!(config.synapse_base_url, "http://synapse:8008");
    assert_eq!(config.synapse_timeout, Duration::from_secs(10));
    assert_eq!(
        config.cf_api_base_url.as_str(),
        "https://rtc.live.cloudflare.com/v1"
    );
    assert_eq!(config.cf_timeout, Duration::from_secs(5));
    assert_eq!(config.turn_ttl_seconds, 86_400);
    assert_eq!(config.log_level, LevelFilter::INFO);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.max_connections, 1024);
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
}

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
fn an_empty_variable_counts_as_unset() {
    let config = with(&[("TURN_CREDENTIAL_TTL_SECONDS", ""), ("LOG_LEVEL", "  ")]).expect("valid");
    assert_eq!(config.turn_ttl_seconds, 86_400);
    assert_eq!(config.log_level, LevelFilter::INFO);
    let result = Config::from_vars(vars(&[("CF_TURN_KEY_ID", ""), ("CF_TURN_API_TOKEN", "t")]));
    assert_eq!(named(result), ["CF_TURN_KEY_ID"], "an empty key id is missing");
}

#[test]
fn invalid_values_name_their_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("TURN_CREDENTIAL_TTL_SECONDS", "0", "TURN_CREDENTIAL_TTL_SECONDS"),
        (
            "TURN_CREDENTIAL_TTL_SECONDS",
            "172801",
            "TURN_CREDENTIAL_TTL_SECONDS",
        ),
        ("TURN_CREDENTIAL_TTL_SECONDS", "1h", "TURN_CREDENTIAL_TTL_SECONDS"),
        ("LISTEN_ADDR", "4499", "LISTEN_ADDR"),
        ("SYNAPSE_BASE_URL", "synapse:8008", "SYNAPSE_BASE_URL"),
        ("SYNAPSE_BASE_URL", "ftp://synapse", "SYNAPSE_BASE_URL"),
        ("SYNAPSE_BASE_URL", "http://synapse:8008/?x=1", "SYNAPSE_BASE_URL"),
        ("SYNAPSE_TIMEOUT_SECONDS", "0", "SYNAPSE_TIMEOUT_SECONDS"),
        ("SYNAPSE_TIMEOUT_SECONDS", "ten", "SYNAPSE_TIMEOUT_SECONDS"),
        ("CF_TIMEOUT_SECONDS", "-1", "CF_TIMEOUT_SECONDS"),
        (
            "CF_TURN_API_BASE_URL",
            "http://rtc.live.cloudflare.com/v1",
            "CF_TURN_API_BASE_URL",
        ),
        (
            "CF_TURN_API_BASE_URL",
            "http://10.0.0.1/v1",
            "CF_TURN_API_BASE_URL",
        ),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("MAX_CONNECTIONS", "0", "MAX_CONNECTIONS"),
        ("SHUTDOWN_GRACE_SECONDS", "soon", "SHUTDOWN_GRACE_SECONDS"),
    ];
    for (variable, value, expected) in cases {
        assert_eq!(
            error_variable(&[(variable, value)]),
            *expected,
            "{variable}={value}"
        );
    }
}

#[test]
fn the_ttl_accepts_cloudflares_whole_range() {
    assert_eq!(
        with(&[("TURN_CREDENTIAL_TTL_SECONDS", "1")]).map(|c| c.turn_ttl_seconds),
        Ok(1)
    );
    assert_eq!(
        with(&[("TURN_CREDENTIAL_TTL_SECONDS", "172800")]).map(|c| c.turn_ttl_seconds),
        Ok(172_800)
    );
}

#[test]
fn plain_http_to_cloudflare_only_on_loopback() {
    for base in [
        "http://127.0.0.1:8080/v1",
        "http://[::1]:9/v1",
        "http://localhost:1/v1",
    ] {
        let config = with(&[("CF_TURN_API_BASE_URL", base)]).expect("loopback http is allowed");
        assert_eq!(config.cf_api_base_url.scheme(), "http");
    }
}

#[test]
fn log_level_accepts_python_names_in_any_case() {
    for (value, level) in [
        ("debug", LevelFilter::DEBUG),
        ("Info", LevelFilter::INFO),
        ("WARNING", LevelFilter::WARN),
        ("warn", LevelFilter::WARN),
        ("ERROR", LevelFilter::ERROR),
        ("CRITICAL", LevelFilter::ERROR),
    ] {
        assert_eq!(
            with(&[("LOG_LEVEL", value)]).map(|c| c.log_level),
            Ok(level),
            "{value}"
        );
    }
}

#[test]
fn key_id_alias_agrees_or_is_an_error() {
    let same = with(&[("CF_TURN_TOKEN_ID", "abc123")]).expect("same value is fine");
    assert_eq!(same.cf_key_id, "abc123");
    assert_eq!(error_variable(&[("CF_TURN_TOKEN_ID", "other")]), "CF_TURN_KEY_ID");
    let result = Config::from_vars(vars(&[
        ("CF_TURN_KEY_ID", "../admin"),
        ("CF_TURN_API_TOKEN", "t"),
    ]));
    assert_eq!(named(result), ["CF_TURN_KEY_ID"], "path characters are refused");
}

#[test]
fn api_token_from_a_file_loses_its_trailing_newline() {
    let path = std::env::temp_dir().join(format!("turnify-token-{}", std::process::id()));
    std::fs::write(&path, "file-token\n").expect("write temp file");
    let path_str = path.to_str().expect("utf-8 temp path");
    let config = Config::from_vars(vars(&[
        ("CF_TURN_KEY_ID", "k"),
        ("CF_TURN_API_TOKEN_FILE", path_str),
    ]));
    std::fs::remove_file(&path).expect("remove temp file");
    assert_eq!(config.expect("valid").cf_api_token.expose(), "file-token");
}

#[test]
fn api_token_and_its_file_together_are_an_error() {
    assert_eq!(
        error_variable(&[("CF_TURN_API_TOKEN_FILE", "/run/secrets/x")]),
        "CF_TURN_API_TOKEN_FILE"
    );
    let result = Config::from_vars(vars(&[
        ("CF_TURN_KEY_ID", "k"),
        ("CF_TURN_API_TOKEN_FILE", "/nonexistent/turnify/secret"),
    ]));
    assert_eq!(named(result), ["CF_TURN_API_TOKEN_FILE"], "unreadable file");
}

#[test]
fn debug_output_never_shows_the_api_token() {
    let config = Config::from_vars(vars(&[
        ("CF_TURN_KEY_ID", "k"),
        ("CF_TURN_API_TOKEN", "very-secret-token-value"),
    ]))
    .expect("valid");
    let debug = format!("{config:?}");
    assert!(!debug.contains("very-secret-token-value"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
}

#[test]
fn reuse_and_attribution_settings() {
    let config = with(&[]).expect("valid");
    assert!(config.credential_reuse);
    assert_eq!(config.reuse_max_entries, 10_000);
    assert_eq!(config.custom_identifier, CustomIdentifier::Off);
    assert_eq!(config.turn_custom_domain, None);
    let config = with(&[
        ("CREDENTIAL_REUSE", "false"),
        ("CF_CUSTOM_IDENTIFIER", "hashed"),
        ("CF_CUSTOM_IDENTIFIER_KEY", "pepper"),
        ("TURN_CUSTOM_DOMAIN", "TURN.Example.org."),
    ])
    .expect("valid");
    assert!(!config.credential_reuse);
    assert_eq!(
        config.custom_identifier,
        CustomIdentifier::Hashed(Secret::new("pepper"))
    );
    assert_eq!(config.turn_custom_domain.as_deref(), Some("turn.example.org"));
    assert_eq!(
        with(&[("CF_CUSTOM_IDENTIFIER", "user_id")]).map(|c| c.custom_identifier),
        Ok(CustomIdentifier::UserId)
    );
    assert_eq!(
        error_variable(&[("CREDENTIAL_REUSE", "maybe")]),
        "CREDENTIAL_REUSE"
    );
    assert_eq!(error_variable(&[("REUSE_MAX_ENTRIES", "0")]), "REUSE_MAX_ENTRIES");
    assert_eq!(
        error_variable(&[("CF_CUSTOM_IDENTIFIER", "email")]),
        "CF_CUSTOM_IDENTIFIER"
    );
    assert_eq!(
        error_variable(&[("CF_CUSTOM_IDENTIFIER", "hashed")]),
        "CF_CUSTOM_IDENTIFIER_KEY"
    );
    assert_eq!(
        error_variable(&[("TURN_CUSTOM_DOMAIN", "https://turn.example.org")]),
        "TURN_CUSTOM_DOMAIN"
    );
    assert_eq!(
        error_variable(&[("TURN_CUSTOM_DOMAIN", "localhost")]),
        "TURN_CUSTOM_DOMAIN"
    );
}

#[test]
fn a_variable_that_looks_like_ours_gets_a_warning_with_the_closest_name() {
    let config = with(&[
        ("CF_TURN_API_TOKN", "x"),
        ("SYNAPSE_TIMEOUT", "3"),
        ("LOG_LEVELS", "debug"),
        ("MAX_FROBNICATION", "1"),
        ("HOME", "/root"),
        ("PATH", "/bin"),
    ])
    .expect("a typo does not stop start-up");
    assert_eq!(
        config.unrecognised_variables,
        [
            "CF_TURN_API_TOKN is not a matrix-turnify variable; did you mean CF_TURN_API_TOKEN?",
            "LOG_LEVELS is not a matrix-turnify variable; did you mean LOG_LEVEL?",
            "MAX_FROBNICATION is not a matrix-turnify variable and is ignored",
            "SYNAPSE_TIMEOUT is not a matrix-turnify variable and is ignored",
        ]
    );
    assert!(with(&[]).expect("minimal").unrecognised_variables.is_empty());
}

#[test]
fn every_default_in_the_table_parses() {
    let all_defaults: Vec<(String, String)> = VARIABLES
        .iter()
        .filter_map(|v| Some((v.name.to_owned(), v.default?.to_owned())))
        .chain(vars(MINIMAL))
        .collect();
    let explicit = Config::from_vars(all_defaults).expect("the documented defaults are valid");
    let implicit = with(&[]).expect("minimal");
    assert_eq!(format!("{explicit:?}"), format!("{implicit:?}"));
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let help = help_text();
    for variable in VARIABLES {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", variable.name)))
            .unwrap_or_else(|| panic!("{} missing in {help}", variable.name));
        if let Some(default) = variable.default {
            assert!(line.contains(&format!("(default {default})")), "{line}");
        }
    }
}

#[test]
fn the_livekit_front_door_is_off_unless_its_url_is_set() {
    let config = with(&[
        ("LIVEKIT_KEY", "APIkey"),
        ("LIVEKIT_LISTEN_ADDR", "not an address"),
    ])
    .expect("the LiveKit variables of an env file shared with lk-jwt-service are ignored");
    assert!(config.livekit.is_none());
    let livekit = with(&[("LIVEKIT_SFU_URL", "http://livekit:7880/")])
        .expect("valid")
        .livekit
        .expect("on");
    assert_eq!(livekit.sfu_url, "http://livekit:7880");
    assert_eq!(livekit.listen_addr, "0.0.0.0:7880".parse().expect("addr"));
    assert!(livekit.api_key.is_none());
}

#[test]
fn the_livekit_key_and_secret_come_together() {
    let livekit = with(&[
        ("LIVEKIT_SFU_URL", "https://livekit.example.org/sfu"),
        ("LIVEKIT_LISTEN_ADDR", "[::]:7881"),
        ("LIVEKIT_KEY", "APIkey"),
        ("LIVEKIT_SECRET", "livekit-very-secret"),
    ])
    .expect("valid")
    .livekit
    .expect("on");
    assert_eq!(livekit.sfu_url, "https://livekit.example.org/sfu");
    assert_eq!(livekit.listen_addr, "[::]:7881".parse().expect("addr"));
    let (key, secret) = livekit.api_key.clone().expect("a key");
    assert_eq!((key.as_str(), secret.expose()), ("APIkey", "livekit-very-secret"));
    assert!(!format!("{livekit:?}").contains("livekit-very-secret"));
    let on = ("LIVEKIT_SFU_URL", "http://livekit:7880");
    for (extra, variable) in [
        (&[("LIVEKIT_KEY", "APIkey")][..], "LIVEKIT_SECRET"),
        (&[("LIVEKIT_SECRET", "s")][..], "LIVEKIT_KEY"),
        (
            &[
                ("LIVEKIT_KEY", "k"),
                ("LIVEKIT_SECRET", "s"),
                ("LIVEKIT_SECRET_FILE", "/run/secrets/s"),
            ][..],
            "LIVEKIT_SECRET_FILE",
        ),
        (
            &[
                ("LIVEKIT_KEY", "k"),
                ("LIVEKIT_SECRET_FILE", "/nonexistent/turnify/s"),
            ][..],
            "LIVEKIT_SECRET_FILE",
        ),
    ] {
        let mut all = vec![on];
        all.extend_from_slice(extra);
        assert_eq!(error_variable(&all), variable, "{extra:?}");
    }
}

#[test]
fn invalid_livekit_values_name_their_variable() {
    for (url, listen, variable) in [
        ("livekit:7880", "0.0.0.0:7880", "LIVEKIT_SFU_URL"),
        ("ws://livekit:7880", "0.0.0.0:7880", "LIVEKIT_SFU_URL"),
        ("http://livekit:7880/?x=1", "0.0.0.0:7880", "LIVEKIT_SFU_URL"),
        ("http://user:pw@livekit:7880", "0.0.0.0:7880", "LIVEKIT_SFU_URL"),
        ("http://livekit:7880", "7880", "LIVEKIT_LISTEN_ADDR"),
        ("http://livekit:7880", "0.0.0.0:4499", "LIVEKIT_LISTEN_ADDR"),
        ("http://livekit:7880", "127.0.0.1:4499", "LIVEKIT_LISTEN_ADDR"),
    ] {
        assert_eq!(
            error_variable(&[("LIVEKIT_SFU_URL", url), ("LIVEKIT_LISTEN_ADDR", listen)]),
            variable,
            "{url} {listen}"
        );
    }
    let other_ip = with(&[
        ("LISTEN_ADDR", "127.0.0.1:4499"),
        ("LIVEKIT_SFU_URL", "http://livekit:7880"),
        ("LIVEKIT_LISTEN_ADDR", "127.0.0.2:4499"),
    ]);
    assert!(other_ip.is_ok(), "{other_ip:?}");
}

#[test]
fn a_misspelt_livekit_variable_gets_a_warning() {
    let config = with(&[("LIVEKIT_SFU_ULR", "http://livekit:7880")]).expect("valid");
    assert_eq!(
        config.unrecognised_variables,
        ["LIVEKIT_SFU_ULR is not a matrix-turnify variable; did you mean LIVEKIT_SFU_URL?"]
    );
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
fn each_yes_no_spelling_is_accepted_and_named_in_the_error() {
    let cases: &[(&str, bool)] = &[
        ("true", true),
        ("TRUE", true),
        ("yes", true),
        ("On", true),
        ("1", true),
        (" on ", true),
        ("false", false),
        ("False", false),
        ("no", false),
        ("OFF", false),
        ("0", false),
    ];
    for (value, expected) in cases {
        assert_eq!(
            with(&[("CREDENTIAL_REUSE", value)]).map(|c| c.credential_reuse),
            Ok(*expected),
            "{value:?}"
        );
    }
    let err = with(&[("CREDENTIAL_REUSE", "banana")]).expect_err("not a yes or no");
    let line = err.to_string();
    assert!(line.starts_with("CREDENTIAL_REUSE: \"banana\" is not "), "{line}");
    for spelling in BOOL_TRUE.iter().chain(&BOOL_FALSE) {
        assert!(line.contains(spelling), "{spelling} missing in {line}");
    }
    assert!(!line.contains('\n'), "one line: {line}");
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
