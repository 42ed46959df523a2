//! Fake of the parts of Synapse 1.163.2 that matrix-turnify touches: the
//! `/voip/turnServer` servlet with Synapse's exact token rules, status codes,
//! bodies and headers (`docs/synapse-facts.md`), `/health`,
//! `/_matrix/client/versions`, `whoami`, CORS preflights, and an `/echo/`
//! endpoint for testing pass-through of everything else.
//!
//! With a [`Flavour`] it answers `/voip/turnServer` as another homeserver
//! family does when no TURN is configured (docs/behaviour.md §3.1); none of those can run
//! on our machines, so each flavour names the source file it mirrors.

use std::convert::Infallible;
use std::future::ready;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;
use http::header::{
    ACCEPT_ENCODING, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, DATE, SERVER, VARY,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::recorded::{Recorded, Recorder, lock};
use crate::serve::{self, ServerTask};
use crate::token_rules::{self, Presented, Refusal};

/// docs/synapse-facts.md §2: the `Server` header of every answer.
const SERVER_NAME: &str = "Synapse/1.163.2";

/// docs/synapse-facts.md §4: fixed strings on every JSON answer and preflight,
/// whatever the `Origin`.
const CORS_HEADERS: [(HeaderName, &str); 4] = [
    (ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    (
        ACCESS_CONTROL_ALLOW_METHODS,
        "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    ),
    (
        ACCESS_CONTROL_ALLOW_HEADERS,
        "X-Requested-With, Content-Type, Authorization, Date",
    ),
    (ACCESS_CONTROL_EXPOSE_HEADERS, "Synapse-Trace-Id, Server"),
];

/// docs/synapse-facts.md §2: `Cache-Control` of client API answers.
const NO_CACHE: &str = "no-cache, no-store, must-revalidate";

/// docs/synapse-facts.md §7: `Cache-Control` of `/_matrix/client/versions`.
const VERSIONS_CACHE: &str = "public, max-age=600, s-maxage=3600, stale-while-revalidate=600";

/// docs/synapse-facts.md §7, with `unstable_features` cut down to one entry.
const VERSIONS_BODY: &str = r#"{"versions":["r0.0.1","r0.1.0","r0.2.0","r0.3.0","r0.4.0","r0.5.0","r0.6.0","r0.6.1","v1.1","v1.2","v1.3","v1.4","v1.5","v1.6","v1.7","v1.8","v1.9","v1.10","v1.11","v1.12","v1.13","v1.14","v1.15"],"unstable_features":{"org.matrix.msc3916.stable":true}}"#;

/// docs/synapse-facts.md §1 and §5: unknown client paths (404) and other methods
/// on a known path (405).
const UNRECOGNIZED: &str = r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#;

/// The device id `whoami` reports for every token.
const DEVICE_ID: &str = "FAKEDEVICE";

/// Which homeserver `/voip/turnServer` answers as, with no TURN configured
/// (docs/behaviour.md §3.1). The token rules, the `401` bodies and the header set stay
/// Synapse's for every flavour: the daemon passes them on unchanged, so only
/// the status and the errcode tell the flavours apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavour {
    /// Synapse, `synapse/rest/client/voip.py` (`VoipRestServlet`): the
    /// `api/v1`, `r0`, `v3` and `unstable` paths; `200` with the configured
    /// body (`{}` without TURN); a guest gets `403 M_GUEST_ACCESS_FORBIDDEN`
    /// when `turn_allow_guests` is off.
    #[default]
    Synapse,
    /// Dendrite, `clientapi/routing/voip.go` (`RequestTurnServer`), routed in
    /// `clientapi/routing/routing.go` under `r0` and `v3` only: `200 {}`;
    /// guests always get `403 M_GUEST_ACCESS_FORBIDDEN`.
    Dendrite,
    /// Conduit up to 0.9, `src/api/client_server/voip.rs`
    /// (`turn_server_route`), `r0` and `v3`: `200` with an empty username,
    /// password and URI list and a `ttl` of 86400; guests too.
    ConduitLegacy,
    /// Conduit 0.10+ (`src/api/client_server/voip.rs`) and conduwuit,
    /// continuwuity and tuwunel (`src/api/client/voip.rs`), `r0` and `v3`:
    /// `404 M_NOT_FOUND` once the token is authenticated (MSC4166); a guest
    /// gets the same with `turn_allow_guests`, else `403`.
    Msc4166,
}

impl Flavour {
    /// Only Synapse has `/health`: Dendrite's health check is
    /// `/_dendrite/monitor/health` (`setup/base/base.go`); Conduit's router
    /// (`routes()` in its `src/main.rs`) has no `/health`, and a real
    /// Conduit 0.10.12 answers it 404 `M_UNRECOGNIZED`, as every unknown
    /// path; tuwunel's router (`src/api/router.rs`) has none either.
    pub fn has_health(self) -> bool {
        self == Self::Synapse
    }
}

/// How `/account/whoami` answers.
#[derive(Clone, Debug, Default)]
pub enum WhoamiBehaviour {
    /// The token's user, with `is_guest` true for a guest token; `401` for an
    /// unknown or missing token.
    #[default]
    Real,
    /// This status and body, with no token check.
    Status { status: u16, body: String },
    /// Like `Real`, after this delay.
    Delay(Duration),
    /// Accept the request and never answer.
    Hang,
    /// A `200` head, then the connection drops before the body ends.
    Broken,
}

/// How `/voip/turnServer` answers `GET` and `HEAD`.
#[derive(Clone, Debug)]
pub enum SynapseBehaviour {
    /// Like real Synapse: token checks, then `200` with the configured body.
    Real,
    /// This status and body instead, with no token check, still with Synapse's
    /// header set, followed by `headers` (e.g. `Retry-After` on a 429, which
    /// real Synapse never sends on this path: docs/synapse-facts.md §8).
    Status {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// Like `Real`, after this delay.
    Delay(Duration),
    /// Accept the request and never answer.
    Hang,
    /// Like `Real`, but a `200` answer stops halfway through its body and the
    /// connection is closed, as when Synapse dies mid-answer.
    CloseMidAnswer,
    /// Like `Real`, with a `200` answer's body sent one byte per interval.
    Trickle(Duration),
}

/// How to start a [`FakeSynapse`].
#[derive(Clone, Debug)]
pub struct SynapseOptions {
    /// Valid access tokens, as `(token, user id)`.
    pub users: Vec<(String, String)>,
    /// Body of a `200` turnServer answer.
    pub turn_body: String,
    /// The initial behaviour of `/voip/turnServer`.
    pub behaviour: SynapseBehaviour,
    /// Which homeserver family `/voip/turnServer` answers as.
    pub flavour: Flavour,
    /// Valid guest access tokens, as `(token, user id)`.
    pub guests: Vec<(String, String)>,
    /// `turn_allow_guests` (Synapse's default: on).
    pub allow_guests: bool,
    /// A request with no token at all gets `200` with `turn_body`, as
    /// conduwuit and older continuwuity and tuwunel answer with
    /// `turn_allow_guests` on.
    pub anonymous_turn: bool,
    /// The initial behaviour of `/account/whoami`.
    pub whoami: WhoamiBehaviour,
    /// Appservice tokens, as `(token, sender user id)`: with `?user_id=` the
    /// request acts as that user.
    pub appservices: Vec<(String, String)>,
    /// Answers gzip-compressed to a request that accepts gzip, as a
    /// compressing reverse proxy in front of the homeserver would.
    pub gzip: bool,
}

impl Default for SynapseOptions {
    fn default() -> Self {
        Self {
            users: vec![
                ("syt_alice_token".to_owned(), "@alice:localhost".to_owned()),
                ("syt_bob_token".to_owned(), "@bob:localhost".to_owned()),
            ],
            turn_body: "{}".to_owned(),
            behaviour: SynapseBehaviour::Real,
            flavour: Flavour::Synapse,
            guests: vec![("syt_guest_token".to_owned(), "@1:localhost".to_owned())],
            allow_guests: true,
            anonymous_turn: false,
            whoami: WhoamiBehaviour::Real,
            appservices: vec![("as_bridge_token".to_owned(), "@bridge:localhost".to_owned())],
            gzip: false,
        }
    }
}

/// A running fake Synapse; stopped when dropped.
pub struct FakeSynapse {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: ServerTask,
}

struct Shared {
    recorder: Arc<Recorder>,
    state: Mutex<SynapseOptions>,
}

impl FakeSynapse {
    /// Starts the fake on an ephemeral loopback port.
    pub async fn start(opts: SynapseOptions) -> FakeSynapse {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Synapse fake to 127.0.0.1:0");
        Self::start_on(listener, opts).await
    }

    /// Starts the fake on a listener the caller bound (its own process, on
    /// the address it was given).
    pub async fn start_on(listener: TcpListener, opts: SynapseOptions) -> FakeSynapse {
        let addr = listener
            .local_addr()
            .expect("the Synapse fake's listener has a local address");
        let shared = Arc::new(Shared {
            recorder: Arc::default(),
            state: Mutex::new(opts),
        });
        let handler_state = Arc::clone(&shared);
        let server = serve::spawn(listener, move |req, peer| {
            handle(Arc::clone(&handler_state), req, peer)
        });
        FakeSynapse {
            addr,
            shared,
            _server: server,
        }
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the value for `SYNAPSE_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how later turnServer requests are answered.
    pub fn set_behaviour(&self, b: SynapseBehaviour) {
        self.shared.state().behaviour = b;
    }

    /// Changes the body of later `200` turnServer answers.
    pub fn set_turn_body(&self, body: &str) {
        body.clone_into(&mut self.shared.state().turn_body);
    }

    /// Makes `token` invalid, as when its device logs out.
    pub fn revoke_token(&self, token: &str) {
        let mut state = self.shared.state();
        state.users.retain(|(t, _)| t != token);
        state.guests.retain(|(t, _)| t != token);
    }

    /// Changes how later `/account/whoami` requests are answered.
    pub fn set_whoami(&self, b: WhoamiBehaviour) {
        self.shared.state().whoami = b;
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorder.snapshot()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SynapseOptions> {
        lock(&self.state)
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Body>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if parts.uri.path().starts_with("/echo/") {
        return echo(&shared, &parts, body, peer).await;
    }
    shared.recorder.record(&parts, body, peer).await;

    let response = route(&shared, &parts).await;
    let accepts_gzip = parts
        .headers
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if shared.state().gzip && accepts_gzip {
        return gzipped(response).await;
    }
    response
}

async fn route(shared: &Shared, parts: &Parts) -> Response<Body> {
    // docs/synapse-facts.md §4: any path, no token needed.
    if parts.method == Method::OPTIONS {
        return preflight();
    }
    let path = parts.uri.path();
    let readable = parts.method == Method::GET || parts.method == Method::HEAD;
    // Synapse matches the path first (404 for unknown ones), then the method
    // (405 before any token check: docs/synapse-facts.md §5).
    let flavour = shared.state().flavour;
    let health = path == "/health" && flavour.has_health();
    let room_path = flavour == Flavour::Synapse && (is_relations(path) || is_state_event(path));
    let known = health
        || path == "/_matrix/client/versions"
        || is_turn_server(flavour, path)
        || is_whoami(path)
        || room_path;
    if !known {
        return matrix_json(StatusCode::NOT_FOUND, UNRECOGNIZED, &parts.method);
    }
    if !readable {
        return if health {
            plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        } else {
            matrix_json(StatusCode::METHOD_NOT_ALLOWED, UNRECOGNIZED, &parts.method)
        };
    }
    match path {
        "/health" => plain(StatusCode::OK, "OK"),
        "/_matrix/client/versions" => versions(&parts.method),
        p if is_whoami(p) => whoami(shared, parts).await,
        p if is_relations(p) => room_answer(shared, parts, StatusCode::OK, NO_RELATIONS),
        p if is_state_event(p) => room_answer(shared, parts, StatusCode::NOT_FOUND, NO_STATE_EVENT),
        _ => turn_server(shared, parts).await,
    }
}

/// A room endpoint's answer to anyone the homeserver authenticates, guests
/// included (a room that is world-readable or that the guest has joined).
fn room_answer(shared: &Shared, parts: &Parts, status: StatusCode, body: &'static str) -> Response<Body> {
    match authenticate(shared, parts) {
        Ok(_) => matrix_json(status, body, &parts.method),
        Err(e) => e.response(&parts.method),
    }
}

/// Synapse's `RelationPaginationServlet` (`synapse/rest/client/relations.py`):
/// `/_matrix/client/v1/rooms/{room}/relations/{event}` with an optional
/// `/{rel_type}` and `/{event_type}`, each one path segment. A room's
/// relations of type `voip` and event type `turnServer` end in
/// `/voip/turnServer` without being the turnServer endpoint.
fn is_relations(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/_matrix/client/v1/rooms/") else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    (4..=6).contains(&segments.len()) && segments[1] == "relations" && segments.iter().all(|s| !s.is_empty())
}

/// Synapse's `RoomStateEventRestServlet` (`synapse/rest/client/room.py`):
/// `/rooms/{room}/state/{event_type}/{state_key}`, `404 M_NOT_FOUND` for a
/// state event that does not exist.
fn is_state_event(path: &str) -> bool {
    let Some(rest) = ["/_matrix/client/v3/rooms/", "/_matrix/client/r0/rooms/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))
    else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    segments.len() == 4 && segments[1] == "state" && segments[..3].iter().all(|s| !s.is_empty())
}

/// Synapse's answer for a page of relations that has none.
const NO_RELATIONS: &str = r#"{"chunk":[]}"#;
/// Synapse's answer for a state event that does not exist.
const NO_STATE_EVENT: &str = r#"{"errcode":"M_NOT_FOUND","error":"Event not found."}"#;

/// `response` with its body gzip-compressed and `Content-Encoding: gzip`.
async fn gzipped(response: Response<Body>) -> Response<Body> {
    use std::io::Write as _;
    let (mut parts, body) = response.into_parts();
    let Ok(body) = http_body_util::BodyExt::collect(body).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = encoder
        .write_all(&body.to_bytes())
        .and_then(|()| encoder.finish())
        .unwrap_or_default();
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    Response::from_parts(parts, Body::from(compressed))
}

/// Synapse: `client_patterns("/voip/turnServer$", v1=True)`, i.e.
/// `^/_matrix/client/(api/v1|r0|v3|unstable)/voip/turnServer$`; the others
/// serve the spec's `r0` and `v3` paths only.
fn is_turn_server(flavour: Flavour, path: &str) -> bool {
    path.strip_prefix("/_matrix/client/")
        .and_then(|rest| rest.strip_suffix("/voip/turnServer"))
        .is_some_and(|version| match flavour {
            Flavour::Synapse => matches!(version, "api/v1" | "r0" | "v3" | "unstable"),
            Flavour::Dendrite | Flavour::ConduitLegacy | Flavour::Msc4166 => matches!(version, "r0" | "v3"),
        })
}

async fn whoami(shared: &Shared, parts: &Parts) -> Response<Body> {
    let behaviour = shared.state().whoami.clone();
    match behaviour {
        WhoamiBehaviour::Real => {}
        WhoamiBehaviour::Delay(delay) => tokio::time::sleep(delay).await,
        WhoamiBehaviour::Hang => return std::future::pending().await,
        WhoamiBehaviour::Broken => {
            let mut resp = matrix_json(StatusCode::OK, "", &parts.method);
            *resp.body_mut() = cut_short(Bytes::from_static(br#"{"user_id":"@alice:localhost"}"#));
            return resp;
        }
        WhoamiBehaviour::Status { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return matrix_json(status, body, &parts.method);
        }
    }
    match authenticate(shared, parts) {
        Ok(who) => {
            let body = format!(
                r#"{{"user_id":{},"is_guest":{},"device_id":"{DEVICE_ID}"}}"#,
                serde_json::Value::String(who.user_id),
                who.guest
            );
            matrix_json(StatusCode::OK, body, &parts.method)
        }
        Err(e) => e.response(&parts.method),
    }
}

/// MSC4166's "no TURN configured"; conduwuit's `Error::BadRequest(NotFound,
/// "Not Found")` body.
const NOT_FOUND: &str = r#"{"errcode":"M_NOT_FOUND","error":"Not Found"}"#;
/// Conduit up to 0.9 without TURN: empty credentials, its default `ttl`.
const CONDUIT_NO_TURN: &str = r#"{"username":"","password":"","uris":[],"ttl":86400}"#;
/// Synapse's `AuthError(403, "Guest access not allowed", Codes.GUEST_ACCESS_FORBIDDEN)`.
const GUEST_FORBIDDEN: &str = r#"{"errcode":"M_GUEST_ACCESS_FORBIDDEN","error":"Guest access not allowed"}"#;

/// `client_patterns("/account/whoami$")`: no `api/v1` prefix.
fn is_whoami(path: &str) -> bool {
    path.strip_prefix("/_matrix/client/")
        .and_then(|rest| rest.strip_suffix("/account/whoami"))
        .is_some_and(|version| matches!(version, "r0" | "v3" | "unstable"))
}

async fn turn_server(shared: &Shared, parts: &Parts) -> Response<Body> {
    let behaviour = shared.state().behaviour.clone();
    match behaviour {
        SynapseBehaviour::Real | SynapseBehaviour::CloseMidAnswer | SynapseBehaviour::Trickle(_) => {}
        SynapseBehaviour::Delay(delay) => tokio::time::sleep(delay).await,
        SynapseBehaviour::Hang => return std::future::pending().await,
        SynapseBehaviour::Status {
            status,
            body,
            headers,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = matrix_json(status, body, &parts.method);
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    resp.headers_mut().append(name, value);
                }
            }
            return resp;
        }
    }
    let (flavour, allow_guests, anonymous_turn, turn_body) = {
        let state = shared.state();
        (
            state.flavour,
            state.allow_guests,
            state.anonymous_turn,
            state.turn_body.clone(),
        )
    };
    let identity = match authenticate(shared, parts) {
        Err(AuthError::Missing) if anonymous_turn => None,
        Err(e) => return e.response(&parts.method),
        Ok(who) => Some(who),
    };
    let guest = identity.as_ref().is_some_and(|who| who.guest);
    let (status, body) = match flavour {
        _ if identity.is_none() => (StatusCode::OK, turn_body),
        Flavour::Synapse if guest && !allow_guests => (StatusCode::FORBIDDEN, GUEST_FORBIDDEN.to_owned()),
        Flavour::Synapse => (StatusCode::OK, turn_body),
        Flavour::Dendrite if guest => (StatusCode::FORBIDDEN, GUEST_FORBIDDEN.to_owned()),
        Flavour::Dendrite => (StatusCode::OK, "{}".to_owned()),
        Flavour::ConduitLegacy => (StatusCode::OK, CONDUIT_NO_TURN.to_owned()),
        Flavour::Msc4166 if guest && !allow_guests => (StatusCode::FORBIDDEN, GUEST_FORBIDDEN.to_owned()),
        Flavour::Msc4166 => (StatusCode::NOT_FOUND, NOT_FOUND.to_owned()),
    };
    match status {
        StatusCode::OK => {
            let body = Bytes::from(body);
            let mut resp = matrix_json(StatusCode::OK, body.clone(), &parts.method);
            if parts.method == Method::GET {
                match behaviour {
                    SynapseBehaviour::CloseMidAnswer => *resp.body_mut() = cut_short(body),
                    SynapseBehaviour::Trickle(interval) => *resp.body_mut() = trickle(body, interval),
                    _ => {}
                }
            }
            resp
        }
        _ => matrix_json(status, body, &parts.method),
    }
}

/// The first half of `body`, then an error: hyper closes the connection
/// without ending the chunked body, so the reader sees a truncated answer.
fn cut_short(body: Bytes) -> Body {
    let half = body.slice(..body.len() / 2);
    let chunks: [Result<Bytes, std::io::Error>; 2] =
        [Ok(half), Err(std::io::Error::other("Synapse died mid-answer"))];
    Body::from_stream(stream::iter(chunks))
}

/// `body` one byte at a time, each after `interval`.
fn trickle(body: Bytes, interval: Duration) -> Body {
    let bytes = stream::unfold(body, move |mut rest| async move {
        if rest.is_empty() {
            return None;
        }
        tokio::time::sleep(interval).await;
        let byte = rest.split_to(1);
        Some((Ok::<_, Infallible>(byte), rest))
    });
    Body::from_stream(bytes)
}

/// Why Synapse refused a request's credentials; the bodies are verbatim from
/// docs/synapse-facts.md §3.
#[derive(Debug, PartialEq, Eq)]
enum AuthError {
    Missing,
    InvalidHeader,
    TooManyHeaders,
    Mixed,
    UnknownToken,
    /// The Conduit family's `400` for a query `serde_html_form` refuses.
    BadQuery,
    /// An appservice asked to act as a user outside its namespace.
    CannotMasquerade,
}

impl From<Refusal> for AuthError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Missing => Self::Missing,
            Refusal::InvalidHeader => Self::InvalidHeader,
            Refusal::TooManyHeaders => Self::TooManyHeaders,
            Refusal::Mixed => Self::Mixed,
            Refusal::BadQuery(_) => Self::BadQuery,
        }
    }
}

impl AuthError {
    fn body(&self) -> &'static str {
        match self {
            Self::BadQuery => r#"{"errcode":"M_UNKNOWN","error":"Failed to read query parameters"}"#,
            Self::CannotMasquerade => {
                r#"{"errcode":"M_EXCLUSIVE","error":"Application service cannot masquerade as this user."}"#
            }
            Self::Missing => r#"{"errcode":"M_MISSING_TOKEN","error":"Missing access token"}"#,
            Self::InvalidHeader => r#"{"errcode":"M_MISSING_TOKEN","error":"Invalid Authorization header."}"#,
            Self::TooManyHeaders => {
                r#"{"errcode":"M_MISSING_TOKEN","error":"Too many Authorization headers."}"#
            }
            Self::Mixed => {
                r#"{"errcode":"M_MISSING_TOKEN","error":"Mixing Authorization headers and access_token query parameters."}"#
            }
            Self::UnknownToken => {
                r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}"#
            }
        }
    }

    fn response(&self, method: &Method) -> Response<Body> {
        let status = match self {
            Self::BadQuery => StatusCode::BAD_REQUEST,
            Self::CannotMasquerade => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        matrix_json(status, self.body(), method)
    }
}

