//! The daemon's monotonic clock for credential lifetimes, the back-off and
//! the age of a usage reading, with the wall clock beside it for the month a
//! budget counts: the real clocks in production, moved forward together by
//! tests instead of sleeping through a half-life, a cool-down or a month.
//! And the unmoved wall clock, in the seconds a LiveKit token's times are
//! written in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Monotonic time for the reuse decisions. Production reads the real clock;
/// tests move it forward instead of sleeping through a half-life.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicU64>,
}

impl Clock {
    pub fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Wall-clock time, moved with [`Clock::now`]: the UTC month a budget
    /// counts is read from it.
    pub fn wall(&self) -> std::time::SystemTime {
        std::time::SystemTime::now() + Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// Wall-clock seconds since the Unix epoch, as a JWT's `exp` and `nbf`
/// count them; 0 for a clock set before 1970.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
