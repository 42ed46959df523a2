//! Credential reuse (docs/behaviour.md §5): a minted credential is handed out again for
//! the same access token while enough of its life remains; concurrent first
//! requests share one mint, which runs on its own task so that clients that
//! hang up change nothing; and while minting fails, a credential that still
//! lives is served.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Shared;
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::credentials::issued::{Issued, MintError};

/// While Cloudflare fails, a known credential is still worth handing out if
/// it lives at least this long.
pub(crate) const MIN_FAILOVER_REMAINING: Duration = Duration::from_secs(60);
/// The cache key: a SHA-256 of the access token, so the token itself is
/// never held in memory longer than the request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn of(access_token: &str) -> Self {
        Self(Sha256::digest(access_token.as_bytes()).into())
    }

    /// A LiveKit participant: the token's issuer (the API key) and subject
    /// (the identity). Each part goes in with its length, so no two pairs
    /// hash alike, and the prefix keeps them apart from access tokens.
    pub fn livekit(issuer: &str, subject: &str) -> Self {
        Self(
            Sha256::new()
                .chain_update(b"livekit\0")
                .chain_update((issuer.len() as u64).to_be_bytes())
                .chain_update(issuer.as_bytes())
                .chain_update(subject.as_bytes())
                .finalize()
                .into(),
        )
    }

    /// An appservice's token acting as one of its users: each user gets a
    /// credential of their own. A token has no NUL byte, so none of these
    /// equals another's, nor a plain token's.
    pub fn acting_as(access_token: &str, user_id: &str) -> Self {
        Self(
            Sha256::new()
                .chain_update(access_token.as_bytes())
                .chain_update([0])
                .chain_update(user_id.as_bytes())
                .finalize()
                .into(),
        )
    }
}

/// Where an answer's credential came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Minted,
    Reused,
    /// Cloudflare failed; an earlier credential for this token still lives.
    ReusedWhileFailing,
}

type MintResult = Result<Arc<Issued>, Arc<MintError>>;
type SharedMint = Shared<Pin<Box<dyn Future<Output = MintResult> + Send>>>;

/// What the cache holds for one access token: the latest credential, and the
/// mint in flight for it, which concurrent requests share.
#[derive(Default)]
struct Slot {
    latest: Mutex<Option<Arc<Issued>>>,
    in_flight: Mutex<Option<SharedMint>>,
}

impl Slot {
    fn latest(&self) -> Option<Arc<Issued>> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A slot lives as long as its latest credential: a re-mint updates the
/// slot in place, and the cache is told so (see [`ReuseCache::start_mint`]),
/// or it would drop the slot when the *first* credential expires and
/// serve-while-failing would stop covering that token.
struct SlotExpiry {
    clock: Clock,
    /// For a slot that has no credential yet.
    lifetime: Duration,
}

impl SlotExpiry {
    fn time_to_live(&self, slot: &Slot) -> Duration {
        slot.latest()
            .map_or(self.lifetime, |latest| latest.remaining(self.clock.now()))
    }
}

impl Expiry<TokenKey, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        slot: &Arc<Slot>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.time_to_live(slot))
    }

    fn expire_after_update(
        &self,
        _key: &TokenKey,
        slot: &Arc<Slot>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.time_to_live(slot))
    }
}

/// Reused credentials per access token, bounded in count and expiring with
/// the credentials themselves.
pub(crate) struct ReuseCache {
    slots: Cache<TokenKey, Arc<Slot>>,
    clock: Clock,
}

impl ReuseCache {
    pub(crate) fn new(max_entries: u64, lifetime: Duration, clock: Clock) -> Self {
        Self {
            slots: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(SlotExpiry {
                    clock: clock.clone(),
                    lifetime,
                })
                .build(),
            clock,
        }
    }

    /// Exact at the time of asking: moka counts lazily until its pending
    /// housekeeping has run.
    pub(crate) async fn entry_count(&self) -> u64 {
        self.slots.run_pending_tasks().await;
        self.slots.entry_count()
    }

