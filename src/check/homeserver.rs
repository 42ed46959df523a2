//! The homeserver's checks: reachable, a Matrix homeserver, and answering
//! the turnServer route as the daemon expects.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::matrix::synapse::carries_our_via;
use crate::matrix::synapse::{BufferedAnswer, SynapseClient, SynapseError, VERSIONS_PATH};

use super::*;

/// How many questions [`check_homeserver`] asks the homeserver.
pub(super) const HOMESERVER_CHECKS: usize = 4;

/// The homeserver's checks, in order. A cause that would fail every one of
/// them (nothing answers at `SYNAPSE_BASE_URL`, or what answers is the
/// daemon itself) is one ✗ line with a plain reason, and the checks after it
/// are one `-` line.
pub(super) async fn check_homeserver(synapse: &SynapseClient, base: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Err(cause) = homeserver_checks(synapse, base, &mut findings).await {
        let left = HOMESERVER_CHECKS - findings.len() - 1;
        findings.push(cause);
        if left > 0 {
            findings.push(Finding::skip(
                format!("{left} more homeserver checks not run"),
                "they need the homeserver: fix the line above first",
            ));
        }
    }
    findings
}

pub(super) async fn homeserver_checks(
    synapse: &SynapseClient,
    base: &str,
    findings: &mut Vec<Finding>,
) -> Result<(), Finding> {
    findings.push(check_synapse_health(synapse, base).await?);
    findings.push(check_synapse_versions(synapse, base).await?);
    findings.push(check_tokenless_turn_server(synapse, base).await?);
    findings.push(check_made_up_token(synapse, base).await?);
    Ok(())
}

/// The homeserver's answer to `GET path`, or the one ✗ line for why there is
/// none worth judging: it cannot be reached, or the answer came through the
/// daemon, so `SYNAPSE_BASE_URL` leads back to it.
pub(super) async fn ask(
    synapse: &SynapseClient,
    base: &str,
    path: &str,
    headers: HeaderMap,
) -> Result<BufferedAnswer, Finding> {
    match synapse.ask(path, headers).await {
        Ok(answer) if carries_our_via(&answer.headers) => Err(Finding::fail(
            format!(
                "a request loop: SYNAPSE_BASE_URL must be the homeserver's own listener, not the public URL \
                 ({path} at {base} came back through matrix-turnify)"
            ),
            "set SYNAPSE_BASE_URL to the address the daemon reaches the homeserver at directly, e.g. \
             http://synapse:8008 in the example compose stack; the public URL goes through the proxy back to \
             the daemon",
        )),
        Ok(answer) => Ok(answer),
        Err(e) => Err(unreachable(&e, base, synapse.timeout())),
    }
}

pub(super) async fn get(synapse: &SynapseClient, base: &str, path: &str) -> Result<BufferedAnswer, Finding> {
    ask(synapse, base, path, HeaderMap::new()).await
}

