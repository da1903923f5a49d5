//! The audit log of admin calls: caller, method and target, never a key
//! or a token.

use authd::pb::auth::v1 as pb;

use super::*;
use crate::helpers::*;

/// Every substring that looks like a service key: `sk_` and 43 base64url
/// characters, not inside a longer word.
fn key_like_strings(text: &str) -> Vec<String> {
    text.match_indices("sk_")
        .filter(|(i, _)| {
            text[..*i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        })
        .filter_map(|(i, _)| text.get(i..i + 3 + 43))
        .filter(|candidate| {
            candidate[3..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn admin_calls_are_audited_with_caller_method_and_target_but_no_key() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn_app().await;
    let name = format!("audited-{}", uuid::Uuid::new_v4().simple());
    let key = app.service_key(&name, &[READ, WRITE]).await;
    let user = app.register(&fresh_email(), PASSWORD).await;
    disable(&app, &key, &user.id).await.unwrap();
    get_user(&app, &key, &user.id).await.unwrap();

    let logs = captured_logs().unwrap();
    for method in ["DisableUser", "GetUser"] {
        assert!(
            logs.lines().any(|line| line.contains("authd::audit")
                && line.contains(&name)
                && line.contains(method)
                && line.contains(&user.id)),
            "no audit line names {name}, {method} and {}",
            user.id
        );
    }
    let body = key.strip_prefix("sk_").unwrap();
    assert!(!logs.contains(body), "the key's secret part is in the log");
    // The scan finds a key where there is one...
    assert_eq!(
        key_like_strings(&format!("x=\"{key}\"")),
        std::slice::from_ref(&key)
    );
    // ...and there is none in any line of the log.
    let leaked = key_like_strings(&logs);
    assert!(leaked.is_empty(), "key material in the log: {leaked:?}");
}

/// Whether an audit line has `field` = `value` (logged quoted or not).
fn has_field(line: &str, field: &str, value: &str) -> bool {
    line.contains(&format!("{field}={value} ")) || line.contains(&format!("{field}=\"{value}\""))
}

/// The audit lines of `method` by the service account `name`.
fn audit_lines(logs: &str, name: &str, method: &str) -> Vec<String> {
    logs.lines()
        .filter(|line| line.contains("authd::audit") && line.contains(name) && line.contains(method))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn introspect_token_calls_are_audited_with_outcome_and_ids_but_no_token() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn_app().await;
    let name = format!("introspector-{}", uuid::Uuid::new_v4().simple());
    let key = app.service_key(&name, &[INTROSPECT]).await;
    let (user, tokens) = app.signed_in_user().await;
    let session_id = session_of(&tokens.access_token);
    let introspect = |token: String| {
        let mut client = app.client.clone();
        let key = key.clone();
        async move {
            client
                .introspect_token(with_bearer(
                    pb::IntrospectTokenRequest { access_token: token },
                    &key,
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(introspect(tokens.access_token.clone()).await.active);
    let garbage = format!("{}x", tokens.access_token);
    assert!(!introspect(garbage.clone()).await.active);

    let logs = captured_logs().unwrap();
    let lines = audit_lines(&logs, &name, "IntrospectToken");
    assert!(
        lines
            .iter()
            .any(|l| has_field(l, "outcome", "active") && l.contains(&user.id) && l.contains(&session_id)),
        "no audit line of the active answer naming its user and session: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| has_field(l, "outcome", "inactive")),
        "no audit line of the inactive answer: {lines:#?}"
    );
    let signature = tokens.access_token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "the access token is in the log");
}

#[tokio::test]
async fn batch_get_users_and_list_users_audit_the_ids_they_read() {
    let Some(_) = captured_logs() else {
        println!("TEST_LOG is set: logs go to stdout, nothing to search");
        return;
    };
    let app = spawn_app().await;
    let name = format!("reader-{}", uuid::Uuid::new_v4().simple());
    let key = app.service_key(&name, &[READ]).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(app.register(&fresh_email(), PASSWORD).await.id);
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let asked = vec![created[2].clone(), unknown.clone(), created[0].clone()];
    assert_eq!(batch_get(&app, &key, &asked).await.unwrap().len(), 2);
    let (page, _) = list(&app, &key, 2, "").await.unwrap();
    assert_eq!(ids(&page), created[..2]);

    let logs = captured_logs().unwrap();
    let batch = audit_lines(&logs, &name, "BatchGetUsers");
    assert!(
        batch
            .iter()
            .any(|l| l.contains(&created[2]) && l.contains(&created[0]) && !l.contains(&created[1])),
        "no BatchGetUsers audit line naming exactly the accounts read: {batch:#?}"
    );
    let listed = audit_lines(&logs, &name, "ListUsers");
    assert!(
        listed
            .iter()
            .any(|l| l.contains(&created[0]) && l.contains(&created[1]) && !l.contains(&created[2])),
        "no ListUsers audit line naming the page's accounts: {listed:#?}"
    );
}