    /// The credential for `key`: reused when it may be and has more than
    /// `floor` left, otherwise minted by `mint` (one call for all
    /// concurrent requests of that key), or, when minting fails, the latest
    /// one if it still lives long enough.
    pub(crate) async fn get<F>(
        &self,
        key: TokenKey,
        floor: Duration,
        mint: F,
    ) -> Result<(Arc<Issued>, Source), Arc<MintError>>
    where
        F: Future<Output = Result<Issued, MintError>> + Send + 'static,
    {
        let slot = self
            .slots
            .get_with(key, async { Arc::new(Slot::default()) })
            .await;
        let now = self.clock.now();
        if let Some(latest) = slot
            .latest()
            .filter(|latest| latest.reusable(now) && latest.remaining(now) > floor)
        {
            return Ok((latest, Source::Reused));
        }
        let (flight, joined) = {
            let mut in_flight = slot.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            match in_flight.as_ref() {
                Some(flight) => (flight.clone(), true),
                None => {
                    // Stored under the lock it clears once done, so a quick
                    // mint cannot clear the slot before it is filled.
                    let flight = self.start_mint(key, Arc::clone(&slot), mint);
                    *in_flight = Some(flight.clone());
                    (flight, false)
                }
            }
        };
        match flight.await {
            Ok(issued) => Ok((issued, if joined { Source::Reused } else { Source::Minted })),
            // The failed flight may have taken a timeout's worth of time: the
            // earlier credential is judged by the clock after it.
            Err(e) => match slot
                .latest()
                .filter(|latest| latest.remaining(self.clock.now()) > MIN_FAILOVER_REMAINING)
            {
                Some(latest) => Ok((latest, Source::ReusedWhileFailing)),
                None => Err(e),
            },
        }
    }

    /// Runs `mint` on its own task, so that it ends and lands in `slot` even
    /// when every request waiting on it has hung up (docs/behaviour.md §5): a mint left
    /// unpolled would keep the slot, and the back-off's probe, taken.
    fn start_mint<F>(&self, key: TokenKey, slot: Arc<Slot>, mint: F) -> SharedMint
    where
        F: Future<Output = Result<Issued, MintError>> + Send + 'static,
    {
        let slots = self.slots.clone();
        let task = tokio::spawn(async move {
            let result = mint.await.map(Arc::new).map_err(Arc::new);
            if let Ok(issued) = &result {
                *slot.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(issued));
            }
            *slot.in_flight.lock().unwrap_or_else(PoisonError::into_inner) = None;
            if result.is_ok() {
                // Putting the same slot back makes the cache ask SlotExpiry
                // again; a slot that was evicted meanwhile stays evicted.
                slots
                    .entry(key)
                    .and_compute_with(|entry| {
                        std::future::ready(match entry {
                            Some(entry) if Arc::ptr_eq(entry.value(), &slot) => Op::Put(slot),
                            _ => Op::Nop,
                        })
                    })
                    .await;
            }
            result
        });
        let joined: Pin<Box<dyn Future<Output = MintResult> + Send>> = Box::pin(async move {
            task.await
                .unwrap_or_else(|_| Err(Arc::new(MintError::Interrupted)))
        });
        joined.shared()
    }
}

