//! `authd service-account …`: the accounts other services call authd with,
//! and their keys. A key is printed once, when it is made; the database
//! keeps only its SHA-256.

use std::io::Write as _;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cli::CommandDatabase;
use crate::config::Config;
use crate::crypto::opaque::{NewToken, TokenKind};
use crate::db::service_accounts::{self as accounts, AccountSummary, KeyAdded, KeySummary};
use crate::domain::{Scope, ServiceAccountName};

const AUDIT: &str = "authd::audit";

#[derive(Debug, Subcommand)]
pub enum ServiceAccountCommand {
    /// Create an account with a key, or add a key to an account with the
    /// same scopes (rotation); prints the key once, alone on stdout
    Create {
        /// 1 to 63 of a-z 0-9 . _ -, starting with a letter or digit
        #[arg(value_parser = parse_name)]
        name: ServiceAccountName,
        /// users.read, users.write, tokens.introspect, revocations.watch,
        /// tokens.exchange or users.impersonate;
        /// repeat for several
        #[arg(long = "scope", value_name = "SCOPE", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
    },
    /// List accounts, their scopes and keys (never key material)
    List,
    /// Delete an account and all its keys, or with --key-id one key
    Revoke {
        #[arg(value_parser = parse_name)]
        name: ServiceAccountName,
        /// The key to delete, as `list` shows it
        #[arg(long, value_name = "UUID")]
        key_id: Option<Uuid>,
    },
}

fn parse_name(input: &str) -> Result<ServiceAccountName, String> {
    ServiceAccountName::parse(input).map_err(|e| format!("a service account name {e}"))
}

fn parse_scope(input: &str) -> Result<Scope, String> {
    Scope::parse(input).map_err(|e| format!("unknown scope, {e}"))
}

/// Runs `command` on the migrated database, then releases it (stopping the
/// development cluster if this command started it).
pub async fn run(config: &Config, command: ServiceAccountCommand) -> anyhow::Result<()> {
    let database = CommandDatabase::open(config).await?;
    let result = match command {
        ServiceAccountCommand::Create { name, scopes } => create(&database.pool, &name, &scopes).await,
        ServiceAccountCommand::List => list(&database.pool).await,
        ServiceAccountCommand::Revoke { name, key_id: None } => revoke(&database.pool, &name).await,
        ServiceAccountCommand::Revoke {
            name,
            key_id: Some(key_id),
        } => revoke_key(&database.pool, &name, key_id).await,
    };
    database.close().await;
    result
}

async fn create(db: &PgPool, name: &ServiceAccountName, scopes: &[Scope]) -> anyhow::Result<()> {
    let scopes = accounts::scope_set(&scopes.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>());
    let key = NewToken::generate(TokenKind::ServiceKey).map_err(|e| anyhow!("generating a key: {e}"))?;
    let name = name.as_str();
    let added = accounts::add_key(db, name, &scopes, &key.hash, Utc::now()).await?;
    let (key_id, done) = record_added(name, &scopes.join(","), added)?;
    // The key alone on stdout, so that `KEY=$(authd service-account create …)` works.
    print_stdout(&format!("{}\n", key.expose())).with_context(|| {
        format!(
            "printing the key failed; it is stored, so revoke it: \
             authd service-account revoke {name} --key-id {key_id}"
        )
    })?;
    eprintln!("{done}; this key is shown once");
    Ok(())
}

/// Audits what `add_key` did and says it in words; refuses a scope change.
fn record_added(name: &str, scopes: &str, added: KeyAdded) -> anyhow::Result<(Uuid, String)> {
    match added {
        KeyAdded::NewAccount { account_id, key_id } => {
            tracing::info!(target: AUDIT, action = "service_account.create", service_account = %name,
                %account_id, %key_id, %scopes, "service account created");
            let done = format!("created service account {name} with scopes {scopes}; key id {key_id}");
            Ok((key_id, done))
        }
        KeyAdded::Rotation { account_id, key_id } => {
            tracing::info!(target: AUDIT, action = "service_account.rotate", service_account = %name,
                %account_id, %key_id, %scopes, "service account key added");
            let done = format!(
                "added a key to service account {name} (scopes {scopes}); key id {key_id}; \
                 its older keys work until revoked with --key-id"
            );
            Ok((key_id, done))
        }
        KeyAdded::ScopesDiffer { existing } => bail!(
            "service account {name} exists with scopes {}; to change its scopes, revoke it \
             (authd service-account revoke {name}) and create it again",
            existing.join(",")
        ),
    }
}

