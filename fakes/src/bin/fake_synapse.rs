//! The Synapse fake as its own process, for the end-to-end scripts that
//! need a homeserver answering as Synapse does but not a real one (the
//! LiveKit suite's `check` run: its homeserver lines are not under test
//! there, and a real Synapse costs seconds to start).
//!
//! ```text
//! cargo run --release -p turnify-fakes --bin fake_synapse -- [--listen 127.0.0.1:0]
//! ```
//!
//! Once bound it prints exactly one line, `listening on http://127.0.0.1:PORT`
//! (the value for `SYNAPSE_BASE_URL`), then serves [`SynapseOptions`]'
//! defaults (users `syt_alice_token` and `syt_bob_token`, `/health`,
//! `/_matrix/client/versions`, Synapse's token rules and answers on
//! `/voip/turnServer` and `whoami`) until SIGTERM or Ctrl-C. Only loopback
//! listen addresses are accepted.

use std::net::SocketAddr;
use std::process::ExitCode;

use turnify_fakes::process::{announce_and_wait, bind, loopback_addr};
use turnify_fakes::{FakeSynapse, SynapseOptions};

const USAGE: &str = "usage: fake_synapse [--listen 127.0.0.1:0]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs a value")?;
                listen = loopback_addr(&value)?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(listen)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let listen = match parse_args(std::env::args().skip(1)) {
        Ok(listen) => listen,
        Err(e) => {
            eprintln!("fake_synapse: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match bind("fake_synapse", listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let fake = FakeSynapse::start_on(listener, SynapseOptions::default()).await;
    let code = announce_and_wait("fake_synapse", &fake.base_url()).await;
    drop(fake);
    code
}
