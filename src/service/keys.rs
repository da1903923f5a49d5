//! Service-account keys as the credential check sees them. A key is looked
//! up by its SHA-256 (a hash, never the password-hash pool: keys are 256
//! random bits) and the answer is kept in memory like live sessions, with the
//! same rules: the cache is only used while the change listener hears
//! PostgreSQL's notifications (a created or deleted key, a deleted account or
//! changed scopes flush it on every replica), and a lookup racing a change is
//! not stored. Real keys are cached up to a bound; presented keys that do not
//! exist are remembered too, briefly and within a bound of their own, so a
//! client repeating one costs no query. Each flush is also announced to
//! long-lived calls, which re-read their key (`grpc::key_guard`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::coherence::freshness::Freshness;
use crate::crypto::opaque::{self, TokenKind};
use crate::db;
use crate::domain::Scope;
use crate::error::AppError;
use crate::metrics::Metrics;

/// Keys cached at most; beyond, lookups go to the database.
const MAX_KEYS: usize = 10_000;
/// Unknown keys remembered at most (in two generations of half this).
const MAX_UNKNOWN: usize = 10_000;
/// How long an unknown key is remembered. Flushes (a key created anywhere)
/// already end it; the limit only bounds what a missed flush could cost.
const UNKNOWN_TTL: Duration = Duration::from_secs(30);
/// `last_used_at` is written at most this often per key and replica.
const TOUCH_EVERY_SECS: i64 = 60;

/// The service behind a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    pub account_id: Uuid,
    pub key_id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// What the service presented.
    pub credential: Credential,
}

/// How a service proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Its key (`sk_…`).
    Key,
    /// A token its key minted (client_credentials); its scopes are the
    /// token's, within the account's current ones.
    Token,
}

