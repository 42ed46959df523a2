//! Starts the real daemon in-process on a loopback port against the fakes,
//! and talks to it with a raw HTTP/1.1 client, so tests see exactly what goes
//! over the wire (no client library adding or normalising anything).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use matrix_turnify::AppState;
use matrix_turnify::Deadlines;
use matrix_turnify::Limits;
use matrix_turnify::{Config, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use turnify_fakes::{CfBehaviour, CloudflareOptions, FakeCloudflare, FakeSynapse, IceShape, SynapseOptions};

pub(crate) const ALICE: &str = "syt_alice_token";
pub(crate) const BOB: &str = "syt_bob_token";
pub(crate) const CF_TOKEN: &str = "test-api-token";
pub(crate) const CF_KEY: &str = "test-key-id";
/// Longest any single exchange in these tests may take before it is a hang.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The daemon, serving on `addr` until dropped.
pub(crate) struct Daemon {
    pub addr: SocketAddr,
    /// The LiveKit front door, when the test configured one.
    pub livekit_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Daemon {
    /// Starts the daemon with the given settings on top of a minimal valid
    /// configuration pointing at `synapse` and `cloudflare`.
    pub(crate) async fn start(synapse: &str, cloudflare: &str, extra: &[(&str, &str)]) -> Daemon {
        Self::start_with_deadlines(synapse, cloudflare, extra, None).await
    }

    /// Like [`Daemon::start`], with other connection deadlines than the
    /// daemon's fixed 10 s and 75 s, so that tests of them take seconds.
    pub(crate) async fn start_with_deadlines(
        synapse: &str,
        cloudflare: &str,
        extra: &[(&str, &str)],
        deadlines: Option<Deadlines>,
    ) -> Daemon {
        Self::start_tuned(synapse, cloudflare, extra, |limits| {
            limits.deadlines = deadlines.unwrap_or(limits.deadlines);
        })
        .await
    }

    /// Like [`Daemon::start`], with the limits `tune` makes of the
    /// daemon's own (shorter deadlines, other caps).
    pub(crate) async fn start_tuned(
        synapse: &str,
        cloudflare: &str,
        extra: &[(&str, &str)],
        tune: impl FnOnce(&mut Limits),
    ) -> Daemon {
        let mut vars: Vec<(String, String)> = [
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("SYNAPSE_BASE_URL", synapse),
            ("CF_TURN_API_BASE_URL", cloudflare),
            ("CF_TURN_KEY_ID", CF_KEY),
            ("CF_TURN_API_TOKEN", CF_TOKEN),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let config = Config::from_vars(vars).expect("test configuration is valid");
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let livekit = match &config.livekit {
            Some(livekit) => Some(
                TcpListener::bind(livekit.listen_addr)
                    .await
                    .expect("bind loopback"),
            ),
            None => None,
        };
        let livekit_addr = livekit
            .as_ref()
            .map(|listener| listener.local_addr().expect("local addr"));
        let (shutdown, stop) = oneshot::channel::<()>();
        let state = AppState::new(&config).expect("HTTP client builds");
        let serving = state.clone();
        let mut limits = Limits::of(&config);
        tune(&mut limits);
        let task = tokio::spawn(async move {
            let listeners = Listeners {
                matrix: listener,
                livekit,
            };
            matrix_turnify::serve(&config, serving, listeners, limits, async {
                let _ = stop.await;
            })
            .await;
        });
        Daemon {
            addr,
            livekit_addr,
            state,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Stops accepting and waits for the server loop to finish draining.
    pub(crate) async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task ends cleanly");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A daemon with a fake Synapse (real behaviour) and a fake Cloudflare
/// (minting), the setting of most tests.
pub(crate) struct Stack {
    pub synapse: FakeSynapse,
    pub cloudflare: FakeCloudflare,
    pub daemon: Daemon,
}

impl Stack {
    pub(crate) async fn start() -> Stack {
        Self::start_with(SynapseOptions::default(), CloudflareOptions::default(), &[]).await
    }

    pub(crate) async fn start_with(
        synapse: SynapseOptions,
        cloudflare: CloudflareOptions,
        extra: &[(&str, &str)],
    ) -> Stack {
        Self::start_with_deadlines(synapse, cloudflare, extra, None).await
    }

    /// A stack whose daemon has other connection deadlines than its own.
    pub(crate) async fn start_with_deadlines(
        synapse: SynapseOptions,
        cloudflare: CloudflareOptions,
        extra: &[(&str, &str)],
        deadlines: Option<Deadlines>,
    ) -> Stack {
        let synapse = FakeSynapse::start(synapse).await;
        let cloudflare = FakeCloudflare::start(cloudflare).await;
        let daemon =
            Daemon::start_with_deadlines(&synapse.base_url(), &cloudflare.base_url(), extra, deadlines).await;
        Stack {
            synapse,
            cloudflare,
            daemon,
        }
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> RawResponse {
        get(self.daemon.addr, path, token).await
    }

    /// How often the homeserver was asked `/account/whoami`.
    pub(crate) fn whoami_calls(&self) -> usize {
        self.synapse
            .requests()
            .iter()
            .filter(|r| r.path_and_query.ends_with("/account/whoami"))
            .count()
    }
}

/// `GET path` with the token as a Bearer header, if any.
pub(crate) async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> RawResponse {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: matrix.example.org\r\n{auth}\r\n"),
    )
    .await
}

/// `count` identical GETs sent at once, each on its own connection.
pub(crate) async fn concurrent_gets(
    addr: SocketAddr,
    path: &'static str,
    token: &'static str,
    count: usize,
) -> Vec<RawResponse> {
    let requests: Vec<_> = (0..count)
        .map(|_| tokio::spawn(get(addr, path, Some(token))))
        .collect();
    let mut responses = Vec::with_capacity(count);
    for request in requests {
        responses.push(request.await.expect("request task"));
    }
    responses
}

/// One HTTP answer as it came over the wire.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: u16,
    /// In wire order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the status, printing the whole answer when it differs.
    #[track_caller]
    pub(crate) fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "unexpected answer: {self:#?}\nbody: {}",
            self.text()
        );
        self
    }

    /// Asserts a Matrix error body with this status and errcode.
    #[track_caller]
    pub(crate) fn assert_matrix_error(&self, status: u16, errcode: &str) {
        self.assert_status(status);
        assert_eq!(self.json()["errcode"], errcode, "body: {}", self.text());
        assert!(self.json()["error"].is_string(), "body: {}", self.text());
    }
}

/// Sends `request` (a whole HTTP/1.1 request head, plus body if any) with
/// `Connection: close` added, and reads the answer to the end.
pub(crate) async fn send(addr: SocketAddr, request: &str) -> RawResponse {
    let (head, body) = request.split_once("\r\n\r\n").expect("request has a head");
    let request = format!("{head}\r\nConnection: close\r\n\r\n{body}");
    send_bytes(addr, request.as_bytes()).await
}

/// Sends exactly `bytes` and reads the answer until the server closes.
pub(crate) async fn send_bytes(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    read_until_closed(connect_and_send(addr, bytes).await).await
}

/// A new connection with `bytes` sent on it.
pub(crate) async fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let sent = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to daemon");
        stream.write_all(bytes).await.expect("send request");
        stream
    };
    tokio::time::timeout(WAIT, sent)
        .await
        .expect("sent within the wait")
}

/// Reads one answer until the server closes the connection.
pub(crate) async fn read_until_closed(mut stream: TcpStream) -> RawResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("answer within the wait")
        .expect("read answer");
    parse_response(&raw)
}

