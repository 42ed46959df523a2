//! The LiveKit front door (docs/behaviour.md §12) against the fake LiveKit:
//! plain HTTP streams through, the signalling WebSocket is proxied with its
//! path, query and headers, and every frame is relayed both ways.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use turnify_fakes::{
    CloudflareOptions, FakeCloudflare, FakeLiveKit, FakeSynapse, LiveKitOptions, SessionEnd, SynapseOptions,
};

use livekit_protocol::{IceServer, SignalResponse, signal_response};
use matrix_turnify::livekit::JOIN_HOLD;
use matrix_turnify::splice;
use matrix_turnify::turn::TurnCredential;
use prost::Message as _;
use turnify_fakes::livekit::UNKNOWN_FIELD;

use crate::harness::{Daemon, WAIT, closed_port, metrics_once_all_ended, send, slow_cloudflare, wait_until};

type Client = WebSocketStream<TcpStream>;

/// A daemon with its LiveKit front door on, before a fake LiveKit.
pub(crate) struct LiveKitStack {
    pub livekit: FakeLiveKit,
    pub cloudflare: FakeCloudflare,
    _synapse: FakeSynapse,
    pub daemon: Daemon,
}

impl LiveKitStack {
    pub(crate) async fn start(options: LiveKitOptions, extra: &[(&str, &str)]) -> Self {
        Self::start_with(options, CloudflareOptions::default(), extra).await
    }

    pub(crate) async fn start_with(
        options: LiveKitOptions,
        cloudflare: CloudflareOptions,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_tuned(options, cloudflare, extra, |_| {}).await
    }

