//! Forwarding to Synapse (SPEC §3, §6): the client's request goes upstream
//! with the same method, path and query, byte for byte, and with only the
//! headers the client sent (minus `Host` and hop-by-hop headers), plus the
//! peer appended to `X-Forwarded-For`. A plain hyper client pool is used
//! rather than reqwest: it adds no header and never re-encodes the URL, and
//! it is the cheaper of the two on the hot path (SPEC §11).

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::upstream::error_chain;

/// A Synapse answer larger than this on the turnServer route is not a
/// turnServer answer (they are a few hundred bytes).
pub const MAX_TURN_ANSWER_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Synapse keeps idle connections open forever (SYNAPSE_FACTS.md §9); we
/// retire ours so the pool does not hold sockets to a restarted Synapse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SynapseError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no complete answer in time")]
    Timeout,
    #[error("the connection failed mid-request: {0}")]
    Broken(String),
    #[error("the answer is larger than {MAX_TURN_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// Synapse's answer to a turnServer request, read whole (it is small).
#[derive(Debug)]
pub struct BufferedAnswer {
    pub status: StatusCode,
    /// End-to-end headers only.
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Debug)]
pub struct SynapseClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    base_url: String,
    timeout: Duration,
}

impl SynapseClient {
    /// `base_url` has no trailing slash; `timeout` bounds a whole turnServer
    /// exchange (SYNAPSE_TIMEOUT_SECONDS).
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Self {
            client,
            base_url: base_url.to_owned(),
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn upstream_uri(&self, path_and_query: &str) -> Result<Uri, SynapseError> {
        format!("{}{}", self.base_url, path_and_query)
            .parse()
            .map_err(|e| SynapseError::Broken(format!("cannot build the upstream URL: {e}")))
    }

    /// Sends `parts` + `body` upstream and returns the answer head with a
    /// streaming body. Only the connect timeout applies: a misrouted
    /// long-poll such as `/sync` legitimately takes 30 s or more (SPEC §6).
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, SynapseError> {
        let mut request = Request::builder()
            .method(method)
            .uri(self.upstream_uri(path_and_query)?)
            .body(body)
            .map_err(|e| SynapseError::Broken(e.to_string()))?;
        *request.headers_mut() = headers;
        self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                SynapseError::Connect(error_chain(&e))
            } else {
                SynapseError::Broken(error_chain(&e))
            }
        })
    }

    /// A whole turnServer exchange under SYNAPSE_TIMEOUT_SECONDS, with the
    /// answer read into memory so it can be returned unchanged later.
    pub async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<BufferedAnswer, SynapseError> {
        let exchange = async {
            let response = self
                .forward(method, path_and_query, headers, Body::from(body))
                .await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_TURN_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        SynapseError::TooLarge
                    } else {
                        SynapseError::Broken(e.to_string())
                    }
                })?
                .to_bytes();
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers);
            Ok(BufferedAnswer {
                status: parts.status,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| SynapseError::Timeout)?
    }

    /// Synapse's own `/health` answers `200 OK` when it serves requests.
    pub async fn is_healthy(&self) -> Result<bool, SynapseError> {
        let answer = self
            .exchange(Method::GET, "/health", HeaderMap::new(), Bytes::new())
            .await?;
        Ok(answer.status == StatusCode::OK)
    }
}

/// The Matrix user ID that owns `access_token` (`GET /account/whoami`).
impl SynapseClient {
    /// Who owns `access_token`, by `GET /_matrix/client/v3/account/whoami`
    /// within the turnServer timeout. `Ok(None)` when the homeserver answered
    /// but did not confirm a user: a non-200, or a body that is not a whoami
    /// answer (SPEC §3.1).
    pub async fn whoami(&self, access_token: &str) -> Result<Option<WhoAmI>, SynapseError> {
        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|_| SynapseError::Broken("the access token is not a valid header value".into()))?;
        headers.insert(header::AUTHORIZATION, bearer);
        let answer = self
            .exchange(Method::GET, WHOAMI_PATH, headers, Bytes::new())
            .await?;
        Ok((answer.status == StatusCode::OK)
            .then(|| WhoAmI::parse(&answer.body))
            .flatten())
    }
}

/// The whoami path every homeserver serves (r0 and v3 on all of them).
pub const WHOAMI_PATH: &str = "/_matrix/client/v3/account/whoami";

/// A homeserver's `/account/whoami` answer (Matrix spec, client-server API
/// "GET /_matrix/client/v3/account/whoami").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoAmI {
    pub user_id: String,
    pub is_guest: bool,
}

