//! Configuration from environment variables (SPEC §7): the Python original's
//! names keep working unchanged, every value is parsed and checked once here,
//! and every error names the variable it is about.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tracing::level_filters::LevelFilter;
use url::Url;

/// Cloudflare refuses TTLs above 48 hours.
pub const MAX_TURN_TTL_SECONDS: u32 = 172_800;
const DEFAULT_TURN_TTL_SECONDS: u32 = 86_400;
const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:4499";
const DEFAULT_SYNAPSE_BASE_URL: &str = "http://synapse:8008";
const DEFAULT_CF_API_BASE_URL: &str = "https://rtc.live.cloudflare.com/v1";
const DEFAULT_SYNAPSE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CF_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_REUSE_MAX_ENTRIES: u64 = 10_000;
/// Longest timeout we accept: anything longer is a typo, and would let one
/// stuck upstream hold client connections for hours.
const MAX_TIMEOUT_SECONDS: f64 = 3600.0;

/// A value that must never reach a log line. `Debug` prints a placeholder;
/// the value is read only through [`Secret::expose`], where a header is built.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole, validated configuration of the daemon.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen_addr: SocketAddr,
    /// Without a trailing slash, so the client's path can be appended as is.
    pub synapse_base_url: String,
    pub synapse_timeout: Duration,
    pub cf_key_id: String,
    pub cf_api_token: Secret,
    pub cf_api_base_url: Url,
    pub cf_timeout: Duration,
    pub turn_ttl_seconds: u32,
    pub log_level: LevelFilter,
    pub log_format: LogFormat,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// Reuse a credential for the same access token (SPEC §5).
    pub credential_reuse: bool,
    pub reuse_max_entries: u64,
    pub custom_identifier: CustomIdentifier,
    /// A CNAME of `turn.cloudflare.com` to put in `turn:` URIs.
    pub turn_custom_domain: Option<String>,
}

/// What Cloudflare's `customIdentifier` carries, so admins can see TURN usage
/// per user in Cloudflare's analytics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomIdentifier {
    Off,
    /// The Matrix user ID as it is.
    UserId,
    /// HMAC-SHA256 of the user ID with this key: stable per user, not reversible.
    Hashed(Secret),
}

/// A setting that stops startup: `VARIABLE: what is wrong`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

/// The variables as strings; envy maps `SYNAPSE_BASE_URL` to `synapse_base_url`.
/// Everything is read as text so that the typed parsing below can name the
/// variable in its error, which envy's own messages do not do well.
#[derive(Default, Deserialize)]
struct RawEnv {
    listen_addr: Option<String>,
    synapse_base_url: Option<String>,
    synapse_timeout_seconds: Option<String>,
    cf_turn_key_id: Option<String>,
    cf_turn_token_id: Option<String>,
    cf_turn_api_token: Option<String>,
    cf_turn_api_token_file: Option<String>,
    cf_turn_api_base_url: Option<String>,
    cf_timeout_seconds: Option<String>,
    turn_credential_ttl_seconds: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    max_connections: Option<String>,
    shutdown_grace_seconds: Option<String>,
    credential_reuse: Option<String>,
    reuse_max_entries: Option<String>,
    cf_custom_identifier: Option<String>,
    cf_custom_identifier_key: Option<String>,
    cf_custom_identifier_key_file: Option<String>,
    turn_custom_domain: Option<String>,
}

fn raw_env<I>(vars: I) -> RawEnv
where
    I: IntoIterator<Item = (String, String)>,
{
    // Every field is an optional string, so envy cannot fail on these inputs;
    // the fallback keeps that an invariant rather than a panic.
    envy::from_iter(vars).unwrap_or_default()
}