/// Runs `mint` on its own task and waits for it: the mint ends, and the
/// back-off learns its result, even when the request that started it is
/// dropped because its client hung up.
pub(crate) async fn detached<F>(mint: F) -> Result<Issued, MintError>
where
    F: Future<Output = Result<Issued, MintError>> + Send + 'static,
{
    tokio::spawn(mint).await.unwrap_or(Err(MintError::Interrupted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::credentials::issued::issued_for_test as issued;
    use crate::credentials::turn::Unusable;

    #[tokio::test]
    async fn a_floor_keeps_a_credential_from_being_reused_too_close_to_its_end() {
        let cache = ReuseCache::new(100, Duration::from_secs(86_400), Clock::default());
        let key = TokenKey::livekit("APIkey", "@alice:example.org");
        let t0 = cache.clock.now();
        let floor = Duration::from_secs(12 * 3600);
        cache.get(key, floor, ok_mint(172_800, t0)).await.expect("minted");
        // 30 h left: more than half its life, more than the floor.
        cache.clock.advance(Duration::from_secs(18 * 3600));
        let (_, source) = cache.get(key, floor, failing_mint()).await.expect("reused");
        assert_eq!(source, Source::Reused);
        // The same 30 h under a 36 h floor: minted again.
        let long_call = Duration::from_secs(36 * 3600);
        let now = cache.clock.now();
        let (_, source) = cache
            .get(key, long_call, ok_mint(172_800, now))
            .await
            .expect("minted");
        assert_eq!(source, Source::Minted);
    }

    #[test]
    fn token_keys_differ_per_token_and_hide_it() {
        assert_ne!(TokenKey::livekit("ab", "c"), TokenKey::livekit("a", "bc"));
        assert_ne!(TokenKey::livekit("k", "t"), TokenKey::of("t"));
        assert_eq!(TokenKey::of("a"), TokenKey::of("a"));
        assert_ne!(TokenKey::of("a"), TokenKey::of("b"));
        assert!(!format!("{:?}", TokenKey::of("syt_secret")).contains("syt_secret"));
    }

    /// Given a mint whose waiter goes away at once, the mint still ends and
    /// fills the slot: the next request reuses its credential.
    #[tokio::test]
    async fn a_mint_nobody_waits_for_still_lands_in_the_slot() {
        let cache = ReuseCache::new(100, Duration::from_secs(86_400), Clock::default());
        let key = TokenKey::of("t");
        let t0 = cache.clock.now();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let slow = async move {
            let _ = released.await;
            Ok(issued(86_400, t0))
        };
        assert!(futures_util::poll!(Box::pin(cache.get(key, Duration::ZERO, slow))).is_pending());
        release.send(()).expect("the mint still waits");
        // Nothing polls the mint from here on: only its own task can fill
        // the slot. A request would join the flight and poll it itself.
        let slot = cache.slots.get(&key).await.expect("the slot exists");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while slot.latest().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned mint never landed"
            );
            tokio::task::yield_now().await;
        }
        let (_, source) = cache
            .get(key, Duration::ZERO, failing_mint())
            .await
            .expect("a credential");
        assert_eq!(source, Source::Reused);
    }

    fn ok_mint(
        lifetime: u64,
        now: Instant,
    ) -> impl Future<Output = Result<Issued, MintError>> + Send + 'static {
        std::future::ready(Ok(issued(lifetime, now)))
    }

    fn failing_mint() -> impl Future<Output = Result<Issued, MintError>> + Send + 'static {
        std::future::ready(Err(MintError::Unusable(Unusable::NoTurnUri)))
    }

    #[tokio::test]
    async fn cache_reuses_then_mints_again_after_the_half_life() {
        let cache = ReuseCache::new(100, Duration::from_secs(86_400), Clock::default());
        let key = TokenKey::of("t");
        let t0 = cache.clock.now();
        let (first, source) = cache
            .get(key, Duration::ZERO, ok_mint(86_400, t0))
            .await
            .expect("minted");
        assert_eq!(source, Source::Minted);
        let (again, source) = cache
            .get(key, Duration::ZERO, failing_mint())
            .await
            .expect("reused");
        assert_eq!(source, Source::Reused);
        assert!(Arc::ptr_eq(&first, &again));
        cache.clock.advance(Duration::from_secs(43_200));
        let late = cache.clock.now();
        let (fresh, source) = cache
            .get(key, Duration::ZERO, ok_mint(86_400, late))
            .await
            .expect("minted");
        assert_eq!(source, Source::Minted);
        assert!(!Arc::ptr_eq(&first, &fresh));
    }

    /// moka keeps its own monotonic clock and has no public mock, so this
    /// test gives the cache a 300 ms lifetime and lets real time pass it.
    #[tokio::test]
    async fn a_slot_lives_as_long_as_its_latest_credential() {
        let lifetime = Duration::from_millis(300);
        let cache = ReuseCache::new(100, lifetime, Clock::default());
        let key = TokenKey::of("t");
        let t0 = cache.clock.now();
        cache
            .get(key, Duration::ZERO, ok_mint(1, t0))
            .await
            .expect("minted");
        // The first credential is past reuse: a fresh one lives an hour.
        let (latest, _) = cache
            .get(key, Duration::ZERO, ok_mint(3600, t0))
            .await
            .expect("re-minted");
        let created = std::time::Instant::now();
        tokio::time::sleep((lifetime * 2).saturating_sub(created.elapsed())).await;
        // Past its reuse window, not past its life: served while failing.
        cache.clock.advance(Duration::from_secs(3000));
        let (served, source) = cache
            .get(key, Duration::ZERO, failing_mint())
            .await
            .expect("the latest credential still lives");
        assert_eq!(source, Source::ReusedWhileFailing);
        assert!(Arc::ptr_eq(&served, &latest));
    }

    #[tokio::test]
    async fn cache_serves_the_latest_credential_while_minting_fails() {
        let cache = ReuseCache::new(100, Duration::from_secs(86_400), Clock::default());
        let key = TokenKey::of("t");
        let t0 = cache.clock.now();
        cache
            .get(key, Duration::ZERO, ok_mint(3600, t0))
            .await
            .expect("minted");
        cache.clock.advance(Duration::from_secs(3600 - 61));
        let (_, source) = cache
            .get(key, Duration::ZERO, failing_mint())
            .await
            .expect("served while failing");
        assert_eq!(source, Source::ReusedWhileFailing);
        cache.clock.advance(Duration::from_secs(1));
        assert!(cache.get(key, Duration::ZERO, failing_mint()).await.is_err());
    }
}
