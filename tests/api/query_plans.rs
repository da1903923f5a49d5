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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use authd::crypto::opaque::{NewToken, TokenKind};
use authd::local_pg::{Durability, LocalPostgres};
use authd::pb::FILE_DESCRIPTOR_SET;
use authd::pb::auth::v1 as pb;
use prost_reflect::DescriptorPool;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgErrorPosition};
use sqlx::{Connection as _, PgConnection, PgPool, Row as _};
use tonic::Code;

use crate::helpers::*;
use crate::lifecycle::{CHANGE_SUBJECT, RESET_URL, VERIFY_SUBJECT, VERIFY_URL, link_token, nth_mail};
use crate::scale_seed::password_hash_of;
use crate::seed::{Scale, seed, seeded_email, seeded_tables};
use crate::smtp::SmtpServer;

/// 100 000 sessions: the planner prefers an index for every lookup (the
/// test checks it), and the seed takes a few seconds.
const SCALE: Scale = Scale::accounts(20_000);
/// The password of `password_hash_of`'s hash, which the seed's accounts share.
const SEEDED_PASSWORD: &str = "seeded accounts share this passphrase";
/// The role the test itself connects as: pg_stat_statements records what
/// `authd` (the server's role) runs, and not this role's setup.
const TEST_ROLE: &str = "plan_check";
/// The server's role on the test clusters.
const SERVER_ROLE: &str = "authd";

/// Whole reads of big tables that are accepted: a part of the statement,
/// the table, and why. The test fails on an entry that no longer matches.
const WHOLE_READS_ACCEPTED: &[(&str, &str, &str)] = &[];

/// Indexes no plan uses that stay, with why. The unique ones (keys) and
/// those whose leading column is a foreign key (a deletion's cascade finds
/// the referencing rows with it) need no entry.
const UNUSED_INDEXES_KEPT: &[(&str, &str)] = &[];

