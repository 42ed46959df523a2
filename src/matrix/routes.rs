//! The HTTP surface: the turnServer route (docs/behaviour.md §3), the pass-through for any
//! other path (§6) and the local health endpoints. `router` builds it all, so
//! tests can drive it in-process.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tracing::debug;

use crate::clock::Clock;
use crate::config::Config;
use crate::credentials::issued::MintError;
use crate::credentials::reuse::{Source, TokenKey};
use crate::credentials::turn::{self, TurnCredential};
use crate::credentials::{Credentials, Holder};
use crate::edge::access_log::{AccessLine, OutcomeWord};
use crate::edge::headers::{client_address, strip_hop_by_hop, upstream_headers};
use crate::edge::server::{BodyDeadline, HEADER_READ_TIMEOUT};
use crate::matrix::error::{CORS_HEADERS, MatrixError};
use crate::matrix::synapse::{
    Answer, BufferedAnswer, SynapseClient, SynapseError, VIA, WhoAmI, carries_our_via,
};
use crate::matrix::token;
use crate::metrics::Metrics;
use crate::throttle::{Throttle, throttled_warn};
use crate::usage::Withheld;

/// The turnServer endpoint of each client API version that has one.
pub(crate) const TURN_SERVER_ENDPOINTS: [&str; 4] = [
    "/_matrix/client/v3/voip/turnServer",
    "/_matrix/client/r0/voip/turnServer",
    "/_matrix/client/unstable/voip/turnServer",
    "/_matrix/client/api/v1/voip/turnServer",
];
/// A GET may carry a body; a turnServer request has no use for a large one.
pub(crate) const MAX_TURN_REQUEST_BODY: usize = 64 * 1024;

/// What happened to a request, for its log line: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A freshly minted Cloudflare credential.
    Cloudflare,
    /// A credential minted earlier for the same access token.
    Reused,
    /// Synapse said 200 but Cloudflare failed: Synapse's own answer.
    SynapseFallback,
    /// Synapse's answer returned as it was (non-200, HEAD, other methods, other paths).
    PassedThrough,
    /// Synapse could not be reached or did not answer in time.
    UpstreamError,
    /// A CORS preflight answered locally.
    Preflight,
    /// Refused before reaching Synapse (body too large).
    Rejected,
    /// The request body could not be read to its end: the client hung up
    /// mid-body or sent a malformed one. Nothing reached Synapse.
    BodyError,
    /// The daemon's own request to the homeserver, come back to it:
    /// `SYNAPSE_BASE_URL` leads to the daemon. Answered at once.
    Loop,
    /// Synapse said 200 and a budget holds: Synapse's own answer.
    Withheld(Withheld),
}

impl OutcomeWord for Outcome {
    fn word(self) -> &'static str {
        self.label()
    }
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Cloudflare => "cloudflare",
            Self::Reused => "reused",
            Self::SynapseFallback => "synapse-fallback",
            Self::PassedThrough => "passed-through",
            Self::UpstreamError => "upstream-error",
            Self::Preflight => "preflight",
            Self::Rejected => "rejected",
            Self::BodyError => "body-error",
            Self::Loop => "loop",
            Self::Withheld(why) => why.word(),
        }
    }
}

/// How the homeserver vouched for the request's token (docs/behaviour.md §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    /// Its own answer to the request decided: a 200 (or any answer passed on).
    Homeserver,
    /// It answered 404 `M_NOT_FOUND` ("no TURN configured", MSC4166) and
    /// `/account/whoami` was asked to confirm the token.
    Whoami,
}

impl Auth {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Homeserver => "homeserver",
            Self::Whoami => "whoami",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Everything a request handler needs, shared by all connections.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    synapse: SynapseClient,
    credentials: Arc<Credentials>,
    metrics: Arc<Metrics>,
    warnings: Warnings,
}

/// One throttle per condition that would otherwise log a line per request.
#[derive(Default)]
struct Warnings {
    misrouted: Throttle,
    synapse_failed: Throttle,
    pass_through_failed: Throttle,
    cloudflare_failed: Throttle,
    served_while_failing: Throttle,
    whoami_failed: Throttle,
    identifier_unconfirmed: Throttle,
    request_loop: Throttle,
}

