//! Fake of Cloudflare Realtime TURN's credentials API (`https://rtc.live.cloudflare.com/v1`):
//! checks what the real API checks, mints unique credentials in the documented
//! shapes, revokes them, and can be told to fail, stall or answer garbage.
//! The same fake answers the GraphQL Analytics API's TURN usage on
//! `/client/v4/graphql` (see [`analytics`] and [`UsageRecord`]).
//!
//! Source for the wire format: <https://developers.cloudflare.com/realtime/turn/generate-credentials/>
//! (mint answers 201 Created, revoke answers 204 No Content) and
//! <https://developers.cloudflare.com/realtime/turn/faq/> (TTL at most 48 hours).
//! Cloudflare documents no error bodies for this API, so failures carry a plain
//! `{"error":"…"}`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::ready;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use ring::hmac;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::recorded::{Recorded, Recorder, lock};
use crate::serve::{self, ServerTask};

pub mod analytics;
mod utc;

pub use analytics::{AnalyticsBehaviour, MAX_PAGE_SIZE, UsageRecord};

/// Longest credential lifetime Cloudflare accepts: "up to 48 hours in the
/// future" (TURN FAQ).
pub const MAX_TTL_SECONDS: u64 = 172_800;

/// STUN URLs of a `generate-ice-servers` answer, as docs/behaviour.md §4 records them.
const STUN_URLS: [&str; 2] = ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"];

/// TURN URLs of a `generate-ice-servers` answer, as docs/behaviour.md §4 records them: the
/// port-53 URL (which the daemon must drop) and the `:5349` one are both
/// there so the daemon's filter is exercised on every mint.
const TURN_URLS: [&str; 6] = [
    "turn:turn.cloudflare.com:3478?transport=udp",
    "turn:turn.cloudflare.com:53?transport=udp",
    "turn:turn.cloudflare.com:3478?transport=tcp",
    "turn:turn.cloudflare.com:80?transport=tcp",
    "turns:turn.cloudflare.com:5349?transport=tcp",
    "turns:turn.cloudflare.com:443?transport=tcp",
];

/// Largest body accepted by `POST /__fake/behaviour`.
const MAX_CONTROL_BODY: usize = 64 * 1024;

/// Chunk size of a [`CfBehaviour::Huge`] body.
const HUGE_CHUNK: usize = 64 * 1024;
static HUGE_FILLER: [u8; HUGE_CHUNK] = [b'a'; HUGE_CHUNK];
const HUGE_PREFIX: &[u8] = br#"{"iceServers":[{"urls":[""#;
const HUGE_SUFFIX: &[u8] = br#""]}]}"#;

/// Which form of `iceServers` a successful mint answers with.
#[derive(Clone, Debug)]
pub enum IceShape {
    /// The current `generate-ice-servers` answer: a list of one STUN entry and
    /// one TURN entry carrying `username` and `credential`.
    List,
    /// The older `credentials/generate` answer: `iceServers` is a single object
    /// `{urls, username, credential}` with the STUN and TURN URLs together.
    LegacyObject,
}

/// How the fake answers a mint (and, for `Status` and `Hang`, a revoke) once
/// the token, key id and body have passed its checks.
#[derive(Clone, Debug)]
pub enum CfBehaviour {
    /// `201 Created` with fresh credentials in `shape`, after `latency`. The
    /// legacy endpoint always answers [`IceShape::LegacyObject`].
    Mint { shape: IceShape, latency: Duration },
    /// This status and body (`Content-Type: application/json`), with a
    /// `Retry-After` header when given.
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Any status, content type and body: non-JSON, JSON of the wrong shape,
    /// no TURN URL, no credential, conflicting credentials…
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// `201` with a JSON-looking body of exactly `bytes` bytes, streamed in
    /// chunks without `Content-Length`, so only a capped read stops it.
    Huge { bytes: usize },
    /// Accept the request and never answer.
    Hang,
}

impl CfBehaviour {
    /// Every mint and revoke answers `status` with a JSON error body.
    pub fn fail(status: u16) -> Self {
        Self::Status {
            status,
            body: injected_failure_body(status),
            retry_after: None,
        }
    }
}

