//! Forwarding to Synapse (docs/behaviour.md §3, §6): the client's request goes upstream
//! with the same method, path and query, byte for byte, and with only the
//! headers the client sent (minus `Host` and hop-by-hop headers), plus the
//! peer appended to `X-Forwarded-For`. A plain hyper client pool is used
//! rather than reqwest: it adds no header and never re-encodes the URL, and
//! it is the cheaper of the two on the hot path (docs/behaviour.md §11).

use std::time::Duration;

use crate::edge::headers::strip_hop_by_hop;
use crate::edge::upstream::{HttpClient, error_chain};
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A homeserver answer larger than this on the turnServer route is not a
/// turnServer answer (a real one is under 1 KiB; docs/behaviour.md §10): it is passed on
/// as it streams, and no more of it is held in memory.
pub(crate) const MAX_TURN_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SynapseError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no complete answer in time")]
    Timeout,
    #[error("the connection failed mid-request: {0}")]
    Broken(String),
    #[error("the answer is larger than {MAX_TURN_ANSWER_BYTES} bytes")]
    TooLarge,
    /// The client's request body failed while it streamed upstream (it
    /// stalled past the idle deadline, or the client hung up): the client's
    /// fault, not the homeserver's.
    #[error("the client's request body failed: {0}")]
    RequestBody(String),
}

/// A homeserver's answer to a turnServer request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Read whole: small enough to be a turnServer answer.
    Read(BufferedAnswer),
    /// Larger than [`MAX_TURN_ANSWER_BYTES`]: the part read so far, then the
    /// rest as it streams; hop-by-hop headers already dropped.
    Streaming(Response<Body>),
}

/// A homeserver's answer, read whole.
#[derive(Debug)]
pub(crate) struct BufferedAnswer {
    pub status: StatusCode,
    /// End-to-end headers only.
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Debug)]
pub(crate) struct SynapseClient {
    client: HttpClient,
    base_url: String,
    timeout: Duration,
}

impl SynapseClient {
    /// `base_url` has no trailing slash; `timeout` bounds a whole turnServer
    /// exchange (SYNAPSE_TIMEOUT_SECONDS).
    pub(crate) fn new(base_url: &str, timeout: Duration) -> Self {
        Self {
            client: crate::edge::upstream::http_client(),
            base_url: base_url.to_owned(),
            timeout,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn upstream_uri(&self, path_and_query: &str) -> Result<Uri, SynapseError> {
        format!("{}{}", self.base_url, path_and_query)
            .parse()
            .map_err(|e| SynapseError::Broken(format!("cannot build the upstream URL: {e}")))
    }

    /// Sends `parts` + `body` upstream and returns the answer head with a
    /// streaming body. Only the connect timeout applies: a misrouted
    /// long-poll such as `/sync` legitimately takes 30 s or more (docs/behaviour.md §6).
    pub(crate) async fn forward(
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
        // Marks the request as the daemon's: should SYNAPSE_BASE_URL lead
        // back to the daemon (the public URL, through the proxy), it knows
        // the request for its own and answers at once instead of forwarding
        // it round again (docs/behaviour.md §3).
        request.headers_mut().append(header::VIA, VIA.clone());
        self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                SynapseError::Connect(error_chain(&e))
            } else if is_request_body_error(&e) {
                SynapseError::RequestBody(error_chain(&e))
            } else {
                SynapseError::Broken(error_chain(&e))
            }
        })
    }

    /// A turnServer exchange under SYNAPSE_TIMEOUT_SECONDS, with the answer
    /// read into memory so it can be returned unchanged later, unless it is
    /// too large to be a turnServer answer.
    pub(crate) async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, SynapseError> {
        let exchange = async {
            let response = self
                .forward(method, path_and_query, headers, Body::from(body))
                .await?;
            let (mut parts, mut body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let mut read = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| SynapseError::Broken(error_chain(&e)))?;
                // Trailers end no turnServer answer; they are not kept.
                let Ok(data) = frame.into_data() else { continue };
                read.extend_from_slice(&data);
                if read.len() > MAX_TURN_ANSWER_BYTES {
                    let read = read.freeze();
                    let rest = stream::once(std::future::ready(Ok(read))).chain(body.into_data_stream());
                    return Ok(Answer::Streaming(Response::from_parts(
                        parts,
                        Body::from_stream(rest),
                    )));
                }
            }
            Ok(Answer::Read(BufferedAnswer {
                status: parts.status,
                headers: parts.headers,
                body: read.freeze(),
            }))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| SynapseError::Timeout)?
    }

    /// Like [`Self::exchange`], for the daemon's own questions (health,
    /// whoami, `check`): an answer too large to be one is an error.
    pub(crate) async fn ask(
        &self,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<BufferedAnswer, SynapseError> {
        match self
            .exchange(Method::GET, path_and_query, headers, Bytes::new())
            .await?
        {
            Answer::Read(answer) => Ok(answer),
            Answer::Streaming(_) => Err(SynapseError::TooLarge),
        }
    }

    /// Whether the homeserver serves requests: Synapse's own `/health`
    /// answers 200, or, on a homeserver that has no `/health` (Dendrite,
    /// Conduit and its family answer it 404), the client API answers
    /// `/_matrix/client/versions`.
    pub(crate) async fn is_healthy(&self) -> Result<bool, SynapseError> {
        match self.ask("/health", HeaderMap::new()).await?.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => {
                Ok(self.ask(VERSIONS_PATH, HeaderMap::new()).await?.status == StatusCode::OK)
            }
            _ => Ok(false),
        }
    }
}

