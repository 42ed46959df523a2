//! Warnings for conditions that come back with every request (docs/behaviour.md §10): a
//! misrouting proxy, a dead upstream. The first occurrence is logged, then at
//! most one line a minute, counting the occurrences held back in between, so
//! a fault cannot fill a disk.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one line per condition in this much time.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// The log state of one condition.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// Whether an occurrence at `now` is to be logged: `Some(n)` when it is,
    /// `n` being the occurrences held back since the last line.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last_logged {
            Some(at) if now.saturating_duration_since(at) < WINDOW => {
                state.held_back = state.held_back.saturating_add(1);
                None
            }
            _ => {
                state.last_logged = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

/// `warn!` through a [`Throttle`], with the `held_back` count as a field.
macro_rules! throttled_warn {
    ($throttle:expr, $($rest:tt)+) => {
        if let Some(held_back) = $throttle.admit(::std::time::Instant::now()) {
            ::tracing::warn!(held_back, $($rest)+);
        }
    };
}
pub(crate) use throttled_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_then_one_a_minute_with_the_count() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(throttle.admit(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(throttle.admit(t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(throttle.admit(t0 + WINDOW), Some(1000));
        assert_eq!(throttle.admit(t0 + WINDOW + Duration::from_secs(1)), None);
        assert_eq!(
            throttle.admit(t0 + WINDOW * 3),
            Some(1),
            "after a quiet spell the next occurrence is logged at once"
        );
    }
}
