//! Live sessions in memory, so GetMe and IntrospectToken usually need no
//! query. Correctness comes first:
//!
//! - PostgreSQL triggers NOTIFY every session end and account change; a
//!   listener task evicts the affected entries on every replica within
//!   milliseconds of the commit.
//! - The cache answers only while that listener has proven, within the last
//!   second, that it hears what commits (`freshness`); a lost or stalled
//!   listener silences it, and it is flushed before it answers again, so a
//!   lost notification cannot leave a revoked session behind.
//! - Revocations made by this process evict locally before the RPC answers,
//!   so a caller never sees its own logout ignored.
//! - An entry read from the database is only stored if no eviction that
//!   could concern it happened since the read began: generation counters per
//!   shard of session ids and of user ids, so a read racing a revocation
//!   cannot resurrect the session, while evictions of other accounts (a
//!   steady stream on a busy system) rarely spoil a read.
//! - An entry expires at the session's idle or absolute expiry as read; a
//!   Refresh that extends the session only makes the entry conservative.
//! - Memory is bounded without a cliff: when full, expired entries go first,
//!   then an arbitrary sixteenth, never everything at once; and sessions are
//!   indexed by user, so an account change costs that account's entries,
//!   not a scan of all of them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::coherence::freshness::Freshness;
use crate::domain::User;

/// Bounds memory (an entry holds a copy of the account, about 0.5 KiB).
pub const MAX_ENTRIES: usize = 100_000;
/// Generation counters per shard of ids; an eviction spoils only the reads
/// of ids in its shard.
const SHARDS: usize = 64;

struct Entry {
    user: Arc<User>,
    live_until: DateTime<Utc>,
}

#[derive(Default)]
struct Entries {
    by_session: HashMap<Uuid, Entry>,
    /// The cached sessions of each user, for eviction by user (a set: one
    /// account with very many sessions must not make removals slow).
    by_user: HashMap<Uuid, HashSet<Uuid>>,
}

impl Entries {
    fn remove_session(&mut self, session_id: Uuid) {
        if let Some(entry) = self.by_session.remove(&session_id) {
            self.unlink(entry.user.id, session_id);
        }
    }

    fn remove_user(&mut self, user_id: Uuid) {
        for session_id in self.by_user.remove(&user_id).unwrap_or_default() {
            self.by_session.remove(&session_id);
        }
    }

    fn unlink(&mut self, user_id: Uuid, session_id: Uuid) {
        if let Some(sessions) = self.by_user.get_mut(&user_id) {
            sessions.remove(&session_id);
            if sessions.is_empty() {
                self.by_user.remove(&user_id);
            }
        }
    }

    /// Makes room: expired entries first, then an arbitrary sixteenth (the
    /// map's order is arbitrary), so filling up costs a scan once per
    /// sixteenth of the capacity, not a flush.
    fn make_room(&mut self, now: DateTime<Utc>) {
        let expired: Vec<Uuid> = self
            .by_session
            .iter()
            .filter(|(_, e)| e.live_until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_session(id);
        }
        if self.by_session.len() >= MAX_ENTRIES {
            let victims: Vec<Uuid> = self.by_session.keys().take(MAX_ENTRIES / 16).copied().collect();
            for id in victims {
                self.remove_session(id);
            }
        }
    }
}

struct Inner {
    /// False once a lock was poisoned: the cache is never trusted again.
    usable: AtomicBool,
    /// Whether the change listener has proven it is keeping up.
    freshness: Freshness,
    session_generations: [AtomicU64; SHARDS],
    user_generations: [AtomicU64; SHARDS],
    entries: RwLock<Entries>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            usable: AtomicBool::new(true),
            freshness: Freshness::always(),
            session_generations: std::array::from_fn(|_| AtomicU64::new(0)),
            user_generations: std::array::from_fn(|_| AtomicU64::new(0)),
            entries: RwLock::default(),
        }
    }
}

fn shard(id: Uuid) -> usize {
    // Ids are random (v4), so their low bits spread evenly.
    (id.as_u128() % SHARDS as u128) as usize
}