impl AppState {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let synapse = SynapseClient::new(&config.synapse_base_url, config.synapse_timeout);
        let metrics = Arc::new(Metrics::new(config.usage.as_ref()));
        Ok(Self {
            inner: Arc::new(Shared {
                credentials: Credentials::new(config, Arc::clone(&metrics))?,
                synapse,
                metrics,
                warnings: Warnings::default(),
            }),
        })
    }

    /// The clock credential lifetimes and the back-off read; tests move it.
    pub fn clock(&self) -> &Clock {
        self.inner.credentials.clock()
    }

    /// The credential core, for the LiveKit front door to share: one reuse
    /// cache, one back-off, one set of metrics.
    pub fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(&self.inner.credentials)
    }

    /// The metrics `/metrics` shows, for the LiveKit front door to count in.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.inner.metrics)
    }

    /// Mints under way, also those nobody waits for any more.
    pub fn mints_in_flight(&self) -> i64 {
        self.inner.metrics.mints_in_flight()
    }
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(dispatch)
        .with_state(state)
}

/// Liveness: the process serves requests. Asks no upstream.
async fn healthz() -> &'static str {
    "OK\n"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let credentials = &state.inner.credentials;
    let entries = credentials.cache_entries().await;
    let text = state
        .inner
        .metrics
        .render(entries, credentials.backoff_open(), credentials.usage_gauges());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Readiness: the homeserver answers its `/health`, or, lacking one,
/// `/_matrix/client/versions`.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.inner.synapse.is_healthy().await {
        Ok(true) => (StatusCode::OK, "ready\n").into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the homeserver's /health (or /_matrix/client/versions) did not answer 200\n",
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("homeserver: {e}\n")).into_response(),
    }
}

async fn dispatch(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let _in_flight = state.inner.metrics.request_started();
    // The path is logged without its query: `?access_token=` must not reach a log.
    let line = AccessLine::new(
        client_address(request.headers(), peer.ip()),
        request.method().clone(),
        request.uri().path().to_owned(),
    );
    let path = &line.path;
    let (mut response, outcome, auth) = if carries_our_via(request.headers()) {
        throttled_warn!(
            state.inner.warnings.request_loop,
            path = %path,
            "a request this daemon sent to SYNAPSE_BASE_URL came back to it: SYNAPSE_BASE_URL must be the \
             homeserver's own listener, not the public URL; answering such requests at once with an error"
        );
        (
            MatrixError::REQUEST_LOOP.into_response(),
            Outcome::Loop,
            Auth::Homeserver,
        )
    } else if is_turn_server(path) {
        turn_server(&state, peer.ip(), request).await
    } else {
        throttled_warn!(
            state.inner.warnings.misrouted,
            path = %path,
            "passing a request for another path to Synapse; the reverse proxy should send only /voip/turnServer here"
        );
        let (response, outcome) = pass_through(&state, peer.ip(), request).await;
        (response, outcome, Auth::Homeserver)
    };
    state.inner.metrics.request(outcome.label(), auth.label());
    line.matrix(response.status(), outcome, auth.label());
    // After any Via of the homeserver's side: the list reads in the order
    // the answer travelled.
    response.headers_mut().append(header::VIA, VIA.clone());
    response
}

/// Exactly the turnServer endpoint (docs/behaviour.md §3), under whatever prefix a
/// reverse proxy keeps before `/_matrix`. Other endpoints whose path merely
/// ends in `/voip/turnServer` are not it: a room's relations of type `voip`
/// and event type `turnServer` (200 `{"chunk":[]}` to any guest who can see
/// the room), a state event of that type and key (404 `M_NOT_FOUND`). A
/// prefix that holds a `/_matrix/` of its own is such a path too.
pub(crate) fn is_turn_server(path: &str) -> bool {
    TURN_SERVER_ENDPOINTS.iter().any(|endpoint| {
        path.strip_suffix(endpoint)
            .is_some_and(|prefix| !prefix.contains("/_matrix/"))
    })
}

async fn turn_server(state: &AppState, peer: IpAddr, request: Request) -> (Response, Outcome, Auth) {
    let (response, outcome) = if request.method() == Method::OPTIONS {
        // Answered here, as Synapse answers it, so a browser's preflight
        // succeeds even while Synapse is slow or down (docs/behaviour.md §3).
        (preflight(), Outcome::Preflight)
    } else {
        match forward_turn_server(state, peer, request).await {
            Ok(forwarded) => return decide(state, forwarded).await,
            Err(refused) => refused,
        }
    };
    (response, outcome, Auth::Homeserver)
}

