//! Service-account keys as the credential check sees them. A key is looked
//! up by its SHA-256 (a hash, never the password-hash pool: keys are 256
//! random bits) and the answer is kept in memory like live sessions, with the
//! same rules: the cache is only used while the change listener hears
//! PostgreSQL's notifications (a deleted key or account flushes it on every
//! replica), and a lookup racing a change is not stored. Only real keys are
//! cached, so the cache is bounded by the number of keys that exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::opaque::{self, TokenKind};
use crate::db;
use crate::domain::Scope;
use crate::error::AppError;
use crate::freshness::Freshness;
use crate::metrics::Metrics;

/// Keys cached at most; beyond, lookups go to the database.
const MAX_KEYS: usize = 10_000;
/// `last_used_at` is written at most this often per key and replica.
const TOUCH_EVERY_SECS: i64 = 60;

/// The service behind a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    pub account_id: Uuid,
    pub key_id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
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
        let cached = self.cached(&hash.0);
        let cached = match cached {
            Some(c) => c,
            None => {
                let generation = self.inner.generation.load(Ordering::Acquire);
                let owner = db::service_accounts::find_by_key(&self.inner.db, &hash).await?;
                self.inner.metrics.service_key_lookup(owner.is_some());
                let Some(owner) = owner else {
                    return Ok(None);
                };
                let identity = ServiceIdentity {
                    account_id: owner.account_id,
                    key_id: owner.key_id,
                    name: owner.name,
                    // Scopes the code does not know (from a newer version)
                    // grant nothing here.
                    scopes: owner.scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect(),
                };
                let cached = Arc::new(Cached {
                    identity: Arc::new(identity),
                    last_touched: AtomicI64::new(0),
                });
                self.store(hash.0, cached.clone(), generation);
                cached
            }
        };
        self.touch(&cached, now);
        Ok(Some(cached.identity.clone()))
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Arc<Cached>> {
        if !self.may_answer() {
            return None;
        }
        self.inner.keys.read().ok()?.get(hash).cloned()
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
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        match self.inner.keys.write() {
            Ok(mut keys) => keys.clear(),
            Err(_) => self.inner.usable.store(false, Ordering::Release),
        }
    }

    fn may_answer(&self) -> bool {
        self.inner.usable.load(Ordering::Acquire) && self.inner.freshness.is_fresh()
    }
}
