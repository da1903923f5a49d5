//! The `login_throttle` table: exponential back-off after repeated failures,
//! in PostgreSQL so that it holds across replicas.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

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

    fn delay_after(&self, failures: i32) -> Option<Duration> {
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
pub async fn charge(
    db: &PgPool,
    key: &str,
    backoff: &Backoff,
    now: DateTime<Utc>,
) -> Result<Option<Duration>, AppError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO login_throttle (key, last_failure_at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let (failures, locked_until, last_failure_at): (i32, Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as(
            "SELECT failures, locked_until, last_failure_at FROM login_throttle WHERE key = $1 FOR UPDATE",
        )
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
    if let Some(until) = locked_until.filter(|u| *u > now) {
        tx.commit().await?;
        return Ok(Some((until - now).to_std().unwrap_or(Duration::ZERO)));
    }
    let quiet = (now - last_failure_at).to_std().unwrap_or(Duration::ZERO) >= backoff.forget_after;
    let failures = if quiet { 1 } else { failures.saturating_add(1) };
    let locked_until = backoff
        .delay_after(failures)
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| now + d);
    sqlx::query(
        "UPDATE login_throttle SET failures = $2, locked_until = $3, last_failure_at = $4 WHERE key = $1",
    )
    .bind(key)
    .bind(failures)
    .bind(locked_until)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(None)
}

/// Forgets the failures of `key` after a success.
pub async fn forgive(db: &PgPool, key: &str) -> Result<(), AppError> {
    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
        .bind(key)
        .execute(db)
        .await?;
    Ok(())
}

/// Gives back the charge of one attempt that turned out to succeed, without
/// forgetting the failures around it.
pub async fn refund(db: &PgPool, key: &str, backoff: &Backoff) -> Result<(), AppError> {
    // The charge may have started a wait; without it the count is back
    // under the free attempts, so the wait goes too.
    sqlx::query(
        "UPDATE login_throttle SET failures = greatest(failures - 1, 0), \
         locked_until = CASE WHEN failures - 1 <= $2 THEN NULL ELSE locked_until END \
         WHERE key = $1",
    )
    .bind(key)
    .bind(backoff.free)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes counters nobody has touched for a day.
pub async fn delete_stale(db: &PgPool, now: DateTime<Utc>) -> Result<u64, AppError> {
    let done = sqlx::query("DELETE FROM login_throttle WHERE last_failure_at < $1 AND (locked_until IS NULL OR locked_until < $1)")
        .bind(now - chrono::Duration::days(1))
        .execute(db)
        .await?;
    Ok(done.rows_affected())
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
