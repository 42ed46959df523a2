//! matrix-turnify hands Cloudflare Realtime TURN credentials to Matrix
//! clients through two front doors over one credential core
//! (docs/behaviour.md §2). The folders follow a request:
//!
//! - `edge`: accepting connections and bounding them (`server`,
//!   `timed_io`), the outbound HTTP client (`upstream`), what both doors
//!   do to the headers they pass on (`headers`), and the access-log line
//!   both write (`access_log`).
//! - `matrix`: the `/voip/turnServer` door. `routes` answers the request,
//!   `synapse` forwards it to the homeserver, `token` reads the access token
//!   the homeserver saw, `error` maps the daemon's own failures.
//! - `livekit`: the LiveKit door. `proxy` relays LiveKit's signalling,
//!   `splice` puts a Cloudflare TURN entry into its join, `auth` and `jwt`
//!   read a participant's token as LiveKit does.
//! - `credentials`: the core both doors share. A credential is reused
//!   (`reuse`) or minted by Cloudflare (`cloudflare`) unless the back-off
//!   says to skip it (`backoff`); `issued` is a mint's outcome, `turn` the
//!   pure reshaping into the Matrix answer.
//! - `usage`: what the month's TURN traffic costs. It reads Cloudflare's
//!   analytics on an interval (`poll`, `analytics`), and the core asks it
//!   before handing out any credential whether a budget holds.
//!
//! Arrows go from a door down to the core and the edge, never to the other
//! door. `config`, `metrics`, `logging`, `throttle` and `clock` serve them
//! all; `check` and `healthcheck` are the binary's other subcommands.

pub mod check;
pub mod config;
pub mod healthcheck;
pub mod livekit;
pub mod logging;

mod clock;
mod credentials;
mod edge;
mod matrix;
mod metrics;
mod throttle;
mod usage;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use credentials::issued;
use edge::{server, timed_io};
use matrix::routes;
use tracing::{info, warn};

pub use clock::unix_seconds;
pub use config::Config;
pub use edge::server::{MAX_HEADER_BYTES, raise_nofile_limit, shutdown_signal};
pub use edge::timed_io::Deadlines;
pub use matrix::routes::AppState;

/// The pure reshaping of Cloudflare's answer, for the property tests.
pub mod turn {
    pub use crate::credentials::turn::{
        IceServersAnswer, TurnCredential, Unusable, extract, matrix_answer, with_custom_domain,
    };
}

/// The LiveKit door's pure splice, for its tests and the fuzz target.
pub mod splice {
    pub use crate::livekit::splice::{IceServerSeen, Kind, ice_servers, kind, splice};
}

/// LiveKit's token format, for the differential test against LiveKit's own reading.
pub mod jwt {
    pub use crate::livekit::jwt::{Claims, read, sign, verify};
}

/// How LiveKit finds a participant's token in a request, for the same test.
pub mod livekit_auth {
    pub use crate::livekit::auth::{TokenReading, token_as_livekit_reads};
}

/// The daemon's listening sockets: the Matrix front door's (`LISTEN_ADDR`)
/// and, with `LIVEKIT_SFU_URL` set, the LiveKit one's (`LIVEKIT_LISTEN_ADDR`).
pub struct Listeners {
    pub matrix: TcpListener,
    pub livekit: Option<TcpListener>,
}

/// Every bound on the daemon's connections: the edge's, for each front
/// door, and the LiveKit door's own.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub caps: server::Caps,
    pub deadlines: timed_io::Deadlines,
    /// The LiveKit door's own deadlines and memory budget.
    pub livekit: livekit::proxy::Bounds,
    /// How long in-flight requests may take to finish after shutdown began.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The configured limits, with the fixed connection deadlines and the
    /// caps the process's descriptor limit allows.
    pub fn of(config: &Config) -> Self {
        Self {
            caps: server::Caps::derive(
                server::nofile_limit(),
                config.max_connections,
                config.livekit.is_some(),
            ),
            deadlines: timed_io::Deadlines {
                head: server::HEADER_READ_TIMEOUT,
                idle: server::IDLE_TIMEOUT,
            },
            livekit: livekit::proxy::Bounds::default(),
            shutdown_grace: config.shutdown_grace,
        }
    }
}

