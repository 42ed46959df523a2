//! Cloudflare's check: a short-lived test credential minted and revoked.

use http::StatusCode;

use crate::config::Config;
use crate::credentials::cloudflare::{CloudflareClient, CloudflareError};
use crate::credentials::turn;

use super::*;

/// A TTL long enough to mint and revoke, short enough that a credential the
/// revoke missed dies on its own.
pub(super) const CHECK_TTL_SECONDS: u32 = 60;

pub(super) fn cloudflare_hint(err: &CloudflareError) -> String {
    match err {
        CloudflareError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN => {
            "check CF_TURN_API_TOKEN (or CF_TURN_API_TOKEN_FILE): it must be the API token shown when the TURN key was created".into()
        }
        CloudflareError::Status { status, .. } if *status == StatusCode::NOT_FOUND => {
            "check CF_TURN_KEY_ID (or CF_TURN_TOKEN_ID): no TURN key with that id exists for this token".into()
        }
        CloudflareError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
            "Cloudflare is rate-limiting this key; try again in a minute".into()
        }
        CloudflareError::Status { .. } => "Cloudflare refused the request; check Cloudflare's status page and try again".into(),
        CloudflareError::Connect(_) | CloudflareError::Timeout | CloudflareError::Transport(_) => {
            "check CF_TURN_API_BASE_URL, CF_TIMEOUT_SECONDS and that this host may reach Cloudflare (outbound HTTPS)".into()
        }
        CloudflareError::TooLarge | CloudflareError::NotJson(_) | CloudflareError::Shape(_) => {
            "check CF_TURN_API_BASE_URL: what answers there is not Cloudflare's TURN API".into()
        }
    }
}

/// The findings, and the URIs clients would get: the ones the daemon also
/// splices into a LiveKit join.
pub(super) async fn check_cloudflare(
    cloudflare: &CloudflareClient,
    config: &Config,
) -> (Vec<Finding>, Option<Vec<String>>) {
    let servers = match cloudflare.mint(CHECK_TTL_SECONDS, None).await {
        Ok(servers) => servers,
        Err(e) => {
            return (
                vec![Finding::fail(
                    format!("Cloudflare did not mint a test credential: {e}"),
                    cloudflare_hint(&e),
                )],
                None,
            );
        }
    };
    let mut findings = vec![Finding::pass(format!(
        "Cloudflare accepts key {} and its API token (minted a {CHECK_TTL_SECONDS} s test credential)",
        config.cf_key_id
    ))];
    let credential = match turn::extract(&servers) {
        Ok(credential) => credential,
        Err(e) => {
            findings.push(Finding::fail(
                format!("Cloudflare's answer has no usable TURN URI: {e}"),
                "clients would get no TURN; the daemon falls back to Synapse's answer until this changes",
            ));
            return (findings, None);
        }
    };
    let credential = match &config.turn_custom_domain {
        Some(domain) => turn::with_custom_domain(credential, domain),
        None => credential,
    };
    findings.push(Finding::pass(format!(
        "clients would get {} TURN URIs: {}",
        credential.uris.len(),
        credential.uris.join(" ")
    )));
    findings.push(match cloudflare.revoke(&credential.username).await {
        Ok(()) => Finding::pass("Cloudflare revoked the test credential"),
        Err(e) => Finding::fail(
            format!("revoking the test credential failed: {e}"),
            format!("harmless: it expires by itself within {CHECK_TTL_SECONDS} s"),
        ),
    });
    (findings, Some(credential.uris))
}