/// One whole answer (head and body) as read from the wire.
#[track_caller]
pub(crate) fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("chunk size");
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("hex size");
        if size == 0 {
            return body;
        }
        let start = line_end + 2;
        body.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}

/// The daemon's `/metrics` text.
pub(crate) async fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics", None).await.text()
}

/// Asserts that `metrics` has exactly this line.
#[track_caller]
pub(crate) fn assert_counted(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "no line {line:?} in\n{metrics}"
    );
}

/// Polls `condition` until it holds or `WAIT` runs out.
pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback URL that refuses connections for as long as the value lives.
/// The port stays bound, never listening and without `SO_REUSEADDR`, so no
/// other socket can take it meanwhile: a port merely closed again could be
/// handed to another test's fake when tests run in parallel, and the "dead"
/// upstream would then answer.
pub(crate) struct ClosedPort {
    url: String,
    _reserved: tokio::net::TcpSocket,
}

impl std::ops::Deref for ClosedPort {
    type Target = str;

    fn deref(&self) -> &str {
        &self.url
    }
}

pub(crate) fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = socket.local_addr().expect("addr");
    ClosedPort {
        url: format!("http://{addr}"),
        _reserved: socket,
    }
}

/// A fake Cloudflare whose every mint takes `latency`.
pub(crate) fn slow_cloudflare(latency: Duration) -> CloudflareOptions {
    CloudflareOptions {
        behaviour: CfBehaviour::Mint {
            shape: IceShape::List,
            latency,
        },
        ..CloudflareOptions::default()
    }
}

/// `/metrics` once no LiveKit signalling connection is open. The relay
/// counts a connection once both legs are done: polled (an await, which
/// wait_until cannot do) under the same deadline.
pub(crate) async fn metrics_once_all_ended(addr: SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(addr).await;
        if text.contains("turnify_livekit_signalling_connections_open 0") {
            return text;
        }
        assert!(Instant::now() < deadline, "the relays never ended:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
