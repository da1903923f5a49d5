//! The test's own PostgreSQL cluster, which records every statement the
//! server runs.

use authd::local_pg::{Durability, LocalPostgres};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};

use crate::helpers::*;

/// The role the test itself connects as: pg_stat_statements records what
/// `authd` (the server's role) runs, and not this role's setup.
const TEST_ROLE: &str = "plan_check";

/// A cluster of the test's own with pg_stat_statements loaded, and
/// autovacuum off so that the planner's statistics stay those of the seed
/// while the server deletes and writes.
pub(super) async fn recording_cluster() -> LocalPostgres {
    let pg = own_cluster("plans").await;
    let mut admin = PgConnection::connect_with(&pg.connect_options("postgres"))
        .await
        .unwrap();
    sqlx::raw_sql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop_for_restart().unwrap();
        pg.start_again(Durability::Throwaway).unwrap();
        pg
    })
    .await
    .unwrap();
    let mut admin = PgConnection::connect_with(&pg.connect_options("postgres"))
        .await
        .unwrap();
    // One at a time: ALTER SYSTEM refuses to run in a multi-statement query.
    for statement in [
        "ALTER SYSTEM SET pg_stat_statements.track = 'all'",
        "ALTER SYSTEM SET pg_stat_statements.track_utility = off",
        "ALTER SYSTEM SET autovacuum = off",
        "SELECT pg_reload_conf()",
        "CREATE EXTENSION pg_stat_statements",
        &format!("CREATE ROLE {TEST_ROLE} LOGIN SUPERUSER"),
    ] {
        sqlx::raw_sql(statement).execute(&mut admin).await.unwrap();
    }
    admin.close().await.unwrap();
    pg
}

pub(super) fn as_tester(pg: &LocalPostgres, database: &str) -> PgConnectOptions {
    pg.connect_options(database).username(TEST_ROLE)
}
