//! Where credentials come from (SPEC §5): reused for the same access token
//! while enough of their life remains, minted once for concurrent first
//! requests, served while Cloudflare fails, and not asked for at all while
//! Cloudflare is in a back-off after repeated failures.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Shared;
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use sha2::{Digest, Sha256};

use crate::cloudflare::CloudflareError;
use crate::config::Secret;
use crate::throttle::{Throttle, throttled_warn};
use crate::turn::{TurnCredential, Unusable};

/// Clients poll every 10 minutes and refetch only when their stored expiry
/// is 10 minutes away (matrix-js-sdk): a reused credential must have more
/// than twice that left, or a client could end up holding an expired one.
pub const MIN_REUSE_REMAINING: Duration = Duration::from_secs(20 * 60);
/// While Cloudflare fails, a known credential is still worth handing out if
/// it lives at least this long.
pub const MIN_FAILOVER_REMAINING: Duration = Duration::from_secs(60);
/// Consecutive Cloudflare failures that start a back-off.
pub const BACKOFF_AFTER_FAILURES: u32 = 3;
/// How long Cloudflare is left alone after that, unless a 429 says otherwise.
pub const BACKOFF_COOL_DOWN: Duration = Duration::from_secs(30);

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

    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// A credential and the moment it stops working.
#[derive(Debug)]
pub struct Issued {
    pub credential: TurnCredential,
    pub expires_at: Instant,
    /// Its whole lifetime, from the moment Cloudflare was asked.
    pub lifetime: Duration,
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

/// The cache key: a SHA-256 of the access token, so the token itself is
/// never held in memory longer than the request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn of(access_token: &str) -> Self {
        Self(Sha256::digest(access_token.as_bytes()).into())
    }
}

/// The access token of a request, as Synapse reads it
/// (`get_access_token_from_request`, synapse/api/auth/base.py):
/// `Authorization: Bearer <token>`, else the first `access_token` query
/// argument. Credentials are reused by this token, so it must be the one
/// Synapse authenticated: any other could hand one user a credential cached
/// for another.
pub fn access_token<'a>(authorization: Option<&'a str>, query: Option<&'a str>) -> Option<String> {
    if let Some(token) = authorization.and_then(|value| value.strip_prefix("Bearer ")) {
        return Some(token.to_owned());
    }
    // Twisted's `parse_qs` (twisted/web/http.py) fills `request.args`: pairs
    // split on `&` and `;`, a pair without `=` skipped, names decoded too.
    let token = query?
        .split(['&', ';'])
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| percent_decode(name) == b"access_token")
        .map(|(_, value)| percent_decode(value))?;
    // Synapse decodes the token as ASCII; no other token can have passed.
    String::from_utf8(token).ok().filter(|token| token.is_ascii())
}

