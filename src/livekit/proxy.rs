//! The LiveKit front door (docs/behaviour.md §12), a sibling of `routes`: a
//! transparent proxy to `LIVEKIT_SFU_URL`. Plain HTTP requests stream both
//! ways; a WebSocket upgrade on a signalling path is handed to LiveKit with
//! the client's path, query and headers, and every frame is then relayed
//! both ways, except that LiveKit's first join or reconnect gets a
//! Cloudflare credential from the shared core, spliced in by `splice`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::{debug, info};

use crate::clock;
use crate::config::{LiveKitConfig, Secret, TurnFor};
use crate::credentials::Credentials;
use crate::credentials::issued::{Issued, MintError};
use crate::credentials::reuse::{Source, TokenKey};
use crate::edge::access_log::{AccessLine, OutcomeWord};
use crate::edge::headers::{client_address, strip_hop_by_hop, upstream_headers};
use crate::edge::server::Takeover;
use crate::edge::upstream::{HttpClient, error_chain, http_client};
use crate::livekit::auth::{self, TokenReading};
use crate::livekit::jwt::{self, Claims};
use crate::livekit::splice;
use crate::metrics::Metrics;
use crate::throttle::{Throttle, throttled_warn};
use crate::usage::Withheld;

/// How long LiveKit may take to answer a signalling upgrade: it checks the
/// token and sets up the room before its `101`.
pub(crate) const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);
/// A plain request's body must be whole this long after its head, or the
/// client gets a 408: a body that trickles would hold its connection, and
/// LiveKit's, for as long as it kept coming.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(20);
/// LiveKit's answer to a plain request must start this long after the
/// request's head, or the client gets a 504. Longer than [`BODY_TIMEOUT`]:
/// LiveKit answers once it has the body.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest WebSocket message relayed from LiveKit; a larger one ends the
/// connection (LiveKit sets no limit of its own). A join for a room of a
/// thousand participants is well under this.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest WebSocket message relayed from a client; a larger one ends the
/// connection. A client sends offers, answers, ICE candidates, track and
/// subscription updates: the largest measured in real two-party calls was
/// 33 KB (Chromium's sync state on a `/rtc/v1` resume, both SDPs; 16 KB in
/// Firefox, docs/behaviour.md §10). An SDP grows with every track of the
/// call, so this leaves thirty times that, a quarter of LiveKit's bound.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 1024 * 1024;
/// A message longer than this goes out in fragments of this size, so a
/// leg's out buffer, which keeps its largest size, stays this small.
const WRITE_FRAME_BYTES: usize = 16 * 1024;
/// Bytes of each message a leg may hold, read and not yet passed on,
/// before the rest counts against [`RELAY_BUDGET_BYTES`]: every client
/// message measured in real calls is under it, so a spent budget ends
/// none of theirs.
pub const FREE_MESSAGE_BYTES: usize = 64 * 1024;
/// What all relayed connections together may hold of messages read and
/// not yet passed on, beyond [`FREE_MESSAGE_BYTES`] each. A read that
/// would take them past it ends its connection.
pub const RELAY_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// Each leg's WebSocket read buffer, allocated when the relay starts.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Once one leg has closed, how long the other has to answer the close
/// before both are dropped.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Longest LiveKit's join (or reconnect) is held while its credential is
/// minted: the participant waits on it. Past it the join goes on as LiveKit
/// sent it, and the mint, which goes on, serves the next join by reuse.
pub const JOIN_HOLD: Duration = Duration::from_millis(1500);

/// How many participants' joins are remembered for their reconnects, and
/// for how long after the last one: a resume comes within minutes of a
/// broken connection, in a call that may last a working day. Ten times a
/// door's default connection cap, and about a megabyte when full:
/// a participant past it is resumed on its token's identity.
const ADMITTED_ENTRIES: u64 = 10_000;
const ADMITTED_IDLE: Duration = Duration::from_secs(24 * 3600);

const SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

type Socket = WebSocketStream<Metered<TokioIo<Upgraded>>>;

/// The LiveKit door's own limits (docs/behaviour.md §10): the deadlines on
/// a plain request, and the relay's memory budget.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// From the head to the body's end: [`BODY_TIMEOUT`].
    pub body: Duration,
    /// From the head to the start of LiveKit's answer: [`ANSWER_TIMEOUT`].
    pub answer: Duration,
    /// [`RELAY_BUDGET_BYTES`].
    pub relay_budget: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            body: BODY_TIMEOUT,
            answer: ANSWER_TIMEOUT,
            relay_budget: RELAY_BUDGET_BYTES,
        }
    }
}