#[derive(Clone, Default)]
pub struct SessionCache {
    inner: Arc<Inner>,
}

/// Where a database read started, for [`SessionCache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    session: u64,
    user: u64,
}

impl SessionCache {
    /// A cache that answers only while `freshness` says so.
    pub fn new(freshness: Freshness) -> Self {
        Self {
            inner: Arc::new(Inner {
                freshness,
                ..Inner::default()
            }),
        }
    }

    fn may_answer(&self) -> bool {
        self.inner.usable.load(Ordering::Acquire) && self.inner.freshness.is_fresh()
    }

    /// The account of a live cached session, if the cache may be used.
    pub fn get(&self, user_id: Uuid, session_id: Uuid, now: DateTime<Utc>) -> Option<Arc<User>> {
        if !self.may_answer() {
            return None;
        }
        let entries = self.inner.entries.read().ok()?;
        let entry = entries.by_session.get(&session_id)?;
        (entry.user.id == user_id && entry.live_until > now).then(|| entry.user.clone())
    }

    /// Call before reading the session from the database.
    pub fn ticket(&self, user_id: Uuid, session_id: Uuid) -> Ticket {
        Ticket {
            session: self.inner.session_generations[shard(session_id)].load(Ordering::Acquire),
            user: self.inner.user_generations[shard(user_id)].load(Ordering::Acquire),
        }
    }

    /// Stores a session read as live, unless an eviction that could concern
    /// it happened since `ticket` was taken.
    #[allow(clippy::disallowed_methods)] // eviction when full drops expired entries first; no rule hangs on it
    pub fn insert(&self, ticket: Ticket, session_id: Uuid, user: Arc<User>, live_until: DateTime<Utc>) {
        if !self.may_answer() {
            return;
        }
        let Ok(mut entries) = self.inner.entries.write() else {
            return;
        };
        // Evictions bump their generation before taking this lock, so one
        // that removed nothing because this entry was not there yet is seen
        // here.
        let unchanged = self.inner.session_generations[shard(session_id)].load(Ordering::Acquire)
            == ticket.session
            && self.inner.user_generations[shard(user.id)].load(Ordering::Acquire) == ticket.user;
        if !unchanged {
            return;
        }
        if entries.by_session.len() >= MAX_ENTRIES {
            entries.make_room(Utc::now());
        }
        let user_id = user.id;
        if let Some(old) = entries.by_session.insert(session_id, Entry { user, live_until }) {
            entries.unlink(old.user.id, session_id);
        }
        entries.by_user.entry(user_id).or_default().insert(session_id);
    }

    pub fn evict_session(&self, session_id: Uuid) {
        self.inner.session_generations[shard(session_id)].fetch_add(1, Ordering::AcqRel);
        self.with_entries(|e| e.remove_session(session_id));
    }

    pub fn evict_user(&self, user_id: Uuid) {
        self.inner.user_generations[shard(user_id)].fetch_add(1, Ordering::AcqRel);
        self.with_entries(|e| e.remove_user(user_id));
    }

