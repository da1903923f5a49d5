//! Migrations applied to a schema full of data neither rewrite a big table
//! nor hold a lock that blocks its writers while they work through one.
//!
//! Each migration is applied, in version order, to a database seeded as a
//! small deployment (`seed_empty_tables` after every migration, so every big
//! table that exists by then has rows). Before it commits, the check reads
//! what the migration's own backend did, from PostgreSQL itself:
//!
//! - **rewrite**: the `relfilenode` of a seeded table or one of its indexes
//!   changed (a new file was written: `ALTER COLUMN … TYPE`, a volatile
//!   `DEFAULT`, `VACUUM FULL`, `CLUSTER`…);
//! - **mass write**: it updated or deleted a tenth of a big table's rows or
//!   more (`pg_stat_get_xact_tuples_updated`/`_deleted`), a rewrite done
//!   in place;
//! - **locked scan**: it holds a lock that blocks writes (`ShareLock` or
//!   stronger, `pg_locks` of `pg_backend_pid()`) on a big table, and read or
//!   wrote a tenth of some big table's rows in the same transaction
//!   (`pg_stat_get_xact_tuples_returned` counts sequential scans, index
//!   builds and constraint validation, `_fetched` index fetches): writers
//!   then wait for O(table) work, as behind `CREATE INDEX` without
//!   `CONCURRENTLY` or `ADD CONSTRAINT` with a validating scan.
//!
//! Measured on PostgreSQL 15 with 20 000 rows: `CREATE INDEX` returns every
//! row (`tuples_returned`) under `ShareLock`; `ADD COLUMN … CHECK` and `ADD
//! CONSTRAINT … CHECK` return every row under `AccessExclusiveLock`;
//! `UPDATE` of all rows counts them as updated; `ADD COLUMN … DEFAULT 0`
//! reads nothing; `ALTER COLUMN … TYPE varchar(64)` and `ADD COLUMN …
//! DEFAULT random()` change the relfilenode. The negative test below keeps
//! those observations true.
//!
//! A migration whose first line is `-- no-transaction` (sqlx's marker) that
//! PostgreSQL refuses inside a transaction block (`CREATE INDEX
//! CONCURRENTLY`, `DROP INDEX CONCURRENTLY`: SQLSTATE 25001) runs on its own,
//! as sqlx runs it; such a file can hold only that one statement (sqlx sends
//! the file as one query, and PostgreSQL refuses those commands in a
//! multi-statement query), which takes no lock that blocks writes; it is
//! still checked for rewrites. Any other no-transaction file is checked
//! inside a transaction like the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use sqlx::{Connection as _, PgConnection};

use crate::helpers::fresh_database;
use crate::seed::{Scale, seed, seed_empty_tables, seeded_tables};