/// How to start a [`FakeCloudflare`].
#[derive(Clone, Debug)]
pub struct CloudflareOptions {
    /// The TURN key id expected in the path.
    pub key_id: String,
    /// The API token expected as `Authorization: Bearer …`.
    pub api_token: String,
    /// The initial behaviour.
    pub behaviour: CfBehaviour,
    /// Mint credentials for a real TURN server instead of Cloudflare's
    /// (`None`: opaque hex credentials and Cloudflare's URLs).
    pub real_turn: Option<RealTurn>,
    /// The account whose analytics the analytics token may read
    /// (`accountTag`).
    pub account_id: String,
    /// The token the GraphQL Analytics API expects as `Authorization:
    /// Bearer …`; the TURN API token is not accepted there.
    pub analytics_token: String,
    /// Whether that token carries the Account Analytics: Read permission;
    /// without it every account query is refused with 403.
    pub analytics_permission: bool,
    /// How analytics queries that pass the checks are answered.
    pub analytics: AnalyticsBehaviour,
}

/// A real TURN server (coturn with `use-auth-secret`) that minted
/// credentials must work on, so that a browser can make a call with them:
/// the username is `<unix expiry>:<hex>` and the credential is
/// base64(HMAC-SHA1(secret, username)), the TURN REST API scheme coturn
/// checks; the answer lists `urls` instead of Cloudflare's.
#[derive(Clone, Debug)]
pub struct RealTurn {
    /// coturn's `static-auth-secret`.
    pub secret: String,
    /// Every URL of the answer, in order: `stun:` ones go to the first
    /// `iceServers` entry, the others to the entry with the credential.
    pub urls: Vec<String>,
}

impl Default for CloudflareOptions {
    fn default() -> Self {
        Self {
            key_id: "test-key-id".to_owned(),
            api_token: "test-api-token".to_owned(),
            behaviour: CfBehaviour::Mint {
                shape: IceShape::List,
                latency: Duration::ZERO,
            },
            real_turn: None,
            account_id: "test-account-id".to_owned(),
            analytics_token: "test-analytics-token".to_owned(),
            analytics_permission: true,
            analytics: AnalyticsBehaviour::default(),
        }
    }
}

/// A credential the fake handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintedCredential {
    /// The TURN username, 96 hex digits.
    pub username: String,
    /// The TURN password, 96 hex digits.
    pub credential: String,
    /// The `ttl` the client asked for, in seconds.
    pub ttl: u64,
    /// The `customIdentifier` the client sent, if any.
    pub custom_identifier: Option<String>,
}

/// A running fake of the Cloudflare TURN API; stopped when dropped.
pub struct FakeCloudflare {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: ServerTask,
}

struct Shared {
    key_id: String,
    api_token: String,
    /// Mixed into minted credentials (from the port), so that two fakes in one
    /// test are unlikely to hand out the same one.
    seed: u64,
    recorder: Arc<Recorder>,
    real_turn: Option<RealTurn>,
    account_id: String,
    analytics_token: String,
    analytics_permission: bool,
    state: Mutex<State>,
    /// Bytes of [`CfBehaviour::Huge`] bodies handed to the connection so far:
    /// a client that caps its read stops pulling long before the end.
    huge_bytes_sent: Arc<AtomicUsize>,
}

struct State {
    behaviour: CfBehaviour,
    mints: usize,
    /// Usernames minted and not yet revoked.
    live: HashSet<String>,
    revoked: Vec<String>,
    last: Option<MintedCredential>,
    analytics: AnalyticsBehaviour,
    usage: Vec<UsageRecord>,
    analytics_queries: usize,
}

impl FakeCloudflare {
    /// Starts the fake on an ephemeral loopback port.
    pub async fn start(opts: CloudflareOptions) -> FakeCloudflare {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Cloudflare fake to 127.0.0.1:0");
        Self::start_on(listener, opts).await
    }

