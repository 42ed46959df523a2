//! `matrix-turnify check`: the first thing to run after deploying. It tries
//! the configuration against the live services with the daemon's own
//! clients and prints one line per check, each failure with the variable to
//! look at; it reads the month's Cloudflare usage as the daemon does (§13);
//! with the LiveKit front door on, it joins a throw-away room through the
//! running daemon (docs/behaviour.md §12).

use crate::config::Config;
use crate::credentials::cloudflare::CloudflareClient;
use crate::matrix::synapse::SynapseClient;

mod cloudflare;
mod finding;
mod homeserver;
mod livekit;
mod public_route;
mod render;
mod usage;

use cloudflare::check_cloudflare;
use finding::unrecognised;
pub use finding::{Finding, Verdict, rejected};
use homeserver::check_homeserver;
use livekit::{OurEntry, check_livekit};
use public_route::check_public_route;
pub use render::render;
use usage::check_usage;

/// `check --public-url URL [--token TOKEN]`: the URL clients use, and
/// optionally an access token for a whole credential round trip.
#[derive(Clone, Debug, Default)]
pub struct PublicRoute {
    pub url: String,
    pub token: Option<String>,
}

/// Runs every check that the configuration allows and returns the findings;
/// with `public`, the routing self-test through the public URL first.
pub async fn run(config: &Config, public: Option<&PublicRoute>) -> Vec<Finding> {
    let mut findings = vec![Finding::pass(format!(
        "configuration parses (Synapse {}, Cloudflare key {}, TTL {} s)",
        config.synapse_base_url, config.cf_key_id, config.turn_ttl_seconds
    ))];
    findings.extend(config.unrecognised_variables.iter().map(|w| unrecognised(w)));
    if let Some(public) = public {
        findings.extend(check_public_route(public, config.synapse_timeout).await);
    }
    let synapse = SynapseClient::new(&config.synapse_base_url, config.synapse_timeout);
    findings.extend(check_homeserver(&synapse, &config.synapse_base_url).await);
    let cloudflare = CloudflareClient::new(config);
    let mut turn_uris = None;
    match &cloudflare {
        Ok(cloudflare) => {
            let (cloudflare_findings, uris) = check_cloudflare(cloudflare, config).await;
            findings.extend(cloudflare_findings);
            turn_uris = uris;
        }
        Err(e) => findings.push(Finding::fail(
            format!("Cloudflare client cannot be built: {e}"),
            "this is a bug or a broken TLS set-up; please report it",
        )),
    }
    findings.extend(check_usage(config).await);
    if let Some(livekit) = &config.livekit {
        let ours = OurEntry {
            uris: turn_uris,
            custom_domain: config.turn_custom_domain.as_deref(),
        };
        findings.extend(check_livekit(livekit, cloudflare.as_ref().ok(), &ours).await);
    }
    findings
}

/// Differs between runs, so no homeserver can have issued the token.
fn made_up_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{nanos:x}{:x}", std::process::id())
}
