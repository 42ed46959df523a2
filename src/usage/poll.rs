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

use super::{Limits, Month, Reading, Usage, in_gb};

/// The first retry after a failed poll; it doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(10);

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
        let events = log.after(
            usage.limits(),
            usage.is_stale(),
            result.as_deref().map_err(|e| e.to_string()),
        );
        for event in events {
            emit(event, usage.poll_interval);
        }
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

/// What the log says about a reading.
#[derive(Debug, PartialEq)]
enum Event {
    FirstReading {
        egress: u64,
        ingress: u64,
    },
    Failing(String),
    WorksAgain {
        failed_polls: u64,
    },
    Stale {
        bound: Duration,
    },
    Current,
    BudgetReached {
        egress: u64,
        budget: u64,
    },
    MonthTurned {
        egress: u64,
    },
    UsersOver {
        count: usize,
        first: Vec<String>,
        budget: u64,
    },
    UsersCutOff,
}

fn emit(event: Event, poll_interval: Duration) {
    match event {
        Event::FirstReading { egress, ingress } => info!(
            egress_gb = in_gb(egress),
            ingress_gb = in_gb(ingress),
            "Cloudflare's TURN usage this month (UTC) read; read again every {} s",
            poll_interval.as_secs()
        ),
        Event::Failing(error) => warn!(
            error = %error,
            "reading Cloudflare's TURN usage failed; trying again, with one line when it works"
        ),
        Event::WorksAgain { failed_polls } => {
            info!(failed_polls, "reading Cloudflare's TURN usage works again");
        }
        Event::Stale { bound } => warn!(
            bound_seconds = bound.as_secs(),
            "no reading of Cloudflare's TURN usage younger than the bound: no credential is handed out \
             until one succeeds, as a budget is set"
        ),
        Event::Current => info!("the reading of Cloudflare's TURN usage is current again"),
        Event::BudgetReached { egress, budget } => warn!(
            egress_gb = in_gb(egress),
            budget_gb = in_gb(budget),
            "the monthly TURN egress budget is reached: no credential is handed out, on either front \
             door, until the month turns (UTC)"
        ),
        Event::MonthTurned { egress } => info!(
            egress_gb = in_gb(egress),
            "a new month (UTC): the TURN egress budget is open again"
        ),
        Event::UsersOver { count, first, budget } => warn!(
            count,
            budget_gb = in_gb(budget),
            identifiers = first.join(", "),
            "users reached the per-user monthly TURN egress budget: none gets a credential until the \
             month turns (UTC)"
        ),
        Event::UsersCutOff => warn!(
            rows = super::analytics::USER_ROWS,
            "every identifier one reading holds is past the per-user budget: users beyond them may be \
             too, and are not held back; the monthly budget still holds for all"
        ),
    }
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
    /// The events a reading's result brings; `stale` is whether the
    /// latest reading is now too old.
    fn after(&mut self, limits: &Limits, stale: bool, result: Result<&Reading, String>) -> Vec<Event> {
        let mut events = Vec::new();
        match result {
            Ok(reading) => {
                if self.failing {
                    events.push(Event::WorksAgain {
                        failed_polls: self.failed_polls,
                    });
                }
                (self.failing, self.failed_polls) = (false, 0);
                if !self.first_read {
                    self.first_read = true;
                    events.push(Event::FirstReading {
                        egress: reading.figures.egress,
                        ingress: reading.figures.ingress,
                    });
                }
                self.budget(limits, reading, &mut events);
                self.users(limits, reading, &mut events);
            }
            Err(error) => {
                self.failed_polls += 1;
                if !self.failing {
                    self.failing = true;
                    events.push(Event::Failing(error));
                }
            }
        }
        if limits.any() {
            match (self.stale, stale) {
                (false, true) => events.push(Event::Stale {
                    bound: limits.stale_after,
                }),
                (true, false) => events.push(Event::Current),
                _ => {}
            }
            self.stale = stale;
        }
        events
    }

    fn budget(&mut self, limits: &Limits, reading: &Reading, events: &mut Vec<Event>) {
        let Some(budget) = limits.monthly else {
            return;
        };
        let egress = reading.figures.egress;
        match (self.reached, egress >= budget) {
            (Some(month), true) if month == reading.month => {}
            (_, true) => {
                self.reached = Some(reading.month);
                events.push(Event::BudgetReached { egress, budget });
            }
            (Some(month), false) if month != reading.month => {
                self.reached = None;
                events.push(Event::MonthTurned { egress });
            }
            _ => {}
        }
    }

    fn users(&mut self, limits: &Limits, reading: &Reading, events: &mut Vec<Event>) {
        let Some(budget) = limits.per_user else {
            return;
        };
        if self.users_month != Some(reading.month) {
            self.users_month = Some(reading.month);
            self.users_over.clear();
        }
        // Heaviest first, as the reading lists them.
        let newly: Vec<&str> = reading
            .figures
            .users
            .iter()
            .map(|user| user.identifier.as_str())
            .filter(|identifier| reading.over.contains(*identifier) && !self.users_over.contains(*identifier))
            .collect();
        if !newly.is_empty() {
            events.push(Event::UsersOver {
                count: newly.len(),
                first: newly
                    .iter()
                    .take(5)
                    .map(|identifier| (*identifier).to_owned())
                    .collect(),
                budget,
            });
            self.users_over.extend(reading.over.iter().cloned());
        }
        if reading.users_cut_off && self.cut_off_logged != Some(reading.month) {
            self.cut_off_logged = Some(reading.month);
            events.push(Event::UsersCutOff);
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

    const GB: u64 = 1_000_000_000;

    fn reading(limits: &Limits, when: &str, egress: u64, users: &[(&str, u64)]) -> Reading {
        let figures = super::super::analytics::Figures {
            egress,
            ingress: 0,
            users: users
                .iter()
                .map(|(identifier, egress)| super::super::analytics::UserFigures {
                    identifier: (*identifier).to_owned(),
                    egress: *egress,
                    ingress: 0,
                })
                .collect(),
            keys: Vec::new(),
        };
        let wall = chrono::DateTime::parse_from_rfc3339(when)
            .expect("time")
            .with_timezone(&chrono::Utc);
        Reading::new(figures, limits, std::time::Instant::now(), wall)
    }

    #[test]
    fn the_log_says_what_changed_once() {
        let limits = Limits {
            monthly: Some(10 * GB),
            per_user: Some(GB),
            stale_after: Duration::from_secs(900),
        };
        let mut log = Log::default();
        let nov = |egress, users: &[(&str, u64)]| reading(&limits, "2026-11-20T00:00:00Z", egress, users);
        assert_eq!(
            log.after(&limits, false, Ok(&nov(GB, &[]))),
            [Event::FirstReading {
                egress: GB,
                ingress: 0
            }]
        );
        // Failures: one line, then one when the reading has gone stale.
        assert_eq!(
            log.after(&limits, false, Err("503".into())),
            [Event::Failing("503".into())]
        );
        assert_eq!(log.after(&limits, false, Err("timeout".into())), []);
        assert_eq!(
            log.after(&limits, true, Err("timeout".into())),
            [Event::Stale {
                bound: Duration::from_secs(900)
            }]
        );
        assert_eq!(log.after(&limits, true, Err("garbage".into())), []);
        assert_eq!(
            log.after(&limits, false, Ok(&nov(GB, &[]))),
            [Event::WorksAgain { failed_polls: 4 }, Event::Current]
        );
        // The budget: once, however many readings past it.
        let over = nov(10 * GB, &[("@a:x", 2 * GB), ("@b:x", GB), ("@c:x", GB - 1)]);
        assert_eq!(
            log.after(&limits, false, Ok(&over)),
            [
                Event::BudgetReached {
                    egress: 10 * GB,
                    budget: 10 * GB
                },
                Event::UsersOver {
                    count: 2,
                    first: vec!["@a:x".into(), "@b:x".into()],
                    budget: GB
                }
            ]
        );
        assert_eq!(log.after(&limits, false, Ok(&over)), []);
        let more = nov(11 * GB, &[("@a:x", 2 * GB), ("@c:x", GB)]);
        assert_eq!(
            log.after(&limits, false, Ok(&more)),
            [Event::UsersOver {
                count: 1,
                first: vec!["@c:x".into()],
                budget: GB
            }]
        );
        // A new month: the budget opens, users start again.
        let december = reading(&limits, "2026-12-01T00:05:00Z", GB, &[("@a:x", GB)]);
        assert_eq!(
            log.after(&limits, false, Ok(&december)),
            [
                Event::MonthTurned { egress: GB },
                Event::UsersOver {
                    count: 1,
                    first: vec!["@a:x".into()],
                    budget: GB
                }
            ]
        );
    }

    #[test]
    fn without_a_budget_a_stale_reading_says_nothing() {
        let limits = Limits {
            monthly: None,
            per_user: None,
            stale_after: Duration::from_secs(900),
        };
        let mut log = Log::default();
        assert_eq!(
            log.after(&limits, true, Err("503".into())),
            [Event::Failing("503".into())]
        );
        assert_eq!(log.after(&limits, true, Err("503".into())), []);
        let reading = reading(&limits, "2026-12-06T00:00:00Z", 50 * GB, &[]);
        assert_eq!(
            log.after(&limits, false, Ok(&reading)),
            [
                Event::WorksAgain { failed_polls: 2 },
                Event::FirstReading {
                    egress: 50 * GB,
                    ingress: 0
                }
            ]
        );
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
