//! The credential core both front doors share (docs/behaviour.md §4, §5, §12):
//! a credential reused for its key (`reuse`), or minted by Cloudflare
//! (`cloudflare`) unless the back-off says to skip it (`backoff`), tagged
//! with a `customIdentifier` and with the custom TURN domain put in; `issued`
//! is a mint's outcome, `turn` the pure reshaping into the Matrix answer.
//! Nothing is handed out, minted or reused, while a budget holds (`usage`).

pub(crate) mod backoff;
pub(crate) mod cloudflare;
pub(crate) mod issued;
pub(crate) mod reuse;
pub(crate) mod turn;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::Sha256;

use crate::clock::Clock;
use crate::config::{Config, CustomIdentifier, Secret};
use crate::metrics::{Metrics, UsageGauges};
use crate::usage::{Usage, Withheld};

use backoff::Backoff;
use cloudflare::CloudflareClient;
use issued::{Issued, MintError};
use reuse::{ReuseCache, Source, TokenKey};

/// A credential handed to a LiveKit call on reuse still has this long to
/// live, so a call that starts on it keeps its relay for a working day and
/// more; with the default 24 h TTL that is also the half-life rule.
pub(crate) const MIN_CALL_REMAINING: Duration = Duration::from_secs(12 * 3600);

/// Whom a credential is for, as far as `customIdentifier` needs a name.
pub enum Holder {
    /// Named already: a LiveKit identity, or the user the homeserver confirmed.
    Named(String),
    /// Named by whatever the front door asks, only when a mint needs the
    /// name: a reused credential, or a mint without `customIdentifier`,
    /// asks nobody. `None` mints without `customIdentifier`: attribution is
    /// a convenience, a call without TURN is not.
    Asked(Pin<Box<dyn Future<Output = Option<String>> + Send>>),
}

/// Everything a mint needs, shared by all requests.
pub struct Credentials {
    cloudflare: CloudflareClient,
    ttl_seconds: u32,
    custom_identifier: CustomIdentifier,
    custom_domain: Option<String>,
    /// `None` when CREDENTIAL_REUSE is off: every request mints.
    reuse: Option<ReuseCache>,
    backoff: Mutex<Backoff>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// `None` unless CF_ACCOUNT_ID and the analytics token are set.
    usage: Option<Arc<Usage>>,
}

impl Credentials {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Arc<Self>, reqwest::Error> {
        let lifetime = Duration::from_secs(u64::from(config.turn_ttl_seconds));
        let clock = Clock::default();
        let usage = match &config.usage {
            Some(usage) => Some(Arc::new(Usage::new(
                usage,
                &config.cf_key_id,
                config.custom_identifier != CustomIdentifier::Off,
                config.cf_timeout,
                clock.clone(),
                Arc::clone(&metrics),
            )?)),
            None => None,
        };
        Ok(Arc::new(Self {
            cloudflare: CloudflareClient::new(config)?,
            ttl_seconds: config.turn_ttl_seconds,
            custom_identifier: config.custom_identifier.clone(),
            custom_domain: config.turn_custom_domain.clone(),
            reuse: config
                .credential_reuse
                .then(|| ReuseCache::new(config.reuse_max_entries, lifetime, clock.clone())),
            backoff: Mutex::new(Backoff::default()),
            clock,
            metrics,
            usage,
        }))
    }

    /// Usage polling, for the daemon to run beside the front doors.
    pub(crate) fn usage(&self) -> Option<&Arc<Usage>> {
        self.usage.as_ref()
    }

    /// The usage figures for `/metrics`, when usage is read.
    pub fn usage_gauges(&self) -> Option<UsageGauges> {
        self.usage.as_ref().map(|usage| usage.gauges())
    }

    /// The clock credential lifetimes and the back-off read; tests move it.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A credential for `holder`, reused under `key`, minted, or an error
    /// that means "fall back to the homeserver's answer".
    pub async fn get(
        self: &Arc<Self>,
        holder: Holder,
        key: TokenKey,
    ) -> Result<(Arc<Issued>, Source), Arc<MintError>> {
        self.get_lasting(holder, key, Duration::ZERO).await
    }