/// What the LiveKit front door shares between connections.
#[derive(Clone)]
pub(crate) struct LiveKitState {
    inner: Arc<Front>,
}

struct Front {
    client: HttpClient,
    /// Without a trailing slash: the client's path is appended byte for byte.
    sfu_url: String,
    credentials: Arc<Credentials>,
    metrics: Arc<Metrics>,
    /// LIVEKIT_KEY and LIVEKIT_SECRET, to verify tokens here too.
    api_key: Option<(String, Secret)>,
    /// What each participant's join through this front door said of it,
    /// by the `sid` LiveKit gave it, for the reconnects that resume it.
    admitted: moka::future::Cache<String, splice::Admitted>,
    /// LIVEKIT_TURN_FOR.
    turn_for: TurnFor,
    bounds: Bounds,
    /// [`Bounds::relay_budget`], shared by every relayed connection.
    budget: Arc<Budget>,
    unreachable: Throttle,
    cloudflare_failed: Throttle,
    budget_spent: Throttle,
}

impl LiveKitState {
    pub(crate) fn new(
        config: &LiveKitConfig,
        credentials: Arc<Credentials>,
        metrics: Arc<Metrics>,
        bounds: Bounds,
    ) -> Self {
        Self {
            inner: Arc::new(Front {
                client: http_client(),
                sfu_url: config.sfu_url.clone(),
                credentials,
                metrics,
                api_key: config.api_key.clone(),
                admitted: moka::future::Cache::builder()
                    .max_capacity(ADMITTED_ENTRIES)
                    .time_to_idle(ADMITTED_IDLE)
                    .build(),
                turn_for: config.turn_for,
                bounds,
                budget: Arc::new(Budget::new(bounds.relay_budget)),
                unreachable: Throttle::default(),
                cloudflare_failed: Throttle::default(),
                budget_spent: Throttle::default(),
            }),
        }
    }

    /// What the relay needs to give LiveKit's join a credential: the
    /// upgrade's token read as LiveKit reads it (from what goes to
    /// LiveKit), the `sid` a reconnect names, and, for a token that verifies
    /// with the configured key and grants `video.roomJoin` (and, when only
    /// publishers get an entry, does not forbid publishing), a credential
    /// already on its way. A forged, expired or joinless token never
    /// verifies, so it never costs a mint before LiveKit has answered.
    fn splicer(&self, headers: &HeaderMap, query: Option<&str>) -> Splicer {
        let token = match auth::token_as_livekit_reads(headers, query) {
            TokenReading::Token(token) => Some(token),
            TokenReading::Absent | TokenReading::Unclear => None,
        };
        let early = token
            .as_deref()
            .zip(self.inner.api_key.as_ref())
            .and_then(|(token, (key, secret))| jwt::verify(token, key, secret, clock::unix_seconds()))
            .filter(|verified| verified.room_join)
            .filter(|verified| verified.can_publish || self.inner.turn_for == TurnFor::Everyone)
            .map(|verified| self.inner.fetch(&verified.claims));
        Splicer {
            front: Arc::clone(&self.inner),
            token: token.as_deref().and_then(jwt::read),
            resumed_sid: query.and_then(|query| auth::form_value(query, "sid").ok().flatten()),
            early,
            done: false,
            outcome: Turn::NoJoin,
        }
    }
}

impl Front {
    /// The credential for `claims`' identity, on its own task: it lands in
    /// the reuse cache even if nobody waits for it any more.
    fn fetch(&self, claims: &Claims) -> Fetching {
        let credentials = Arc::clone(&self.credentials);
        let key = TokenKey::livekit(&claims.issuer, &claims.identity);
        let identity = claims.identity.clone();
        tokio::spawn(async move { credentials.for_call(identity, key).await })
    }
}

type Fetching = tokio::task::JoinHandle<Result<(Arc<Issued>, Source), Arc<MintError>>>;

/// How a request to the LiveKit door ended, as its access-log line says
/// (docs/behaviour.md §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Not a path LiveKit could serve, or an upgrade with a body.
    BadRequest,
    PassedThrough,
    /// The request body did not come in time.
    BodyTimeout,
    UpstreamError,
    UpstreamTimeout,
    /// LiveKit answered the upgrade with something else: passed on.
    RefusedByLiveKit,
    /// A signalling connection; it logs its own line when it ends.
    Upgraded,
}

