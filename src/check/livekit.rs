//! The LiveKit checks: LiveKit answers, the front door answers, and a
//! throw-away join through the front door carries the Cloudflare entry
//! (docs/behaviour.md §12).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use http_body_util::{BodyExt as _, Limited};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::clock;
use crate::config::{LiveKitConfig, Secret};
use crate::credentials::cloudflare::CloudflareClient;
use crate::edge::upstream::{HttpClient, error_chain, http_client};
use crate::livekit::jwt;
use crate::livekit::proxy::{CLOSE_LINGER, JOIN_HOLD, UPGRADE_TIMEOUT};
use crate::livekit::splice;

use super::*;

/// How long LiveKit, or the front door, may take to answer `GET /`.
pub(super) const LIVEKIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the test join may take from its upgrade request to LiveKit's
/// first frame: as long as the daemon waits for LiveKit's `101`, plus its
/// hold of the join for the credential, plus a margin.
pub(super) const JOIN_TIMEOUT: Duration = UPGRADE_TIMEOUT
    .saturating_add(JOIN_HOLD)
    .saturating_add(Duration::from_secs(5));
/// How long the test token is valid: it is used at once.
pub(super) const JOIN_TOKEN_SECONDS: u64 = 120;
/// Longest the leave may take to be answered; then the connection is dropped.
pub(super) const LEAVE_TIMEOUT: Duration = CLOSE_LINGER.saturating_add(Duration::from_secs(1));
/// `SignalRequest { leave: LeaveRequest { reason: CLIENT_INITIATED } }`
/// (livekit_rtc.proto: `leave` is field 8, `LeaveRequest.reason` field 2;
/// livekit_models.proto: `CLIENT_INITIATED` is 1), what client-sdk-js
/// sends when a participant hangs up.
pub(super) const LEAVE_REQUEST: &[u8] = &[0x42, 0x02, 0x10, 0x01];

/// What marks the daemon's entry in a join: the URIs `check` itself got
/// from Cloudflare; without them (the mint failed), Cloudflare's host or
/// `TURN_CUSTOM_DOMAIN`.
pub(super) struct OurEntry<'a> {
    pub(super) uris: Option<Vec<String>>,
    pub(super) custom_domain: Option<&'a str>,
}

impl OurEntry<'_> {
    /// The daemon splices in a subset of Cloudflare's URIs (only `turns:`
    /// when LiveKit forces relay over TLS), always with a username.
    pub(super) fn is(&self, server: &splice::IceServerSeen) -> bool {
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
pub(super) fn turn_host(uri: &str) -> Option<&str> {
    let (_, rest) = uri.split_once(':')?;
    rest.split([':', '?']).next()
}

/// Why a plain request to LiveKit or the front door brought no answer.
pub(super) enum Unanswered {
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
pub(super) async fn body_start(body: hyper::body::Incoming) -> Bytes {
    Limited::new(body, 4096)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default()
}

/// `GET url`: the status and the first line of the body, or why nothing came.
pub(super) async fn get_first_line(
    client: &HttpClient,
    url: &str,
) -> Result<(StatusCode, String), Unanswered> {
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
pub(super) fn first_line(body: &str) -> String {
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
pub(super) enum FrontDoor {
    Works,
    /// Nothing listens: the daemon does not run next to this `check`.
    NotHere,
    Broken,
}

/// LiveKit's own answer, the front door's, then the test join through it
/// (docs/behaviour.md §12).
pub(super) async fn check_livekit(
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
pub(super) async fn check_livekit_answers(client: &HttpClient, sfu_url: &str) -> Finding {
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
pub(super) async fn check_front_door(client: &HttpClient, front: SocketAddr) -> (Finding, FrontDoor) {
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
pub(super) enum JoinFailure {
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
pub(super) async fn test_join(
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
pub(super) async fn join(
    client: &HttpClient,
    front: SocketAddr,
    token: &str,
) -> Result<(Socket, Bytes), JoinFailure> {
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
pub(super) fn refusal_reason(body: &[u8], token: &str) -> String {
    first_line(&String::from_utf8_lossy(body).replace(token, "[the test token]"))
}

pub(super) fn join_failed(failure: JoinFailure, front: SocketAddr) -> Finding {
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
pub(super) async fn leave(socket: &mut Socket) -> Finding {
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
