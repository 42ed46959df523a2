//! matrix-turnify: a Synapse homeserver's `/voip/turnServer` answered with
//! Cloudflare Realtime TURN credentials. The modules follow the request:
//! configuration, forwarding to Synapse, the Cloudflare client, the pure
//! reshaping into the Matrix answer, the HTTP routes and the server loop.

pub mod cloudflare;
pub mod config;
pub mod error;
pub mod healthcheck;
pub mod logging;
pub mod routes;
pub mod server;
pub mod synapse;
pub mod turn;

use std::future::Future;

use tokio::net::TcpListener;
use tracing::info;

pub use config::Config;

/// Serves the daemon on `listener` until `shutdown` resolves. The binary,
/// the demo and the tests all start the daemon through this one function.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), reqwest::Error> {
    let state = routes::AppState::new(&config)?;
    info!(
        listen = %listener.local_addr().map_or_else(|_| config.listen_addr.to_string(), |a| a.to_string()),
        synapse = %config.synapse_base_url,
        cloudflare = %config.cf_api_base_url,
        key_id = %config.cf_key_id,
        ttl_seconds = config.turn_ttl_seconds,
        synapse_timeout_seconds = config.synapse_timeout.as_secs_f64(),
        cloudflare_timeout_seconds = config.cf_timeout.as_secs_f64(),
        version = env!("CARGO_PKG_VERSION"),
        "matrix-turnify started"
    );
    let limits = server::Limits {
        max_connections: config.max_connections,
        shutdown_grace: config.shutdown_grace,
    };
    server::serve(listener, routes::router(state), limits, shutdown).await;
    Ok(())
}