    /// Like [`LiveKitStack::start_with`], with the limits `tune` makes of
    /// the daemon's own.
    pub(crate) async fn start_tuned(
        options: LiveKitOptions,
        cloudflare: CloudflareOptions,
        extra: &[(&str, &str)],
        tune: impl FnOnce(&mut matrix_turnify::Limits),
    ) -> Self {
        let livekit = FakeLiveKit::start(options).await;
        let synapse = FakeSynapse::start(SynapseOptions::default()).await;
        let cloudflare = FakeCloudflare::start(cloudflare).await;
        let sfu = livekit.base_url();
        let mut vars = vec![
            ("LIVEKIT_SFU_URL", sfu.as_str()),
            ("LIVEKIT_LISTEN_ADDR", "127.0.0.1:0"),
        ];
        vars.extend_from_slice(extra);
        let daemon = Daemon::start_tuned(&synapse.base_url(), &cloudflare.base_url(), &vars, tune).await;
        Self {
            livekit,
            cloudflare,
            _synapse: synapse,
            daemon,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.daemon.livekit_addr.expect("the LiveKit front door is on")
    }

    /// Opens the signalling WebSocket through the daemon as `identity`.
    pub(crate) async fn join(&self, identity: &str) -> Client {
        let token = self.livekit.token(identity, "room");
        connect(
            self.addr(),
            &format!("/rtc?access_token={token}&auto_subscribe=1"),
            &[],
        )
        .await
        .expect("the upgrade succeeds")
    }
}

/// A WebSocket handshake on `path_and_query`, with `headers` added to the
/// client's own.
pub(crate) async fn connect(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, WsError> {
    let mut request = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .expect("a ws:// URL");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    let stream = TcpStream::connect(addr).await.expect("connect to the daemon");
    tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("the handshake ends in time")
        .map(|(client, _)| client)
}

/// The next message from the daemon, within the wait.
pub(crate) async fn next(client: &mut Client) -> Message {
    tokio::time::timeout(WAIT, client.next())
        .await
        .expect("a message in time")
        .expect("the connection is open")
        .expect("a well-formed message")
}

/// The next data message, skipping pings and pongs.
pub(crate) async fn next_data(client: &mut Client) -> Message {
    loop {
        match next(client).await {
            Message::Ping(_) | Message::Pong(_) => {}
            message => return message,
        }
    }
}

#[tokio::test]
async fn frames_both_ways_are_relayed_as_they_came() {
    // Given a LiveKit that sends an offer after the join, and echoes frames.
    let offer = b"\x1a\x0b\x0a\x05offer\x12\x02v0".to_vec();
    let stack = LiveKitStack::start(
        LiveKitOptions {
            after_join: vec![offer.clone()],
            ..LiveKitOptions::default()
        },
        &[],
    )
    .await;
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    assert_eq!(next_data(&mut client).await, Message::Binary(offer.into()));
    // When the client sends every kind of frame.
    let binary = Message::Binary(vec![0, 1, 2, 255, 0x0a].into());
    let text = Message::Text("{\"ping\":1}".into());
    client.send(binary.clone()).await.expect("send");
    assert_eq!(next_data(&mut client).await, binary, "binary, echoed by LiveKit");
    client.send(text.clone()).await.expect("send");
    assert_eq!(next_data(&mut client).await, text, "text, echoed by LiveKit");
    let unasked = Message::Pong(b"unasked".to_vec().into());
    client.send(unasked.clone()).await.expect("send");
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("send");
    // Then LiveKit saw them all, the ping included.
    wait_until("LiveKit saw the ping", || {
        stack.livekit.sessions()[0]
            .received
            .contains(&Message::Ping(b"are you there".to_vec().into()))
    })
    .await;
    assert_eq!(stack.livekit.sessions()[0].received[..3], [binary, text, unasked]);
    loop {
        if let Message::Pong(payload) = next(&mut client).await {
            assert_eq!(&payload[..], b"are you there");
            break;
        }
    }
}

#[tokio::test]
async fn the_handshake_reaches_livekit_with_its_path_query_and_headers_but_no_extension() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let token = stack.livekit.token("@bob:example.org", "room");
    let path =
        format!("/livekit/sfu/rtc/v1?access_token={token}&sdk=js&version=2.15.0&auto_subscribe=1&x=%2F");
    let mut client = connect(
        stack.addr(),
        &path,
        &[
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("Origin", "https://call.example.org"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("User-Agent", "Element Call"),
        ],
    )
    .await
    .expect("the upgrade succeeds");
    assert!(matches!(next_data(&mut client).await, Message::Binary(_)));
    let upgrade = &stack.livekit.requests()[0];
    assert_eq!(upgrade.path_and_query, path);
    assert_eq!(upgrade.header("origin"), Some("https://call.example.org"));
    assert_eq!(upgrade.header("user-agent"), Some("Element Call"));
    assert_eq!(upgrade.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(upgrade.header("sec-websocket-extensions"), None);
    assert_eq!(upgrade.header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn a_close_from_livekit_reaches_the_client_with_its_code_and_reason() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    stack.livekit.close_all(4001, "participant removed");
    let Message::Close(Some(frame)) = next_data(&mut client).await else {
        panic!("a close frame");
    };
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4001, "participant removed")
    );
    // The client's answer goes back to LiveKit, which sees a clean close.
    wait_until("LiveKit's session ends", || {
        stack.livekit.sessions()[0].ended.is_some()
    })
    .await;
    assert_eq!(
        stack.livekit.sessions()[0].ended,
        Some(SessionEnd::Closed(Some((4001, "participant removed".to_owned()))))
    );
}

#[tokio::test]
async fn a_close_from_the_client_reaches_livekit_with_its_code_and_reason() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "leaving".into(),
        }))
        .await
        .expect("close");
    wait_until("LiveKit's session ends", || {
        stack.livekit.sessions()[0].ended.is_some()
    })
    .await;
    assert_eq!(
        stack.livekit.sessions()[0].ended,
        Some(SessionEnd::Closed(Some((1000, "leaving".to_owned()))))
    );
    // The client gets the close answered and the connection ends.
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = client.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the close is answered in time");
    assert_eq!(answered, Some(1000));
}

#[tokio::test]
async fn a_client_that_hangs_up_ends_livekits_leg() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    drop(client);
    wait_until("LiveKit's session ends", || {
        stack.livekit.sessions()[0].ended.is_some()
    })
    .await;
    assert_eq!(
        stack.livekit.sessions()[0].ended,
        Some(SessionEnd::Gone),
        "lost, not closed: LiveKit may keep the participant for a resume"
    );
}

#[tokio::test]
async fn a_token_livekit_refuses_gets_its_refusal_and_no_upgrade() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let forged = stack.livekit.forged_token("@mallory:example.org", "room");
    let refused = connect(stack.addr(), &format!("/rtc?access_token={forged}"), &[]).await;
    let Err(WsError::Http(answer)) = refused else {
        panic!("the upgrade is refused: {refused:?}");
    };
    assert_eq!(answer.status(), 401);
    assert_eq!(
        answer.body().as_deref(),
        Some(&b"invalid token: could not verify"[..])
    );
    assert!(stack.livekit.sessions().is_empty());
}

