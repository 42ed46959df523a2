//! The built binary as an admin runs it: start-up errors, the healthcheck
//! subcommand, SIGTERM, and what its logs never contain.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use turnify_fakes::{CfBehaviour, CloudflareOptions, FakeCloudflare, FakeSynapse, SynapseOptions};

use crate::harness::{WAIT, closed_port_url, send};

const BINARY: &str = env!("CARGO_BIN_EXE_matrix-turnify");

fn command(vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command.env_clear().envs(vars.iter().copied()).kill_on_drop(true);
    command
}

/// Runs the binary to its end and returns (exit code, stdout, stderr).
pub async fn run_to_end(args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = tokio::time::timeout(WAIT, command(vars).args(args).output())
        .await
        .expect("binary exits in time")
        .expect("binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_one_line_naming(stderr: &str, variable: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line, got {stderr:?}");
    assert!(
        lines[0].contains(&format!("{variable}: ")),
        "names {variable}: {stderr:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn each_missing_or_invalid_setting_stops_startup_with_one_line() {
    let base: [(&str, &str); 2] = [("CF_TURN_KEY_ID", "k"), ("CF_TURN_API_TOKEN", "t")];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "CF_TURN_KEY_ID"),
        (vec![("CF_TURN_API_TOKEN", "t")], "CF_TURN_KEY_ID"),
        (vec![("CF_TURN_KEY_ID", "k")], "CF_TURN_API_TOKEN"),
        (vec![("CF_TURN_TOKEN_ID", "k")], "CF_TURN_API_TOKEN"),
        (
            [&base[..], &[("TURN_CREDENTIAL_TTL_SECONDS", "200000")]].concat(),
            "TURN_CREDENTIAL_TTL_SECONDS",
        ),
        (
            [&base[..], &[("SYNAPSE_BASE_URL", "synapse")]].concat(),
            "SYNAPSE_BASE_URL",
        ),
        (
            [&base[..], &[("LISTEN_ADDR", "everywhere")]].concat(),
            "LISTEN_ADDR",
        ),
        (
            [&base[..], &[("CF_TURN_API_BASE_URL", "http://example.com/v1")]].concat(),
            "CF_TURN_API_BASE_URL",
        ),
        ([&base[..], &[("LOG_LEVEL", "loud")]].concat(), "LOG_LEVEL"),
        (
            [&base[..], &[("CF_TURN_API_TOKEN_FILE", "/nonexistent/secret")]].concat(),
            "CF_TURN_API_TOKEN_FILE",
        ),
    ];
    for (vars, variable) in cases {
        let (code, stdout, stderr) = run_to_end(&[], &vars).await;
        assert_eq!(code, Some(1), "{vars:?}: {stderr}");
        assert!(stdout.is_empty());
        assert_one_line_naming(&stderr, variable);
    }
}

#[tokio::test]
async fn an_address_in_use_stops_startup_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, _, stderr) = run_to_end(
        &[],
        &[
            ("CF_TURN_KEY_ID", "k"),
            ("CF_TURN_API_TOKEN", "t"),
            ("LISTEN_ADDR", &addr),
        ],
    )
    .await;
    assert_eq!(code, Some(1));
    assert_one_line_naming(&stderr, "LISTEN_ADDR");
}

#[tokio::test]
async fn version_and_unknown_arguments() {
    let (code, stdout, _) = run_to_end(&["--version"], &[]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("matrix-turnify {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, _, stderr) = run_to_end(&["frobnicate"], &[]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("usage"));
}

/// The daemon as a child process, with its log collected.
struct Running {
    child: Child,
    addr: String,
    log: tokio::task::JoinHandle<String>,
}

impl Running {
    async fn start(vars: &[(&str, &str)]) -> Running {
        let mut all = vec![("LISTEN_ADDR", "127.0.0.1:0"), ("LOG_FORMAT", "json")];
        all.extend_from_slice(vars);
        let mut child = command(&all)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        let mut first = String::new();
        let addr = tokio::time::timeout(WAIT, read_listen_addr(&mut stderr, &mut first))
            .await
            .unwrap_or_else(|_| panic!("no start-up line; log so far: {first}"));
        let log = tokio::spawn(async move {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest).await;
            first + &rest
        });
        Running { child, addr, log }
    }

    /// Sends SIGTERM and returns (exit code, the whole log).
    async fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().expect("still running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits within the wait after SIGTERM")
            .expect("wait");
        let log = tokio::time::timeout(WAIT, self.log)
            .await
            .expect("log ends")
            .expect("log task");
        (exit.code(), log)
    }
}

async fn read_listen_addr(stderr: &mut BufReader<ChildStderr>, seen: &mut String) -> String {
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).await.expect("read log");
        assert!(read > 0, "daemon exited before starting: {seen}");
        seen.push_str(&line);
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(addr) = event["listen"].as_str()
        {
            return addr.to_owned();
        }
        if let Some((_, rest)) = line.split_once(" listen=") {
            return rest.split_whitespace().next().unwrap_or_default().to_owned();
        }
    }
}

