//! `authd data-keys …`: making data keys and moving stored secrets to the
//! first one, so an older key can be removed.
//!
//! Rotation: `generate` a key, put it first in `AUTHD_DATA_KEYS` (the old
//! ones after it), restart every replica, run `reseal`, then drop the old
//! key once `reseal` reports nothing left under it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cli::CommandDatabase;
use crate::config::Config;
use crate::crypto::data_keys::{self, DataKeyError, DataKeys};
use crate::db::sealed_secrets::{self as sealed, Resealed};

const AUDIT: &str = "authd::audit";

#[derive(Debug, Subcommand)]
pub enum DataKeysCommand {
    /// Write a new data key file (256 random bits in base64, mode 0600);
    /// never overwrites a file
    Generate { path: PathBuf },
    /// Re-seal every stored secret not sealed under the first key of
    /// AUTHD_DATA_KEYS; afterwards, keys nothing is sealed under can go
    Reseal {
        /// Secrets read and rewritten per statement
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch_size: u32,
    },
}

/// What a re-seal did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResealReport {
    /// Secrets now sealed under the first key that were not before.
    pub resealed: u64,
    /// Secrets changed or removed between the read and the write (a new
    /// enrolment, a removal, another re-seal): left as they are.
    pub changed_meanwhile: u64,
    /// Secrets under a key that is not loaded, by factor (or stream).
    pub unknown_key: Vec<(Uuid, String)>,
    /// Secrets that did not open under their (loaded) key, by factor (or
    /// stream).
    pub corrupt: Vec<Uuid>,
    /// After the pass: how many secrets each key id seals.
    pub by_key: BTreeMap<String, i64>,
}

impl ResealReport {
    /// Secrets still sealed under a key other than `primary`.
    pub fn left_behind(&self, primary: &str) -> i64 {
        self.by_key
            .iter()
            .filter(|(id, _)| id.as_str() != primary)
            .map(|(_, n)| n)
            .sum()
    }
}

pub async fn run(config: &Config, command: DataKeysCommand) -> anyhow::Result<()> {
    match command {
        DataKeysCommand::Generate { path } => generate(&path),
        DataKeysCommand::Reseal { batch_size } => {
            let keys = configured_keys(config)?;
            let database = CommandDatabase::open(config).await?;
            let result = reseal(&database.pool, &keys, i64::from(batch_size)).await;
            database.close().await;
            report(&keys, &result?)
        }
    }
}

fn generate(path: &std::path::Path) -> anyhow::Result<()> {
    data_keys::generate_key_file(path)?;
    let keys = DataKeys::load(&[path.to_path_buf()])?;
    tracing::info!(target: AUDIT, action = "data_keys.generate", key_id = keys.primary_id(),
        path = %path.display(), "data key generated");
    print_stdout(&format!("{}\n", keys.primary_id()))?;
    eprintln!(
        "wrote data key {} (id {}). To seal with it: put it first in AUTHD_DATA_KEYS, keep the \
         older keys after it, restart every replica, then run `authd data-keys reseal`",
        path.display(),
        keys.primary_id()
    );
    Ok(())
}

/// `AUTHD_DATA_KEYS`, or the development key a server made in the data
/// folder (never a new one: a new key would open nothing stored).
fn configured_keys(config: &Config) -> anyhow::Result<DataKeys> {
    if !config.data_keys.is_empty() {
        return DataKeys::load(&config.data_keys).context("loading AUTHD_DATA_KEYS");
    }
    let path = data_keys::development_key_path(&config.data_dir);
    DataKeys::load(std::slice::from_ref(&path)).with_context(|| {
        format!(
            "AUTHD_DATA_KEYS is not set and the development key {} does not load",
            path.display()
        )
    })
}