/// Small enough to seed after every migration in well under a second, big
/// enough that a table's share of rows is unmistakable.
const SCALE: Scale = Scale::accounts(5_000);
/// The seeded accounts' password hash: nothing logs in here.
const HASH: &str = "$argon2id$v=19$m=4096,t=1,p=1$c2VlZGVkc2FsdA$bm90IGEgcmVhbCBoYXNoIGF0IGFsbA";
/// The share of a table's rows that counts as working through the table.
const LARGE_SHARE: f64 = 0.1;
/// Lock modes that block INSERT, UPDATE and DELETE.
const BLOCKS_WRITES: [&str; 4] = [
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Offence {
    Rewrite,
    MassWrite,
    LockedScan,
}

/// One offence against one seeded table.
#[derive(Debug, Clone)]
struct Finding {
    table: String,
    offence: Offence,
    detail: String,
}

/// Released migrations that offend. They cannot change: sqlx records each
/// applied migration's checksum and refuses to start on a database whose
/// applied file was edited. Each entry: version, table, offence, and what
/// the migration does. The test fails on an entry that no longer offends.
const FROZEN: &[(i64, &str, Offence, &str)] = &[
    (
        20261125000001,
        "users",
        Offence::LockedScan,
        "rebuilds users_email_key with CREATE UNIQUE INDEX (not CONCURRENTLY): ShareLock on users \
         while it reads every account",
    ),
    (
        20261127000001,
        "users",
        Offence::LockedScan,
        "ADD COLUMN roles … CHECK validates every account under AccessExclusiveLock, then \
         CREATE INDEX users_created_at_id_idx reads them again",
    ),
    (
        20261127000002,
        "email_outbox",
        Offence::LockedScan,
        "replaces the kind CHECK, adds user_id with a foreign key and an index, all validated \
         under AccessExclusiveLock by scans of the outbox",
    ),
    (
        20261127000002,
        "email_outbox",
        Offence::MassWrite,
        "back-fills user_id of every queued message with one UPDATE",
    ),
    (
        20261127000002,
        "users",
        Offence::LockedScan,
        "the user_id foreign key takes ShareRowExclusiveLock on users while the outbox is \
         validated and back-filled (the back-fill joins every account)",
    ),
    (
        20261127000002,
        "sessions",
        Offence::LockedScan,
        "ADD COLUMN user_agent, ip_address with CHECKs validates every session under \
         AccessExclusiveLock",
    ),
];

struct MigrationFile {
    version: i64,
    name: String,
    sql: String,
    no_tx: bool,
}

/// The files of migrations/ in version order, read as sqlx reads them.
fn migration_files() -> Vec<MigrationFile> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<MigrationFile> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let (version, rest) = name.split_once('_')?;
            if !rest.ends_with(".sql") {
                return None;
            }
            let sql = std::fs::read_to_string(dir.join(&name)).unwrap();
            Some(MigrationFile {
                version: version.parse().unwrap(),
                no_tx: sql.starts_with("-- no-transaction"),
                name,
                sql,
            })
        })
        .collect();
    files.sort_by_key(|m| m.version);
    // The same list, with the same markers, as the binary embeds.
    let embedded: Vec<(i64, bool)> = authd::db::MIGRATOR.iter().map(|m| (m.version, m.no_tx)).collect();
    let read: Vec<(i64, bool)> = files.iter().map(|m| (m.version, m.no_tx)).collect();
    assert_eq!(read, embedded, "migrations/ and the embedded migrator disagree");
    files
}

/// A seeded table as it was before the migration.
struct BigTable {
    name: String,
    oid: u32,
    rows: i64,
}

async fn big_tables(conn: &mut PgConnection) -> Vec<BigTable> {
    let mut tables = Vec::new();
    for name in seeded_tables() {
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(format!("public.{name}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let Some(oid) = oid else { continue };
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        if rows > 0 {
            tables.push(BigTable {
                name: name.to_owned(),
                oid: u32::try_from(oid).unwrap(),
                rows,
            });
        }
    }
    tables
}

/// A seeded table or one of its indexes, and the file that holds it.
struct RelationFile {
    name: String,
    /// The table itself, or the table of the index.
    table: String,
    relfilenode: u32,
}

/// The files of every table given and of each of its indexes, by oid.
async fn files_of(conn: &mut PgConnection, tables: &[BigTable]) -> BTreeMap<u32, RelationFile> {
    let oids: Vec<i64> = tables.iter().map(|t| i64::from(t.oid)).collect();
    let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT c.oid::bigint, c.relname::text, coalesce(t.relname, c.relname)::text,
                c.relfilenode::bigint
           FROM pg_class c
           LEFT JOIN pg_index i ON i.indexrelid = c.oid
           LEFT JOIN pg_class t ON t.oid = i.indrelid
          WHERE c.oid::bigint = ANY($1) OR i.indrelid::bigint = ANY($1)",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(oid, name, table, file)| {
            let file = RelationFile {
                name,
                table,
                relfilenode: u32::try_from(file).unwrap(),
            };
            (u32::try_from(oid).unwrap(), file)
        })
        .collect()
}

