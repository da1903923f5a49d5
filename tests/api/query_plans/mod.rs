//! Every statement authd runs is planned against a seeded database, the way
//! the server runs it once its prepared statements switch to generic plans,
//! and none may read a big table whole: no sequential scan, and no walk
//! along an index that has no condition to start from (only a filter to
//! stop at, as `max(id) … WHERE occurred_at < $1` or a keyset page ORed
//! with "first page" get). TID range scans (the clean-up's) and walks of a
//! partial index are fine. Every index some plan uses, or that a key or a
//! cascade needs, earns its keep; the others are dropped or listed with
//! the reason they stay.
//!
//! The test drives a real authd through every RPC of its services (success
//! and the main failures), with its background work on (mail delivery,
//! reset requests, the clean-up), on a cluster of its own where
//! `pg_stat_statements` records each distinct statement, those run inside
//! functions and triggers included (`track = 'all'`). It then plans each
//! recorded statement with `plan_cache_mode = force_generic_plan`:
//! `PREPARE q AS …; EXPLAIN (FORMAT JSON) EXECUTE q(NULL, …)`.
//!
//! Statements recorded from PL/pgSQL bodies name the function's variables
//! (`event_id`, `NEW.id`); each name PostgreSQL reports unknown is planned
//! as one more parameter, whose type is guessed when PostgreSQL cannot
//! infer it. pg_stat_statements also turns constants into parameters, so a
//! `LIMIT 1` is planned as `LIMIT $n` (the planner then assumes a tenth of
//! the rows is read: a stricter test, not a looser one).

mod cluster;
mod drive;
mod indexes;
mod maintenance;
mod planning;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::helpers::*;
use crate::lifecycle::{RESET_URL, VERIFY_URL};
use crate::scale_seed::password_hash_of;
use crate::seed::{Scale, seed, seeded_tables};
use crate::smtp::SmtpServer;
use cluster::{as_tester, recording_cluster};
use drive::{background_work_done, drive_every_rpc, methods_called, methods_of_the_services};
use indexes::{Index, indexes_of_the_schema};
use planning::{Found, generic_plan, planner_prefers_indexes_at_this_size, walk};

/// 100 000 sessions: the planner prefers an index for every lookup (the
/// test checks it), and the seed takes a few seconds.
const SCALE: Scale = Scale::accounts(20_000);
/// The server's role on the test clusters.
const SERVER_ROLE: &str = "authd";

/// Whole reads of big tables that are accepted: a part of the statement,
/// the table, and why. The test fails on an entry that no longer matches.
const WHOLE_READS_ACCEPTED: &[(&str, &str, &str)] = &[];

/// Indexes no plan uses that stay, with why. The unique ones (keys) and
/// those whose leading column is a foreign key (a deletion's cascade finds
/// the referencing rows with it) need no entry.
const UNUSED_INDEXES_KEPT: &[(&str, &str)] = &[];