impl OutcomeWord for Outcome {
    fn word(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::PassedThrough => "passed-through",
            Self::BodyTimeout => "body-timeout",
            Self::UpstreamError => "upstream-error",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::RefusedByLiveKit => "refused-by-livekit",
            Self::Upgraded => "upgraded",
        }
    }
}

/// What a signalling connection's join got, as its log line's `turn` and
/// `/metrics` say (docs/behaviour.md §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// No join or reconnect came.
    NoJoin,
    /// The client hung up while its join was held for the credential.
    LeftWhileHeld,
    Cloudflare,
    Reused,
    CloudflareFailed,
    /// The credential came after the hold: the join went on without it.
    Late,
    /// The splice could not add the entry to this join.
    NothingToAdd,
    /// The daemon could not tell whom LiveKit admitted.
    NoIdentity,
    /// LiveKit admitted someone other than the token names.
    IdentityMismatch,
    /// A budget holds (docs/behaviour.md §13).
    Withheld(Withheld),
    /// Only publishers get an entry, and the join did not let this
    /// participant publish, or the daemon could not be sure it did.
    NotPublisher,
}

impl Turn {
    fn word(self) -> &'static str {
        match self {
            Self::NoJoin => "no-join",
            Self::LeftWhileHeld => "left-while-held",
            Self::Cloudflare => "cloudflare",
            Self::Reused => "reused",
            Self::CloudflareFailed => "cloudflare-failed",
            Self::Late => "late",
            Self::NothingToAdd => "nothing-to-add",
            Self::NoIdentity => "no-identity",
            Self::IdentityMismatch => "identity-mismatch",
            Self::Withheld(why) => why.word(),
            Self::NotPublisher => "not-publisher",
        }
    }
}

/// What the relay does to LiveKit's frames: the first join or reconnect,
/// the acceptance of the token, gets a credential for the participant it
/// admits; every other frame goes on as it came.
struct Splicer {
    front: Arc<Front>,
    /// The upgrade's token, where the daemon reads it as LiveKit does.
    token: Option<Claims>,
    /// The participant a resume names (`?sid=`), read as LiveKit reads it.
    resumed_sid: Option<String>,
    early: Option<Fetching>,
    done: bool,
    /// For the connection's log line.
    outcome: Turn,
}

impl Splicer {
    async fn frame(&mut self, frame: bytes::Bytes) -> bytes::Bytes {
        if self.done {
            return frame;
        }
        let Some(kind) = splice::kind(&frame) else {
            return frame;
        };
        self.done = true;
        let Some(claims) = self.participant(kind, &frame).await else {
            return frame;
        };
        let fetching = match self.early.take() {
            Some(early) => early,
            None => self.front.fetch(&claims),
        };
        // What the log says if the client hangs up during the hold, which
        // drops this future: the join came, and never reached the client.
        self.outcome = Turn::LeftWhileHeld;
        let issued = match tokio::time::timeout(JOIN_HOLD, fetching).await {
            Ok(Ok(Ok((issued, source)))) => {
                self.outcome = match source {
                    Source::Minted => Turn::Cloudflare,
                    Source::Reused | Source::ReusedWhileFailing => Turn::Reused,
                };
                issued
            }
            Ok(Ok(Err(e))) if let MintError::Withheld(why) = *e => {
                self.outcome = Turn::Withheld(why);
                return frame;
            }
            Ok(Ok(Err(e))) => {
                self.outcome = Turn::CloudflareFailed;
                if !matches!(*e, MintError::BackedOff(_)) {
                    throttled_warn!(self.front.cloudflare_failed, error = %e, "no Cloudflare credential; LiveKit's join goes on unchanged");
                }
                return frame;
            }
            Ok(Err(_)) => {
                self.outcome = Turn::CloudflareFailed;
                return frame;
            }
            Err(_) => {
                self.outcome = Turn::Late;
                return frame;
            }
        };
        match splice::splice(&frame, &issued.credential) {
            Some(spliced) => spliced.into(),
            None => {
                self.outcome = Turn::NothingToAdd;
                frame
            }
        }
    }