    pub fn flush(&self) {
        for generation in self
            .inner
            .session_generations
            .iter()
            .chain(self.inner.user_generations.iter())
        {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        self.with_entries(|e| *e = Entries::default());
    }

    /// Number of cached sessions.
    pub fn len(&self) -> usize {
        self.inner.entries.read().map_or(0, |e| e.by_session.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_entries(&self, change: impl FnOnce(&mut Entries)) {
        match self.inner.entries.write() {
            Ok(mut entries) => change(&mut entries),
            // A poisoned lock: stop trusting the cache altogether.
            Err(_) => self.inner.usable.store(false, Ordering::Release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: Uuid) -> Arc<User> {
        Arc::new(User {
            id,
            email: "a@example.com".into(),
            username: None,
            full_name: String::new(),
            phone: String::new(),
            image_url: String::new(),
            email_verified: false,
            roles: Vec::new(),
            disabled: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        })
    }

    fn enabled() -> SessionCache {
        SessionCache::default()
    }

    #[test]
    fn hits_only_while_live_enabled_and_for_the_right_user() {
        let c = enabled();
        let (u, s, now) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        c.insert(c.ticket(u, s), s, user(u), now + chrono::Duration::seconds(60));
        assert!(c.get(u, s, now).is_some());
        assert!(c.get(Uuid::new_v4(), s, now).is_none(), "another user's token");
        assert!(
            c.get(u, s, now + chrono::Duration::seconds(61)).is_none(),
            "expired"
        );
    }

    #[test]
    fn answers_only_while_the_listener_is_proven_fresh() {
        let freshness = Freshness::with_bound(true, std::time::Duration::from_secs(60));
        let c = SessionCache::new(freshness.clone());
        let (u, s, now) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        c.insert(c.ticket(u, s), s, user(u), now + chrono::Duration::seconds(60));
        assert!(
            c.get(u, s, now).is_none(),
            "nothing stored before a beat was heard"
        );
        freshness.heard(freshness.stamp());
        c.insert(c.ticket(u, s), s, user(u), now + chrono::Duration::seconds(60));
        assert!(c.get(u, s, now).is_some());
        freshness.forget();
        assert!(
            c.get(u, s, now).is_none(),
            "silent while the listener is unproven"
        );
    }

    #[test]
    fn a_read_that_raced_an_eviction_is_not_stored() {
        let c = enabled();
        let (u, s, now) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        let ticket = c.ticket(u, s);
        c.evict_session(s);
        c.insert(ticket, s, user(u), now + chrono::Duration::seconds(60));
        assert!(c.get(u, s, now).is_none(), "the session ended during the read");
        let ticket = c.ticket(u, s);
        c.evict_user(u);
        c.insert(ticket, s, user(u), now + chrono::Duration::seconds(60));
        assert!(c.get(u, s, now).is_none(), "the account changed during the read");
        let ticket = c.ticket(u, s);
        c.flush();
        c.insert(ticket, s, user(u), now + chrono::Duration::seconds(60));
        assert!(c.get(u, s, now).is_none(), "flushed during the read");
    }

    #[test]
    fn evictions_by_session_and_by_user() {
        let c = enabled();
        let (u, s1, s2, now) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        let later = now + chrono::Duration::seconds(60);
        c.insert(c.ticket(u, s1), s1, user(u), later);
        c.insert(c.ticket(u, s2), s2, user(u), later);
        c.evict_session(s1);
        assert!(c.get(u, s1, now).is_none() && c.get(u, s2, now).is_some());
        c.evict_user(u);
        assert!(c.get(u, s2, now).is_none());
    }

    #[test]
    fn an_eviction_elsewhere_does_not_spoil_a_read() {
        let c = enabled();
        let now = Utc::now();
        // An id in another shard of both kinds than the read's.
        let s = Uuid::from_u128(1);
        let other = Uuid::from_u128(2);
        let ticket = c.ticket(Uuid::from_u128(3), s);
        c.evict_session(other);
        c.evict_user(other);
        c.insert(
            ticket,
            s,
            user(Uuid::from_u128(3)),
            now + chrono::Duration::seconds(60),
        );
        assert!(c.get(Uuid::from_u128(3), s, now).is_some());
    }

    #[test]
    fn a_full_cache_makes_room_without_forgetting_everything() {
        let c = enabled();
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(60);
        let u = Uuid::new_v4();
        for i in 0..MAX_ENTRIES as u128 {
            let s = Uuid::from_u128(i + 1);
            c.insert(c.ticket(u, s), s, user(u), later);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        let s = Uuid::new_v4();
        c.insert(c.ticket(u, s), s, user(u), later);
        let len = c.len();
        assert!(
            len > MAX_ENTRIES * 9 / 10 && len < MAX_ENTRIES,
            "a sixteenth goes, not everything: {len}"
        );
        assert!(c.get(u, s, now).is_some());
        // The user index stayed in step: evicting the user empties it all.
        c.evict_user(u);
        assert!(c.is_empty());
    }
}