#[tokio::test]
async fn healthcheck_subcommand_reports_a_running_daemon() {
    let daemon = Running::start(&[
        ("CF_TURN_KEY_ID", "k"),
        ("CF_TURN_API_TOKEN", "t"),
        ("SYNAPSE_BASE_URL", &closed_port_url().await),
    ])
    .await;
    let listen = daemon.addr.clone();
    let (code, _, stderr) = run_to_end(&["healthcheck"], &[("LISTEN_ADDR", &listen)]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (exit, _) = daemon.terminate().await;
    assert_eq!(exit, Some(0), "SIGTERM is a clean exit");
    let (code, _, stderr) = run_to_end(&["healthcheck"], &[("LISTEN_ADDR", &listen)]).await;
    assert_eq!(code, Some(1), "nothing listens any more");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[tokio::test]
async fn debug_logs_never_contain_tokens_or_turn_passwords() {
    // Distinctive canaries, so a leak anywhere in the output is found.
    const ACCESS_TOKEN: &str = "syt_CANARYaccessTOKEN_4242";
    const CF_API_TOKEN: &str = "CANARY-cloudflare-api-token-9191";
    const COTURN_PASSWORD: &str = "CANARYcoturnPASSWORD0000";
    let synapse = FakeSynapse::start(SynapseOptions {
        users: vec![(ACCESS_TOKEN.to_owned(), "@canary:localhost".to_owned())],
        turn_body: format!(
            r#"{{"username":"1795352607:@canary:localhost","password":"{COTURN_PASSWORD}","ttl":3600,"uris":["turn:turn.example.test:3478"]}}"#
        ),
        ..SynapseOptions::default()
    })
    .await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions {
        api_token: CF_API_TOKEN.to_owned(),
        ..CloudflareOptions::default()
    })
    .await;
    // Without reuse, so that a failing Cloudflare leads to the fallback.
    let daemon = Running::start(&[
        ("CREDENTIAL_REUSE", "false"),
        ("LOG_LEVEL", "debug"),
        ("LOG_FORMAT", "text"),
        ("SYNAPSE_BASE_URL", &synapse.base_url()),
        ("CF_TURN_API_BASE_URL", &cloudflare.base_url()),
        ("CF_TURN_KEY_ID", "test-key-id"),
        ("CF_TURN_API_TOKEN", CF_API_TOKEN),
    ])
    .await;
    let addr: std::net::SocketAddr = daemon.addr.parse().expect("addr");
    let path = "/_matrix/client/v3/voip/turnServer";

    // Success with the header, then with the query parameter.
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_TOKEN}\r\n\r\n"),
    )
    .await
    .assert_status(200);
    send(
        addr,
        &format!("GET {path}?access_token={ACCESS_TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .assert_status(200);
    let minted = cloudflare.last_minted().expect("minted");
    // A refused token, a pass-through with the token, and a fallback.
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_TOKEN}x\r\n\r\n"),
    )
    .await
    .assert_status(401);
    send(
        addr,
        &format!("GET /echo/x?access_token={ACCESS_TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .assert_status(200);
    cloudflare.set_behaviour(CfBehaviour::fail(401));
    let fallback = send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_TOKEN}\r\n\r\n"),
    )
    .await;
    assert!(
        fallback.text().contains(COTURN_PASSWORD),
        "the fallback answer itself carries it"
    );

    let (exit, log) = daemon.terminate().await;
    assert_eq!(exit, Some(0));
    for canary in [
        ACCESS_TOKEN,
        CF_API_TOKEN,
        COTURN_PASSWORD,
        &minted.username,
        &minted.credential,
    ] {
        assert!(!log.contains(canary), "{canary} leaked into the log:\n{log}");
    }
    // The log still says what happened, one line per request.
    for outcome in [
        "outcome=cloudflare",
        "outcome=passed-through",
        "outcome=synapse-fallback",
    ] {
        assert!(log.contains(outcome), "{outcome} missing:\n{log}");
    }
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions {
        behaviour: CfBehaviour::Mint {
            shape: turnify_fakes::IceShape::List,
            latency: Duration::from_millis(500),
        },
        ..CloudflareOptions::default()
    })
    .await;
    let daemon = Running::start(&[
        ("SYNAPSE_BASE_URL", &synapse.base_url()),
        ("CF_TURN_API_BASE_URL", &cloudflare.base_url()),
        ("CF_TURN_KEY_ID", "test-key-id"),
        ("CF_TURN_API_TOKEN", "test-api-token"),
    ])
    .await;
    let addr: std::net::SocketAddr = daemon.addr.parse().expect("addr");
    let in_flight = tokio::spawn(async move {
        send(
            addr,
            "GET /_matrix/client/v3/voip/turnServer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer syt_alice_token\r\n\r\n",
        )
        .await
    });
    crate::harness::wait_until("the request to reach Cloudflare", || {
        !cloudflare.requests().is_empty()
    })
    .await;
    let (exit, _) = daemon.terminate().await;
    assert_eq!(exit, Some(0));
    let response = in_flight.await.expect("request task");
    response.assert_status(200);
    assert!(response.json()["password"].is_string());
}