/// Rows this transaction read and wrote, per table, so far.
#[derive(Debug, Clone, Copy, Default)]
struct Work {
    read: i64,
    updated_or_deleted: i64,
    inserted: i64,
}

async fn work_so_far(conn: &mut PgConnection, tables: &[BigTable]) -> Vec<Work> {
    let mut work = Vec::new();
    for table in tables {
        let (read, updated_or_deleted, inserted): (i64, i64, i64) = sqlx::query_as(
            "SELECT pg_stat_get_xact_tuples_returned($1) + pg_stat_get_xact_tuples_fetched($1),
                    pg_stat_get_xact_tuples_updated($1) + pg_stat_get_xact_tuples_deleted($1),
                    pg_stat_get_xact_tuples_inserted($1)",
        )
        .bind(sqlx::postgres::types::Oid(table.oid))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        work.push(Work {
            read,
            updated_or_deleted,
            inserted,
        });
    }
    work
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Commit,
    Rollback,
}

/// What applying `sql` did.
struct Applied {
    findings: Vec<Finding>,
    /// It ran on its own, outside a transaction (a CONCURRENTLY command).
    outside_transaction: bool,
}

/// Applies one migration to the seeded database as sqlx would, and reports
/// what it did to the big tables. `End::Rollback` undoes it (for the
/// negative tests; a migration that must run outside a transaction is
/// always committed).
async fn apply_checked(conn: &mut PgConnection, sql: &str, no_tx: bool, end: End) -> anyhow::Result<Applied> {
    let tables = big_tables(conn).await;
    let files_before = files_of(conn, &tables).await;

    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let before = work_so_far(conn, &tables).await;
    if let Err(e) = sqlx::raw_sql(sql).execute(&mut *conn).await {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        let refused_in_transaction = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code == "25001");
        if !(no_tx && refused_in_transaction) {
            return Err(e.into());
        }
        sqlx::raw_sql(sql).execute(&mut *conn).await?;
        let files_after = files_of(conn, &tables).await;
        return Ok(Applied {
            findings: rewrites(&files_before, &files_after),
            outside_transaction: true,
        });
    }
    let after = work_so_far(conn, &tables).await;
    let files_after = files_of(conn, &tables).await;
    let mut findings = rewrites(&files_before, &files_after);

    let work: Vec<Work> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Work {
            read: a.read - b.read,
            updated_or_deleted: a.updated_or_deleted - b.updated_or_deleted,
            inserted: a.inserted - b.inserted,
        })
        .collect();
    let share = |n: i64, table: &BigTable| n as f64 / table.rows as f64;
    // Tables of which the migration read or wrote a large share.
    let worked_through: Vec<String> = tables
        .iter()
        .zip(&work)
        .filter(|(t, w)| share(w.read.max(w.updated_or_deleted + w.inserted), t) >= LARGE_SHARE)
        .map(|(t, w)| {
            format!(
                "{}: read {} updated/deleted {} inserted {} of {} rows",
                t.name, w.read, w.updated_or_deleted, w.inserted, t.rows
            )
        })
        .collect();
    for (table, w) in tables.iter().zip(&work) {
        if share(w.updated_or_deleted, table) >= LARGE_SHARE {
            findings.push(Finding {
                table: table.name.clone(),
                offence: Offence::MassWrite,
                detail: format!(
                    "updated or deleted {} of its {} rows",
                    w.updated_or_deleted, table.rows
                ),
            });
        }
        let locks: Vec<String> = sqlx::query_scalar(
            "SELECT mode FROM pg_locks
              WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted AND relation = $1",
        )
        .bind(sqlx::postgres::types::Oid(table.oid))
        .fetch_all(&mut *conn)
        .await?;
        let blocking: Vec<&String> = locks
            .iter()
            .filter(|m| BLOCKS_WRITES.contains(&m.as_str()))
            .collect();
        if !blocking.is_empty() && !worked_through.is_empty() {
            findings.push(Finding {
                table: table.name.clone(),
                offence: Offence::LockedScan,
                detail: format!("holds {blocking:?} while it worked through {worked_through:?}"),
            });
        }
    }
    let end_sql = match end {
        End::Commit => "COMMIT",
        End::Rollback => "ROLLBACK",
    };
    sqlx::raw_sql(end_sql).execute(&mut *conn).await?;
    Ok(Applied {
        findings,
        outside_transaction: false,
    })
}

