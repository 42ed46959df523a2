//! What a mint yields: a credential with the moment it stops working, or the
//! reason there is none.

use std::time::{Duration, Instant};

use crate::credentials::cloudflare::CloudflareError;
use crate::credentials::turn::{TurnCredential, Unusable};
use crate::usage::Withheld;

/// Clients poll every 10 minutes and refetch only when their stored expiry
/// is 10 minutes away (matrix-js-sdk): a reused credential must have more
/// than twice that left, or a client could end up holding an expired one.
pub(crate) const MIN_REUSE_REMAINING: Duration = Duration::from_secs(20 * 60);

/// A credential and the moment it stops working.
#[derive(Debug)]
pub struct Issued {
    pub credential: TurnCredential,
    pub expires_at: Instant,
    /// Its whole lifetime, from the moment Cloudflare was asked.
    pub lifetime: Duration,
    /// The `customIdentifier` it was minted with: a reused credential is
    /// held to its holder's budget too.
    pub identifier: Option<String>,
}

impl Issued {
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// Reusable while more than half of its lifetime, and more than
    /// [`MIN_REUSE_REMAINING`], remains. Cloudflare asks API users to use
    /// more than half of what they issue.
    pub fn reusable(&self, now: Instant) -> bool {
        let remaining = self.remaining(now);
        remaining > self.lifetime / 2 && remaining > MIN_REUSE_REMAINING
    }
}

/// Why no credential could be had from Cloudflare.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("Cloudflare {0}")]
    Cloudflare(#[from] CloudflareError),
    #[error("Cloudflare's answer is unusable: {0}")]
    Unusable(#[from] Unusable),
    #[error("Cloudflare is skipped for {0:?} after repeated failures")]
    BackedOff(Duration),
    /// The mint's task ended without a result: the runtime is shutting down.
    #[error("the Cloudflare call was interrupted")]
    Interrupted,
    /// A budget holds (docs/behaviour.md §13): Cloudflare was not asked.
    #[error("withheld: {}", .0.word())]
    Withheld(Withheld),
}

impl From<Withheld> for MintError {
    fn from(why: Withheld) -> Self {
        Self::Withheld(why)
    }
}

impl MintError {
    /// The `Retry-After` of a 429, which sets the back-off's length.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Cloudflare(CloudflareError::Status { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }
}

/// A credential of `lifetime_secs` minted at `minted_at`, for tests.
#[cfg(test)]
pub(crate) fn issued_for_test(lifetime_secs: u64, minted_at: Instant) -> Issued {
    Issued {
        credential: TurnCredential {
            username: "u".into(),
            password: "p".into(),
            uris: vec!["turn:t:3478".into()],
        },
        expires_at: minted_at + Duration::from_secs(lifetime_secs),
        lifetime: Duration::from_secs(lifetime_secs),
        identifier: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reusable_while_more_than_half_and_more_than_20_minutes_remain() {
        let t0 = Instant::now();
        let day = issued_for_test(86_400, t0);
        assert!(day.reusable(t0));
        assert!(day.reusable(t0 + Duration::from_secs(43_199)));
        assert!(!day.reusable(t0 + Duration::from_secs(43_200)));
        // An hour: half is 30 minutes, above the 20-minute floor.
        let hour = issued_for_test(3600, t0);
        assert!(hour.reusable(t0 + Duration::from_secs(1799)));
        assert!(!hour.reusable(t0 + Duration::from_secs(1800)));
        // 30 minutes: the 20-minute floor decides.
        let half_hour = issued_for_test(1800, t0);
        assert!(half_hour.reusable(t0 + Duration::from_secs(599)));
        assert!(!half_hour.reusable(t0 + Duration::from_secs(600)));
        // 20 minutes or less: never reused.
        assert!(!issued_for_test(1200, t0).reusable(t0));
    }
}