    /// Whom LiveKit admitted, with the issuer of the token it admitted them
    /// on; `None`, with the outcome set, when the daemon cannot be sure or
    /// the participant is not to get an entry. A join names its participant,
    /// who must be the one the token names. A reconnect names no one: the
    /// participant is the one an earlier join through this front door gave
    /// the `sid` it resumes, who must again be the token's, or else the
    /// token's. When only publishers get an entry, the join (for a
    /// reconnect, that earlier join) must let them publish.
    async fn participant(&mut self, kind: splice::Kind, frame: &[u8]) -> Option<Claims> {
        self.outcome = Turn::NoIdentity;
        let named = match kind {
            splice::Kind::Join => {
                let admitted = splice::admitted(frame)?;
                self.front
                    .admitted
                    .insert(admitted.sid.clone(), admitted.clone())
                    .await;
                Some(admitted)
            }
            splice::Kind::Reconnect => match &self.resumed_sid {
                Some(sid) => self.front.admitted.get(sid).await,
                None => None,
            },
        };
        let token = self.token.take()?;
        if named
            .as_ref()
            .is_some_and(|joined| joined.identity != token.identity)
        {
            // An early credential is for the token's identity: not this one.
            self.early = None;
            self.outcome = Turn::IdentityMismatch;
            return None;
        }
        if self.front.turn_for == TurnFor::Publishers && !named.is_some_and(|joined| joined.publisher) {
            self.outcome = Turn::NotPublisher;
            return None;
        }
        Some(token)
    }
}

pub(crate) fn router(state: LiveKitState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// LiveKit's signalling WebSocket: `…/rtc` (v0) or `…/rtc/v1`, under any
/// prefix the client's URL has (client-sdk-js appends these to the URL's
/// path). `…/rtc/validate` is a plain GET.
pub(crate) fn is_signal_path(path: &str) -> bool {
    path.ends_with("/rtc") || path.ends_with("/rtc/v1")
}

/// An HTTP/1.1 WebSocket opening handshake (RFC 6455 §4.1): a GET with
/// `Upgrade: websocket` and `Connection` naming `upgrade`.
fn is_websocket_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    };
    method == Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

async fn dispatch(
    State(state): State<LiveKitState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let line = AccessLine::new(
        client_address(request.headers(), peer.ip()),
        request.method().clone(),
        request.uri().path().to_owned(),
    );
    let path = &line.path;
    let signalling = is_signal_path(path) && is_websocket_upgrade(&line.method, request.headers());
    // `OPTIONS *` (or an absolute URI's empty path) names nothing of
    // LiveKit's: its `*` appended to LiveKit's base would be its port.
    let (response, outcome) = if !path.starts_with('/') {
        (bad_target(), Outcome::BadRequest)
    } else if signalling {
        let log = ConnectionLog {
            client: line.client.clone(),
            path: line.path.clone(),
            started: line.started,
        };
        upgrade(&state, peer.ip(), request, log).await
    } else {
        pass_through(&state, peer.ip(), request).await
    };
    // An upgraded connection logs its own line when it ends; the path is
    // logged without its query, where LiveKit's access_token is.
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        line.livekit(response.status(), outcome);
    }
    response
}

/// Any request but a signalling upgrade: forwarded as it is, both bodies
/// streamed, LiveKit's answer unchanged but for hop-by-hop headers. The
/// body must be whole, and LiveKit's answer started, within the door's
/// deadlines.
async fn pass_through(state: &LiveKitState, peer: IpAddr, request: Request) -> (Response, Outcome) {
    let deadlines = state.inner.bounds;
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let headers = upstream_headers(parts.headers, peer);
    let body = WholeBy::new(body, tokio::time::Instant::now() + deadlines.body);
    let late = body.late();
    let Ok(upstream) = state.upstream_request(parts.method, path_and_query, headers, Body::new(body)) else {
        return (bad_target(), Outcome::BadRequest);
    };
    match tokio::time::timeout(deadlines.answer, state.inner.client.request(upstream)).await {
        Ok(Ok(answer)) => (passed_on(answer.map(Body::new)), Outcome::PassedThrough),
        Ok(Err(_)) if late.load(Ordering::Relaxed) => (
            closing(plain(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n",
            )),
            Outcome::BodyTimeout,
        ),
        Ok(Err(e)) => {
            throttled_warn!(state.inner.unreachable, error = %error_chain(&e), "LiveKit failed on a request");
            (bad_gateway(), Outcome::UpstreamError)
        }
        Err(_) => {
            throttled_warn!(
                state.inner.unreachable,
                "LiveKit did not answer a request in time"
            );
            (
                closing(plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "LiveKit did not answer in time\n",
                )),
                Outcome::UpstreamTimeout,
            )
        }
    }
}

/// A request body that fails once `deadline` passes before its end, which
/// makes hyper give up the request to LiveKit; `late` says that was why.
struct WholeBy {
    body: Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    late: Arc<AtomicBool>,
}

impl WholeBy {
    fn new(body: Body, deadline: tokio::time::Instant) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            late: Arc::new(AtomicBool::new(false)),
        }
    }

    fn late(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.late)
    }
}