    /// Starts the fake on a listener the caller bound.
    pub async fn start_on(listener: TcpListener, opts: CloudflareOptions) -> FakeCloudflare {
        let addr = listener
            .local_addr()
            .expect("the Cloudflare fake's listener has a local address");
        let shared = Arc::new(Shared {
            key_id: opts.key_id,
            api_token: opts.api_token,
            seed: u64::from(addr.port()).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            recorder: Arc::default(),
            real_turn: opts.real_turn,
            account_id: opts.account_id,
            analytics_token: opts.analytics_token,
            analytics_permission: opts.analytics_permission,
            huge_bytes_sent: Arc::default(),
            state: Mutex::new(State {
                behaviour: opts.behaviour,
                mints: 0,
                live: HashSet::new(),
                revoked: Vec::new(),
                last: None,
                analytics: opts.analytics,
                usage: Vec::new(),
                analytics_queries: 0,
            }),
        });
        let handler_state = Arc::clone(&shared);
        let server = serve::spawn(listener, move |req, peer| {
            handle(Arc::clone(&handler_state), req, peer)
        });
        FakeCloudflare {
            addr,
            shared,
            _server: server,
        }
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base, e.g. `http://127.0.0.1:PORT/v1`, to which the daemon
    /// appends `/turn/keys/{key}/credentials/…`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Changes how later requests are answered (requests already waiting out
    /// a latency keep the behaviour they started with).
    pub fn set_behaviour(&self, b: CfBehaviour) {
        self.shared.state().behaviour = b;
    }

    /// Every request received, rejected ones included, oldest first; the
    /// control endpoints are not recorded.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorder.snapshot()
    }

    /// How many credentials were minted and answered (only
    /// [`CfBehaviour::Mint`] answers count; use [`Self::requests`] to count
    /// calls).
    pub fn mint_count(&self) -> usize {
        self.shared.state().mints
    }

    /// Usernames revoked successfully, in order.
    pub fn revoked(&self) -> Vec<String> {
        self.shared.state().revoked.clone()
    }

    /// The most recently minted credential.
    pub fn last_minted(&self) -> Option<MintedCredential> {
        self.shared.state().last.clone()
    }

    /// How many bytes of [`CfBehaviour::Huge`] bodies were produced: less than
    /// the body's size when the client stopped reading.
    pub fn huge_bytes_sent(&self) -> usize {
        self.shared.huge_bytes_sent.load(Ordering::Relaxed)
    }

    /// The GraphQL Analytics endpoint, `http://127.0.0.1:PORT/client/v4/graphql`
    /// (Cloudflare's is `https://api.cloudflare.com/client/v4/graphql`).
    pub fn analytics_url(&self) -> String {
        format!("http://{}{}", self.addr, analytics::PATH)
    }

    /// Adds usage that later analytics queries count.
    pub fn add_usage(&self, record: UsageRecord) {
        self.shared.state().usage.push(record);
    }

    /// Forgets every usage record.
    pub fn clear_usage(&self) {
        self.shared.state().usage.clear();
    }

    /// Changes how later analytics queries are answered.
    pub fn set_analytics(&self, behaviour: AnalyticsBehaviour) {
        self.shared.state().analytics = behaviour;
    }

    /// Requests received on the analytics endpoint, whatever their answer;
    /// [`Self::requests`] holds them with the TURN API's.
    pub fn analytics_queries(&self) -> usize {
        self.shared.state().analytics_queries
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn behaviour(&self) -> CfBehaviour {
        self.state().behaviour.clone()
    }

    fn issue(&self, req: MintRequest) -> MintedCredential {
        let mut state = self.state();
        let n = state.mints as u64;
        // splitmix64's finaliser is a bijection, so distinct seeds give
        // distinct first words: usernames never repeat within one fake.
        let mut username = mixed_hex(self.seed ^ (n << 1));
        let mut credential = mixed_hex(self.seed ^ ((n << 1) | 1));
        if let Some(turn) = &self.real_turn {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // 32 hex digits keep it unique and short enough to find in
            // coturn's log.
            username = format!("{}:{}", now + req.ttl, &username[..32]);
            credential = rest_api_password(&turn.secret, &username);
        }
        let minted = MintedCredential {
            username,
            credential,
            ttl: req.ttl,
            custom_identifier: req.custom_identifier,
        };
        state.mints += 1;
        state.live.insert(minted.username.clone());
        state.last = Some(minted.clone());
        minted
    }
}

/// The TURN REST API password coturn's `use-auth-secret` expects (and
/// Synapse's `turn_shared_secret` hands out): base64(HMAC-SHA1(secret, username)).
fn rest_api_password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    STANDARD.encode(hmac::sign(&key, username.as_bytes()))
}

