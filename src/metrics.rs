//! Prometheus metrics for `GET /metrics` (docs/behaviour.md §5): requests by outcome,
//! upstream latencies, Cloudflare calls by result, the reuse cache's size,
//! the back-off state, the work in flight, and the LiveKit front door's
//! signalling connections (§12), and the month's Cloudflare usage against
//! the budgets (§13). Labels are fixed words: no token, user or path; per-user
//! figures go to `check` and the log.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::UsageConfig;

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
    usage: Option<UsageMetrics>,
}

/// Registered only when usage is read; the budget gauges only with a budget,
/// so that an alert on them cannot fire for a daemon without one.
struct UsageMetrics {
    egress: Gauge,
    ingress: Gauge,
    last_reading: Gauge,
    stale: Gauge,
    polls: Family<Labels, Counter>,
    budget: Option<(Gauge, Gauge, Gauge)>,
    users_over: Option<Gauge>,
}

/// The usage figures at the moment `/metrics` is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageGauges {
    pub egress: u64,
    pub ingress: u64,
    pub budget: Option<u64>,
    pub budget_reached: Option<bool>,
    /// Unix seconds; 0 before the first good reading.
    pub last_reading_unix: i64,
    pub stale: bool,
    pub users_over: Option<u64>,
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
        Self::new(None)
    }
}

fn bytes_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl UsageMetrics {
    fn register(registry: &mut Registry, usage: &UsageConfig) -> Self {
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let egress = gauge(
            registry,
            "turn_egress_bytes",
            "The TURN key's egress to clients this UTC month, at the last good reading (Cloudflare's analytics)",
        );
        let ingress = gauge(
            registry,
            "turn_ingress_bytes",
            "The TURN key's ingress from clients this UTC month, at the last good reading",
        );
        let last_reading = gauge(
            registry,
            "usage_last_reading_timestamp_seconds",
            "Unix time of the last good reading of Cloudflare's usage; 0 before the first",
        );
        let stale = gauge(
            registry,
            "usage_reading_stale",
            "1 while no reading is younger than three poll intervals (then a budget withholds every credential)",
        );
        let polls = Family::<Labels, Counter>::default();
        registry.register(
            "usage_polls",
            "Readings of Cloudflare's usage, by result (ok, connect, timeout, transport, status, too-large, not-json, \
             shape, graphql-error)",
            polls.clone(),
        );
        let budget = usage.monthly_budget.map(|_| {
            (
                gauge(
                    registry,
                    "turn_egress_budget_bytes",
                    "TURN_MONTHLY_EGRESS_BUDGET_GB, in bytes",
                ),
                gauge(
                    registry,
                    "turn_egress_budget_remaining_bytes",
                    "What is left of the monthly egress budget at the last good reading",
                ),
                gauge(
                    registry,
                    "turn_egress_budget_reached",
                    "1 while this month's egress is at or past the budget: no credential is handed out",
                ),
            )
        });
        let users_over = usage.user_monthly_budget.map(|_| {
            gauge(
                registry,
                "users_over_budget",
                "Users or LiveKit identities at or past TURN_USER_MONTHLY_EGRESS_BUDGET_GB this month",
            )
        });
        Self {
            egress,
            ingress,
            last_reading,
            stale,
            polls,
            budget,
            users_over,
        }
    }

    fn set(&self, gauges: &UsageGauges) {
        self.egress.set(bytes_gauge(gauges.egress));
        self.ingress.set(bytes_gauge(gauges.ingress));
        self.last_reading.set(gauges.last_reading_unix);
        self.stale.set(i64::from(gauges.stale));
        if let (Some((budget, remaining, reached)), Some(total)) = (&self.budget, gauges.budget) {
            budget.set(bytes_gauge(total));
            remaining.set(bytes_gauge(total.saturating_sub(gauges.egress)));
            reached.set(i64::from(gauges.budget_reached.unwrap_or(false)));
        }
        if let (Some(users_over), Some(count)) = (&self.users_over, gauges.users_over) {
            users_over.set(bytes_gauge(count));
        }
    }
}

impl Metrics {
    /// The daemon's metrics, with the usage ones when `usage` is read.
    pub fn new(usage: Option<&UsageConfig>) -> Self {
        let mut registry = Registry::with_prefix("turnify");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by outcome (cloudflare, reused, synapse-fallback, passed-through, upstream-error, \
             preflight, rejected, body-error, loop, over-budget, user-over-budget, usage-unknown) and by how the homeserver vouched for the token (homeserver: its \
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
             cloudflare-failed, nothing-to-add, left-while-held, no-join, no-identity, identity-mismatch, \
             not-publisher, over-budget, user-over-budget, usage-unknown)",
            signalling_connections.clone(),
        );
        let signalling_open = Gauge::default();
        registry.register(
            "livekit_signalling_connections_open",
            "LiveKit signalling connections being relayed",
            signalling_open.clone(),
        );
        let usage = usage.map(|usage| UsageMetrics::register(&mut registry, usage));
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
            usage,
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

    /// A reading of Cloudflare's usage; `result` is `ok` or the error's kind.
    pub fn usage_poll(&self, result: &'static str) {
        if let Some(usage) = &self.usage {
            usage.polls.get_or_create(&[("result", result)]).inc();
        }
    }

    /// The text exposition, with the gauges read at this moment.
    pub fn render(&self, cache_entries: u64, backoff_open: bool, usage: Option<UsageGauges>) -> String {
        self.cache_entries
            .set(i64::try_from(cache_entries).unwrap_or(i64::MAX));
        self.backoff_open.set(i64::from(backoff_open));
        if let (Some(metrics), Some(gauges)) = (&self.usage, usage) {
            metrics.set(&gauges);
        }
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
        let text = metrics.render(7, true, None);
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
