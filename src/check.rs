//! `matrix-turnify check`: the first thing to run after deploying. It tries
//! the configuration against the live services with the daemon's own
//! clients and prints one line per check, each failure with the variable to
//! look at.

use std::fmt::Write as _;

use http::{HeaderMap, StatusCode};

use crate::cloudflare::{CloudflareClient, CloudflareError};
use crate::config::Config;
use crate::routes::TURN_SERVER_ENDPOINTS;
use crate::synapse::{BufferedAnswer, SynapseClient, SynapseError, VERSIONS_PATH};
use crate::turn;

/// A TTL long enough to mint and revoke, short enough that a credential the
/// revoke missed dies on its own.
const CHECK_TTL_SECONDS: u32 = 60;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Works, but the admin should know: does not fail the check.
    Warning,
    Failed,
}

/// One line of the report.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
    /// What to change, or what it means.
    pub hint: Option<String>,
}

impl Finding {
    fn pass(what: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Passed,
            what: what.into(),
            hint: None,
        }
    }

    fn warn(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warning,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }

    fn fail(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Failed,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn failed(&self) -> bool {
        self.verdict == Verdict::Failed
    }
}

/// The report as printed: `✓`/`!`/`✗` lines, hints indented under them.
pub fn render(findings: &[Finding]) -> String {
    let mut text = String::new();
    for finding in findings {
        let mark = match finding.verdict {
            Verdict::Passed => '✓',
            Verdict::Warning => '!',
            Verdict::Failed => '✗',
        };
        let _ = writeln!(text, "{mark} {}", finding.what);
        if let Some(hint) = &finding.hint {
            let _ = writeln!(text, "    → {hint}");
        }
    }
    let failed = findings.iter().filter(|f| f.failed()).count();
    let warnings = match findings.iter().filter(|f| f.verdict == Verdict::Warning).count() {
        0 => String::new(),
        1 => ", with 1 warning".to_owned(),
        n => format!(", with {n} warnings"),
    };
    let _ = match failed {
        0 => writeln!(text, "All {} checks passed{warnings}.", findings.len()),
        n => writeln!(text, "{n} of {} checks failed{warnings}.", findings.len()),
    };
    text
}

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
    findings.extend(
        config
            .unrecognised_variables
            .iter()
            .map(|unrecognised| Finding::warn(unrecognised.clone(), "it has no effect; remove or rename it")),
    );
    if let Some(public) = public {
        findings.extend(check_public_route(public, config.synapse_timeout).await);
    }
    let synapse = SynapseClient::new(&config.synapse_base_url, config.synapse_timeout);
    findings.push(check_synapse_health(&synapse, &config.synapse_base_url).await);
    findings.push(check_synapse_versions(&synapse).await);
    findings.push(check_tokenless_turn_server(&synapse).await);
    findings.push(check_made_up_token(&synapse).await);
    match CloudflareClient::new(config) {
        Ok(cloudflare) => findings.extend(check_cloudflare(&cloudflare, config).await),
        Err(e) => findings.push(Finding::fail(
            format!("Cloudflare client cannot be built: {e}"),
            "this is a bug or a broken TLS set-up; please report it",
        )),
    }
    findings
}

fn synapse_hint(err: &SynapseError) -> String {
    match err {
        SynapseError::Connect(_) => {
            "check SYNAPSE_BASE_URL: nothing answers there (is Synapse running, and is the host name right from where matrix-turnify runs?)".into()
        }
        SynapseError::Timeout => "check SYNAPSE_BASE_URL and SYNAPSE_TIMEOUT_SECONDS: Synapse did not answer in time".into(),
        SynapseError::Broken(_) | SynapseError::TooLarge | SynapseError::RequestBody(_) => {
            "check SYNAPSE_BASE_URL: what answers there does not speak HTTP like Synapse".into()
        }
    }
}

async fn get(synapse: &SynapseClient, path: &str) -> Result<BufferedAnswer, SynapseError> {
    synapse.ask(path, HeaderMap::new()).await
}

/// Synapse's `/health`; a homeserver without one (a 404: Dendrite, Conduit
/// and its family) is asked `/_matrix/client/versions` instead, as
/// readiness does, and is not called broken for lacking Synapse's endpoint.
async fn check_synapse_health(synapse: &SynapseClient, base: &str) -> Finding {
    match get(synapse, "/health").await {
        Ok(answer) if answer.status == StatusCode::OK => {
            Finding::pass(format!("Synapse answers /health at {base}"))
        }
        Ok(answer) if answer.status == StatusCode::NOT_FOUND => match get(synapse, VERSIONS_PATH).await {
            Ok(versions) if versions.status == StatusCode::OK => Finding::pass(format!(
                "the homeserver has no /health (404); it answers {VERSIONS_PATH} at {base}, which readiness uses instead"
            )),
            Ok(versions) => Finding::fail(
                format!(
                    "the homeserver has no /health, and {VERSIONS_PATH} answered {}",
                    versions.status
                ),
                "check SYNAPSE_BASE_URL: it must be the homeserver's client listener, e.g. http://synapse:8008",
            ),
            Err(e) => Finding::fail(format!("{VERSIONS_PATH}: {e}"), synapse_hint(&e)),
        },
        Ok(answer) => Finding::fail(
            format!("Synapse /health answered {}", answer.status),
            "check SYNAPSE_BASE_URL: it must be Synapse's client listener, e.g. http://synapse:8008",
        ),
        Err(e) => Finding::fail(format!("Synapse /health: {e}"), synapse_hint(&e)),
    }
}

