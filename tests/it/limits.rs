//! Input limits on a real socket (docs/behaviour.md §10): oversized heads get 431, a
//! client trickling its head is cut off at the head deadline, and an idle
//! keep-alive connection outlives that deadline. The deadline tests run with
//! a 1 s head and a 3 s idle deadline instead of the daemon's 10 s and 75 s;
//! timed_io's paused-time unit tests cover the fixed values.

use std::time::{Duration, Instant};

use matrix_turnify::Deadlines;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnify_fakes::{CloudflareOptions, SynapseOptions};

use crate::harness::{ALICE, Stack, send};

const V3: &str = "/_matrix/client/v3/voip/turnServer";
const SHORT: Deadlines = Deadlines {
    head: Duration::from_secs(1),
    idle: Duration::from_secs(3),
};

async fn with_short_deadlines() -> Stack {
    Stack::start_with_deadlines(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[],
        Some(SHORT),
    )
    .await
}

#[tokio::test]
async fn request_heads_over_32_kib_get_431() {
    let stack = Stack::start().await;
    let big = "a".repeat(33 * 1024);
    let response = send(
        stack.daemon.addr,
        &format!("GET {V3} HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    response.assert_status(431);
    assert!(stack.synapse.requests().is_empty());
}

#[tokio::test]
async fn more_than_100_headers_get_431() {
    let stack = Stack::start().await;
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = send(
        stack.daemon.addr,
        &format!("GET {V3} HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
    )
    .await;
    response.assert_status(431);
    assert!(stack.synapse.requests().is_empty());
}

#[tokio::test]
async fn a_client_trickling_its_head_is_cut_off_at_the_head_deadline() {
    let stack = with_short_deadlines().await;
    let stream = TcpStream::connect(stack.daemon.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // Each byte would restart a per-read timeout; the head deadline runs
    // from the first byte of the head, so this trickle cannot keep the
    // connection open.
    let trickle = tokio::spawn(async move {
        let head = format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n");
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for byte in head.as_bytes() {
            tick.tick().await;
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(SHORT.head * 5, reader.read(&mut buf))
        .await
        .expect("closed within five head deadlines");
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
    // Not before the deadline; the upper bound only tells a cut-off from
    // a connection left open (the whole head takes 7 s to trickle in).
    assert!(elapsed >= SHORT.head && elapsed < SHORT.head * 5, "{elapsed:?}");
    assert!(stack.synapse.requests().is_empty());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_head_deadline() {
    let stack = with_short_deadlines().await;
    let mut stream = TcpStream::connect(stack.daemon.addr).await.expect("connect");
    let request = format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n");
    for round in 0..2 {
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(n > 0, "round {round}: connection closed");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "round {round}");
        if round == 0 {
            // Twice the head deadline, well under the idle one.
            tokio::time::sleep(SHORT.head * 2).await;
        }
    }
    assert_eq!(stack.synapse.requests().len(), 2);
}

/// Finding 8: parsers skip blank lines before a request line, so they must
/// not end the head either.
#[tokio::test]
async fn blank_lines_before_the_request_line_do_not_stop_the_head_deadline() {
    let stack = with_short_deadlines().await;
    let mut stream = TcpStream::connect(stack.daemon.addr).await.expect("connect");
    stream.write_all(b"\r\n\r\n\r\n").await.expect("blank lines");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SHORT.head * 5, stream.read(&mut buf))
        .await
        .expect("closed within five head deadlines");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
}

/// Finding 9: a turnServer body that never comes gets 408 once the head
/// deadline has passed again, and the connection is closed.
#[tokio::test]
async fn a_turn_server_body_that_never_comes_gets_408() {
    let stack = with_short_deadlines().await;
    let mut stream = TcpStream::connect(stack.daemon.addr).await.expect("connect");
    let head = format!(
        "GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: 10\r\n\r\n12"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(SHORT.head * 5, stream.read_to_end(&mut raw))
        .await
        .expect("answered and closed within five head deadlines")
        .expect("read");
    assert!(started.elapsed() >= SHORT.head, "{:?}", started.elapsed());
    let response = crate::harness::parse_response(&raw);
    response.assert_matrix_error(408, "M_UNKNOWN");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        stack.synapse.requests().is_empty(),
        "nothing reached the homeserver"
    );
}

/// A body on any other path streams to the homeserver, which (like Synapse)
/// reads it whole before it answers; one that stalls is cut off once
/// nothing has come for the idle deadline.
#[tokio::test]
async fn a_stalled_body_on_another_path_is_cut_off() {
    let stack = with_short_deadlines().await;
    let mut stream = TcpStream::connect(stack.daemon.addr).await.expect("connect");
    stream
        .write_all(b"PUT /_matrix/client/v3/rooms/!r:x/send/m.room.message/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
        .await
        .expect("head");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(SHORT.idle * 4, stream.read_to_end(&mut raw))
        .await
        .expect("the connection ends within four idle deadlines");
    assert!(read.is_ok() || raw.is_empty(), "{read:?}");
}

/// A client that asks for an answer and never reads it holds its slot no
/// longer than the idle deadline: the daemon gives up writing, and what the
/// client can read afterwards is what the socket buffers held, not the
/// whole answer.
#[tokio::test]
async fn a_client_that_does_not_read_its_answer_is_cut_off() {
    let stack = with_short_deadlines().await;
    // Far larger than every socket buffer between the daemon and the client.
    let size = 64 * 1024 * 1024;
    stack.synapse.set_turn_body(&"x".repeat(size));
    let mut stream = TcpStream::connect(stack.daemon.addr).await.expect("connect");
    let head = format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    // The scenario: the client reads nothing for twice the idle deadline.
    tokio::time::sleep(SHORT.idle * 2).await;
    let mut received = 0;
    let mut buf = vec![0u8; 1024 * 1024];
    let drained = tokio::time::timeout(SHORT.idle * 4, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection ended");
    assert!(
        received < size,
        "the whole answer was still sent: {received} bytes"
    );
}