/// Who owns an access token.
struct Identity {
    user_id: String,
    guest: bool,
}

/// The user or guest owning the request's access token, read by the rules
/// of the flavour's family; an appservice acts as the `user_id` it names.
fn authenticate(shared: &Shared, parts: &Parts) -> Result<Identity, AuthError> {
    let state = shared.state();
    let read = match state.flavour {
        Flavour::Synapse => token_rules::twisted,
        Flavour::Dendrite => token_rules::dendrite,
        Flavour::ConduitLegacy | Flavour::Msc4166 => token_rules::conduit,
    };
    let Presented { token, user_id } = read(&parts.headers, parts.uri.query())?;
    let find = |tokens: &[(String, String)]| {
        tokens
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, user_id)| user_id.clone())
    };
    if let Some(sender) = find(&state.appservices) {
        // Every `@…:localhost` is in the fake appservice's namespace.
        let user_id = match user_id {
            None => sender,
            Some(puppet) if puppet.starts_with('@') && puppet.ends_with(":localhost") => puppet,
            Some(_) => return Err(AuthError::CannotMasquerade),
        };
        return Ok(Identity {
            user_id,
            guest: false,
        });
    }
    if let Some(user_id) = find(&state.users) {
        return Ok(Identity {
            user_id,
            guest: false,
        });
    }
    find(&state.guests)
        .map(|user_id| Identity { user_id, guest: true })
        .ok_or(AuthError::UnknownToken)
}