/// A cluster of the test's own with pg_stat_statements loaded, and
/// autovacuum off so that the planner's statistics stay those of the seed
/// while the server deletes and writes.
async fn recording_cluster() -> LocalPostgres {
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

fn as_tester(pg: &LocalPostgres, database: &str) -> PgConnectOptions {
    pg.connect_options(database).username(TEST_ROLE)
}

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

/// At this size a lookup by key is an index scan in every big table, and
/// the walk reports a condition no index serves, or a walk along an index
/// from its start.
async fn planner_prefers_indexes_at_this_size(db: &PgPool) {
    let mut conn = db.acquire().await.unwrap();
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let reads = async |conn: &mut PgConnection, sql: &str| {
        let plan = generic_plan(conn, sql).await.unwrap();
        let mut found = Found::default();
        walk(&plan, false, &BTreeSet::new(), &mut found);
        (found, plan)
    };
    for table in seeded_tables() {
        let key: String = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = $1::regclass AND i.indisprimary",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let (found, plan) = reads(&mut conn, &format!("SELECT * FROM {table} WHERE {key} = $1")).await;
        assert!(
            found.whole_reads.is_empty() && !found.indexes.is_empty(),
            "{table} by {key}: {plan}"
        );
    }
    let (found, plan) = reads(&mut conn, "SELECT id FROM sessions WHERE user_agent = $1").await;
    assert_eq!(
        found.whole_reads,
        [("sessions".to_owned(), "Seq Scan".to_owned())],
        "{plan}"
    );
    // A keyset page whose condition is ORed with "first page": no index
    // condition, a walk from the start of the index (ListUsers did this).
    let (found, plan) = reads(
        &mut conn,
        "SELECT * FROM users WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1, $2)
          ORDER BY created_at, id LIMIT $3",
    )
    .await;
    assert_eq!(
        found.whole_reads,
        [(
            "users".to_owned(),
            "Index Scan along users_created_at_id_idx, filtered until the limit".to_owned()
        )],
        "{plan}"
    );
    let (found, plan) = reads(
        &mut conn,
        "SELECT * FROM users WHERE (created_at, id) > ($1, $2) ORDER BY created_at, id LIMIT $3",
    )
    .await;
    assert!(found.whole_reads.is_empty(), "{plan}");
}

/// What one plan reads.
#[derive(Debug, Default)]
struct Found {
    /// Relations read whole, and how: a sequential scan, or a walk along an
    /// index with no condition to start from (only a filter to stop at, or
    /// no end at all).
    whole_reads: Vec<(String, String)>,
    indexes: BTreeSet<String>,
}

/// Walks a plan; `partial` are the partial indexes (small by design: a
/// walk along one is fine).
fn walk(node: &Value, under_limit: bool, partial: &BTreeSet<String>, found: &mut Found) {
    match node {
        Value::Array(items) => items.iter().for_each(|i| walk(i, under_limit, partial, found)),
        Value::Object(fields) => {
            let node_type = fields.get("Node Type").and_then(Value::as_str).unwrap_or("");
            let relation = fields.get("Relation Name").and_then(Value::as_str).unwrap_or("");
            if node_type == "Seq Scan" {
                found
                    .whole_reads
                    .push((relation.to_owned(), "Seq Scan".to_owned()));
            }
            if let Some(index) = fields.get("Index Name").and_then(Value::as_str) {
                found.indexes.insert(index.to_owned());
                // `min`/`max` get an `x IS NOT NULL` condition, which starts
                // nowhere in particular.
                let starts_somewhere = fields
                    .get("Index Cond")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.contains(" AND ") || !c.ends_with("IS NOT NULL)"));
                let filtered = fields.contains_key("Filter");
                if matches!(node_type, "Index Scan" | "Index Only Scan")
                    && !partial.contains(index)
                    && !starts_somewhere
                    && (filtered || !under_limit)
                {
                    let how = if filtered {
                        "filtered until the limit"
                    } else {
                        "to the end"
                    };
                    found
                        .whole_reads
                        .push((relation.to_owned(), format!("{node_type} along {index}, {how}")));
                }
            }
            if let Some(Value::Array(arbiters)) = fields.get("Conflict Arbiter Indexes") {
                found
                    .indexes
                    .extend(arbiters.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            let under_limit = under_limit || node_type == "Limit";
            for key in ["Plan", "Plans"] {
                if let Some(child) = fields.get(key) {
                    walk(child, under_limit, partial, found);
                }
            }
        }
        _ => {}
    }
}

/// Types tried, in this order, for a parameter PostgreSQL cannot infer
/// (mostly constants that pg_stat_statements turned into parameters).
const GUESSES: &[&str] = &[
    "integer",
    "text",
    "bigint",
    "boolean",
    "timestamptz",
    "interval",
    "uuid",
    "bytea",
    "double precision",
    "uuid[]",
    "text[]",
];

/// The generic plan of `statement` (JSON), as a prepared statement of the
/// server runs it once generic plans take over.
async fn generic_plan(conn: &mut PgConnection, statement: &str) -> Result<Value, String> {
    let mut sql = renumber_parameters(&field_of_extract(statement));
    let mut count = parameters(&sql).iter().map(|(_, n)| *n).max().unwrap_or(0);
    // Per parameter: None lets PostgreSQL infer it, Some(i) is GUESSES[i].
    let mut types: Vec<Option<usize>> = vec![None; count];
    for _ in 0..500 {
        let declared: Vec<&str> = types
            .iter()
            .map(|t| t.map_or("unknown", |i| GUESSES[i]))
            .collect();
        let prefix = if count == 0 {
            "PREPARE q AS ".to_owned()
        } else {
            format!("PREPARE q ({}) AS ", declared.join(", "))
        };
        let error = match sqlx::raw_sql(&format!("{prefix}{sql}")).execute(&mut *conn).await {
            Ok(_) => return explain_prepared(conn, count).await,
            Err(e) => e,
        };
        let Some(db_error) = error
            .as_database_error()
            .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
        else {
            return Err(error.to_string());
        };
        let failed = || format!("{} ({:?})", db_error.message(), declared);
        let at = match db_error.position() {
            Some(PgErrorPosition::Original(p)) => p.checked_sub(prefix.chars().count() + 1),
            _ => None,
        };
        match (db_error.code(), at) {
            // A PL/pgSQL variable (`event_id`) or row (`NEW.id`): a parameter.
            ("42703" | "42P01", Some(at)) => {
                count += 1;
                sql = replace_reference(&sql, at, &format!("${count}")).ok_or_else(failed)?;
                types.push(None);
            }
            // "could not determine data type of parameter $n"
            ("42P18", _) => {
                let n: usize = db_error
                    .message()
                    .rsplit('$')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(failed)?;
                if !next_guess(&mut types, &[n - 1]) {
                    return Err(failed());
                }
            }
            // A type that does not fit where it is used (an operator or
            // function between unknowns, a guess that was wrong): change
            // the parameters nearest to the error.
            ("42804" | "42883" | "42725" | "42846" | "42P08" | "22P02", Some(at)) => {
                if !next_guess(&mut types, &nearest_parameters(&sql, at)) {
                    return Err(failed());
                }
            }
            _ => return Err(failed()),
        }
    }
    Err("no parameter types fit".into())
}

async fn explain_prepared(conn: &mut PgConnection, count: usize) -> Result<Value, String> {
    let arguments = if count == 0 {
        String::new()
    } else {
        format!("({})", vec!["NULL"; count].join(", "))
    };
    let explained = sqlx::raw_sql(&format!("EXPLAIN (FORMAT JSON) EXECUTE q{arguments}"))
        .fetch_one(&mut *conn)
        .await;
    sqlx::raw_sql("DEALLOCATE q")
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    let row = explained.map_err(|e| e.to_string())?;
    let text: String = row.try_get_unchecked(0).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Advances the types of `candidates` like an odometer whose wheels read
/// "inferred" (None), then each guess; false when every combination was
/// tried.
fn next_guess(types: &mut [Option<usize>], candidates: &[usize]) -> bool {
    for &i in candidates {
        match types[i] {
            None => types[i] = Some(0),
            Some(g) if g + 1 < GUESSES.len() => types[i] = Some(g + 1),
            Some(_) => {
                types[i] = None;
                continue;
            }
        }
        return true;
    }
    false
}

/// The (0-based) parameters an error at character `at` is most likely
/// about: those of the expression that starts there (a function's
/// arguments, an operator's right operand), then the one just before it (an
/// operator's left operand); two at most.
fn nearest_parameters(sql: &str, at: usize) -> Vec<usize> {
    let at = sql.char_indices().nth(at).map_or(sql.len(), |(b, _)| b);
    let found = parameters(sql);
    // Where the expression that starts at `at` ends: a comma or closing
    // parenthesis outside its own parentheses (literals do not matter here).
    let bytes = sql.as_bytes();
    let mut depth = 0i32;
    let mut end = sql.len();
    for (i, b) in bytes.iter().enumerate().skip(at) {
        match b {
            b'(' => depth += 1,
            b')' if depth == 0 => {
                end = i;
                break;
            }
            b')' => depth -= 1,
            b',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let mut nearest: Vec<usize> = Vec::new();
    let after = found
        .iter()
        .filter(|(range, _)| range.start >= at && range.start < end);
    let before = found.iter().rev().find(|(range, _)| range.end <= at);
    for (_, n) in after.chain(before) {
        if !nearest.contains(&(n - 1)) {
            nearest.push(n - 1);
        }
    }
    nearest.truncate(2);
    nearest
}

/// pg_stat_statements turns the field of `extract(epoch FROM …)` into a
/// parameter, which the grammar does not take there; any field plans alike.
fn field_of_extract(sql: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find("extract(") {
        let open = at + found + "extract(".len();
        out.push_str(&sql[at..open]);
        at = open;
        let rest = lower[open..].trim_start();
        let field_start = lower.len() - rest.len();
        if let Some(digits) = rest.strip_prefix('$') {
            let len = digits.bytes().take_while(u8::is_ascii_digit).count();
            if len > 0 && digits[len..].trim_start().starts_with("from") {
                out.push_str("epoch");
                at = field_start + 1 + len;
            }
        }
    }
    out.push_str(&sql[at..]);
    out
}

/// Byte ranges of the `$n` parameters outside literals, quoted names and
/// comments, with their numbers.
fn parameters(sql: &str) -> Vec<(std::ops::Range<usize>, usize)> {
    let bytes = sql.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    let skip_to = |from: usize, end: &str| sql[from..].find(end).map_or(sql.len(), |p| from + p + end.len());
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                // '' inside a literal is a quote: two literals in a row read the same.
                i = skip_to(i + 1, "'");
            }
            b'"' => i = skip_to(i + 1, "\""),
            b'-' if bytes.get(i + 1) == Some(&b'-') => i = skip_to(i, "\n"),
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_to(i + 2, "*/"),
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = (i + 1..bytes.len())
                    .find(|&j| !bytes[j].is_ascii_digit())
                    .unwrap_or(bytes.len());
                found.push((i..end, sql[i + 1..end].parse().unwrap()));
                i = end;
            }
            b'$' => {
                // A dollar quote $tag$ … $tag$ (not inside a word).
                let word_before = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                let tag_end = (i + 1..bytes.len())
                    .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
                    .filter(|&j| bytes[j] == b'$');
                match tag_end {
                    Some(end) if !word_before => {
                        let tag = &sql[i..=end];
                        i = skip_to(end + 1, tag);
                    }
                    _ => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// The parameters renumbered 1, 2, … in the order of their numbers:
/// pg_stat_statements numbers the constants it replaces by their place in
/// a function's whole body, leaving gaps PREPARE cannot type.
fn renumber_parameters(sql: &str) -> String {
    let found = parameters(sql);
    let numbers: BTreeSet<usize> = found.iter().map(|(_, n)| *n).collect();
    let new_number: BTreeMap<usize, usize> = numbers.into_iter().zip(1..).collect();
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (range, n) in found {
        out.push_str(&sql[at..range.start]);
        out.push_str(&format!("${}", new_number[&n]));
        at = range.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// `sql` with the (possibly qualified) name at character `at` replaced.
fn replace_reference(sql: &str, at: usize, with: &str) -> Option<String> {
    let start = sql.char_indices().nth(at).map(|(b, _)| b)?;
    let bytes = sql.as_bytes();
    let mut end = start;
    loop {
        if bytes.get(end) == Some(&b'"') {
            end = end + 1 + sql[end + 1..].find('"')? + 1;
        } else {
            let word = (end..bytes.len())
                .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
                .unwrap_or(bytes.len());
            if word == end {
                return None;
            }
            end = word;
        }
        if bytes.get(end) == Some(&b'.')
            && bytes
                .get(end + 1)
                .is_some_and(|b| *b == b'"' || b.is_ascii_alphabetic())
        {
            end += 1;
        } else {
            break;
        }
    }
    Some(format!("{}{with}{}", &sql[..start], &sql[end..]))
}

#[derive(Debug)]
struct Index {
    name: String,
    table: String,
    unique: bool,
    /// Its leading column is a foreign key's.
    leads_with_foreign_key: bool,
    /// It covers the rows of a condition only.
    partial: bool,
}

async fn indexes_of_the_schema(db: &PgPool) -> Vec<Index> {
    let rows: Vec<(String, String, bool, bool, bool)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, i.indrelid::regclass::text, i.indisunique,
                EXISTS (SELECT 1 FROM pg_constraint f
                         WHERE f.contype = 'f' AND f.conrelid = i.indrelid
                           AND f.conkey[1] = i.indkey[0]),
                i.indpred IS NOT NULL
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE c.relnamespace = 'public'::regnamespace
          ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(name, table, unique, leads_with_foreign_key, partial)| Index {
            name,
            table,
            unique,
            leads_with_foreign_key,
            partial,
        })
        .collect()
}

/// Methods with at least one finished call, from the server's own count.
fn methods_called(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("authd_rpc_calls_total{method=\""))
        .filter_map(|rest| rest.split('"').next())
        .filter(|method| method.starts_with("/auth."))
        .map(str::to_owned)
        .collect()
}

/// `/package.Service/Method` of every method of authd's services.
fn methods_of_the_services() -> BTreeSet<String> {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let methods: BTreeSet<String> = pool
        .services()
        .filter(|s| s.package_name().starts_with("auth."))
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("/{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(methods.len() > 20, "{methods:?}");
    methods
}

/// Waits until the server's background work has run at least once: mail
/// delivered, reset requests resolved, a clean-up pass finished.
async fn background_work_done(db: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pending_mail, requests, cleaned): (i64, i64, bool) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM email_outbox WHERE sent_at IS NULL AND discarded_at IS NULL),
                    (SELECT count(*) FROM password_reset_requests),
                    EXISTS (SELECT 1 FROM maintenance_runs WHERE finished_at IS NOT NULL)",
        )
        .fetch_one(db)
        .await
        .unwrap();
        if pending_mail == 0 && requests == 0 && cleaned {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "background work not done: {pending_mail} mails pending, {requests} reset requests, \
             clean-up finished: {cleaned}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Service keys with every scope, stored the way the CLI stores them (by
/// the test's role, so that the CLI's statements are not the server's).
async fn admin_key(db: &PgPool) -> String {
    let key = NewToken::generate(TokenKind::ServiceKey).unwrap();
    let scopes: Vec<String> = [
        "revocations.watch",
        "tokens.introspect",
        "users.read",
        "users.write",
    ]
    .map(str::to_owned)
    .to_vec();
    authd::db::service_accounts::add_key(db, "plans", &scopes, &key.hash, chrono::Utc::now())
        .await
        .unwrap();
    key.expose().to_owned()
}

fn unknown_token(kind: TokenKind) -> String {
    NewToken::generate(kind).unwrap().expose().to_owned()
}

/// Every RPC of both services: the success path and the main failures.
async fn drive_every_rpc(app: &TestApp, smtp: &SmtpServer, tester: &PgPool) {
    let key = admin_key(tester).await;
    let mut auth = app.client.clone();
    let mut admin = app.admin();

    // Register: a new account, a taken address, a taken username.
    let ada_email = "ada@plans.example";
    let register = |email: &str, username: &str| pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        username: username.into(),
        ..Default::default()
    };
    let ada = auth
        .register(register(ada_email, "ada_plans"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_error(
        auth.register(register("ADA@plans.example", "")).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    assert_error(
        auth.register(register("bob@plans.example", "ADA_plans")).await,
        Code::AlreadyExists,
        "USERNAME_TAKEN",
    );
    let bob = app.register("bob@plans.example", PASSWORD).await;

    // Login: by address and by username, a seeded account (its hash is
    // upgraded), an unknown login, a wrong password until throttled, a
    // disabled account.
    let first = app.tokens_of(ada_email).await;
    let second = app.tokens_of("Ada_Plans").await;
    let seeded = app
        .login(&seeded_email(7), SEEDED_PASSWORD)
        .await
        .unwrap()
        .tokens
        .unwrap();
    let upgraded: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind(seeded_email(7))
        .fetch_one(tester)
        .await
        .unwrap();
    let costs = format!("m={},t={},", TEST_ARGON2.memory_kib, TEST_ARGON2.iterations);
    assert!(upgraded.contains(&costs), "not upgraded: {upgraded}");
    assert_error(
        app.login("nobody@plans.example", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let mut throttled = false;
    // Five free attempts, then waits of 1 s, 2 s…: generous for a slow machine.
    for _ in 0..12 {
        match app.login("bob@plans.example", "not the password at all").await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert_eq!(reason(&s), "THROTTLED");
                throttled = true;
                break;
            }
            other => assert_error(other, Code::Unauthenticated, "INVALID_CREDENTIALS"),
        };
    }
    assert!(throttled, "wrong passwords were never throttled");
    // Every thousandth seeded account is disabled.
    assert_error(
        app.login(&seeded_email(1000), SEEDED_PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );

    // Refresh: a rotation, a replay (ends the session), an unknown token.
    let refresh = |token: &str| pb::RefreshRequest {
        refresh_token: token.into(),
    };
    auth.refresh(refresh(&first.refresh_token)).await.unwrap();
    assert_error(
        auth.refresh(refresh(&first.refresh_token)).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    assert_error(
        auth.refresh(refresh(&unknown_token(TokenKind::Refresh))).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );
    auth.refresh(refresh(&seeded.refresh_token)).await.unwrap();

    // Logout, of a known and an unknown token.
    let logout = |token: &str| pb::LogoutRequest {
        refresh_token: token.into(),
    };
    auth.logout(logout(&second.refresh_token)).await.unwrap();
    assert_error(
        auth.logout(logout(&unknown_token(TokenKind::Refresh))).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_INVALID",
    );

    // GetMe of a live session and of one that ended; GetJwks; IntrospectToken.
    let live = app.tokens_of(ada_email).await;
    assert_eq!(app.get_me(&live.access_token).await.unwrap().id, ada.id);
    assert_error(
        app.get_me(&second.access_token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    auth.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    let introspect = |token: &str| {
        with_bearer(
            pb::IntrospectTokenRequest {
                access_token: token.into(),
            },
            &key,
        )
    };
    assert!(
        auth.introspect_token(introspect(&live.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    assert!(
        !auth
            .introspect_token(introspect(&first.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );

    // ChangePassword: a wrong current password, then a change.
    let change = |current: &str, new: &str| {
        with_bearer(
            pb::ChangePasswordRequest {
                current_password: current.into(),
                new_password: new.into(),
            },
            &live.access_token,
        )
    };
    assert_error(
        auth.change_password(change("wrong wrong wrong", "a new passphrase for ada"))
            .await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    let live = auth
        .change_password(change(PASSWORD, "a new passphrase for ada"))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let ada_password = "a new passphrase for ada";

    // SendVerificationEmail, VerifyEmail with its link and with a bad token.
    auth.send_verification_email(with_bearer(
        pb::SendVerificationEmailRequest {},
        &live.access_token,
    ))
    .await
    .unwrap();
    let link = link_token(&nth_mail(smtp, ada_email, VERIFY_SUBJECT, 2).await);
    let verify = |token: &str| pb::VerifyEmailRequest { token: token.into() };
    assert!(
        auth.verify_email(verify(&link))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email_verified
    );
    assert_error(
        auth.verify_email(verify(&unknown_token(TokenKind::EmailVerification)))
            .await,
        Code::Unauthenticated,
        "VERIFY_TOKEN_INVALID",
    );

    // UpdateMe: a change, and a username another account holds.
    let update = |user: pb::User, paths: &[&str]| {
        with_bearer(
            pb::UpdateMeRequest {
                user: Some(user),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            &live.access_token,
        )
    };
    let renamed = pb::User {
        full_name: "Ada Lovelace".into(),
        ..Default::default()
    };
    auth.update_me(update(renamed, &["full_name"])).await.unwrap();
    let taken = pb::User {
        username: "seed_2".into(),
        ..Default::default()
    };
    assert_error(
        auth.update_me(update(taken, &["username"])).await,
        Code::AlreadyExists,
        "USERNAME_TAKEN",
    );

    // ChangeEmail: a wrong password, then a move confirmed by its link.
    let new_email = "ada.lovelace@plans.example";
    let change_email = |password: &str| {
        with_bearer(
            pb::ChangeEmailRequest {
                new_email: new_email.into(),
                current_password: password.into(),
            },
            &live.access_token,
        )
    };
    assert_error(
        auth.change_email(change_email("wrong wrong wrong")).await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    auth.change_email(change_email(ada_password)).await.unwrap();
    let link = link_token(&nth_mail(smtp, new_email, CHANGE_SUBJECT, 1).await);
    assert_eq!(
        auth.verify_email(verify(&link))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email,
        new_email
    );

    // ForgotPassword for an account and for no account; ResetPassword with
    // the mailed token and with a bad one.
    let forgot = |email: &str| pb::ForgotPasswordRequest { email: email.into() };
    auth.forgot_password(forgot(new_email)).await.unwrap();
    auth.forgot_password(forgot("nobody@plans.example"))
        .await
        .unwrap();
    let reset_mail = nth_mail(smtp, new_email, "Reset your password", 1).await;
    let reset = |token: &str| pb::ResetPasswordRequest {
        token: token.into(),
        new_password: "yet another passphrase for ada".into(),
    };
    assert_error(
        auth.reset_password(reset(&unknown_token(TokenKind::PasswordReset)))
            .await,
        Code::Unauthenticated,
        "RESET_TOKEN_INVALID",
    );
    auth.reset_password(reset(&reset_mail.reset_token()))
        .await
        .unwrap();
    let ada_password = "yet another passphrase for ada";

    // Sessions: list, end one, end an unknown one, end the others.
    let current = app.login(new_email, ada_password).await.unwrap().tokens.unwrap();
    let other = app.login(new_email, ada_password).await.unwrap().tokens.unwrap();
    app.login(new_email, ada_password).await.unwrap();
    let sessions = auth
        .list_sessions(with_bearer(pb::ListSessionsRequest {}, &current.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    let revoke = |id: &str| {
        with_bearer(
            pb::RevokeSessionRequest {
                session_id: id.into(),
            },
            &current.access_token,
        )
    };
    let other_id = session_of(&other.access_token);
    auth.revoke_session(revoke(&other_id)).await.unwrap();
    assert_error(
        auth.revoke_session(revoke(&uuid::Uuid::new_v4().to_string()))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let ended = auth
        .revoke_other_sessions(with_bearer(
            pb::RevokeOtherSessionsRequest {},
            &current.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(ended, 1);

    // DeleteMe: a wrong password, then a seeded account with its history.
    let delete = |token: &str, password: &str| {
        with_bearer(
            pb::DeleteMeRequest {
                current_password: password.into(),
            },
            token,
        )
    };
    assert_error(
        auth.delete_me(delete(&current.access_token, "wrong wrong wrong"))
            .await,
        Code::InvalidArgument,
        "INVALID_CREDENTIALS",
    );
    let doomed = app
        .login(&seeded_email(11), SEEDED_PASSWORD)
        .await
        .unwrap()
        .tokens
        .unwrap();
    auth.delete_me(delete(&doomed.access_token, SEEDED_PASSWORD))
        .await
        .unwrap();

    // AdminService.
    macro_rules! as_service {
        ($message:expr) => {
            with_bearer($message, &key)
        };
    }
    let mut seeded_ids = BTreeMap::new();
    for n in [3, 10, 13] {
        // The seed's ids are md5('user' || n) as a UUID.
        let id: String = sqlx::query_scalar("SELECT md5('user' || $1)::uuid::text")
            .bind(n.to_string())
            .fetch_one(tester)
            .await
            .unwrap();
        seeded_ids.insert(n, id);
    }
    let seeded_id = |n: i64| seeded_ids[&n].clone();
    let user = admin
        .get_user(as_service!(pb::GetUserRequest {
            user_id: ada.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, new_email);
    assert_error(
        admin
            .get_user(as_service!(pb::GetUserRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let batch = admin
        .batch_get_users(as_service!(pb::BatchGetUsersRequest {
            user_ids: vec![
                ada.id.clone(),
                bob.id.clone(),
                seeded_id(3),
                uuid::Uuid::new_v4().to_string()
            ],
        }))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(batch.len(), 3);
    for lookup in [
        pb::LookupUserRequest {
            email: "SEED5@scale.example".into(),
            ..Default::default()
        },
        pb::LookupUserRequest {
            username: "seed_4".into(),
            ..Default::default()
        },
    ] {
        admin.lookup_user(as_service!(lookup)).await.unwrap();
    }
    assert_error(
        admin
            .lookup_user(as_service!(pb::LookupUserRequest {
                email: "nobody@plans.example".into(),
                ..Default::default()
            }))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let first_page = admin
        .list_users(as_service!(pb::ListUsersRequest {
            page_size: 20,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let second_page = admin
        .list_users(as_service!(pb::ListUsersRequest {
            page_size: 20,
            page_token: first_page.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_page.users.len(), 20);
    let target = seeded_id(13);
    let user_request = |id: &str| pb::DisableUserRequest { user_id: id.into() };
    assert!(
        admin
            .disable_user(as_service!(user_request(&target)))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .disabled
    );
    assert!(
        !admin
            .enable_user(as_service!(pb::EnableUserRequest {
                user_id: target.clone()
            }))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .disabled
    );
    admin
        .set_user_roles(as_service!(pb::SetUserRolesRequest {
            user_id: target.clone(),
            roles: vec!["billing.admin".into()],
        }))
        .await
        .unwrap();
    admin
        .revoke_user_sessions(as_service!(pb::RevokeUserSessionsRequest {
            user_id: seeded_id(10),
        }))
        .await
        .unwrap();
    assert_error(
        admin
            .revoke_user_sessions(as_service!(pb::RevokeUserSessionsRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
            }))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    // WatchRevocations from the present (a heartbeat) and from a cursor a
    // few events back (the events after it).
    let mut present = admin
        .watch_revocations(as_service!(pb::WatchRevocationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let head = present.message().await.unwrap().unwrap().event_id;
    let mut behind = admin
        .watch_revocations(as_service!(pb::WatchRevocationsRequest {
            after_event_id: head - 3,
            since: None,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // (Heartbeats skipped.)
    let mut events = Vec::new();
    while events.len() < 3 {
        let message = behind.message().await.unwrap().unwrap();
        if message.kind != pb::RevocationKind::Heartbeat as i32 {
            events.push(message.event_id);
        }
    }
    assert_eq!(events, [head - 2, head - 1, head]);
    // And from a time: the first event at or after it.
    let mut since = admin
        .watch_revocations(as_service!(pb::WatchRevocationsRequest {
            after_event_id: 0,
            since: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 600,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    since.message().await.unwrap().unwrap();
}