#[tokio::test]
async fn no_statement_authd_runs_scans_a_big_table_and_every_index_is_used() {
    let started = Instant::now();
    let pg = recording_cluster().await;
    let url = pg.url("authd");

    // Migrated by authd; the seed's password hash written by an authd with
    // weaker argon2 costs, so that a seeded account's Login also upgrades it.
    let hashing = spawn_app_on(&url, |c| {
        c.argon2.memory_kib = TEST_ARGON2.memory_kib / 2;
    })
    .await;
    let hash = password_hash_of(&hashing).await;
    hashing.stop().await.unwrap();

    let tester = PgPool::connect_with(as_tester(&pg, "authd")).await.unwrap();
    let mut conn = tester.acquire().await.unwrap();
    let report = seed(&mut conn, SCALE, &hash).await.unwrap();
    let seeded_in = report.elapsed;
    drop(conn);
    planner_prefers_indexes_at_this_size(&tester).await;
    let mut stats = PgConnection::connect_with(&as_tester(&pg, "postgres"))
        .await
        .unwrap();
    sqlx::raw_sql("SELECT pg_stat_statements_reset()")
        .execute(&mut stats)
        .await
        .unwrap();

    // Everything the server runs from its start on, background work included.
    let smtp = SmtpServer::start().await;
    let smtp_url = smtp.url();
    let app = spawn_app_on(&url, |c| {
        c.smtp_url = Some(SecretString::from(smtp_url));
        c.reset_url = RESET_URL.into();
        c.verify_url = VERIFY_URL.into();
        c.mail_poll_interval = Duration::from_millis(50);
        c.mail_retry_base = Duration::from_millis(100);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.revocation_heartbeat = Duration::from_millis(200);
        c.cleanup_interval = Duration::from_secs(1);
        c.audiences = vec!["billing".into()];
    })
    .await;
    drive_every_rpc(&app, &smtp, &tester).await;
    background_work_done(&tester).await;
    let page = crate::metrics::scrape(&app, None).await.body;
    app.stop().await.unwrap();
    assert_eq!(
        methods_called(&page),
        methods_of_the_services(),
        "RPCs the test does not drive (add them to drive_every_rpc), or calls to unknown methods"
    );
    let driven_in = started.elapsed();

    let statements: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT s.query FROM pg_stat_statements s
           JOIN pg_database d ON d.oid = s.dbid
          WHERE d.datname = 'authd' AND s.userid = $1::regrole
          ORDER BY 1",
    )
    .bind(SERVER_ROLE)
    .fetch_all(&mut stats)
    .await
    .unwrap();
    assert!(statements.len() > 50, "{statements:#?}");

    let mut planner = PgConnection::connect_with(&as_tester(&pg, "authd"))
        .await
        .unwrap();
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut planner)
        .await
        .unwrap();
    let indexes = indexes_of_the_schema(&tester).await;
    let partial: BTreeSet<String> = indexes
        .iter()
        .filter(|i| i.partial)
        .map(|i| i.name.clone())
        .collect();
    let big: BTreeSet<&str> = seeded_tables().into_iter().collect();
    let mut whole_reads = Vec::new();
    let mut accepted = BTreeSet::new();
    let mut unplanned = Vec::new();
    let mut used_indexes = BTreeSet::new();
    for statement in &statements {
        let plan = match generic_plan(&mut planner, statement).await {
            Ok(plan) => plan,
            Err(e) => {
                unplanned.push(format!("{statement}\n  -> {e}"));
                continue;
            }
        };
        let mut found = Found::default();
        walk(&plan, false, &partial, &mut found);
        used_indexes.extend(found.indexes);
        for (table, how) in found.whole_reads.iter().filter(|(t, _)| big.contains(t.as_str())) {
            match WHOLE_READS_ACCEPTED
                .iter()
                .position(|(part, t, _)| t == table && statement.contains(part))
            {
                Some(entry) => {
                    accepted.insert(entry);
                }
                None => whole_reads.push(format!(
                    "{how} of {table} in:\n{statement}\nplan: {}",
                    serde_json::to_string_pretty(&plan).unwrap()
                )),
            }
        }
    }
    assert!(
        unplanned.is_empty(),
        "statements that could not be planned:\n{}",
        unplanned.join("\n")
    );
    assert!(
        whole_reads.is_empty(),
        "{} statement(s) read a big table whole; give them an index they can start from:\n\n{}",
        whole_reads.len(),
        whole_reads.join("\n\n")
    );
    for (entry, (part, table, _)) in WHOLE_READS_ACCEPTED.iter().enumerate() {
        assert!(
            accepted.contains(&entry),
            "accepted whole read of {table} no longer happens (remove the entry): {part}"
        );
    }

    let unused: Vec<&Index> = indexes
        .iter()
        .filter(|i| !i.unique && !i.leads_with_foreign_key && !used_indexes.contains(&i.name))
        .collect();
    let unlisted: Vec<String> = unused
        .iter()
        .filter(|i| !UNUSED_INDEXES_KEPT.iter().any(|(name, _)| *name == i.name))
        .map(|i| format!("{} on {}", i.name, i.table))
        .collect();
    assert!(
        unlisted.is_empty(),
        "indexes no plan uses: drop them in a migration (DROP INDEX CONCURRENTLY, one per \
         -- no-transaction file) or list them in UNUSED_INDEXES_KEPT with the reason: {unlisted:?}"
    );
    for (name, _) in UNUSED_INDEXES_KEPT {
        assert!(
            unused.iter().any(|i| i.name == *name),
            "{name} is listed as unused but is gone or used now (remove the entry)"
        );
    }
    eprintln!(
        "seeded {} rows in {seeded_in:?}; drove every RPC by {driven_in:?}; planned {} statements \
         by {:?}; indexes used: {used_indexes:?}",
        report.total_rows(),
        statements.len(),
        started.elapsed()
    );
}
