//! Whether the verifier can vouch for the revocation state: how recently
//! the stream said anything, and since when it has seen every revocation.
//! Written by the stream task, read by every request, lock-free.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `last_message_ms` before any message, or after continuity was lost.
const NEVER: u64 = u64::MAX;
/// `covered_since` while no stream has started from the present.
const NOT_COVERED: i64 = i64::MAX;

/// What the stream can say about a token's revocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vouch {
    /// Every revocation that could concern the token is known.
    Fresh,
    /// The stream is live, but the token was issued before it started
    /// from the present (at verifier start, or after continuity was lost):
    /// a revocation from before that moment was never delivered. Carries
    /// the coverage's number, so an introspection can be remembered for it.
    IssuedBeforeCoverage(u64),
    /// Silent for longer than `max_staleness`, or never started.
    Stale,
}

pub(crate) struct StreamHealth {
    epoch: Instant,
    max_staleness: Duration,
    /// Milliseconds after `epoch` of the last message (event or heartbeat)
    /// or stream start.
    last_message_ms: AtomicU64,
    /// Seconds since the Unix epoch from which on every revocation is
    /// delivered (the last start from the present, rounded up).
    covered_since: AtomicI64,
    /// Counts the coverage restarts: an introspection made during one
    /// coverage vouches for a token only as long as it lasts. (Its start in
    /// whole seconds could be the same for two.)
    coverage: AtomicU64,
    /// The last event id applied (0: none yet; resume from the present).
    cursor: AtomicI64,
    connected: AtomicBool,
}

impl StreamHealth {
    pub(crate) fn new(max_staleness: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            max_staleness,
            last_message_ms: AtomicU64::new(NEVER),
            covered_since: AtomicI64::new(NOT_COVERED),
            coverage: AtomicU64::new(0),
            cursor: AtomicI64::new(0),
            connected: AtomicBool::new(false),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(NEVER - 1)
    }

    pub(crate) fn note_message(&self, at: Instant) {
        self.last_message_ms.store(self.millis(at), Ordering::Release);
    }

    /// A stream from the present started at `wall`: every revocation from
    /// then on will arrive.
    pub(crate) fn started_from_present(&self, wall: SystemTime, at: Instant) {
        self.restart_coverage(wall);
        self.connected.store(true, Ordering::Release);
        self.note_message(at);
    }

    /// A stream resumed from the cursor: it delivers what was missed, so
    /// coverage continues.
    pub(crate) fn resumed(&self, at: Instant) {
        self.connected.store(true, Ordering::Release);
        self.note_message(at);
    }

    pub(crate) fn disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// Events were lost (a gap in event ids, an event the verifier cannot
    /// read): only tokens issued from now on are fully covered.
    pub(crate) fn restart_coverage(&self, wall: SystemTime) {
        let since = wall.duration_since(UNIX_EPOCH).map_or(0, |d| {
            let whole = i64::try_from(d.as_secs()).unwrap_or(NOT_COVERED - 1);
            // Rounded up: a token issued in the same second may predate it.
            if d.subsec_nanos() > 0 { whole + 1 } else { whole }
        });
        self.coverage.fetch_add(1, Ordering::AcqRel);
        self.covered_since.store(since, Ordering::Release);
    }

    /// The cursor is unknown or refused (CURSOR_EXPIRED): nothing is known
    /// until a stream from the present starts.
    pub(crate) fn forget_continuity(&self) {
        self.cursor.store(0, Ordering::Release);
        self.coverage.fetch_add(1, Ordering::AcqRel);
        self.covered_since.store(NOT_COVERED, Ordering::Release);
        self.last_message_ms.store(NEVER, Ordering::Release);
    }