async fn list(db: &PgPool) -> anyhow::Result<()> {
    let accounts = accounts::list(db).await?;
    if accounts.is_empty() {
        eprintln!("no service accounts");
        return Ok(());
    }
    match print_stdout(&render_table(&accounts)) {
        // `list | head -2` is done reading, which is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("printing the list"),
    }
}

/// Unlike `print!`, which panics when stdout is closed, reports it.
fn print_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

async fn revoke(db: &PgPool, name: &ServiceAccountName) -> anyhow::Result<()> {
    let name = name.as_str();
    if !accounts::delete_account(db, name).await? {
        bail!("no service account named {name}");
    }
    tracing::info!(target: AUDIT, action = "service_account.revoke", service_account = %name,
        "service account revoked");
    eprintln!("revoked service account {name} and all its keys");
    Ok(())
}

async fn revoke_key(db: &PgPool, name: &ServiceAccountName, key_id: Uuid) -> anyhow::Result<()> {
    let name = name.as_str();
    if !accounts::delete_key(db, name, key_id).await? {
        if accounts::exists(db, name).await? {
            bail!("service account {name} has no key {key_id}");
        }
        bail!("no service account named {name}");
    }
    tracing::info!(target: AUDIT, action = "service_account.revoke_key", service_account = %name,
        %key_id, "service account key revoked");
    eprintln!("revoked key {key_id} of service account {name}");
    Ok(())
}

/// One line per key (an account without keys gets one line too), columns
/// padded to their widest cell so the output reads as a table and splits on
/// whitespace.
fn render_table(accounts: &[AccountSummary]) -> String {
    let mut rows =
        vec![["NAME", "SCOPES", "CREATED", "KEY ID", "KEY CREATED", "LAST USED"].map(str::to_owned)];
    for account in accounts {
        let mut keys: Vec<[String; 3]> = account.keys.iter().map(key_cells).collect();
        if keys.is_empty() {
            keys.push(["-", "-", "-"].map(str::to_owned));
        }
        for [id, created, last_used] in keys {
            let name = account.name.clone();
            let scopes = account.scopes.join(",");
            rows.push([
                name,
                scopes,
                timestamp(account.created_at),
                id,
                created,
                last_used,
            ]);
        }
    }
    aligned(&rows)
}

fn key_cells(key: &KeySummary) -> [String; 3] {
    let last_used = key.last_used_at.map_or_else(|| "never".to_owned(), timestamp);
    [key.id.to_string(), timestamp(key.created_at), last_used]
}

fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    #[test]
    fn the_table_has_a_line_per_key_and_one_for_an_account_without_keys() {
        let at = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        let key = KeySummary {
            id: Uuid::nil(),
            created_at: at,
            last_used_at: None,
        };
        let used = KeySummary {
            last_used_at: Some(at),
            ..key.clone()
        };
        let accounts = [
            AccountSummary {
                name: "billing".into(),
                scopes: vec!["users.read".into()],
                created_at: at,
                keys: vec![key, used],
            },
            AccountSummary {
                name: "x".into(),
                scopes: vec!["users.read".into(), "users.write".into()],
                created_at: at,
                keys: vec![],
            },
        ];
        let table = render_table(&accounts);
        let fields: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        let ts = "2026-11-27T10:00:00Z";
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_eq!(fields.len(), 4, "{table}");
        assert_eq!(fields[1], ["billing", "users.read", ts, nil, ts, "never"]);
        assert_eq!(fields[2], ["billing", "users.read", ts, nil, ts, ts]);
        assert_eq!(fields[3], ["x", "users.read,users.write", ts, "-", "-", "-"]);
        let header = table.lines().next().unwrap();
        let second = table.lines().nth(1).unwrap();
        assert_eq!(header.find("KEY ID"), second.find(nil), "{table}");
    }
}
