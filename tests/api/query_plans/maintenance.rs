//! The clean-up's statements keep their plans whatever the statistics say.
//!
//! Once, after a long Refresh load on the million-account seed, the batch
//! that deletes ended sessions' refresh tokens was planned as a hash join
//! over the whole of `refresh_tokens` (1.7 s a batch, JIT-compiled each
//! time): the load had left a few sessions with thousands of consumed
//! tokens each, and the planner no longer trusted the per-session lookup.
//! The main plan check plans statements against fresh, even statistics and
//! could not see it.
//!
//! This test builds that state on purpose: the seed, then what a long
//! Refresh load leaves (the load generator's 64 task sessions with 6 000
//! consumed tokens each), then `refresh_tokens.session_id` analysed with
//! its distinct count pinned to those 64 sessions, so that every session
//! looks like it holds thousands of tokens. It plans each block-walk and
//! expiry statement of the clean-up exactly as authd runs it (the same
//! text), with the block ranges a pass uses (a batch's worth, and the whole
//! table, which a table without statistics gets), custom and generic, both
//! on a connection with default settings (the statement's own shape must
//! hold) and with the clean-up's pinned planner settings. None may read a
//! big table whole.

use std::collections::BTreeSet;

use authd::db::maintenance::{AgedRows, ExpiredRows, PINNED_PLANNER_SETTINGS};
use serde_json::Value;
use sqlx::PgConnection;

use super::indexes::indexes_of_the_schema;
use super::planning::{Found, walk};
use crate::helpers::*;
use crate::seed::{Scale, seed, seeded_tables};

/// What a long Refresh load leaves: its sessions, and the consumed tokens
/// each keeps until the session ends.
const LOADED_SESSIONS: i64 = 64;
const CONSUMED_TOKENS_EACH: i64 = 6_000;

/// Tables smaller than this (in 8 KiB blocks) may be read whole.
const SMALL_TABLE_BLOCKS: i64 = 64;

/// A block-walk statement: `$1..$2` heap blocks of `table`, `$3` the
/// cut-off, `$4` the batch.
struct BlockWalk {
    what: &'static str,
    table: &'static str,
    sql: &'static str,
}

fn block_walks() -> Vec<BlockWalk> {
    let mut walks = vec![
        BlockWalk {
            what: "ended sessions' refresh tokens",
            table: "sessions",
            sql: authd::db::sessions::DELETE_ENDED_TOKENS_IN,
        },
        BlockWalk {
            what: "ended sessions",
            table: "sessions",
            sql: authd::db::sessions::DELETE_ENDED_IN,
        },
        BlockWalk {
            what: "stale login counters",
            table: "login_throttle",
            sql: authd::db::throttle::DELETE_STALE_IN,
        },
    ];
    for rows in AgedRows::ALL {
        let table = match rows {
            AgedRows::ResetTokens => "password_reset_tokens",
            AgedRows::VerificationTokens => "email_verification_tokens",
            AgedRows::FinishedMail => "email_outbox",
        };
        walks.push(BlockWalk {
            what: table,
            table,
            sql: rows.delete_statement(),
        });
    }
    walks
}

async fn blocks_of(conn: &mut PgConnection, table: &str) -> i64 {
    authd::db::maintenance::table_size(conn, table)
        .await
        .unwrap()
        .blocks
}

/// The plan of `EXECUTE q(arguments)` for `sql` prepared with `types`.
async fn plan(conn: &mut PgConnection, sql: &str, types: &str, arguments: &str, generic: bool) -> Value {
    let mode = if generic {
        "force_generic_plan"
    } else {
        "force_custom_plan"
    };
    sqlx::raw_sql(&format!(
        "SET plan_cache_mode = {mode}; PREPARE q({types}) AS {sql}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    let plan: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE q({arguments})"))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql("DEALLOCATE q").execute(&mut *conn).await.unwrap();
    plan
}

