//! Whether the verifier can vouch for the revocation state: how recently
//! the stream said anything, and since when it has seen every revocation.
//! Written by the stream task, read by every request, lock-free.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `last_message_ms` before any message, or after continuity was lost.
const NEVER: u64 = u64::MAX;
/// `covered_since` while the verifier is not in step with the stream, and
/// `pending_since` while it is not catching up.
const NOT_COVERED: i64 = i64::MAX;

/// What the stream can say about a token's revocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vouch {
    /// Every revocation that could concern the token is known.
    Fresh,
    /// The stream is live, but cannot vouch for a token issued this early:
    /// coverage began later (the stream had to start from the present) or
    /// an event the verifier cannot read concerned such tokens. Carries the
    /// coverage's number, so an introspection can be remembered for it.
    IssuedBeforeCoverage(u64),
    /// Silent for longer than `max_staleness`, not yet caught up, or never
    /// started.
    Stale,
}

pub(crate) struct StreamHealth {
    epoch: Instant,
    max_staleness: Duration,
    /// Milliseconds after `epoch` of the last message (event or heartbeat).
    last_message_ms: AtomicU64,
    /// Seconds since the Unix epoch from which on every revocation is
    /// known; `NOT_COVERED` until a stream has caught up.
    covered_since: AtomicI64,
    /// While a stream opened without a cursor catches up: what
    /// `covered_since` becomes at its first heartbeat (the time it was
    /// opened from), which says that everything before has been delivered.
    pending_since: AtomicI64,
    /// Counts the coverage changes: an introspection made during one
    /// coverage vouches for a token only as long as it lasts. (Its start in
    /// whole seconds could be the same for two.)
    coverage: AtomicU64,
    /// The last event id applied (0: none yet; the stream starts from a
    /// time).
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
            pending_since: AtomicI64::new(NOT_COVERED),
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

    /// A stream without a cursor opened, delivering every revocation from
    /// `since` (seconds since the epoch) on: once it has caught up (its
    /// first heartbeat), that is the coverage.
    pub(crate) fn syncing_from(&self, since: i64) {
        self.pending_since.store(since, Ordering::Release);
    }

    /// A stream opened. Opening says nothing about revocations yet: a
    /// resumed stream first delivers what was missed, so freshness comes
    /// from its messages.
    pub(crate) fn connected(&self) {
        self.connected.store(true, Ordering::Release);
    }

    pub(crate) fn disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// A heartbeat: authd has delivered every event committed before the
    /// stream was opened. A stream that was catching up is now covered.
    pub(crate) fn note_heartbeat(&self, at: Instant) {
        let pending = self.pending_since.swap(NOT_COVERED, Ordering::AcqRel);
        if pending != NOT_COVERED {
            self.coverage.fetch_add(1, Ordering::AcqRel);
            self.covered_since.store(pending, Ordering::Release);
        }
        self.note_message(at);
    }

    /// An event the verifier cannot read revoked something it cannot name:
    /// tokens issued up to `since` (seconds since the epoch) are no longer
    /// vouched for, now or once the stream has caught up.
    pub(crate) fn not_covered_before(&self, since: i64) {
        self.coverage.fetch_add(1, Ordering::AcqRel);
        let raise = |v: i64| (v != NOT_COVERED).then_some(v.max(since));
        let _ = self
            .covered_since
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, raise);
        let _ = self
            .pending_since
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, raise);
    }

    /// Events were lost (a gap in event ids, a cursor authd no longer
    /// has): nothing is vouched for until a stream from a time has caught
    /// up again.
    pub(crate) fn forget_continuity(&self) {
        self.cursor.store(0, Ordering::Release);
        self.coverage.fetch_add(1, Ordering::AcqRel);
        self.covered_since.store(NOT_COVERED, Ordering::Release);
        self.pending_since.store(NOT_COVERED, Ordering::Release);
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

/// Whole seconds since the epoch, rounded down (a start time: earlier
/// covers more).
pub(crate) fn secs_down(wall: SystemTime) -> i64 {
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(NOT_COVERED - 1))
}

