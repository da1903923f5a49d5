//! Every event kind reaches a push and a poll receiver, in order, once.

use std::collections::HashSet;

use authd::pb::auth::v1 as pb;
use serde_json::{Value, json};

use super::*;
use crate::factors::add_totp;
use crate::helpers::{TestApp, session_of, with_bearer};
use crate::lifecycle::{
    CHANGE_SUBJECT, app_with_mail, change_email, delete_me, link_token, nth_mail, verify,
};

use crate::helpers::PASSWORD;
const NEW_PASSWORD: &str = "another long passphrase for later";

/// What the changes below become, in order.
fn expected() -> Vec<&'static str> {
    vec![
        SESSION_REVOKED,   // Logout
        SESSION_REVOKED,   // ChangePassword ends the other session …
        CREDENTIAL_CHANGE, // … and says the password changed
        IDENTIFIER_CHANGED,
        TOKEN_CLAIMS_CHANGE,
        SESSION_REVOKED, // DisableUser ends the live session …
        ACCOUNT_DISABLED,
        ACCOUNT_ENABLED,
        CREDENTIAL_CHANGE, // ConfirmTotp: an app added
        ACCOUNT_PURGED,    // DeleteMe
    ]
}

/// Makes every change authd reports, for one account; returns its id and
/// the ids of the sessions that were ended, in order.
async fn every_change(app: &TestApp, smtp: &crate::smtp::SmtpServer) -> (String, Vec<String>) {
    let email = crate::helpers::fresh_email();
    let user = app.register(&email, PASSWORD).await;
    let mut ended = Vec::new();
    // Logout: one session ended.
    let first = app.tokens_of(&email).await;
    ended.push(session_of(&first.access_token));
    app.logout(&first.refresh_token).await.unwrap();
    // ChangePassword from one session ends the other.
    let kept = app.tokens_of(&email).await;
    let other = app.tokens_of(&email).await;
    ended.push(session_of(&other.access_token));
    let kept = app
        .change_password(&kept.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .unwrap();
    // A confirmed address change.
    let new_email = crate::helpers::fresh_email();
    change_email(app, &kept.access_token, &new_email, NEW_PASSWORD)
        .await
        .unwrap();
    let token = link_token(&nth_mail(smtp, &new_email, CHANGE_SUBJECT, 1).await);
    verify(app, &token).await.unwrap();
    // Roles, disable, enable, through AdminService.
    let admin = admin_key(app).await;
    app.admin()
        .set_user_roles(with_bearer(
            pb::SetUserRolesRequest {
                user_id: user.id.clone(),
                roles: vec!["editor".into()],
            },
            &admin,
        ))
        .await
        .unwrap();
    ended.push(session_of(&kept.access_token));
    disable(app, &admin, &user.id).await;
    app.admin()
        .enable_user(with_bearer(
            pb::EnableUserRequest {
                user_id: user.id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap();
    // A second factor, then the account deleted by its owner (the new
    // factor just proved the session).
    let again = app
        .login(&new_email, NEW_PASSWORD)
        .await
        .unwrap()
        .tokens
        .expect("tokens");
    add_totp(app, &again.access_token).await;
    let proven = app.refresh(&again.refresh_token).await.unwrap();
    delete_me(app, &proven.access_token, NEW_PASSWORD).await.unwrap();
    (user.id, ended)
}

#[tokio::test]
async fn every_event_kind_reaches_a_push_and_a_poll_receiver_in_order() {
    let (app, smtp) = app_with_mail(|c| {
        c.ssf_allow_private = true;
    })
    .await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let Some(pushed) = receiver(&app, "receiver-a", "Bearer rcv-a").await else {
        return;
    };
    let push = push_stream(&app, &key, &pushed, "Bearer rcv-a").await;
    assert_eq!(push["aud"], "receiver-a");
    assert_eq!(push["iss"], ISSUER);
    assert_eq!(push["delivery"]["authorization_header"], "(set)", "{push}");
    let polled = create_stream(&app, &key, &json!({"delivery": {"method": POLL}})).await;
    assert!(
        polled["delivery"]["endpoint_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{ISSUER}/ssf/poll/")),
        "{polled}"
    );

    let (user_id, ended) = every_change(&app, &smtp).await;
    let expected = expected();

    let received = pushed.wait_for(expected.len(), WAIT).await;
    assert_eq!(event_types(&received), expected, "{received:#?}");
    check_sets(&received, &user_id, &ended);

    let Some(run) = poll_until(&app, &key, &polled, "receiver-a", expected.len() as u32).await else {
        return;
    };
    assert_eq!(run.exit_code, 0, "{}", run.stderr);
    let polled_sets: Vec<Value> = run.received().into_iter().cloned().collect();
    assert_eq!(event_types(&polled_sets), expected, "{polled_sets:#?}");
    check_sets(&polled_sets, &user_id, &ended);
    assert!(run.rejected().is_empty(), "{:?}", run.rejected());

    // Everything was acknowledged: the stream's cursor is at the log's end.
    let (cursor, acked): (i64, Vec<String>) =
        sqlx::query_as("SELECT cursor_event, acked FROM ssf_streams WHERE id = $1::uuid")
            .bind(polled["stream_id"].as_str().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    let head: i64 = sqlx::query_scalar("SELECT last_event_id FROM revocation_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((cursor, acked), (head, vec![]));
    // Pushed exactly once each.
    assert_eq!(pushed.received().len(), expected.len());
}

/// Subjects, `jti`s and `txn`s as the contract says.
fn check_sets(sets: &[Value], user_id: &str, ended: &[String]) {
    let jtis: HashSet<&str> = sets.iter().map(|s| s["jti"].as_str().unwrap()).collect();
    assert_eq!(jtis.len(), sets.len(), "jti unique");
    let mut sessions = Vec::new();
    for set in sets {
        let sub_id = &set["sub_id"];
        let user = if sub_id["format"] == "complex" {
            sessions.push(sub_id["session"]["id"].as_str().unwrap().to_owned());
            &sub_id["user"]
        } else {
            sub_id
        };
        assert_eq!(user["format"], "iss_sub", "{set}");
        assert_eq!(user["iss"], ISSUER);
        assert_eq!(user["sub"], user_id);
    }
    assert_eq!(sessions, ended);
    // ChangePassword's two SETs are one change.
    assert_eq!(sets[1]["txn"], sets[2]["txn"]);
    assert!(sets[1]["txn"].is_string());
    assert_ne!(sets[0]["txn"], sets[1]["txn"]);
    // DisableUser's too.
    assert_eq!(sets[5]["txn"], sets[6]["txn"]);
}