/// An empty (or blank) variable counts as unset (SPEC §7).
fn set(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl Config {
    /// Parses and validates the configuration from `(name, value)` pairs:
    /// the process environment in `main`, a literal list in tests.
    pub fn from_vars<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let raw = raw_env(vars);
        Ok(Self {
            listen_addr: parse_listen_addr(raw.listen_addr)?,
            synapse_base_url: parse_synapse_base_url(raw.synapse_base_url)?,
            synapse_timeout: parse_timeout(
                "SYNAPSE_TIMEOUT_SECONDS",
                raw.synapse_timeout_seconds,
                DEFAULT_SYNAPSE_TIMEOUT,
            )?,
            cf_key_id: parse_key_id(raw.cf_turn_key_id, raw.cf_turn_token_id)?,
            cf_api_token: parse_api_token(raw.cf_turn_api_token, raw.cf_turn_api_token_file)?,
            cf_api_base_url: parse_cf_base_url(raw.cf_turn_api_base_url)?,
            cf_timeout: parse_timeout("CF_TIMEOUT_SECONDS", raw.cf_timeout_seconds, DEFAULT_CF_TIMEOUT)?,
            turn_ttl_seconds: parse_ttl(raw.turn_credential_ttl_seconds)?,
            log_level: parse_log_level(raw.log_level)?,
            log_format: parse_log_format(raw.log_format)?,
            max_connections: parse_max_connections(raw.max_connections)?,
            shutdown_grace: parse_timeout(
                "SHUTDOWN_GRACE_SECONDS",
                raw.shutdown_grace_seconds,
                DEFAULT_SHUTDOWN_GRACE,
            )?,
            credential_reuse: parse_bool("CREDENTIAL_REUSE", raw.credential_reuse, true)?,
            reuse_max_entries: parse_reuse_max_entries(raw.reuse_max_entries)?,
            custom_identifier: parse_custom_identifier(
                raw.cf_custom_identifier,
                raw.cf_custom_identifier_key,
                raw.cf_custom_identifier_key_file,
            )?,
            turn_custom_domain: parse_custom_domain(raw.turn_custom_domain)?,
        })
    }
}

/// Only the listen address: what the `healthcheck` subcommand needs, parsed by
/// the same code as the server's, so the two cannot drift apart.
pub fn listen_addr_from_vars<I>(vars: I) -> Result<SocketAddr, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    parse_listen_addr(raw_env(vars).listen_addr)
}

fn parse_listen_addr(value: Option<String>) -> Result<SocketAddr, ConfigError> {
    let value = set(value).unwrap_or_else(|| DEFAULT_LISTEN_ADDR.to_owned());
    value.trim().parse().map_err(|_| {
        ConfigError::new(
            "LISTEN_ADDR",
            format!("{value:?} is not an address and port such as 0.0.0.0:4499 or [::]:4499"),
        )
    })
}

fn parse_synapse_base_url(value: Option<String>) -> Result<String, ConfigError> {
    const VAR: &str = "SYNAPSE_BASE_URL";
    let value = set(value).unwrap_or_else(|| DEFAULT_SYNAPSE_BASE_URL.to_owned());
    let value = value.trim();
    let url =
        Url::parse(value).map_err(|e| ConfigError::new(VAR, format!("{value:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(VAR, "must start with http:// or https://"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ConfigError::new(
            VAR,
            "must be a plain base URL such as http://synapse:8008 (no credentials, query or fragment)",
        ));
    }
    // The client's path is appended byte for byte, so the base keeps its own
    // path (a homeserver under a prefix) but loses the trailing slash.
    Ok(value.trim_end_matches('/').to_owned())
}

