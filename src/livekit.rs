//! The LiveKit front door (docs/behaviour.md §12), a sibling of `routes`: a
//! transparent proxy to `LIVEKIT_SFU_URL`. Plain HTTP requests stream both
//! ways; a WebSocket upgrade on a signalling path is handed to LiveKit with
//! the client's path, query and headers, and every frame is then relayed
//! both ways, except that LiveKit's first join or reconnect gets a
//! Cloudflare credential from the shared core, spliced in by `splice`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::{debug, info};

use crate::clock;
use crate::config::{LiveKitConfig, Secret};
use crate::credentials::Credentials;
use crate::issued::{Issued, MintError};
use crate::jwt::{self, Claims};
use crate::livekit_auth::{self, TokenReading};
use crate::metrics::Metrics;
use crate::reuse::{Source, TokenKey};
use crate::server::Takeover;
use crate::splice;
use crate::synapse;
use crate::throttle::{Throttle, throttled_warn};
use crate::upstream::{HttpClient, error_chain, http_client};

/// How long LiveKit may take to answer a signalling upgrade: it checks the
/// token and sets up the room before its `101`.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest WebSocket message relayed, either way; a larger one ends the
/// connection (LiveKit sets no limit of its own). A join for a room of a
/// thousand participants is well under this. Each direction relays one
/// message at a time, but its reading leg's buffer and its writing leg's
/// out buffer both keep the capacity of the largest message until the
/// connection closes: about four times this for a connection that carried
/// one at the bound each way (bench/README.md measures it).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Each leg's WebSocket read buffer, allocated when the relay starts.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Once one leg has closed, how long the other has to answer the close
/// before both are dropped.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Longest LiveKit's join (or reconnect) is held while its credential is
/// minted: the participant waits on it. Past it the join goes on as LiveKit
/// sent it, and the mint, which goes on, serves the next join by reuse.
pub const JOIN_HOLD: Duration = Duration::from_millis(1500);

/// How many participants' joins are remembered for their reconnects, and
/// for how long after the last one: a resume comes within minutes of a
/// broken connection, in a call that may last a working day.
const ADMITTED_ENTRIES: u64 = 100_000;
const ADMITTED_IDLE: Duration = Duration::from_secs(24 * 3600);

const SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What the LiveKit front door shares between connections.
#[derive(Clone)]
pub struct LiveKitState {
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
    /// The identity each participant's join through this front door named,
    /// by the `sid` LiveKit gave it, for the reconnects that resume it.
    admitted: moka::future::Cache<String, String>,
    unreachable: Throttle,
    cloudflare_failed: Throttle,
}

