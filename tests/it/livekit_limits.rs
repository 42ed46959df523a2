//! The LiveKit front door's limits (docs/behaviour.md §10) against the fake
//! LiveKit: a body that trickles and an answer that never starts are cut
//! off, an upgrade goes to LiveKit with no body, `OPTIONS *` is no gateway
//! error, a client's messages are bounded far below LiveKit's, and one
//! budget caps what all relays hold at once. The deadline tests run with a
//! 1 s body and a 2 s answer deadline instead of the daemon's 20 s and 30 s.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use matrix_turnify::Limits;
use matrix_turnify::livekit::{Bounds, FREE_MESSAGE_BYTES, MAX_CLIENT_MESSAGE_BYTES, MAX_MESSAGE_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use turnify_fakes::{CloudflareOptions, LiveKitOptions, SessionEnd};

use crate::harness::{RawResponse, WAIT, connect_and_send, parse_response, send, wait_until};
use crate::livekit::{LiveKitStack, next_data};

const SHORT: Bounds = Bounds {
    body: Duration::from_secs(1),
    answer: Duration::from_secs(2),
    relay_budget: matrix_turnify::livekit::RELAY_BUDGET_BYTES,
};

async fn stack(options: LiveKitOptions, tune: impl FnOnce(&mut Limits)) -> LiveKitStack {
    LiveKitStack::start_tuned(options, CloudflareOptions::default(), &[], tune).await
}

/// Sends `head`, then a byte every 200 ms until the daemon closes, and
/// reads its answer.
async fn trickle(addr: std::net::SocketAddr, head: &[u8]) -> RawResponse {
    let (mut reader, mut writer) = connect_and_send(addr, head).await.into_split();
    let trickling = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, reader.read_to_end(&mut raw)).await;
    trickling.abort();
    read.expect("answered and closed within the wait")
        .expect("read the answer");
    parse_response(&raw)
}

/// Given a 1 s body deadline, when a client declares a 100,000-byte body to
/// `/twirp/…` and sends a byte every 200 ms (never idle long enough for
/// the idle deadline), then it gets a 408 soon after the deadline and the
/// connection closes; LiveKit never had the whole body.
#[tokio::test]
async fn a_body_that_trickles_gets_408_at_the_body_deadline() {
    let stack = stack(LiveKitOptions::default(), |limits| limits.livekit = SHORT).await;
    let started = Instant::now();
    let answer = trickle(
        stack.addr(),
        b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: lk\r\nContent-Length: 100000\r\n\r\n{",
    )
    .await;
    answer.assert_status(408);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(
        started.elapsed() < SHORT.body * 3,
        "after {:?}",
        started.elapsed()
    );
    assert!(
        stack.livekit.requests().is_empty(),
        "LiveKit never had the whole body"
    );
    // The slot is free again: the next request is answered.
    send(stack.addr(), "GET /rtc/validate HTTP/1.1\r\nHost: lk\r\n\r\n")
        .await
        .assert_status(200);
}

/// The same with a chunked body that never ends.
#[tokio::test]
async fn a_chunked_body_that_never_ends_gets_408() {
    let stack = stack(LiveKitOptions::default(), |limits| limits.livekit = SHORT).await;
    let answer = trickle(
        stack.addr(),
        b"POST /whip/v1 HTTP/1.1\r\nHost: lk\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n",
    )
    .await;
    answer.assert_status(408);
}

/// Given a LiveKit that takes 5 s to answer a plain request and a 2 s
/// answer deadline, the client gets a 504 after about 2 s.
#[tokio::test]
async fn an_answer_that_does_not_start_in_time_gets_504() {
    let options = LiveKitOptions {
        answer_after: Duration::from_secs(5),
        ..LiveKitOptions::default()
    };
    let stack = stack(options, |limits| limits.livekit = SHORT).await;
    let started = Instant::now();
    let answer = send(stack.addr(), "GET /rtc/validate HTTP/1.1\r\nHost: lk\r\n\r\n").await;
    answer.assert_status(504);
    let took = started.elapsed();
    assert!(took >= SHORT.answer && took < SHORT.answer * 2, "after {took:?}");
}

/// An upgrade with a declared body is refused at once with a 400, and
/// LiveKit is never asked: it would wait for the body before answering.
#[tokio::test]
async fn an_upgrade_that_declares_a_body_gets_400_at_once() {
    let stack = stack(LiveKitOptions::default(), |_| {}).await;
    let token = stack.livekit.token("@alice:example.org", "room");
    for declared in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
        let started = Instant::now();
        let answer = send(
            stack.addr(),
            &format!(
                "GET /rtc?access_token={token} HTTP/1.1\r\nHost: lk\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{declared}\r\n\r\n"
            ),
        )
        .await;
        answer.assert_status(400);
        assert!(started.elapsed() < Duration::from_secs(2), "{declared}");
    }
    assert!(stack.livekit.requests().is_empty());
}

