//! `matrix-turnify check`: the first thing to run after deploying. It tries
//! the configuration against the live services with the daemon's own
//! clients and prints one line per check, each failure with the variable to
//! look at; with the LiveKit front door on, it joins a throw-away room
//! through the running daemon (docs/behaviour.md §12).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::clock;
use crate::config::{Config, ConfigErrors, LiveKitConfig, Secret};
use crate::credentials::cloudflare::{CloudflareClient, CloudflareError};
use crate::credentials::turn;
use crate::edge::upstream::{HttpClient, error_chain, http_client};
use crate::livekit::jwt;
use crate::livekit::proxy::{CLOSE_LINGER, JOIN_HOLD, UPGRADE_TIMEOUT};
use crate::livekit::splice;
use crate::matrix::routes::TURN_SERVER_ENDPOINTS;
use crate::matrix::synapse::carries_our_via;
use crate::matrix::synapse::{BufferedAnswer, SynapseClient, SynapseError, VERSIONS_PATH};

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
    /// Not tried, and why: neither passes nor fails, and is not counted.
    Skipped,
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

    fn skip(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Skipped,
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
            Verdict::Skipped => '-',
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
    let skipped = findings.iter().filter(|f| f.verdict == Verdict::Skipped).count();
    let tried = findings.len() - skipped;
    let skipped = match skipped {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    let _ = match failed {
        0 => writeln!(text, "All {tried} checks passed{warnings}{skipped}."),
        n => writeln!(text, "{n} of {tried} checks failed{warnings}{skipped}."),
    };
    text
}

/// The report for a configuration that does not parse: the typo warnings
/// first, since a misspelt name is often why a required one is "not set",
/// then one line per error.
pub fn rejected(rejected: &ConfigErrors) -> Vec<Finding> {
    let warnings = rejected.warnings.iter().map(|warning| unrecognised(warning));
    let errors = rejected.errors.iter().map(|error| {
        Finding::fail(
            format!("configuration: {error}"),
            format!("fix {} and run the check again", error.variable),
        )
    });
    warnings.chain(errors).collect()
}

fn unrecognised(warning: &str) -> Finding {
    Finding::warn(warning, "it has no effect; remove or rename it")
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
    if let Some(livekit) = &config.livekit {
        let ours = OurEntry {
            uris: turn_uris,
            custom_domain: config.turn_custom_domain.as_deref(),
        };
        findings.extend(check_livekit(livekit, cloudflare.as_ref().ok(), &ours).await);
    }
    findings
}

/// How many questions [`check_homeserver`] asks the homeserver.
const HOMESERVER_CHECKS: usize = 4;

/// The homeserver's checks, in order. A cause that would fail every one of
/// them (nothing answers at `SYNAPSE_BASE_URL`, or what answers is the
/// daemon itself) is one ✗ line with a plain reason, and the checks after it
/// are one `-` line.
async fn check_homeserver(synapse: &SynapseClient, base: &str) -> Vec<Finding> {
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

async fn homeserver_checks(
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
async fn ask(
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

async fn get(synapse: &SynapseClient, base: &str, path: &str) -> Result<BufferedAnswer, Finding> {
    ask(synapse, base, path, HeaderMap::new()).await
}

/// The one line for a homeserver that gave no answer: what happened, in
/// plain words, and the variables to look at.
fn unreachable(err: &SynapseError, base: &str, timeout: Duration) -> Finding {
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
fn connect_reason(chain: &str, host: &str, place: &str) -> String {
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
async fn check_synapse_health(synapse: &SynapseClient, base: &str) -> Result<Finding, Finding> {
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

async fn check_synapse_versions(synapse: &SynapseClient, base: &str) -> Result<Finding, Finding> {
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
async fn check_tokenless_turn_server(synapse: &SynapseClient, base: &str) -> Result<Finding, Finding> {
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
async fn check_made_up_token(synapse: &SynapseClient, base: &str) -> Result<Finding, Finding> {
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
                        crate::edge::upstream::error_chain(&e.without_url())
                    ),
                    "check --public-url: it must be the address clients use, reachable from here",
                ));
                continue;
            }
        };
        let status = response.status();
        let through_us = carries_our_via(response.headers());
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
        Ok(response) if carries_our_via(response.headers()) => Finding::warn(
            format!("{VERSIONS_PATH} through {base} also passed through matrix-turnify"),
            "the proxy sends more than the turnServer endpoint to the daemon; it passes the rest on, but every \
             request then costs an extra hop and a warning in its log: route only the turnServer paths to it",
        ),
        Ok(response) => Finding::pass(format!(
            "{VERSIONS_PATH} through {base} goes straight to the homeserver ({})",
            response.status().as_u16()
        )),
        Err(e) => Finding::fail(
            format!("{VERSIONS_PATH} through {base}: {}", crate::edge::upstream::error_chain(&e.without_url())),
            "check --public-url: it must be the address clients use, reachable from here",
        ),
    });
    findings
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

/// The findings, and the URIs clients would get: the ones the daemon also
/// splices into a LiveKit join.
async fn check_cloudflare(
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

/// How long LiveKit, or the front door, may take to answer `GET /`.
const LIVEKIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the test join may take from its upgrade request to LiveKit's
/// first frame: as long as the daemon waits for LiveKit's `101`, plus its
/// hold of the join for the credential, plus a margin.
const JOIN_TIMEOUT: Duration = UPGRADE_TIMEOUT
    .saturating_add(JOIN_HOLD)
    .saturating_add(Duration::from_secs(5));
/// How long the test token is valid: it is used at once.
const JOIN_TOKEN_SECONDS: u64 = 120;
/// Longest the leave may take to be answered; then the connection is dropped.
const LEAVE_TIMEOUT: Duration = CLOSE_LINGER.saturating_add(Duration::from_secs(1));
/// `SignalRequest { leave: LeaveRequest { reason: CLIENT_INITIATED } }`
/// (livekit_rtc.proto: `leave` is field 8, `LeaveRequest.reason` field 2;
/// livekit_models.proto: `CLIENT_INITIATED` is 1), what client-sdk-js
/// sends when a participant hangs up.
const LEAVE_REQUEST: &[u8] = &[0x42, 0x02, 0x10, 0x01];

/// What marks the daemon's entry in a join: the URIs `check` itself got
/// from Cloudflare; without them (the mint failed), Cloudflare's host or
/// `TURN_CUSTOM_DOMAIN`.
struct OurEntry<'a> {
    uris: Option<Vec<String>>,
    custom_domain: Option<&'a str>,
}

impl OurEntry<'_> {
    /// The daemon splices in a subset of Cloudflare's URIs (only `turns:`
    /// when LiveKit forces relay over TLS), always with a username.
    fn is(&self, server: &splice::IceServerSeen) -> bool {
        let ours = |uri: &String| match &self.uris {
            Some(uris) => uris.contains(uri),
            None => turn_host(uri).is_some_and(|host| {
                host.eq_ignore_ascii_case("turn.cloudflare.com")
                    || self
                        .custom_domain
                        .is_some_and(|domain| host.eq_ignore_ascii_case(domain))
            }),
        };
        !server.username.is_empty() && !server.urls.is_empty() && server.urls.iter().all(ours)
    }
}

/// The host of a `turn:`/`turns:` URI (RFC 7065): after the scheme, up to
/// the port or the query.
fn turn_host(uri: &str) -> Option<&str> {
    let (_, rest) = uri.split_once(':')?;
    rest.split([':', '?']).next()
}

/// Why a plain request to LiveKit or the front door brought no answer.
enum Unanswered {
    /// Nothing accepted the connection.
    Connect(String),
    Timeout,
    Other(String),
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(reason) | Self::Other(reason) => f.write_str(reason),
            Self::Timeout => write!(f, "no answer within {} s", LIVEKIT_TIMEOUT.as_secs()),
        }
    }
}

