//! Prometheus metrics for `GET /metrics` (docs/behaviour.md §5): requests by outcome,
//! upstream latencies, Cloudflare calls by result, the reuse cache's size,
//! the back-off state, the work in flight, and the LiveKit front door's
//! signalling connections (§12). Labels are fixed words: no
//! token, user or path.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];
type RequestLabels = [(&'static str, &'static str); 2];

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    synapse_seconds: Histogram,
    whoami_seconds: Histogram,
    cloudflare_seconds: Histogram,
    cloudflare_calls: Family<Labels, Counter>,
    cache_entries: Gauge,
    backoff_open: Gauge,
    requests_in_flight: Gauge,
    mints_in_flight: Gauge,
    signalling_connections: Family<Labels, Counter>,
    signalling_open: Gauge,
}

/// Counts one unit of work in a gauge for as long as it lives: dropped with
/// the work, also when a hung-up client's request future is dropped, so the
/// gauge never keeps a request that is gone.
#[must_use = "the work is counted only while this lives"]
pub struct InFlight(Gauge);

impl InFlight {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// 1 ms to about 16 s: from a reused answer on loopback to a timed-out upstream.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("turnify");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by outcome (cloudflare, reused, synapse-fallback, passed-through, upstream-error, \
             preflight, rejected, body-error, loop) and by how the homeserver vouched for the token (homeserver: its \
             own answer; whoami: a 404 M_NOT_FOUND confirmed by /account/whoami)",
            requests.clone(),
        );
        let synapse_seconds = Histogram::new(latency_buckets());
        registry.register(
            "synapse_request_duration_seconds",
            "Time Synapse took to answer a turnServer request",
            synapse_seconds.clone(),
        );
        let whoami_seconds = Histogram::new(latency_buckets());
        registry.register(
            "whoami_request_duration_seconds",
            "Time the homeserver took to answer /account/whoami",
            whoami_seconds.clone(),
        );
        let cloudflare_seconds = Histogram::new(latency_buckets());
        registry.register(
            "cloudflare_request_duration_seconds",
            "Time Cloudflare took to answer a mint request",
            cloudflare_seconds.clone(),
        );
        let cloudflare_calls = Family::<Labels, Counter>::default();
        registry.register(
            "cloudflare_calls",
            "Mint attempts, by result (ok, connect, timeout, transport, status, too-large, not-json, shape, unusable, skipped-backoff)",
            cloudflare_calls.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "credential_cache_entries",
            "Access tokens with a credential held for reuse",
            cache_entries.clone(),
        );
        let backoff_open = Gauge::default();
        registry.register(
            "cloudflare_backoff_active",
            "1 while Cloudflare is skipped after repeated failures",
            backoff_open.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being answered (turnServer and passed-through paths)",
            requests_in_flight.clone(),
        );
        let mints_in_flight = Gauge::default();
        registry.register(
            "cloudflare_mints_in_flight",
            "Mints under way, including those every waiting client has given up on",
            mints_in_flight.clone(),
        );
        let signalling_connections = Family::<Labels, Counter>::default();
        registry.register(
            "livekit_signalling_connections",
            "LiveKit signalling connections ended, by what LiveKit's join got (cloudflare, reused, late, \
             cloudflare-failed, nothing-to-add, left-while-held, no-join, no-identity, identity-mismatch, not-publisher)",
            signalling_connections.clone(),
        );
        let signalling_open = Gauge::default();
        registry.register(
            "livekit_signalling_connections_open",
            "LiveKit signalling connections being relayed",
            signalling_open.clone(),
        );
        Self {
            registry,
            requests,
            synapse_seconds,
            whoami_seconds,
            cloudflare_seconds,
            cloudflare_calls,
            cache_entries,
            backoff_open,
            requests_in_flight,
            mints_in_flight,
            signalling_connections,
            signalling_open,
        }
    }
}

impl Metrics {
    pub fn request(&self, outcome: &'static str, auth: &'static str) {
        self.requests
            .get_or_create(&[("outcome", outcome), ("auth", auth)])
            .inc();
    }

    pub fn whoami_answered(&self, took: Duration) {
        self.whoami_seconds.observe(took.as_secs_f64());
    }

    pub fn request_started(&self) -> InFlight {
        InFlight::new(&self.requests_in_flight)
    }

    pub fn mint_started(&self) -> InFlight {
        InFlight::new(&self.mints_in_flight)
    }

    pub fn signalling_started(&self) -> InFlight {
        InFlight::new(&self.signalling_open)
    }

    /// A signalling connection ended; `turn` says what its join got.
    pub fn signalling_ended(&self, turn: &'static str) {
        self.signalling_connections.get_or_create(&[("turn", turn)]).inc();
    }

    pub fn mints_in_flight(&self) -> i64 {
        self.mints_in_flight.get()
    }

    pub fn synapse_answered(&self, took: Duration) {
        self.synapse_seconds.observe(took.as_secs_f64());
    }

    /// A mint attempt; `took` is `None` when Cloudflare was not asked.
    pub fn cloudflare_call(&self, result: &'static str, took: Option<Duration>) {
        self.cloudflare_calls.get_or_create(&[("result", result)]).inc();
        if let Some(took) = took {
            self.cloudflare_seconds.observe(took.as_secs_f64());
        }
    }

    /// The text exposition, with the gauges read at this moment.
    pub fn render(&self, cache_entries: u64, backoff_open: bool) -> String {
        self.cache_entries
            .set(i64::try_from(cache_entries).unwrap_or(i64::MAX));
        self.backoff_open.set(i64::from(backoff_open));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_appear_in_the_exposition() {
        let metrics = Metrics::default();
        metrics.request("reused", "homeserver");
        metrics.request("reused", "homeserver");
        metrics.whoami_answered(Duration::from_millis(1));
        metrics.cloudflare_call("ok", Some(Duration::from_millis(3)));
        metrics.cloudflare_call("skipped-backoff", None);
        metrics.synapse_answered(Duration::from_millis(2));
        let request = metrics.request_started();
        let _mint = metrics.mint_started();
        drop(request);
        let _call = metrics.signalling_started();
        metrics.signalling_ended("reused");
        let text = metrics.render(7, true);
        for line in [
            "turnify_requests_total{outcome=\"reused\",auth=\"homeserver\"} 2",
            "turnify_whoami_request_duration_seconds_count 1",
            "turnify_cloudflare_calls_total{result=\"ok\"} 1",
            "turnify_cloudflare_calls_total{result=\"skipped-backoff\"} 1",
            "turnify_cloudflare_request_duration_seconds_count 1",
            "turnify_synapse_request_duration_seconds_count 1",
            "turnify_credential_cache_entries 7",
            "turnify_cloudflare_backoff_active 1",
            "turnify_requests_in_flight 0",
            "turnify_cloudflare_mints_in_flight 1",
            "turnify_livekit_signalling_connections_total{turn=\"reused\"} 1",
            "turnify_livekit_signalling_connections_open 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
