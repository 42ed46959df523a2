//! One parser per setting: each turns a value into its type and names its
//! variable in any error.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use url::Url;

use super::env::*;
use super::*;

pub(super) fn parse_listen_addr(env: &Env) -> Result<SocketAddr, ConfigError> {
    let value = value_or_default(env, &LISTEN_ADDR);
    value.trim().parse().map_err(|_| {
        ConfigError::new(
            LISTEN_ADDR.name,
            format!("{value:?} is not an address and port such as 0.0.0.0:4499 or [::]:4499"),
        )
    })
}

pub(super) fn parse_synapse_base_url(env: &Env) -> Result<String, ConfigError> {
    let value = value_or_default(env, &SYNAPSE_BASE_URL);
    parse_base_url(SYNAPSE_BASE_URL.name, &value, "http://synapse:8008")
}

pub(super) fn parse_cf_base_url(env: &Env) -> Result<Url, ConfigError> {
    parse_cloudflare_url(env, &CF_TURN_API_BASE_URL)
}

/// A Cloudflare API address: the request carries a long-lived account
/// secret, so it may travel in clear text only to this machine (tests and
/// local fakes).
pub(super) fn parse_cloudflare_url(env: &Env, variable: &Variable) -> Result<Url, ConfigError> {
    let value = value_or_default(env, variable);
    let var = variable.name;
    let value = value.trim().trim_end_matches('/');
    let url =
        Url::parse(value).map_err(|e| ConfigError::new(var, format!("{value:?} is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        _ => {
            return Err(ConfigError::new(
                var,
                "must be an https:// URL (http:// is allowed only for a loopback address)",
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ConfigError::new(
            var,
            "must be a plain base URL (no credentials, query or fragment)",
        ));
    }
    Ok(url)
}

pub(super) fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

pub(super) fn parse_key_id(env: &Env) -> Result<String, ConfigError> {
    let key_id = match (env.set(&CF_TURN_KEY_ID), env.set(&CF_TURN_TOKEN_ID)) {
        (Some(new), Some(old)) if new.trim() != old.trim() => {
            return Err(ConfigError::new(
                "CF_TURN_KEY_ID",
                "differs from CF_TURN_TOKEN_ID; set only one of them (they are the same setting)",
            ));
        }
        (Some(id), _) | (None, Some(id)) => id.trim().to_owned(),
        (None, None) => {
            return Err(ConfigError::new(
                "CF_TURN_KEY_ID",
                "not set; set it (or CF_TURN_TOKEN_ID, the original's name) to the TURN key id from the Cloudflare dashboard",
            ));
        }
    };
    // The id becomes a path segment of the API URL.
    if !key_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::new(
            "CF_TURN_KEY_ID",
            "may contain only letters, digits, '-' and '_' (Cloudflare key ids are hexadecimal)",
        ));
    }
    Ok(key_id)
}

pub(super) fn parse_api_token(env: &Env) -> Result<Secret, ConfigError> {
    secret_or_file(env, &CF_TURN_API_TOKEN, &CF_TURN_API_TOKEN_FILE)?.ok_or_else(|| {
        ConfigError::new(
            "CF_TURN_API_TOKEN",
            "not set; set it (or CF_TURN_API_TOKEN_FILE) to the TURN key's API token from the Cloudflare dashboard",
        )
    })
}

/// A secret given directly or through its `_FILE` variant (Docker secrets),
/// never both; `None` when neither is set.
pub(super) fn secret_or_file(
    env: &Env,
    secret_variable: &Variable,
    file_variable: &Variable,
) -> Result<Option<Secret>, ConfigError> {
    let (variable, secret) = match (env.set(secret_variable), env.set(file_variable)) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                file_variable.name,
                format!(
                    "is set together with {}; set only one of them",
                    secret_variable.name
                ),
            ));
        }
        (Some(secret), None) => (secret_variable.name, secret),
        (None, Some(path)) => (file_variable.name, read_secret_file(file_variable.name, &path)?),
        (None, None) => return Ok(None),
    };
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(ConfigError::new(variable, "is empty"));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            variable,
            "contains spaces or characters that cannot be sent in an HTTP header",
        ));
    }
    Ok(Some(Secret::new(secret)))
}

/// Reads a Docker-secrets style file; its trailing newline is not part of the secret.
pub(super) fn read_secret_file(variable: &'static str, path: &str) -> Result<String, ConfigError> {
    let path = Path::new(path.trim());
    std::fs::read_to_string(path)
        .map(|content| content.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| ConfigError::new(variable, format!("cannot read {}: {e}", path.display())))
}

