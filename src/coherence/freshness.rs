//! How far behind the database the in-memory caches may be, proven rather
//! than assumed. A connection that stops answering without closing (a
//! frozen backend, a dropped NAT entry, a partition) looks exactly like a
//! quiet one, so the change listener is made to prove it is alive: every
//! [`BEAT`] this process sends a notification through the pool that its own
//! listener must hear. PostgreSQL delivers notifications to a listener in
//! commit order, so hearing a beat sent at `t` proves every eviction
//! committed before `t` has been heard. The caches answer only while the
//! last beat heard was sent within [`BOUND`]; otherwise they stay silent
//! (every check reads the database) and are flushed before they answer
//! again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The staleness bound: a revocation committed anywhere is honoured by every
/// replica's caches within this (plus the notification's own latency when
/// the listener is healthy, which is milliseconds).
pub const BOUND: Duration = Duration::from_secs(1);
/// How often a replica proves its listener alive: several beats per bound,
/// so one slow beat does not switch the caches off.
pub const BEAT: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct Freshness {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    /// When (ms after `epoch`) the newest beat heard was sent; 0: none
    /// since the listener (re)connected.
    proven_at_ms: AtomicU64,
    bound_ms: u64,
    /// The caches are switched off by configuration.
    disabled: bool,
}

impl Freshness {
    pub fn new(enabled: bool) -> Self {
        Self::with_bound(enabled, BOUND)
    }

    pub fn with_bound(enabled: bool, bound: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                proven_at_ms: AtomicU64::new(0),
                bound_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
                disabled: !enabled,
            }),
        }
    }

    /// A cache that is always fresh: for unit tests of the caches.
    pub fn always() -> Self {
        let f = Self::with_bound(true, Duration::from_secs(86_400 * 365));
        f.inner.proven_at_ms.store(1, Ordering::Release);
        f
    }

    /// Milliseconds since this process's epoch, for a beat's payload.
    pub fn stamp(&self) -> u64 {
        // +1 so that a stamp is never 0, which means "nothing heard".
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Whether the caches may answer now.
    pub fn is_fresh(&self) -> bool {
        if self.inner.disabled {
            return false;
        }
        let proven = self.inner.proven_at_ms.load(Ordering::Acquire);
        proven != 0 && self.stamp().saturating_sub(proven) <= self.inner.bound_ms
    }

    /// The listener heard a beat sent at `stamp`. Returns whether the
    /// caches were stale until now (so the caller flushes them first).
    pub fn heard(&self, stamp: u64) -> bool {
        let was_fresh = self.is_fresh();
        self.inner.proven_at_ms.fetch_max(stamp, Ordering::AcqRel);
        !was_fresh
    }

    /// The listener lost its connection: nothing is proven any more.
    pub fn forget(&self) {
        self.inner.proven_at_ms.store(0, Ordering::Release);
    }

    pub fn is_disabled(&self) -> bool {
        self.inner.disabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_only_within_the_bound_of_the_last_beat_heard() {
        let f = Freshness::with_bound(true, Duration::from_millis(50));
        assert!(!f.is_fresh(), "nothing heard yet");
        assert!(f.heard(f.stamp()), "was stale");
        assert!(f.is_fresh());
        assert!(!f.heard(f.stamp()), "was fresh");
        std::thread::sleep(Duration::from_millis(80));
        assert!(!f.is_fresh(), "the last beat is too old");
        // A late beat heard now proves only what was sent then.
        let old = f.stamp() - 70;
        f.heard(old);
        assert!(!f.is_fresh());
        f.heard(f.stamp());
        assert!(f.is_fresh());
        f.forget();
        assert!(!f.is_fresh());
    }

    #[test]
    fn switched_off_by_configuration_is_never_fresh() {
        let f = Freshness::new(false);
        f.heard(f.stamp());
        assert!(!f.is_fresh());
    }
}