/// Seeded tables whose file, or one of whose indexes' file, was replaced.
fn rewrites(before: &BTreeMap<u32, RelationFile>, after: &BTreeMap<u32, RelationFile>) -> Vec<Finding> {
    let mut rewritten: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (oid, old) in before {
        // A dropped index is no rewrite; a new one is not in `before`.
        if let Some(new) = after.get(oid)
            && new.relfilenode != old.relfilenode
        {
            rewritten.entry(&old.table).or_default().push(&old.name);
        }
    }
    rewritten
        .into_iter()
        .map(|(table, relations)| Finding {
            table: table.to_owned(),
            offence: Offence::Rewrite,
            detail: format!("new relfilenode for {relations:?}"),
        })
        .collect()
}

#[tokio::test]
async fn every_migration_applies_to_a_seeded_schema_without_rewriting_or_long_locking_a_big_table() {
    let started = std::time::Instant::now();
    let url = fresh_database().await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let mut found: Vec<(i64, String, Finding)> = Vec::new();
    let mut seeded: BTreeSet<&str> = BTreeSet::new();
    for migration in migration_files() {
        let applied = apply_checked(&mut conn, &migration.sql, migration.no_tx, End::Commit)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", migration.name));
        found.extend(
            applied
                .findings
                .into_iter()
                .map(|f| (migration.version, migration.name.clone(), f)),
        );
        let report = seed_empty_tables(&mut conn, SCALE, HASH).await.unwrap();
        seeded.extend(report.rows.iter().map(|(t, _)| *t));
    }
    // Every big table was there, with rows, for the migrations after it.
    assert_eq!(
        seeded,
        seeded_tables().into_iter().collect::<BTreeSet<_>>(),
        "tables never seeded"
    );

    let frozen = |version: i64, f: &Finding| {
        FROZEN
            .iter()
            .any(|(v, t, o, _)| *v == version && *t == f.table && *o == f.offence)
    };
    for (_, name, f) in &found {
        eprintln!("{name}: {:?} of {}: {}", f.offence, f.table, f.detail);
    }
    let unexpected: Vec<String> = found
        .iter()
        .filter(|(v, _, f)| !frozen(*v, f))
        .map(|(_, name, f)| format!("{name}: {:?} of {}: {}", f.offence, f.table, f.detail))
        .collect();
    let stale: Vec<String> = FROZEN
        .iter()
        .filter(|(v, t, o, _)| {
            !found
                .iter()
                .any(|(fv, _, f)| fv == v && f.table == *t && f.offence == *o)
        })
        .map(|(v, t, o, why)| format!("{v} {o:?} of {t} ({why})"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "migrations that rewrite or long-lock a big table (see the README's design section on \
         migrations):\n{}",
        unexpected.join("\n")
    );
    assert!(
        stale.is_empty(),
        "frozen offenders that no longer offend; remove them from FROZEN:\n{}",
        stale.join("\n")
    );
    eprintln!(
        "checked {} migrations in {:?}",
        migration_files().len(),
        started.elapsed()
    );
}

/// A database at the current schema with the seed, for the negative tests.
async fn seeded_database() -> PgConnection {
    let url = fresh_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    authd::db::MIGRATOR.run(&pool).await.unwrap();
    pool.close().await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    seed(&mut conn, SCALE, HASH).await.unwrap();
    conn
}

async fn offences(conn: &mut PgConnection, sql: &str) -> BTreeSet<(String, Offence)> {
    let no_tx = sql.starts_with("-- no-transaction");
    let applied = apply_checked(conn, sql, no_tx, End::Rollback)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert!(!applied.outside_transaction, "{sql}");
    applied
        .findings
        .into_iter()
        .map(|f| (f.table, f.offence))
        .collect()
}

fn only(table: &str, offences: &[Offence]) -> BTreeSet<(String, Offence)> {
    offences.iter().map(|o| (table.to_owned(), *o)).collect()
}

#[tokio::test]
async fn the_check_catches_rewrites_mass_updates_and_locked_scans_and_passes_safe_changes() {
    let mut conn = seeded_database().await;

    // Rewrites: a type change that must convert every value, a volatile default.
    assert_eq!(
        offences(
            &mut conn,
            "ALTER TABLE sessions ALTER COLUMN ip_address TYPE varchar(64)"
        )
        .await,
        only("sessions", &[Offence::Rewrite, Offence::LockedScan])
    );
    assert_eq!(
        offences(&mut conn, "ALTER TABLE users ADD COLUMN x int DEFAULT random()").await,
        only("users", &[Offence::Rewrite, Offence::LockedScan])
    );
    // A rewrite in place.
    assert_eq!(
        offences(&mut conn, "UPDATE sessions SET user_agent = NULL").await,
        only("sessions", &[Offence::MassWrite])
    );
    // Writers wait for a whole index build, or a validating scan.
    assert_eq!(
        offences(
            &mut conn,
            "CREATE INDEX sessions_created_at_idx ON sessions (created_at)"
        )
        .await,
        only("sessions", &[Offence::LockedScan])
    );
    assert_eq!(
        offences(
            &mut conn,
            "ALTER TABLE refresh_tokens ADD CONSTRAINT issued_check CHECK (issued_at > '2000-01-01')"
        )
        .await,
        only("refresh_tokens", &[Offence::LockedScan])
    );
    // Marked no-transaction, but nothing makes it concurrent: checked all the same.
    assert_eq!(
        offences(
            &mut conn,
            "-- no-transaction\nCREATE INDEX sessions_created_at_idx ON sessions (created_at);"
        )
        .await,
        only("sessions", &[Offence::LockedScan])
    );

    // Metadata only: a constant default, a nullable column, a NOT VALID
    // constraint, dropping an index, a small update through an index.
    for safe in [
        "ALTER TABLE users ADD COLUMN x int NOT NULL DEFAULT 0",
        "ALTER TABLE sessions ADD COLUMN device text",
        "ALTER TABLE refresh_tokens ADD CONSTRAINT issued_check CHECK (issued_at > '2000-01-01') NOT VALID",
        "DROP INDEX email_outbox_user_id_idx",
        "UPDATE users SET full_name = 'x' WHERE id = md5('user1')::uuid",
    ] {
        assert_eq!(offences(&mut conn, safe).await, BTreeSet::new(), "{safe}");
    }
    // A constraint added NOT VALID, then validated by a later migration:
    // the validating scan holds a lock writers pass.
    let not_valid =
        "ALTER TABLE sessions ADD CONSTRAINT agent_check CHECK (length(user_agent) < 300) NOT VALID";
    let added = apply_checked(&mut conn, not_valid, false, End::Commit)
        .await
        .unwrap();
    assert!(added.findings.is_empty(), "{:?}", added.findings);
    assert_eq!(
        offences(&mut conn, "ALTER TABLE sessions VALIDATE CONSTRAINT agent_check").await,
        BTreeSet::new()
    );

    // The concurrent form runs outside a transaction, as sqlx runs it.
    let concurrent =
        "-- no-transaction\nCREATE INDEX CONCURRENTLY sessions_created_at_idx ON sessions (created_at);";
    let applied = apply_checked(&mut conn, concurrent, true, End::Commit)
        .await
        .unwrap();
    assert!(applied.outside_transaction);
    assert!(applied.findings.is_empty(), "{:?}", applied.findings);
    let built: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'sessions_created_at_idx'::regclass",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(built);
}