/// A turnServer request as it went to the homeserver, and its answer.
struct Forwarded {
    method: Method,
    /// Read from the request as forwarded, not as it arrived.
    presented: token::Presented,
    answer: BufferedAnswer,
}

/// Sends the request to the homeserver; `Err` is the answer when there is
/// none to decide on: the daemon's own, or one passed on as it streams.
async fn forward_turn_server(
    state: &AppState,
    peer: IpAddr,
    request: Request,
) -> Result<Forwarded, (Response, Outcome)> {
    let (parts, body) = request.into_parts();
    let deadline = parts.extensions.get::<BodyDeadline>().map_or_else(
        || tokio::time::Instant::now() + HEADER_READ_TIMEOUT,
        |deadline| deadline.0,
    );
    let body = match tokio::time::timeout_at(deadline, read_request_body(&parts.headers, body)).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => {
            return Err((MatrixError::BODY_TOO_LARGE.into_response(), Outcome::Rejected));
        }
        Ok(Err(BodyError::Unreadable(e))) => {
            debug!(error = %e, "the request body could not be read");
            return Err((MatrixError::BODY_UNREADABLE.into_response(), Outcome::BodyError));
        }
        Err(_) => {
            // The rest of the body may still come; the connection cannot be
            // used for another request.
            let mut response = MatrixError::BODY_TIMEOUT.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err((response, Outcome::BodyError));
        }
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut headers = upstream_headers(parts.headers, peer);
    // The daemon reads this answer itself (the 404's errcode, the 200's
    // status): it must not come compressed (docs/behaviour.md §3.1).
    headers.remove(header::ACCEPT_ENCODING);
    let presented = token::read(&headers, parts.uri.query());
    let started = Instant::now();
    let exchange = state
        .inner
        .synapse
        .exchange(parts.method.clone(), path_and_query, headers, body)
        .await;
    state.inner.metrics.synapse_answered(started.elapsed());
    match exchange {
        Ok(Answer::Read(answer)) => Ok(Forwarded {
            method: parts.method,
            presented,
            answer,
        }),
        Ok(Answer::Streaming(response)) => Err((response.map(Body::new), Outcome::PassedThrough)),
        Err(e) => {
            throttled_warn!(state.inner.warnings.synapse_failed, error = %e, "Synapse failed on a turnServer request");
            Err((MatrixError::from(&e).into_response(), Outcome::UpstreamError))
        }
    }
}

/// What the client gets, from the homeserver's answer (docs/behaviour.md §3, §3.1). The
/// homeserver is asked every time, so reuse never skips authentication.
async fn decide(state: &AppState, forwarded: Forwarded) -> (Response, Outcome, Auth) {
    let Forwarded {
        method,
        presented,
        answer,
    } = forwarded;
    // Only a GET gets credentials: HEAD cannot use a body. No token, no
    // credential: a homeserver that answers 200 to anonymous requests would
    // otherwise hand anyone a relay billed to the admin. And a token the
    // homeserver families read apart may not be the one it authenticated.
    let presented = match (method, presented) {
        (Method::GET, token::Presented::Token(presented)) => presented,
        (_, presented) => {
            if let token::Presented::Ambiguous(why) = presented {
                debug!(
                    why,
                    "the request's token is ambiguous; passing the homeserver's answer on"
                );
            }
            return (unchanged(answer), Outcome::PassedThrough, Auth::Homeserver);
        }
    };
    if answer.status == StatusCode::OK && presented.acting_as.is_none() {
        let key = TokenKey::of(&presented.token);
        let (response, outcome) = credential_or_fallback(state, answer, presented.token, None, key).await;
        return (response, outcome, Auth::Homeserver);
    }
    if answer.status != StatusCode::OK && !is_no_turn_configured(&answer) {
        return (unchanged(answer), Outcome::PassedThrough, Auth::Homeserver);
    }
    // MSC4166's "authenticated, no TURN configured", or an appservice acting
    // as one of its users: only the homeserver can say whose the token is,
    // and authentication is never cached.
    let acting_as = presented.acting_as.as_deref();
    match state.inner.whoami(&presented.token, acting_as).await {
        Ok(Some(who)) if !who.is_guest => {
            // An appservice's users each get their own credential.
            let key = match acting_as {
                Some(_) => TokenKey::acting_as(&presented.token, &who.user_id),
                None => TokenKey::of(&presented.token),
            };
            let (response, outcome) =
                credential_or_fallback(state, answer, presented.token, Some(who.user_id), key).await;
            (response, outcome, Auth::Whoami)
        }
        Ok(_) => (unchanged(answer), Outcome::PassedThrough, Auth::Whoami),
        Err(e) => {
            throttled_warn!(
                state.inner.warnings.whoami_failed,
                error = %e,
                "whoami failed; passing on the homeserver's answer without a credential"
            );
            (unchanged(answer), Outcome::PassedThrough, Auth::Whoami)
        }
    }
}