impl hyper::body::Body for WholeBy {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new("request body not received in time"))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A signalling upgrade: the same request goes to LiveKit, asking for a
/// WebSocket with no extension, so each leg is uncompressed and frames can
/// be relayed as they are. LiveKit's `101` goes back to the client with the
/// relay started behind it; any other answer (a refused token's 401) goes
/// back unchanged, and no upgrade happens. An upgrade carries no body: one
/// that declares one is refused, and what goes to LiveKit declares none
/// (LiveKit would wait for it before answering).
async fn upgrade(
    state: &LiveKitState,
    peer: IpAddr,
    mut request: Request,
    log: ConnectionLog,
) -> (Response, Outcome) {
    if !hyper::body::Body::is_end_stream(request.body()) {
        return (
            closing(plain(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade carries no body\n",
            )),
            Outcome::BadRequest,
        );
    }
    let client_upgrade = hyper::upgrade::on(&mut request);
    let takeover = request.extensions().get::<Takeover>().cloned();
    let (parts, _) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut headers = upstream_headers(parts.headers, peer);
    // Read from what goes to LiveKit: a header the client's Connection
    // named never reaches it.
    let splicer = state.splicer(&headers, parts.uri.query());
    headers.remove(SEC_WEBSOCKET_EXTENSIONS);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let Ok(upstream) = state.upstream_request(Method::GET, path_and_query, headers, Body::empty()) else {
        return (bad_target(), Outcome::BadRequest);
    };
    let mut answer = match tokio::time::timeout(UPGRADE_TIMEOUT, state.inner.client.request(upstream)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            throttled_warn!(state.inner.unreachable, error = %error_chain(&e), "LiveKit failed on a signalling upgrade");
            return (bad_gateway(), Outcome::UpstreamError);
        }
        Err(_) => {
            throttled_warn!(
                state.inner.unreachable,
                "LiveKit did not answer a signalling upgrade in time"
            );
            return (
                plain(StatusCode::GATEWAY_TIMEOUT, "LiveKit did not answer in time\n"),
                Outcome::UpstreamError,
            );
        }
    };
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        return (passed_on(answer.map(Body::new)), Outcome::RefusedByLiveKit);
    }
    let livekit_upgrade = hyper::upgrade::on(&mut answer);
    let (mut parts, _) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(SEC_WEBSOCKET_EXTENSIONS);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(takeover) = &takeover {
        takeover.upgrading();
    }
    tokio::spawn(relay(client_upgrade, livekit_upgrade, takeover, splicer, log));
    (Response::from_parts(parts, Body::empty()), Outcome::Upgraded)
}

impl LiveKitState {
    /// A request to LiveKit for `path_and_query`, byte for byte; `Err`
    /// only for a path that cannot form a URL with the base, which hyper
    /// would not have accepted from the client either.
    fn upstream_request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<http::Request<Body>, http::Error> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.inner.sfu_url, path_and_query))
            .body(body)?;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

fn passed_on(answer: Response) -> Response {
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// LiveKit is down: a plain reason, and for an upgrade no `101`.
fn bad_gateway() -> Response {
    plain(StatusCode::BAD_GATEWAY, "LiveKit is unreachable\n")
}

/// A request target that forms no URL with LiveKit's base (`OPTIONS *`):
/// nothing to ask LiveKit.
fn bad_target() -> Response {
    plain(StatusCode::BAD_REQUEST, "no such request target here\n")
}

/// An answer after which the connection closes: the request's body was
/// never read to its end.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn plain(status: StatusCode, reason: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        reason,
    )
        .into_response()
}

/// What a signalling connection's one log line says about where it came from.
struct ConnectionLog {
    client: String,
    path: String,
    started: Instant,
}

/// How one direction of the relay ended.
#[derive(Debug)]
enum End {
    /// A close frame came and was passed on.
    Closed(Option<CloseFrame>),
    /// The leg broke or ended without a close frame.
    Gone,
}

