//! The polling loop: a reading at start, then one every interval, each wait
//! up to a tenth longer at random so that many daemons on one account do not
//! ask together; a failed poll is tried again sooner. Its log tells changes
//! only (polls failing and working again, a reading gone stale and current
//! again, a budget reached and a month turned, users newly past their
//! budget): a fault lasting a month writes a handful of lines.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Month, Reading, Usage, heaviest};

/// The first retry after a failed poll; it doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(10);

/// Cloudflare's GB, for the log.
const GB: f64 = 1e9;

pub(crate) async fn run(usage: Arc<Usage>) {
    let mut log = Log::default();
    let mut failures: u32 = 0;
    loop {
        let result = usage.read().await;
        let wait = match &result {
            Ok(_) => {
                failures = 0;
                usage.poll_interval
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                retry_after(failures, usage.poll_interval)
            }
        };
        log.after(&usage, result.as_deref().map_err(|e| e.to_string()));
        tokio::time::sleep(jittered(wait)).await;
    }
}

/// The wait after `failures` failed polls in a row.
fn retry_after(failures: u32, interval: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(interval)
}

fn jittered(wait: Duration) -> Duration {
    wait + wait.mul_f64(fastrand::f64() / 10.0)
}

/// What the log last said, so that it says only what changed.
#[derive(Default)]
struct Log {
    failing: bool,
    failed_polls: u64,
    stale: bool,
    first_read: bool,
    /// The month whose budget crossing was logged.
    reached: Option<Month>,
    users_over: HashSet<String>,
    users_month: Option<Month>,
    cut_off_logged: Option<Month>,
}

impl Log {
    fn after(&mut self, usage: &Usage, result: Result<&Reading, String>) {
        match result {
            Ok(reading) => {
                if self.failing {
                    info!(
                        failed_polls = self.failed_polls,
                        "reading Cloudflare's TURN usage works again"
                    );
                }
                (self.failing, self.failed_polls) = (false, 0);
                if !self.first_read {
                    self.first_read = true;
                    info!(
                        egress_gb = reading.figures.egress as f64 / GB,
                        ingress_gb = reading.figures.ingress as f64 / GB,
                        "Cloudflare's TURN usage this month (UTC) read; read again every {} s",
                        usage.poll_interval.as_secs()
                    );
                }
                self.budget(usage, reading);
                self.users(usage, reading);
            }
            Err(error) => {
                self.failed_polls += 1;
                if !self.failing {
                    self.failing = true;
                    warn!(
                        error = %error,
                        "reading Cloudflare's TURN usage failed; trying again, with one line when it works"
                    );
                }
            }
        }
        let limits = usage.limits();
        if limits.any() {
            let stale = usage.is_stale();
            match (self.stale, stale) {
                (false, true) => warn!(
                    bound_seconds = limits.stale_after.as_secs(),
                    "no reading of Cloudflare's TURN usage younger than the bound: no credential is handed \
                     out until one succeeds, as a budget is set"
                ),
                (true, false) => info!("the reading of Cloudflare's TURN usage is current again"),
                _ => {}
            }
            self.stale = stale;
        }
    }

    fn budget(&mut self, usage: &Usage, reading: &Reading) {
        let Some(budget) = usage.limits().monthly else {
            return;
        };
        let reached = reading.figures.egress >= budget;
        match (self.reached, reached) {
            (Some(month), true) if month == reading.month => {}
            (_, true) => {
                self.reached = Some(reading.month);
                warn!(
                    egress_gb = reading.figures.egress as f64 / GB,
                    budget_gb = budget as f64 / GB,
                    "the monthly TURN egress budget is reached: no credential is handed out, on either \
                     front door, until the month turns (UTC)"
                );
            }
            (Some(month), false) if month != reading.month => {
                self.reached = None;
                info!(
                    egress_gb = reading.figures.egress as f64 / GB,
                    "a new month (UTC): the TURN egress budget is open again"
                );
            }
            _ => {}
        }
    }

    fn users(&mut self, usage: &Usage, reading: &Reading) {
        let Some(budget) = usage.limits().per_user else {
            return;
        };
        if self.users_month != Some(reading.month) {
            self.users_month = Some(reading.month);
            self.users_over.clear();
        }
        let mut newly: Vec<&str> = heaviest(reading, reading.figures.users.len())
            .iter()
            .filter(|user| reading.over.contains(&user.identifier))
            .map(|user| user.identifier.as_str())
            .filter(|identifier| !self.users_over.contains(*identifier))
            .collect();
        if !newly.is_empty() {
            let count = newly.len();
            newly.truncate(5);
            warn!(
                count,
                budget_gb = budget as f64 / GB,
                identifiers = newly.join(", "),
                "users reached the per-user monthly TURN egress budget: none gets a credential until the \
                 month turns (UTC)"
            );
            self.users_over.extend(reading.over.iter().cloned());
        }
        if reading.users_cut_off && self.cut_off_logged != Some(reading.month) {
            self.cut_off_logged = Some(reading.month);
            warn!(
                rows = super::analytics::USER_ROWS,
                "every identifier one reading holds is past the per-user budget: users beyond them may be \
                 too, and are not held back; the monthly budget still holds for all"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_sooner_and_double_up_to_the_interval() {
        let interval = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=7).map(|n| retry_after(n, interval).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry_after(u32::MAX, interval), interval);
        assert_eq!(retry_after(1, Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        let wait = Duration::from_secs(300);
        for _ in 0..1000 {
            let jittered = jittered(wait);
            assert!(jittered >= wait && jittered <= wait + wait / 10, "{jittered:?}");
        }
    }
}