impl Shared {
    /// Who owns `token`, by `/account/whoami`, timed for `/metrics`: for the
    /// `customIdentifier`, and for the MSC4166 path.
    async fn whoami(&self, token: &str, acting_as: Option<&str>) -> Result<Option<WhoAmI>, SynapseError> {
        let started = Instant::now();
        let answer = self.synapse.whoami(token, acting_as).await;
        self.metrics.whoami_answered(started.elapsed());
        answer
    }
}

/// The user a minted credential's `customIdentifier` names, asked of the
/// homeserver only when the core mints (docs/behaviour.md §5).
async fn user_for_identifier(shared: Arc<Shared>, token: String) -> Option<String> {
    match shared.whoami(&token, None).await {
        Ok(Some(who)) => Some(who.user_id),
        Ok(None) => {
            throttled_warn!(
                shared.warnings.identifier_unconfirmed,
                "whoami did not confirm the token; minting without customIdentifier"
            );
            None
        }
        Err(e) => {
            throttled_warn!(shared.warnings.identifier_unconfirmed, error = %e, "whoami failed; minting without customIdentifier");
            None
        }
    }
}

/// A 404 `M_NOT_FOUND`: what MSC4166 homeservers (Conduit 0.10+, conduwuit,
/// continuwuity, tuwunel) answer an authenticated request when no TURN is
/// configured. Any other 404 (`M_UNRECOGNIZED`: an unknown path) is not.
fn is_no_turn_configured(answer: &BufferedAnswer) -> bool {
    answer.status == StatusCode::NOT_FOUND
        && serde_json::from_slice::<serde_json::Value>(&answer.body)
            .is_ok_and(|body| body["errcode"] == "M_NOT_FOUND")
}

/// The credential answer (status 200, the homeserver's headers), or the
/// homeserver's own answer unchanged when no credential can be had.
async fn credential_or_fallback(
    state: &AppState,
    answer: BufferedAnswer,
    token: String,
    user_id: Option<String>,
    key: TokenKey,
) -> (Response, Outcome) {
    let holder = match user_id {
        Some(user_id) => Holder::Named(user_id),
        None => Holder::Asked(Box::pin(user_for_identifier(Arc::clone(&state.inner), token))),
    };
    match state.inner.credentials.get(holder, key).await {
        Ok((issued, source)) => {
            let remaining = issued.remaining(state.clock().now()).as_secs();
            let outcome = match source {
                Source::Minted => Outcome::Cloudflare,
                Source::Reused => Outcome::Reused,
                Source::ReusedWhileFailing => {
                    throttled_warn!(
                        state.inner.warnings.served_while_failing,
                        "Cloudflare failed; answering with a still-valid earlier credential"
                    );
                    Outcome::Reused
                }
            };
            (credential_answer(answer, &issued.credential, remaining), outcome)
        }
        // The poller logs a budget's crossing once.
        Err(e) if let MintError::Withheld(why) = *e => {
            debug!(
                outcome = why.word(),
                "a budget holds; answering with the homeserver's own answer"
            );
            (unchanged(answer), Outcome::Withheld(why))
        }
        // While backed off, the back-off's start was logged once; a warning
        // per request would flood the log during an outage.
        Err(e) if matches!(*e, MintError::BackedOff(_)) => {
            debug!(error = %e, "Cloudflare backed off; answering with the homeserver's own answer");
            (unchanged(answer), Outcome::SynapseFallback)
        }
        Err(e) => {
            throttled_warn!(
                state.inner.warnings.cloudflare_failed,
                error = %e,
                "no Cloudflare credential; answering with the homeserver's own answer"
            );
            (unchanged(answer), Outcome::SynapseFallback)
        }
    }
}