/// 96 hex digits (the length of Cloudflare's usernames and credentials)
/// drawn from splitmix64 seeded with `seed`.
fn mixed_hex(seed: u64) -> String {
    let mut x = seed;
    (0..6)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

enum Route<'a> {
    Mint { key_id: &'a str, legacy: bool },
    Revoke { key_id: &'a str, username: &'a str },
}

impl<'a> Route<'a> {
    fn parse(method: &Method, path: &'a str) -> Option<Self> {
        if method != Method::POST {
            return None;
        }
        let rest = path.strip_prefix("/v1/turn/keys/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            [key_id, "credentials", "generate-ice-servers"] => Some(Self::Mint {
                key_id,
                legacy: false,
            }),
            [key_id, "credentials", "generate"] => Some(Self::Mint { key_id, legacy: true }),
            [key_id, "credentials", username, "revoke"] if !username.is_empty() => {
                Some(Self::Revoke { key_id, username })
            }
            _ => None,
        }
    }

    fn key_id(&self) -> &str {
        match self {
            Self::Mint { key_id, .. } | Self::Revoke { key_id, .. } => key_id,
        }
    }
}

struct MintRequest {
    ttl: u64,
    custom_identifier: Option<String>,
}

impl MintRequest {
    fn parse(body: &[u8]) -> Result<Self, &'static str> {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return Err("body must be a JSON object");
        };
        let ttl = fields
            .get("ttl")
            .and_then(Value::as_u64)
            .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl))
            .ok_or("ttl must be an integer from 1 to 172800")?;
        let custom_identifier = match fields.get("customIdentifier") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("customIdentifier must be a string"),
        };
        Ok(Self {
            ttl,
            custom_identifier,
        })
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Body>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/__fake/stats") => return stats(&shared),
        (&Method::POST, "/__fake/behaviour") => return control(&shared, body).await,
        (&Method::POST, "/__fake/analytics") => return analytics_control(&shared, body).await,
        (&Method::POST, "/__fake/usage") => return add_usage(&shared, body).await,
        (&Method::DELETE, "/__fake/usage") => {
            shared.state().usage.clear();
            return no_content();
        }
        _ => {}
    }
    let body = shared.recorder.record(&parts, body, peer).await;

    if parts.method == Method::POST && parts.uri.path() == analytics::PATH {
        let (records, behaviour) = {
            let mut state = shared.state();
            state.analytics_queries += 1;
            (state.usage.clone(), state.analytics.clone())
        };
        let scope = analytics::Scope {
            account_id: &shared.account_id,
            token: &shared.analytics_token,
            permitted: shared.analytics_permission,
        };
        return analytics::serve(&scope, &records, behaviour, &parts.headers, &body).await;
    }

    let Some(route) = Route::parse(&parts.method, parts.uri.path()) else {
        return error(StatusCode::NOT_FOUND, "no such route");
    };
    if !authorized(&parts.headers, &shared.api_token) {
        return error(StatusCode::UNAUTHORIZED, "invalid API token");
    }
    if route.key_id() != shared.key_id {
        return error(StatusCode::NOT_FOUND, "no such TURN key");
    }
    match route {
        Route::Mint { legacy, .. } => match MintRequest::parse(&body) {
            Ok(mint_req) => mint(&shared, legacy, mint_req).await,
            Err(reason) => error(StatusCode::BAD_REQUEST, reason),
        },
        Route::Revoke { username, .. } => revoke(&shared, username).await,
    }
}

/// Exactly one `Authorization: Bearer {token}` header.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .is_some_and(|given| given == token.as_bytes()),
        _ => false,
    }
}

async fn mint(shared: &Shared, legacy: bool, req: MintRequest) -> Response<Body> {
    match shared.behaviour() {
        CfBehaviour::Mint { shape, latency } => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let shape = if legacy { IceShape::LegacyObject } else { shape };
            let cred = shared.issue(req);
            let urls = shared.real_turn.as_ref().map(|t| t.urls.as_slice());
            respond(
                StatusCode::CREATED,
                "application/json",
                Body::from(ice_servers(&shape, &cred, urls)),
            )
        }
        CfBehaviour::Status {
            status,
            body,
            retry_after,
        } => status_answer(status, body, retry_after),
        CfBehaviour::Raw {
            status,
            content_type,
            body,
        } => respond(status_code(status), &content_type, Body::from(body)),
        CfBehaviour::Huge { bytes } => respond(
            StatusCode::CREATED,
            "application/json",
            huge_body(bytes, Arc::clone(&shared.huge_bytes_sent)),
        ),
        CfBehaviour::Hang => hang().await,
    }
}