/// Relays frames both ways until either leg ends, then ends the other the
/// same way: a close frame is passed on with its code and reason and its
/// answer awaited for [`CLOSE_LINGER`]; a leg that simply went away makes
/// the other go away too, so LiveKit sees a lost client as lost (and keeps
/// the participant for a resume).
async fn relay(
    client: OnUpgrade,
    livekit: OnUpgrade,
    mut takeover: Option<Takeover>,
    mut splicer: Splicer,
    log: ConnectionLog,
) {
    let _open = splicer.front.metrics.signalling_started();
    let (client, livekit) = match tokio::try_join!(client, livekit) {
        Ok(both) => both,
        Err(e) => {
            debug!(error = %e, "a signalling upgrade did not complete");
            return;
        }
    };
    // tungstenite allocates its read buffer up front, 128 KiB by default:
    // two per call, for messages mostly under 1 KiB. A small one grows for
    // the rare large message; writes go out at once, as the relay flushes
    // every message anyway.
    let config = |max_message| {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
    };
    let mut up = Traffic::new(&splicer.front.budget);
    let mut down = Traffic::new(&splicer.front.budget);
    let client = Socket::from_raw_socket(
        Metered::new(TokioIo::new(client), &up.meter),
        Role::Server,
        Some(config(MAX_CLIENT_MESSAGE_BYTES)),
    )
    .await;
    let livekit = Socket::from_raw_socket(
        Metered::new(TokioIo::new(livekit), &down.meter),
        Role::Client,
        Some(config(MAX_MESSAGE_BYTES)),
    )
    .await;
    let (mut to_client, mut from_client) = client.split();
    let (mut to_livekit, mut from_livekit) = livekit.split();
    let (ended_by, end) = {
        let up = pump(&mut from_client, &mut to_livekit, &mut up, None);
        let down = pump(&mut from_livekit, &mut to_client, &mut down, Some(&mut splicer));
        tokio::pin!(up, down);
        let draining = async {
            match &mut takeover {
                Some(takeover) => takeover.draining().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            end = &mut up => {
                if matches!(end, End::Closed(_)) {
                    let _ = tokio::time::timeout(CLOSE_LINGER, &mut down).await;
                }
                ("client", end)
            }
            end = &mut down => {
                if matches!(end, End::Closed(_)) {
                    let _ = tokio::time::timeout(CLOSE_LINGER, &mut up).await;
                }
                ("livekit", end)
            }
            () = draining => ("shutdown", End::Gone),
        }
    };
    match (&end, ended_by) {
        // A leg answers a close frame on its next write: flush those
        // answers, start no close of our own.
        (End::Closed(_), _) => {
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                let _ = tokio::join!(to_client.flush(), to_livekit.flush());
            })
            .await;
        }
        (End::Gone, "shutdown") => {
            let going_away = || {
                Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "matrix-turnify is shutting down".into(),
                }))
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                let _ = tokio::join!(to_client.send(going_away()), to_livekit.send(going_away()));
            })
            .await;
        }
        (End::Gone, _) => {}
    }
    if up.meter.over_budget() || down.meter.over_budget() {
        throttled_warn!(
            splicer.front.budget_spent,
            budget_bytes = splicer.front.bounds.relay_budget,
            "the relay's memory budget is spent: a signalling connection holding a large message was ended"
        );
    }
    splicer.front.metrics.signalling_ended(splicer.outcome.word());
    let code = match &end {
        End::Closed(Some(frame)) => Some(u16::from(frame.code)),
        End::Closed(None) | End::Gone => None,
    };
    info!(
        front = "livekit",
        client = %log.client,
        path = %log.path,
        status = 101,
        outcome = "signalling",
        ended_by,
        close_code = code,
        turn = splicer.outcome.word(),
        frames_from_client = up.frames,
        frames_from_livekit = down.frames,
        largest_from_client = up.largest,
        largest_from_livekit = down.largest,
        duration_ms = (log.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        "signalling connection"
    );
}

/// One direction of a relay: what it carried, and what it holds.
struct Traffic {
    frames: u64,
    /// The longest message, in bytes, for the log (and for choosing
    /// [`MAX_CLIENT_MESSAGE_BYTES`] from real calls).
    largest: usize,
    meter: Arc<Meter>,
}

impl Traffic {
    fn new(budget: &Arc<Budget>) -> Self {
        Self {
            frames: 0,
            largest: 0,
            meter: Arc::new(Meter {
                budget: Arc::clone(budget),
                held: AtomicUsize::new(0),
                charged: AtomicUsize::new(0),
                over: AtomicBool::new(false),
            }),
        }
    }
}