enum BodyError {
    TooLarge,
    /// Cut short by a client that hung up, or malformed: not a size problem.
    Unreadable(Box<dyn std::error::Error + Send + Sync>),
}

/// The request body, refused past [`MAX_TURN_REQUEST_BODY`]: by its declared
/// length before reading, or while reading when the length was not declared.
async fn read_request_body(headers: &axum::http::HeaderMap, body: Body) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_TURN_REQUEST_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    Limited::new(body, MAX_TURN_REQUEST_BODY)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                BodyError::TooLarge
            } else {
                BodyError::Unreadable(e)
            }
        })
}

fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers.extend(CORS_HEADERS);
    response
}

/// Synapse's answer as it came (hop-by-hop headers were already dropped).
fn unchanged(answer: BufferedAnswer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response
}

/// Synapse's 200 answer with the Cloudflare credential as its body. Its
/// end-to-end headers (CORS among them) stay; those that described the old
/// body go, and the credential must never be cached on the way.
fn credential_answer(
    answer: BufferedAnswer,
    credential: &TurnCredential,
    remaining_seconds: u64,
) -> Response {
    let body = match serde_json::to_vec(&turn::matrix_answer(credential, remaining_seconds)) {
        Ok(body) => body,
        // Serialising strings and a number cannot fail; if it ever did,
        // Synapse's own answer is the safe one.
        Err(_) => return unchanged(answer),
    };
    let mut headers = answer.headers;
    for stale in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CACHE_CONTROL,
        header::ETAG,
        header::LAST_MODIFIED,
    ] {
        headers.remove(stale);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut response = Response::new(Body::from(body));
    *response.headers_mut() = headers;
    response
}

/// Any other path: forwarded as it is, both bodies streamed (docs/behaviour.md §6).
async fn pass_through(state: &AppState, peer: IpAddr, request: Request) -> (Response, Outcome) {
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let headers = upstream_headers(parts.headers, peer);
    match state
        .inner
        .synapse
        .forward(parts.method, path_and_query, headers, body)
        .await
    {
        Ok(upstream) => {
            let (mut parts, body) = upstream.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            (
                Response::from_parts(parts, Body::new(body)),
                Outcome::PassedThrough,
            )
        }
        Err(SynapseError::RequestBody(e)) => {
            debug!(error = %e, "a passed-through request body failed");
            let mut response = MatrixError::BODY_TIMEOUT.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            (response, Outcome::BodyError)
        }
        Err(e) => {
            throttled_warn!(
                state.inner.warnings.pass_through_failed,
                error = %e,
                "Synapse failed on a passed-through request"
            );
            (MatrixError::from(&e).into_response(), Outcome::UpstreamError)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_turn_server_endpoint_is_the_turn_server_endpoint() {
        for path in [
            "/_matrix/client/v3/voip/turnServer",
            "/_matrix/client/r0/voip/turnServer",
            "/_matrix/client/unstable/voip/turnServer",
            "/_matrix/client/api/v1/voip/turnServer",
            "/matrix/_matrix/client/v3/voip/turnServer",
            "/a/b/_matrix/client/r0/voip/turnServer",
        ] {
            assert!(is_turn_server(path), "{path}");
        }
        for path in [
            "/_matrix/client/v1/rooms/!r:x/relations/$e/voip/turnServer",
            "/_matrix/client/v3/rooms/!r:x/state/voip/turnServer",
            "/_matrix/client/v1/rooms/!r:x/relations/$e/_matrix/client/v3/voip/turnServer",
            "/_matrix/client/v1/voip/turnServer",
            "/_matrix/client/v3/voip/turnServer/",
            "/_matrix/client/v3/voip/turnserver",
            "/_matrix/client/v3/voip/turn%53erver",
            "/voip/turnServer",
            "/_matrix/client/v3/sync",
        ] {
            assert!(!is_turn_server(path), "{path}");
        }
    }
}
