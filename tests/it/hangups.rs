//! Faults that come from clients and from the machine rather than from the
//! upstreams (docs/behaviour.md §5, §10): a client that hangs up changes nothing for
//! anyone else, a body cut short is not "too large", an exhausted process
//! waits instead of spinning, and no fault repeats a log line per request.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use turnify_fakes::{
    CfBehaviour, CloudflareOptions, FakeCloudflare, FakeLiveKit, FakeSynapse, IceShape, LiveKitOptions,
    SynapseOptions,
};

use crate::binary::Running;
use crate::harness::{
    ALICE, BOB, CF_KEY, CF_TOKEN, Stack, assert_counted, closed_port, connect_and_send, get, metrics,
    read_until_closed, wait_until,
};

const V3: &str = "/_matrix/client/v3/voip/turnServer";

fn minting(latency: Duration) -> CfBehaviour {
    CfBehaviour::Mint {
        shape: IceShape::List,
        latency,
    }
}

fn rate_limited(retry_after_seconds: u64) -> CloudflareOptions {
    CloudflareOptions {
        behaviour: CfBehaviour::Status {
            status: 429,
            body: r#"{"success":false,"errors":[{"code":10000,"message":"rate limited"}]}"#.to_owned(),
            retry_after: Some(retry_after_seconds),
        },
        ..CloudflareOptions::default()
    }
}

