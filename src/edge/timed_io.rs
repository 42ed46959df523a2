//! Connection deadlines that follow the HTTP/1 exchange from its bytes
//! (docs/behaviour.md §10): a client has 10 s to send a whole request head, blank lines
//! before it included, an idle keep-alive connection is closed after 75 s,
//! and so is one whose client stops reading an answer for that long. hyper has one knob for both:
//! its `header_read_timeout` also bounds the idle wait between requests
//! (hyperium/hyper#3828), which would close keep-alive connections after
//! 10 s and race a reverse proxy's upstream pool (nginx keeps them 60 s).
//! This module can go once hyper has a separate HTTP/1 idle timeout
//! (hyperium/hyper#1628).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head; `started` once a byte other
    /// than CR and LF came (parsers skip blank lines before a request line,
    /// so those end nothing), `after_newline` when the last byte ended a
    /// line of the head.
    Head { started: bool, after_newline: bool },
    /// The head is in: a body, Synapse or Cloudflare may take their time.
    Busy,
    /// An answer went out; waiting for the next request.
    Idle,
}

#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub head: Duration,
    pub idle: Duration,
}

/// Wraps a connection's stream and fails its reads once a deadline passes,
/// which makes hyper close the connection.
pub(crate) struct TimedIo<S> {
    inner: S,
    phase: Phase,
    deadlines: Deadlines,
    /// When the current phase runs out. The timer is re-armed only when it
    /// fires early, not on every request and write: that is the hot path.
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// Set while a write is blocked because the client does not read: it
    /// fails once the idle deadline has passed with no progress.
    write_stalled: Option<Pin<Box<Sleep>>>,
    /// Set once the connection is handed over to another protocol (a
    /// WebSocket upgrade, docs/behaviour.md §12): its bytes are no longer
    /// HTTP heads, and reads have no deadline; a client that stops reading
    /// is still cut off.
    upgraded: Arc<AtomicBool>,
}

impl<S> TimedIo<S> {
    /// A new connection is expected to send its request head at once.
    pub(crate) fn new(inner: S, deadlines: Deadlines) -> Self {
        let deadline = Instant::now() + deadlines.head;
        Self {
            inner,
            phase: Phase::Head {
                started: false,
                after_newline: false,
            },
            deadlines,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            write_stalled: None,
            upgraded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The switch that ends the HTTP deadlines of this connection's reads,
    /// for the request that upgrades it.
    pub(crate) fn upgrade_switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.upgraded)
    }

    /// Follows the request head through newly read bytes: it ends at the
    /// first empty line after the request line (CRLF CRLF, or LF LF, which
    /// parsers also accept). Blank lines while idle start no head, and do
    /// not move the idle deadline.
    fn saw(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            let blank = byte == b'\r' || byte == b'\n';
            self.phase = match self.phase {
                Phase::Busy => return,
                Phase::Idle if blank => Phase::Idle,
                Phase::Idle => {
                    self.deadline = Instant::now() + self.deadlines.head;
                    Phase::Head {
                        started: true,
                        after_newline: false,
                    }
                }
                Phase::Head { started: false, .. } => Phase::Head {
                    started: !blank,
                    after_newline: false,
                },
                Phase::Head {
                    started: true,
                    after_newline,
                } => match byte {
                    b'\n' if after_newline => Phase::Busy,
                    b'\n' => Phase::Head {
                        started: true,
                        after_newline: true,
                    },
                    b'\r' => Phase::Head {
                        started: true,
                        after_newline,
                    },
                    _ => Phase::Head {
                        started: true,
                        after_newline: false,
                    },
                },
            };
        }
    }

    /// Any bytes of an answer count as activity: the idle time runs from the
    /// last of them, so a long streamed answer is not cut off. An interim
    /// `1xx` answer (hyper's `100 Continue` to `Expect: 100-continue`) is not
    /// the end of the exchange: the request body comes after it, and must not
    /// be timed as the next request's head.
    fn wrote(&mut self, bytes: &[u8]) {
        self.write_stalled = None;
        let interim = bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1");
        if self.phase == Phase::Busy && interim {
            return;
        }
        self.phase = Phase::Idle;
        self.deadline = Instant::now() + self.deadlines.idle;
    }

    /// Whether the current deadline has passed; otherwise the task is woken
    /// when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.deadline {
                return true;
            }
            let deadline = self.deadline;
            self.timer.as_mut().reset(deadline);
        }
        false
    }
}

