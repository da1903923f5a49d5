//! The `login_throttle` table: exponential back-off after repeated failures,
//! in PostgreSQL so that it holds across replicas.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::maintenance::Blocks;
use crate::domain::ThrottleKey;
use crate::error::AppError;

/// How failures turn into waiting time.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Failures allowed before any delay.
    pub free: i32,
    /// Delay after the first failure beyond the free ones; doubles after each.
    pub base: Duration,
    /// Longest delay, so an attacker can only ever slow an account down,
    /// never lock its owner out for good.
    pub cap: Duration,
    /// Quiet time after which the count starts over.
    pub forget_after: Duration,
}

impl Backoff {
    /// Five free attempts, then 1 s doubling to 5 min: at most ~25 attempts
    /// per account per hour are ever evaluated (NIST SP 800-63B allows 100).
    pub const LOGIN: Self = Self {
        free: 5,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
        forget_after: Duration::from_secs(3600),
    };

    /// ResetPassword attempts per client address: ten free an hour, then the
    /// same doubling as logins.
    pub const RESET_GUESSES: Self = Self {
        free: 10,
        ..Self::LOGIN
    };

    /// VerifyEmail attempts per client address: as ResetPassword's.
    pub const VERIFY_GUESSES: Self = Self::RESET_GUESSES;

    /// Failed passkey ceremonies per client address: as ResetPassword's.
    pub const PASSKEY_FAILURES: Self = Self::RESET_GUESSES;

    /// The wait after the `failures`-th failure in a row (`charge` does
    /// this in SQL).
    pub fn delay_after(&self, failures: i32) -> Option<Duration> {
        let over = failures - self.free;
        if over <= 0 {
            return None;
        }
        let factor = 1u32
            .checked_shl(u32::try_from(over - 1).unwrap_or(u32::MAX))
            .unwrap_or(u32::MAX);
        Some(self.base.saturating_mul(factor).min(self.cap))
    }
}

/// Checks `key` and, unless it is throttled, counts this attempt as a failure
/// in advance: concurrent attempts are then throttled as if they came one
/// after the other. A successful attempt calls [`forgive`]. Returns the time
/// to wait when throttled.
///
/// One upsert (one round trip on every Login): the row lock of `ON
/// CONFLICT DO UPDATE` serialises concurrent attempts, and its `WHERE`
/// leaves a throttled row untouched. The schedule is
/// [`Backoff::delay_after`], written in SQL; a test holds the two together.
#[tracing::instrument(skip_all)]
pub async fn charge(
    db: &PgPool,
    key: &str,
    backoff: &Backoff,
    now: DateTime<Utc>,
) -> Result<Option<Duration>, AppError> {
    let interval = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let counted = sqlx::query_scalar!(
        "INSERT INTO login_throttle AS t (key, failures, last_failure_at, locked_until)
         VALUES ($1, 1, $2::timestamptz, CASE WHEN 1 > $3::integer THEN $2 + $4::interval END)
         ON CONFLICT (key) DO UPDATE
            SET (failures, last_failure_at, locked_until) = (
                SELECT n.failures, $2,
                       CASE WHEN n.failures > $3
                            THEN $2 + LEAST($4 * power(2, LEAST(n.failures - $3 - 1, 30)), $5::interval) END
                  FROM (SELECT CASE WHEN $2 - t.last_failure_at >= $6::interval THEN 1
                                    ELSE LEAST(t.failures, 2147483646) + 1 END AS failures) AS n)
          WHERE t.locked_until IS NULL OR t.locked_until <= $2
         RETURNING t.failures",
        key,
        now,
        backoff.free,
        interval(backoff.base) as _,
        interval(backoff.cap) as _,
        interval(backoff.forget_after) as _,
    )
    .fetch_optional(db)
    .await?;
    if counted.is_some() {
        return Ok(None);
    }
    // Throttled: the row was left as it was.
    let until = sqlx::query_scalar!("SELECT locked_until FROM login_throttle WHERE key = $1", key)
        .fetch_optional(db)
        .await?
        .flatten();
    Ok(Some(
        until
            .and_then(|u| (u - now).to_std().ok())
            .unwrap_or(Duration::ZERO),
    ))
}

