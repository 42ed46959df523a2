//! Configuration from environment variables (docs/behaviour.md §7): the Python original's
//! names keep working unchanged, every value is parsed and checked once here,
//! and every error names the variable it is about.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use url::Url;

/// Cloudflare refuses TTLs above 48 hours.
pub const MAX_TURN_TTL_SECONDS: u32 = 172_800;
/// Longest timeout we accept: anything longer is a typo, and would let one
/// stuck upstream hold client connections for hours.
const MAX_TIMEOUT_SECONDS: f64 = 3600.0;

/// One environment variable of the daemon. [`VARIABLES`] lists them all:
/// the parser reads each through its entry, `--help` prints them, and a test
/// checks that docs/configuration.md and `.env.example` document the same names and
/// defaults.
#[derive(Debug)]
pub struct Variable {
    pub name: &'static str,
    /// The value used when the variable is unset, as documented; `None`:
    /// required, or unset means "off".
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// Never printed, logged or echoed in an error.
    pub secret: bool,
}

const fn var(name: &'static str, default: Option<&'static str>, help: &'static str) -> Variable {
    Variable {
        name,
        default,
        help,
        secret: false,
    }
}

const fn secret(name: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default: None,
        help,
        secret: true,
    }
}

pub const CF_TURN_KEY_ID: Variable = var(
    "CF_TURN_KEY_ID",
    None,
    "the TURN key's id (required); CF_TURN_TOKEN_ID, the original's name, is an alias",
);
pub const CF_TURN_TOKEN_ID: Variable = var(
    "CF_TURN_TOKEN_ID",
    None,
    "the Python original's name for CF_TURN_KEY_ID; setting both to different values is an error",
);
pub const CF_TURN_API_TOKEN: Variable = secret(
    "CF_TURN_API_TOKEN",
    "the TURN key's API token (required, or CF_TURN_API_TOKEN_FILE)",
);
pub const CF_TURN_API_TOKEN_FILE: Variable = var(
    "CF_TURN_API_TOKEN_FILE",
    None,
    "read the API token from this file (Docker secrets), trailing newline trimmed",
);
pub const SYNAPSE_BASE_URL: Variable = var(
    "SYNAPSE_BASE_URL",
    Some("http://synapse:8008"),
    "the homeserver's client listener",
);
pub const TURN_CREDENTIAL_TTL_SECONDS: Variable = var(
    "TURN_CREDENTIAL_TTL_SECONDS",
    Some("86400"),
    "credential lifetime, 1 to 172800 seconds (Cloudflare's 48 h maximum)",
);
pub const LOG_LEVEL: Variable = var(
    "LOG_LEVEL",
    Some("INFO"),
    "TRACE, DEBUG, INFO, WARNING/WARN, ERROR, CRITICAL, any case",
);
pub const LOG_FORMAT: Variable = var("LOG_FORMAT", Some("text"), "text or json (one object per line)");
pub const LISTEN_ADDR: Variable = var(
    "LISTEN_ADDR",
    Some("0.0.0.0:4499"),
    "address and port to listen on ([::]:4499 for IPv6)",
);
pub const CF_TURN_API_BASE_URL: Variable = var(
    "CF_TURN_API_BASE_URL",
    Some("https://rtc.live.cloudflare.com/v1"),
    "Cloudflare's API; https:// unless the host is a loopback address",
);
pub const SYNAPSE_TIMEOUT_SECONDS: Variable = var(
    "SYNAPSE_TIMEOUT_SECONDS",
    Some("10"),
    "whole-request timeout towards the homeserver on the turnServer route",
);
pub const CF_TIMEOUT_SECONDS: Variable = var(
    "CF_TIMEOUT_SECONDS",
    Some("5"),
    "whole-request timeout towards Cloudflare",
);
pub const CREDENTIAL_REUSE: Variable = var(
    "CREDENTIAL_REUSE",
    Some("true"),
    "reuse a credential per access token while more than half its life remains",
);
pub const REUSE_MAX_ENTRIES: Variable = var(
    "REUSE_MAX_ENTRIES",
    Some("10000"),
    "most access tokens holding a credential for reuse",
);
pub const CF_CUSTOM_IDENTIFIER: Variable = var(
    "CF_CUSTOM_IDENTIFIER",
    Some("off"),
    "tag mints for Cloudflare's per-user analytics: off, user_id or hashed",
);
pub const CF_CUSTOM_IDENTIFIER_KEY: Variable = secret(
    "CF_CUSTOM_IDENTIFIER_KEY",
    "the HMAC key for CF_CUSTOM_IDENTIFIER=hashed (or CF_CUSTOM_IDENTIFIER_KEY_FILE)",
);
pub const CF_CUSTOM_IDENTIFIER_KEY_FILE: Variable = var(
    "CF_CUSTOM_IDENTIFIER_KEY_FILE",
    None,
    "read the HMAC key from this file, trailing newline trimmed",
);
pub const TURN_CUSTOM_DOMAIN: Variable = var(
    "TURN_CUSTOM_DOMAIN",
    None,
    "a CNAME of turn.cloudflare.com to put in turn: URIs (turns: URIs keep Cloudflare's host)",
);
pub const MAX_CONNECTIONS: Variable = var(
    "MAX_CONNECTIONS",
    Some("1024"),
    "concurrent connections per front door, fewer if the file descriptor limit cannot hold them; further ones wait, with a log line",
);
pub const SHUTDOWN_GRACE_SECONDS: Variable = var(
    "SHUTDOWN_GRACE_SECONDS",
    Some("30"),
    "on SIGTERM, how long in-flight requests may take to finish",
);

