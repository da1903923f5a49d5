//! The scale run's PostgreSQL cluster, kept in a folder between runs so a
//! re-run does not seed a million accounts again.
//!
//! It holds one template database per seed size (`authd_seed_<N>`),
//! seeded once with `tests/seed/scale.rs` and never served. Each run
//! serves a fresh file copy of it (`authd_seeded`) next to a fresh empty
//! database (`authd_empty`), and drops both at the end: the run (its
//! Registers, its Refreshes, the clean-up pass that deletes the seed's
//! ended sessions) never changes the template. A file `seed-<N>.json`
//! beside the cluster records a completed seed (its time and rows, the
//! migrations it was seeded under, a digest of the seed's source); without
//! it, or when authd's migrations or the seed have changed since, the
//! template is seeded again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use authd::local_pg::{Durability, LocalPostgres};
use sqlx::{Connection as _, PgConnection};

use crate::scale_seed::{self, Scale};
use crate::server::authd_binary;

/// The seed's source, whose digest tells a kept seed from a stale one.
const SEED_SOURCE: &str = include_str!("../../../tests/seed/scale.rs");

pub const EMPTY: &str = "authd_empty";
pub const SEEDED: &str = "authd_seeded";

/// Settings of the kept cluster, applied with ALTER SYSTEM: those of the
/// load generator's throwaway clusters (a benchmark's data is not worth a
/// flush), and room for the seed's WAL between checkpoints.
const SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_wal_size", "'4GB'"),
];

pub struct Kept {
    pub pg: LocalPostgres,
    dir: PathBuf,
    lock: PathBuf,
}

/// A completed seed, as `seed-<N>.json` records it.
pub struct SeedRecord {
    pub accounts: i64,
    pub seeded_at: String,
    pub elapsed: Duration,
    pub rows: Vec<(String, u64)>,
    /// Whether this run wrote it (false: a kept one was reused).
    pub fresh: bool,
}