/// Whole seconds since the epoch, rounded up (a coverage boundary: a token
/// issued in the same second may predate it).
pub(crate) fn secs_up(wall: SystemTime) -> i64 {
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| {
        let whole = i64::try_from(d.as_secs()).unwrap_or(NOT_COVERED - 1);
        if d.subsec_nanos() > 0 { whole + 1 } else { whole }
    })
}

#[cfg(test)]
impl StreamHealth {
    /// A stream that has caught up and vouches for tokens issued from
    /// `wall` (rounded up) on, as of `at`.
    pub(crate) fn covered_from(&self, wall: SystemTime, at: Instant) {
        self.syncing_from(secs_up(wall));
        self.connected();
        self.note_heartbeat(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEEWAY: i64 = 5;

    #[test]
    fn stale_until_caught_up_then_until_silent_too_long() {
        let health = StreamHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(health.vouch(0, LEEWAY, t0), Vouch::Stale, "never started");
        health.syncing_from(100);
        health.connected();
        assert_eq!(
            health.vouch(1_005, LEEWAY, t0),
            Vouch::Stale,
            "opened, not caught up"
        );
        health.note_message(t0);
        assert_eq!(
            health.vouch(1_005, LEEWAY, t0),
            Vouch::Stale,
            "an event of the catch-up vouches for nothing yet"
        );
        health.note_heartbeat(t0);
        assert_eq!(
            health.covered_since(),
            Some(UNIX_EPOCH + Duration::from_secs(100))
        );
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
            "a message revives it"
        );
        assert_eq!(
            health.covered_since(),
            Some(UNIX_EPOCH + Duration::from_secs(100)),
            "a later heartbeat does not move the coverage"
        );
    }

    #[test]
    fn tokens_issued_before_coverage_are_told_apart() {
        let health = StreamHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        // 1000.2 s rounds up to 1001: a token of second 1000 may predate it.
        health.covered_from(UNIX_EPOCH + Duration::from_millis(1_000_200), t0);
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
    }

    #[test]
    fn an_unreadable_event_withdraws_coverage_of_older_tokens_now_and_after_a_catch_up() {
        let health = StreamHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        health.covered_from(UNIX_EPOCH + Duration::from_secs(1_000), t0);
        health.not_covered_before(2_000);
        assert!(
            !health.coverage_is(1),
            "an introspection made before no longer vouches"
        );
        assert_eq!(health.vouch(2_004, LEEWAY, t0), Vouch::IssuedBeforeCoverage(2));
        assert_eq!(health.vouch(2_005, LEEWAY, t0), Vouch::Fresh);
        health.not_covered_before(1_500);
        assert_eq!(
            health.covered_since(),
            Some(UNIX_EPOCH + Duration::from_secs(2_000)),
            "an older one changes nothing"
        );

        // Met while catching up: it outlasts the catch-up's own start.
        let syncing = StreamHealth::new(Duration::from_secs(10));
        syncing.syncing_from(1_000);
        syncing.not_covered_before(2_000);
        assert_eq!(syncing.covered_since(), None);
        syncing.note_heartbeat(t0);
        assert_eq!(
            syncing.covered_since(),
            Some(UNIX_EPOCH + Duration::from_secs(2_000))
        );
    }

    #[test]
    fn a_forgotten_cursor_is_stale_until_a_new_catch_up() {
        let health = StreamHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        health.covered_from(UNIX_EPOCH + Duration::from_secs(1_000), t0);
        health.set_cursor(42);
        health.forget_continuity();
        assert_eq!(health.cursor(), 0);
        assert_eq!(health.vouch(5_000, LEEWAY, t0), Vouch::Stale);
        assert_eq!(health.last_message_age(t0), None);
        health.note_heartbeat(t0);
        assert_eq!(
            health.vouch(5_000, LEEWAY, t0),
            Vouch::Stale,
            "a heartbeat with no catch-up pending vouches for nothing"
        );
        health.covered_from(UNIX_EPOCH + Duration::from_secs(3_000), t0);
        assert_eq!(health.vouch(5_000, LEEWAY, t0), Vouch::Fresh);
    }

    #[test]
    fn seconds_round_the_safe_way() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_000_200);
        assert_eq!(secs_down(wall), 1_000);
        assert_eq!(secs_up(wall), 1_001);
        assert_eq!(secs_up(UNIX_EPOCH + Duration::from_secs(7)), 7);
    }
}
