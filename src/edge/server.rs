//! Accepting connections (docs/behaviour.md §10) and shutting down cleanly: HTTP/1.1 with
//! bounded header size and count, a header-read timeout, a cap on concurrent
//! connections, and graceful draining on shutdown. Both front doors, the
//! Matrix one and the LiveKit one, are served by this loop; a connection
//! that a WebSocket upgrade takes over keeps its slot (see [`Takeover`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;
use tracing::{debug, info, warn};

use crate::edge::timed_io::{Deadlines, TimedIo};
use crate::throttle::Throttle;

/// A client that has not sent its whole request head by then is cut off.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this; longer than nginx's
/// 60 s upstream keep-alive, so the proxy, not us, closes first.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Request heads larger than this are refused with 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Requests with more header lines than this are refused with 431.
pub(crate) const MAX_HEADERS: usize = 100;
/// After a failed accept (out of file descriptors or memory) the listener
/// stays ready and the next accept fails at once: wait this long before
/// trying again, doubling up to [`ACCEPT_RETRY_MAX`] while it keeps failing.
pub(crate) const ACCEPT_RETRY_MIN: Duration = Duration::from_millis(100);
pub(crate) const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

/// When the body of the request must be in; the connection sets it from the
/// moment its head was complete (docs/behaviour.md §10).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyDeadline(pub tokio::time::Instant);

/// Descriptors kept out of the connection caps, an eighth of the limit and
/// at least 32: the process's own (standard streams, the runtime's, the
/// listeners), calls to Cloudflare that outlive their request, idle pooled
/// upstream connections, a healthcheck's.
pub(crate) fn reserved_descriptors(nofile: u64) -> u64 {
    (nofile / 8).max(32)
}

/// Descriptors one connection holds at most: its own socket and one
/// upstream leg. On the LiveKit door that is LiveKit's, for a plain request
/// and for a signalling connection's whole life; on the Matrix door the
/// homeserver's (turnServer's `whoami`, a passed-through request) or, after
/// it, Cloudflare's for a mint.
pub(crate) const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// The front doors, each on a listener of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Door {
    Matrix,
    LiveKit,
}

impl Door {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Door::Matrix => "matrix",
            Door::LiveKit => "livekit",
        }
    }
}

/// Each front door's cap on concurrent connections: `MAX_CONNECTIONS`, or
/// less when the descriptor limit cannot hold that many. The descriptors
/// left after [`reserved_descriptors`] are shared out evenly between the
/// doors that are on, at [`DESCRIPTORS_PER_CONNECTION`] each, so that a
/// door at its cap leaves the other door's descriptors, and the reserve,
/// untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// The soft `RLIMIT_NOFILE` the caps were derived from.
    pub nofile: u64,
    pub configured: usize,
    /// What the descriptors allow per door.
    pub derived: usize,
}

impl Caps {
    pub fn derive(nofile: u64, configured: usize, livekit: bool) -> Self {
        let doors = if livekit { 2 } else { 1 };
        let per_door =
            nofile.saturating_sub(reserved_descriptors(nofile)) / doors / DESCRIPTORS_PER_CONNECTION;
        Self {
            nofile,
            configured,
            derived: usize::try_from(per_door).unwrap_or(usize::MAX).max(1),
        }
    }

    /// A door's cap: the smaller of the configured and the derived one
    /// (the same for both doors).
    pub fn max_connections(&self) -> usize {
        self.configured.min(self.derived)
    }

    /// What set the cap, for the log.
    pub fn set_by(&self) -> &'static str {
        if self.configured <= self.derived {
            "MAX_CONNECTIONS"
        } else {
            "file descriptors"
        }
    }
}

/// The process's soft `RLIMIT_NOFILE` (`u64::MAX` for none).
pub(crate) fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The descriptor limits before and after [`raise_nofile_limit`].
#[derive(Clone, Copy, Debug)]
pub struct Nofile {
    pub soft_before: Option<u64>,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
    pub error: Option<rustix::io::Errno>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one: the caps are derived
/// from it, and the usual soft limit of 1024 is a default for programs
/// that use `select`, which this one does not.
pub fn raise_nofile_limit() -> Nofile {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    // Nothing to raise is no call: the shipped systemd unit sets both
    // limits and filters the call out.
    let error = (before.current != before.maximum)
        .then(|| {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: before.maximum,
                    maximum: before.maximum,
                },
            )
            .err()
        })
        .flatten();
    Nofile {
        soft_before: before.current,
        soft: getrlimit(Resource::Nofile).current,
        hard: before.maximum,
        error,
    }
}

/// What bounds one front door's connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Accepting {
    pub caps: Caps,
    pub deadlines: Deadlines,
    /// How long in-flight requests may take to finish after shutdown began.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish within the grace period, and
/// returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    door: Door,
    limits: Accepting,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = limits.caps.max_connections();
    let connections = Arc::new(Semaphore::new(max_connections));
    // Every connection, and every WebSocket relay that took one over, holds
    // a receiver: a value sent asks them to finish, and the sender sees
    // them all gone once they have.
    let (draining, _) = watch::channel(());
    tokio::pin!(shutdown);
    // Under overload each freed slot goes at once to a waiting connection and
    // the limit is reached again; one warning per stretch at the limit, not
    // one per connection let in, keeps the log readable.
    let mut at_limit = false;
    let mut accept_failures = AcceptFailures::default();
    loop {
        let permit = match Arc::clone(&connections).try_acquire_owned() {
            Ok(permit) => {
                at_limit = false;
                permit
            }
            Err(_) => {
                if !at_limit {
                    warn!(
                        door = door.name(),
                        max_connections,
                        set_by = limits.caps.set_by(),
                        "connection limit reached; new connections wait until one closes (MAX_CONNECTIONS, \
                         or the file descriptor limit); not repeated while connections keep waiting"
                    );
                    at_limit = true;
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    permit = Arc::clone(&connections).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => {
                    debug!(error = %e, "a connection was gone before it could be accepted");
                    continue;
                }
                Err(e) => {
                    let wait = accept_failures.failed(&e);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            },
        };
        accept_failures.succeeded();
        serve_connection(stream, peer, router.clone(), &draining, permit, limits.deadlines);
    }
    drop(listener);
    info!("shutting down: no new connections; waiting for in-flight requests");
    let _ = draining.send(());
    tokio::select! {
        () = draining.closed() => info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            warn!(grace_seconds = limits.shutdown_grace.as_secs_f64(), "grace period over; closing the remaining connections");
        }
    }
}

/// Errors of one connection, not of the listener: the client reset it while
/// it waited in the queue. The next accept is unaffected.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

/// A stretch of failing accepts: how long to wait before the next attempt,
/// and one warning when it starts, then at most one a minute, and one line
/// with the count when accepting works again (docs/behaviour.md §10).
#[derive(Debug, Default)]
struct AcceptFailures {
    /// Failed attempts in the current stretch.
    count: u64,
    wait: Duration,
    warnings: Throttle,
}

impl AcceptFailures {
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.count += 1;
        self.wait = if self.count == 1 {
            ACCEPT_RETRY_MIN
        } else {
            (self.wait * 2).min(ACCEPT_RETRY_MAX)
        };
        if self.warnings.admit(std::time::Instant::now()).is_some() {
            warn!(
                error = %e,
                failed_attempts = self.count,
                "accepting connections failed (out of file descriptors or memory?); retrying after waits of up to \
                 one second, logged again at most once a minute"
            );
        }
        self.wait
    }

    fn succeeded(&mut self) {
        if self.count > 0 {
            info!(failed_attempts = self.count, "accepting connections works again");
            *self = Self::default();
        }
    }
}

/// What a connection lends the request that upgrades it to a WebSocket
/// (docs/behaviour.md §12): its slot under MAX_CONNECTIONS, the shutdown
/// signal, and the switch that ends its HTTP deadlines. Each request
/// carries one in its extensions; the relay keeps it as long as it runs.
#[derive(Clone, Debug)]
pub(crate) struct Takeover {
    _slot: Arc<OwnedSemaphorePermit>,
    draining: watch::Receiver<()>,
    upgraded: Arc<AtomicBool>,
}

impl Takeover {
    /// Called just before the `101` goes out: from then on the
    /// connection's bytes are WebSocket frames, not HTTP heads.
    pub(crate) fn upgrading(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// Resolves once the daemon shuts down.
    pub(crate) async fn draining(&mut self) {
        let _ = self.draining.changed().await;
    }
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    draining: &watch::Sender<()>,
    permit: OwnedSemaphorePermit,
    deadlines: Deadlines,
) {
    // Small answers go out at once rather than waiting for Nagle's timer.
    let _ = stream.set_nodelay(true);
    let Deadlines { head, idle } = deadlines;
    let io = TimedIo::new(stream, deadlines);
    let takeover = Takeover {
        _slot: Arc::new(permit),
        draining: draining.subscribe(),
        upgraded: io.upgrade_switch(),
    };
    let mut stop = takeover.draining.clone();
    let for_requests = takeover.clone();
    let service = router.map_request(move |request: axum::http::Request<Incoming>| {
        // A body streamed to the homeserver (any path but turnServer, whose
        // body has the head deadline) must keep coming: a client that stops
        // sending one would otherwise hold its connection slot with no timer
        // running. A request without a body needs no timer.
        let mut request = request.map(|body| {
            if body.is_end_stream() {
                axum::body::Body::new(body)
            } else {
                axum::body::Body::new(TimeoutBody::new(idle, body))
            }
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(for_requests.clone());
        // The head is complete when the request reaches the service.
        request
            .extensions_mut()
            .insert(BodyDeadline(tokio::time::Instant::now() + head));
        request
    });
    // The head and idle deadlines are TimedIo's; hyper's own header timeout
    // would also close idle keep-alive connections after 10 s.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::spawn(async move {
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            _ = stop.changed() => {
                // Finish the request in flight, take no other.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = ended {
            debug!(peer = %peer, error = %e, "connection ended with an error");
        }
        // The slot and the drain receiver go with the last holder: this
        // task, or a WebSocket relay that took the connection over.
        drop(takeover);
    });
}

/// A future that resolves on SIGTERM or Ctrl-C. In a `scratch` container
/// the daemon is PID 1, which gets no default SIGTERM handling: without this
/// branch `docker stop` would wait out its timeout and then SIGKILL us. The
/// handlers are installed when this is called, not when the future is first
/// polled: a SIGTERM that comes while the daemon is still starting then
/// shuts it down cleanly instead of killing it (or, as PID 1, being lost).
/// Must be called inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        tokio::select! {
            () = received(interrupt) => info!("Ctrl-C received"),
            () = received(terminate) => info!("SIGTERM received"),
        }
    }
}

/// Resolves when `handler` sees its signal; never without a handler.
async fn received(handler: Option<tokio::signal::unix::Signal>) {
    match handler {
        Some(mut handler) => {
            handler.recv().await;
        }
        None => std::future::pending().await,
    }
}