/// The one line for a homeserver that gave no answer: what happened, in
/// plain words, and the variables to look at.
pub(super) fn unreachable(err: &SynapseError, base: &str, timeout: Duration) -> Finding {
    let url = url::Url::parse(base).ok();
    let host = url
        .as_ref()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_else(|| base.to_owned());
    let place = match url.as_ref().and_then(url::Url::port_or_known_default) {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let (reason, hint) = match err {
        SynapseError::Connect(chain) => (
            format!("cannot be reached: {}", connect_reason(chain, &host, &place)),
            "check SYNAPSE_BASE_URL: is the homeserver running, and is this its host name and port as seen \
             from where matrix-turnify runs?",
        ),
        SynapseError::Timeout => (
            format!("did not answer within {} s", timeout.as_secs_f64()),
            "check SYNAPSE_BASE_URL and SYNAPSE_TIMEOUT_SECONDS: the homeserver is slow or something in between \
             holds the request",
        ),
        SynapseError::Broken(_) | SynapseError::TooLarge | SynapseError::RequestBody(_) => (
            "gave no usable answer: what answers there does not speak HTTP like a homeserver".to_owned(),
            "check SYNAPSE_BASE_URL: it must be the homeserver's client listener, e.g. http://synapse:8008 \
             (http:// or https:// as that listener serves)",
        ),
    };
    Finding::fail(
        format!("the homeserver at {base} (SYNAPSE_BASE_URL) {reason}"),
        hint,
    )
}

/// A connection failure told in plain words, from the client's cause chain.
pub(super) fn connect_reason(chain: &str, host: &str, place: &str) -> String {
    let lower = chain.to_ascii_lowercase();
    if lower.contains("dns error") || lower.contains("lookup address") {
        format!("the name {host} does not resolve here")
    } else if lower.contains("connection refused") {
        format!("nothing listens on {place} (connection refused)")
    } else if lower.contains("timed out") || lower.contains("timeout") {
        format!("no connection to {place} within 5 s")
    } else if lower.contains("unreachable") || lower.contains("no route") {
        format!("no route to {host}")
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        format!("the TLS handshake with {place} failed")
    } else {
        let last = chain.rsplit(": ").next().unwrap_or(chain);
        format!("no connection to {place} ({last})")
    }
}

/// Synapse's `/health`; a homeserver without one (a 404: Dendrite, Conduit
/// and its family) is asked `/_matrix/client/versions` instead, as
/// readiness does, and is not called broken for lacking Synapse's endpoint.
pub(super) async fn check_synapse_health(synapse: &SynapseClient, base: &str) -> Result<Finding, Finding> {
    Ok(match get(synapse, base, "/health").await? {
        answer if answer.status == StatusCode::OK => {
            Finding::pass(format!("Synapse answers /health at {base}"))
        }
        answer if answer.status == StatusCode::NOT_FOUND => match get(synapse, base, VERSIONS_PATH).await? {
            versions if versions.status == StatusCode::OK => Finding::pass(format!(
                "the homeserver has no /health (404); it answers {VERSIONS_PATH} at {base}, which readiness uses instead"
            )),
            versions => Finding::fail(
                format!(
                    "the homeserver has no /health, and {VERSIONS_PATH} answered {}",
                    versions.status
                ),
                "check SYNAPSE_BASE_URL: it must be the homeserver's client listener, e.g. http://synapse:8008",
            ),
        },
        answer => Finding::fail(
            format!("Synapse /health answered {}", answer.status),
            "check SYNAPSE_BASE_URL: it must be Synapse's client listener, e.g. http://synapse:8008",
        ),
    })
}

pub(super) async fn check_synapse_versions(synapse: &SynapseClient, base: &str) -> Result<Finding, Finding> {
    Ok(match get(synapse, base, VERSIONS_PATH).await? {
        answer if answer.status == StatusCode::OK => {
            match serde_json::from_slice::<serde_json::Value>(&answer.body) {
                Ok(body) if body["versions"].is_array() => {
                    Finding::pass("Synapse answers /_matrix/client/versions (the client API is reachable)")
                }
                _ => Finding::fail(
                    "/_matrix/client/versions did not answer a Matrix versions list",
                    "check SYNAPSE_BASE_URL: it must point at Synapse, not at the reverse proxy's other sites",
                ),
            }
        }
        answer => Finding::fail(
            format!("/_matrix/client/versions answered {}", answer.status),
            "check SYNAPSE_BASE_URL: the listener must serve the `client` resource",
        ),
    })
}

/// What the homeserver answers a turnServer request with no token (docs/behaviour.md
/// §3.1): normally a 401; a 200 means it hands TURN to anyone, a 404
/// `M_NOT_FOUND` that it follows MSC4166.
pub(super) async fn check_tokenless_turn_server(
    synapse: &SynapseClient,
    base: &str,
) -> Result<Finding, Finding> {
    const PATH: &str = "/_matrix/client/v3/voip/turnServer";
    let answer = get(synapse, base, PATH).await?;
    let errcode = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|body| body["errcode"].as_str().map(str::to_owned));
    Ok(match (answer.status, errcode.as_deref()) {
        (StatusCode::OK, _) => Finding::warn(
            format!("the homeserver answers {PATH} without a token: 200"),
            "this homeserver hands TURN to anonymous requests; the daemon will not mint for them \
             (turn off its turn_allow_guests to stop handing out its own TURN)",
        ),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")) => Finding::pass(format!(
            "MSC4166 homeserver: whoami path in use ({PATH} answers 404 M_NOT_FOUND without TURN)"
        )),
        (StatusCode::NOT_FOUND, _) => Finding::fail(
            format!("the homeserver does not serve {PATH} (404)"),
            "check SYNAPSE_BASE_URL: it must be the homeserver's client API",
        ),
        (status, _) if status.is_client_error() => Finding::pass(format!(
            "the homeserver refuses {PATH} without a token ({})",
            status.as_u16()
        )),
        (status, _) => Finding::fail(
            format!("{PATH} without a token answered {status}"),
            "the homeserver fails on turnServer requests; look at its log",
        ),
    })
}

/// What the homeserver answers a turnServer request with a token nobody
/// was ever given: a homeserver refuses it (401). A 200 means what answers
/// at `SYNAPSE_BASE_URL` authenticates nothing, and the daemon would mint
/// for anyone who sends any token.
pub(super) async fn check_made_up_token(synapse: &SynapseClient, base: &str) -> Result<Finding, Finding> {
    const PATH: &str = "/_matrix/client/v3/voip/turnServer";
    let mut headers = HeaderMap::new();
    let made_up = format!("Bearer syt_made_up_by_matrix_turnify_check_{}", made_up_suffix());
    if let Ok(value) = http::HeaderValue::from_str(&made_up) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    Ok(match ask(synapse, base, PATH, headers).await? {
        answer if answer.status == StatusCode::OK => Finding::fail(
            format!("{PATH} answered 200 to a made-up token"),
            "check SYNAPSE_BASE_URL: what answers there does not authenticate requests, so the daemon would \
             mint for anyone; it must be the homeserver's client listener, not a proxy or a stub",
        ),
        answer if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN => {
            Finding::pass(format!(
                "the homeserver refuses {PATH} with a made-up token ({})",
                answer.status.as_u16()
            ))
        }
        answer => Finding::warn(
            format!("{PATH} answered {} to a made-up token", answer.status.as_u16()),
            "a homeserver answers 401 here; the daemon mints only after a 200 or a confirmed whoami, so this \
             costs nothing, but check SYNAPSE_BASE_URL",
        ),
    })
}