async fn revoke(shared: &Shared, username: &str) -> Response<Body> {
    match shared.behaviour() {
        CfBehaviour::Status {
            status,
            body,
            retry_after,
        } => return status_answer(status, body, retry_after),
        CfBehaviour::Hang => return hang().await,
        CfBehaviour::Mint { .. } | CfBehaviour::Raw { .. } | CfBehaviour::Huge { .. } => {}
    }
    let mut state = shared.state();
    if state.live.remove(username) {
        state.revoked.push(username.to_owned());
        no_content()
    } else {
        error(StatusCode::NOT_FOUND, "no such credential")
    }
}

/// The answer body, keys in the order of Cloudflare's documented example;
/// `urls` replaces Cloudflare's URLs when given.
fn ice_servers(shape: &IceShape, cred: &MintedCredential, urls: Option<&[String]>) -> String {
    let (username, credential) = (json!(cred.username), json!(cred.credential));
    let (stun, turn): (Vec<&str>, Vec<&str>) = match urls {
        Some(urls) => urls
            .iter()
            .map(String::as_str)
            .partition(|u| u.starts_with("stun:")),
        None => (STUN_URLS.to_vec(), TURN_URLS.to_vec()),
    };
    match shape {
        IceShape::List => format!(
            r#"{{"iceServers":[{{"urls":{}}},{{"urls":{},"username":{username},"credential":{credential}}}]}}"#,
            json!(stun),
            json!(turn),
        ),
        IceShape::LegacyObject => {
            let urls: Vec<&str> = stun.iter().chain(&turn).copied().collect();
            format!(
                r#"{{"iceServers":{{"urls":{},"username":{username},"credential":{credential}}}}}"#,
                json!(urls),
            )
        }
    }
}

fn huge_body(total: usize, sent: Arc<AtomicUsize>) -> Body {
    let prefix = &HUGE_PREFIX[..HUGE_PREFIX.len().min(total)];
    let suffix = &HUGE_SUFFIX[..HUGE_SUFFIX.len().min(total - prefix.len())];
    let filler = total - prefix.len() - suffix.len();
    let middle = (0..filler)
        .step_by(HUGE_CHUNK)
        .map(move |start| Bytes::from_static(&HUGE_FILLER[..(filler - start).min(HUGE_CHUNK)]));
    let chunks = stream::iter(
        std::iter::once(Bytes::from_static(prefix))
            .chain(middle)
            .chain(std::iter::once(Bytes::from_static(suffix))),
    )
    .filter(|chunk| ready(!chunk.is_empty()))
    // Counted as each chunk is pulled, which hyper does only as the socket
    // accepts more: what a reader that stopped early never asked for is never made.
    .inspect(move |chunk| {
        sent.fetch_add(chunk.len(), Ordering::Relaxed);
    })
    .map(Ok::<_, Infallible>);
    Body::from_stream(chunks)
}

async fn hang() -> Response<Body> {
    // Pending until hyper drops this future: the client hung up or the fake
    // was dropped.
    std::future::pending().await
}