impl Kept {
    /// Starts (and the first time, initialises) the cluster under `dir`.
    pub async fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let lock = dir.join("run.pid");
        if let Ok(pid) = std::fs::read_to_string(&lock)
            && Path::new(&format!("/proc/{}", pid.trim())).exists()
            && pid.trim() != std::process::id().to_string()
        {
            panic!(
                "another scale run (pid {}) uses {}; wait for it or pass another --scale-dir",
                pid.trim(),
                dir.display()
            );
        }
        std::fs::write(&lock, std::process::id().to_string()).expect("writing the run's pid file");
        let root = dir.join("cluster");
        let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Durable))
            .await
            .unwrap()
            .expect("starting the scale run's PostgreSQL cluster");
        let kept = Self {
            pg,
            dir: dir.to_owned(),
            lock,
        };
        let mut db = kept.connect("postgres").await;
        for (name, value) in SETTINGS {
            sqlx::raw_sql(&format!("ALTER SYSTEM SET {name} = {value}"))
                .execute(&mut db)
                .await
                .expect("ALTER SYSTEM");
        }
        sqlx::raw_sql("SELECT pg_reload_conf()")
            .execute(&mut db)
            .await
            .expect("pg_reload_conf");
        kept
    }

    pub async fn connect(&self, database: &str) -> PgConnection {
        PgConnection::connect_with(&self.pg.connect_options(database))
            .await
            .unwrap_or_else(|e| panic!("connecting to {database}: {e}"))
    }

    fn template(accounts: i64) -> String {
        format!("authd_seed_{accounts}")
    }

    fn record_path(&self, accounts: i64) -> PathBuf {
        self.dir.join(format!("seed-{accounts}.json"))
    }

    /// Drops `name` (if it exists) and creates it empty.
    pub async fn recreate(&self, name: &str) {
        self.drop_database(name).await;
        let mut db = self.connect("postgres").await;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut db)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }

    pub async fn drop_database(&self, name: &str) {
        let mut db = self.connect("postgres").await;
        if let Err(e) = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut db)
            .await
        {
            eprintln!("dropping {name}: {e}");
        }
    }

    /// The kept seed of `accounts`, if there is one that authd's current
    /// migrations describe; otherwise why not.
    pub async fn kept_seed(&self, accounts: i64) -> Result<SeedRecord, String> {
        let text = std::fs::read_to_string(self.record_path(accounts))
            .map_err(|_| format!("no seed of {accounts} accounts in {} yet", self.dir.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("unreadable seed record: {e}"))?;
        if v["seed_sha256"].as_str() != Some(seed_digest().as_str()) {
            return Err("tests/seed/scale.rs changed since the kept seed was written".to_owned());
        }
        let template = Self::template(accounts);
        let mut db = self.connect("postgres").await;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut db)
            .await
            .map_err(|e| e.to_string())?;
        if !exists {
            return Err(format!(
                "the seed record names {template}, which the cluster does not hold"
            ));
        }
        let applied = applied_migrations(&mut self.connect(&template).await).await?;
        if applied != expected_migrations() {
            return Err(format!(
                "authd's migrations changed since {template} was seeded ({} applied there, {} now)",
                applied.len(),
                expected_migrations().len()
            ));
        }
        Ok(SeedRecord {
            accounts,
            seeded_at: v["seeded_at"].as_str().unwrap_or("?").to_owned(),
            elapsed: Duration::from_secs_f64(v["seed_secs"].as_f64().unwrap_or(f64::NAN).max(0.0)),
            rows: v["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_u64()?)))
                        .collect()
                })
                .unwrap_or_default(),
            fresh: false,
        })
    }

    /// Seeds the template of `accounts` from scratch: a new database,
    /// migrated by the authd binary, filled by the bulk seed with
    /// `password_hash` for every account, recorded when done.
    pub async fn seed(&self, accounts: i64, password_hash: &str, scratch: &Path) -> SeedRecord {
        let template = Self::template(accounts);
        let _ = std::fs::remove_file(self.record_path(accounts));
        self.recreate(&template).await;
        self.migrate(&template, scratch).await;
        let mut conn = self.connect(&template).await;
        let report = scale_seed::seed(&mut conn, Scale::accounts(accounts), password_hash)
            .await
            .unwrap_or_else(|e| panic!("seeding {template}: {e:#}"));
        conn.close().await.ok();
        let seeded_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let record = serde_json::json!({
            "accounts": accounts,
            "seeded_at": seeded_at,
            "seed_secs": report.elapsed.as_secs_f64(),
            "rows": report.rows.iter().map(|(t, n)| serde_json::json!([t, n])).collect::<Vec<_>>(),
            "migrations": expected_migrations().iter().map(|(v, _)| v).collect::<Vec<_>>(),
            "seed_sha256": seed_digest(),
        });
        std::fs::write(
            self.record_path(accounts),
            serde_json::to_string_pretty(&record).unwrap_or_default(),
        )
        .expect("writing the seed record");
        SeedRecord {
            accounts,
            seeded_at,
            elapsed: report.elapsed,
            rows: report.rows.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect(),
            fresh: true,
        }
    }

    /// `authd migrate` against `database`: the schema the binary under
    /// test expects.
    async fn migrate(&self, database: &str, scratch: &Path) {
        std::fs::create_dir_all(scratch).ok();
        let out = tokio::process::Command::new(authd_binary())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", self.pg.url(database))
            .env("AUTHD_DATA_DIR", scratch)
            .env("RUST_LOG", "warn")
            .current_dir(scratch)
            .arg("migrate")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("running authd migrate");
        assert!(
            out.status.success(),
            "authd migrate failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file copy of the template of `accounts` as `name`; its duration.
    pub async fn copy_seed(&self, accounts: i64, name: &str) -> Duration {
        let template = Self::template(accounts);
        let mut db = self.connect("postgres").await;
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&mut db)
            .await
            .expect("server version");
        // PostgreSQL 15 copies through its WAL by default: slower for a
        // big database than copying its files.
        let strategy = if version >= 150_000 {
            " STRATEGY = FILE_COPY"
        } else {
            ""
        };
        self.drop_database(name).await;
        let t = Instant::now();
        sqlx::raw_sql(&format!("CREATE DATABASE {name} TEMPLATE {template}{strategy}"))
            .execute(&mut db)
            .await
            .unwrap_or_else(|e| panic!("copying {template} to {name}: {e}"));
        t.elapsed()
    }

    /// Size of `name` on disk.
    pub async fn size(&self, name: &str) -> String {
        let mut db = self.connect("postgres").await;
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size($1))")
            .bind(name)
            .fetch_one(&mut db)
            .await
            .unwrap_or_else(|_| "?".to_owned())
    }

    pub async fn stop(self) {
        let Kept { pg, lock, .. } = self;
        tokio::task::spawn_blocking(move || pg.stop()).await.ok();
        let _ = std::fs::remove_file(lock);
    }
}

fn seed_digest() -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(SEED_SOURCE.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn expected_migrations() -> Vec<(i64, Vec<u8>)> {
    authd::db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect()
}

async fn applied_migrations(db: &mut PgConnection) -> Result<Vec<(i64, Vec<u8>)>, String> {
    sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(db)
        .await
        .map_err(|e| e.to_string())
}