async fn echo(shared: &Arc<Shared>, parts: &Parts, body: Body, peer: SocketAddr) -> Response<Body> {
    let passed_through = shared.recorder.record_streaming(parts, body, peer);
    if parts.uri.path() == "/echo/slow" {
        let ms = parts
            .uri
            .query()
            .and_then(|q| token_rules::twisted_param(q, "ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = Response::new(Body::from_stream(passed_through));
    let headers = resp.headers_mut();
    headers.insert("x-echo-method", header_value(parts.method.as_str()));
    let path_and_query = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
    headers.insert("x-echo-path", header_value(path_and_query));
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, content_type.clone());
    }
    resp
}

/// A header value from text that the `http` crate already validated (a method
/// or a request target), so it cannot fail.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

/// A client API JSON answer with Synapse's header set, in its order
/// (docs/synapse-facts.md §2), sent chunked; `HEAD` gets the headers only.
fn matrix_json(status: StatusCode, body: impl Into<Bytes>, method: &Method) -> Response<Body> {
    let mut resp = Response::new(chunked_unless_head(body.into(), method));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    server_and_date(headers);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    cors(headers);
    resp
}

/// docs/synapse-facts.md §7: `/_matrix/client/versions` has its own caching
/// headers before `Content-Type`.
fn versions(method: &Method) -> Response<Body> {
    let mut resp = Response::new(chunked_unless_head(
        Bytes::from_static(VERSIONS_BODY.as_bytes()),
        method,
    ));
    let headers = resp.headers_mut();
    server_and_date(headers);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(VERSIONS_CACHE));
    headers.insert(VARY, HeaderValue::from_static("Authorization"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    cors(headers);
    resp
}

/// docs/synapse-facts.md §4: 204, `Content-Length: 0`, CORS, no `Content-Type`.
fn preflight() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let headers = resp.headers_mut();
    server_and_date(headers);
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    cors(headers);
    resp
}

/// docs/synapse-facts.md §7: `/health` is plain text with a length and no CORS.
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    server_and_date(headers);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    resp
}

