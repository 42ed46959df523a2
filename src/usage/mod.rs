//! Cloudflare usage in view, and budgets that hold (docs/behaviour.md §13).
//! The TURN key's egress this UTC month is read from Cloudflare's GraphQL
//! Analytics API on an interval (`poll`, `analytics`), never per request;
//! every credential, minted or reused, on either front door, passes
//! [`Usage::admit`] and [`Usage::admit_holder`], which read only memory.

pub(crate) mod analytics;
pub(crate) mod poll;

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::clock::Clock;
use crate::config::{BYTES_PER_GB, UsageConfig};
use crate::metrics::{Metrics, UsageGauges};

use analytics::{AnalyticsClient, Asking, Figures};

/// A reading older than this many poll intervals no longer vouches for a
/// budget: one or two failed polls are a blip, three are an outage.
const STALE_AFTER_POLLS: u32 = 3;

/// Why no credential is handed out, as the front doors' outcome words say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withheld {
    /// The month's egress is at or past `TURN_MONTHLY_EGRESS_BUDGET_GB`.
    OverBudget,
    /// This holder's egress is at or past `TURN_USER_MONTHLY_EGRESS_BUDGET_GB`.
    UserOverBudget,
    /// A budget is set, and no reading younger than the bound says where
    /// the month stands.
    UsageUnknown,
}

impl Withheld {
    pub fn word(self) -> &'static str {
        match self {
            Self::OverBudget => "over-budget",
            Self::UserOverBudget => "user-over-budget",
            Self::UsageUnknown => "usage-unknown",
        }
    }
}

/// A UTC month, as `(year, month)`.
pub(crate) type Month = (i32, u32);

pub(crate) fn month_of(t: DateTime<Utc>) -> Month {
    (t.year(), t.month())
}

/// The budgets, in bytes, and how old a reading may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) monthly: Option<u64>,
    pub(crate) per_user: Option<u64>,
    pub(crate) stale_after: Duration,
}

impl Limits {
    pub(crate) fn of(config: &UsageConfig) -> Self {
        Self {
            monthly: config.monthly_budget,
            per_user: config.user_monthly_budget,
            stale_after: config.poll_interval * STALE_AFTER_POLLS,
        }
    }

    fn any(&self) -> bool {
        self.monthly.is_some() || self.per_user.is_some()
    }
}

/// One good reading of the month's usage.
#[derive(Debug)]
pub(crate) struct Reading {
    pub(crate) month: Month,
    pub(crate) figures: Figures,
    /// The identifiers at or past the per-user budget.
    pub(crate) over: HashSet<String>,
    /// Every row the reading could hold was over the per-user budget:
    /// identifiers beyond them may be over it too.
    pub(crate) users_cut_off: bool,
    /// On [`Clock::now`], for the reading's age.
    pub(crate) taken_at: Instant,
    pub(crate) taken_wall: DateTime<Utc>,
    /// The first instant of the next UTC month, on [`Clock::wall`]: from
    /// then on the reading says nothing of the month.
    month_end: SystemTime,
}

impl Reading {
    pub(crate) fn new(
        figures: Figures,
        limits: &Limits,
        taken_at: Instant,
        taken_wall: DateTime<Utc>,
    ) -> Self {
        let over: HashSet<String> = match limits.per_user {
            Some(budget) => figures
                .users
                .iter()
                .filter(|user| user.egress >= budget)
                .map(|user| user.identifier.clone())
                .collect(),
            None => HashSet::new(),
        };
        let users_cut_off = limits.per_user.is_some()
            && figures.users.len() as u64 >= analytics::USER_ROWS
            && over.len() == figures.users.len();
        Self {
            month: month_of(taken_wall),
            figures,
            over,
            users_cut_off,
            taken_at,
            taken_wall,
            month_end: next_month_start(taken_wall).into(),
        }
    }

    /// Whether the reading is of the month `wall` falls in.
    fn of_the_month_at(&self, wall: SystemTime) -> bool {
        wall < self.month_end
    }
}

