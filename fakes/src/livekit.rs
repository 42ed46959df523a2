//! Fake of a LiveKit server's signalling (livekit-server 1.13, protocol
//! `livekit_rtc.proto`): a WebSocket on `…/rtc` and `…/rtc/v1` that checks the
//! participant's token (HS256 with the API key and secret, `exp` required) as
//! LiveKit does before its `101`, then sends a real `JoinResponse` (its
//! participant's permission filled from the token's grant as LiveKit fills
//! it), or a `ReconnectResponse` to `?reconnect=1`, built with
//! `livekit-protocol`, then any extra frames it was given, and echoes every
//! text and binary frame the client sends. It records each session's frames and how it ended, can be
//! told to close every session with a code, or to refuse every upgrade. Any
//! other request is answered 200 with its own body (for `/rtc/validate`,
//! `/twirp/…`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use http::header::{AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use livekit_protocol::{
    ClientConfiguration, IceServer, JoinResponse, ParticipantInfo, ParticipantPermission, ReconnectResponse,
    Room, ServerInfo,
};
use prost::Message as _;
use ring::hmac;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::recorded::{Recorded, Recorder, lock};
use crate::serve::{self, ServerTask};

/// A field number no `livekit-protocol` knows, put in every join and
/// reconnect, as a newer LiveKit could send one: the daemon must pass it on.
pub const UNKNOWN_FIELD: &[u8] = b"\xa2\xfa\x01\x0cnewer-field!";

/// How to start a [`FakeLiveKit`].
#[derive(Clone, Debug)]
pub struct LiveKitOptions {
    pub api_key: String,
    pub api_secret: String,
    /// LiveKit's own ICE servers in the join and reconnect.
    pub ice_servers: Vec<IceServer>,
    /// `ClientConfiguration.force_relay = ENABLED`, as LiveKit's ICE fallback sends it.
    pub force_relay: bool,
    /// Answer every upgrade with this status and no WebSocket.
    pub refuse: Option<u16>,
    /// Binary frames sent right after the join or reconnect.
    pub after_join: Vec<Vec<u8>>,
    /// How long the fake takes to accept an upgrade (LiveKit sets up the
    /// room before its `101`).
    pub accept_after: Duration,
    /// Name this identity in every join, whatever the token says: a LiveKit
    /// that reads tokens otherwise than the daemon.
    pub admit_as: Option<String>,
    /// How long the fake takes to answer a plain request, once it has its body.
    pub answer_after: Duration,
    /// Raw fields appended to the joined participant's `ParticipantInfo`,
    /// after the permission the fake fills in: parts LiveKit never sends,
    /// to see how the daemon reads them.
    pub participant_extra: Vec<u8>,
}

impl Default for LiveKitOptions {
    fn default() -> Self {
        Self {
            api_key: "APIfakekey".to_owned(),
            api_secret: "fake-livekit-secret-of-enough-length".to_owned(),
            ice_servers: vec![IceServer {
                urls: vec!["stun:stun.l.google.com:19302".to_owned()],
                ..IceServer::default()
            }],
            force_relay: false,
            refuse: None,
            after_join: Vec::new(),
            accept_after: Duration::ZERO,
            admit_as: None,
            answer_after: Duration::ZERO,
            participant_extra: Vec::new(),
        }
    }
}

/// How a session ended, as the fake saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// A close frame came, with this code and reason.
    Closed(Option<(u16, String)>),
    /// The connection broke or ended without a close frame.
    Gone,
}

/// One accepted signalling WebSocket.
#[derive(Clone, Debug)]
pub struct Session {
    /// The token's `sub`.
    pub identity: String,
    /// What the client sent, in order (pings and pongs included).
    pub received: Vec<Message>,
    /// `None` while the session is open.
    pub ended: Option<SessionEnd>,
}

/// A running fake LiveKit on an ephemeral loopback port; stops when dropped.
pub struct FakeLiveKit {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: ServerTask,
}

struct Shared {
    opts: LiveKitOptions,
    recorder: Arc<Recorder>,
    sessions: Mutex<Vec<Session>>,
    /// A code and reason sent here closes every open session with it.
    close: watch::Sender<Option<(u16, String)>>,
}

