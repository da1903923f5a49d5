//! The database of a one-shot command (`migrate`, `service-account …`).
//!
//! Without `DATABASE_URL` the command uses the development cluster in the
//! data folder. `LocalPostgres::start` adopts a cluster that is already
//! running and stops it when the command exits (through its drop and its
//! watchdog), which would pull the database from under an `authd serve`
//! using it. So a running cluster is connected to directly and left alone;
//! only a cluster the command had to start is stopped again.

use std::path::Path;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::config::Config;
use crate::db;
use crate::local_pg::LocalPostgres;
use crate::startup::{Database, open_database};

/// A migrated database, and the cluster this command started, if it did.
pub struct CommandDatabase {
    pub pool: PgPool,
    started: Option<LocalPostgres>,
}

impl CommandDatabase {
    /// Connects (starting the development cluster if needed) and migrates.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let database = match running_dev_cluster(config).await {
            Some(options) => Database { options, local: None },
            None => open_database(config).await?,
        };
        let opened = Self {
            pool: db::connect_lazy(database.options, 2),
            started: database.local,
        };
        if let Err(e) = db::migrate(&opened.pool).await {
            opened.close().await;
            return Err(e.context("running migrations"));
        }
        Ok(opened)
    }

    /// Closes the pool, then stops the cluster if this command started it.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(pg) = self.started {
            // pg_ctl waits for the shutdown; keep it off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
    }
}

/// The development cluster, if one already answers in the data folder.
async fn running_dev_cluster(config: &Config) -> Option<PgConnectOptions> {
    if config.database_url.is_some() {
        return None;
    }
    let root = config.data_dir.join("postgres").canonicalize().ok()?;
    let options = dev_cluster_options(&root);
    let conn = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&options))
        .await
        .ok()?
        .ok()?;
    let _ = conn.close().await;
    tracing::info!(
        pgdata = %root.display(),
        "using the development PostgreSQL already running in the data folder; it stays running"
    );
    Some(options)
}

/// Where `LocalPostgres` listens (its socket folder, port and superuser) and
/// the database `open_database` creates in it. Kept in step with local_pg.rs
/// by the service-account CLI tests, which run a command next to a server.
fn dev_cluster_options(root: &Path) -> PgConnectOptions {
    PgConnectOptions::new()
        .socket(root.join("pg-run"))
        .port(5432)
        .username("authd")
        .database("authd")
}
