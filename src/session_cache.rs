//! Live sessions in memory, so GetMe and IntrospectToken usually need no
//! query. Correctness comes first:
//!
//! - PostgreSQL triggers NOTIFY every session end and account change; a
//!   listener task evicts the affected entries on every replica within
//!   milliseconds of the commit.
//! - The cache is only used while that listener is connected; when the
//!   connection drops it is switched off and flushed, and flushed again once
//!   listening resumes, so a lost notification cannot leave a revoked
//!   session behind.
//! - Revocations made by this process evict locally before the RPC answers,
//!   so a caller never sees its own logout ignored.
//! - An entry read from the database is only stored if no eviction happened
//!   since the read began (a generation counter), so a read racing a
//!   revocation cannot resurrect the session.
//! - An entry expires at the session's idle or absolute expiry as read; a
//!   Refresh that extends the session only makes the entry conservative.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::db::users::UserRecord;

const SESSION_ENDED: &str = "authd_session_ended";
const USER_CHANGED: &str = "authd_user_changed";
/// Bounds memory: past this many entries the cache starts over.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    user: Arc<UserRecord>,
    live_until: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    enabled: AtomicBool,
    generation: AtomicU64,
    entries: RwLock<HashMap<Uuid, Entry>>,
}

#[derive(Clone, Default)]
pub struct SessionCache {
    inner: Arc<Inner>,
}

/// Where a database read started, for [`SessionCache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl SessionCache {
    /// The account of a live cached session, if the cache may be used.
    pub fn get(&self, user_id: Uuid, session_id: Uuid, now: DateTime<Utc>) -> Option<Arc<UserRecord>> {
        if !self.inner.enabled.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.inner.entries.read().ok()?;
        let entry = entries.get(&session_id)?;
        (entry.user.id == user_id && entry.live_until > now).then(|| entry.user.clone())
    }

    /// Call before reading a session from the database.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.inner.generation.load(Ordering::Acquire))
    }

    /// Stores a session read as live, unless anything was evicted since
    /// `ticket` was taken.
    pub fn insert(&self, ticket: Ticket, session_id: Uuid, user: Arc<UserRecord>, live_until: DateTime<Utc>) {
        if !self.inner.enabled.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut entries) = self.inner.entries.write() else {
            return;
        };
        // Evictions bump the generation while holding this lock.
        if self.inner.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(session_id, Entry { user, live_until });
    }

    pub fn evict_session(&self, session_id: Uuid) {
        self.evict(|id, _| *id == session_id);
    }

    pub fn evict_user(&self, user_id: Uuid) {
        self.evict(|_, e| e.user.id == user_id);
    }

    pub fn flush(&self) {
        self.evict(|_, _| true);
    }

    fn evict(&self, matches: impl Fn(&Uuid, &Entry) -> bool) {
        match self.inner.entries.write() {
            Ok(mut entries) => {
                self.inner.generation.fetch_add(1, Ordering::AcqRel);
                entries.retain(|id, e| !matches(id, e));
            }
            // A poisoned lock: stop trusting the cache altogether.
            Err(_) => self.inner.enabled.store(false, Ordering::Release),
        }
    }

    fn set_enabled(&self, on: bool) {
        if on {
            self.flush();
            self.inner.enabled.store(true, Ordering::Release);
        } else {
            self.inner.enabled.store(false, Ordering::Release);
            self.flush();
        }
    }

    /// Follows the change notifications until aborted.
    pub async fn follow_changes(self, pool: PgPool) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.listen_once(&pool).await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(e) => tracing::warn!(error = %e, "session cache listener failed; cache off"),
            }
            self.set_enabled(false);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Returns when the notification connection is lost.
    async fn listen_once(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen_all([SESSION_ENDED, USER_CHANGED]).await?;
        self.set_enabled(true);
        tracing::debug!("session cache on");
        while let Some(notification) = listener.try_recv().await? {
            let Ok(id) = Uuid::parse_str(notification.payload()) else {
                self.flush();
                continue;
            };
            match notification.channel() {
                SESSION_ENDED => self.evict_session(id),
                USER_CHANGED => self.evict_user(id),
                _ => self.flush(),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: Uuid) -> Arc<UserRecord> {
        Arc::new(UserRecord {
            id,
            email: "a@example.com".into(),
            username: None,
            full_name: String::new(),
            phone: String::new(),
            image_url: String::new(),
            email_verified: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        })
    }

    fn enabled() -> SessionCache {
        let c = SessionCache::default();
        c.set_enabled(true);
        c
    }

    #[test]
    fn hits_only_while_live_enabled_and_for_the_right_user() {
        let c = enabled();
        let (u, s, now) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        c.insert(c.ticket(), s, user(u), now + chrono::Duration::seconds(60));
        assert!(c.get(u, s, now).is_some());
        assert!(c.get(Uuid::new_v4(), s, now).is_none(), "another user's token");
        assert!(
            c.get(u, s, now + chrono::Duration::seconds(61)).is_none(),
            "expired"
        );
        c.set_enabled(false);
        assert!(c.get(u, s, now).is_none(), "off while not listening");
    }

    #[test]
    fn a_read_that_raced_an_eviction_is_not_stored() {
        let c = enabled();
        let (u, s, now) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        let ticket = c.ticket();
        c.evict_session(Uuid::new_v4());
        c.insert(ticket, s, user(u), now + chrono::Duration::seconds(60));
        assert!(c.get(u, s, now).is_none());
    }

    #[test]
    fn evictions_by_session_and_by_user() {
        let c = enabled();
        let (u, s1, s2, now) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        let later = now + chrono::Duration::seconds(60);
        c.insert(c.ticket(), s1, user(u), later);
        c.insert(c.ticket(), s2, user(u), later);
        c.evict_session(s1);
        assert!(c.get(u, s1, now).is_none() && c.get(u, s2, now).is_some());
        c.evict_user(u);
        assert!(c.get(u, s2, now).is_none());
    }
}
