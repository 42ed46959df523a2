//! Every variable the daemon reads, with its default and meaning: the one
//! table that parsing, `--help`, `check` and docs/configuration.md follow.

/// Cloudflare refuses TTLs above 48 hours.
pub const MAX_TURN_TTL_SECONDS: u32 = 172_800;
/// Longest timeout we accept: anything longer is a typo, and would let one
/// stuck upstream hold client connections for hours.
pub(super) const MAX_TIMEOUT_SECONDS: f64 = 3600.0;

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

pub const CF_ACCOUNT_ID: Variable = var(
    "CF_ACCOUNT_ID",
    None,
    "the Cloudflare account of the TURN key: with CF_ANALYTICS_API_TOKEN, the month's usage is polled",
);
pub const CF_ANALYTICS_API_TOKEN: Variable = secret(
    "CF_ANALYTICS_API_TOKEN",
    "an API token with Account Analytics read permission (not the TURN key's; or CF_ANALYTICS_API_TOKEN_FILE)",
);
pub const CF_ANALYTICS_API_TOKEN_FILE: Variable = var(
    "CF_ANALYTICS_API_TOKEN_FILE",
    None,
    "read the analytics token from this file, trailing newline trimmed",
);
pub const CF_ANALYTICS_API_URL: Variable = var(
    "CF_ANALYTICS_API_URL",
    Some("https://api.cloudflare.com/client/v4/graphql"),
    "Cloudflare's GraphQL Analytics API; https:// unless the host is a loopback address",
);
pub const CF_USAGE_POLL_SECONDS: Variable = var(
    "CF_USAGE_POLL_SECONDS",
    Some("300"),
    "how often the month's usage is read, 1 to 86400 seconds, each wait up to a tenth longer at random",
);
pub const TURN_MONTHLY_EGRESS_BUDGET_GB: Variable = var(
    "TURN_MONTHLY_EGRESS_BUDGET_GB",
    None,
    "at or past this many GB (10^9 bytes) of TURN egress in a UTC month, no credential is handed out",
);
pub const TURN_USER_MONTHLY_EGRESS_BUDGET_GB: Variable = var(
    "TURN_USER_MONTHLY_EGRESS_BUDGET_GB",
    None,
    "the same for each user or LiveKit identity; needs CF_CUSTOM_IDENTIFIER",
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
pub const LIVEKIT_TURN_FOR: Variable = var(
    "LIVEKIT_TURN_FOR",
    Some("everyone"),
    "whose LiveKit join gets a Cloudflare entry: everyone, or publishers (allowed to publish media)",
);

/// Every variable the daemon reads, in the order docs/configuration.md lists them.
pub const VARIABLES: &[&Variable] = &[
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
    &CF_ACCOUNT_ID,
    &CF_ANALYTICS_API_TOKEN,
    &CF_ANALYTICS_API_TOKEN_FILE,
    &CF_ANALYTICS_API_URL,
    &CF_USAGE_POLL_SECONDS,
    &TURN_MONTHLY_EGRESS_BUDGET_GB,
    &TURN_USER_MONTHLY_EGRESS_BUDGET_GB,
    &LIVEKIT_SFU_URL,
    &LIVEKIT_LISTEN_ADDR,
    &LIVEKIT_KEY,
    &LIVEKIT_SECRET,
    &LIVEKIT_SECRET_FILE,
    &LIVEKIT_TURN_FOR,
];

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing::level_filters::LevelFilter;

    use super::*;
    use crate::config::testing::*;
    use crate::config::{Config, LogFormat};

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
}