#[tokio::test]
async fn the_cleanups_plans_hold_after_a_long_refresh_load_and_skewed_statistics() {
    let app = spawn_app().await;
    let mut conn = app.db.acquire().await.unwrap();
    // Nobody logs in to the seeded accounts: any hash will do.
    seed(
        &mut conn,
        Scale::accounts(20_000),
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, consumed_at)
         SELECT sha256(convert_to(s.id::text || '/' || n, 'UTF8')), s.id, now(), now()
           FROM (SELECT id FROM sessions ORDER BY id LIMIT $1) s, generate_series(1, $2) n",
    )
    .bind(LOADED_SESSIONS)
    .bind(CONSUMED_TOKENS_EACH)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql(&format!(
        "ALTER TABLE refresh_tokens ALTER COLUMN session_id SET (n_distinct = {LOADED_SESSIONS});
         ANALYZE"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let tokens_per_session: f64 = sqlx::query_scalar(
        "SELECT c.reltuples::float8 / s.n_distinct::float8
           FROM pg_class c JOIN pg_stats s ON s.tablename = c.relname
          WHERE c.relname = 'refresh_tokens' AND s.attname = 'session_id'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(
        tokens_per_session > 1_000.0,
        "the skew did not take: {tokens_per_session} tokens per session"
    );

    let partial: BTreeSet<String> = indexes_of_the_schema(&app.db)
        .await
        .into_iter()
        .filter(|i| i.partial)
        .map(|i| i.name)
        .collect();
    // A table of a few blocks is read whole by any sensible plan; the seed
    // makes the others big enough that only an index or a TID range is.
    let mut big = BTreeSet::new();
    for table in seeded_tables() {
        if blocks_of(&mut conn, table).await >= SMALL_TABLE_BLOCKS {
            big.insert(table);
        }
    }
    assert!(
        ["sessions", "refresh_tokens"].iter().all(|t| big.contains(t)),
        "the seed is too small to tell plans apart: {big:?}"
    );
    let mut whole_reads = Vec::new();
    let mut check = |settings: &str, what: &str, arguments: &str, generic: bool, plan: Value| {
        let mut found = Found::default();
        walk(&plan, false, &partial, &mut found);
        for (table, how) in found.whole_reads.iter().filter(|(t, _)| big.contains(t.as_str())) {
            whole_reads.push(format!(
                "{how} of {table}: {what} ({settings}, {} plan, arguments {arguments})\n{}",
                if generic { "generic" } else { "custom" },
                serde_json::to_string_pretty(&plan).unwrap()
            ));
        }
    };

    let mut planned = 0;
    for pinned in [false, true] {
        let settings = if pinned {
            "pinned settings"
        } else {
            "default settings"
        };
        if pinned {
            authd::db::maintenance::pin_plans(&mut conn).await.unwrap();
            for (name, value) in PINNED_PLANNER_SETTINGS {
                let now: String = sqlx::query_scalar("SELECT current_setting($1)")
                    .bind(name)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(now, value, "{name}");
            }
        }
        for walk_of in block_walks() {
            let blocks = blocks_of(&mut conn, walk_of.table).await;
            for range in [(0, blocks.clamp(1, 20)), (0, blocks.max(1))] {
                let arguments = format!("{}, {}, now() - interval '30 days', 1000", range.0, range.1);
                for generic in [false, true] {
                    let plan = plan(
                        &mut conn,
                        walk_of.sql,
                        "bigint, bigint, timestamptz, bigint",
                        &arguments,
                        generic,
                    )
                    .await;
                    check(settings, walk_of.what, &arguments, generic, plan);
                    planned += 1;
                }
            }
        }
        for rows in ExpiredRows::ALL {
            for generic in [false, true] {
                let arguments = "now(), 1000";
                let plan = plan(
                    &mut conn,
                    rows.delete_statement(),
                    "timestamptz, bigint",
                    arguments,
                    generic,
                )
                .await;
                check(settings, rows.table().name(), arguments, generic, plan);
                planned += 1;
            }
        }
    }
    // The settings are the session's: this connection must not go back to
    // the pool with them.
    conn.detach();
    assert!(
        whole_reads.is_empty(),
        "{} plan(s) of the clean-up read a big table whole:\n\n{}",
        whole_reads.len(),
        whole_reads.join("\n\n")
    );
    eprintln!(
        "planned the clean-up's statements {planned} times; {tokens_per_session:.0} tokens per session as the planner sees it"
    );
}
