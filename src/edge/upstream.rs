//! What the upstream clients (the homeserver's, Cloudflare's, LiveKit's) share.

use std::time::Duration;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Synapse keeps idle connections open forever (docs/synapse-facts.md §9); we
/// retire ours so the pool does not hold sockets to a restarted upstream.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A plain hyper pool: it adds no header, never re-encodes the URL, never
/// follows a redirect, and is the cheaper client on the hot path
/// (docs/behaviour.md §11).
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// The pool for a proxied upstream (the homeserver, LiveKit): http or https,
/// HTTP/1.1, a connect timeout and no Nagle delay.
pub(crate) fn http_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https)
}

/// An error with its whole cause chain: HTTP clients' top-level errors
/// ("client error (Connect)") say little on their own.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