impl Limits {
    /// What the edge enforces on each front door's connections.
    fn accepting(&self) -> server::Accepting {
        server::Accepting {
            caps: self.caps,
            deadlines: self.deadlines,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// Serves the daemon on `listeners` until `shutdown` resolves. The binary and
/// the demo start the daemon through this function.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), reqwest::Error> {
    let state = routes::AppState::new(&config)?;
    let limits = Limits::of(&config);
    serve(&config, state, listeners, limits, shutdown).await;
    Ok(())
}

/// Like [`run`], with the state and the limits chosen by the caller, so
/// tests can keep a handle on the state (its clock) and shorten the
/// connection deadlines.
pub async fn serve(
    config: &Config,
    state: routes::AppState,
    listeners: Listeners,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let Listeners { matrix, livekit } = listeners;
    let livekit = config.livekit.as_ref().zip(livekit);
    info!(
        listen = %matrix.local_addr().map_or_else(|_| config.listen_addr.to_string(), |a| a.to_string()),
        livekit = livekit.as_ref().map_or("off", |(lk, _)| lk.sfu_url.as_str()),
        livekit_listen = %livekit.as_ref().map_or_else(|| "-".to_owned(), |(lk, listener)| {
            listener.local_addr().map_or_else(|_| lk.listen_addr.to_string(), |a| a.to_string())
        }),
        synapse = %config.synapse_base_url,
        cloudflare = %config.cf_api_base_url,
        key_id = %config.cf_key_id,
        ttl_seconds = config.turn_ttl_seconds,
        credential_reuse = config.credential_reuse,
        custom_identifier = ?config.custom_identifier,
        turn_custom_domain = config.turn_custom_domain.as_deref().unwrap_or("-"),
        usage_poll_seconds = config.usage.as_ref().map(|usage| usage.poll_interval.as_secs()),
        monthly_budget_gb = config.usage.as_ref().and_then(|usage| usage.monthly_budget).map(usage::in_gb),
        user_monthly_budget_gb = config.usage.as_ref().and_then(|usage| usage.user_monthly_budget).map(usage::in_gb),
        synapse_timeout_seconds = config.synapse_timeout.as_secs_f64(),
        cloudflare_timeout_seconds = config.cf_timeout.as_secs_f64(),
        version = env!("CARGO_PKG_VERSION"),
        "matrix-turnify started"
    );
    let caps = limits.caps;
    info!(
        nofile = caps.nofile,
        reserved_descriptors = server::reserved_descriptors(caps.nofile),
        matrix_max_connections = caps.max_connections(),
        livekit_max_connections = livekit.as_ref().map(|_| caps.max_connections()),
        max_connections_setting = caps.configured,
        from_descriptors = caps.derived,
        set_by = caps.set_by(),
        "connection caps: each front door takes at most max_connections at once, the smaller of \
         MAX_CONNECTIONS and what the file descriptor limit allows (two per connection, the rest reserved)"
    );
    for unrecognised in &config.unrecognised_variables {
        warn!("{unrecognised}");
    }
    if u64::from(config.turn_ttl_seconds) <= issued::MIN_REUSE_REMAINING.as_secs() {
        warn!(
            ttl_seconds = config.turn_ttl_seconds,
            "TURN_CREDENTIAL_TTL_SECONDS is 20 minutes or less: credentials are never reused, and clients \
             that poll every 10 minutes may hold expired ones; 3600 or more is recommended"
        );
    }
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let livekit_front = async {
        if let Some((livekit_config, listener)) = livekit {
            let state = livekit::proxy::LiveKitState::new(
                livekit_config,
                state.credentials(),
                state.metrics(),
                limits.livekit,
            );
            server::serve(
                listener,
                livekit::proxy::router(state),
                server::Door::LiveKit,
                limits.accepting(),
                shutdown.clone(),
            )
            .await;
        }
    };
    // Readings go on until shutdown; a request never waits for one.
    let polling = async {
        if let Some(usage) = state.credentials().usage() {
            tokio::select! {
                () = usage::poll::run(Arc::clone(usage)) => {}
                () = shutdown.clone() => {}
            }
        }
    };
    tokio::join!(
        polling,
        livekit_front,
        server::serve(
            matrix,
            routes::router(state.clone()),
            server::Door::Matrix,
            limits.accepting(),
            shutdown.clone(),
        ),
    );
}