impl<S> TimedIo<S> {
    /// A write that cannot go on (the client's window is full): whether it
    /// has been so for the idle deadline; otherwise the task is woken then.
    fn write_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.deadlines.idle;
        self.write_stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

fn client_not_reading() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading the answer")
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.upgraded.load(Ordering::Relaxed) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.phase != Phase::Busy && this.expired(cx) {
            let what = if this.phase == Phase::Idle {
                "idle keep-alive connection closed"
            } else {
                "request head not received in time"
            };
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.saw(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let Poll::Ready(written) = Pin::new(&mut self.inner).poll_write(cx, data) else {
            return if self.write_timed_out(cx) {
                Poll::Ready(Err(client_not_reading()))
            } else {
                Poll::Pending
            };
        };
        let written = written?;
        if written > 0 {
            self.wrote(data);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Poll::Ready(written) = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) else {
            return if self.write_timed_out(cx) {
                Poll::Ready(Err(client_not_reading()))
            } else {
                Poll::Pending
            };
        };
        let written = written?;
        if written > 0 {
            let first = bufs
                .iter()
                .find(|buf| !buf.is_empty())
                .map_or(&[][..], |buf| &buf[..]);
            self.wrote(first);
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const DEADLINES: Deadlines = Deadlines {
        head: Duration::from_secs(10),
        idle: Duration::from_secs(75),
    };

    /// Reads until the wrapped side fails, and says after how long.
    async fn time_to_failure(io: &mut TimedIo<tokio::io::DuplexStream>) -> (Duration, io::ErrorKind) {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("unexpected end of stream"),
                Ok(_) => {}
                Err(e) => return (started.elapsed(), e.kind()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_is_cut_after_the_head_deadline() {
        let (_client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        let (after, kind) = time_to_failure(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(after, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickling_in_is_cut_after_the_head_deadline() {
        let (mut client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        let trickle = tokio::spawn(async move {
            for byte in b"GET /_matrix/client/v3/voip/turnServer HTTP/1.1\r\nHost: x\r\n" {
                if client.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let (after, kind) = time_to_failure(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(after, Duration::from_secs(10));
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_head_stops_the_clock_until_the_answer() {
        let (mut client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.expect("head");
        // Synapse takes its time: no deadline applies while busy.
        let busy = tokio::time::timeout(Duration::from_secs(600), io.read(&mut buf)).await;
        assert!(busy.is_err(), "still waiting after 600 s, not cut off");
        // After the answer, the idle deadline applies.
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("answer");
        let (after, kind) = time_to_failure(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(after, Duration::from_secs(75));
    }

    /// hyper answers `Expect: 100-continue` with an interim `100 Continue`
    /// before it reads the body; the body that follows is not a new head.
    #[tokio::test(start_paused = true)]
    async fn a_slow_body_after_100_continue_is_not_timed_as_a_head() {
        let (mut client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        client
            .write_all(b"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 30\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 128];
        let _ = io.read(&mut buf).await.expect("head");
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .expect("interim answer");
        let upload = tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.write_all(b"x").await.expect("body byte");
            }
            client
        });
        let mut body = 0;
        while body < 30 {
            body += io
                .read(&mut buf)
                .await
                .expect("a body byte a second is never cut off");
        }
        let _client = upload.await.expect("upload task");
        // Only the final answer starts the idle time.
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("answer");
        let (after, kind) = time_to_failure(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(after, Duration::from_secs(75));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_request_after_idling_gets_a_fresh_head_deadline() {
        let (mut client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\n\n").await.expect("write");
        let _ = io.read(&mut buf).await.expect("head with bare newlines");
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("answer");
        tokio::time::sleep(Duration::from_secs(70)).await;
        client.write_all(b"GET / HTT").await.expect("write");
        let _ = io.read(&mut buf).await.expect("start of the next head");
        let (after, kind) = time_to_failure(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(
            after,
            Duration::from_secs(10),
            "the head deadline, not what was left of the idle one"
        );
    }

    /// Parsers skip blank lines before a request line (RFC 9112 §2.2), so a
    /// client sending only those has not started, let alone ended, a head.
    #[tokio::test(start_paused = true)]
    async fn blank_lines_before_a_request_line_do_not_end_the_head() {
        let (mut client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        client.write_all(b"\r\n\r\n\n\n").await.expect("blank lines");
        let (after, kind) = time_to_failure(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(after, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn blank_lines_while_idle_do_not_move_the_idle_deadline() {
        let (mut client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let _ = io.read(&mut buf).await.expect("head");
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("answer");
        let answered = Instant::now();
        tokio::time::sleep(Duration::from_secs(70)).await;
        client.write_all(b"\r\n").await.expect("a stray blank line");
        let (_, kind) = time_to_failure(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(answered.elapsed(), Duration::from_secs(75));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_the_idle_deadline() {
        let (_client, server) = duplex(64);
        let mut io = TimedIo::new(server, DEADLINES);
        let started = Instant::now();
        let written = io.write_all(&[b'x'; 1024]).await;
        assert_eq!(
            written.expect_err("the write gives up").kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(started.elapsed(), Duration::from_secs(75));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (mut client, server) = duplex(64);
        let mut io = TimedIo::new(server, DEADLINES);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(60)).await;
                total += client.read(&mut buf).await.expect("read");
            }
        });
        io.write_all(&[b'x'; 4096])
            .await
            .expect("64 bytes a minute is slow, but it is progress");
        reader.await.expect("reader");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_reads_without_deadlines() {
        let (mut client, server) = duplex(1024);
        let mut io = TimedIo::new(server, DEADLINES);
        client
            .write_all(b"GET /rtc HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.expect("the head");
        io.upgrade_switch().store(true, Ordering::Relaxed);
        io.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .expect("101");
        // Frame bytes that would start a head, then silence past both deadlines.
        client.write_all(b"\x82\x05hello").await.expect("write");
        let _ = io.read(&mut buf).await.expect("a frame");
        tokio::time::sleep(DEADLINES.idle * 3).await;
        client.write_all(b"\x82\x01!").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("still open"), 3);
    }
}