impl FakeLiveKit {
    pub async fn start(opts: LiveKitOptions) -> FakeLiveKit {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            opts,
            recorder: Arc::new(Recorder::default()),
            sessions: Mutex::new(Vec::new()),
            close: watch::channel(None).0,
        });
        let handler_shared = Arc::clone(&shared);
        let server = serve::spawn(listener, move |request, peer| {
            let shared = Arc::clone(&handler_shared);
            async move { shared.answer(request, peer).await }
        });
        FakeLiveKit {
            addr,
            shared,
            _server: server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token LiveKit accepts: HS256 with the API secret, `iss` the API
    /// key, `sub` the identity, an hour to `exp`, a grant to join `room`.
    pub fn token(&self, identity: &str, room: &str) -> String {
        sign(
            &self.shared.opts.api_secret,
            &claims(&self.shared.opts.api_key, identity, room, now() + 3600).to_string(),
        )
    }

    /// A token of the JSON `payload` as written, key order and repeated
    /// keys kept, signed with the API secret as LiveKit's server SDKs sign.
    pub fn sign_payload(&self, payload: &str) -> String {
        sign(&self.shared.opts.api_secret, payload)
    }

    /// A token that lets its bearer join `room` and subscribe, not publish
    /// (`canPublish: false`, `canSubscribe: true`).
    pub fn subscriber_token(&self, identity: &str, room: &str) -> String {
        let mut claims = claims(&self.shared.opts.api_key, identity, room, now() + 3600);
        claims["video"]["canPublish"] = json!(false);
        claims["video"]["canSubscribe"] = json!(true);
        sign(&self.shared.opts.api_secret, &claims.to_string())
    }

    /// A token signed with another secret: LiveKit refuses it with 401.
    pub fn forged_token(&self, identity: &str, room: &str) -> String {
        sign(
            "not-the-secret",
            &claims(&self.shared.opts.api_key, identity, room, now() + 3600).to_string(),
        )
    }

    /// A correctly signed token whose `exp` has passed.
    pub fn expired_token(&self, identity: &str, room: &str) -> String {
        sign(
            &self.shared.opts.api_secret,
            &claims(&self.shared.opts.api_key, identity, room, now() - 60).to_string(),
        )
    }

    /// Every request the fake got (upgrades included), oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorder.snapshot()
    }

    /// Every accepted signalling session, oldest first.
    pub fn sessions(&self) -> Vec<Session> {
        lock(&self.shared.sessions).clone()
    }

    /// Closes every open session with this code and reason.
    pub fn close_all(&self, code: u16, reason: &str) {
        self.shared.close.send_replace(Some((code, reason.to_owned())));
    }

    /// The exact join frame the fake sends `identity` on [`FakeLiveKit::token`].
    pub fn join_frame(&self, identity: &str) -> Vec<u8> {
        self.shared.join_frame(identity, true)
    }

    /// The exact join frame the fake sends `identity` on a token whose grant
    /// lets it publish or not.
    pub fn join_frame_for(&self, identity: &str, can_publish: bool) -> Vec<u8> {
        self.shared.join_frame(identity, can_publish)
    }

    /// The exact reconnect frame the fake sends to `?reconnect=1`.
    pub fn reconnect_frame(&self) -> Vec<u8> {
        self.shared.reconnect_frame()
    }
}

/// The `sid` the fake gives `identity`'s participant in its join, which a
/// reconnect names.
pub fn sid_of(identity: &str) -> String {
    format!("PA_{identity}")
}

/// `r.FormValue(name)` as Go reads a query: pairs split on `&`, a pair
/// holding `;` or a bad `%` escape dropped, `+` a space, the first value.
fn go_form_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.contains(';'))
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((go_unescape(key)?, go_unescape(value)?))
        })
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

fn go_unescape(text: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        out.push(match byte {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            byte => byte,
        });
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A JSON object as Go's `encoding/json` fills a struct from it: a key
/// matches a field whatever its case, and the last match wins.
struct GoObject(Vec<(String, Value)>);

impl GoObject {
    fn get(&self, field: &str) -> Option<&Value> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| go_fold(key) == go_fold(field))
            .map(|(_, value)| value)
    }
}