impl WhoAmI {
    /// Read strictly: a JSON object with a string `user_id` that looks like
    /// a Matrix user ID, an optional boolean `is_guest` and an optional
    /// string `device_id`. Anything else confirms nothing. Other fields are
    /// allowed, as the spec lets servers add them.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let serde_json::Value::Object(fields) = serde_json::from_slice(body).ok()? else {
            return None;
        };
        let user_id = fields.get("user_id")?.as_str()?;
        let (localpart, server) = user_id.strip_prefix('@')?.split_once(':')?;
        if localpart.is_empty() || server.is_empty() {
            return None;
        }
        let is_guest = match fields.get("is_guest") {
            None => false,
            Some(value) => value.as_bool()?,
        };
        if fields.get("device_id").is_some_and(|value| !value.is_string()) {
            return None;
        }
        Some(Self {
            user_id: user_id.to_owned(),
            is_guest,
        })
    }
}

/// The access token of a request, as Synapse reads it
/// (`get_access_token_from_request`, synapse/api/auth/base.py):
/// `Authorization: Bearer <token>`, else the first `access_token` query
/// argument. Credentials are reused by this token, so it must be the one
/// Synapse authenticated: any other could hand one user a credential cached
/// for another.
pub fn access_token(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(token) = authorization.and_then(|value| value.strip_prefix("Bearer ")) {
        return Some(token.to_owned());
    }
    // Twisted's `parse_qs` (twisted/web/http.py) fills `request.args`: pairs
    // split on `&` and `;`, a pair without `=` skipped, `+` and `%XX`
    // decoded in names and values alike (a `%` without two hex digits stays).
    let token = query?
        .split(['&', ';'])
        .filter(|pair| pair.contains('='))
        .filter_map(|pair| url::form_urlencoded::parse(pair.as_bytes()).next())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value)?;
    // Synapse decodes the token as ASCII, so no other token can have passed;
    // bytes that are not UTF-8 come out as U+FFFD here, which is not ASCII.
    token.is_ascii().then(|| token.into_owned())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
/// message: a proxy must not pass them on.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    retain(headers, |name| {
        !HOP_BY_HOP.contains(name) && !named.contains(name)
    });
}

/// Keeps the headers `keep` accepts, in their original order (removing from
/// a `HeaderMap` in place would reorder it).
fn retain(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    if headers.keys().all(&keep) {
        return;
    }
    let mut current: Option<HeaderName> = None;
    for (name, value) in std::mem::take(headers) {
        // `None` means "another value of the previous name".
        if name.is_some() {
            current = name;
        }
        if let Some(name) = current.as_ref().filter(|name| keep(name)) {
            headers.append(name.clone(), value);
        }
    }
}

/// The headers to send upstream for a client's request: everything it sent
/// but `Host` and hop-by-hop headers, with `X-Forwarded-For` merged into one
/// line and the peer appended, so Synapse (`x_forwarded: true`) still sees
/// the real client first.
pub fn upstream_headers(mut headers: HeaderMap, peer: IpAddr) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    retain(&mut headers, |name| name != header::HOST);
    let mut forwarded_for: Vec<String> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
        .collect();
    forwarded_for.push(peer.to_string());
    // Every part came from a valid header value or is an IP address, so the
    // joined line is a valid header value too.
    if let Ok(value) = HeaderValue::from_str(&forwarded_for.join(", ")) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client as the log line names it: the first `X-Forwarded-For` entry
