//! Chaos from the client side (docs/behaviour.md §5, §10): 500 requests over 32
//! connections at a time while Cloudflare keeps changing between slow,
//! failing, rate-limiting and healthy, and a third of the clients hang up at
//! some moment of their exchange. Afterwards, with the upstreams healthy,
//! nothing may be left behind: no work in flight, no back-off, no socket, no
//! flood in the log, and every user gets credentials again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnify_fakes::{CfBehaviour, CloudflareOptions, IceShape, SynapseBehaviour, SynapseOptions};

use crate::harness::{Stack, WAIT, metrics, parse_response};

const V3: &str = "/_matrix/client/v3/voip/turnServer";
const REQUESTS: usize = 500;
const CONNECTIONS: usize = 32;
const USERS: usize = 8;
/// Synapse's answer takes this long, so that a client can hang up while the
/// daemon waits for it.
const SYNAPSE_DELAY: Duration = Duration::from_millis(20);
/// How long each of Cloudflare's moods lasts.
const MOOD: Duration = Duration::from_millis(150);
/// How much of a warning may repeat: a handful, not one per request.
const MAX_REPEATS: usize = 5;

fn token(user: usize) -> String {
    format!("syt_chaos_user_{user}")
}

/// When a client gives up, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HangUp {
    BeforeTheHeadIsComplete,
    RightAfterTheHead,
    WhileSynapseIsAsked,
    WhileCloudflareIsAsked,
    MidAnswer,
}

const PHASES: [HangUp; 5] = [
    HangUp::BeforeTheHeadIsComplete,
    HangUp::RightAfterTheHead,
    HangUp::WhileSynapseIsAsked,
    HangUp::WhileCloudflareIsAsked,
    HangUp::MidAnswer,
];

/// xorshift64: the same "random" run every time, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }
}

/// One request, given up at `hang_up` if set; the status when it completed.
async fn exchange(addr: SocketAddr, token: &str, hang_up: Option<HangUp>) -> Option<u16> {
    let head =
        format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    if hang_up == Some(HangUp::BeforeTheHeadIsComplete) {
        let _ = stream.write_all(&head.as_bytes()[..head.len() / 2]).await;
        return None;
    }
    stream.write_all(head.as_bytes()).await.expect("send the head");
    match hang_up {
        Some(HangUp::RightAfterTheHead) => return None,
        Some(HangUp::WhileSynapseIsAsked) => {
            tokio::time::sleep(SYNAPSE_DELAY / 4).await;
            return None;
        }
        Some(HangUp::WhileCloudflareIsAsked) => {
            tokio::time::sleep(SYNAPSE_DELAY * 2).await;
            return None;
        }
        Some(HangUp::MidAnswer) => {
            let mut first = [0u8; 12];
            let _ = tokio::time::timeout(WAIT, stream.read(&mut first)).await;
            return None;
        }
        Some(HangUp::BeforeTheHeadIsComplete) | None => {}
    }
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("an answer within the wait")
        .expect("read the answer");
    Some(parse_response(&raw).status)
}

/// Sockets of this process by the port they use: (towards `port`, at `port`).
/// The test process also holds the other tests' sockets, so only those of
/// this test's ports are counted.
fn sockets_of_port(port: u16) -> (usize, usize) {
    let own: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let (mut towards, mut at) = (0, 0);
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port_of = |address: &str| {
                address
                    .rsplit_once(':')
                    .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
            };
            const LISTEN: &str = "0A";
            if fields.len() < 10 || fields[3] == LISTEN || !own.contains(fields[9]) {
                continue;
            }
            if port_of(fields[1]) == Some(port) {
                at += 1;
            }
            if port_of(fields[2]) == Some(port) {
                towards += 1;
            }
        }
    }
    (towards, at)
}

/// A `MakeWriter` that keeps the log in memory.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// Warnings and errors by message, with how often each was logged.
fn warnings_by_message(log: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if matches!(event["level"].as_str(), Some("WARN" | "ERROR")) {
            let message = event["fields"]["message"].as_str().unwrap_or_default().to_owned();
            *counts.entry(message).or_insert(0) += 1;
        }
    }
    counts
}

