//! What a fake saw: one [`Recorded`] per request, kept in arrival order by a
//! bounded log shared between the server task and the test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use http::request::Parts;
use http::{HeaderMap, Method};

/// Oldest records are dropped past this many, so a benchmark run against a
/// long-lived fake cannot grow it without bound; no test sends that many.
pub const MAX_RECORDED_REQUESTS: usize = 50_000;

/// Only this many bytes of a request body are kept in its record (the rest is
/// still read, or streamed through by the echo endpoint).
pub const MAX_RECORDED_BODY: usize = 1024 * 1024;

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request method.
    pub method: Method,
    /// Path and query exactly as they appeared on the request line, not decoded.
    pub path_and_query: String,
    /// Every header line as received, repeated names included.
    pub headers: HeaderMap,
    /// The request body (at most [`MAX_RECORDED_BODY`] bytes of it).
    pub body: Bytes,
    /// The address the connection came from.
    pub peer: SocketAddr,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive), if present and
    /// valid visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name` (case-insensitive), in the order received.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    ///
    /// If the body is not JSON; the message shows the body.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {} {} is not JSON ({e}): {:?}",
                self.method,
                self.path_and_query,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn new(parts: &Parts, body: Bytes, peer: SocketAddr) -> Self {
        Self {
            method: parts.method.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: parts.headers.clone(),
            body,
            peer,
        }
    }
}

/// The shared, bounded request log of one fake.
#[derive(Default)]
pub(crate) struct Recorder {
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Sequence number of the next request; also the count of all requests seen.
    next_seq: u64,
    entries: VecDeque<(u64, Recorded)>,
}

impl Recorder {
    /// Reads the body (keeping at most [`MAX_RECORDED_BODY`] bytes) and records
    /// the request; returns the kept body for the handler to inspect.
    pub(crate) async fn record(&self, parts: &Parts, body: Body, peer: SocketAddr) -> Bytes {
        let mut kept = BytesMut::new();
        let mut data = body.into_data_stream();
        while let Some(Ok(chunk)) = data.next().await {
            keep_capped(&mut kept, &chunk);
        }
        let kept = kept.freeze();
        self.push(Recorded::new(parts, kept.clone(), peer));
        kept
    }

    /// Records the request at once and returns its body as a stream that
    /// passes every chunk through; the record gets the body when the stream
    /// ends, so the echo endpoint never buffers what it forwards.
    pub(crate) fn record_streaming(
        self: &Arc<Self>,
        parts: &Parts,
        body: Body,
        peer: SocketAddr,
    ) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
        let seq = self.push(Recorded::new(parts, Bytes::new(), peer));
        let state = Some((body.into_data_stream(), BytesMut::new(), Arc::clone(self)));
        stream::unfold(state, move |state| async move {
            let (mut data, mut kept, recorder) = state?;
            match data.next().await {
                Some(Ok(chunk)) => {
                    keep_capped(&mut kept, &chunk);
                    Some((Ok(chunk), Some((data, kept, recorder))))
                }
                Some(Err(e)) => {
                    recorder.set_body(seq, kept.freeze());
                    Some((Err(e), None))
                }
                None => {
                    recorder.set_body(seq, kept.freeze());
                    None
                }
            }
        })
    }

    /// Every recorded request, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<Recorded> {
        self.lock().entries.iter().map(|(_, r)| r.clone()).collect()
    }

    /// How many requests were recorded in all, including any dropped by the cap.
    pub(crate) fn total(&self) -> u64 {
        self.lock().next_seq
    }

    fn push(&self, rec: Recorded) -> u64 {
        let mut log = self.lock();
        let seq = log.next_seq;
        log.next_seq += 1;
        if log.entries.len() == MAX_RECORDED_REQUESTS {
            log.entries.pop_front();
        }
        log.entries.push_back((seq, rec));
        seq
    }

    fn set_body(&self, seq: u64, body: Bytes) {
        let mut log = self.lock();
        if let Ok(i) = log.entries.binary_search_by_key(&seq, |(s, _)| *s) {
            log.entries[i].1.body = body;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }
}

fn keep_capped(kept: &mut BytesMut, chunk: &[u8]) {
    let room = MAX_RECORDED_BODY.saturating_sub(kept.len());
    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// Locks a fake's state or log, ignoring poisoning: a test that panicked
/// while holding the lock must not hide what the fake saw from the assertions
/// that explain the failure.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
