//! `SYNAPSE_BASE_URL` leading back to the daemon (the public URL, through
//! the proxy, to the daemon again): the request the daemon sent carries its
//! `Via`, so when it comes back it is answered at once with a Matrix error
//! instead of going round until the connections run out, and the cause is
//! logged once, not once per request.

use turnify_fakes::{CloudflareOptions, FakeCloudflare, FakeSynapse, SynapseOptions};

use crate::binary::Running;
use crate::harness::{ALICE, CF_KEY, CF_TOKEN, WAIT, assert_counted, get, metrics, send};

const TURN: &str = "/_matrix/client/v3/voip/turnServer";
const LOOP_NAMED: &str = "SYNAPSE_BASE_URL must be the homeserver's own listener, not the public URL";

/// A loopback port nothing listens on yet: the daemon will, and its
/// `SYNAPSE_BASE_URL` must name it before it starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The daemon as a binary, its `SYNAPSE_BASE_URL` its own address: the
/// shortest loop, the same one a proxy in between makes.
async fn looping_daemon(cloudflare: &FakeCloudflare) -> Running {
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let cloudflare = cloudflare.base_url();
    Running::start(&[
        ("LISTEN_ADDR", &listen),
        ("SYNAPSE_BASE_URL", &base),
        ("CF_TURN_API_BASE_URL", &cloudflare),
        ("CF_TURN_KEY_ID", CF_KEY),
        ("CF_TURN_API_TOKEN", CF_TOKEN),
    ])
    .await
}

fn loop_warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains(LOOP_NAMED)).collect()
}

/// Given `SYNAPSE_BASE_URL` pointing back at the daemon, when clients ask,
/// then each request is answered at once with the daemon's 508 (the looped
/// copy was not forwarded again), no Cloudflare credential is minted, and
/// the log names the cause in one line for all of them.
#[tokio::test]
async fn a_request_loop_is_answered_at_once_and_named_in_one_log_line() {
    const REQUESTS: usize = 20;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let daemon = looping_daemon(&cloudflare).await;
    let started = std::time::Instant::now();
    for i in 0..REQUESTS {
        // Both routes: the turnServer one and a passed-through path.
        let path = if i % 2 == 0 {
            TURN
        } else {
            "/_matrix/client/v3/sync"
        };
        let response = get(daemon.addr, path, Some(ALICE)).await;
        response.assert_matrix_error(508, "M_UNKNOWN");
        assert!(
            response.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(LOOP_NAMED)),
            "{}",
            response.text()
        );
        // The looped copy's answer, then the first hop's: both went through the daemon.
        let via: Vec<&str> = response
            .headers
            .iter()
            .filter(|(name, _)| name == "via")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(via, ["1.1 matrix-turnify"; 2], "{response:#?}");
    }
    assert!(
        started.elapsed() < WAIT,
        "{REQUESTS} looped requests took {:?}",
        started.elapsed()
    );
    let text = metrics(daemon.addr).await;
    assert_counted(
        &text,
        &format!("turnify_requests_total{{outcome=\"loop\",auth=\"homeserver\"}} {REQUESTS}"),
    );
    assert_eq!(cloudflare.mint_count(), 0);
    let log = daemon.terminate().await.stderr;
    let warnings = loop_warnings(&log);
    assert_eq!(
        warnings.len(),
        1,
        "one line for {REQUESTS} looped requests:\n{log}"
    );
    assert!(warnings[0].contains("\"level\":\"WARN\""), "{log}");
}

/// Given a daemon with the right `SYNAPSE_BASE_URL`, its requests carry its
/// `Via` (the mark a loop is known by), and a client's own `Via` hops stay
/// before it; nothing about the loop is logged.
#[tokio::test]
async fn requests_to_the_homeserver_carry_the_daemons_via_after_the_clients() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let daemon = Running::against(&synapse, &cloudflare, &[]).await;
    let response = send(
        daemon.addr,
        &format!("GET {TURN} HTTP/1.1\r\nHost: x\r\nVia: 1.1 proxy\r\nAuthorization: Bearer {ALICE}\r\n\r\n"),
    )
    .await;
    response.assert_status(200);
    let request = synapse.requests().pop().expect("the homeserver was asked");
    let via: Vec<&str> = request
        .headers
        .get_all("via")
        .iter()
        .map(|value| value.to_str().unwrap_or_default())
        .collect();
    assert_eq!(via, ["1.1 proxy", "1.1 matrix-turnify"], "{request:#?}");
    let log = daemon.terminate().await.stderr;
    assert!(loop_warnings(&log).is_empty(), "{log}");
}