pub(super) fn parse_timeout(env: &Env, variable: &Variable) -> Result<Duration, ConfigError> {
    let value = value_or_default(env, variable);
    let variable = variable.name;
    match value.trim().parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= MAX_TIMEOUT_SECONDS => {
            Ok(Duration::from_secs_f64(seconds))
        }
        _ => Err(ConfigError::new(
            variable,
            format!("{value:?} is not a number of seconds greater than 0 and at most {MAX_TIMEOUT_SECONDS}"),
        )),
    }
}

/// A whole number within `range`; `expected` says what, for the error.
pub(super) fn parse_whole<T: TryFrom<u64>>(
    env: &Env,
    variable: &Variable,
    range: std::ops::RangeInclusive<u64>,
    expected: &str,
) -> Result<T, ConfigError> {
    let value = value_or_default(env, variable);
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| ConfigError::new(variable.name, format!("{value:?} is not {expected}")))
}

/// One of a few words, in any case; `expected` lists them, for the error.
pub(super) fn parse_word<T: Copy>(
    env: &Env,
    variable: &Variable,
    words: &[(&[&str], T)],
    expected: &str,
) -> Result<T, ConfigError> {
    let value = value_or_default(env, variable);
    let word = value.trim().to_ascii_lowercase();
    words
        .iter()
        .find(|(spellings, _)| spellings.contains(&word.as_str()))
        .map(|(_, parsed)| *parsed)
        .ok_or_else(|| ConfigError::new(variable.name, format!("{value:?} is not {expected}")))
}

pub(super) fn parse_ttl(env: &Env) -> Result<u32, ConfigError> {
    parse_whole(
        env,
        &TURN_CREDENTIAL_TTL_SECONDS,
        1..=u64::from(MAX_TURN_TTL_SECONDS),
        &format!(
            "a whole number of seconds from 1 to {MAX_TURN_TTL_SECONDS} (Cloudflare's maximum, 48 hours)"
        ),
    )
}

/// Python's logging names are accepted too, so the original's setting works unchanged.
pub(super) fn parse_log_level(env: &Env) -> Result<LevelFilter, ConfigError> {
    parse_word(
        env,
        &LOG_LEVEL,
        &[
            (&["trace"], LevelFilter::TRACE),
            (&["debug"], LevelFilter::DEBUG),
            (&["info"], LevelFilter::INFO),
            (&["warn", "warning"], LevelFilter::WARN),
            (&["error", "critical", "fatal"], LevelFilter::ERROR),
        ],
        "one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL",
    )
}

pub(super) fn parse_log_format(env: &Env) -> Result<LogFormat, ConfigError> {
    parse_word(
        env,
        &LOG_FORMAT,
        &[(&["text"], LogFormat::Text), (&["json"], LogFormat::Json)],
        "text or json",
    )
}

/// Every spelling a yes/no variable accepts, named in its error and in
/// docs/configuration.md.
pub const BOOL_TRUE: [&str; 4] = ["true", "yes", "on", "1"];
pub const BOOL_FALSE: [&str; 4] = ["false", "no", "off", "0"];

pub(super) fn parse_bool(env: &Env, variable: &Variable) -> Result<bool, ConfigError> {
    parse_word(
        env,
        variable,
        &[(&BOOL_TRUE, true), (&BOOL_FALSE, false)],
        &format!(
            "a yes or no: {} for yes, {} for no (any case)",
            BOOL_TRUE.join(", "),
            BOOL_FALSE.join(", ")
        ),
    )
}

pub(super) fn parse_custom_identifier(env: &Env) -> Result<CustomIdentifier, ConfigError> {
    let key = secret_or_file(env, &CF_CUSTOM_IDENTIFIER_KEY, &CF_CUSTOM_IDENTIFIER_KEY_FILE)?;
    let mode = value_or_default(env, &CF_CUSTOM_IDENTIFIER)
        .trim()
        .to_ascii_lowercase();
    match (mode.as_str(), key) {
        ("off" | "false", _) => Ok(CustomIdentifier::Off),
        ("user_id", _) => Ok(CustomIdentifier::UserId),
        ("hashed", Some(key)) => Ok(CustomIdentifier::Hashed(key)),
        ("hashed", None) => Err(ConfigError::new(
            "CF_CUSTOM_IDENTIFIER_KEY",
            "not set; CF_CUSTOM_IDENTIFIER=hashed needs a secret key (or CF_CUSTOM_IDENTIFIER_KEY_FILE) so the tag cannot be reversed",
        )),
        (other, _) => Err(ConfigError::new(
            "CF_CUSTOM_IDENTIFIER",
            format!("{other:?} is not off, user_id or hashed"),
        )),
    }
}