/// Unicode simple case folding as it reaches ASCII letters.
fn go_fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl<'de> serde::Deserialize<'de> for GoObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = GoObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<GoObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(GoObject(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

fn server_info() -> ServerInfo {
    ServerInfo {
        version: "1.13.0".to_owned(),
        ..ServerInfo::default()
    }
}

/// `SignalResponse { field: message }` with [`UNKNOWN_FIELD`] at the end
/// of the message, encoded by hand around the message's bytes.
fn with_unknown_field(field: u32, message: Vec<u8>) -> Vec<u8> {
    let payload = [message, UNKNOWN_FIELD.to_vec()].concat();
    let mut frame = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut frame);
    prost::encoding::encode_varint(payload.len() as u64, &mut frame);
    frame.extend_from_slice(&payload);
    frame
}

impl Shared {
    fn client_configuration(&self) -> Option<ClientConfiguration> {
        self.opts.force_relay.then(|| ClientConfiguration {
            force_relay: 2,
            ..ClientConfiguration::default()
        })
    }

    async fn answer(self: Arc<Self>, request: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let body = self.recorder.record(&parts, body, peer).await;
        let path = parts.uri.path();
        let websocket = parts
            .headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if !(websocket && (path.ends_with("/rtc") || path.ends_with("/rtc/v1"))) {
            tokio::time::sleep(self.opts.answer_after).await;
            return Response::builder()
                .header("x-fake", "livekit")
                .body(Body::from(body))
                .unwrap_or_default();
        }
        if let Some(status) = self.opts.refuse {
            return status_text(status, "refused");
        }
        let query = parts.uri.query().unwrap_or("");
        // LiveKit's auth middleware: the header first, and a header that is
        // not a bearer token is refused; else `r.FormValue`.
        let token = match parts.headers.get(AUTHORIZATION).filter(|v| !v.is_empty()) {
            Some(header) => match header.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
                Some(token) => Some(token.to_owned()),
                None => return status_text(401, "invalid authorization header. Must start with Bearer"),
            },
            None => go_form_value(query, "access_token"),
        };
        // LiveKit's own words for a refused token (its 401 is plain text).
        let Some((identity, can_publish)) = token.and_then(|token| self.verify(&token)) else {
            return status_text(401, "invalid token: could not verify");
        };
        let identity = self.opts.admit_as.clone().unwrap_or(identity);
        let (Some(key), Some(upgrade)) = (parts.headers.get(SEC_WEBSOCKET_KEY), upgrade) else {
            return status_text(400, "not a websocket handshake");
        };
        let accept = derive_accept_key(key.as_bytes());
        tokio::time::sleep(self.opts.accept_after).await;
        let reconnect = matches!(go_form_value(query, "reconnect").as_deref(), Some("1" | "true"));
        let first = if reconnect {
            self.reconnect_frame()
        } else {
            self.join_frame(&identity, can_publish)
        };
        let index = {
            let mut sessions = lock(&self.sessions);
            sessions.push(Session {
                identity,
                received: Vec::new(),
                ended: None,
            });
            sessions.len() - 1
        };
        tokio::spawn(Arc::clone(&self).session(upgrade, index, first));
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "websocket")
            .header(
                SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("")),
            )
            .body(Body::empty())
            .unwrap_or_default()
    }

    fn reconnect_frame(&self) -> Vec<u8> {
        let reconnect = ReconnectResponse {
            ice_servers: self.opts.ice_servers.clone(),
            client_configuration: self.client_configuration(),
            server_info: Some(server_info()),
            last_message_seq: 7,
        };
        with_unknown_field(19, reconnect.encode_to_vec())
    }

    /// The join, its participant last, encoded by hand so that
    /// [`LiveKitOptions::participant_extra`] can go inside it.
    fn join_frame(&self, identity: &str, can_publish: bool) -> Vec<u8> {
        let join = JoinResponse {
            room: Some(Room {
                name: "room".to_owned(),
                sid: "RM_fake".to_owned(),
                ..Room::default()
            }),
            ice_servers: self.opts.ice_servers.clone(),
            client_configuration: self.client_configuration(),
            server_info: Some(server_info()),
            ping_timeout: 15,
            ping_interval: 5,
            ..JoinResponse::default()
        };
        // livekit/protocol's `VideoGrant.ToPermission`, for the grants the
        // fake's tokens carry.
        let participant = ParticipantInfo {
            identity: identity.to_owned(),
            sid: sid_of(identity),
            permission: Some(ParticipantPermission {
                can_subscribe: true,
                can_publish,
                can_publish_data: can_publish,
                ..ParticipantPermission::default()
            }),
            ..ParticipantInfo::default()
        };
        let participant = [participant.encode_to_vec(), self.opts.participant_extra.clone()].concat();
        let mut payload = join.encode_to_vec();
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut payload);
        prost::encoding::encode_varint(participant.len() as u64, &mut payload);
        payload.extend_from_slice(&participant);
        with_unknown_field(1, payload)
    }

    /// The token's identity if LiveKit would accept it for a join: three
    /// base64url parts, HS256 over the first two with the API secret, `iss`
    /// the API key, an `exp` still ahead (a fraction allowed), a grant to
    /// join; the identity is `sub`, else `jti`. Claims are read as Go's
    /// `encoding/json` reads them: keys matched without regard to case, the
    /// last of two equal keys winning.
    /// Also whether the grant lets the participant publish: `canPublish`
    /// unless it is `false` (`VideoGrant.GetCanPublish`).
    fn verify(&self, token: &str) -> Option<(String, bool)> {
        let (signed, signature) = token.rsplit_once('.')?;
        let (_, payload) = signed.split_once('.')?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.opts.api_secret.as_bytes());
        hmac::verify(&key, signed.as_bytes(), &URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
        let claims: GoObject = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let text = |name| claims.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
        let fresh = claims
            .get("exp")
            .and_then(Value::as_f64)
            .is_some_and(|exp| exp > now() as f64);
        let video = claims
            .get("video")
            .and_then(|video| serde_json::from_value::<GoObject>(video.clone()).ok());
        let joins = video
            .as_ref()
            .is_some_and(|video| video.get("roomJoin") == Some(&Value::Bool(true)));
        let can_publish = video.is_none_or(|video| video.get("canPublish") != Some(&Value::Bool(false)));
        let identity = match text("sub") {
            sub if sub.is_empty() => text("jti"),
            sub => sub,
        };
        (text("iss") == self.opts.api_key && fresh && joins && !identity.is_empty())
            .then_some((identity, can_publish))
    }

    async fn session(self: Arc<Self>, upgrade: hyper::upgrade::OnUpgrade, index: usize, first: Vec<u8>) {
        let Ok(upgraded) = upgrade.await else {
            self.ended(index, SessionEnd::Gone);
            return;
        };
        let mut socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let mut close = self.close.subscribe();
        let frames = std::iter::once(first).chain(self.opts.after_join.iter().cloned());
        for frame in frames {
            if socket.send(Message::Binary(frame.into())).await.is_err() {
                self.ended(index, SessionEnd::Gone);
                return;
            }
        }
        let end = loop {
            tokio::select! {
                message = socket.next() => match message {
                    Some(Ok(message)) => {
                        lock(&self.sessions)[index].received.push(message.clone());
                        match message {
                            Message::Text(_) | Message::Binary(_) => {
                                if socket.send(message).await.is_err() {
                                    break SessionEnd::Gone;
                                }
                            }
                            Message::Close(frame) => {
                                break SessionEnd::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                            }
                            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        }
                    }
                    Some(Err(_)) | None => break SessionEnd::Gone,
                },
                Ok(()) = close.changed() => {
                    let Some((code, reason)) = close.borrow_and_update().clone() else { continue };
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() })))
                        .await;
                    // The client's answer to the close ends the session.
                    let mut answer = SessionEnd::Gone;
                    while let Some(Ok(message)) = socket.next().await {
                        if let Message::Close(frame) = &message {
                            answer = SessionEnd::Closed(frame.clone().map(|f| (u16::from(f.code), f.reason.to_string())));
                        }
                        lock(&self.sessions)[index].received.push(message);
                    }
                    break answer;
                }
            }
        };
        self.ended(index, end);
    }

    fn ended(&self, index: usize, end: SessionEnd) {
        lock(&self.sessions)[index].ended = Some(end);
    }
}

fn status_text(status: u16, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::from(text))
        .unwrap_or_default()
}

fn claims(api_key: &str, identity: &str, room: &str, exp: u64) -> Value {
    json!({
        "iss": api_key,
        "sub": identity,
        "nbf": now() - 10,
        "exp": exp,
        "video": {"roomJoin": true, "room": room},
    })
}

fn sign(secret: &str, payload: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let signed = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()));
    format!("{signed}.{signature}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