    pub(crate) fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Acquire)
    }

    pub(crate) fn set_cursor(&self, event_id: i64) {
        self.cursor.store(event_id, Ordering::Release);
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn last_message_age(&self, now: Instant) -> Option<Duration> {
        match self.last_message_ms.load(Ordering::Acquire) {
            NEVER => None,
            ms => Some(Duration::from_millis(self.millis(now).saturating_sub(ms))),
        }
    }

    pub(crate) fn covered_since(&self) -> Option<SystemTime> {
        match self.covered_since.load(Ordering::Acquire) {
            NOT_COVERED => None,
            secs => Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))),
        }
    }

    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.covered_since.load(Ordering::Acquire) != NOT_COVERED
            && self
                .last_message_age(now)
                .is_some_and(|age| age <= self.max_staleness)
    }

    /// Whether the stream vouches for a token issued at `iat` (seconds
    /// since the epoch, by authd's clock, which may differ from ours by up
    /// to `leeway` seconds).
    pub(crate) fn vouch(&self, iat: i64, leeway: i64, now: Instant) -> Vouch {
        if !self.is_fresh(now) {
            return Vouch::Stale;
        }
        let coverage = self.coverage.load(Ordering::Acquire);
        let since = self.covered_since.load(Ordering::Acquire);
        if iat < since.saturating_add(leeway) {
            Vouch::IssuedBeforeCoverage(coverage)
        } else {
            Vouch::Fresh
        }
    }

    /// Whether `coverage` (from [`Vouch::IssuedBeforeCoverage`]) is still
    /// the current one: an introspection made during it still vouches.
    pub(crate) fn coverage_is(&self, coverage: u64) -> bool {
        self.coverage.load(Ordering::Acquire) == coverage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEEWAY: i64 = 5;

    #[test]
    fn stale_until_started_then_until_silent_too_long() {
        let health = StreamHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(health.vouch(0, LEEWAY, t0), Vouch::Stale, "never started");
        let wall = UNIX_EPOCH + Duration::from_secs(1_000);
        health.started_from_present(wall, t0);
        assert_eq!(health.vouch(1_005, LEEWAY, t0), Vouch::Fresh);
        assert_eq!(
            health.vouch(1_010, LEEWAY, t0 + Duration::from_secs(10)),
            Vouch::Fresh
        );
        assert_eq!(
            health.vouch(1_010, LEEWAY, t0 + Duration::from_millis(10_001)),
            Vouch::Stale,
            "silent for longer than max_staleness"
        );
        health.note_message(t0 + Duration::from_secs(11));
        assert!(
            health.is_fresh(t0 + Duration::from_secs(12)),
            "a heartbeat revives it"
        );
    }

    #[test]
    fn tokens_issued_before_coverage_are_told_apart() {
        let health = StreamHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        // 1000.2 s rounds up to 1001: a token of second 1000 may predate it.
        health.started_from_present(UNIX_EPOCH + Duration::from_millis(1_000_200), t0);
        assert_eq!(
            health.covered_since(),
            Some(UNIX_EPOCH + Duration::from_secs(1_001))
        );
        assert_eq!(health.vouch(1_000, LEEWAY, t0), Vouch::IssuedBeforeCoverage(1));
        assert_eq!(
            health.vouch(1_005, LEEWAY, t0),
            Vouch::IssuedBeforeCoverage(1),
            "within the clock skew allowed"
        );
        assert_eq!(health.vouch(1_006, LEEWAY, t0), Vouch::Fresh);
        assert!(health.coverage_is(1));
        // Restarted within the same second: another coverage all the same,
        // so an introspection made during the first no longer vouches.
        health.restart_coverage(UNIX_EPOCH + Duration::from_millis(1_000_700));
        assert!(!health.coverage_is(1));
        assert_eq!(health.vouch(1_000, LEEWAY, t0), Vouch::IssuedBeforeCoverage(2));
    }

    #[test]
    fn a_forgotten_cursor_is_stale_until_a_new_start() {
        let health = StreamHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        health.started_from_present(UNIX_EPOCH + Duration::from_secs(1_000), t0);
        health.set_cursor(42);
        health.forget_continuity();
        assert_eq!(health.cursor(), 0);
        assert_eq!(health.vouch(5_000, LEEWAY, t0), Vouch::Stale);
        assert_eq!(health.last_message_age(t0), None);
        health.started_from_present(UNIX_EPOCH + Duration::from_secs(3_000), t0);
        assert_eq!(health.vouch(5_000, LEEWAY, t0), Vouch::Fresh);
    }
}
