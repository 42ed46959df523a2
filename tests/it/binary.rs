//! The built binary as an admin runs it: start-up errors and the healthcheck
//! subcommand; `Running` starts it for the other modules' tests.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;
use turnify_fakes::{FakeCloudflare, FakeSynapse};

use crate::harness::{CF_KEY, CF_TOKEN, WAIT, closed_port, wait_until};

const BINARY: &str = env!("CARGO_BIN_EXE_matrix-turnify");

fn command(vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command.env_clear().envs(vars.iter().copied()).kill_on_drop(true);
    command
}

/// The binary with at most `nofile` file descriptors: util-linux `prlimit`
/// sets the limit and then execs it, so the process id stays the daemon's.
fn command_with_nofile(nofile: u32, vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(BINARY)
        .env_clear()
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    command
}

/// Runs the binary to its end and returns (exit code, stdout, stderr).
pub(crate) async fn run_to_end(args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, String, String) {
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

/// Given several wrong settings and a misspelt name, start-up stops with
/// the typo warning first, then one line per wrong setting, so one start
/// shows everything to fix.
#[tokio::test]
async fn every_wrong_setting_is_reported_at_once_after_the_typo_warnings() {
    /// The environment, the warnings, the variables of the errors.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        (&[], &[], &["CF_TURN_KEY_ID", "CF_TURN_API_TOKEN"]),
        (
            &[("CF_TURN_KEY_ID", "k"), ("CF_TURN_API_TOKN", "typo")],
            &["CF_TURN_API_TOKN is not a matrix-turnify variable; did you mean CF_TURN_API_TOKEN?"],
            &["CF_TURN_API_TOKEN"],
        ),
        (
            &[
                ("CF_TURN_API_TOKEN", "t"),
                ("CF_TURN_KEY_IDS", "k"),
                ("LOG_LEVEL", "loud"),
                ("CREDENTIAL_REUSE", "banana"),
            ],
            &["CF_TURN_KEY_IDS is not a matrix-turnify variable; did you mean CF_TURN_KEY_ID?"],
            &["CF_TURN_KEY_ID", "LOG_LEVEL", "CREDENTIAL_REUSE"],
        ),
    ];
    for (vars, warnings, errors) in cases {
        let (code, stdout, stderr) = run_to_end(&[], vars).await;
        assert_eq!(code, Some(1), "{vars:?}: {stderr}");
        assert!(stdout.is_empty());
        let expected: Vec<String> = warnings
            .iter()
            .map(|w| format!("matrix-turnify: warning: {w}"))
            .chain(
                errors
                    .iter()
                    .map(|v| format!("matrix-turnify: configuration error: {v}: ")),
            )
            .collect();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{vars:?}: {stderr}");
        for (line, expected) in lines.iter().zip(&expected) {
            assert!(
                line.starts_with(expected.as_str()),
                "{line:?}, expected {expected:?}"
            );
        }
        assert!(
            !stderr.contains("typo") && !stderr.contains("panicked"),
            "{stderr}"
        );
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

/// The daemon as a child process, its stdout and stderr collected as they
/// come, so a test can wait for a log line or read everything after exit.
pub(crate) struct Running {
    child: Child,
    pub(crate) addr: SocketAddr,
    stdout: Collected,
    stderr: Collected,
}

/// What the daemon printed, once it has exited and both pipes are closed.
pub(crate) struct Exited {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Running {
    /// Starts the binary on an ephemeral loopback port with JSON logs; `vars`
    /// come after those defaults, so they can override them.
    pub(crate) async fn start(vars: &[(&str, &str)]) -> Running {
        Self::spawn(command(&Self::with_defaults(vars))).await
    }

    /// Like [`Running::start`], limited to `nofile` file descriptors.
    pub(crate) async fn start_with_nofile(nofile: u32, vars: &[(&str, &str)]) -> Running {
        Self::spawn(command_with_nofile(nofile, &Self::with_defaults(vars))).await
    }

    fn with_defaults<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = vec![("LISTEN_ADDR", "127.0.0.1:0"), ("LOG_FORMAT", "json")];
        all.extend_from_slice(vars);
        all
    }

    async fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stdout = Collected::spawn(
            BufReader::new(child.stdout.take().expect("stdout piped")),
            String::new(),
        );
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        let mut first = String::new();
        let addr = tokio::time::timeout(WAIT, read_listen_addr(&mut stderr, &mut first))
            .await
            .unwrap_or_else(|_| panic!("no start-up line; log so far: {first}"));
        let addr = addr.parse().unwrap_or_else(|_| panic!("listen address {addr:?}"));
        Running {
            child,
            addr,
            stdout,
            stderr: Collected::spawn(stderr, first),
        }
    }

    /// The daemon against these fakes, with the harness's key id and API
    /// token, and `extra` settings.
    pub(crate) async fn against(
        synapse: &FakeSynapse,
        cloudflare: &FakeCloudflare,
        extra: &[(&str, &str)],
    ) -> Running {
        let (synapse, cloudflare) = (synapse.base_url(), cloudflare.base_url());
        let mut vars = vec![
            ("SYNAPSE_BASE_URL", synapse.as_str()),
            ("CF_TURN_API_BASE_URL", cloudflare.as_str()),
            ("CF_TURN_KEY_ID", CF_KEY),
            ("CF_TURN_API_TOKEN", CF_TOKEN),
        ];
        vars.extend_from_slice(extra);
        Running::start(&vars).await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// How many file descriptors the daemon has open.
    pub(crate) fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Sets the running daemon's soft descriptor limit (util-linux
    /// `prlimit --pid`): lowered, below what its caps were derived from.
    pub(crate) async fn set_soft_nofile(&self, soft: usize) {
        let status = Command::new("prlimit")
            .arg(format!("--pid={}", self.pid()))
            .arg(format!("--nofile={soft}:"))
            .status()
            .await
            .expect("prlimit runs");
        assert!(status.success());
    }

    /// Everything the daemon logged so far.
    pub(crate) fn log_so_far(&self) -> String {
        self.stderr.so_far()
    }

    /// Polls the log until `condition` holds for all of it so far.
    pub(crate) async fn wait_for_log(&self, what: &str, condition: impl Fn(&str) -> bool) {
        wait_until(what, || condition(&self.stderr.so_far())).await;
    }

    pub(crate) async fn sigterm(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit and its output to end.
    pub(crate) async fn exit(mut self) -> Exited {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within the wait; log so far:\n{}", self.stderr.so_far()))
            .expect("wait");
        Exited {
            code: status.code(),
            stdout: self.stdout.complete().await,
            stderr: self.stderr.complete().await,
        }
    }

    pub(crate) async fn terminate(self) -> Exited {
        self.sigterm().await;
        self.exit().await
    }
}

/// One output pipe, read line by line into a shared buffer by its own task.
struct Collected {
    text: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Collected {
    fn spawn(mut pipe: impl AsyncBufRead + Unpin + Send + 'static, first: String) -> Collected {
        let text = Arc::new(Mutex::new(first));
        let sink = Arc::clone(&text);
        let reader = tokio::spawn(async move {
            let mut line = Vec::new();
            // Bytes, not `read_line`: invalid UTF-8 must not end the
            // collection early and hide what came after it.
            while pipe.read_until(b'\n', &mut line).await.is_ok_and(|read| read > 0) {
                lock(&sink).push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        Collected { text, reader }
    }

    fn so_far(&self) -> String {
        lock(&self.text).clone()
    }

    async fn complete(mut self) -> String {
        tokio::time::timeout(WAIT, &mut self.reader)
            .await
            .expect("output ends once the process has exited")
            .expect("reader task");
        self.so_far()
    }
}

fn lock(text: &Mutex<String>) -> MutexGuard<'_, String> {
    text.lock().unwrap_or_else(PoisonError::into_inner)
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
    let synapse = closed_port();
    let daemon = Running::start(&[
        ("CF_TURN_KEY_ID", "k"),
        ("CF_TURN_API_TOKEN", "t"),
        ("SYNAPSE_BASE_URL", &synapse),
    ])
    .await;
    let listen = daemon.addr.to_string();
    let (code, _, stderr) = run_to_end(&["healthcheck"], &[("LISTEN_ADDR", &listen)]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(daemon.terminate().await.code, Some(0), "SIGTERM is a clean exit");
    let (code, _, stderr) = run_to_end(&["healthcheck"], &[("LISTEN_ADDR", &listen)]).await;
    assert_eq!(code, Some(1), "nothing listens any more");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[tokio::test]
async fn help_lists_every_variable_from_the_parsers_table() {
    let (code, stdout, _) = run_to_end(&["--help"], &[]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("usage: matrix-turnify"), "{stdout}");
    for variable in matrix_turnify::config::VARIABLES {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(variable.name)),
            "{} missing in {stdout}",
            variable.name
        );
    }
    assert!(stdout.contains("(default 0.0.0.0:4499)"), "{stdout}");
}

/// Given a misspelt variable, the daemon still starts and warns once,
/// naming the variable and the closest real one.
#[tokio::test]
async fn a_misspelt_variable_is_one_warning_at_startup() {
    let synapse = closed_port();
    let daemon = Running::start(&[
        ("CF_TURN_KEY_ID", "k"),
        ("CF_TURN_API_TOKEN", "t"),
        ("SYNAPSE_BASE_URL", &synapse),
        ("CF_TURN_API_TOKN", "typo"),
    ])
    .await;
    // SIGTERM at once after start-up: still a clean exit, log complete.
    let exited = daemon.terminate().await;
    let log = exited.stderr;
    assert_eq!(exited.code, Some(0), "{log}");
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("CF_TURN_API_TOKN")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("\"level\":\"WARN\""), "{log}");
    assert!(warnings[0].contains("did you mean CF_TURN_API_TOKEN?"), "{log}");
    assert!(!log.contains("typo"), "the value is never logged: {log}");
}