impl ServiceIdentity {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

struct Cached {
    identity: Arc<ServiceIdentity>,
    last_touched: AtomicI64,
}

struct Inner {
    db: PgPool,
    metrics: Metrics,
    /// False once a lock was poisoned.
    usable: AtomicBool,
    freshness: Freshness,
    generation: AtomicU64,
    keys: RwLock<HashMap<[u8; 32], Arc<Cached>>>,
    /// The same keys by id, for the tokens they minted.
    by_id: RwLock<HashMap<Uuid, Arc<Cached>>>,
    unknown: Mutex<UnknownKeys>,
    /// The generation after each flush, for calls that outlive one check.
    flushed: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct ServiceKeys {
    inner: Arc<Inner>,
}

impl ServiceKeys {
    /// Cached lookups answer only while `freshness` says the change
    /// listener keeps up.
    pub fn new(db: PgPool, freshness: Freshness, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                metrics,
                usable: AtomicBool::new(true),
                freshness,
                generation: AtomicU64::new(0),
                keys: RwLock::default(),
                by_id: RwLock::default(),
                unknown: Mutex::new(UnknownKeys::new(MAX_UNKNOWN, UNKNOWN_TTL)),
                flushed: watch::Sender::new(0),
            }),
        }
    }

    /// The service a presented `sk_` key belongs to; `None` for anything
    /// that is not a live key.
    pub async fn identify(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<ServiceIdentity>>, AppError> {
        let Some(hash) = opaque::parse_presented(TokenKind::ServiceKey, presented) else {
            return Ok(None);
        };
        if let Some(cached) = self.cached(&hash.0) {
            self.touch(&cached, now);
            return Ok(Some(cached.identity.clone()));
        }
        if self.known_unknown(&hash.0) {
            return Ok(None);
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let owner = db::service_accounts::find_by_key(&self.inner.db, &hash).await?;
        self.inner.metrics.service_key_lookup(owner.is_some());
        let Some(owner) = owner else {
            self.store_unknown(hash.0, generation);
            return Ok(None);
        };
        let cached = Arc::new(Cached {
            identity: Arc::new(identity_of(owner)),
            last_touched: AtomicI64::new(0),
        });
        self.store(hash.0, cached.clone(), generation);
        self.touch(&cached, now);
        Ok(Some(cached.identity.clone()))
    }

    /// Like [`Self::identify`], but from memory only: `None` unless the key
    /// is cached as live.
    pub fn identify_in_memory(&self, presented: &str, now: DateTime<Utc>) -> Option<Arc<ServiceIdentity>> {
        let hash = opaque::parse_presented(TokenKind::ServiceKey, presented)?;
        let cached = self.cached(&hash.0)?;
        self.touch(&cached, now);
        Some(cached.identity.clone())
    }

    /// Like [`Self::identify_by_key_id`], but from memory only: `None`
    /// unless the key is cached as live and the caches may answer.
    pub fn identify_by_key_id_in_memory(
        &self,
        key_id: Uuid,
        now: DateTime<Utc>,
    ) -> Option<Arc<ServiceIdentity>> {
        if !self.may_answer() {
            return None;
        }
        let cached = self.inner.by_id.read().ok()?.get(&key_id).cloned()?;
        self.touch(&cached, now);
        Some(cached.identity.clone())
    }

    /// The live key `key_id` (the one that minted a service token), from
    /// memory when the caches may answer; `None` once the key or its
    /// account is gone.
    pub async fn identify_by_key_id(
        &self,
        key_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<ServiceIdentity>>, AppError> {
        if self.may_answer()
            && let Some(cached) = self
                .inner
                .by_id
                .read()
                .ok()
                .and_then(|ids| ids.get(&key_id).cloned())
        {
            self.touch(&cached, now);
            return Ok(Some(cached.identity.clone()));
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let Some(owner) = db::service_accounts::find_by_key_id(&self.inner.db, key_id).await? else {
            return Ok(None);
        };
        let cached = Arc::new(Cached {
            identity: Arc::new(identity_of(owner)),
            last_touched: AtomicI64::new(0),
        });
        if self.may_answer()
            && let Ok(mut ids) = self.inner.by_id.write()
            && self.inner.generation.load(Ordering::Acquire) == generation
            && ids.len() < MAX_KEYS
        {
            ids.insert(key_id, cached.clone());
        }
        self.touch(&cached, now);
        Ok(Some(cached.identity.clone()))
    }

    /// The key behind `identity` as the database has it now (never the
    /// cache): `None` once the key or its account is gone.
    pub async fn recheck(&self, identity: &ServiceIdentity) -> Result<Option<ServiceIdentity>, AppError> {
        Ok(
            db::service_accounts::find_by_key_id(&self.inner.db, identity.key_id)
                .await?
                .map(identity_of),
        )
    }

    /// Changes as flushes happen (the count of flushes so far).
    pub fn flushes(&self) -> watch::Receiver<u64> {
        self.inner.flushed.subscribe()
    }

    /// Whether flushes can be trusted to announce every change now (the
    /// change listener proved it keeps up).
    pub fn hears_changes(&self) -> bool {
        self.may_answer()
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Arc<Cached>> {
        if !self.may_answer() {
            return None;
        }
        self.inner.keys.read().ok()?.get(hash).cloned()
    }

    fn known_unknown(&self, hash: &[u8; 32]) -> bool {
        if !self.may_answer() {
            return false;
        }
        self.inner
            .unknown
            .lock()
            .is_ok_and(|unknown| unknown.contains(hash, Instant::now()))
    }

    fn store_unknown(&self, hash: [u8; 32], generation: u64) {
        if !self.may_answer() {
            return;
        }
        let Ok(mut unknown) = self.inner.unknown.lock() else {
            return;
        };
        // A key created since the lookup began may be this very one.
        if self.inner.generation.load(Ordering::Acquire) == generation {
            unknown.insert(hash, Instant::now());
        }
    }

    fn store(&self, hash: [u8; 32], cached: Arc<Cached>, generation: u64) {
        if !self.may_answer() {
            return;
        }
        let Ok(mut keys) = self.inner.keys.write() else {
            return;
        };
        // A flush since the lookup began may concern this very key.
        if self.inner.generation.load(Ordering::Acquire) == generation && keys.len() < MAX_KEYS {
            keys.insert(hash, cached);
        }
    }

    /// Records the key's use in the background, at most once a minute:
    /// `service-account list` shows it, and no call waits for the write.
    fn touch(&self, cached: &Cached, now: DateTime<Utc>) {
        let now_secs = now.timestamp();
        let last = cached.last_touched.load(Ordering::Relaxed);
        if now_secs - last < TOUCH_EVERY_SECS
            || cached
                .last_touched
                .compare_exchange(last, now_secs, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let db = self.inner.db.clone();
        let key_id = cached.identity.key_id;
        tokio::spawn(async move {
            if let Err(e) = db::service_accounts::touch_key(&db, key_id, now).await {
                tracing::debug!(error = %e, %key_id, "could not record a key's use");
            }
        });
    }

    pub fn flush(&self) {
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        match self.inner.keys.write() {
            Ok(mut keys) => keys.clear(),
            Err(_) => self.inner.usable.store(false, Ordering::Release),
        }
        match self.inner.by_id.write() {
            Ok(mut ids) => ids.clear(),
            Err(_) => self.inner.usable.store(false, Ordering::Release),
        }
        match self.inner.unknown.lock() {
            Ok(mut unknown) => unknown.clear(),
            Err(_) => self.inner.usable.store(false, Ordering::Release),
        }
        self.inner.flushed.send_replace(generation);
    }

    fn may_answer(&self) -> bool {
        self.inner.usable.load(Ordering::Acquire) && self.inner.freshness.is_fresh()
    }
}

impl crate::coherence::change_listener::FlushOnChange for ServiceKeys {
    fn flush(&self) {
        ServiceKeys::flush(self);
    }
}

fn identity_of(owner: db::service_accounts::KeyOwner) -> ServiceIdentity {
    ServiceIdentity {
        account_id: owner.account_id,
        key_id: owner.key_id,
        name: owner.name,
        // Scopes the code does not know (from a newer version) grant
        // nothing here.
        scopes: owner.scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect(),
        credential: Credential::Key,
    }
}

/// Hashes of presented keys that do not exist. Two generations of at most
/// `per_generation` entries: when the newer fills up, the older is dropped,
/// so memory stays bounded whatever a client sends and what was seen
/// recently stays longest.
struct UnknownKeys {
    newer: HashMap<[u8; 32], Instant>,
    older: HashMap<[u8; 32], Instant>,
    per_generation: usize,
    ttl: Duration,
}

impl UnknownKeys {
    fn new(max: usize, ttl: Duration) -> Self {
        Self {
            newer: HashMap::new(),
            older: HashMap::new(),
            per_generation: (max / 2).max(1),
            ttl,
        }
    }

    fn contains(&self, hash: &[u8; 32], now: Instant) -> bool {
        self.newer
            .get(hash)
            .or_else(|| self.older.get(hash))
            .is_some_and(|seen| now.saturating_duration_since(*seen) < self.ttl)
    }

    fn insert(&mut self, hash: [u8; 32], now: Instant) {
        if self.newer.len() >= self.per_generation {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(hash, now);
    }

    fn clear(&mut self) {
        self.newer.clear();
        self.older.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u32) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_be_bytes());
        h
    }

    #[test]
    fn unknown_keys_stay_within_their_bound_and_keep_the_recent_ones() {
        let mut unknown = UnknownKeys::new(100, Duration::from_secs(30));
        let t0 = Instant::now();
        for i in 0..10_000 {
            unknown.insert(hash(i), t0);
            assert!(unknown.len() <= 100, "{} after {i}", unknown.len());
        }
        assert!(unknown.contains(&hash(9_999), t0));
        assert!(unknown.contains(&hash(9_950), t0));
        assert!(!unknown.contains(&hash(0), t0));
    }

    #[test]
    fn an_unknown_key_is_forgotten_after_its_time_or_a_flush() {
        let mut unknown = UnknownKeys::new(100, Duration::from_secs(30));
        let t0 = Instant::now();
        unknown.insert(hash(1), t0);
        assert!(unknown.contains(&hash(1), t0 + Duration::from_secs(29)));
        assert!(!unknown.contains(&hash(1), t0 + Duration::from_secs(30)));
        unknown.insert(hash(2), t0);
        unknown.clear();
        assert!(!unknown.contains(&hash(2), t0));
        assert_eq!(unknown.len(), 0);
    }
}