fn stats(shared: &Shared) -> Response<Body> {
    let requests = shared.recorder.total();
    let state = shared.state();
    let body = json!({
        "mints": state.mints,
        "last_custom_identifier": state.last.as_ref().and_then(|last| last.custom_identifier.clone()),
        "revoked": state.revoked,
        "requests": requests,
        "analytics_queries": state.analytics_queries,
        "usage_records": state.usage.len(),
    });
    respond(StatusCode::OK, "application/json", Body::from(body.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BehaviourCommand {
    fail_status: Option<u16>,
    retry_after: Option<u64>,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    shape: ShapeName,
    #[serde(default)]
    hang: bool,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ShapeName {
    #[default]
    List,
    Legacy,
}

async fn control(shared: &Shared, body: Body) -> Response<Body> {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_CONTROL_BODY).await else {
        return error(StatusCode::BAD_REQUEST, "body unreadable or too large");
    };
    let Ok(cmd) = serde_json::from_slice::<BehaviourCommand>(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "unknown behaviour command");
    };
    let behaviour = match cmd {
        BehaviourCommand {
            fail_status: Some(status),
            retry_after,
            ok: false,
            hang: false,
            ..
        } => CfBehaviour::Status {
            status,
            body: injected_failure_body(status),
            retry_after,
        },
        BehaviourCommand {
            fail_status: None,
            ok: true,
            hang: false,
            latency_ms,
            shape,
            ..
        } => CfBehaviour::Mint {
            shape: match shape {
                ShapeName::List => IceShape::List,
                ShapeName::Legacy => IceShape::LegacyObject,
            },
            latency: Duration::from_millis(latency_ms),
        },
        BehaviourCommand {
            fail_status: None,
            ok: false,
            hang: true,
            ..
        } => CfBehaviour::Hang,
        _ => return error(StatusCode::BAD_REQUEST, "unknown behaviour command"),
    };
    shared.state().behaviour = behaviour;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyticsCommand {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    latency_ms: u64,
    status: Option<u16>,
    body: Option<String>,
    #[serde(default)]
    hang: bool,
    #[serde(default)]
    garbage: bool,
    graphql_error: Option<String>,
}

async fn analytics_control(shared: &Shared, body: Body) -> Response<Body> {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_CONTROL_BODY).await else {
        return error(StatusCode::BAD_REQUEST, "body unreadable or too large");
    };
    let Ok(cmd) = serde_json::from_slice::<AnalyticsCommand>(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "unknown analytics command");
    };
    let behaviour = match cmd {
        AnalyticsCommand {
            ok: true,
            latency_ms,
            status: None,
            body: None,
            hang: false,
            garbage: false,
            graphql_error: None,
        } => AnalyticsBehaviour::Answer {
            latency: Duration::from_millis(latency_ms),
        },
        AnalyticsCommand {
            ok: false,
            status: Some(status),
            body: Some(body),
            hang: false,
            garbage: false,
            graphql_error: None,
            ..
        } => AnalyticsBehaviour::Status { status, body },
        AnalyticsCommand {
            ok: false,
            status,
            body: None,
            hang: false,
            garbage: false,
            graphql_error: Some(message),
            ..
        } => AnalyticsBehaviour::GraphqlError {
            status: status.unwrap_or(200),
            message,
        },
        AnalyticsCommand {
            ok: false,
            status: None,
            body: None,
            hang,
            garbage,
            graphql_error: None,
            ..
        } if hang != garbage => {
            if hang {
                AnalyticsBehaviour::Hang
            } else {
                AnalyticsBehaviour::Garbage
            }
        }
        _ => return error(StatusCode::BAD_REQUEST, "unknown analytics command"),
    };
    shared.state().analytics = behaviour;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageCommand {
    key_id: String,
    username: String,
    custom_identifier: Option<String>,
    egress_bytes: u64,
    ingress_bytes: u64,
    concurrent_connections: Option<u64>,
    /// RFC 3339; now when absent.
    at: Option<String>,
}

async fn add_usage(shared: &Shared, body: Body) -> Response<Body> {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_CONTROL_BODY).await else {
        return error(StatusCode::BAD_REQUEST, "body unreadable or too large");
    };
    let Ok(cmd) = serde_json::from_slice::<UsageCommand>(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "not a usage record");
    };
    let mut record = UsageRecord::new(cmd.key_id, cmd.username, cmd.egress_bytes, cmd.ingress_bytes);
    record.custom_identifier = cmd.custom_identifier;
    if let Some(connections) = cmd.concurrent_connections {
        record.concurrent_connections = connections;
    }
    if let Some(at) = cmd.at {
        let Some(seconds) = utc::parse_time(&at) else {
            return error(StatusCode::BAD_REQUEST, "at must be an RFC 3339 time");
        };
        record.at = utc::from_unix_seconds(seconds);
    }
    shared.state().usage.push(record);
    no_content()
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn status_answer(status: u16, body: String, retry_after: Option<u64>) -> Response<Body> {
    let mut resp = respond(status_code(status), "application/json", Body::from(body));
    if let Some(seconds) = retry_after {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    respond(status, "application/json", Body::from(error_body(message)))
}

fn error_body(message: &str) -> String {
    json!({ "error": message }).to_string()
}

fn injected_failure_body(status: u16) -> String {
    error_body(&format!("injected failure with status {status}"))
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn respond(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::rest_api_password;

    #[test]
    fn rest_api_password_matches_what_synapse_handed_out() {
        // docs/synapse-facts.md §6a: a real Synapse 1.163.2 with
        // turn_shared_secret 's3cret-for-tests' answered this pair.
        assert_eq!(
            rest_api_password("s3cret-for-tests", "1795352607:@alice:localhost"),
            "KvS99azn80Cy/Jo16vRGyGTRIx8="
        );
    }
}