impl LiveKitState {
    pub fn new(config: &LiveKitConfig, credentials: Arc<Credentials>, metrics: Arc<Metrics>) -> Self {
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
                unreachable: Throttle::default(),
                cloudflare_failed: Throttle::default(),
            }),
        }
    }

    /// What the relay needs to give LiveKit's join a credential: the
    /// upgrade's token read as LiveKit reads it (from what goes to
    /// LiveKit), the `sid` a reconnect names, and, for a token that verifies
    /// with the configured key and grants `video.roomJoin`, a credential
    /// already on its way. A forged, expired or joinless token never
    /// verifies, so it never costs a mint before LiveKit has answered.
    fn splicer(&self, headers: &HeaderMap, query: Option<&str>) -> Splicer {
        let token = match livekit_auth::token_as_livekit_reads(headers, query) {
            TokenReading::Token(token) => Some(token),
            TokenReading::Absent | TokenReading::Unclear => None,
        };
        let early = token
            .as_deref()
            .zip(self.inner.api_key.as_ref())
            .and_then(|(token, (key, secret))| jwt::verify(token, key, secret, clock::unix_seconds()))
            .filter(|verified| verified.room_join)
            .map(|verified| self.inner.fetch(&verified.claims));
        Splicer {
            front: Arc::clone(&self.inner),
            token: token.as_deref().and_then(jwt::read),
            resumed_sid: query.and_then(|query| livekit_auth::form_value(query, "sid").ok().flatten()),
            early,
            done: false,
            outcome: "no-join",
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
    outcome: &'static str,
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
        self.outcome = "left-while-held";
        let issued = match tokio::time::timeout(JOIN_HOLD, fetching).await {
            Ok(Ok(Ok((issued, source)))) => {
                self.outcome = match source {
                    Source::Minted => "cloudflare",
                    Source::Reused | Source::ReusedWhileFailing => "reused",
                };
                issued
            }
            Ok(Ok(Err(e))) => {
                self.outcome = "cloudflare-failed";
                if !matches!(*e, MintError::BackedOff(_)) {
                    throttled_warn!(self.front.cloudflare_failed, error = %e, "no Cloudflare credential; LiveKit's join goes on unchanged");
                }
                return frame;
            }
            Ok(Err(_)) => {
                self.outcome = "cloudflare-failed";
                return frame;
            }
            Err(_) => {
                self.outcome = "late";
                return frame;
            }
        };
        match splice::splice(&frame, &issued.credential) {
            Some(spliced) => spliced.into(),
            None => {
                self.outcome = "nothing-to-add";
                frame
            }
        }
    }

    /// Whom LiveKit admitted, with the issuer of the token it admitted them
    /// on; `None`, with the outcome set, when the daemon cannot be sure. A
    /// join names its participant, who must be the one the token names. A
    /// reconnect names no one: the participant is the one an earlier join
    /// through this front door gave the `sid` it resumes, who must again be
    /// the token's, or else the token's.
    async fn participant(&mut self, kind: splice::Kind, frame: &[u8]) -> Option<Claims> {
        self.outcome = "no-identity";
        let named = match kind {
            splice::Kind::Join => {
                let admitted = splice::admitted(frame)?;
                self.front
                    .admitted
                    .insert(admitted.sid, admitted.identity.clone())
                    .await;
                Some(admitted.identity)
            }
            splice::Kind::Reconnect => match &self.resumed_sid {
                Some(sid) => self.front.admitted.get(sid).await,
                None => None,
            },
        };
        let token = self.token.take()?;
        if named.is_some_and(|identity| identity != token.identity) {
            // An early credential is for the token's identity: not this one.
            self.early = None;
            self.outcome = "identity-mismatch";
            return None;
        }
        Some(token)
    }
}

pub fn router(state: LiveKitState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// LiveKit's signalling WebSocket: `…/rtc` (v0) or `…/rtc/v1`, under any
/// prefix the client's URL has (client-sdk-js appends these to the URL's
/// path). `…/rtc/validate` is a plain GET.
pub fn is_signal_path(path: &str) -> bool {
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
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = synapse::client_address(request.headers(), peer.ip());
    let signalling = is_signal_path(&path) && is_websocket_upgrade(&method, request.headers());
    let (response, outcome) = if signalling {
        let log = ConnectionLog {
            client: client.clone(),
            path: path.clone(),
            started,
        };
        upgrade(&state, peer.ip(), request, log).await
    } else {
        pass_through(&state, peer.ip(), request).await
    };
    // An upgraded connection logs its own line when it ends; the path is
    // logged without its query, where LiveKit's access_token is.
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        info!(
            front = "livekit",
            client = %client,
            method = %method,
            path = %path,
            status = response.status().as_u16(),
            outcome,
            duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            "request"
        );
    }
    response
}

/// Any request but a signalling upgrade: forwarded as it is, both bodies
/// streamed, LiveKit's answer unchanged but for hop-by-hop headers.
async fn pass_through(state: &LiveKitState, peer: IpAddr, request: Request) -> (Response, &'static str) {
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let headers = synapse::upstream_headers(parts.headers, peer);
    let Ok(upstream) = state.upstream_request(parts.method, path_and_query, headers, body) else {
        return (bad_gateway(), "upstream-error");
    };
    match state.inner.client.request(upstream).await {
        Ok(answer) => (passed_on(answer.map(Body::new)), "passed-through"),
        Err(e) => {
            throttled_warn!(state.inner.unreachable, error = %error_chain(&e), "LiveKit failed on a request");
            (bad_gateway(), "upstream-error")
        }
    }
}

