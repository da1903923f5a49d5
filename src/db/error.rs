//! What storage failures mean to the rest of authd.

use crate::error::AppError;

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        if is_connectivity_error(&err) {
            Self::Unavailable(err.into())
        } else if is_lost_race(&err) {
            Self::Conflict
        } else {
            Self::internal(err)
        }
    }
}

/// serialization_failure and deadlock_detected: PostgreSQL aborted the
/// transaction because a concurrent one won; retrying is safe.
fn is_lost_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// True for errors that mean "the database cannot be reached right now" as
/// opposed to a bug in a query.
pub fn is_connectivity_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now and friends.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}