/// Whether hyper gave up because the request body we were sending failed
/// (hyper calls that an error of "user" code): then the homeserver did
/// nothing wrong.
fn is_request_body_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The client API path every homeserver serves without a token.
pub(crate) const VERSIONS_PATH: &str = "/_matrix/client/versions";

/// The Matrix user ID that owns `access_token` (`GET /account/whoami`).
impl SynapseClient {
    /// Who owns `access_token`, by `GET /_matrix/client/v3/account/whoami`
    /// within the turnServer timeout; `acting_as` is an appservice's
    /// `user_id=…` pair, passed on as it came. `Ok(None)` when the homeserver
    /// answered but did not confirm a user: a non-200, or a body that is not
    /// a whoami answer (docs/behaviour.md §3.1).
    pub(crate) async fn whoami(
        &self,
        access_token: &str,
        acting_as: Option<&str>,
    ) -> Result<Option<WhoAmI>, SynapseError> {
        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|_| SynapseError::Broken("the access token is not a valid header value".into()))?;
        headers.insert(header::AUTHORIZATION, bearer);
        let path = match acting_as {
            Some(pair) => format!("{WHOAMI_PATH}?{pair}"),
            None => WHOAMI_PATH.to_owned(),
        };
        let answer = self.ask(&path, headers).await?;
        Ok((answer.status == StatusCode::OK)
            .then(|| WhoAmI::parse(&answer.body))
            .flatten())
    }
}

/// The whoami path every homeserver serves (r0 and v3 on all of them).
pub(crate) const WHOAMI_PATH: &str = "/_matrix/client/v3/account/whoami";

/// A homeserver's `/account/whoami` answer (Matrix spec, client-server API
/// "GET /_matrix/client/v3/account/whoami").
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WhoAmI {
    pub user_id: String,
    pub is_guest: bool,
}

impl WhoAmI {
    /// Read strictly: a JSON object with a string `user_id` that looks like
    /// a Matrix user ID, an optional boolean `is_guest` and an optional
    /// string `device_id`. Anything else confirms nothing. Other fields are
    /// allowed, as the spec lets servers add them.
    pub(crate) fn parse(body: &[u8]) -> Option<Self> {
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

/// Names the daemon on every answer it forwards or gives in the homeserver's
/// place (RFC 9110 §7.6.3), so an admin, and `check --public-url`, can tell
/// an answer that came through it from one the proxy took straight to the
/// homeserver. Passed-through answers carry it too: a path that should not
/// reach the daemon at all is the misroute an admin most needs to see. Its
/// requests to the homeserver carry it as well, so that one that comes back
/// is known for a loop ([`carries_our_via`]).
pub(crate) const VIA: HeaderValue = HeaderValue::from_static("1.1 matrix-turnify");

/// Whether the daemon's [`VIA`] entry is among `headers`' `Via` hops: on an
/// answer, it came through the daemon; on a request, the daemon sent it
/// itself (requests to the homeserver carry it too), so it has come round.
pub(crate) fn carries_our_via(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|hop| hop.trim().as_bytes() == VIA.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