fn parse_cf_base_url(value: Option<String>) -> Result<Url, ConfigError> {
    const VAR: &str = "CF_TURN_API_BASE_URL";
    let value = set(value).unwrap_or_else(|| DEFAULT_CF_API_BASE_URL.to_owned());
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

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn parse_key_id(key_id: Option<String>, token_id: Option<String>) -> Result<String, ConfigError> {
    let key_id = match (set(key_id), set(token_id)) {
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

fn parse_api_token(value: Option<String>, file: Option<String>) -> Result<Secret, ConfigError> {
    secret_or_file(("CF_TURN_API_TOKEN", value), ("CF_TURN_API_TOKEN_FILE", file))?.ok_or_else(|| {
        ConfigError::new(
            "CF_TURN_API_TOKEN",
            "not set; set it (or CF_TURN_API_TOKEN_FILE) to the TURN key's API token from the Cloudflare dashboard",
        )
    })
}

/// A secret given directly or through its `_FILE` variant (Docker secrets),
/// never both; `None` when neither is set.
fn secret_or_file(
    (variable, value): (&'static str, Option<String>),
    (file_variable, file): (&'static str, Option<String>),
) -> Result<Option<Secret>, ConfigError> {
    let (variable, secret) = match (set(value), set(file)) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                file_variable,
                format!("is set together with {variable}; set only one of them"),
            ));
        }
        (Some(secret), None) => (variable, secret),
        (None, Some(path)) => (file_variable, read_secret_file(file_variable, &path)?),
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
fn read_secret_file(variable: &'static str, path: &str) -> Result<String, ConfigError> {
    let path = Path::new(path.trim());
    std::fs::read_to_string(path)
        .map(|content| content.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| ConfigError::new(variable, format!("cannot read {}: {e}", path.display())))
}

fn parse_timeout(
    variable: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = set(value) else {
        return Ok(default);
    };
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

fn parse_ttl(value: Option<String>) -> Result<u32, ConfigError> {
    let Some(value) = set(value) else {
        return Ok(DEFAULT_TURN_TTL_SECONDS);
    };
    match value.trim().parse::<u32>() {
        Ok(ttl) if (1..=MAX_TURN_TTL_SECONDS).contains(&ttl) => Ok(ttl),
        _ => Err(ConfigError::new(
            "TURN_CREDENTIAL_TTL_SECONDS",
            format!(
                "{value:?} is not a whole number of seconds from 1 to {MAX_TURN_TTL_SECONDS} (Cloudflare's maximum, 48 hours)"
            ),
        )),
    }
}

/// Python's logging names are accepted too, so the original's setting works unchanged.
fn parse_log_level(value: Option<String>) -> Result<LevelFilter, ConfigError> {
    let Some(value) = set(value) else {
        return Ok(LevelFilter::INFO);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "trace" => Ok(LevelFilter::TRACE),
        "debug" => Ok(LevelFilter::DEBUG),
        "info" => Ok(LevelFilter::INFO),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "error" | "critical" | "fatal" => Ok(LevelFilter::ERROR),
        _ => Err(ConfigError::new(
            "LOG_LEVEL",
            format!("{value:?} is not one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        )),
    }
}

fn parse_log_format(value: Option<String>) -> Result<LogFormat, ConfigError> {
    let Some(value) = set(value) else {
        return Ok(LogFormat::Text);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(ConfigError::new(
            "LOG_FORMAT",
            format!("{value:?} is not text or json"),
        )),
    }
}

fn parse_max_connections(value: Option<String>) -> Result<usize, ConfigError> {
    let Some(value) = set(value) else {
        return Ok(DEFAULT_MAX_CONNECTIONS);
    };
    match value.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ConfigError::new(
            "MAX_CONNECTIONS",
            format!("{value:?} is not a whole number of at least 1"),
        )),
    }
}

fn parse_bool(variable: &'static str, value: Option<String>, default: bool) -> Result<bool, ConfigError> {
    let Some(value) = set(value) else {
        return Ok(default);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            variable,
            format!("{value:?} is not true or false"),
        )),
    }
}

fn parse_reuse_max_entries(value: Option<String>) -> Result<u64, ConfigError> {
    let Some(value) = set(value) else {
        return Ok(DEFAULT_REUSE_MAX_ENTRIES);
    };
    match value.trim().parse::<u64>() {
        Ok(n) if (1..=10_000_000).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            "REUSE_MAX_ENTRIES",
            format!("{value:?} is not a whole number from 1 to 10000000"),
        )),
    }
}

fn parse_custom_identifier(
    mode: Option<String>,
    key: Option<String>,
    key_file: Option<String>,
) -> Result<CustomIdentifier, ConfigError> {
    let key = secret_or_file(
        ("CF_CUSTOM_IDENTIFIER_KEY", key),
        ("CF_CUSTOM_IDENTIFIER_KEY_FILE", key_file),
    )?;
    let mode = set(mode).map(|m| m.trim().to_ascii_lowercase());
    match (mode.as_deref(), key) {
        (None | Some("off" | "false"), _) => Ok(CustomIdentifier::Off),
        (Some("user_id"), _) => Ok(CustomIdentifier::UserId),
        (Some("hashed"), Some(key)) => Ok(CustomIdentifier::Hashed(key)),
        (Some("hashed"), None) => Err(ConfigError::new(
            "CF_CUSTOM_IDENTIFIER_KEY",
            "not set; CF_CUSTOM_IDENTIFIER=hashed needs a secret key (or CF_CUSTOM_IDENTIFIER_KEY_FILE) so the tag cannot be reversed",
        )),
        (Some(other), _) => Err(ConfigError::new(
            "CF_CUSTOM_IDENTIFIER",
            format!("{other:?} is not off, user_id or hashed"),
        )),
    }
}

fn parse_custom_domain(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(value) = set(value) else {
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

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const MINIMAL: &[(&str, &str)] = &[("CF_TURN_KEY_ID", "abc123"), ("CF_TURN_API_TOKEN", "tok-en")];

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = vars(MINIMAL);
        all.extend(vars(extra));
        Config::from_vars(all)
    }

    #[track_caller]
    fn error_variable(extra: &[(&str, &str)]) -> &'static str {
        match with(extra) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.variable,
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
        assert_eq!(err.variable, "CF_TURN_KEY_ID");
        let err = Config::from_vars(vars(&[("CF_TURN_KEY_ID", "k")])).expect_err("no token");
        assert_eq!(err.variable, "CF_TURN_API_TOKEN");
        assert!(err.to_string().starts_with("CF_TURN_API_TOKEN: "), "{err}");
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let config = with(&[("TURN_CREDENTIAL_TTL_SECONDS", ""), ("LOG_LEVEL", "  ")]).expect("valid");
        assert_eq!(config.turn_ttl_seconds, 86_400);
        assert_eq!(config.log_level, LevelFilter::INFO);
        let err = Config::from_vars(vars(&[("CF_TURN_KEY_ID", ""), ("CF_TURN_API_TOKEN", "t")]))
            .expect_err("empty key id is missing");
        assert_eq!(err.variable, "CF_TURN_KEY_ID");
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
        let err = Config::from_vars(vars(&[
            ("CF_TURN_KEY_ID", "../admin"),
            ("CF_TURN_API_TOKEN", "t"),
        ]))
        .expect_err("path characters are refused");
        assert_eq!(err.variable, "CF_TURN_KEY_ID");
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
        let err = Config::from_vars(vars(&[
            ("CF_TURN_KEY_ID", "k"),
            ("CF_TURN_API_TOKEN_FILE", "/nonexistent/turnify/secret"),
        ]))
        .expect_err("unreadable file");
        assert_eq!(err.variable, "CF_TURN_API_TOKEN_FILE");
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
    fn healthcheck_probes_loopback_for_a_wildcard_listen_address() {
        let v4 = listen_addr_from_vars(vars(&[])).expect("default");
        assert_eq!(local_probe_addr(v4), "127.0.0.1:4499".parse().expect("addr"));
        let v6 = listen_addr_from_vars(vars(&[("LISTEN_ADDR", "[::]:8080")])).expect("v6");
        assert_eq!(local_probe_addr(v6), "[::1]:8080".parse().expect("addr"));
        let exact = listen_addr_from_vars(vars(&[("LISTEN_ADDR", "127.0.0.2:1")])).expect("v4");
        assert_eq!(local_probe_addr(exact), exact);
    }
}