pub const LIVEKIT_SFU_URL: Variable = var(
    "LIVEKIT_SFU_URL",
    None,
    "LiveKit's own http(s) address, e.g. http://livekit:7880; set, it turns on the LiveKit front door",
);
pub const LIVEKIT_LISTEN_ADDR: Variable = var(
    "LIVEKIT_LISTEN_ADDR",
    Some("0.0.0.0:7880"),
    "address and port of the LiveKit front door (read only with LIVEKIT_SFU_URL)",
);
pub const LIVEKIT_KEY: Variable = var(
    "LIVEKIT_KEY",
    None,
    "LiveKit's API key, as lk-jwt-service has it: with LIVEKIT_SECRET, tokens are verified here too",
);
pub const LIVEKIT_SECRET: Variable = secret(
    "LIVEKIT_SECRET",
    "LiveKit's API secret for LIVEKIT_KEY (or LIVEKIT_SECRET_FILE)",
);
pub const LIVEKIT_SECRET_FILE: Variable = var(
    "LIVEKIT_SECRET_FILE",
    None,
    "read the LiveKit API secret from this file, trailing newline trimmed",
);

/// Every variable the daemon reads, in the order docs/configuration.md lists them.
pub const VARIABLES: [&Variable; 25] = [
    &CF_TURN_KEY_ID,
    &CF_TURN_TOKEN_ID,
    &CF_TURN_API_TOKEN,
    &CF_TURN_API_TOKEN_FILE,
    &SYNAPSE_BASE_URL,
    &TURN_CREDENTIAL_TTL_SECONDS,
    &LOG_LEVEL,
    &LOG_FORMAT,
    &LISTEN_ADDR,
    &CF_TURN_API_BASE_URL,
    &SYNAPSE_TIMEOUT_SECONDS,
    &CF_TIMEOUT_SECONDS,
    &CREDENTIAL_REUSE,
    &REUSE_MAX_ENTRIES,
    &CF_CUSTOM_IDENTIFIER,
    &CF_CUSTOM_IDENTIFIER_KEY,
    &CF_CUSTOM_IDENTIFIER_KEY_FILE,
    &TURN_CUSTOM_DOMAIN,
    &MAX_CONNECTIONS,
    &SHUTDOWN_GRACE_SECONDS,
    &LIVEKIT_SFU_URL,
    &LIVEKIT_LISTEN_ADDR,
    &LIVEKIT_KEY,
    &LIVEKIT_SECRET,
    &LIVEKIT_SECRET_FILE,
];

