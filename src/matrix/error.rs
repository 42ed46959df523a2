//! The daemon's own error answers: a Matrix error body with Synapse's header
//! set, so a browser client can read it. Upstream Matrix errors never come
//! through here; they are passed on unchanged.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::matrix::synapse::SynapseError;

/// The CORS headers Synapse 1.163.2 puts on every client-API answer and on
/// its preflight answers (docs/synapse-facts.md §4): fixed strings, nothing echoed.
pub(crate) const CORS_HEADERS: [(HeaderName, HeaderValue); 4] = [
    (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
    (
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    ),
    (
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization, Date"),
    ),
    (
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Synapse-Trace-Id, Server"),
    ),
];

/// Synapse's `Cache-Control` on JSON answers.
pub(crate) const SYNAPSE_CACHE_CONTROL: HeaderValue =
    HeaderValue::from_static("no-cache, no-store, must-revalidate");

/// An error answered by the daemon itself. Its status is never 401 or 403:
/// matrix-js-sdk treats those as "logged out" and "TURN forbidden for the
/// rest of the session" (docs/behaviour.md §3), which a fault of ours must not cause.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MatrixError {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub error: &'static str,
}

impl MatrixError {
    pub(crate) const BODY_TOO_LARGE: Self = Self {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        errcode: "M_TOO_LARGE",
        error: "Request body too large",
    };

    /// The body did not arrive within the head deadline (docs/behaviour.md §10).
    pub(crate) const BODY_TIMEOUT: Self = Self {
        status: StatusCode::REQUEST_TIMEOUT,
        errcode: "M_UNKNOWN",
        error: "The request body did not arrive in time",
    };

    /// A request the daemon sent to `SYNAPSE_BASE_URL` came back to it
    /// (docs/behaviour.md §3): answered at once, so a loop cannot hold
    /// connections until they run out.
    pub(crate) const REQUEST_LOOP: Self = Self {
        status: StatusCode::LOOP_DETECTED,
        errcode: "M_UNKNOWN",
        error: "This request came back to matrix-turnify: SYNAPSE_BASE_URL must be the homeserver's own listener, not the public URL",
    };

    /// The body ended early or was malformed; the client has usually gone.
    pub(crate) const BODY_UNREADABLE: Self = Self {
        status: StatusCode::BAD_REQUEST,
        errcode: "M_UNKNOWN",
        error: "The request body could not be read",
    };
}

impl From<&SynapseError> for MatrixError {
    fn from(err: &SynapseError) -> Self {
        match err {
            SynapseError::Timeout => Self {
                status: StatusCode::GATEWAY_TIMEOUT,
                errcode: "M_UNKNOWN",
                error: "The homeserver did not answer in time",
            },
            SynapseError::Connect(_) => Self {
                status: StatusCode::BAD_GATEWAY,
                errcode: "M_UNKNOWN",
                error: "The homeserver could not be reached",
            },
            SynapseError::RequestBody(_) => Self::BODY_UNREADABLE,
            SynapseError::Broken(_) | SynapseError::TooLarge => Self {
                status: StatusCode::BAD_GATEWAY,
                errcode: "M_UNKNOWN",
                error: "The homeserver sent an invalid answer",
            },
        }
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "errcode": self.errcode, "error": self.error }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, SYNAPSE_CACHE_CONTROL);
        headers.extend(CORS_HEADERS);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_errors_are_never_401_or_403() {
        for err in [
            SynapseError::Timeout,
            SynapseError::Connect("refused".into()),
            SynapseError::Broken("closed".into()),
            SynapseError::TooLarge,
        ] {
            let status = MatrixError::from(&err).status;
            assert!(status.is_server_error(), "{err:?} -> {status}");
        }
    }
}