/// Enough of an answer's body to show its reason: at most 4 KiB, and
/// nothing if it breaks or is longer.
async fn body_start(body: hyper::body::Incoming) -> Bytes {
    Limited::new(body, 4096)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default()
}

/// `GET url`: the status and the first line of the body, or why nothing came.
async fn get_first_line(client: &HttpClient, url: &str) -> Result<(StatusCode, String), Unanswered> {
    let request = http::Request::get(url)
        .body(Body::empty())
        .map_err(|e| Unanswered::Other(e.to_string()))?;
    let exchange = async {
        let answer = client.request(request).await.map_err(|e| {
            let reason = error_chain(&e);
            if e.is_connect() {
                Unanswered::Connect(reason)
            } else {
                Unanswered::Other(reason)
            }
        })?;
        let status = answer.status();
        let body = body_start(answer.into_body()).await;
        Ok((status, first_line(&String::from_utf8_lossy(&body))))
    };
    tokio::time::timeout(LIVEKIT_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(Unanswered::Timeout))
}

/// A body's first line, short and printable: LiveKit's `OK`, or its plain
/// reason for refusing a token.
fn first_line(body: &str) -> String {
    body.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// How the front door answered, which decides whether the test join is tried.
#[derive(PartialEq, Eq)]
enum FrontDoor {
    Works,
    /// Nothing listens: the daemon does not run next to this `check`.
    NotHere,
    Broken,
}

/// LiveKit's own answer, the front door's, then the test join through it
/// (docs/behaviour.md §12).
async fn check_livekit(
    livekit: &LiveKitConfig,
    cloudflare: Option<&CloudflareClient>,
    ours: &OurEntry<'_>,
) -> Vec<Finding> {
    let client = http_client();
    let mut findings = vec![check_livekit_answers(&client, &livekit.sfu_url).await];
    let front = crate::config::local_probe_addr(livekit.listen_addr);
    let (finding, front_door) = check_front_door(&client, front).await;
    findings.push(finding);
    match (&livekit.api_key, front_door) {
        (None, _) => findings.push(Finding::skip(
            "no test join: LIVEKIT_KEY and LIVEKIT_SECRET are not set",
            "set them (or LIVEKIT_SECRET_FILE) to the key pair lk-jwt-service signs with, and check joins a \
             throw-away room through the front door to show the Cloudflare entry in LiveKit's join",
        )),
        (Some(_), FrontDoor::NotHere) => findings.push(Finding::skip(
            format!("no test join: the daemon's front door is not running on {front}"),
            "the test join goes through the running daemon: run check inside its container",
        )),
        (Some(_), FrontDoor::Broken) => findings.push(Finding::skip(
            "no test join: the front door does not reach LiveKit",
            "fix the lines above first",
        )),
        (Some((key, secret)), FrontDoor::Works) => {
            findings.extend(test_join(&client, front, key, secret, cloudflare, ours).await);
        }
    }
    findings
}

/// LiveKit's `GET /` answers `200 OK` while it runs.
async fn check_livekit_answers(client: &HttpClient, sfu_url: &str) -> Finding {
    match get_first_line(client, &format!("{sfu_url}/")).await {
        Ok((status, _)) if status.is_success() => {
            Finding::pass(format!("LiveKit answers at {sfu_url} (GET / → {status})"))
        }
        Ok((status, _)) => Finding::fail(
            format!("LiveKit at {sfu_url} (LIVEKIT_SFU_URL) answered GET / with {status}"),
            "check LIVEKIT_SFU_URL: LiveKit answers GET / with 200; it must be LiveKit's own address as this \
             container reaches it, e.g. http://livekit:7880",
        ),
        Err(e) => {
            let hint = match e {
                Unanswered::Connect(_) => {
                    "check LIVEKIT_SFU_URL: nothing answers there (is LiveKit running, and is the host name right \
                     from where matrix-turnify runs?)"
                }
                Unanswered::Timeout => "check LIVEKIT_SFU_URL: LiveKit did not answer in time",
                Unanswered::Other(_) => {
                    "check LIVEKIT_SFU_URL: what answers there does not speak HTTP like LiveKit (http:// or https:// as LiveKit serves it?)"
                }
            };
            Finding::fail(format!("LiveKit at {sfu_url} (LIVEKIT_SFU_URL): {e}"), hint)
        }
    }
}

/// The running daemon's LiveKit front door, on loopback: its `GET /` is
/// passed on to LiveKit.
async fn check_front_door(client: &HttpClient, front: SocketAddr) -> (Finding, FrontDoor) {
    match get_first_line(client, &format!("http://{front}/")).await {
        Ok((status, _)) if status.is_success() => (
            Finding::pass(format!(
                "the daemon's LiveKit front door answers on {front} (LIVEKIT_LISTEN_ADDR) and passes GET / to LiveKit ({status})"
            )),
            FrontDoor::Works,
        ),
        Ok((status, reason))
            if status == StatusCode::BAD_GATEWAY || status == StatusCode::GATEWAY_TIMEOUT =>
        {
            (
                Finding::fail(
                    format!(
                        "the LiveKit front door on {front} answers, but does not reach LiveKit ({status}: {reason})"
                    ),
                    "the daemon uses its own LIVEKIT_SFU_URL: if LiveKit's line above failed, fix that; if it passed, the \
                 daemon runs with another configuration than this check: restart it",
                ),
                FrontDoor::Broken,
            )
        }
        Ok((status, _)) => (
            Finding::fail(
                format!(
                    "the LiveKit front door on {front} (LIVEKIT_LISTEN_ADDR) answered GET / with {status}"
                ),
                "LiveKit answers GET / with 200: another service listens on LIVEKIT_LISTEN_ADDR, or the daemon's \
                 LIVEKIT_SFU_URL is not LiveKit's own address",
            ),
            FrontDoor::Broken,
        ),
        Err(Unanswered::Connect(reason)) => (
            Finding::warn(
                format!(
                    "nothing answers on {front} (LIVEKIT_LISTEN_ADDR): the daemon is not running here ({reason})"
                ),
                "to check the front door and a join through it, run check next to the running daemon: \
                 `docker compose exec matrix-turnify matrix-turnify check` (`docker compose run` starts a container of its own)",
            ),
            FrontDoor::NotHere,
        ),
        Err(e) => (
            Finding::fail(
                format!("the LiveKit front door on {front} (LIVEKIT_LISTEN_ADDR): {e}"),
                "the daemon accepts connections there but does not answer: look at its log",
            ),
            FrontDoor::Broken,
        ),
    }
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why the test join brought no join frame.
enum JoinFailure {
    /// Any answer to the upgrade but a `101`.
    Refused(StatusCode, String),
    Broken(String),
    /// The connection ended, or brought a text frame, before any binary one.
    NoJoin(String),
    Timeout,
}

/// A throw-away participant joins a throw-away room through the front door,
/// as Element Call does (v0 signalling: LiveKit 1.13 answers `/rtc` with a
/// join straight away, while `/rtc/v1` first wants the client's own join
/// request in the URL), and looks for the daemon's entry in the join; then
/// it leaves and its credential is revoked.
async fn test_join(
    client: &HttpClient,
    front: SocketAddr,
    key: &str,
    secret: &Secret,
    cloudflare: Option<&CloudflareClient>,
    ours: &OurEntry<'_>,
) -> Vec<Finding> {
    let suffix = made_up_suffix();
    let identity = format!("matrix-turnify-check-{suffix}");
    let exp = clock::unix_seconds() + JOIN_TOKEN_SECONDS;
    let token = jwt::sign(
        &serde_json::json!({
            "iss": key,
            "sub": identity,
            "exp": exp,
            "video": {"roomJoin": true, "room": identity},
        }),
        secret,
    );
    let joined = tokio::time::timeout(JOIN_TIMEOUT, join(client, front, &token))
        .await
        .unwrap_or(Err(JoinFailure::Timeout));
    let (mut socket, frame) = match joined {
        Ok(joined) => joined,
        Err(failure) => return vec![join_failed(failure, front)],
    };
    let mut findings = Vec::new();
    let entry = match splice::ice_servers(&frame) {
        None => {
            findings.push(Finding::fail(
                format!("the test join through {front} brought a first frame that is no LiveKit join"),
                "check LIVEKIT_SFU_URL: it must be LiveKit itself; the daemon adds TURN only to LiveKit's joins",
            ));
            None
        }
        Some((_, servers)) => match servers.iter().rev().find(|server| ours.is(server)) {
            Some(entry) => {
                findings.push(Finding::pass(format!(
                    "a test join through the front door on {front} carries the Cloudflare entry: {}",
                    entry.urls.join(" ")
                )));
                Some(entry.clone())
            }
            None => {
                let livekits = servers
                    .iter()
                    .flat_map(|server| server.urls.iter().map(String::as_str))
                    .collect::<Vec<_>>();
                let livekits = if livekits.is_empty() {
                    "none".to_owned()
                } else {
                    livekits.join(" ")
                };
                findings.push(Finding::fail(
                    format!(
                        "the test join through {front} carries no Cloudflare entry (its ICE servers: {livekits})"
                    ),
                    format!(
                        "the daemon adds it when Cloudflare answers within {} s: see the Cloudflare lines above; \
                         the daemon's `signalling connection` log line says why (turn=cloudflare-failed, late)",
                        JOIN_HOLD.as_secs_f32()
                    ),
                ));
                None
            }
        },
    };
    findings.push(leave(&mut socket).await);
    if let (Some(entry), Some(cloudflare)) = (entry, cloudflare) {
        findings.push(match cloudflare.revoke(&entry.username).await {
            Ok(()) => Finding::pass("Cloudflare revoked the test join's credential"),
            Err(e) => Finding::warn(
                format!("revoking the test join's credential failed: {e}"),
                "harmless: nobody holds it, and it expires after TURN_CREDENTIAL_TTL_SECONDS",
            ),
        });
    }
    findings
}

/// The WebSocket handshake through the front door, and LiveKit's first
/// binary frame.
async fn join(client: &HttpClient, front: SocketAddr, token: &str) -> Result<(Socket, Bytes), JoinFailure> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
        ^ u128::from(std::process::id());
    let request = http::Request::get(format!(
        "http://{front}/rtc?access_token={token}&auto_subscribe=0&protocol=16&sdk=matrix-turnify-check"
    ))
    .header(http::header::CONNECTION, "Upgrade")
    .header(http::header::UPGRADE, "websocket")
    .header(http::header::SEC_WEBSOCKET_VERSION, "13")
    .header(
        http::header::SEC_WEBSOCKET_KEY,
        base64::engine::general_purpose::STANDARD.encode(nonce.to_le_bytes()),
    )
    .body(Body::empty())
    .map_err(|e| JoinFailure::Broken(e.to_string()))?;
    let mut answer = client
        .request(request)
        .await
        .map_err(|e| JoinFailure::Broken(error_chain(&e)))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = answer.status();
        let body = body_start(answer.into_body()).await;
        return Err(JoinFailure::Refused(status, refusal_reason(&body, token)));
    }
    // The key's answer (`Sec-WebSocket-Accept`) is not checked: the only
    // peer here is the daemon, and a broken upgrade shows as no join.
    let upgraded = hyper::upgrade::on(&mut answer)
        .await
        .map_err(|e| JoinFailure::Broken(error_chain(&e)))?;
    let mut socket = Socket::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(frame))) => return Ok((socket, frame)),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Text(_))) => {
                return Err(JoinFailure::NoJoin("a text frame came first".to_owned()));
            }
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map_or_else(
                    || "closed with no code".to_owned(),
                    |frame| format!("closed with {} {}", u16::from(frame.code), frame.reason),
                );
                return Err(JoinFailure::NoJoin(why.trim().to_owned()));
            }
            Some(Err(e)) => return Err(JoinFailure::Broken(e.to_string())),
            None => return Err(JoinFailure::NoJoin("the connection ended".to_owned())),
        }
    }
}