/// Runs on the test's own thread (a current-thread runtime), so the log of
/// every task of the daemon reaches this test's subscriber.
#[tokio::test]
async fn clients_hanging_up_amid_a_flapping_cloudflare_leave_nothing_behind() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _log_guard = tracing::subscriber::set_default(subscriber);

    let synapse = SynapseOptions {
        users: (0..USERS)
            .map(|user| (token(user), format!("@user{user}:localhost")))
            .collect(),
        behaviour: SynapseBehaviour::Delay(SYNAPSE_DELAY),
        ..SynapseOptions::default()
    };
    let stack = Stack::start_with(
        synapse,
        CloudflareOptions::default(),
        &[("CF_TIMEOUT_SECONDS", "1")],
    )
    .await;
    let addr = stack.daemon.addr;
    let clock = stack.daemon.state.clock();

    let done = AtomicBool::new(false);
    let moods = async {
        let mut mood = 0usize;
        while !done.load(Ordering::Relaxed) {
            stack.cloudflare.set_behaviour(match mood % 4 {
                0 => CfBehaviour::Mint {
                    shape: IceShape::List,
                    latency: Duration::from_millis(300),
                },
                1 => CfBehaviour::fail(503),
                2 => CfBehaviour::Status {
                    status: 429,
                    body: r#"{"success":false}"#.to_owned(),
                    retry_after: Some(5),
                },
                _ => CfBehaviour::Mint {
                    shape: IceShape::List,
                    latency: Duration::ZERO,
                },
            });
            // Each mood ends any cool-down, so probes keep happening and
            // clients keep hanging up on some of them, and takes every
            // credential past its half-life, so each user mints again.
            clock.advance(Duration::from_secs(12 * 3600 + 30));
            mood += 1;
            tokio::time::sleep(MOOD).await;
        }
    };

    let next = AtomicUsize::new(0);
    let plans: Vec<(usize, Option<HangUp>)> = {
        let mut rng = Rng(0x5eed_cafe_f00d_d00d);
        (0..REQUESTS)
            .map(|_| {
                let user = rng.below(USERS);
                let hang_up = (rng.below(3) == 0).then(|| PHASES[rng.below(PHASES.len())]);
                (user, hang_up)
            })
            .collect()
    };
    let completed: Mutex<HashMap<u16, usize>> = Mutex::default();
    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(user, hang_up)) = plans.get(i) else {
                return;
            };
            if let Some(status) = exchange(addr, &token(user), hang_up).await {
                *completed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(status)
                    .or_insert(0) += 1;
            }
        }
    };
    let started = Instant::now();
    let load = async {
        futures_util::future::join_all((0..CONNECTIONS).map(|_| worker())).await;
        done.store(true, Ordering::Relaxed);
    };
    tokio::join!(load, moods);
    let took = started.elapsed();

    let mut hang_ups: BTreeMap<String, usize> = BTreeMap::new();
    for (_, hang_up) in &plans {
        if let Some(phase) = hang_up {
            *hang_ups.entry(format!("{phase:?}")).or_insert(0) += 1;
        }
    }
    let completed = completed.into_inner().unwrap_or_else(PoisonError::into_inner);
    eprintln!(
        "chaos: {REQUESTS} requests in {took:?}; completed by status {completed:?}; hang-ups {hang_ups:?}"
    );
    assert_eq!(
        completed.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "every completed request got Synapse's 200 or credentials"
    );

    // Healthy again, and past any cool-down (a 429's is at most 300 s).
    stack.cloudflare.set_behaviour(CfBehaviour::Mint {
        shape: IceShape::List,
        latency: Duration::ZERO,
    });
    clock.advance(Duration::from_secs(300));
    let deadline = Instant::now() + WAIT;
    let mut text = metrics(addr).await;
    while !(text.contains("turnify_requests_in_flight 0\n")
        && text.contains("turnify_cloudflare_mints_in_flight 0\n"))
    {
        assert!(Instant::now() < deadline, "work still in flight:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = metrics(addr).await;
    }
    for user in 0..USERS {
        let answer = crate::harness::get(addr, V3, Some(&token(user))).await;
        let body = answer.assert_status(200).json();
        assert!(
            body["username"].is_string(),
            "user {user} gets credentials again at once: {body}"
        );
    }
    let text = metrics(addr).await;
    let counters: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("turnify_requests_total") || l.starts_with("turnify_cloudflare_calls_total")
        })
        .collect();
    eprintln!("chaos: counters at the end {counters:#?}");
    for line in [
        "turnify_requests_in_flight 0",
        "turnify_cloudflare_mints_in_flight 0",
        "turnify_cloudflare_backoff_active 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    let port = addr.port();
    let deadline = Instant::now() + WAIT;
    while sockets_of_port(port) != (0, 0) {
        assert!(
            Instant::now() < deadline,
            "sockets to or at the daemon left: {:?}",
            sockets_of_port(port)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The daemon's pools may keep idle connections to the upstreams.
    let (to_synapse, _) = sockets_of_port(stack.synapse.addr().port());
    let (to_cloudflare, _) = sockets_of_port(stack.cloudflare.addr().port());
    eprintln!("chaos: idle pool connections to Synapse {to_synapse}, to Cloudflare {to_cloudflare}");
    assert!(to_synapse <= CONNECTIONS, "{to_synapse} connections to Synapse");
    assert!(
        to_cloudflare <= CONNECTIONS,
        "{to_cloudflare} connections to Cloudflare"
    );

    let warnings = warnings_by_message(&log.text());
    eprintln!("chaos: warnings by message {warnings:#?}");
    for (message, count) in &warnings {
        assert!(
            *count <= MAX_REPEATS,
            "logged {count} times: {message}\n{}",
            log.text()
        );
    }
}
