//! The accept loop shared by the fakes: one HTTP/1.1 connection task per
//! client, all owned by the server task so that dropping the fake ends them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// The running server; aborting it drops its `JoinSet`, which aborts every
/// connection task, hanging ones included.
pub(crate) struct ServerTask(JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `handler` on `listener` until the returned task is dropped.
pub(crate) fn spawn<H, F>(listener: TcpListener, handler: H) -> ServerTask
where
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    ServerTask(tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(serve_connection(stream, peer, handler.clone()));
                    }
                    Err(_) => tokio::time::sleep(ACCEPT_RETRY_DELAY).await,
                },
                // Reaps finished connections so the set does not grow.
                Some(_) = connections.join_next() => {}
            }
        }
    }))
}

async fn serve_connection<H, F>(stream: tokio::net::TcpStream, peer: SocketAddr, handler: H)
where
    H: Fn(Request<Body>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let answer = handler(req.map(Body::new), peer);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    // Synapse (Twisted) writes header names in title case; hyper would write
    // them in lower case. A client hanging up mid-exchange is routine in the
    // tests (timeouts, Hang), so the connection's result carries no news.
    let _ = http1::Builder::new()
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}
