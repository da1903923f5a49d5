//! UpdateMe: only the fields the mask names change, each validated as at
//! Register.

use tonic::Code;

use super::*;

async fn full_profile(app: &TestApp) -> (pb::User, pb::TokenPair) {
    let email = fresh_email();
    let username = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let user = app
        .register_as(pb::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            username,
            full_name: "Ada Lovelace".into(),
            phone: "+44 20 7946 0000".into(),
            image_url: "https://example.com/ada.png".into(),
        })
        .await;
    let tokens = app.tokens_of(&email).await;
    (user, tokens)
}

/// Values for every field, none of them the current ones.
fn all_new_values() -> pb::User {
    pb::User {
        username: "brand.new".into(),
        full_name: "Augusta King".into(),
        phone: "+1 (555) 010-9999".into(),
        image_url: "https://example.com/augusta.png".into(),
        // Not updatable: ignored even though set.
        email: "someone-else@example.com".into(),
        email_verified: true,
        roles: vec!["admin".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn update_me_changes_only_the_masked_fields() {
    let app = spawn_app().await;
    let (before, tokens) = full_profile(&app).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let after = update_me(&app, &tokens.access_token, all_new_values(), &["full_name"])
        .await
        .unwrap();
    assert_eq!(after.full_name, "Augusta King");
    assert_eq!(
        (&after.username, &after.phone, &after.image_url, &after.email),
        (&before.username, &before.phone, &before.image_url, &before.email)
    );
    assert!(!after.email_verified && after.roles.is_empty());
    let (b, a) = (before.updated_at.unwrap(), after.updated_at.unwrap());
    assert!((a.seconds, a.nanos) > (b.seconds, b.nanos), "updated_at moves");
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap(), after);

    // Two more, in proto names, normalised as at Register.
    let after = update_me(
        &app,
        &tokens.access_token,
        all_new_values(),
        &["username", "phone"],
    )
    .await
    .unwrap();
    assert_eq!(after.username, "brand.new");
    assert_eq!(after.phone, "+15550109999");
    assert_eq!(after.image_url, before.image_url);
    // The new username logs in.
    app.login("BRAND.NEW", PASSWORD).await.unwrap();

    // A masked field left empty clears it (a username too).
    let cleared = update_me(
        &app,
        &tokens.access_token,
        pb::User::default(),
        &["username", "image_url"],
    )
    .await
    .unwrap();
    assert_eq!(cleared.username, "");
    assert_eq!(cleared.image_url, "");
    assert_eq!(cleared.full_name, "Augusta King");
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap(), cleared);
}

#[tokio::test]
async fn every_bad_field_and_path_is_reported_and_nothing_changes() {
    let app = spawn_app().await;
    let (before, tokens) = full_profile(&app).await;
    let bad = pb::User {
        username: "x".into(),
        full_name: "a\u{7}b".into(),
        phone: "5551234".into(),
        image_url: "ftp://example.com/a.png".into(),
        ..Default::default()
    };
    let status = assert_error(
        update_me(
            &app,
            &tokens.access_token,
            bad.clone(),
            &["username", "full_name", "phone", "image_url"],
        )
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[
            ("user.full_name", "INVALID_CHARACTERS"),
            ("user.image_url", "INVALID_FORMAT"),
            ("user.phone", "INVALID_FORMAT"),
            ("user.username", "TOO_SHORT"),
        ])
    );
    // Unknown paths, read-only fields and JSON names are not fields here.
    for paths in [
        &["email"][..],
        &["full_name", "roles"],
        &["id"],
        &["fullName"],
        &["*"],
    ] {
        let status = assert_error(
            update_me(&app, &tokens.access_token, all_new_values(), paths).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(
            field_reasons(&status),
            pairs(&[("update_mask", "UNKNOWN_FIELD")]),
            "{paths:?}"
        );
    }
    let status = assert_error(
        update_me(&app, &tokens.access_token, all_new_values(), &[]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(field_reasons(&status), pairs(&[("update_mask", "REQUIRED")]));
    // No mask at all, and no user at all.
    let status = assert_error(
        app.client
            .clone()
            .update_me(with_bearer(pb::UpdateMeRequest::default(), &tokens.access_token))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        field_reasons(&status),
        pairs(&[("update_mask", "REQUIRED"), ("user", "REQUIRED")])
    );
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap(), before);
}

#[tokio::test]
async fn a_taken_username_is_already_exists_in_any_letter_case() {
    let app = spawn_app().await;
    let (other, _) = full_profile(&app).await;
    let (me, tokens) = full_profile(&app).await;
    let status = assert_error(
        update_me(
            &app,
            &tokens.access_token,
            pb::User {
                username: other.username.to_uppercase(),
                full_name: "Should Not Stick".into(),
                ..Default::default()
            },
            &["username", "full_name"],
        )
        .await,
        Code::AlreadyExists,
        "USERNAME_TAKEN",
    );
    assert!(!status.message().contains(&other.username));
    assert_eq!(app.get_me(&tokens.access_token).await.unwrap(), me);
    // Its own username in other letters is no conflict.
    let renamed = update_me(
        &app,
        &tokens.access_token,
        pb::User {
            username: me.username.to_uppercase(),
            ..Default::default()
        },
        &["username"],
    )
    .await
    .unwrap();
    assert_eq!(renamed.username, me.username.to_uppercase());
}

#[tokio::test]
async fn update_me_needs_a_live_session() {
    let app = spawn_app().await;
    let (me, tokens) = full_profile(&app).await;
    app.logout(&tokens.refresh_token).await.unwrap();
    assert_error(
        update_me(&app, &tokens.access_token, all_new_values(), &["full_name"]).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    let fresh = app.tokens_of(&me.email).await;
    assert_eq!(
        app.get_me(&fresh.access_token).await.unwrap().full_name,
        me.full_name
    );
}
