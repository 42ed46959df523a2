//! Any path but turnServer goes to Synapse unchanged, both bodies streamed
//! (docs/behaviour.md §6); `/healthz` and `/readyz` are answered locally.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnify_fakes::{CloudflareOptions, FakeCloudflare, SynapseOptions};

use crate::harness::{Daemon, Stack, WAIT, closed_port, send};

#[tokio::test]
async fn other_paths_reach_synapse_unchanged() {
    let stack = Stack::start().await;
    let response = send(
        stack.daemon.addr,
        "PUT /echo/rooms/%21abc%3Alocalhost/send?txn=1&x=%20 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    response.assert_status(200);
    assert_eq!(response.header("x-echo-method"), Some("PUT"));
    assert_eq!(
        response.header("x-echo-path"),
        Some("/echo/rooms/%21abc%3Alocalhost/send?txn=1&x=%20")
    );
    assert_eq!(response.text(), "hello world");
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

#[tokio::test]
async fn synapses_own_answers_on_other_paths_are_returned_unchanged() {
    let stack = Stack::start().await;
    let response = send(
        stack.daemon.addr,
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    response.assert_status(200);
    assert!(response.json()["versions"].is_array());
    let response = send(
        stack.daemon.addr,
        "GET /_matrix/client/v3/nope HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    response.assert_status(404);
    assert_eq!(
        response.text(),
        r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#
    );
}

#[tokio::test]
async fn large_bodies_stream_through_uncapped() {
    let stack = Stack::start().await;
    let body = "0123456789abcdef".repeat(256 * 1024);
    let response = send(
        stack.daemon.addr,
        &format!(
            "POST /echo/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    response.assert_status(200);
    assert_eq!(response.body.len(), body.len());
    assert!(response.body == body.as_bytes());
}

/// Reads from `stream` into `seen` until `expected` is among the bytes read.
async fn read_until_seen(stream: &mut TcpStream, seen: &mut Vec<u8>, expected: &str) {
    let reading = async {
        while !String::from_utf8_lossy(seen).contains(expected) {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before {expected:?} came back: {:?}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, reading)
        .await
        .unwrap_or_else(|_| panic!("{expected:?} did not come back while the request was unfinished"));
}

#[tokio::test]
async fn bodies_stream_both_ways_without_being_buffered_whole() {
    let stack = Stack::start().await;
    let mut stream = TcpStream::connect(stack.daemon.addr).await.expect("connect");
    stream
        .write_all(b"POST /echo/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .expect("send head");
    let mut seen = Vec::new();
    for part in ["first part of the upload", "second part of the upload"] {
        let chunk = format!("{:x}\r\n{part}\r\n", part.len());
        stream.write_all(chunk.as_bytes()).await.expect("send chunk");
        // The echo comes back only if the chunk went on to Synapse and its
        // answer came back while the request is still unfinished: a proxy
        // that buffered either body whole would stall here.
        read_until_seen(&mut stream, &mut seen, part).await;
    }
    stream.write_all(b"0\r\n\r\n").await.expect("end the body");
    read_until_seen(&mut stream, &mut seen, "\r\n0\r\n\r\n").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test]
async fn a_slow_long_poll_is_not_cut_by_the_synapse_timeout() {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        CloudflareOptions::default(),
        &[("SYNAPSE_TIMEOUT_SECONDS", "0.2")],
    )
    .await;
    let response = send(
        stack.daemon.addr,
        "GET /echo/slow?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    response.assert_status(200);
}

#[tokio::test]
async fn other_paths_with_synapse_down_get_a_502_matrix_error() {
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let dead = closed_port();
    let daemon = Daemon::start(&dead, &cloudflare.base_url(), &[]).await;
    let response = send(
        daemon.addr,
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    response.assert_matrix_error(502, "M_UNKNOWN");
}

#[tokio::test]
async fn healthz_answers_without_any_upstream() {
    let dead = closed_port();
    let daemon = Daemon::start(&dead, "http://127.0.0.1:9/v1", &[]).await;
    let response = send(daemon.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    response.assert_status(200);
}

#[tokio::test]
async fn readyz_follows_synapses_health() {
    let stack = Stack::start().await;
    send(stack.daemon.addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .assert_status(200);
    assert_eq!(stack.synapse.requests()[0].path_and_query, "/health");

    let dead = closed_port();

    let daemon = Daemon::start(&dead, &stack.cloudflare.base_url(), &[]).await;
    send(daemon.addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .assert_status(503);
}

#[tokio::test]
async fn shutdown_finishes_and_stops_accepting() {
    let stack = Stack::start().await;
    let addr = stack.daemon.addr;
    send(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .assert_status(200);
    let Stack { daemon, .. } = stack;
    daemon.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
