//! Planning a recorded statement as the server's prepared statements run
//! it, and reading what a plan reads.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sqlx::postgres::{PgDatabaseError, PgErrorPosition};
use sqlx::{PgConnection, PgPool, Row as _};

use crate::seed::seeded_tables;

/// At this size a lookup by key is an index scan in every big table, and
/// the walk reports a condition no index serves, or a walk along an index
/// from its start.
pub(super) async fn planner_prefers_indexes_at_this_size(db: &PgPool) {
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
pub(super) struct Found {
    /// Relations read whole, and how: a sequential scan, or a walk along an
    /// index with no condition to start from (only a filter to stop at, or
    /// no end at all).
    pub(super) whole_reads: Vec<(String, String)>,
    pub(super) indexes: BTreeSet<String>,
}

/// Walks a plan; `partial` are the partial indexes (small by design: a
/// walk along one is fine).
pub(super) fn walk(node: &Value, under_limit: bool, partial: &BTreeSet<String>, found: &mut Found) {
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
pub(super) async fn generic_plan(conn: &mut PgConnection, statement: &str) -> Result<Value, String> {
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