/// The variables, one per line with default and meaning, for `--help`.
pub fn help_text() -> String {
    let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
    VARIABLES
        .iter()
        .map(|v| {
            let default = match (v.default, v.secret) {
                (Some(default), _) => format!(" (default {default})"),
                (None, true) => " (secret)".to_owned(),
                (None, false) => String::new(),
            };
            format!("  {:width$}  {}{default}\n", v.name, v.help)
        })
        .collect()
}

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
    /// Reuse a credential for the same access token (docs/behaviour.md §5).
    pub credential_reuse: bool,
    pub reuse_max_entries: u64,
    pub custom_identifier: CustomIdentifier,
    /// A CNAME of `turn.cloudflare.com` to put in `turn:` URIs.
    pub turn_custom_domain: Option<String>,
    /// The LiveKit front door (docs/behaviour.md §12); `None`: off.
    pub livekit: Option<LiveKitConfig>,
    /// Warnings for variables that look like the daemon's but are not.
    pub unrecognised_variables: Vec<String>,
}

/// The LiveKit front door's settings, present only when `LIVEKIT_SFU_URL` is set.
#[derive(Clone, Debug)]
pub struct LiveKitConfig {
    /// LiveKit's address without a trailing slash, so a client's path can be
    /// appended as is.
    pub sfu_url: String,
    pub listen_addr: SocketAddr,
    /// LiveKit's API key and secret: with them the daemon verifies a
    /// participant's token itself.
    pub api_key: Option<(String, Secret)>,
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

/// The process environment, narrowed to the daemon's variables. A value is
/// read only through its [`Variable`], so a misspelt name cannot compile.
struct Env {
    values: HashMap<&'static str, String>,
}

impl Env {
    fn new<I>(vars: I) -> Self
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let values = vars
            .into_iter()
            // An empty (or blank) variable counts as unset (docs/behaviour.md §7).
            .filter(|(_, value)| !value.trim().is_empty())
            .filter_map(|(name, value)| {
                let known = VARIABLES.iter().find(|v| v.name == name)?;
                Some((known.name, value))
            })
            .collect();
        Self { values }
    }

    /// The value set in the environment.
    fn set(&self, variable: &Variable) -> Option<String> {
        self.values.get(variable.name).cloned()
    }

    /// The value set, or else the documented default.
    fn value(&self, variable: &Variable) -> Option<String> {
        self.set(variable).or_else(|| variable.default.map(str::to_owned))
    }
}

/// Everything that stops start-up, found in one pass, with the warnings to
/// show before it: a misspelt name (`CF_TURN_API_TOKN`) is often the very
/// reason a required variable is "not set".
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    /// As [`Config::unrecognised_variables`].
    pub warnings: Vec<String>,
    /// At least one, in the order of [`VARIABLES`], each naming its variable.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Gathers the errors of every parser, so that one start shows them all.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn take<T>(&mut self, parsed: Result<T, ConfigError>) -> Option<T> {
        parsed.map_err(|e| self.0.push(e)).ok()
    }
}

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

/// The prefixes of the daemon's variables: a name with one of them that is
/// not a variable is most likely a typo of one.
const OUR_PREFIXES: [&str; 10] = [
    "CF_",
    "TURN_",
    "SYNAPSE_",
    "CREDENTIAL_",
    "REUSE_",
    "LOG_",
    "LISTEN_",
    "SHUTDOWN_",
    "MAX_",
    "LIVEKIT_",
];