/// Passes every message from `from` to `to` as it came, one at a time:
/// nothing is read from one leg while the other has not taken the last
/// message, so a slow reader slows its sender and no buffer grows. A long
/// message goes out in fragments of [`WRITE_FRAME_BYTES`].
async fn pump(
    from: &mut futures_util::stream::SplitStream<Socket>,
    to: &mut futures_util::stream::SplitSink<Socket, Message>,
    traffic: &mut Traffic,
    mut splicer: Option<&mut Splicer>,
) -> End {
    let mut last: Option<bytes::Bytes> = None;
    loop {
        // tungstenite reads a message into its read buffer and hands it on
        // without a copy, and that buffer ends with the message (Metered
        // reads no further). Left alone, it would take the whole allocation
        // back, at the largest message's size, for the next one; while the
        // last message is still held here it cannot, and takes a small one
        // instead: the large one goes with the message.
        let next = std::future::poll_fn(|cx| {
            let polled = from.poll_next_unpin(cx);
            last = None;
            polled
        })
        .await;
        let Some(Ok(message)) = next else {
            return End::Gone;
        };
        traffic.frames += 1;
        traffic.largest = traffic.largest.max(message.len());
        let message = match (message, splicer.as_deref_mut()) {
            (Message::Binary(frame), Some(splicer)) => Message::Binary(splicer.frame(frame).await),
            (message, _) => message,
        };
        if let Message::Close(frame) = message {
            // The answer to it is the other leg's own close, passed back by
            // the other direction; a leg already gone cannot take it.
            let _ = to.send(Message::Close(frame.clone())).await;
            return End::Closed(frame);
        }
        let sent = match message {
            Message::Binary(data) if data.len() > WRITE_FRAME_BYTES => {
                last = Some(data.clone());
                send_fragmented(to, Data::Binary, data).await
            }
            Message::Text(text) if text.len() > WRITE_FRAME_BYTES => {
                let data = bytes::Bytes::from(text);
                last = Some(data.clone());
                send_fragmented(to, Data::Text, data).await
            }
            Message::Binary(data) => {
                last = Some(data.clone());
                to.send(Message::Binary(data)).await
            }
            message => to.send(message).await,
        };
        traffic.meter.passed_on();
        if sent.is_err() {
            return End::Gone;
        }
    }
}

/// `data` as one message in frames of at most [`WRITE_FRAME_BYTES`], each
/// sent as soon as the last is written. Control frames may come between
/// them (RFC 6455 §5.4); a text message's parts need not end on a
/// character, only the whole message is UTF-8.
async fn send_fragmented(
    to: &mut futures_util::stream::SplitSink<Socket, Message>,
    kind: Data,
    data: bytes::Bytes,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut start = 0;
    while start < data.len() {
        let end = (start + WRITE_FRAME_BYTES).min(data.len());
        let opcode = if start == 0 { kind } else { Data::Continue };
        let frame = Frame::message(data.slice(start..end), OpCode::Data(opcode), end == data.len());
        to.send(Message::Frame(frame)).await?;
        start = end;
    }
    Ok(())
}

/// [`RELAY_BUDGET_BYTES`]: what all relayed connections hold, beyond each
/// message's [`FREE_MESSAGE_BYTES`].
struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What one leg has read and not yet passed on: the message on its way in
/// (a little of the next one too, read ahead). Past [`FREE_MESSAGE_BYTES`]
/// it is charged to the [`Budget`], until the message has gone out on the
/// other leg.
struct Meter {
    budget: Arc<Budget>,
    held: AtomicUsize,
    charged: AtomicUsize,
    /// A read was refused for want of budget.
    over: AtomicBool,
}

impl Meter {
    /// `bytes` more were read; false when the budget cannot take them.
    fn read(&self, bytes: usize) -> bool {
        let held = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = held.saturating_sub(FREE_MESSAGE_BYTES);
        let charged = self.charged.load(Ordering::Relaxed);
        if due <= charged {
            return true;
        }
        if !self.budget.take(due - charged) {
            self.over.store(true, Ordering::Relaxed);
            return false;
        }
        self.charged.store(due, Ordering::Relaxed);
        true
    }

    /// The message read went out on the other leg (or could not).
    fn passed_on(&self) {
        self.held.store(0, Ordering::Relaxed);
        self.budget.give(self.charged.swap(0, Ordering::Relaxed));
    }

    fn over_budget(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.budget.give(*self.charged.get_mut());
    }
}

/// A leg's stream, its reads counted by its [`Meter`] (a read the budget
/// cannot take fails, which ends the connection) and cut at WebSocket frame
/// boundaries. tungstenite sizes its read buffer for a frame once it has
/// the frame's head; with no bytes past the head or the frame's end read
/// along, a large frame's buffer ends exactly with it, so the next frame
/// cannot go on in that buffer and takes a small one (see [`pump`]).
struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
    at: Boundary,
}

impl<S> Metered<S> {
    fn new(inner: S, meter: &Arc<Meter>) -> Self {
        Self {
            inner,
            meter: Arc::clone(meter),
            at: Boundary::Head {
                bytes: [0; MAX_FRAME_HEAD],
                have: 0,
            },
        }
    }
}

