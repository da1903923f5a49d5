//! Data keys: TOTP secrets sealed at rest, the rotation an operator runs
//! (`authd data-keys generate`, then `reseal` with the new key first), and
//! what a server does with its keys at start-up.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use authd::crypto::data_keys::{DataKeys, generate_key_file};
use authd::db::sealed_secrets::{self, Resealed, factor_secret_aad};
use authd::startup::Application;
use uuid::Uuid;

use crate::helpers::{
    PASSWORD, TestApp, captured_logs, fresh_email, scratch_dir, spawn_app, spawn_app_on, spawn_app_with,
};

/// Key files of a test, removed with it.
struct KeyDir(PathBuf);

impl KeyDir {
    fn new() -> Self {
        let dir = scratch_dir("data-keys");
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn key(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        generate_key_file(&path).unwrap();
        path
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished command left behind.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// `authd ARGS` against `app`'s database with `AUTHD_DATA_KEYS` = `keys`.
async fn authd(app: &TestApp, keys: &[&Path], args: &[&str]) -> Run {
    let list: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
    let data_dir = scratch_dir("data-keys-cli");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_authd"))
        .args(args)
        .env("DATABASE_URL", app.database_url())
        .env("AUTHD_DATA_DIR", &data_dir)
        .env("AUTHD_DATA_KEYS", list.join(","))
        .env("AUTHD_LOG_FORMAT", "pretty")
        .env("RUST_LOG", "warn")
        // Out of the crate folder, so no developer's .env applies.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
    Run {
        success: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A registered account's id.
async fn user_id(app: &TestApp) -> Uuid {
    let user = app.register(&fresh_email(), PASSWORD).await;
    user.id.parse().unwrap()
}

/// A confirmed TOTP factor of `user` whose secret is sealed under `keys`
/// the way authd seals it; returns the factor's id.
async fn insert_factor(app: &TestApp, user: Uuid, keys: &DataKeys, secret: &[u8]) -> Uuid {
    let factor = Uuid::new_v4();
    let sealed = keys.seal(secret, &factor_secret_aad(factor, user)).unwrap();
    sqlx::query(
        "INSERT INTO factors (id, user_id, kind, name, created_at, confirmed_at, secret_sealed, secret_key_id)
         VALUES ($1, $2, 'totp', 'phone', now(), now(), $3, $4)",
    )
    .bind(factor)
    .bind(user)
    .bind(&sealed.bytes)
    .bind(&sealed.key_id)
    .execute(&app.db)
    .await
    .unwrap();
    factor
}

/// The stored key id and sealed bytes of a factor.
async fn stored(app: &TestApp, factor: Uuid) -> (String, Vec<u8>) {
    sqlx::query_as("SELECT secret_key_id, secret_sealed FROM factors WHERE id = $1")
        .bind(factor)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn reseal_moves_every_secret_to_the_first_key_and_the_old_key_can_go() {
    let app = spawn_app().await;
    let dir = KeyDir::new();
    let (a, b) = (dir.key("a"), dir.key("b"));
    let under_a = DataKeys::load(std::slice::from_ref(&a)).unwrap();
    let only_b = DataKeys::load(std::slice::from_ref(&b)).unwrap();
    let user = user_id(&app).await;
    let other = user_id(&app).await;
    let mut factors = Vec::new();
    for (owner, secret) in [
        (user, &b"JBSWY3DPEHPK3PXP-one"[..]),
        (user, b"JBSWY3DPEHPK3PXP-two"),
        (other, b"JBSWY3DPEHPK3PXP-three"),
    ] {
        factors.push((owner, secret, insert_factor(&app, owner, &under_a, secret).await));
    }
    let already_b = insert_factor(&app, other, &only_b, b"already under b").await;
    let untouched = stored(&app, already_b).await;
    let before: Vec<_> = stored_forms(&app, &factors).await;

    // Batches of two: three secrets take two of them.
    let run = authd(&app, &[&b, &a], &["data-keys", "reseal", "--batch-size", "2"]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.starts_with(&format!(
            "re-sealed 3 secrets under data key {}",
            only_b.primary_id()
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("key {}: 4 secrets (first key)", only_b.primary_id())),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("the other data keys can be removed"),
        "{}",
        run.stderr
    );

    for ((owner, secret, factor), (_, old_bytes)) in factors.iter().zip(&before) {
        let (key_id, bytes) = stored(&app, *factor).await;
        assert_eq!(key_id, only_b.primary_id());
        assert_ne!(&bytes, old_bytes, "sealed anew");
        // Key A is no longer needed to read it.
        let opened = only_b
            .open(&key_id, &bytes, &factor_secret_aad(*factor, *owner))
            .unwrap();
        assert_eq!(opened.as_slice(), *secret);
    }
    assert_eq!(
        stored(&app, already_b).await,
        untouched,
        "already under B: not rewritten"
    );

    // Nothing left to do the second time.
    let again = authd(&app, &[&b, &a], &["data-keys", "reseal"]).await;
    assert!(again.success, "{}", again.stderr);
    assert!(
        again.stdout.starts_with("re-sealed 0 secrets"),
        "{}",
        again.stdout
    );

    // A server configured with the rotated keys starts and serves.
    let rotated = spawn_app_on(&app.database_url(), |c| c.data_keys = vec![b.clone(), a.clone()]).await;
    let email = fresh_email();
    rotated.register(&email, PASSWORD).await;
    let tokens = rotated.tokens_of(&email).await;
    rotated.get_me(&tokens.access_token).await.unwrap();
}

#[tokio::test]
async fn reseal_moves_a_push_streams_authorization_too() {
    let dir = KeyDir::new();
    let (a, b) = (dir.key("a"), dir.key("b"));
    let app = spawn_app_with(|c| {
        c.data_keys = vec![a.clone()];
        c.ssf_allow_private = true;
    })
    .await;
    let only_b = DataKeys::load(std::slice::from_ref(&b)).unwrap();
    let key = app.service_key("rotating-receiver", &["events.receive"]).await;
    let stream = crate::shared_signals::create_stream(
        &app,
        &key,
        &serde_json::json!({"delivery": {"method": crate::shared_signals::PUSH,
            "endpoint_url": "http://127.0.0.1:9/events", "authorization_header": "Bearer kept-secret"}}),
    )
    .await;
    let id: Uuid = stream["stream_id"].as_str().unwrap().parse().unwrap();

    let run = authd(&app, &[&b, &a], &["data-keys", "reseal"]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(run.stdout.starts_with("re-sealed 1 secrets"), "{}", run.stdout);
    let (key_id, sealed): (String, Vec<u8>) =
        sqlx::query_as("SELECT authorization_key_id, authorization_sealed FROM ssf_streams WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(key_id, only_b.primary_id());
    let opened = only_b
        .open(&key_id, &sealed, &sealed_secrets::stream_authorization_aad(id))
        .unwrap();
    assert_eq!(opened.as_slice(), b"Bearer kept-secret");
}

/// The stored form of each factor, before a re-seal.
async fn stored_forms(app: &TestApp, factors: &[(Uuid, &[u8], Uuid)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (_, _, factor) in factors {
        out.push(stored(app, *factor).await);
    }
    out
}

#[tokio::test]
async fn a_secret_no_listed_key_opens_is_named_and_the_reseal_fails() {
    let app = spawn_app().await;
    let dir = KeyDir::new();
    let (a, b, lost) = (dir.key("a"), dir.key("b"), dir.key("lost"));
    let user = user_id(&app).await;
    let moved = insert_factor(
        &app,
        user,
        &DataKeys::load(std::slice::from_ref(&a)).unwrap(),
        b"a",
    )
    .await;
    let lost_keys = DataKeys::load(std::slice::from_ref(&lost)).unwrap();
    let stranded = insert_factor(&app, user, &lost_keys, b"lost").await;
    // Bytes altered in the database: they open under no key.
    let damaged = insert_factor(
        &app,
        user,
        &DataKeys::load(std::slice::from_ref(&a)).unwrap(),
        b"d",
    )
    .await;
    sqlx::query("UPDATE factors SET secret_sealed = set_byte(secret_sealed, 20, get_byte(secret_sealed, 20) # 1) WHERE id = $1")
        .bind(damaged)
        .execute(&app.db)
        .await
        .unwrap();

    let run = authd(&app, &[&b, &a], &["data-keys", "reseal"]).await;
    assert!(!run.success, "{}", run.stdout);
    assert!(run.stdout.starts_with("re-sealed 1 secrets"), "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "factor or stream {stranded}: sealed under key {}, which AUTHD_DATA_KEYS does not list",
            lost_keys.primary_id()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("factor or stream {damaged}: its secret does not open")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("2 secrets are still sealed under a key other than"),
        "{}",
        run.stderr
    );
    let b_id = DataKeys::load(&[b]).unwrap().primary_id().to_owned();
    assert_eq!(stored(&app, moved).await.0, b_id);
    assert_eq!(
        stored(&app, stranded).await.0,
        lost_keys.primary_id(),
        "left as it was"
    );
}

#[tokio::test]
async fn a_secret_changed_after_the_reseal_read_it_is_not_overwritten() {
    let app = spawn_app().await;
    let dir = KeyDir::new();
    let (a, b) = (dir.key("a"), dir.key("b"));
    let under_a = DataKeys::load(std::slice::from_ref(&a)).unwrap();
    let rotated = DataKeys::load(&[b, a]).unwrap();
    let user = user_id(&app).await;
    let factor = insert_factor(&app, user, &under_a, b"old secret").await;
    let aad = factor_secret_aad(factor, user);

    let read = sealed_secrets::factor_secrets_not_under(&app.db, rotated.primary_id(), None, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    // Meanwhile the user's secret is replaced (by a server still on key A).
    let replacement = under_a.seal(b"new secret", &aad).unwrap();
    sqlx::query("UPDATE factors SET secret_sealed = $2 WHERE id = $1")
        .bind(factor)
        .bind(&replacement.bytes)
        .execute(&app.db)
        .await
        .unwrap();
    let opened = rotated.open(&read[0].key_id, &read[0].sealed, &aad).unwrap();
    let stale = Resealed {
        old: read[0].clone(),
        sealed: rotated.seal(&opened, &aad).unwrap().bytes,
    };
    let replaced = sealed_secrets::replace_factor_secrets(&app.db, rotated.primary_id(), &[stale])
        .await
        .unwrap();
    assert_eq!(replaced, 0);
    let (key_id, bytes) = stored(&app, factor).await;
    assert_eq!(
        (key_id.as_str(), &bytes),
        (under_a.primary_id(), &replacement.bytes)
    );

    // The next pass re-seals what is there now.
    let report = authd::cli::data_keys::reseal(&app.db, &rotated, 100)
        .await
        .unwrap();
    assert_eq!((report.resealed, report.changed_meanwhile), (1, 0));
    let (key_id, bytes) = stored(&app, factor).await;
    assert_eq!(
        rotated.open(&key_id, &bytes, &aad).unwrap().as_slice(),
        b"new secret"
    );
    assert_eq!(report.left_behind(rotated.primary_id()), 0);
}

#[cfg(unix)]
#[tokio::test]
async fn generate_writes_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = spawn_app().await;
    let dir = KeyDir::new();
    let path = dir.0.join("new-key");
    let path_arg = path.to_str().unwrap();
    let run = authd(&app, &[], &["data-keys", "generate", path_arg]).await;
    assert!(run.success, "{}", run.stderr);
    let id = run.stdout.trim_end();
    assert_eq!(
        id,
        DataKeys::load(std::slice::from_ref(&path)).unwrap().primary_id()
    );
    assert!(
        run.stderr.contains("put it first in AUTHD_DATA_KEYS"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = std::fs::read(&path).unwrap();

    let again = authd(&app, &[], &["data-keys", "generate", path_arg]).await;
    assert!(!again.success);
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    assert_eq!(std::fs::read(&path).unwrap(), key, "not overwritten");
}

#[tokio::test]
async fn without_data_keys_a_server_makes_a_development_key_and_says_so() {
    let app = spawn_app_with(|c| c.data_keys = Vec::new()).await;
    let path = app.config.data_dir.join("keys").join("data-key-1");
    assert!(path.exists(), "{}", path.display());
    DataKeys::load(&[path]).unwrap();
    if let Some(logs) = captured_logs() {
        assert!(logs.contains("AUTHD_DATA_KEYS is not set"), "no warning logged");
    }
}

/// A change to a server's configuration.
type Tweak<'a> = &'a dyn Fn(&mut authd::config::Config);

#[tokio::test]
async fn a_server_refuses_to_start_with_a_bad_data_key_or_mfa_setting() {
    let app = spawn_app().await;
    let dir = KeyDir::new();
    let bad = dir.0.join("bad-key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let good = dir.key("good");
    let copy = dir.0.join("copy");
    std::fs::copy(&good, &copy).unwrap();
    let cases: [(Tweak<'_>, String); 4] = [
        (&|c| c.data_keys = vec![bad.clone()], bad.display().to_string()),
        (
            &|c| c.data_keys = vec![dir.0.join("missing")],
            "missing".to_owned(),
        ),
        (
            &|c| c.data_keys = vec![good.clone(), copy.clone()],
            "same key".to_owned(),
        ),
        (
            &|c| c.require_mfa = "roles:Admins".into(),
            "AUTHD_REQUIRE_MFA".to_owned(),
        ),
    ];
    for (tweak, expected) in cases {
        let mut config = app.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        let err = match Application::build(config).await {
            Ok(_) => panic!("started with a bad setting (expected {expected})"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&expected), "{err}");
    }
}