    /// A credential for a LiveKit participant's call (docs/behaviour.md
    /// §12), keyed by its identity, which also names it for
    /// `customIdentifier`. A TURN allocation ends when its credential
    /// expires, so a reused one must have [`MIN_CALL_REMAINING`] left.
    pub async fn for_call(
        self: &Arc<Self>,
        identity: String,
        key: TokenKey,
    ) -> Result<(Arc<Issued>, Source), Arc<MintError>> {
        self.get_lasting(Holder::Named(identity), key, MIN_CALL_REMAINING)
            .await
    }

    async fn get_lasting(
        self: &Arc<Self>,
        holder: Holder,
        key: TokenKey,
        floor: Duration,
    ) -> Result<(Arc<Issued>, Source), Arc<MintError>> {
        // Before the cache: a budget withholds reused credentials too.
        self.admit().map_err(withheld)?;
        let mint = Self::mint(Arc::clone(self), holder);
        let (issued, source) = match &self.reuse {
            Some(cache) => cache.get(key, floor, mint).await?,
            None => reuse::detached(mint)
                .await
                .map(|issued| (Arc::new(issued), Source::Minted))
                .map_err(Arc::new)?,
        };
        self.admit_holder(issued.identifier.as_deref())
            .map_err(withheld)?;
        Ok((issued, source))
    }

    /// Whether a budget lets anyone have a credential now.
    fn admit(&self) -> Result<(), Withheld> {
        self.usage.as_ref().map_or(Ok(()), |usage| usage.admit())
    }

    /// Whether a budget lets the holder with this `customIdentifier` have
    /// a credential now.
    fn admit_holder(&self, identifier: Option<&str>) -> Result<(), Withheld> {
        self.usage
            .as_ref()
            .map_or(Ok(()), |usage| usage.admit_holder(identifier))
    }

    /// One mint, as an owned future so that concurrent requests can share it.
    async fn mint(this: Arc<Self>, holder: Holder) -> Result<Issued, MintError> {
        let _in_flight = this.metrics.mint_started();
        let result = backoff::guarded_mint(&this.backoff, &this.clock, async {
            let identifier = this.custom_identifier(holder).await;
            // Cloudflare is not asked for a holder past their budget.
            this.admit_holder(identifier.as_deref())?;
            // The lifetime starts before the request: the credential
            // cannot outlive `ttl` from the moment Cloudflare was asked.
            let asked_at = this.clock.now();
            let started = Instant::now();
            let answer = this
                .cloudflare
                .mint(this.ttl_seconds, identifier.as_deref())
                .await;
            let took = Some(started.elapsed());
            let servers = answer.inspect_err(|e| this.metrics.cloudflare_call(e.kind(), took))?;
            let mut credential = turn::extract(&servers).inspect_err(|_| {
                this.metrics.cloudflare_call("unusable", took);
            })?;
            this.metrics.cloudflare_call("ok", took);
            if let Some(domain) = &this.custom_domain {
                credential = turn::with_custom_domain(credential, domain);
            }
            let lifetime = Duration::from_secs(u64::from(this.ttl_seconds));
            Ok(Issued {
                credential,
                expires_at: asked_at + lifetime,
                lifetime,
                identifier,
            })
        })
        .await;
        if let Err(MintError::BackedOff(_)) = &result {
            this.metrics.cloudflare_call("skipped-backoff", None);
        }
        result
    }

    /// The `customIdentifier` for a mint, from the holder's user ID.
    async fn custom_identifier(&self, holder: Holder) -> Option<String> {
        if self.custom_identifier == CustomIdentifier::Off {
            return None;
        }
        let user_id = match holder {
            Holder::Named(user_id) => user_id,
            Holder::Asked(ask) => ask.await?,
        };
        match &self.custom_identifier {
            CustomIdentifier::Off => None,
            CustomIdentifier::UserId => Some(user_id),
            CustomIdentifier::Hashed(key) => Some(hashed_identifier(key, &user_id)),
        }
    }

    pub fn backoff_open(&self) -> bool {
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_open(self.clock.now())
    }

    /// Access tokens holding a credential for reuse.
    pub async fn cache_entries(&self) -> u64 {
        match &self.reuse {
            Some(cache) => cache.entry_count().await,
            None => 0,
        }
    }
}

fn withheld(why: Withheld) -> Arc<MintError> {
    Arc::new(MintError::Withheld(why))
}

/// A stable per-user tag that does not reveal the user: HMAC-SHA256 of the
/// user ID under the admin's key, 128 bits in hex.
pub(crate) fn hashed_identifier(key: &Secret, user_id: &str) -> String {
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
}
