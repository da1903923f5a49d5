//! TOTP secrets at rest: sealed under AUTHD_DATA_KEYS, so a copy of the
//! database does not hold them, and still usable after a new key is put
//! first.

use super::*;

/// A copy of the database (what a stolen backup holds) has neither the
/// base32 secret nor its bytes in hex.
#[tokio::test]
async fn a_database_dump_does_not_hold_the_totp_secret() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let bin = authd::local_pg::find_bin_dir().unwrap();
    let output = tokio::process::Command::new(bin.join("pg_dump"))
        .arg("--data-only")
        .arg(format!("--dbname={}", app.database_url()))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dump = String::from_utf8_lossy(&output.stdout).to_lowercase();
    assert!(dump.contains(&user.user.id), "the dump holds the account");
    assert!(dump.contains("factors"), "the dump holds the factors table");
    let secret = user.app.secret.to_lowercase();
    let hex: String = crate::totp::base32_decode(&user.app.secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!dump.contains(&secret), "the base32 secret is in the dump");
    assert!(!dump.contains(&hex), "the secret's hex is in the dump");
    for code in &user.recovery_codes {
        assert!(!dump.contains(code.as_str()), "a recovery code is in the dump");
        assert!(
            !dump.contains(&code.replace('-', "")),
            "a recovery code is in the dump"
        );
    }
}

/// Rotation as documented: a new key first, the old one kept after it; the
/// factors sealed under the old key keep working, and new ones are sealed
/// under the new key.
#[tokio::test]
async fn factors_keep_working_after_a_new_data_key_is_put_first() {
    let app = spawn_app().await;
    let user = mfa_user(&app).await;
    let url = app.database_url();
    let old_key = app.config.data_keys[0].clone();
    let sealed_under = |db: sqlx::PgPool, id: String| async move {
        sqlx::query_scalar::<_, String>("SELECT secret_key_id FROM factors WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let old_id = sealed_under(app.db.clone(), user.factor_id.clone()).await;
    // Keep the key files: the data folder goes with the server.
    let kept = scratch_dir("old-data-key");
    std::fs::create_dir_all(&kept).unwrap();
    let old_copy = kept.join("old-key");
    std::fs::copy(&old_key, &old_copy).unwrap();
    let signing = kept.join("signing.pem");
    std::fs::copy(&app.config.signing_keys[0], &signing).unwrap();
    let new_key = kept.join("new-key");
    authd::crypto::data_keys::generate_key_file(&new_key).unwrap();
    app.stop().await.unwrap();

    let rotated = spawn_app_on(&url, |c| {
        c.signing_keys = vec![signing.clone()];
        c.data_keys = vec![new_key.clone(), old_copy.clone()];
    })
    .await;
    let tokens = mfa_login(&rotated, &user).await;
    assert_eq!(acr(&tokens.access_token), "aal2");

    let (second, confirmed) = add_totp(&rotated, &user.tokens.access_token).await;
    let new_id = sealed_under(rotated.db.clone(), confirmed.factor.unwrap().id).await;
    assert_ne!(new_id, old_id, "a new factor is sealed under the new key");
    drop(second);
    let _ = std::fs::remove_dir_all(&kept);
}