#[tokio::test]
async fn livekit_down_is_a_502_with_a_plain_reason_and_no_upgrade() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let nothing = closed_port();
    let daemon = Daemon::start(
        &synapse.base_url(),
        &cloudflare.base_url(),
        &[
            ("LIVEKIT_SFU_URL", &nothing),
            ("LIVEKIT_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    let addr = daemon.livekit_addr.expect("on");
    let refused = connect(addr, "/rtc?access_token=x", &[]).await;
    let Err(WsError::Http(answer)) = refused else {
        panic!("the upgrade is refused: {refused:?}");
    };
    assert_eq!(answer.status(), 502);
    assert_eq!(answer.body().as_deref(), Some(&b"LiveKit is unreachable\n"[..]));
    let plain = send(addr, "GET /rtc/validate HTTP/1.1\r\nHost: lk\r\n\r\n").await;
    plain.assert_status(502);
    assert_eq!(plain.text(), "LiveKit is unreachable\n");
    assert_eq!(cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn plain_http_streams_through_unchanged() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let body = r#"{"room":"r"}"#;
    let answer = send(
        stack.addr(),
        &format!(
            "POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: lk\r\nContent-Type: application/json\r\n\
             Authorization: Bearer api-token\r\nKeep-Alive: timeout=5\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    answer.assert_status(200);
    assert_eq!(answer.text(), body);
    assert_eq!(answer.header("x-fake"), Some("livekit"));
    let seen = &stack.livekit.requests()[0];
    assert_eq!(seen.path_and_query, "/twirp/livekit.RoomService/ListRooms");
    assert_eq!(seen.header("authorization"), Some("Bearer api-token"));
    assert_eq!(seen.header("keep-alive"), None, "hop-by-hop");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    // A GET to a signalling path without an upgrade is plain HTTP too.
    let validate = send(
        stack.addr(),
        "GET /rtc/validate?access_token=t HTTP/1.1\r\nHost: lk\r\n\r\n",
    )
    .await;
    validate.assert_status(200);
    assert_eq!(
        stack.livekit.requests()[1].path_and_query,
        "/rtc/validate?access_token=t"
    );
}

#[tokio::test]
async fn an_idle_signalling_connection_outlives_the_http_deadlines() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    // Paused, the daemon's 75 s idle and 10 s head deadlines pass at once.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(200)).await;
    tokio::time::resume();
    let binary = Message::Binary(b"\r\n\r\nGET / HTTP/1.1".to_vec().into());
    client.send(binary.clone()).await.expect("send");
    assert_eq!(next_data(&mut client).await, binary);
}

/// Given the binary with its JSON log, when a participant joins, talks and
/// leaves, then the log has one line for that signalling connection and
/// never the token LiveKit's query carries.
#[tokio::test]
async fn one_log_line_per_signalling_connection_and_never_the_token() {
    let livekit = FakeLiveKit::start(LiveKitOptions::default()).await;
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let sfu = livekit.base_url();
    let daemon = crate::binary::Running::against(
        &synapse,
        &cloudflare,
        &[("LIVEKIT_SFU_URL", &sfu), ("LIVEKIT_LISTEN_ADDR", "127.0.0.1:0")],
    )
    .await;
    let started = daemon.log_so_far();
    let addr: SocketAddr = started
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|event| event["livekit_listen"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no livekit_listen in {started}"))
        .parse()
        .expect("an address");
    let token = livekit.token("@alice:example.org", "room");
    let mut client = connect(addr, &format!("/rtc?access_token={token}"), &[])
        .await
        .expect("the upgrade succeeds");
    let _join = next_data(&mut client).await;
    for n in 0..5u8 {
        client.send(Message::Binary(vec![n].into())).await.expect("send");
        let _ = next_data(&mut client).await;
    }
    client.close(None).await.expect("close");
    daemon
        .wait_for_log("the connection's line", |log| {
            log.contains("signalling connection")
        })
        .await;
    let log = daemon.terminate().await.stderr;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("signalling connection"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(r#""path":"/rtc""#), "{log}");
    assert!(lines[0].contains(r#""frames_from_client":6"#), "{log}");
    assert!(!log.contains(&token), "{log}");
    assert!(!log.contains("access_token"), "{log}");
}

#[tokio::test]
async fn a_taken_livekit_port_or_a_wrong_livekit_value_stops_startup_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let base = [
        ("CF_TURN_KEY_ID", "k"),
        ("CF_TURN_API_TOKEN", "t"),
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("LIVEKIT_SFU_URL", "http://livekit:7880"),
    ];
    for (extra, variable) in [
        (("LIVEKIT_LISTEN_ADDR", addr.as_str()), "LIVEKIT_LISTEN_ADDR"),
        (
            ("LIVEKIT_SFU_URL", "wss://livekit.example.org"),
            "LIVEKIT_SFU_URL",
        ),
        (("LIVEKIT_KEY", "APIkey"), "LIVEKIT_SECRET"),
    ] {
        let mut vars = base.to_vec();
        vars.retain(|(name, _)| *name != extra.0);
        vars.push(extra);
        let (code, _, stderr) = crate::binary::run_to_end(&[], &vars).await;
        assert_eq!(code, Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(&format!("{variable}: ")), "{stderr}");
    }
}

/// The fake Cloudflare's TURN URIs as the daemon hands them out: port 53
/// dropped (docs/behaviour.md §4).
const OUR_URIS: [&str; 5] = [
    "turn:turn.cloudflare.com:3478?transport=udp",
    "turn:turn.cloudflare.com:3478?transport=tcp",
    "turn:turn.cloudflare.com:80?transport=tcp",
    "turns:turn.cloudflare.com:5349?transport=tcp",
    "turns:turn.cloudflare.com:443?transport=tcp",
];

/// The credential the fake Cloudflare minted last, as the daemon reshapes it.
pub(crate) fn minted(stack: &LiveKitStack) -> TurnCredential {
    let minted = stack.cloudflare.last_minted().expect("Cloudflare minted");
    TurnCredential {
        username: minted.username,
        password: minted.credential,
        uris: OUR_URIS.map(str::to_owned).to_vec(),
    }
}

pub(crate) fn binary(message: Message) -> Vec<u8> {
    match message {
        Message::Binary(bytes) => bytes.to_vec(),
        other => panic!("a binary frame, got {other:?}"),
    }
}

pub(crate) fn ice_servers(frame: &[u8]) -> Vec<IceServer> {
    match SignalResponse::decode(frame).expect("a SignalResponse").message {
        Some(signal_response::Message::Join(join)) => join.ice_servers,
        Some(signal_response::Message::Reconnect(reconnect)) => reconnect.ice_servers,
        other => panic!("a join or reconnect, got {other:?}"),
    }
}

#[tokio::test]
async fn the_join_gets_exactly_one_more_ice_server_with_cloudflares_credential() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let mut client = stack.join("@alice:example.org").await;
    let join = binary(next_data(&mut client).await);
    let sent = stack.livekit.join_frame("@alice:example.org");
    let ours = minted(&stack);
    // Byte for byte: LiveKit's frame with the entry appended, its unknown
    // field still there.
    assert_eq!(Some(join.clone()), splice::splice(&sent, &ours));
    assert!(join.windows(UNKNOWN_FIELD.len()).any(|w| w == UNKNOWN_FIELD));
    let mut expected = ice_servers(&sent);
    expected.push(IceServer {
        urls: OUR_URIS.map(str::to_owned).to_vec(),
        username: ours.username.clone(),
        credential: ours.password.clone(),
    });
    assert_eq!(ice_servers(&join), expected);
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

#[tokio::test]
async fn a_reconnect_gets_the_entry_too() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let token = stack.livekit.token("@alice:example.org", "room");
    let mut client = connect(
        stack.addr(),
        &format!("/rtc?access_token={token}&reconnect=1&sid=PA_@alice:example.org"),
        &[],
    )
    .await
    .expect("the upgrade succeeds");
    let reconnect = binary(next_data(&mut client).await);
    assert_eq!(
        Some(reconnect.clone()),
        splice::splice(&stack.livekit.reconnect_frame(), &minted(&stack))
    );
    assert_eq!(ice_servers(&reconnect).len(), 2);
}

#[tokio::test]
async fn forced_relay_over_tls_gets_only_our_turns_uris() {
    let stack = LiveKitStack::start(
        LiveKitOptions {
            force_relay: true,
            ice_servers: vec![IceServer {
                urls: vec!["turns:livekit.example.org:443?transport=tcp".to_owned()],
                username: "lk".to_owned(),
                credential: "lk".to_owned(),
            }],
            ..LiveKitOptions::default()
        },
        &[],
    )
    .await;
    let mut client = stack.join("@alice:example.org").await;
    let servers = ice_servers(&binary(next_data(&mut client).await));
    assert_eq!(
        servers[1].urls,
        [
            "turns:turn.cloudflare.com:5349?transport=tcp",
            "turns:turn.cloudflare.com:443?transport=tcp"
        ]
    );
}

#[tokio::test]
async fn a_forged_or_expired_token_gets_livekits_refusal_and_cloudflare_is_never_asked() {
    for verifying in [false, true] {
        let options = LiveKitOptions::default();
        let (key, secret) = (options.api_key.clone(), options.api_secret.clone());
        let extra: Vec<(&str, &str)> = if verifying {
            vec![("LIVEKIT_KEY", &key), ("LIVEKIT_SECRET", &secret)]
        } else {
            Vec::new()
        };
        let stack = LiveKitStack::start(options, &extra).await;
        for token in [
            stack.livekit.forged_token("@alice:example.org", "room"),
            stack.livekit.expired_token("@alice:example.org", "room"),
        ] {
            let refused = connect(stack.addr(), &format!("/rtc?access_token={token}"), &[]).await;
            let Err(WsError::Http(answer)) = refused else {
                panic!("refused: {refused:?}");
            };
            assert_eq!(answer.status(), 401);
        }
        assert!(stack.cloudflare.requests().is_empty(), "verifying={verifying}");
    }
}

#[tokio::test]
async fn with_livekits_key_a_verified_join_is_spliced_too() {
    let options = LiveKitOptions::default();
    let (key, secret) = (options.api_key.clone(), options.api_secret.clone());
    let stack = LiveKitStack::start(options, &[("LIVEKIT_KEY", &key), ("LIVEKIT_SECRET", &secret)]).await;
    let mut client = stack.join("@alice:example.org").await;
    let join = binary(next_data(&mut client).await);
    assert_eq!(
        Some(join),
        splice::splice(&stack.livekit.join_frame("@alice:example.org"), &minted(&stack))
    );
}

#[tokio::test]
async fn a_slow_cloudflare_leaves_the_join_unchanged_within_the_bound_and_the_next_join_reuses_its_mint() {
    let stack = LiveKitStack::start_with(
        LiveKitOptions::default(),
        slow_cloudflare(JOIN_HOLD + Duration::from_secs(1)),
        &[],
    )
    .await;
    let started = std::time::Instant::now();
    let mut client = stack.join("@alice:example.org").await;
    let join = binary(next_data(&mut client).await);
    let waited = started.elapsed();
    assert_eq!(join, stack.livekit.join_frame("@alice:example.org"));
    assert!(
        waited >= JOIN_HOLD && waited < JOIN_HOLD + Duration::from_millis(900),
        "{waited:?}"
    );
    // The mint lands anyway, and the next join of that participant uses it.
    wait_until("the late mint lands", || stack.cloudflare.last_minted().is_some()).await;
    let mut again = stack.join("@alice:example.org").await;
    let join = binary(next_data(&mut again).await);
    assert_eq!(
        Some(join),
        splice::splice(&stack.livekit.join_frame("@alice:example.org"), &minted(&stack))
    );
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

#[tokio::test]
async fn a_client_that_hangs_up_while_its_join_is_held_closes_livekits_leg_and_the_mint_still_lands() {
    let stack = LiveKitStack::start_with(
        LiveKitOptions::default(),
        slow_cloudflare(Duration::from_millis(800)),
        &[],
    )
    .await;
    let client = stack.join("@alice:example.org").await;
    wait_until("Cloudflare is asked", || !stack.cloudflare.requests().is_empty()).await;
    drop(client);
    wait_until("LiveKit's session ends", || {
        stack.livekit.sessions()[0].ended.is_some()
    })
    .await;
    assert_eq!(stack.livekit.sessions()[0].ended, Some(SessionEnd::Gone));
    wait_until("the mint lands", || stack.cloudflare.mint_count() == 1).await;
    wait_until("no mint in flight", || stack.daemon.state.mints_in_flight() == 0).await;
    let text = metrics_once_all_ended(stack.daemon.addr).await;
    crate::harness::assert_counted(
        &text,
        r#"turnify_livekit_signalling_connections_total{turn="left-while-held"} 1"#,
    );
}

#[tokio::test]
async fn two_joins_by_one_identity_mint_once_and_another_identity_mints_its_own() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[("CF_CUSTOM_IDENTIFIER", "user_id")]).await;
    let mut first = stack.join("@alice:example.org:PHONE").await;
    let first_join = binary(next_data(&mut first).await);
    let mut second = stack.join("@alice:example.org:PHONE").await;
    let second_join = binary(next_data(&mut second).await);
    assert_eq!(ice_servers(&first_join).last(), ice_servers(&second_join).last());
    assert_eq!(stack.cloudflare.mint_count(), 1);
    let mut bob = stack.join("@bob:example.org:LAPTOP").await;
    let bob_join = binary(next_data(&mut bob).await);
    assert_ne!(ice_servers(&bob_join).last(), ice_servers(&first_join).last());
    assert_eq!(stack.cloudflare.mint_count(), 2);
    // customIdentifier comes from the LiveKit identity.
    let tags: Vec<serde_json::Value> = stack
        .cloudflare
        .requests()
        .iter()
        .map(|request| request.json()["customIdentifier"].clone())
        .collect();
    assert_eq!(tags, ["@alice:example.org:PHONE", "@bob:example.org:LAPTOP"]);
}

/// With LiveKit's key, the daemon verifies the token itself and mints while
/// LiveKit sets up the room: the join waits for the slower of the two, not
/// for both in turn as it does when LiveKit's acceptance must come first.
#[tokio::test]
async fn with_livekits_key_the_mint_starts_as_the_upgrade_arrives() {
    let step = Duration::from_millis(600);
    let options = LiveKitOptions {
        accept_after: step,
        ..LiveKitOptions::default()
    };
    let (key, secret) = (options.api_key.clone(), options.api_secret.clone());
    for verifying in [true, false] {
        let extra: Vec<(&str, &str)> = if verifying {
            vec![("LIVEKIT_KEY", &key), ("LIVEKIT_SECRET", &secret)]
        } else {
            Vec::new()
        };
        let stack = LiveKitStack::start_with(options.clone(), slow_cloudflare(step), &extra).await;
        let started = std::time::Instant::now();
        let mut client = stack.join("@alice:example.org").await;
        let join = binary(next_data(&mut client).await);
        let waited = started.elapsed();
        assert_eq!(ice_servers(&join).len(), 2, "spliced");
        if verifying {
            assert!(waited < step * 2, "in parallel: {waited:?}");
        } else {
            assert!(waited >= step * 2, "one after the other: {waited:?}");
        }
    }
}

#[tokio::test]
async fn on_shutdown_an_open_signalling_connection_gets_going_away_and_ends() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    let LiveKitStack { daemon, livekit, .. } = stack;
    let stopping = tokio::spawn(daemon.stop());
    let Message::Close(Some(frame)) = next_data(&mut client).await else {
        panic!("a close frame");
    };
    assert_eq!(frame.code, CloseCode::Away);
    drop(client);
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the daemon stops in time")
        .expect("stop task");
    wait_until("LiveKit's session ends", || livekit.sessions()[0].ended.is_some()).await;
    assert!(matches!(
        livekit.sessions()[0].ended,
        Some(SessionEnd::Closed(Some((1001, _))))
    ));
}

#[tokio::test]
async fn metrics_count_signalling_connections_by_what_their_join_got() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let mut first = stack.join("@alice:example.org").await;
    let _ = next_data(&mut first).await;
    let mut second = stack.join("@alice:example.org").await;
    let _ = next_data(&mut second).await;
    let open = crate::harness::metrics(stack.daemon.addr).await;
    crate::harness::assert_counted(&open, "turnify_livekit_signalling_connections_open 2");
    first.close(None).await.expect("close");
    second.close(None).await.expect("close");
    let text = metrics_once_all_ended(stack.daemon.addr).await;
    for line in [
        "turnify_livekit_signalling_connections_open 0",
        r#"turnify_livekit_signalling_connections_total{turn="cloudflare"} 1"#,
        r#"turnify_livekit_signalling_connections_total{turn="reused"} 1"#,
        r#"turnify_cloudflare_calls_total{result="ok"} 1"#,
    ] {
        crate::harness::assert_counted(&text, line);
    }
}

/// Given MAX_CONNECTIONS=1 and one open signalling connection, another
/// connection waits for its slot until the call ends: an upgraded
/// connection still counts.
#[tokio::test]
async fn an_open_signalling_connection_keeps_its_connection_slot() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[("MAX_CONNECTIONS", "1")]).await;
    let mut call = stack.join("@alice:example.org").await;
    let _ = next_data(&mut call).await;
    let mut waiting = tokio::spawn(send(
        stack.addr(),
        "GET /rtc/validate HTTP/1.1\r\nHost: lk\r\n\r\n",
    ));
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
    assert!(
        early.is_err(),
        "answered while the call held the only slot: {early:?}"
    );
    call.close(None).await.expect("close");
    let answer = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("answered once the call ended")
        .expect("request task");
    answer.assert_status(200);
}