/// The longest WebSocket frame head (RFC 6455 §5.2): two bytes, an 8-byte
/// length, a 4-byte mask.
const MAX_FRAME_HEAD: usize = 14;
/// The longest read a leg makes at once, through a buffer on the stack.
const READ_CHUNK_BYTES: usize = 4 * 1024;

/// Where a leg's byte stream is: in a frame's head, or in its payload.
#[derive(Debug)]
enum Boundary {
    Head {
        bytes: [u8; MAX_FRAME_HEAD],
        have: usize,
    },
    Payload {
        left: u64,
    },
}

impl Boundary {
    /// How many bytes the head in `bytes` takes, as far as `have` of them tell.
    fn head_length(bytes: &[u8; MAX_FRAME_HEAD], have: usize) -> usize {
        if have < 2 {
            return 2;
        }
        let length_bytes = match bytes[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask_bytes = if bytes[1] & 0x80 != 0 { 4 } else { 0 };
        2 + length_bytes + mask_bytes
    }

    /// How many bytes to read next, at most: none past the head or the payload.
    fn wanted(&self) -> usize {
        match self {
            Boundary::Head { bytes, have } => Self::head_length(bytes, *have) - have,
            Boundary::Payload { left } => usize::try_from(*left).unwrap_or(usize::MAX),
        }
    }

    /// `data`, no more than [`Boundary::wanted`], was read.
    fn saw(&mut self, data: &[u8]) {
        match self {
            Boundary::Head { bytes, have } => {
                bytes[*have..*have + data.len()].copy_from_slice(data);
                *have += data.len();
                if *have >= 2 && *have == Self::head_length(bytes, *have) {
                    let left = match bytes[1] & 0x7f {
                        126 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
                        127 => u64::from_be_bytes([
                            bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8], bytes[9],
                        ]),
                        short => u64::from(short),
                    };
                    *self = Boundary::Payload { left };
                }
            }
            Boundary::Payload { left } => {
                *left -= data.len() as u64;
            }
        }
        if matches!(self, Boundary::Payload { left: 0 }) {
            *self = Boundary::Head {
                bytes: [0; MAX_FRAME_HEAD],
                have: 0,
            };
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Metered<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let most = this.at.wanted().min(buf.remaining()).min(READ_CHUNK_BYTES);
        let mut read = tokio::io::ReadBuf::new(&mut chunk[..most]);
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let read = read.filled();
        this.at.saw(read);
        buf.put_slice(read);
        if this.meter.read(read.len()) {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Ready(Err(std::io::Error::other("the relay's memory budget is spent")))
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of each length encoding, masked or not, read in the pieces
    /// `Boundary` asks for: every piece ends within one head or payload.
    #[test]
    fn reads_stop_at_each_frame_head_and_payload() {
        let frames: [(Vec<u8>, usize); 4] = [
            (vec![0x89, 0x00], 0),
            (vec![0x82, 0x85, 1, 2, 3, 4], 5),
            (vec![0x82, 126, 0x01, 0x00], 256),
            (vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9, 9], 65536),
        ];
        let mut at = Boundary::Head {
            bytes: [0; MAX_FRAME_HEAD],
            have: 0,
        };
        for (head, payload) in frames {
            let mut pieces = Vec::new();
            let stream = [head.clone(), vec![7; payload]].concat();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let piece = at.wanted().min(rest.len());
                pieces.push(piece);
                at.saw(&rest[..piece]);
                rest = &rest[piece..];
            }
            assert_eq!(pieces.iter().sum::<usize>(), head.len() + payload);
            let expected = match (head.len(), payload) {
                (2, 0) => vec![2],
                (length, 0) => vec![2, length - 2],
                (2, payload) => vec![2, payload],
                (length, payload) => vec![2, length - 2, payload],
            };
            assert_eq!(pieces, expected, "{head:?}");
            assert!(matches!(at, Boundary::Head { have: 0, .. }));
        }
    }

    #[test]
    fn signalling_paths_keep_any_prefix() {
        for path in ["/rtc", "/rtc/v1", "/livekit/sfu/rtc", "/a/rtc/v1"] {
            assert!(is_signal_path(path), "{path}");
        }
        for path in [
            "/rtc/validate",
            "/rtc/v1/validate",
            "/twirp/livekit.RoomService/ListRooms",
            "/",
            "/whip/v1",
            "/rtcx",
        ] {
            assert!(!is_signal_path(path), "{path}");
        }
    }
}