/// A signalling upgrade: the same request goes to LiveKit, asking for a
/// WebSocket with no extension, so each leg is uncompressed and frames can
/// be relayed as they are. LiveKit's `101` goes back to the client with the
/// relay started behind it; any other answer (a refused token's 401) goes
/// back unchanged, and no upgrade happens.
async fn upgrade(
    state: &LiveKitState,
    peer: IpAddr,
    mut request: Request,
    log: ConnectionLog,
) -> (Response, &'static str) {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let takeover = request.extensions().get::<Takeover>().cloned();
    let (parts, _) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut headers = synapse::upstream_headers(parts.headers, peer);
    // Read from what goes to LiveKit: a header the client's Connection
    // named never reaches it.
    let splicer = state.splicer(&headers, parts.uri.query());
    headers.remove(SEC_WEBSOCKET_EXTENSIONS);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let Ok(upstream) = state.upstream_request(Method::GET, path_and_query, headers, Body::empty()) else {
        return (bad_gateway(), "upstream-error");
    };
    let mut answer = match tokio::time::timeout(UPGRADE_TIMEOUT, state.inner.client.request(upstream)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            throttled_warn!(state.inner.unreachable, error = %error_chain(&e), "LiveKit failed on a signalling upgrade");
            return (bad_gateway(), "upstream-error");
        }
        Err(_) => {
            throttled_warn!(
                state.inner.unreachable,
                "LiveKit did not answer a signalling upgrade in time"
            );
            return (
                plain(StatusCode::GATEWAY_TIMEOUT, "LiveKit did not answer in time\n"),
                "upstream-error",
            );
        }
    };
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        return (passed_on(answer.map(Body::new)), "refused-by-livekit");
    }
    let livekit_upgrade = hyper::upgrade::on(&mut answer);
    let (mut parts, _) = answer.into_parts();
    synapse::strip_hop_by_hop(&mut parts.headers);
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
    (Response::from_parts(parts, Body::empty()), "upgraded")
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
    synapse::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// LiveKit is down: a plain reason, and for an upgrade no `101`.
fn bad_gateway() -> Response {
    plain(StatusCode::BAD_GATEWAY, "LiveKit is unreachable\n")
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
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let client = Socket::from_raw_socket(TokioIo::new(client), Role::Server, Some(config)).await;
    let livekit = Socket::from_raw_socket(TokioIo::new(livekit), Role::Client, Some(config)).await;
    let (mut to_client, mut from_client) = client.split();
    let (mut to_livekit, mut from_livekit) = livekit.split();
    let mut up_frames = 0u64;
    let mut down_frames = 0u64;
    let (ended_by, end) = {
        let up = pump(&mut from_client, &mut to_livekit, &mut up_frames, None);
        let down = pump(
            &mut from_livekit,
            &mut to_client,
            &mut down_frames,
            Some(&mut splicer),
        );
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
    splicer.front.metrics.signalling_ended(splicer.outcome);
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
        turn = splicer.outcome,
        frames_from_client = up_frames,
        frames_from_livekit = down_frames,
        duration_ms = (log.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        "signalling connection"
    );
}

/// Passes every message from `from` to `to` as it came, one at a time:
/// nothing is read from one leg while the other has not taken the last
/// message, so a slow reader slows its sender and no buffer grows.
async fn pump(
    from: &mut futures_util::stream::SplitStream<Socket>,
    to: &mut futures_util::stream::SplitSink<Socket, Message>,
    frames: &mut u64,
    mut splicer: Option<&mut Splicer>,
) -> End {
    while let Some(message) = from.next().await {
        let Ok(message) = message else {
            return End::Gone;
        };
        *frames += 1;
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
        if to.send(message).await.is_err() {
            return End::Gone;
        }
    }
    End::Gone
}

#[cfg(test)]
mod tests {
    use super::*;

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