/// `+` and `%XX` decoded as Python's `unquote_to_bytes` after Twisted's `+`
/// replacement: a `%` not followed by two hex digits stays as it is.
fn percent_decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i..] {
            [b'%', high, low, ..] => hex_digit(high).zip(hex_digit(low)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    out
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
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
}

impl MintError {
    /// The `Retry-After` of a 429, which sets the back-off's length.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Cloudflare(CloudflareError::Status { retry_after, .. }) => *retry_after,
            _ => None,
        }
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

/// The back-off state: closed (Cloudflare is asked), open (it is skipped
/// until a moment), or half-open (one probe request is on its way).
#[derive(Debug, Default)]
pub struct Backoff {
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
pub enum Admission {
    /// No back-off: every request asks.
    Closed,
    /// The cool-down is over and this request is the one probe.
    Probe,
}

impl Backoff {
    /// May a request ask Cloudflare now? `Err` carries the time left.
    pub fn admit(&mut self, now: Instant) -> Result<Admission, Duration> {
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
    pub fn probe_abandoned(&mut self) {
        self.probing = false;
    }

    /// Closes the back-off; says whether it had been open.
    pub fn succeeded(&mut self) -> bool {
        let was_open = self.open_until.is_some();
        self.consecutive_failures = 0;
        self.open_until = None;
        self.probing = false;
        was_open
    }

    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.probing || self.consecutive_failures >= BACKOFF_AFTER_FAILURES || retry_after.is_some() {
            self.open_until = Some(now + retry_after.unwrap_or(BACKOFF_COOL_DOWN));
            self.probing = false;
        }
    }

    /// How long Cloudflare is still skipped, if it is.
    pub fn cool_down_left(&self, now: Instant) -> Option<Duration> {
        self.open_until
            .filter(|until| now < *until)
            .map(|until| until - now)
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until) || self.probing
    }
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
pub struct ReuseCache {
    slots: Cache<TokenKey, Arc<Slot>>,
}

impl ReuseCache {
    pub fn new(max_entries: u64, lifetime: Duration, clock: Clock) -> Self {
        Self {
            slots: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(SlotExpiry { clock, lifetime })
                .build(),
        }
    }

    /// Exact at the time of asking: moka counts lazily until its pending
    /// housekeeping has run.
    pub async fn entry_count(&self) -> u64 {
        self.slots.run_pending_tasks().await;
        self.slots.entry_count()
    }

    /// The credential for `key`: reused when it may be, otherwise minted by
    /// `mint` (one call for all concurrent requests of that key), or, when
    /// minting fails, the latest one if it still lives long enough.
    pub async fn get<F>(
        &self,
        key: TokenKey,
        now: Instant,
        mint: F,
    ) -> Result<(Arc<Issued>, Source), Arc<MintError>>
    where
        F: Future<Output = Result<Issued, MintError>> + Send + 'static,
    {
        let slot = self
            .slots
            .get_with(key, async { Arc::new(Slot::default()) })
            .await;
        if let Some(latest) = slot.latest().filter(|latest| latest.reusable(now)) {
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
            Err(e) => match slot
                .latest()
                .filter(|latest| latest.remaining(now) > MIN_FAILOVER_REMAINING)
            {
                Some(latest) => Ok((latest, Source::ReusedWhileFailing)),
                None => Err(e),
            },
        }
    }

    /// Runs `mint` on its own task, so that it ends and lands in `slot` even
    /// when every request waiting on it has hung up (SPEC §5): a mint left
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
pub async fn detached<F>(mint: F) -> Result<Issued, MintError>
where
    F: Future<Output = Result<Issued, MintError>> + Send + 'static,
{
    tokio::spawn(mint).await.unwrap_or(Err(MintError::Interrupted))
}

/// Runs `mint` unless the back-off says to skip Cloudflare, and records its
/// result there.
pub async fn guarded_mint<F>(backoff: &Mutex<Backoff>, clock: &Clock, mint: F) -> Result<Issued, MintError>
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
    probe.pending = false;
    let now = clock.now();
    let mut backoff = backoff.lock().unwrap_or_else(PoisonError::into_inner);
    // One line when the back-off opens and one when it closes: a failed
    // probe every cool-down during a long outage is not news (SPEC §10).
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

/// A stable per-user tag that does not reveal the user: HMAC-SHA256 of the
/// user ID under the admin's key, 128 bits in hex.
pub fn hashed_identifier(key: &Secret, user_id: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(user_id.as_bytes());
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime_secs: u64, minted_at: Instant) -> Issued {
        Issued {
            credential: TurnCredential {
                username: "u".into(),
                password: "p".into(),
                uris: vec!["turn:t:3478".into()],
            },
            expires_at: minted_at + Duration::from_secs(lifetime_secs),
            lifetime: Duration::from_secs(lifetime_secs),
        }
    }

    #[test]
    fn reusable_while_more_than_half_and_more_than_20_minutes_remain() {
        let t0 = Instant::now();
        let day = issued(86_400, t0);
        assert!(day.reusable(t0));
        assert!(day.reusable(t0 + Duration::from_secs(43_199)));
        assert!(!day.reusable(t0 + Duration::from_secs(43_200)));
        // An hour: half is 30 minutes, above the 20-minute floor.
        let hour = issued(3600, t0);
        assert!(hour.reusable(t0 + Duration::from_secs(1799)));
        assert!(!hour.reusable(t0 + Duration::from_secs(1800)));
        // 30 minutes: the 20-minute floor decides.
        let half_hour = issued(1800, t0);
        assert!(half_hour.reusable(t0 + Duration::from_secs(599)));
        assert!(!half_hour.reusable(t0 + Duration::from_secs(600)));
        // 20 minutes or less: never reused.
        assert!(!issued(1200, t0).reusable(t0));
    }

    #[test]
    fn access_token_from_header_or_query() {
        assert_eq!(access_token(Some("Bearer abc"), None).as_deref(), Some("abc"));
        assert_eq!(
            access_token(None, Some("x=1&access_token=syt_a%5Fb&y")).as_deref(),
            Some("syt_a_b")
        );
        assert_eq!(
            access_token(Some("Basic abc"), Some("access_token=q")).as_deref(),
            Some("q")
        );
        assert_eq!(access_token(None, Some("access_tokenx=1")), None);
        assert_eq!(access_token(None, None), None);
    }

    /// Twisted's reading of the query (twisted/web/http.py `parse_qs`),
    /// which Synapse authenticates by.
    #[test]
    fn the_query_token_is_the_first_as_twisted_reads_it() {
        for (query, expected) in [
            ("access_token=a&access_token=b", Some("a")),
            ("x=1;access_token=a&access_token=b", Some("a")),
            ("access%5Ftoken=a&access_token=b", Some("a")),
            ("access_token&access_token=b", Some("b")),
            ("access_token=&access_token=b", Some("")),
            ("access+token=a&access_token=b", Some("b")),
            ("access_token=a+b%2B", Some("a b+")),
            ("access_token=%+5a%5", Some("% 5a%5")),
            ("access_token=%C3%A9", None),
            ("access_token=%FF", None),
        ] {
            assert_eq!(access_token(None, Some(query)).as_deref(), expected, "{query}");
        }
    }

    #[test]
    fn hashed_identifier_is_stable_keyed_and_hides_the_user() {
        let key = Secret::new("pepper");
        let tag = hashed_identifier(&key, "@alice:example.org");
        assert_eq!(tag, hashed_identifier(&key, "@alice:example.org"));
        assert_eq!(tag.len(), 32);
        assert!(!tag.contains("alice"));
        assert_ne!(tag, hashed_identifier(&key, "@bob:example.org"));
        assert_ne!(tag, hashed_identifier(&Secret::new("salt"), "@alice:example.org"));
    }

    #[test]
    fn token_keys_differ_per_token_and_hide_it() {
        assert_eq!(TokenKey::of("a"), TokenKey::of("a"));
        assert_ne!(TokenKey::of("a"), TokenKey::of("b"));
        assert!(!format!("{:?}", TokenKey::of("syt_secret")).contains("syt_secret"));
    }

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

    /// Given a mint whose waiter goes away at once, the mint still ends and
    /// fills the slot: the next request reuses its credential.
    #[tokio::test]
    async fn a_mint_nobody_waits_for_still_lands_in_the_slot() {
        let cache = ReuseCache::new(100, Duration::from_secs(86_400), Clock::default());
        let key = TokenKey::of("t");
        let t0 = Instant::now();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let slow = async move {
            let _ = released.await;
            Ok(issued(86_400, t0))
        };
        assert!(futures_util::poll!(Box::pin(cache.get(key, t0, slow))).is_pending());
        release.send(()).expect("the mint still waits");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, source) = cache.get(key, t0, failing_mint()).await.expect("a credential");
            if source == Source::Reused {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned mint never landed"
            );
            tokio::task::yield_now().await;
        }
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
        let t0 = Instant::now();
        let (first, source) = cache.get(key, t0, ok_mint(86_400, t0)).await.expect("minted");
        assert_eq!(source, Source::Minted);
        let (again, source) = cache.get(key, t0, failing_mint()).await.expect("reused");
        assert_eq!(source, Source::Reused);
        assert!(Arc::ptr_eq(&first, &again));
        let late = t0 + Duration::from_secs(43_200);
        let (fresh, source) = cache.get(key, late, ok_mint(86_400, late)).await.expect("minted");
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
        let t0 = Instant::now();
        cache.get(key, t0, ok_mint(1, t0)).await.expect("minted");
        // The first credential is past reuse: a fresh one lives an hour.
        let (latest, _) = cache.get(key, t0, ok_mint(3600, t0)).await.expect("re-minted");
        let created = std::time::Instant::now();
        tokio::time::sleep((lifetime * 2).saturating_sub(created.elapsed())).await;
        // Past its reuse window, not past its life: served while failing.
        let late = t0 + Duration::from_secs(3000);
        let (served, source) = cache
            .get(key, late, failing_mint())
            .await
            .expect("the latest credential still lives");
        assert_eq!(source, Source::ReusedWhileFailing);
        assert!(Arc::ptr_eq(&served, &latest));
    }

    #[tokio::test]
    async fn cache_serves_the_latest_credential_while_minting_fails() {
        let cache = ReuseCache::new(100, Duration::from_secs(86_400), Clock::default());
        let key = TokenKey::of("t");
        let t0 = Instant::now();
        cache.get(key, t0, ok_mint(3600, t0)).await.expect("minted");
        let stale = t0 + Duration::from_secs(3600 - 61);
        let (_, source) = cache
            .get(key, stale, failing_mint())
            .await
            .expect("served while failing");
        assert_eq!(source, Source::ReusedWhileFailing);
        let nearly_dead = t0 + Duration::from_secs(3600 - 60);
        assert!(cache.get(key, nearly_dead, failing_mint()).await.is_err());
    }
}