pub(super) fn parse_custom_domain(env: &Env) -> Result<Option<String>, ConfigError> {
    let Some(value) = env.set(&TURN_CUSTOM_DOMAIN) else {
        return Ok(None);
    };
    let domain = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(valid_label) {
        return Err(ConfigError::new(
            "TURN_CUSTOM_DOMAIN",
            format!("{value:?} is not a host name such as turn.example.org"),
        ));
    }
    Ok(Some(domain))
}

/// The LiveKit front door, or `None` while `LIVEKIT_SFU_URL` is unset. Its
/// other variables are read only then: lk-jwt-service reads `LIVEKIT_KEY`
/// and `LIVEKIT_SECRET` by the same names, so an env file shared with it
/// must not stop a daemon that does not use them.
pub(super) fn parse_livekit(
    env: &Env,
    matrix_listen: Option<SocketAddr>,
    errors: &mut Errors,
) -> Option<Option<LiveKitConfig>> {
    let Some(value) = env.set(&LIVEKIT_SFU_URL) else {
        return Some(None);
    };
    let sfu_url = errors.take(parse_base_url(
        LIVEKIT_SFU_URL.name,
        &value,
        "http://livekit:7880",
    ));
    let listen_addr = errors.take(parse_livekit_listen_addr(env, matrix_listen));
    let api_key = errors.take(parse_livekit_key(env));
    let turn_for = errors.take(super::usage::parse_turn_for(env));
    Some(Some(LiveKitConfig {
        sfu_url: sfu_url?,
        listen_addr: listen_addr?,
        api_key: api_key?,
        turn_for: turn_for?,
    }))
}

/// The front door's address; with `LISTEN_ADDR` unparsable, only its own form
/// is checked (that error is reported on its own line).
pub(super) fn parse_livekit_listen_addr(
    env: &Env,
    matrix_listen: Option<SocketAddr>,
) -> Result<SocketAddr, ConfigError> {
    let listen = value_or_default(env, &LIVEKIT_LISTEN_ADDR);
    let listen_addr: SocketAddr = listen.trim().parse().map_err(|_| {
        ConfigError::new(
            LIVEKIT_LISTEN_ADDR.name,
            format!("{listen:?} is not an address and port such as 0.0.0.0:7880 or [::]:7880"),
        )
    })?;
    let Some(matrix_listen) = matrix_listen else {
        return Ok(listen_addr);
    };
    let overlaps = listen_addr.port() == matrix_listen.port()
        && (listen_addr.ip() == matrix_listen.ip()
            || listen_addr.ip().is_unspecified()
            || matrix_listen.ip().is_unspecified());
    if overlaps && listen_addr.port() != 0 {
        return Err(ConfigError::new(
            LIVEKIT_LISTEN_ADDR.name,
            format!(
                "{listen_addr} is the port of LISTEN_ADDR ({matrix_listen}); the two front doors need a port each"
            ),
        ));
    }
    Ok(listen_addr)
}

pub(super) fn parse_livekit_key(env: &Env) -> Result<Option<(String, Secret)>, ConfigError> {
    let secret = secret_or_file(env, &LIVEKIT_SECRET, &LIVEKIT_SECRET_FILE)?;
    match (env.set(&LIVEKIT_KEY), secret) {
        (Some(key), Some(secret)) => Ok(Some((key.trim().to_owned(), secret))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            LIVEKIT_SECRET.name,
            "not set; LIVEKIT_KEY needs its secret (or LIVEKIT_SECRET_FILE), or unset both",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            LIVEKIT_KEY.name,
            "not set; the LiveKit secret needs the API key it belongs to, or unset both",
        )),
    }
}

/// An `http://` or `https://` base URL without credentials, query or
/// fragment, returned without its trailing slash: a client's path is
/// appended to it byte for byte, so the base may keep a path of its own.
pub(super) fn parse_base_url(
    variable: &'static str,
    value: &str,
    example: &str,
) -> Result<String, ConfigError> {
    let value = value.trim();
    let url =
        Url::parse(value).map_err(|e| ConfigError::new(variable, format!("{value:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(variable, "must start with http:// or https://"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ConfigError::new(
            variable,
            format!("must be a plain base URL such as {example} (no credentials, query or fragment)"),
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// The address the `healthcheck` subcommand connects to: the listen address,
/// with a wildcard replaced by the loopback address of the same family.
pub fn local_probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

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
}
