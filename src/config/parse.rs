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
    const VAR: &str = CF_TURN_API_BASE_URL.name;
    let value = value_or_default(env, &CF_TURN_API_BASE_URL);
    let value = value.trim().trim_end_matches('/');
    let url =
        Url::parse(value).map_err(|e| ConfigError::new(VAR, format!("{value:?} is not a URL ({e})")))?;
    // The API token is a long-lived account secret: it may travel in clear
    // text only to this machine (tests and local fakes).
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        _ => {
            return Err(ConfigError::new(
                VAR,
                "must be an https:// URL (http:// is allowed only for a loopback address)",
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ConfigError::new(
            VAR,
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
    Some(Some(LiveKitConfig {
        sfu_url: sfu_url?,
        listen_addr: listen_addr?,
        api_key: api_key?,
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