async fn check_synapse_versions(synapse: &SynapseClient) -> Finding {
    match get(synapse, VERSIONS_PATH).await {
        Ok(answer) if answer.status == StatusCode::OK => {
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
        Ok(answer) => Finding::fail(
            format!("/_matrix/client/versions answered {}", answer.status),
            "check SYNAPSE_BASE_URL: the listener must serve the `client` resource",
        ),
        Err(e) => Finding::fail(format!("/_matrix/client/versions: {e}"), synapse_hint(&e)),
    }
}

/// What the homeserver answers a turnServer request with no token (docs/behaviour.md
/// §3.1): normally a 401; a 200 means it hands TURN to anyone, a 404
/// `M_NOT_FOUND` that it follows MSC4166.
async fn check_tokenless_turn_server(synapse: &SynapseClient) -> Finding {
    const PATH: &str = "/_matrix/client/v3/voip/turnServer";
    let answer = match get(synapse, PATH).await {
        Ok(answer) => answer,
        Err(e) => return Finding::fail(format!("{PATH} without a token: {e}"), synapse_hint(&e)),
    };
    let errcode = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|body| body["errcode"].as_str().map(str::to_owned));
    match (answer.status, errcode.as_deref()) {
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
    }
}

/// What the homeserver answers a turnServer request with a token nobody
/// was ever given: a homeserver refuses it (401). A 200 means what answers
/// at `SYNAPSE_BASE_URL` authenticates nothing, and the daemon would mint
/// for anyone who sends any token.
async fn check_made_up_token(synapse: &SynapseClient) -> Finding {
    const PATH: &str = "/_matrix/client/v3/voip/turnServer";
    let mut headers = HeaderMap::new();
    let made_up = format!("Bearer syt_made_up_by_matrix_turnify_check_{}", made_up_suffix());
    if let Ok(value) = http::HeaderValue::from_str(&made_up) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    match synapse.ask(PATH, headers).await {
        Ok(answer) if answer.status == StatusCode::OK => Finding::fail(
            format!("{PATH} answered 200 to a made-up token"),
            "check SYNAPSE_BASE_URL: what answers there does not authenticate requests, so the daemon would \
             mint for anyone; it must be the homeserver's client listener, not a proxy or a stub",
        ),
        Ok(answer) if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN => {
            Finding::pass(format!(
                "the homeserver refuses {PATH} with a made-up token ({})",
                answer.status.as_u16()
            ))
        }
        Ok(answer) => Finding::warn(
            format!("{PATH} answered {} to a made-up token", answer.status.as_u16()),
            "a homeserver answers 401 here; the daemon mints only after a 200 or a confirmed whoami, so this \
             costs nothing, but check SYNAPSE_BASE_URL",
        ),
        Err(e) => Finding::fail(format!("{PATH} with a made-up token: {e}"), synapse_hint(&e)),
    }
}