/// Asks with `token` until the answer carries a credential, for at most
/// `within`; says whether it came.
async fn credential_within(stack: &Stack, token: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let answer = stack.get(V3, Some(token)).await.assert_status(200).json();
        if answer["username"].is_string() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Given a back-off opened by a 429, when the request that probes Cloudflare
/// after the cool-down hangs up while Cloudflare is still answering it, then
/// the probe still ends and records its result, and other users get
/// credentials again.
async fn a_hung_up_probe_still_closes_the_backoff(reuse: &str) {
    let stack = Stack::start_with(
        SynapseOptions::default(),
        rate_limited(2),
        &[("CREDENTIAL_REUSE", reuse)],
    )
    .await;
    let fallback = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_eq!(fallback, serde_json::json!({}), "Synapse's own answer");
    assert_counted(
        &metrics(stack.daemon.addr).await,
        "turnify_cloudflare_backoff_active 1",
    );

    stack
        .cloudflare
        .set_behaviour(minting(Duration::from_millis(800)));
    stack.daemon.state.clock().advance(Duration::from_secs(2));
    let asked = stack.cloudflare.requests().len();
    let probe = connect_and_send(
        stack.daemon.addr,
        format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n").as_bytes(),
    )
    .await;
    wait_until("the probe reaches Cloudflare", || {
        stack.cloudflare.requests().len() > asked
    })
    .await;
    drop(probe);
    stack.cloudflare.set_behaviour(minting(Duration::ZERO));

    assert!(
        credential_within(&stack, BOB, Duration::from_secs(5)).await,
        "Cloudflare is still skipped after the probe's client hung up"
    );
    assert_counted(
        &metrics(stack.daemon.addr).await,
        "turnify_cloudflare_backoff_active 0",
    );
}

#[tokio::test]
async fn a_hung_up_probe_still_closes_the_backoff_with_reuse() {
    a_hung_up_probe_still_closes_the_backoff("true").await;
}

#[tokio::test]
async fn a_hung_up_probe_still_closes_the_backoff_without_reuse() {
    a_hung_up_probe_still_closes_the_backoff("false").await;
}

/// Given a slow mint that every waiting client abandons, the mint still
/// lands in the reuse slot: the next request reuses it instead of minting.
#[tokio::test]
async fn an_abandoned_mint_still_fills_the_reuse_slot() {
    let stack = Stack::start().await;
    stack
        .cloudflare
        .set_behaviour(minting(Duration::from_millis(300)));
    let waiting = connect_and_send(
        stack.daemon.addr,
        format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n").as_bytes(),
    )
    .await;
    wait_until("the mint reaches Cloudflare", || {
        stack.cloudflare.mint_count() == 1
    })
    .await;
    drop(waiting);
    wait_until("no mint in flight", || stack.daemon.state.mints_in_flight() == 0).await;
    let answer = stack.get(V3, Some(ALICE)).await.assert_status(200).json();
    assert_eq!(
        answer["username"].as_str(),
        stack.cloudflare.last_minted().map(|c| c.username).as_deref()
    );
    assert_eq!(stack.cloudflare.mint_count(), 1, "reused, not minted again");
}

/// Given a request whose body ends early, when the client half-closes or
/// resets the connection, then the answer is not 413 and nothing reaches
/// Synapse.
#[tokio::test]
async fn a_body_cut_short_is_not_too_large() {
    let stack = Stack::start().await;
    let head = format!(
        "GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    let mut half_closed = connect_and_send(stack.daemon.addr, head.as_bytes()).await;
    half_closed.shutdown().await.expect("half-close");
    let answer = read_until_closed(half_closed).await;
    answer.assert_matrix_error(400, "M_UNKNOWN");

    let reset = connect_and_send(stack.daemon.addr, head.as_bytes()).await;
    reset.set_zero_linger().expect("a zero linger sends a reset");
    drop(reset);
    let addr = stack.daemon.addr;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        text = metrics(addr).await;
        if text.contains(r#"turnify_requests_total{outcome="body-error",auth="homeserver"} 2"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_counted(
        &text,
        r#"turnify_requests_total{outcome="body-error",auth="homeserver"} 2"#,
    );
    assert!(!text.contains(r#"outcome="rejected""#), "{text}");
    assert!(stack.synapse.requests().is_empty());
}

/// Lines of the daemon's JSON log whose message contains `text`.
pub(crate) fn lines_with(log: &str, text: &str) -> usize {
    log.lines().filter(|line| line.contains(text)).count()
}

/// Given a proxy that sends every path here and a Synapse that is down,
/// when 200 requests of each kind arrive, then each condition is logged
/// once, not once per request.
#[tokio::test]
async fn misrouted_requests_and_a_dead_synapse_do_not_flood_the_log() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let daemon = Running::against(&synapse, &cloudflare, &[]).await;
    for _ in 0..200 {
        get(daemon.addr, "/_matrix/client/v3/sync", Some(ALICE))
            .await
            .assert_status(404);
    }
    let log = daemon.terminate().await.stderr;
    assert_eq!(lines_with(&log, r#""outcome":"passed-through""#), 200, "{log}");
    assert_eq!(lines_with(&log, "reverse proxy should send only"), 1, "{log}");

    let dead = closed_port();
    let daemon = Running::start(&[
        ("SYNAPSE_BASE_URL", &dead),
        ("CF_TURN_API_BASE_URL", &cloudflare.base_url()),
        ("CF_TURN_KEY_ID", CF_KEY),
        ("CF_TURN_API_TOKEN", CF_TOKEN),
    ])
    .await;
    for _ in 0..200 {
        get(daemon.addr, V3, Some(ALICE)).await.assert_status(502);
        get(daemon.addr, "/_matrix/client/v3/sync", Some(ALICE))
            .await
            .assert_status(502);
    }
    let exited = daemon.terminate().await;
    let log = exited.stderr;
    assert_eq!(lines_with(&log, r#""outcome":"upstream-error""#), 400, "{log}");
    assert_eq!(lines_with(&log, "reverse proxy should send only"), 1, "{log}");
    assert_eq!(
        lines_with(&log, "Synapse failed on a turnServer request"),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "Synapse failed on a passed-through request"),
        1,
        "{log}"
    );
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks (100 a second
    // on Linux).
    let after_name = stat.rsplit_once(')').expect("stat has a command name").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Given a daemon whose descriptor limit is lowered, once it runs, to a few
/// more than it has open (below what its connection caps were derived
/// from, so that they do not hold accepting back), when 100 clients connect
/// and stay silent, then accepting fails for want of descriptors and the
/// daemon waits between attempts: under 20 % of a core and under 50 log
/// lines in 5 s. With its limit back and the clients gone, it serves
/// normally again.
#[tokio::test]
async fn out_of_descriptors_the_daemon_waits_instead_of_spinning() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let (synapse_url, cloudflare_url) = (synapse.base_url(), cloudflare.base_url());
    let daemon = Running::start_with_nofile(
        64,
        &[
            ("SYNAPSE_BASE_URL", &synapse_url),
            ("CF_TURN_API_BASE_URL", &cloudflare_url),
            ("CF_TURN_KEY_ID", CF_KEY),
            ("CF_TURN_API_TOKEN", CF_TOKEN),
        ],
    )
    .await;
    daemon.set_soft_nofile(daemon.open_descriptors() + 4).await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(
            tokio::net::TcpStream::connect(daemon.addr)
                .await
                .expect("the kernel queues the connection"),
        );
    }
    wait_until("accepting runs out of descriptors", || {
        daemon.log_so_far().contains("accept")
    })
    .await;
    let (cpu_before, lines_before) = (cpu_time(daemon.pid()), daemon.log_so_far().lines().count());
    // The measurement window itself: the head deadline (10 s) would start
    // freeing descriptors after it, so it must stay well below that.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu = cpu_time(daemon.pid()) - cpu_before;
    let lines = daemon.log_so_far().lines().count() - lines_before;
    eprintln!("out of descriptors: {cpu:?} of CPU and {lines} log lines in 5 s");
    assert!(cpu < Duration::from_secs(1), "{cpu:?} of CPU in 5 s");
    assert!(lines < 50, "{lines} log lines in 5 s:\n{}", daemon.log_so_far());

    // Back to the limit the caps were derived from: the caps, not the
    // limit, hold the clients back now.
    daemon.set_soft_nofile(64).await;
    drop(silent);
    let addr = daemon.addr;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(2), get(addr, V3, Some(ALICE))).await;
        if let Ok(answer) = answer
            && answer.status == 200
        {
            assert!(answer.json()["username"].is_string(), "{}", answer.text());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving again after the clients left"
        );
    }
    let log = daemon.terminate().await.stderr;
    // One warning per stretch of exhaustion, then one line when it ends.
    // When the silent clients leave, the daemon accepts their dead
    // connections still queued in the kernel and may run out once more: a
    // second stretch is right, a second warning within one is not.
    let stretches: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            if line.contains("accepting connections failed") {
                Some("failed")
            } else if line.contains("accepting connections works again") {
                Some("works again")
            } else {
                None
            }
        })
        .collect();
    assert!(!stretches.is_empty(), "{log}");
    assert!(
        stretches
            .chunks(2)
            .all(|stretch| stretch == ["failed", "works again"]),
        "{stretches:?}\n{log}"
    );
}

/// The finding this guards against: with each front door capped at
/// MAX_CONNECTIONS alone, requests held on the LiveKit door (two
/// descriptors each: the client's and LiveKit's) used up the process's
/// descriptors, and turnServer and /healthz timed out. Given the daemon
/// with both doors under a 256-descriptor limit, when 150 clients hold
/// requests on the LiveKit door (bodies that have not all come, which
/// LiveKit waits for), then the LiveKit door stops at its derived cap,
/// turnServer and /healthz are answered at once, and accepting never fails.
#[tokio::test]
async fn held_livekit_requests_leave_the_matrix_door_and_healthz_their_descriptors() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let livekit = FakeLiveKit::start(LiveKitOptions::default()).await;
    let (synapse_url, cloudflare_url, livekit_url) =
        (synapse.base_url(), cloudflare.base_url(), livekit.base_url());
    let daemon = Running::start_with_nofile(
        256,
        &[
            ("SYNAPSE_BASE_URL", &synapse_url),
            ("CF_TURN_API_BASE_URL", &cloudflare_url),
            ("CF_TURN_KEY_ID", CF_KEY),
            ("CF_TURN_API_TOKEN", CF_TOKEN),
            ("LIVEKIT_SFU_URL", &livekit_url),
            ("LIVEKIT_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    daemon
        .wait_for_log("the connection caps", |log| log.contains("connection caps"))
        .await;
    let log = daemon.log_so_far();
    let caps: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .find(|event: &serde_json::Value| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("connection caps"))
        })
        .unwrap_or_else(|| panic!("no caps line in {log}"));
    // 256 descriptors, 32 reserved, the rest halved between the doors at
    // two per connection.
    assert_eq!(caps["livekit_max_connections"], 56, "{caps}");
    assert_eq!(caps["matrix_max_connections"], 56, "{caps}");
    assert_eq!(caps["set_by"], "file descriptors", "{caps}");
    let started: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .find(|event: &serde_json::Value| event["livekit_listen"].is_string())
        .unwrap_or_else(|| panic!("no start-up line in {log}"));
    let livekit_door: std::net::SocketAddr = started["livekit_listen"]
        .as_str()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("{started}"));

    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(
            connect_and_send(
                livekit_door,
                b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: lk\r\nContent-Length: 100000\r\n\r\n{",
            )
            .await,
        );
    }
    daemon
        .wait_for_log("the LiveKit door at its cap", |log| {
            log.contains("connection limit reached") || log.contains("accepting connections failed")
        })
        .await;
    for path in [V3, "/healthz"] {
        let answer = tokio::time::timeout(Duration::from_secs(2), get(daemon.addr, path, Some(ALICE)))
            .await
            .unwrap_or_else(|_| panic!("{path} not answered in 2 s; log:\n{}", daemon.log_so_far()));
        answer.assert_status(200);
    }
    drop(held);
    let log = daemon.terminate().await.stderr;
    assert_eq!(lines_with(&log, "accepting connections failed"), 0, "{log}");
    assert_eq!(lines_with(&log, "Too many open files"), 0, "{log}");
    let limit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection limit reached"))
        .collect();
    assert!(!limit.is_empty(), "{log}");
    assert!(limit.iter().all(|l| l.contains(r#""door":"livekit""#)), "{log}");
}
