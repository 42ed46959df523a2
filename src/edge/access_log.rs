//! The access log (docs/behaviour.md §8, §12): one `request` line per plain
//! request, the same fields at both front doors, each door naming how the
//! request ended from its own closed set of words.

use std::time::Instant;

use http::{Method, StatusCode};
use tracing::info;

/// A door's closed set of outcome words.
pub(crate) trait OutcomeWord: Copy {
    fn word(self) -> &'static str;
}

/// What every access-log line says of a request, taken as it arrived. The
/// path is kept without its query: `?access_token=` must not reach a log.
pub(crate) struct AccessLine {
    pub(crate) client: String,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) started: Instant,
}

impl AccessLine {
    pub(crate) fn new(client: String, method: Method, path: String) -> Self {
        Self {
            client,
            method,
            path,
            started: Instant::now(),
        }
    }

    /// Milliseconds since the request arrived, to the microsecond.
    pub(crate) fn duration_ms(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3
    }

    /// The Matrix door's line; `auth` says how the homeserver vouched for
    /// the token (docs/behaviour.md §3.1).
    pub(crate) fn matrix(&self, status: StatusCode, outcome: impl OutcomeWord, auth: &'static str) {
        info!(
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            outcome = %outcome.word(),
            auth,
            duration_ms = self.duration_ms(),
            "request"
        );
    }

    /// The LiveKit door's line, marked with its door. Its words are
    /// recorded as strings, as they always were (quoted in the text format).
    pub(crate) fn livekit(&self, status: StatusCode, outcome: impl OutcomeWord) {
        info!(
            front = "livekit",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            outcome = outcome.word(),
            duration_ms = self.duration_ms(),
            "request"
        );
    }
}