/// How long `key` must still wait, without counting anything: for budgets
/// charged only once an attempt has failed ([`charge`] then), where many
/// good attempts in flight at once must not be refused.
#[tracing::instrument(skip_all)]
pub async fn wait_for<'e>(
    db: impl PgExecutor<'e>,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<Duration>, AppError> {
    let until = sqlx::query_scalar!(
        "SELECT locked_until FROM login_throttle WHERE key = $1 AND locked_until > $2",
        key,
        now
    )
    .fetch_optional(db)
    .await?
    .flatten();
    Ok(until.map(|u| (u - now).to_std().unwrap_or(Duration::ZERO)))
}

/// Forgets the failures of `key` after a success.
#[tracing::instrument(skip_all)]
pub async fn forgive<'e>(db: impl PgExecutor<'e>, key: &str) -> Result<(), AppError> {
    sqlx::query!("DELETE FROM login_throttle WHERE key = $1", key)
        .execute(db)
        .await?;
    Ok(())
}

/// Forgets the counters of several keys at once (an account that is
/// deleted takes the counters keyed by it along).
#[tracing::instrument(skip_all, fields(count = keys.len()))]
pub async fn forgive_all<'e>(db: impl PgExecutor<'e>, keys: &[ThrottleKey]) -> Result<(), AppError> {
    let keys: Vec<&str> = keys.iter().map(ThrottleKey::as_str).collect();
    sqlx::query!("DELETE FROM login_throttle WHERE key = ANY($1)", &keys as _)
        .execute(db)
        .await?;
    Ok(())
}

/// Gives back the charge of one attempt that turned out to succeed, without
/// forgetting the failures around it.
#[tracing::instrument(skip_all)]
pub async fn refund<'e>(db: impl PgExecutor<'e>, key: &str, backoff: &Backoff) -> Result<(), AppError> {
    // The charge may have started a wait; without it the count is back
    // under the free attempts, so the wait goes too.
    sqlx::query!(
        "UPDATE login_throttle SET failures = greatest(failures - 1, 0), \
         locked_until = CASE WHEN failures - 1 <= $2 THEN NULL ELSE locked_until END \
         WHERE key = $1",
        key,
        backoff.free,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Up to `$4` counters in heap blocks `$1..$2` without a failure since `$3`
/// and not locked past it; rows another transaction holds are skipped. A
/// constant (not compile-checked) so that the plan check plans this very
/// text; the counters are collected first and deleted by key, so a wide
/// block range cannot turn the delete into a join over the whole table.
pub const DELETE_STALE_IN: &str = "DELETE FROM login_throttle t
      WHERE t.key = ANY (ARRAY(
            SELECT key FROM login_throttle
             WHERE ctid >= format('(%s,0)', $1::bigint)::tid
               AND ctid < format('(%s,0)', $2::bigint)::tid
               AND last_failure_at < $3 AND (locked_until IS NULL OR locked_until < $3)
             LIMIT $4
               FOR UPDATE SKIP LOCKED))
        AND t.last_failure_at < $3 AND (t.locked_until IS NULL OR t.locked_until < $3)";

/// Deletes up to `limit` counters in `blocks` nobody has touched for a day
/// before `now` and that hold no lock past then. The table is walked in
/// block ranges (a TID range scan), so no index on `last_failure_at` is
/// needed, and without one a failure's update of it can be HOT. Rows a
/// login holds are skipped, for the next pass; a login racing with the
/// deletion of its counter starts a new one.
// Background work: a span only when debugging, not a trace every batch.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_stale_in(
    conn: &mut PgConnection,
    blocks: Blocks,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, AppError> {
    super::maintenance::delete_in_blocks(
        conn,
        DELETE_STALE_IN,
        blocks,
        now - chrono::Duration::days(1),
        limit,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_unfree_failure_up_to_the_cap() {
        let b = Backoff::LOGIN;
        assert_eq!(b.delay_after(5), None);
        assert_eq!(b.delay_after(6), Some(Duration::from_secs(1)));
        assert_eq!(b.delay_after(7), Some(Duration::from_secs(2)));
        assert_eq!(b.delay_after(14), Some(Duration::from_secs(256)));
        assert_eq!(b.delay_after(15), Some(Duration::from_secs(300)));
        assert_eq!(b.delay_after(i32::MAX), Some(Duration::from_secs(300)));
    }

    #[test]
    fn at_most_a_hundred_attempts_an_hour_are_evaluated() {
        let b = Backoff::LOGIN;
        let (mut elapsed, mut attempts) = (Duration::ZERO, 0);
        while elapsed < Duration::from_secs(3600) {
            attempts += 1;
            elapsed += b.delay_after(attempts).unwrap_or(Duration::ZERO);
        }
        assert!(attempts <= 100, "{attempts}");
    }
}
