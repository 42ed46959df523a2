//! `cargo run --release --example demo`: the real daemon against a local fake
//! Synapse and a fake Cloudflare, with no account anywhere. It asks for TURN
//! credentials once with a valid access token and once with an invalid one,
//! and prints both answers as a Matrix client would receive them.

use std::time::Duration;

use matrix_turnify::Config;
use tokio::net::TcpListener;
use turnify_fakes::{CloudflareOptions, FakeCloudflare, FakeSynapse, SynapseOptions};

const VALID_TOKEN: &str = "syt_alice_token";
const TURN_SERVER: &str = "/_matrix/client/v3/voip/turnServer";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let synapse = FakeSynapse::start(SynapseOptions::default()).await;
    let cloudflare = FakeCloudflare::start(CloudflareOptions::default()).await;
    let config = Config::from_vars(
        [
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("SYNAPSE_BASE_URL", synapse.base_url()),
            ("CF_TURN_API_BASE_URL", cloudflare.base_url()),
            ("CF_TURN_KEY_ID", "test-key-id".to_owned()),
            ("CF_TURN_API_TOKEN", "test-api-token".to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    )?;
    let listener = TcpListener::bind(config.listen_addr).await?;
    let daemon = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = matrix_turnify::Listeners {
        matrix: listener,
        livekit: None,
    };
    let server = tokio::spawn(matrix_turnify::run(config, listeners, async {
        let _ = stopped.await;
    }));

    println!("fake Synapse:    {}", synapse.base_url());
    println!("fake Cloudflare: {}", cloudflare.base_url());
    println!("matrix-turnify:  {daemon}\n");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    for (label, token) in [
        ("a valid access token", VALID_TOKEN),
        ("an invalid access token", "syt_not_a_real_token"),
    ] {
        let response = client
            .get(format!("{daemon}{TURN_SERVER}"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status();
        let cache_control = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
        println!("GET {TURN_SERVER} with {label}");
        println!("  -> {status}  (Cache-Control: {cache_control})");
        println!("{}\n", serde_json::to_string_pretty(&body)?);
    }
    println!(
        "Synapse saw {} request(s); Cloudflare minted {} credential(s).",
        synapse.requests().len(),
        cloudflare.mint_count()
    );

    let _ = stop.send(());
    server.await??;
    Ok(())
}