fn chunked_unless_head(body: Bytes, method: &Method) -> Body {
    if *method == Method::HEAD || body.is_empty() {
        return Body::empty();
    }
    // A stream has no known length, so hyper sends it chunked, as Twisted does.
    Body::from_stream(stream::once(ready(Ok::<_, Infallible>(body))))
}

fn server_and_date(headers: &mut HeaderMap) {
    headers.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    // Set here rather than left to hyper, which would append it last.
    headers.insert(DATE, header_value(&httpdate::fmt_http_date(SystemTime::now())));
}

fn cors(headers: &mut HeaderMap) {
    for (name, value) in CORS_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synapse_turn_server_paths_match() {
        for path in [
            "/_matrix/client/v3/voip/turnServer",
            "/_matrix/client/r0/voip/turnServer",
            "/_matrix/client/unstable/voip/turnServer",
            "/_matrix/client/api/v1/voip/turnServer",
        ] {
            assert!(is_turn_server(Flavour::Synapse, path), "{path}");
        }
        for path in [
            "/_matrix/client/v1/voip/turnServer",
            "/_matrix/client/v2/voip/turnServer",
            "/_matrix/client/v3/voip/turnServer/",
            "/_matrix/client/v3/voip/turnserver",
            "/x/_matrix/client/v3/voip/turnServer",
        ] {
            assert!(!is_turn_server(Flavour::Synapse, path), "{path}");
        }
    }

    #[test]
    fn the_other_homeservers_serve_only_r0_and_v3() {
        for flavour in [Flavour::Dendrite, Flavour::ConduitLegacy, Flavour::Msc4166] {
            assert!(is_turn_server(flavour, "/_matrix/client/v3/voip/turnServer"));
            assert!(is_turn_server(flavour, "/_matrix/client/r0/voip/turnServer"));
            assert!(!is_turn_server(
                flavour,
                "/_matrix/client/unstable/voip/turnServer"
            ));
            assert!(!is_turn_server(flavour, "/_matrix/client/api/v1/voip/turnServer"));
        }
    }
}
