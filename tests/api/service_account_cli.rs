//! `authd service-account …`: the real binary, run as a process against a
//! real database (the test's own, through `DATABASE_URL`, or the development
//! cluster in a data folder, next to a running `authd serve`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use authd::pb::auth::v1 as pb;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp, connect, listening_address, scratch_dir, signal, spawn_app};

/// What a finished command left behind.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Where commands run: the test app's database, or (without a URL) the
/// development cluster in `data_dir`.
struct Target {
    database_url: Option<String>,
    data_dir: PathBuf,
}

impl Target {
    fn of(app: &TestApp) -> Self {
        let url = app.database_url();
        Self {
            database_url: Some(url),
            data_dir: scratch_dir("cli-data"),
        }
    }

    fn dev_cluster() -> Self {
        let data_dir = scratch_dir("cli-dev");
        std::fs::create_dir_all(&data_dir).unwrap();
        Self {
            database_url: None,
            data_dir,
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_authd"));
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env("AUTHD_DATA_DIR", &self.data_dir)
            .env("AUTHD_LOG_FORMAT", "pretty")
            .env("RUST_LOG", "warn")
            // Out of the crate folder, so no developer's .env applies.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(url) = &self.database_url {
            cmd.env("DATABASE_URL", url);
        }
        cmd
    }

    async fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().await.unwrap();
        Run {
            success: out.status.success(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// Runs `create` and returns the key it printed.
    async fn create(&self, name: &str, scopes: &[&str]) -> String {
        let mut args = vec!["service-account", "create", name];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        let run = self.run(&args).await;
        assert!(run.success, "{}", run.stderr);
        run.stdout.trim_end().to_owned()
    }

    fn postmaster_pid(&self) -> PathBuf {
        self.data_dir.join("postgres/pg/postmaster.pid")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn assert_is_service_key(key: &str) {
    let body = key
        .strip_prefix("sk_")
        .unwrap_or_else(|| panic!("no sk_ prefix: {key:?}"));
    assert_eq!(body.len(), 43, "{key:?}");
    assert!(
        body.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{key:?}"
    );
}

/// Key hashes of the account `name`, oldest first, with their ids.
async fn stored_keys(db: &PgPool, name: &str) -> Vec<(Uuid, Vec<u8>)> {
    sqlx::query_as(
        "SELECT k.id, k.key_hash FROM service_account_keys k JOIN service_accounts a ON a.id = k.account_id
          WHERE a.name = $1 ORDER BY k.created_at",
    )
    .bind(name)
    .fetch_all(db)
    .await
    .unwrap()
}

async fn stored_scopes(db: &PgPool, name: &str) -> Option<Vec<String>> {
    sqlx::query_scalar("SELECT scopes FROM service_accounts WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await
        .unwrap()
}

/// Every table whose rows, as text, contain `needle`.
async fn tables_containing(db: &PgPool, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables
          WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        let hits: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} t WHERE strpos(t::text, $1) > 0"
        ))
        .bind(needle)
        .fetch_one(db)
        .await
        .unwrap();
        if hits > 0 {
            found.push(table);
        }
    }
    found
}

#[tokio::test]
async fn create_prints_the_key_once_and_stores_only_its_sha256() {
    let app = spawn_app().await;
    let target = Target::of(&app);
    let run = target
        .run(&["service-account", "create", "billing", "--scope", "users.read"])
        .await;
    assert!(run.success, "{}", run.stderr);
    // The key alone on stdout, for `KEY=$(authd service-account create …)`.
    let key = run.stdout.strip_suffix('\n').unwrap();
    assert_is_service_key(key);
    assert!(
        run.stderr
            .contains("created service account billing with scopes users.read; key id"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("shown once"), "{}", run.stderr);
    assert!(!run.stderr.contains(key));

    let keys = stored_keys(&app.db, "billing").await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].1, Sha256::digest(key.as_bytes()).to_vec());
    assert!(run.stderr.contains(&keys[0].0.to_string()), "{}", run.stderr);
    assert_eq!(stored_scopes(&app.db, "billing").await.unwrap(), ["users.read"]);
    assert_eq!(tables_containing(&app.db, key).await, Vec::<String>::new());
    assert_eq!(tables_containing(&app.db, &key[3..]).await, Vec::<String>::new());
}

