//! Statements bounded by the gRPC call that runs them. Dropping a call's
//! future (the client cancelled, or its deadline passed) stops nothing in
//! PostgreSQL: a statement waiting on a row lock keeps waiting, and sqlx
//! only gives its connection back to the pool once that statement ends.
//! So a call's transactions carry the call's name (`application_name`,
//! local to the transaction) and a `statement_timeout` just past its
//! deadline, and an abandoned call cancels whatever still runs under its
//! name.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

/// Beyond the deadline, so that the call's own answer (DEADLINE_EXCEEDED)
/// comes first and the timeout is only the backstop for a cancel that could
/// not be sent.
const STATEMENT_TIMEOUT_MARGIN: Duration = Duration::from_millis(50);

/// Call ids are unique in one process; replicas share the database.
static REPLICA: LazyLock<String> = LazyLock::new(|| {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id.chars().take(12).collect()
});

fn call_name(call: u64) -> String {
    format!("authd call {}.{call}", *REPLICA)
}

/// Begins a transaction for call `call` with `left` before its deadline.
pub async fn begin(
    pool: &PgPool,
    call: u64,
    left: Duration,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let timeout_ms = (left + STATEMENT_TIMEOUT_MARGIN).as_millis().max(1);
    // One round trip, as the plain BEGIN it replaces; both settings end
    // with the transaction, so the pooled connection keeps none of them.
    pool.begin_with(format!(
        "BEGIN; SET LOCAL statement_timeout = {timeout_ms}; SET LOCAL application_name = '{}'",
        call_name(call)
    ))
    .await
}

/// Cancels the statements still running in call `call`'s transactions.
/// A connection of the pool if one is idle; otherwise (every connection
/// may be stuck behind the same lock) a connection of its own.
pub async fn cancel(pool: &PgPool, call: u64) -> Result<i64, sqlx::Error> {
    let name = call_name(call);
    let statement = sqlx::query_scalar!(
        r#"SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) AS "cancelled!"
             FROM pg_stat_activity
            WHERE application_name = $1 AND state = 'active' AND pid <> pg_backend_pid()"#,
        name
    );
    match pool.try_acquire() {
        Some(mut conn) => statement.fetch_one(&mut *conn).await,
        None => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
            let cancelled = statement.fetch_one(&mut conn).await;
            let _ = conn.close().await;
            cancelled
        }
    }
}