/// The routing self-test: each turnServer path asked through the URL
/// clients use. Only an answer that carries the daemon's `Via` came through
/// it; the most likely failure of a deployment is a proxy rule that sends
/// the request straight to the homeserver, whose answer looks like success.
async fn check_public_route(public: &PublicRoute, timeout: std::time::Duration) -> Vec<Finding> {
    let base = public.url.trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return vec![Finding::fail(
            format!("--public-url {base} is not an http(s) URL"),
            "give the URL clients use, e.g. --public-url https://matrix.example.com",
        )];
    }
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            return vec![Finding::fail(
                format!("HTTP client cannot be built: {e}"),
                "this is a bug or a broken TLS set-up; please report it",
            )];
        }
    };
    let mut findings = Vec::new();
    for path in TURN_SERVER_ENDPOINTS {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(token) = &public.token {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                findings.push(Finding::fail(
                    format!(
                        "{path} through {base}: {}",
                        crate::upstream::error_chain(&e.without_url())
                    ),
                    "check --public-url: it must be the address clients use, reachable from here",
                ));
                continue;
            }
        };
        let status = response.status();
        let through_us = came_through_us(response.headers());
        let server = response
            .headers()
            .get_all(http::header::SERVER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        if !through_us {
            let seen = if server.is_empty() {
                String::new()
            } else {
                format!(", Server: {server}")
            };
            findings.push(Finding::fail(
                format!(
                    "{path} through {base} did not pass through matrix-turnify ({}{seen})",
                    status.as_u16()
                ),
                proxy_rule_hint(&server),
            ));
            continue;
        }
        // The credential round trip on the path every client uses; the
        // others only have to reach the daemon (Dendrite and the Conduit
        // family serve r0 and v3 alone).
        if public.token.is_some() && path == TURN_SERVER_ENDPOINTS[0] {
            let body: Option<serde_json::Value> = match response.bytes().await {
                Ok(bytes) => serde_json::from_slice(&bytes).ok(),
                Err(_) => None,
            };
            let credential = body.as_ref().is_some_and(|body| {
                body["username"].as_str().is_some_and(|u| !u.is_empty())
                    && body["uris"].as_array().is_some_and(|uris| !uris.is_empty())
            });
            findings.push(if status == StatusCode::OK && credential {
                Finding::pass(format!("{path} through {base}: a TURN credential from matrix-turnify"))
            } else {
                Finding::fail(
                    format!("{path} through {base} reached matrix-turnify but brought no credential ({})", status.as_u16()),
                    "the route works; run `check` without --public-url, and look at the daemon's log line for this request",
                )
            });
            continue;
        }
        findings.push(Finding::pass(format!(
            "{path} through {base} reaches matrix-turnify ({})",
            status.as_u16()
        )));
    }
    findings.push(match client.get(format!("{base}{VERSIONS_PATH}")).send().await {
        Ok(response) if came_through_us(response.headers()) => Finding::warn(
            format!("{VERSIONS_PATH} through {base} also passed through matrix-turnify"),
            "the proxy sends more than the turnServer endpoint to the daemon; it passes the rest on, but every \
             request then costs an extra hop and a warning in its log: route only the turnServer paths to it",
        ),
        Ok(response) => Finding::pass(format!(
            "{VERSIONS_PATH} through {base} goes straight to the homeserver ({})",
            response.status().as_u16()
        )),
        Err(e) => Finding::fail(
            format!("{VERSIONS_PATH} through {base}: {}", crate::upstream::error_chain(&e.without_url())),
            "check --public-url: it must be the address clients use, reachable from here",
        ),
    });
    findings
}

fn came_through_us(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.trim() == crate::routes::VIA.to_str().unwrap_or_default())
}

/// Which rule to look at, guessed from the `Server` header of the answer
/// that came without the daemon: nginx (and Nginx Proxy Manager's
/// OpenResty) and Cloudflare name themselves; Traefik passes the
/// homeserver's on.
fn proxy_rule_hint(server: &str) -> String {
    let server = server.to_ascii_lowercase();
    let rule = "^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$";
    if server.contains("nginx") || server.contains("openresty") {
        format!(
            "nginx: the `location ~ {rule}` block is missing, or another regex location that matches /_matrix (such \
             as `location ~ ^(/_matrix|/_synapse/client)` from Synapse's guide) comes before it: nginx takes the \
             first matching regex, so ours must come first"
        )
    } else if server.contains("cloudflare") {
        format!(
            "cloudflared: the ingress rule with path '{rule}' to matrix-turnify:4499 is missing or below the \
             hostname's other rule; a dashboard-managed tunnel adds new routes last: move it to the top"
        )
    } else if server.contains("caddy") {
        "Caddy: `reverse_proxy @turn` to matrix-turnify:4499 must come before the homeserver's, inside one `route` block"
            .to_owned()
    } else {
        format!(
            "the proxy sent it straight to the homeserver. Traefik: the matrix-turnify router needs \
             PathRegexp(`{rule}`) and a priority above the homeserver's router, and the container must be \
             healthy (Traefik skips one that is starting); other proxies: send exactly these paths to \
             matrix-turnify:4499, ahead of the homeserver's rule"
        )
    }
}

/// Differs between runs, so no homeserver can have issued the token.
fn made_up_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{nanos:x}{:x}", std::process::id())
}

fn cloudflare_hint(err: &CloudflareError) -> String {
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

async fn check_cloudflare(cloudflare: &CloudflareClient, config: &Config) -> Vec<Finding> {
    let servers = match cloudflare.mint(CHECK_TTL_SECONDS, None).await {
        Ok(servers) => servers,
        Err(e) => {
            return vec![Finding::fail(
                format!("Cloudflare did not mint a test credential: {e}"),
                cloudflare_hint(&e),
            )];
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
            return findings;
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
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_marks_each_line_and_counts_failures() {
        let text = render(&[
            Finding::pass("configuration parses"),
            Finding::fail(
                "Cloudflare answered HTTP 401 Unauthorized",
                "check CF_TURN_API_TOKEN",
            ),
        ]);
        assert_eq!(
            text,
            "✓ configuration parses\n✗ Cloudflare answered HTTP 401 Unauthorized\n    → check CF_TURN_API_TOKEN\n1 of 2 checks failed.\n"
        );
    }
}