fn next_month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = match t.month() {
        12 => (t.year() + 1, 1),
        month => (t.year(), month + 1),
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The whole decision for everyone, pure: `reading` as last taken, `now`
/// on the monotonic clock and `wall` on the wall clock.
pub(crate) fn decide(
    limits: &Limits,
    reading: Option<&Reading>,
    now: Instant,
    wall: SystemTime,
) -> Result<(), Withheld> {
    if !limits.any() {
        return Ok(());
    }
    let reading = reading
        .filter(|reading| is_fresh(limits, reading, now))
        .ok_or(Withheld::UsageUnknown)?;
    // A new month starts at zero, whatever the last month's reading said.
    if !reading.of_the_month_at(wall) {
        return Ok(());
    }
    match limits.monthly {
        Some(budget) if reading.figures.egress >= budget => Err(Withheld::OverBudget),
        _ => Ok(()),
    }
}

/// Whether `reading` still vouches for a budget at `now`.
fn is_fresh(limits: &Limits, reading: &Reading, now: Instant) -> bool {
    now.saturating_duration_since(reading.taken_at) <= limits.stale_after
}

/// The decision for one holder, after [`decide`] let everyone through.
pub(crate) fn decide_holder(
    limits: &Limits,
    reading: Option<&Reading>,
    wall: SystemTime,
    identifier: Option<&str>,
) -> Result<(), Withheld> {
    let (Some(_), Some(reading), Some(identifier)) = (limits.per_user, reading, identifier) else {
        return Ok(());
    };
    if reading.of_the_month_at(wall) && reading.over.contains(identifier) {
        return Err(Withheld::UserOverBudget);
    }
    Ok(())
}

/// Usage polling and the budgets, shared by both front doors.
pub(crate) struct Usage {
    client: AnalyticsClient,
    limits: Limits,
    poll_interval: Duration,
    asking: Asking,
    reading: RwLock<Option<Arc<Reading>>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Usage {
    pub(crate) fn new(
        config: &UsageConfig,
        key_id: &str,
        per_user_identifiers: bool,
        timeout: Duration,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: AnalyticsClient::new(config, key_id, timeout)?,
            limits: Limits::of(config),
            poll_interval: config.poll_interval,
            asking: Asking {
                users: per_user_identifiers,
                keys: false,
            },
            reading: RwLock::new(None),
            clock,
            metrics,
        })
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    fn latest(&self) -> Option<Arc<Reading>> {
        self.reading
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether anyone may have a credential now.
    pub(crate) fn admit(&self) -> Result<(), Withheld> {
        if !self.limits.any() {
            return Ok(());
        }
        let reading = self.reading.read().unwrap_or_else(PoisonError::into_inner);
        decide(
            &self.limits,
            reading.as_deref(),
            self.clock.now(),
            self.clock.wall(),
        )
    }

    /// Whether the holder named by `identifier` (its `customIdentifier`)
    /// may have a credential now.
    pub(crate) fn admit_holder(&self, identifier: Option<&str>) -> Result<(), Withheld> {
        if self.limits.per_user.is_none() {
            return Ok(());
        }
        let reading = self.reading.read().unwrap_or_else(PoisonError::into_inner);
        decide_holder(&self.limits, reading.as_deref(), self.clock.wall(), identifier)
    }

    /// One reading, stored when good.
    pub(crate) async fn read(&self) -> Result<Arc<Reading>, analytics::PollError> {
        let now = DateTime::<Utc>::from(self.clock.wall());
        let result = self.client.month_to_date(now, self.asking).await;
        self.metrics
            .usage_poll(result.as_ref().map_or_else(|e| e.kind(), |_| "ok"));
        Ok(self.store(result?, now))
    }

    fn store(&self, figures: Figures, taken_wall: DateTime<Utc>) -> Arc<Reading> {
        let reading = Arc::new(Reading::new(figures, &self.limits, self.clock.now(), taken_wall));
        *self.reading.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&reading));
        reading
    }

    /// The figures `/metrics` shows, at this moment.
    pub(crate) fn gauges(&self) -> UsageGauges {
        let reading = self.latest();
        let this_month = reading
            .as_ref()
            .filter(|reading| reading.of_the_month_at(self.clock.wall()));
        let egress = this_month.map_or(0, |reading| reading.figures.egress);
        UsageGauges {
            egress,
            ingress: this_month.map_or(0, |reading| reading.figures.ingress),
            budget: self.limits.monthly,
            budget_reached: self.limits.monthly.map(|budget| egress >= budget),
            last_reading_unix: reading
                .as_ref()
                .map_or(0, |reading| reading.taken_wall.timestamp()),
            stale: self.is_stale(),
            users_over: self
                .limits
                .per_user
                .map(|_| this_month.map_or(0, |reading| reading.over.len() as u64)),
        }
    }

    /// No reading, or none younger than the bound.
    pub(crate) fn is_stale(&self) -> bool {
        self.latest()
            .is_none_or(|reading| !is_fresh(&self.limits, &reading, self.clock.now()))
    }
}