/// Re-seals, `batch_size` at a time, every factor secret not under the
/// first key. Each batch is written in one statement that replaces a row
/// only if it still holds what was read, so nothing a server wrote
/// meanwhile is overwritten; a secret that does not open is reported and
/// left alone.
pub async fn reseal(db: &PgPool, keys: &DataKeys, batch_size: i64) -> anyhow::Result<ResealReport> {
    let primary = keys.primary_id();
    let mut report = ResealReport::default();
    let mut after = None;
    loop {
        let rows = sealed::factor_secrets_not_under(db, primary, after, batch_size)
            .await
            .context("reading sealed secrets")?;
        let Some(last) = rows.last() else { break };
        after = Some(last.factor_id);
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
            let aad = sealed::factor_secret_aad(row.factor_id, row.user_id);
            match keys.open(&row.key_id, &row.sealed, &aad) {
                Ok(secret) => {
                    let again = keys.seal(&secret, &aad)?;
                    batch.push(Resealed {
                        old: row,
                        sealed: again.bytes,
                    });
                }
                Err(DataKeyError::UnknownKey) => report.unknown_key.push((row.factor_id, row.key_id)),
                Err(DataKeyError::Corrupt) => report.corrupt.push(row.factor_id),
            }
        }
        let replaced = sealed::replace_factor_secrets(db, primary, &batch)
            .await
            .context("writing re-sealed secrets")?;
        report.resealed += replaced;
        report.changed_meanwhile += batch.len() as u64 - replaced;
    }
    // Push streams' Authorization values: few, one at a time.
    for row in sealed::stream_authorizations_not_under(db, primary)
        .await
        .context("reading sealed stream authorizations")?
    {
        let aad = sealed::stream_authorization_aad(row.stream_id);
        match keys.open(&row.key_id, &row.sealed, &aad) {
            Ok(secret) => {
                let again = keys.seal(&secret, &aad)?;
                if sealed::replace_stream_authorization(db, primary, &row, &again.bytes)
                    .await
                    .context("writing a re-sealed stream authorization")?
                {
                    report.resealed += 1;
                } else {
                    report.changed_meanwhile += 1;
                }
            }
            Err(DataKeyError::UnknownKey) => report.unknown_key.push((row.stream_id, row.key_id)),
            Err(DataKeyError::Corrupt) => report.corrupt.push(row.stream_id),
        }
    }
    report.by_key = sealed::secrets_by_key(db)
        .await
        .context("counting sealed secrets")?
        .into_iter()
        .collect();
    tracing::info!(target: AUDIT, action = "data_keys.reseal", key_id = primary,
        resealed = report.resealed, changed_meanwhile = report.changed_meanwhile,
        unknown_key = report.unknown_key.len(), corrupt = report.corrupt.len(),
        "stored secrets re-sealed under the first data key");
    Ok(report)
}

/// Says what happened, key by key; fails when a secret was left under an
/// older key, since removing that key would lose it.
fn report(keys: &DataKeys, report: &ResealReport) -> anyhow::Result<()> {
    let primary = keys.primary_id();
    let mut out = format!(
        "re-sealed {} secrets under data key {primary}; {} changed meanwhile and were left as they are\n",
        report.resealed, report.changed_meanwhile
    );
    for (id, count) in &report.by_key {
        let role = if id == primary {
            "first key"
        } else if keys.knows(id) {
            "older key, still in use"
        } else {
            "not in AUTHD_DATA_KEYS"
        };
        out.push_str(&format!("key {id}: {count} secrets ({role})\n"));
    }
    print_stdout(&out)?;
    for (factor, key_id) in &report.unknown_key {
        eprintln!(
            "factor or stream {factor}: sealed under key {key_id}, which AUTHD_DATA_KEYS does not list"
        );
    }
    for factor in &report.corrupt {
        eprintln!("factor or stream {factor}: its secret does not open under its key (altered or damaged)");
    }
    let left = report.left_behind(primary);
    if left > 0 {
        anyhow::bail!(
            "{left} secrets are still sealed under a key other than {primary}; keep the keys they \
             name (run reseal again after a concurrent change)"
        );
    }
    eprintln!("every stored secret is sealed under {primary}: the other data keys can be removed");
    Ok(())
}

fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
