//! The Cloudflare TURN API fake as its own process, for shell-driven
//! end-to-end tests, the demo and the benchmark.
//!
//! ```text
//! cargo run --release -p turnify-fakes --bin fake_cloudflare -- [--listen 127.0.0.1:0]
//!     [--key-id test-key-id] [--api-token test-api-token] [--latency-ms 0]
//!     [--shape list|legacy] [--fail-status S]
//!     [--turn-secret SECRET --turn-urls URL,URL,…]
//!     [--account-id test-account-id] [--analytics-token test-analytics-token]
//!     [--analytics-without-permission]
//! ```
//!
//! Once bound it prints exactly one line, `listening on http://127.0.0.1:PORT/v1`
//! (the value for `CF_TURN_API_BASE_URL`), then serves until SIGTERM or
//! Ctrl-C. With `--fail-status S` every mint and revoke answers status `S`
//! with a JSON error body. With `--turn-secret` and `--turn-urls` it mints
//! credentials a real coturn (`use-auth-secret`, that `static-auth-secret`)
//! accepts and lists those URLs instead of Cloudflare's (the browser call of
//! `tests/e2e/relay.sh`). Only loopback listen addresses are accepted.
//!
//! The same port answers Cloudflare's GraphQL Analytics API at
//! `http://127.0.0.1:PORT/client/v4/graphql` (the TURN usage dataset
//! `callsTurnUsageAdaptiveGroups`), for account `--account-id` and the token
//! `--analytics-token`; with `--analytics-without-permission` that token
//! lacks Account Analytics: Read and every account query answers 403.
//!
//! `GET /__fake/stats`, `POST /__fake/behaviour`, `POST /__fake/analytics`
//! and `POST`/`DELETE /__fake/usage` inspect and switch the fake and set
//! its usage records at run time; see the `turnify-fakes` crate docs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use turnify_fakes::process::{announce_and_wait, bind, loopback_addr};
use turnify_fakes::{CfBehaviour, CloudflareOptions, FakeCloudflare, IceShape, RealTurn};

const USAGE: &str = "usage: fake_cloudflare [--listen 127.0.0.1:0] [--key-id K] [--api-token T] \
                     [--latency-ms N] [--shape list|legacy] [--fail-status S] \
                     [--turn-secret SECRET --turn-urls URL,URL,...] \
                     [--account-id ID] [--analytics-token T] [--analytics-without-permission]";

struct Args {
    listen: SocketAddr,
    opts: CloudflareOptions,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut opts = CloudflareOptions::default();
    let mut latency = Duration::ZERO;
    let mut shape = IceShape::List;
    let mut fail_status = None;
    let mut turn_secret = None;
    let mut turn_urls = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = loopback_addr(&value()?)?,
            "--key-id" => opts.key_id = value()?,
            "--api-token" => opts.api_token = value()?,
            "--account-id" => opts.account_id = value()?,
            "--analytics-token" => opts.analytics_token = value()?,
            "--analytics-without-permission" => opts.analytics_permission = false,
            "--latency-ms" => {
                let v = value()?;
                let ms = v.parse().map_err(|e| format!("--latency-ms {v}: {e}"))?;
                latency = Duration::from_millis(ms);
            }
            "--shape" => {
                shape = match value()?.as_str() {
                    "list" => IceShape::List,
                    "legacy" => IceShape::LegacyObject,
                    other => return Err(format!("--shape {other}: expected list or legacy")),
                }
            }
            "--fail-status" => {
                let v = value()?;
                let status: u16 = v.parse().map_err(|e| format!("--fail-status {v}: {e}"))?;
                if !(100..=999).contains(&status) {
                    return Err(format!("--fail-status {v}: not an HTTP status"));
                }
                fail_status = Some(status);
            }
            "--turn-secret" => turn_secret = Some(value()?),
            "--turn-urls" => {
                let v = value()?;
                let urls: Vec<String> = v.split(',').map(str::to_owned).collect();
                if urls.iter().any(String::is_empty) {
                    return Err(format!("--turn-urls {v}: an empty URL"));
                }
                turn_urls = Some(urls);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    opts.real_turn = match (turn_secret, turn_urls) {
        (Some(secret), Some(urls)) => Some(RealTurn { secret, urls }),
        (None, None) => None,
        _ => return Err("--turn-secret and --turn-urls go together".to_owned()),
    };
    opts.behaviour = match fail_status {
        Some(status) => CfBehaviour::fail(status),
        None => CfBehaviour::Mint { shape, latency },
    };
    Ok(Args { listen, opts })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fake_cloudflare: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match bind("fake_cloudflare", args.listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let fake = FakeCloudflare::start_on(listener, args.opts).await;
    let code = announce_and_wait("fake_cloudflare", &fake.base_url()).await;
    drop(fake);
    code
}