/// What LiveKit said when it refused the upgrade, without the token: its
/// reason for refusing one quotes it whole (`invalid token: <token>, error: …`).
fn refusal_reason(body: &[u8], token: &str) -> String {
    first_line(&String::from_utf8_lossy(body).replace(token, "[the test token]"))
}

fn join_failed(failure: JoinFailure, front: SocketAddr) -> Finding {
    match failure {
        JoinFailure::Refused(status, reason) if status == StatusCode::UNAUTHORIZED => Finding::fail(
            format!("LiveKit refused the test join's token ({status}: {reason})"),
            "check LIVEKIT_KEY and LIVEKIT_SECRET (or LIVEKIT_SECRET_FILE): they must be a key pair of LiveKit's own \
             `keys` (livekit.yaml or LIVEKIT_KEYS), the one lk-jwt-service signs with; or this host's clock is off",
        ),
        JoinFailure::Refused(status, reason) => Finding::fail(
            format!("the test join's upgrade through {front} was answered {status}: {reason}"),
            "LiveKit answers a signalling upgrade with 101; check LIVEKIT_SFU_URL, and LiveKit's log for the reason",
        ),
        JoinFailure::Broken(reason) => Finding::fail(
            format!("the test join through {front} broke: {reason}"),
            "look at the daemon's and LiveKit's logs",
        ),
        JoinFailure::NoJoin(why) => Finding::fail(
            format!("the test join through {front} brought no join: {why}"),
            "LiveKit sends the join first once it accepts a token; look at LiveKit's log",
        ),
        JoinFailure::Timeout => Finding::fail(
            format!(
                "the test join through {front} brought no join within {} s",
                JOIN_TIMEOUT.as_secs()
            ),
            "LiveKit sets up the room before it answers: look at LiveKit's log",
        ),
    }
}

