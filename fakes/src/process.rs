//! What the fakes' own processes (`fakes/src/bin/`) share: a loopback-only
//! `--listen`, the one line scripts read the URL from, and running until
//! SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// The value of `--listen`: a socket address on loopback only.
pub fn loopback_addr(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value.parse().map_err(|e| format!("--listen {value}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("--listen {value}: only loopback addresses are allowed"));
    }
    Ok(addr)
}

/// Binds `addr`, or says why not as `NAME: …` on stderr.
pub async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("{name}: cannot listen on {addr}: {e}");
        ExitCode::FAILURE
    })
}

/// Prints exactly one line, `listening on URL`, then waits for SIGTERM or
/// Ctrl-C; the caller drops its fake after.
pub async fn announce_and_wait(name: &str, url: &str) -> ExitCode {
    // Scripts read this line from a pipe or a file to learn the port, so it
    // must not sit in a buffer.
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "listening on {url}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    // Scripts stop the fake with `kill` (SIGTERM); as PID 1 in a container the
    // process would otherwise ignore it.
    let Ok(mut sigterm) = signal(SignalKind::terminate()) else {
        eprintln!("{name}: cannot install a SIGTERM handler");
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}