/// Bytes in Cloudflare's GB, for the log and `check`.
pub(crate) fn in_gb(bytes: u64) -> f64 {
    bytes as f64 / BYTES_PER_GB
}

#[cfg(test)]
mod tests {
    use super::analytics::UserFigures;
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn limits(monthly: Option<u64>, per_user: Option<u64>) -> Limits {
        Limits {
            monthly,
            per_user,
            stale_after: Duration::from_secs(900),
        }
    }

    fn figures(egress: u64, users: &[(&str, u64)]) -> Figures {
        Figures {
            egress,
            ingress: egress / 10,
            users: users
                .iter()
                .map(|(identifier, egress)| UserFigures {
                    identifier: (*identifier).to_owned(),
                    egress: *egress,
                    ingress: 0,
                })
                .collect(),
            keys: Vec::new(),
        }
    }

    /// The first instant of a UTC month, on the wall clock.
    fn in_month(year: i32, month: u32) -> SystemTime {
        Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .single()
            .expect("a date")
            .into()
    }

    fn wall(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn without_a_budget_nothing_is_withheld_even_without_a_reading() {
        let t0 = Instant::now();
        assert_eq!(decide(&limits(None, None), None, t0, in_month(2026, 12)), Ok(()));
        assert_eq!(
            decide_holder(&limits(None, None), None, in_month(2026, 12), Some("@a:x")),
            Ok(())
        );
    }

    #[test]
    fn the_budget_holds_at_and_past_it_and_not_below() {
        let t0 = Instant::now();
        let month = in_month(2026, 12);
        let at_wall = wall("2026-12-06T13:00:00Z");
        let budget = limits(Some(500 * GB), None);
        let reading = |egress| Reading::new(figures(egress, &[]), &budget, t0, at_wall);
        assert_eq!(decide(&budget, Some(&reading(500 * GB - 1)), t0, month), Ok(()));
        assert_eq!(
            decide(&budget, Some(&reading(500 * GB)), t0, month),
            Err(Withheld::OverBudget)
        );
        assert_eq!(
            decide(&budget, Some(&reading(501 * GB)), t0, month),
            Err(Withheld::OverBudget)
        );
    }

    #[test]
    fn a_new_month_starts_at_zero() {
        let t0 = Instant::now();
        let budget = limits(Some(GB), Some(GB));
        let november = Reading::new(
            figures(2 * GB, &[("@a:x", 2 * GB)]),
            &budget,
            t0,
            wall("2026-11-30T23:59:00Z"),
        );
        assert_eq!(november.month, (2026, 11));
        assert_eq!(
            decide(&budget, Some(&november), t0, in_month(2026, 11)),
            Err(Withheld::OverBudget)
        );
        assert_eq!(decide(&budget, Some(&november), t0, in_month(2026, 12)), Ok(()));
        assert_eq!(
            decide_holder(&budget, Some(&november), in_month(2026, 11), Some("@a:x")),
            Err(Withheld::UserOverBudget)
        );
        assert_eq!(
            decide_holder(&budget, Some(&november), in_month(2026, 12), Some("@a:x")),
            Ok(())
        );
    }

    #[test]
    fn no_reading_or_one_past_the_bound_withholds_while_a_budget_is_set() {
        let t0 = Instant::now();
        let month = in_month(2026, 12);
        for budget in [limits(Some(GB), None), limits(None, Some(GB))] {
            assert_eq!(decide(&budget, None, t0, month), Err(Withheld::UsageUnknown));
            let reading = Reading::new(figures(0, &[]), &budget, t0, wall("2026-12-06T13:00:00Z"));
            let bound = budget.stale_after;
            assert_eq!(decide(&budget, Some(&reading), t0 + bound, month), Ok(()));
            assert_eq!(
                decide(
                    &budget,
                    Some(&reading),
                    t0 + bound + Duration::from_millis(1),
                    month
                ),
                Err(Withheld::UsageUnknown)
            );
        }
    }

    #[test]
    fn a_user_past_the_per_user_budget_is_withheld_and_others_are_not() {
        let t0 = Instant::now();
        let month = in_month(2026, 12);
        let budget = limits(None, Some(10 * GB));
        let reading = Reading::new(
            figures(30 * GB, &[("@heavy:x", 10 * GB), ("@light:x", 10 * GB - 1)]),
            &budget,
            t0,
            wall("2026-12-06T13:00:00Z"),
        );
        assert!(!reading.users_cut_off);
        let holder = |identifier| decide_holder(&budget, Some(&reading), month, identifier);
        assert_eq!(holder(Some("@heavy:x")), Err(Withheld::UserOverBudget));
        assert_eq!(holder(Some("@light:x")), Ok(()));
        assert_eq!(holder(Some("@new:x")), Ok(()));
        assert_eq!(holder(None), Ok(()));
        assert_eq!(decide(&budget, Some(&reading), t0, month), Ok(()));
    }

    fn usage(monthly: Option<&str>, per_user: Option<&str>) -> Usage {
        let mut vars = vec![
            ("CF_TURN_KEY_ID", "k"),
            ("CF_TURN_API_TOKEN", "t"),
            ("CF_ACCOUNT_ID", "acc"),
            ("CF_ANALYTICS_API_TOKEN", "a"),
            ("CF_ANALYTICS_API_URL", "http://127.0.0.1:9/graphql"),
            ("CF_USAGE_POLL_SECONDS", "60"),
            ("CF_CUSTOM_IDENTIFIER", "user_id"),
        ];
        vars.extend(monthly.map(|gb| ("TURN_MONTHLY_EGRESS_BUDGET_GB", gb)));
        vars.extend(per_user.map(|gb| ("TURN_USER_MONTHLY_EGRESS_BUDGET_GB", gb)));
        let config =
            crate::config::Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                .expect("valid");
        let usage = config.usage.as_ref().expect("usage");
        Usage::new(
            usage,
            "k",
            true,
            Duration::from_secs(1),
            Clock::default(),
            Arc::new(Metrics::new(Some(usage))),
        )
        .expect("client")
    }

    fn now_wall(usage: &Usage) -> DateTime<Utc> {
        DateTime::<Utc>::from(usage.clock.wall())
    }

    #[test]
    fn the_words_are_the_documented_outcomes() {
        let words = [
            Withheld::OverBudget,
            Withheld::UserOverBudget,
            Withheld::UsageUnknown,
        ]
        .map(Withheld::word);
        assert_eq!(words, ["over-budget", "user-over-budget", "usage-unknown"]);
    }

    #[test]
    fn a_daemon_admits_by_its_latest_reading_of_this_month() {
        let usage = usage(Some("1"), Some("0.5"));
        assert_eq!(usage.admit(), Err(Withheld::UsageUnknown));
        assert!(usage.is_stale());
        assert_eq!(
            usage.admit_holder(Some("@a:x")),
            Ok(()),
            "no reading names no one"
        );
        usage.store(
            figures(GB - 1, &[("@a:x", GB / 2), ("@b:x", GB / 2 - 1)]),
            now_wall(&usage),
        );
        assert!(!usage.is_stale());
        assert_eq!(usage.admit(), Ok(()));
        assert_eq!(usage.admit_holder(Some("@a:x")), Err(Withheld::UserOverBudget));
        assert_eq!(usage.admit_holder(Some("@b:x")), Ok(()));
        assert_eq!(
            usage.gauges(),
            UsageGauges {
                egress: GB - 1,
                ingress: (GB - 1) / 10,
                budget: Some(GB),
                budget_reached: Some(false),
                last_reading_unix: now_wall(&usage).timestamp(),
                stale: false,
                users_over: Some(1),
            }
        );
        usage.store(figures(GB, &[]), now_wall(&usage));
        assert_eq!(usage.admit(), Err(Withheld::OverBudget));
        assert_eq!(usage.gauges().budget_reached, Some(true));
        // The bound is three intervals (its exact edge is decide's test).
        usage.clock.advance(Duration::from_secs(179));
        assert!(!usage.is_stale());
        assert_eq!(usage.admit(), Err(Withheld::OverBudget));
        usage.clock.advance(Duration::from_secs(1));
        assert!(usage.is_stale());
        assert_eq!(usage.admit(), Err(Withheld::UsageUnknown));
        assert!(usage.gauges().stale);
    }

    #[test]
    fn a_reading_of_last_month_shows_and_counts_nothing_this_month() {
        let usage = usage(Some("1"), Some("1"));
        let last_month = now_wall(&usage) - chrono::Duration::days(40);
        usage.store(figures(5 * GB, &[("@a:x", 5 * GB)]), last_month);
        assert_eq!(usage.admit(), Ok(()));
        assert_eq!(usage.admit_holder(Some("@a:x")), Ok(()));
        let gauges = usage.gauges();
        assert_eq!(
            (gauges.egress, gauges.budget_reached, gauges.users_over),
            (0, Some(false), Some(0))
        );
        assert_eq!(gauges.last_reading_unix, last_month.timestamp());
    }

    #[test]
    fn without_a_budget_nothing_is_withheld_and_no_budget_gauge_is_set() {
        let usage = usage(None, None);
        assert_eq!(usage.admit(), Ok(()));
        assert!(usage.is_stale());
        usage.store(figures(50 * GB, &[("@a:x", 50 * GB)]), now_wall(&usage));
        assert_eq!(
            (usage.admit(), usage.admit_holder(Some("@a:x"))),
            (Ok(()), Ok(()))
        );
        let gauges = usage.gauges();
        assert_eq!(
            (gauges.budget, gauges.budget_reached, gauges.users_over),
            (None, None, None)
        );
        assert_eq!(gauges.egress, 50 * GB);
    }

    #[test]
    fn a_full_page_of_users_over_the_budget_is_marked_cut_off() {
        let budget = limits(None, Some(GB));
        let rows = usize::try_from(analytics::USER_ROWS).expect("rows");
        let names: Vec<String> = (0..rows).map(|i| format!("@u{i}:x")).collect();
        let all_over: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), GB)).collect();
        let reading = Reading::new(
            figures(0, &all_over),
            &budget,
            Instant::now(),
            wall("2026-12-06T13:00:00Z"),
        );
        assert!(reading.users_cut_off);
        let mut last_under = all_over.clone();
        last_under[rows - 1].1 = GB - 1;
        let reading = Reading::new(
            figures(0, &last_under),
            &budget,
            Instant::now(),
            wall("2026-12-06T13:00:00Z"),
        );
        assert!(!reading.users_cut_off);
        assert_eq!(reading.over.len(), rows - 1);
    }
}