/// Variables that look like the daemon's but are not, each as one warning,
/// with the closest real name when one is near.
fn unrecognised<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut found: Vec<String> = names
        .filter(|name| OUR_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .filter(|name| !VARIABLES.iter().any(|v| v.name == *name))
        .map(|name| {
            let closest = VARIABLES
                .iter()
                .map(|v| (edit_distance(name, v.name), v.name))
                .min()
                .filter(|(distance, _)| *distance <= 3);
            match closest {
                Some((_, real)) => format!("{name} is not a matrix-turnify variable; did you mean {real}?"),
                None => format!("{name} is not a matrix-turnify variable and is ignored"),
            }
        })
        .collect();
    found.sort();
    found
}

/// Levenshtein distance: single-character insertions, deletions and
/// substitutions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Only the listen address: what the `healthcheck` subcommand needs, parsed by
/// the same code as the server's, so the two cannot drift apart.
pub fn listen_addr_from_vars<I>(vars: I) -> Result<SocketAddr, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    parse_listen_addr(&Env::new(vars))
}

/// The value set, or the default of a variable that has one.
fn value_or_default(env: &Env, variable: &Variable) -> String {
    env.value(variable).unwrap_or_default()
}

fn parse_listen_addr(env: &Env) -> Result<SocketAddr, ConfigError> {
    let value = value_or_default(env, &LISTEN_ADDR);
    value.trim().parse().map_err(|_| {
        ConfigError::new(
            LISTEN_ADDR.name,
            format!("{value:?} is not an address and port such as 0.0.0.0:4499 or [::]:4499"),
        )
    })
}

fn parse_synapse_base_url(env: &Env) -> Result<String, ConfigError> {
    let value = value_or_default(env, &SYNAPSE_BASE_URL);
    parse_base_url(SYNAPSE_BASE_URL.name, &value, "http://synapse:8008")
}

fn parse_cf_base_url(env: &Env) -> Result<Url, ConfigError> {
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

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn parse_key_id(env: &Env) -> Result<String, ConfigError> {
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

fn parse_api_token(env: &Env) -> Result<Secret, ConfigError> {
    secret_or_file(env, &CF_TURN_API_TOKEN, &CF_TURN_API_TOKEN_FILE)?.ok_or_else(|| {
        ConfigError::new(
            "CF_TURN_API_TOKEN",
            "not set; set it (or CF_TURN_API_TOKEN_FILE) to the TURN key's API token from the Cloudflare dashboard",
        )
    })
}

/// A secret given directly or through its `_FILE` variant (Docker secrets),
/// never both; `None` when neither is set.
fn secret_or_file(
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
fn read_secret_file(variable: &'static str, path: &str) -> Result<String, ConfigError> {
    let path = Path::new(path.trim());
    std::fs::read_to_string(path)
        .map(|content| content.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| ConfigError::new(variable, format!("cannot read {}: {e}", path.display())))
}

fn parse_timeout(env: &Env, variable: &Variable) -> Result<Duration, ConfigError> {
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
fn parse_whole<T: TryFrom<u64>>(
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
fn parse_word<T: Copy>(
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

fn parse_ttl(env: &Env) -> Result<u32, ConfigError> {
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
fn parse_log_level(env: &Env) -> Result<LevelFilter, ConfigError> {
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

fn parse_log_format(env: &Env) -> Result<LogFormat, ConfigError> {
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

fn parse_bool(env: &Env, variable: &Variable) -> Result<bool, ConfigError> {
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

fn parse_custom_identifier(env: &Env) -> Result<CustomIdentifier, ConfigError> {
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

fn parse_custom_domain(env: &Env) -> Result<Option<String>, ConfigError> {
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
fn parse_livekit(
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
fn parse_livekit_listen_addr(
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

fn parse_livekit_key(env: &Env) -> Result<Option<(String, Secret)>, ConfigError> {
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
fn parse_base_url(variable: &'static str, value: &str, example: &str) -> Result<String, ConfigError> {
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
}
