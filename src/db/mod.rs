//! PostgreSQL access: the pool, migrations and one module per table group.

pub mod calls;
pub mod error;
pub mod factors;
pub mod maintenance;
pub mod outbox;
pub mod passkeys;
pub mod recovery;
pub mod revocations;
pub mod sealed_secrets;
pub mod secrets;
pub mod service_accounts;
pub mod sessions;
pub mod ssf;
pub mod throttle;
pub mod users;
pub mod verification;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        // An unreachable database must turn into UNAVAILABLE quickly, not
        // hang callers for the default 30 s.
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
}

/// A lazy pool: start-up does not fail if the database is briefly down; the
/// first query (migrations) waits for it.
pub fn connect_lazy(options: PgConnectOptions, max_connections: u32) -> PgPool {
    pool_options(max_connections).connect_lazy_with(options)
}

/// Runs migrations, retrying for a while so that a replica started together
/// with its database does not crash-loop.
// Background work: a span only when debugging, not a trace every tick.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
                if error::is_connectivity_error(&e) && attempts < 10 =>
            {
                tracing::warn!(error = %e, "database not reachable yet; retrying migrations");
            }
            Err(e) => return Err(e.into()),
        }
        attempts += 1;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
