//! The back-off (docs/behaviour.md §5): after repeated Cloudflare failures, Cloudflare is
//! skipped for a cool-down and requests fall back at once; then a single
//! request probes it again. A probe whose mint is dropped hands the probe on.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::credentials::issued::{Issued, MintError};
use crate::throttle::{Throttle, throttled_warn};

/// Consecutive Cloudflare failures that start a back-off.
pub(crate) const BACKOFF_AFTER_FAILURES: u32 = 3;
/// How long Cloudflare is left alone after that, unless a 429 says otherwise.
pub(crate) const BACKOFF_COOL_DOWN: Duration = Duration::from_secs(30);

/// The back-off state: closed (Cloudflare is asked), open (it is skipped
/// until a moment), or half-open (one probe request is on its way).
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    /// A Cloudflare that flaps would open and close the back-off again and
    /// again: those lines are throttled like per-request ones.
    opened_lines: Throttle,
    closed_lines: Throttle,
}

/// Why a request may ask Cloudflare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// No back-off: every request asks.
    Closed,
    /// The cool-down is over and this request is the one probe.
    Probe,
}

impl Backoff {
    /// May a request ask Cloudflare now? `Err` carries the time left.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<Admission, Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            Some(_) if self.probing => Err(Duration::ZERO),
            Some(_) => {
                // Cool-down over: this request probes; the others still skip.
                self.probing = true;
                Ok(Admission::Probe)
            }
            None => Ok(Admission::Closed),
        }
    }

    /// The probe ended without a result (its task was cancelled): the next
    /// request probes instead, rather than every request skipping Cloudflare
    /// until a restart.
    pub(crate) fn probe_abandoned(&mut self) {
        self.probing = false;
    }

    /// Closes the back-off; says whether it had been open.
    pub(crate) fn succeeded(&mut self) -> bool {
        let was_open = self.open_until.is_some();
        self.consecutive_failures = 0;
        self.open_until = None;
        self.probing = false;
        was_open
    }

    pub(crate) fn failed(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.probing || self.consecutive_failures >= BACKOFF_AFTER_FAILURES || retry_after.is_some() {
            self.open_until = Some(now + retry_after.unwrap_or(BACKOFF_COOL_DOWN));
            self.probing = false;
        }
    }

    /// How long Cloudflare is still skipped, if it is.
    pub(crate) fn cool_down_left(&self, now: Instant) -> Option<Duration> {
        self.open_until
            .filter(|until| now < *until)
            .map(|until| until - now)
    }

    pub(crate) fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until) || self.probing
    }
}

/// Runs `mint` unless the back-off says to skip Cloudflare, and records its
/// result there.
pub(crate) async fn guarded_mint<F>(
    backoff: &Mutex<Backoff>,
    clock: &Clock,
    mint: F,
) -> Result<Issued, MintError>
where
    F: Future<Output = Result<Issued, MintError>>,
{
    let admission = backoff
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(clock.now())
        .map_err(MintError::BackedOff)?;
    let mut probe = ProbeGuard {
        backoff,
        pending: admission == Admission::Probe,
    };
    let result = mint.await;
    // A budget, not Cloudflare, said no: Cloudflare was not asked, so there
    // is nothing to record, and a probe is handed on as if dropped.
    if matches!(result, Err(MintError::Withheld(_))) {
        return result;
    }
    probe.pending = false;
    let now = clock.now();
    let mut backoff = backoff.lock().unwrap_or_else(PoisonError::into_inner);
    // One line when the back-off opens and one when it closes: a failed
    // probe every cool-down during a long outage is not news (docs/behaviour.md §10).
    match &result {
        Ok(_) => {
            if backoff.succeeded()
                && let Some(held_back) = backoff.closed_lines.admit(std::time::Instant::now())
            {
                tracing::info!(held_back, "Cloudflare answers again; the back-off is over");
            }
        }
        Err(e) => {
            let was_open = backoff.is_open(now);
            backoff.failed(now, e.retry_after());
            match backoff.cool_down_left(now) {
                Some(cool_down) if !was_open => throttled_warn!(
                    backoff.opened_lines,
                    cool_down_seconds = cool_down.as_secs(),
                    error = %e,
                    "Cloudflare failed repeatedly; skipping it and answering with Synapse's answer until a probe \
                     after each cool-down succeeds"
                ),
                Some(cool_down) => tracing::debug!(
                    cool_down_seconds = cool_down.as_secs(),
                    error = %e,
                    "the probe of Cloudflare failed; the back-off goes on"
                ),
                None => {}
            }
        }
    }
    result
}