#[tokio::test]
async fn the_same_scopes_again_add_a_key_and_list_shows_both_ids_but_no_secret() {
    let app = spawn_app().await;
    let target = Target::of(&app);
    let first = target.create("billing", &["users.write", "users.read"]).await;
    // The same set, in another order and with a repeat: a rotation.
    let run = target
        .run(&[
            "service-account",
            "create",
            "billing",
            "--scope",
            "users.read",
            "--scope",
            "users.write",
            "--scope",
            "users.read",
        ])
        .await;
    assert!(run.success, "{}", run.stderr);
    let second = run.stdout.trim_end();
    assert_is_service_key(second);
    assert_ne!(first, second);
    assert!(
        run.stderr.contains("added a key to service account billing"),
        "{}",
        run.stderr
    );

    let keys = stored_keys(&app.db, "billing").await;
    let hashes: Vec<Vec<u8>> = keys.iter().map(|(_, hash)| hash.clone()).collect();
    assert_eq!(
        hashes,
        [Sha256::digest(&first).to_vec(), Sha256::digest(second).to_vec()]
    );
    assert_eq!(
        stored_scopes(&app.db, "billing").await.unwrap(),
        ["users.read", "users.write"]
    );

    let list = target.run(&["service-account", "list"]).await;
    assert!(list.success, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a line per key:\n{}", list.stdout);
    assert!(lines[0].starts_with("NAME"), "{}", list.stdout);
    for ((id, _), line) in keys.iter().zip(&lines[1..]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[..2], ["billing", "users.read,users.write"], "{line}");
        assert_eq!(fields[3], id.to_string(), "{line}");
        assert_eq!(fields[5], "never", "{line}");
    }
    let everything = format!("{}{}", list.stdout, list.stderr);
    assert!(!everything.contains("sk_"), "{everything}");
    for (_, hash) in &keys {
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!everything.contains(&hex), "{everything}");
    }
}

