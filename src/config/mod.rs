//! Configuration from environment variables (docs/behaviour.md §7): the Python original's
//! names keep working unchanged, every value is parsed and checked once here,
//! and every error names the variable it is about.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use url::Url;

mod env;
mod help;
mod load;
mod parse;
mod unrecognised;
mod usage;
mod variables;

#[cfg(test)]
mod testing;

pub use help::help_text;
pub use load::listen_addr_from_vars;
pub use parse::{BOOL_FALSE, BOOL_TRUE, local_probe_addr};
pub use usage::BYTES_PER_GB;
pub use variables::*;

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
    /// Cloudflare usage polling and budgets (docs/behaviour.md §13); `None`: off.
    pub usage: Option<UsageConfig>,
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
    pub turn_for: TurnFor,
}

/// Whose LiveKit join gets a Cloudflare entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnFor {
    Everyone,
    /// Only participants LiveKit's join allows to publish media: a remote
    /// subscriber in a multi-SFU call uses its own homeserver's relay.
    Publishers,
}

/// Reading the TURN key's usage from Cloudflare's GraphQL Analytics API,
/// and the budgets that reading enforces.
#[derive(Clone, Debug)]
pub struct UsageConfig {
    pub account_id: String,
    pub api_token: Secret,
    pub api_url: Url,
    pub poll_interval: Duration,
    /// In bytes (Cloudflare's GB is 10^9 bytes).
    pub monthly_budget: Option<u64>,
    /// Per `customIdentifier`, in bytes.
    pub user_monthly_budget: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

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
}