/// Gives the probe back if its mint is dropped before it ends.
struct ProbeGuard<'a> {
    backoff: &'a Mutex<Backoff>,
    pending: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.pending {
            self.backoff
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .probe_abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_opens_after_three_failures_and_probes_once() {
        let t0 = Instant::now();
        let mut backoff = Backoff::default();
        for _ in 0..2 {
            assert_eq!(backoff.admit(t0), Ok(Admission::Closed));
            backoff.failed(t0, None);
        }
        assert_eq!(
            backoff.admit(t0),
            Ok(Admission::Closed),
            "two failures do not open it"
        );
        backoff.failed(t0, None);
        assert_eq!(
            backoff.admit(t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(20))
        );
        let after = t0 + BACKOFF_COOL_DOWN;
        assert_eq!(
            backoff.admit(after),
            Ok(Admission::Probe),
            "the first request after the cool-down probes"
        );
        assert!(
            backoff.admit(after).is_err(),
            "the others still skip while it probes"
        );
        backoff.failed(after, None);
        assert!(
            backoff.admit(after + Duration::from_secs(1)).is_err(),
            "a failed probe re-opens it"
        );
        let later = after + BACKOFF_COOL_DOWN;
        assert_eq!(backoff.admit(later), Ok(Admission::Probe));
        assert!(backoff.succeeded(), "it was open");
        assert_eq!(backoff.admit(later), Ok(Admission::Closed));
        assert!(!backoff.is_open(later));
    }

    #[test]
    fn a_429_opens_the_backoff_for_its_retry_after() {
        let t0 = Instant::now();
        let mut backoff = Backoff::default();
        backoff.failed(t0, Some(Duration::from_secs(120)));
        assert_eq!(
            backoff.admit(t0 + Duration::from_secs(100)),
            Err(Duration::from_secs(20))
        );
        assert_eq!(backoff.admit(t0 + Duration::from_secs(120)), Ok(Admission::Probe));
    }

    /// A probe whose mint is dropped unfinished (its task cancelled) hands
    /// the probe on to the next request instead of keeping it forever.
    #[tokio::test]
    async fn a_mint_a_budget_withholds_is_no_failure_and_hands_a_probe_on() {
        use crate::usage::Withheld;
        let clock = Clock::default();
        let backoff = Mutex::new(Backoff::default());
        for _ in 0..BACKOFF_AFTER_FAILURES {
            let withheld = guarded_mint(&backoff, &clock, async { Err(Withheld::UserOverBudget.into()) });
            assert!(matches!(withheld.await, Err(MintError::Withheld(_))));
        }
        assert!(!backoff.lock().expect("lock").is_open(clock.now()));
        backoff
            .lock()
            .expect("lock")
            .failed(clock.now(), Some(Duration::ZERO));
        let probe = guarded_mint(&backoff, &clock, async { Err(Withheld::UserOverBudget.into()) });
        assert!(matches!(probe.await, Err(MintError::Withheld(_))));
        assert_eq!(
            backoff.lock().expect("lock").admit(clock.now()),
            Ok(Admission::Probe)
        );
    }

    #[tokio::test]
    async fn a_probe_dropped_unfinished_lets_the_next_request_probe() {
        let clock = Clock::default();
        let backoff = Mutex::new(Backoff::default());
        backoff
            .lock()
            .expect("lock")
            .failed(clock.now(), Some(Duration::ZERO));
        let never = guarded_mint(&backoff, &clock, std::future::pending());
        assert!(
            futures_util::poll!(Box::pin(never)).is_pending(),
            "the probe is on its way, then dropped"
        );
        assert_eq!(
            backoff.lock().expect("lock").admit(clock.now()),
            Ok(Admission::Probe)
        );
    }
}