#[tokio::test]
async fn create_with_other_scopes_fails_and_changes_nothing() {
    let app = spawn_app().await;
    let target = Target::of(&app);
    target.create("billing", &["users.read"]).await;
    let run = target
        .run(&["service-account", "create", "billing", "--scope", "users.write"])
        .await;
    assert!(!run.success);
    assert_eq!(run.stdout, "", "no key may be printed");
    assert!(
        run.stderr
            .contains("service account billing exists with scopes users.read"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("authd service-account revoke billing"),
        "{}",
        run.stderr
    );
    assert_eq!(stored_keys(&app.db, "billing").await.len(), 1);
    assert_eq!(stored_scopes(&app.db, "billing").await.unwrap(), ["users.read"]);
}

#[tokio::test]
async fn revoke_deletes_one_key_or_the_whole_account() {
    let app = spawn_app().await;
    let target = Target::of(&app);
    target.create("billing", &["users.read"]).await;
    let kept = target.create("billing", &["users.read"]).await;
    let keys = stored_keys(&app.db, "billing").await;
    let old_id = keys[0].0.to_string();

    let run = target
        .run(&["service-account", "revoke", "billing", "--key-id", &old_id])
        .await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(
        stored_keys(&app.db, "billing").await,
        [(keys[1].0, Sha256::digest(&kept).to_vec())]
    );

    let again = target
        .run(&["service-account", "revoke", "billing", "--key-id", &old_id])
        .await;
    assert!(!again.success);
    assert!(
        again
            .stderr
            .contains(&format!("service account billing has no key {old_id}")),
        "{}",
        again.stderr
    );
    let ghost = target
        .run(&["service-account", "revoke", "ghost", "--key-id", &old_id])
        .await;
    assert!(!ghost.success);
    assert!(
        ghost.stderr.contains("no service account named ghost"),
        "{}",
        ghost.stderr
    );

    let run = target.run(&["service-account", "revoke", "billing"]).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(stored_scopes(&app.db, "billing").await, None);
    let keys_left: i64 = sqlx::query_scalar("SELECT count(*) FROM service_account_keys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(keys_left, 0);

    let again = target.run(&["service-account", "revoke", "billing"]).await;
    assert!(!again.success);
    assert!(
        again.stderr.contains("no service account named billing"),
        "{}",
        again.stderr
    );
}

#[tokio::test]
async fn bad_input_exits_non_zero_with_one_line_naming_the_problem() {
    let app = spawn_app().await;
    let target = Target::of(&app);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["service-account", "create", "billing", "--scope", "users.admin"],
            &["'users.admin'", "unknown scope", "users.read"],
        ),
        (
            &["service-account", "create", "Billing", "--scope", "users.read"],
            &["'Billing'", "service account name may only contain a-z"],
        ),
        (
            &["service-account", "create", ".billing", "--scope", "users.read"],
            &["'.billing'", "must start with a letter or digit"],
        ),
        (
            &["service-account", "create", "billing"],
            &["required", "--scope"],
        ),
        (&["service-account", "frobnicate"], &["'frobnicate'"]),
        (&["frobnicate"], &["'frobnicate'"]),
        (
            &["service-account", "revoke", "billing", "--key-id", "not-a-uuid"],
            &["'not-a-uuid'", "--key-id"],
        ),
    ];
    for (args, expected) in cases {
        let run = target.run(args).await;
        assert!(!run.success, "{args:?}");
        assert_eq!(run.stdout, "", "{args:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("authd: "), "{args:?}: {}", run.stderr);
        for part in *expected {
            assert!(
                run.stderr.contains(part),
                "{args:?}: {part:?} not in {}",
                run.stderr
            );
        }
    }
    // Without a subcommand, the subcommands are what the user needs to see.
    let run = target.run(&["service-account"]).await;
    assert!(!run.success);
    assert_eq!(run.stdout, "");
    for subcommand in ["create", "list", "revoke"] {
        assert!(run.stderr.contains(subcommand), "{}", run.stderr);
    }
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM service_accounts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(accounts, 0);
}

/// `authd serve` on the development cluster of `target`'s data folder,
/// with the address it listens on.
async fn serve(target: &Target) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut server = target
        .command(&["serve"])
        .env("AUTHD_LISTEN", "127.0.0.1:0")
        .env("AUTHD_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_address(&mut server, Duration::from_secs(120)).await;
    (server, addr)
}

async fn stop(mut server: tokio::process::Child) {
    signal(server.id().unwrap(), "TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), server.wait()).await;
    assert!(exit.unwrap().unwrap().success());
}

fn exists(path: &Path) -> bool {
    path.try_exists().unwrap()
}

#[tokio::test]
async fn on_the_development_cluster_a_command_stops_only_a_cluster_it_started() {
    let target = Target::dev_cluster();
    // Nothing running: the command starts the cluster, and stops it itself
    // (the watchdog would only notice a second later).
    target.create("first", &["users.read"]).await;
    assert!(
        !exists(&target.postmaster_pid()),
        "the command left its cluster running"
    );

    // At once: the server starts its cluster while the command's watchdog
    // has yet to notice that the command is gone, and must leave it alone.
    let (server, addr) = serve(&target).await;
    target.create("second", &["users.read"]).await;
    // Longer than the watchdogs' poll: neither the first command's nor (had
    // it adopted the running cluster) the second's may stop the server's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    the_server_still_has_its_cluster(&target, addr, "the command stopped the server's cluster").await;

    let list = target.run(&["service-account", "list"]).await;
    assert!(list.success, "{}", list.stderr);
    let names: Vec<&str> = list
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["first", "second"]);
    stop(server).await;
    assert!(
        !exists(&target.postmaster_pid()),
        "the server left its cluster running"
    );
}

#[tokio::test]
async fn a_command_that_started_the_cluster_leaves_it_to_a_server_that_adopted_it() {
    let target = Target::dev_cluster();
    // Nothing running: a command starts the cluster, as CommandDatabase
    // does through LocalPostgres, and is still at work when `authd serve`
    // starts and adopts that running cluster.
    let root = target.data_dir.join("postgres");
    let command = tokio::task::spawn_blocking(move || {
        authd::local_pg::LocalPostgres::start(&root, authd::local_pg::Durability::Durable)
    })
    .await
    .unwrap()
    .unwrap();
    let (server, addr) = serve(&target).await;
    // The command ends: it stops what it started, unless another authd
    // process uses it.
    tokio::task::spawn_blocking(move || drop(command)).await.unwrap();
    the_server_still_has_its_cluster(&target, addr, "the command stopped the cluster under the server").await;
    // The last user stops it.
    stop(server).await;
    assert!(
        !exists(&target.postmaster_pid()),
        "the server left its cluster running"
    );
}

/// The development cluster still runs, and the server behind `addr` still
/// writes to it.
async fn the_server_still_has_its_cluster(target: &Target, addr: std::net::SocketAddr, stopped: &str) {
    assert!(exists(&target.postmaster_pid()), "{stopped}");
    let registered = connect(addr)
        .await
        .register(pb::RegisterRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await;
    assert!(registered.is_ok(), "the server lost its database: {registered:?}");
}