/// (what the reverse proxy saw), else the TCP peer.
pub fn client_address(headers: &HeaderMap, peer: IpAddr) -> String {
    headers
        .get(X_FORWARDED_FOR)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(str::trim)
        .filter(|first| !first.is_empty())
        .map_or_else(|| peer.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_from_header_or_query() {
        assert_eq!(access_token(Some("Bearer abc"), None).as_deref(), Some("abc"));
        assert_eq!(
            access_token(None, Some("x=1&access_token=syt_a%5Fb&y")).as_deref(),
            Some("syt_a_b")
        );
        assert_eq!(
            access_token(Some("Basic abc"), Some("access_token=q")).as_deref(),
            Some("q")
        );
        assert_eq!(access_token(None, Some("access_tokenx=1")), None);
        assert_eq!(access_token(None, None), None);
    }

    /// Twisted's reading of the query (twisted/web/http.py `parse_qs`),
    /// which Synapse authenticates by.
    #[test]
    fn the_query_token_is_the_first_as_twisted_reads_it() {
        for (query, expected) in [
            ("access_token=a&access_token=b", Some("a")),
            ("x=1;access_token=a&access_token=b", Some("a")),
            ("access%5Ftoken=a&access_token=b", Some("a")),
            ("access_token&access_token=b", Some("b")),
            ("access_token=&access_token=b", Some("")),
            ("access+token=a&access_token=b", Some("b")),
            ("access_token=a+b%2B", Some("a b+")),
            ("access_token=%+5a%5", Some("% 5a%5")),
            ("access_token=%C3%A9", None),
            ("access_token=%FF", None),
        ] {
            assert_eq!(access_token(None, Some(query)).as_deref(), expected, "{query}");
        }
    }

    #[test]
    fn a_whoami_answer_is_read_strictly() {
        let user = |user_id: &str, is_guest| {
            Some(WhoAmI {
                user_id: user_id.to_owned(),
                is_guest,
            })
        };
        for (body, expected) in [
            (
                r#"{"user_id":"@alice:localhost"}"#,
                user("@alice:localhost", false),
            ),
            (
                r#"{"user_id":"@alice:localhost","is_guest":false,"device_id":"D"}"#,
                user("@alice:localhost", false),
            ),
            (
                r#"{"user_id":"@1:localhost","is_guest":true}"#,
                user("@1:localhost", true),
            ),
            (r#"{"user_id":"@a:b","org.example.extra":1}"#, user("@a:b", false)),
            (r#"{"user_id":"alice"}"#, None),
            (r#"{"user_id":"@:localhost"}"#, None),
            (r#"{"user_id":"@alice:"}"#, None),
            (r#"{"user_id":42}"#, None),
            (r#"{"user_id":"@a:b","is_guest":"false"}"#, None),
            (r#"{"user_id":"@a:b","is_guest":null}"#, None),
            (r#"{"user_id":"@a:b","device_id":7}"#, None),
            (r#"{"errcode":"M_UNKNOWN_TOKEN"}"#, None),
            (r#"["@a:b"]"#, None),
            ("<html>ok</html>", None),
            ("", None),
        ] {
            assert_eq!(WhoAmI::parse(body.as_bytes()), expected, "{body}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));

    #[test]
    fn host_and_hop_by_hop_headers_are_dropped() {
        let sent = upstream_headers(
            headers(&[
                ("host", "matrix.example.org"),
                ("connection", "keep-alive, X-Custom-Hop"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("trailer", "x"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("x-custom-hop", "1"),
                ("authorization", "Bearer  two-spaces-kept"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "matrix.example.org"),
                ("user-agent", "Element"),
            ]),
            PEER,
        );
        let names: Vec<&str> = sent.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "authorization",
                "x-forwarded-proto",
                "x-forwarded-host",
                "user-agent",
                "x-forwarded-for"
            ]
        );
        assert_eq!(sent["authorization"], "Bearer  two-spaces-kept");
    }

    #[test]
    fn forwarded_for_is_created_when_absent() {
        let sent = upstream_headers(HeaderMap::new(), PEER);
        assert_eq!(sent[X_FORWARDED_FOR], "192.0.2.10");
    }

    #[test]
    fn forwarded_for_lines_are_merged_in_order_and_the_peer_appended() {
        let sent = upstream_headers(
            headers(&[
                ("x-forwarded-for", "203.0.113.7, 198.51.100.9"),
                ("x-forwarded-for", "2001:db8::1"),
            ]),
            PEER,
        );
        assert_eq!(sent.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            sent[X_FORWARDED_FOR],
            "203.0.113.7, 198.51.100.9, 2001:db8::1, 192.0.2.10"
        );
    }

    #[test]
    fn two_authorization_headers_stay_two() {
        // Synapse refuses them ("Too many Authorization headers."); we must
        // not make such a request valid or invalid on our own.
        let sent = upstream_headers(
            headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]),
            PEER,
        );
        assert_eq!(sent.get_all(header::AUTHORIZATION).iter().count(), 2);
    }

    #[test]
    fn response_hop_by_hop_headers_are_stripped() {
        let mut answer = headers(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("server", "Synapse/1.163.2"),
            ("access-control-allow-origin", "*"),
        ]);
        strip_hop_by_hop(&mut answer);
        let names: Vec<&str> = answer.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["server", "access-control-allow-origin"]);
    }

    #[test]
    fn client_address_prefers_the_first_forwarded_entry() {
        assert_eq!(
            client_address(&headers(&[("x-forwarded-for", " 203.0.113.7 , 10.0.0.1")]), PEER),
            "203.0.113.7"
        );
        assert_eq!(client_address(&HeaderMap::new(), PEER), "192.0.2.10");
        assert_eq!(
            client_address(&headers(&[("x-forwarded-for", "")]), PEER),
            "192.0.2.10"
        );
    }
}