/// Leaves as a client that hangs up does: LiveKit's leave request, then,
/// once LiveKit has answered it with its own leave (it writes nothing after
/// that), a close 1000, whose answer is awaited a short while.
async fn leave(socket: &mut Socket) -> Finding {
    let left = async {
        socket
            .send(Message::Binary(Bytes::from_static(LEAVE_REQUEST)))
            .await?;
        let closed_by_livekit = tokio::time::timeout(LEAVE_TIMEOUT, async {
            while let Some(message) = socket.next().await {
                match message? {
                    Message::Binary(frame) if splice::is_leave(&frame) => return Ok(false),
                    Message::Close(_) => return Ok(true),
                    _ => {}
                }
            }
            Ok::<_, tokio_tungstenite::tungstenite::Error>(true)
        })
        .await
        .unwrap_or(Ok(false))?;
        if closed_by_livekit {
            return Ok(());
        }
        socket
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "matrix-turnify check".into(),
            })))
            .await?;
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            while let Some(Ok(message)) = socket.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    };
    match left.await {
        Ok(()) => Finding::pass("the test participant left (a leave request, then close 1000)"),
        Err(e) => Finding::warn(
            format!("the test participant could not leave: {e}"),
            "harmless: LiveKit drops a participant whose connection is gone",
        ),
    }
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

    #[test]
    fn a_refusal_is_shown_without_the_token_it_quotes() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJrIn0.c2lnbmF0dXJl";
        let body =
            format!("invalid token: {token}, error: go-jose/go-jose: error in cryptographic primitive\nmore");
        assert_eq!(
            refusal_reason(body.as_bytes(), token),
            "invalid token: [the test token], error: go-jose/go-jose: error in cryptographic primitive"
        );
    }

    #[test]
    fn skipped_lines_are_marked_and_not_counted() {
        let text = render(&[
            Finding::pass("LiveKit answers"),
            Finding::warn(
                "nothing answers on 127.0.0.1:7880",
                "run check next to the daemon",
            ),
            Finding::skip("no test join", "the daemon is not running here"),
        ]);
        assert_eq!(
            text,
            "✓ LiveKit answers\n! nothing answers on 127.0.0.1:7880\n    → run check next to the daemon\n\
             - no test join\n    → the daemon is not running here\nAll 2 checks passed, with 1 warning, 1 skipped.\n"
        );
    }

    #[test]
    fn our_entry_is_told_by_the_uris_check_got_or_else_by_cloudflares_host() {
        let entry = |urls: &[&str], username: &str| splice::IceServerSeen {
            urls: urls.iter().map(|url| (*url).to_owned()).collect(),
            username: username.to_owned(),
        };
        let minted = OurEntry {
            uris: Some(vec![
                "turn:turn.example.org:3478?transport=udp".to_owned(),
                "turns:turn.example.org:443?transport=tcp".to_owned(),
            ]),
            custom_domain: None,
        };
        assert!(minted.is(&entry(&["turns:turn.example.org:443?transport=tcp"], "u")));
        assert!(!minted.is(&entry(&["turns:turn.example.org:443?transport=tcp"], "")));
        assert!(!minted.is(&entry(&["stun:stun.l.google.com:19302"], "")));
        assert!(!minted.is(&entry(&[], "u")));
        let unknown = OurEntry {
            uris: None,
            custom_domain: Some("turn.example.com"),
        };
        assert!(unknown.is(&entry(
            &[
                "turn:turn.example.com:3478?transport=udp",
                "turns:turn.cloudflare.com:443?transport=tcp"
            ],
            "u"
        )));
        assert!(!unknown.is(&entry(&["turn:livekit.example.com:3478"], "u")));
    }
}