/// An upgrade that declares an empty body goes to LiveKit declaring none.
#[tokio::test]
async fn an_upgrade_goes_to_livekit_with_no_content_length() {
    let stack = stack(LiveKitOptions::default(), |_| {}).await;
    let token = stack.livekit.token("@alice:example.org", "room");
    let stream = connect_and_send(
        stack.addr(),
        format!(
            "GET /rtc?access_token={token} HTTP/1.1\r\nHost: lk\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let mut head = [0u8; 12];
    let mut stream = stream;
    tokio::time::timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("answered within the wait")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 101");
    let upgrade = &stack.livekit.requests()[0];
    assert_eq!(upgrade.header("content-length"), None);
    assert_eq!(upgrade.header("transfer-encoding"), None);
}

/// `OPTIONS *` names no resource of LiveKit's: a plain 400, not a 502.
#[tokio::test]
async fn options_star_gets_a_plain_400() {
    let stack = stack(LiveKitOptions::default(), |_| {}).await;
    let answer = send(stack.addr(), "OPTIONS * HTTP/1.1\r\nHost: lk\r\n\r\n").await;
    answer.assert_status(400);
    assert_eq!(answer.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(stack.livekit.requests().is_empty());
}

/// A client's message one byte over its bound ends the connection; one at
/// the bound is relayed. LiveKit's messages may be far larger, and reach the
/// client whole (sent in fragments).
#[tokio::test]
async fn a_clients_messages_are_bounded_far_below_livekits() {
    let large_down = vec![7u8; MAX_MESSAGE_BYTES / 2];
    let options = LiveKitOptions {
        after_join: vec![large_down.clone()],
        ..LiveKitOptions::default()
    };
    let stack = stack(options, |_| {}).await;
    let mut client = stack.join("@alice:example.org").await;
    let _join = next_data(&mut client).await;
    assert_eq!(next_data(&mut client).await, Message::Binary(large_down.into()));
    let at_bound = Message::Binary(vec![1u8; MAX_CLIENT_MESSAGE_BYTES].into());
    client.send(at_bound.clone()).await.expect("send");
    assert_eq!(next_data(&mut client).await, at_bound, "echoed by LiveKit");
    client
        .send(Message::Binary(vec![2u8; MAX_CLIENT_MESSAGE_BYTES + 1].into()))
        .await
        .expect("send");
    wait_until("LiveKit's leg ends", || {
        stack.livekit.sessions()[0].ended.is_some()
    })
    .await;
    assert_eq!(
        stack.livekit.sessions()[0].received.len(),
        1,
        "the long one never reached LiveKit"
    );
    let rest = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = client.next().await {
            assert!(matches!(message, Message::Close(_)), "{message:?}");
        }
    })
    .await;
    assert!(rest.is_ok(), "the client's connection ends too");
}

/// A masked client frame header announcing `length` bytes of binary.
fn frame_header(length: usize) -> Vec<u8> {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(length as u64).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header
}

/// Given a relay budget with room for three and a half clients' partial
/// messages of 100 KiB (beyond the free part of each), one of four such
/// messages ends its own connection, the others stay, and a small message
/// still passes; once they leave, the budget is whole again.
#[tokio::test]
async fn one_budget_caps_what_all_relays_hold() {
    const PARTIAL: usize = 100 * 1024;
    let per_connection = PARTIAL - FREE_MESSAGE_BYTES;
    let stack = stack(LiveKitOptions::default(), |limits| {
        limits.livekit.relay_budget = 3 * per_connection + per_connection / 2;
    })
    .await;
    let mut holders = Vec::new();
    for n in 0..4 {
        let mut client = stack.join(&format!("@holder{n}:example.org")).await;
        let _join = next_data(&mut client).await;
        let stream = client.get_mut();
        stream
            .write_all(&frame_header(MAX_CLIENT_MESSAGE_BYTES))
            .await
            .expect("header");
        stream
            .write_all(&vec![0u8; PARTIAL])
            .await
            .expect("part of the payload");
        holders.push(client);
    }
    let ended = || {
        stack.livekit.sessions()[..4]
            .iter()
            .filter(|s| s.ended.is_some())
            .count()
    };
    wait_until("one holder is ended", || ended() == 1).await;
    let mut honest = stack.join("@honest:example.org").await;
    let _join = next_data(&mut honest).await;
    let small = Message::Binary(vec![3u8; 1024].into());
    honest.send(small.clone()).await.expect("send");
    assert_eq!(next_data(&mut honest).await, small);
    let sessions = stack.livekit.sessions();
    assert_eq!(ended(), 1, "the others stay: {sessions:?}");
    assert!(sessions.iter().all(|s| s.ended != Some(SessionEnd::Closed(None))));
    drop(holders);
    wait_until("the holders' sessions end", || ended() == 4).await;
    // As large as a holder's, which the budget could not take while three
    // held theirs.
    let large = Message::Binary(vec![4u8; PARTIAL].into());
    honest.send(large.clone()).await.expect("send");
    assert_eq!(next_data(&mut honest).await, large, "the budget is whole again");
}
