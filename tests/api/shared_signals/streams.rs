//! Stream management: who may see which stream, what a configuration may
//! hold, the SSRF guard at configuration time, status and verification.

use serde_json::{Value, json};

use super::*;
use crate::helpers::{PASSWORD, fresh_email, spawn_app, spawn_app_with};
use crate::http1::Request;

const SECRET: &str = "Bearer receiver-secret-4c1d";

fn text(response: &HttpResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

#[tokio::test]
async fn metadata_and_a_streams_life_create_read_patch_replace_delete() {
    let app = spawn_app().await;

    // The transmitter's metadata needs no credential.
    let meta = Request::new("GET", "/.well-known/ssf-configuration")
        .send(app.addr)
        .await;
    assert_eq!(meta.status, 200, "{}", text(&meta));
    let meta = meta.json();
    assert_eq!(meta["spec_version"], "1_0");
    assert_eq!(meta["issuer"], ISSUER);
    assert_eq!(meta["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(meta["delivery_methods_supported"], json!([PUSH, POLL]));
    assert_eq!(meta["configuration_endpoint"], format!("{ISSUER}/ssf/streams"));
    assert_eq!(meta["status_endpoint"], format!("{ISSUER}/ssf/status"));
    assert_eq!(meta["verification_endpoint"], format!("{ISSUER}/ssf/verify"));

    let key = app.service_key("receiver-a", &["events.receive"]).await;
    // A host name passes configuration whatever it resolves to; nothing is
    // pending, so nothing is sent.
    let created = ssf(
        &app,
        "POST",
        "/ssf/streams",
        &key,
        Some(
            &json!({"delivery": {"method": PUSH, "endpoint_url": "https://receiver.example/events",
                                  "authorization_header": SECRET},
                     "description": "the first"}),
        ),
    )
    .await;
    assert_eq!(created.status, 201, "{}", text(&created));
    assert!(!text(&created).contains("receiver-secret"), "{}", text(&created));
    let created = created.json();
    let id = created["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(created["iss"], ISSUER);
    assert_eq!(created["aud"], "receiver-a");
    assert_eq!(created["delivery"]["method"], PUSH);
    assert_eq!(
        created["delivery"]["endpoint_url"],
        "https://receiver.example/events"
    );
    assert_eq!(created["delivery"]["authorization_header"], "(set)");
    assert_eq!(created["description"], "the first");
    assert_eq!(created["events_requested"], json!([]));
    // Asking for nothing is asking for everything authd sends.
    assert_eq!(created["events_delivered"], created["events_supported"]);
    assert!(
        created["events_supported"].as_array().unwrap().len() >= 7,
        "{created}"
    );

    let one = ssf(&app, "GET", &format!("/ssf/streams?stream_id={id}"), &key, None).await;
    assert_eq!(one.status, 200, "{}", text(&one));
    assert!(!text(&one).contains("receiver-secret"));
    assert_eq!(one.json(), created);

    let poll = create_stream(&app, &key, &json!({"delivery": {"method": POLL}})).await;
    let list = ssf(&app, "GET", "/ssf/streams", &key, None).await;
    assert_eq!(list.status, 200, "{}", text(&list));
    assert!(!text(&list).contains("receiver-secret"));
    assert_eq!(list.json(), json!([created, poll]));

    // PATCH: what is named replaces, the rest stays; an event type authd
    // does not send is kept as asked but never delivered.
    let unknown = "https://schemas.example/event-type/not-one-of-authds";
    let patched = ssf(
        &app,
        "PATCH",
        "/ssf/streams",
        &key,
        Some(&json!({"stream_id": id, "events_requested": [SESSION_REVOKED, unknown, ACCOUNT_DISABLED]})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", text(&patched));
    assert!(!text(&patched).contains("receiver-secret"));
    let patched = patched.json();
    assert_eq!(
        patched["events_requested"],
        json!([SESSION_REVOKED, unknown, ACCOUNT_DISABLED])
    );
    assert_eq!(
        patched["events_delivered"],
        json!([SESSION_REVOKED, ACCOUNT_DISABLED])
    );
    assert_eq!(patched["delivery"], created["delivery"]);
    assert_eq!(patched["description"], "the first");
    // The Authorization value survived the PATCH (sealed again, same value).
    let (sealed,): (Option<Vec<u8>>,) =
        sqlx::query_as("SELECT authorization_sealed FROM ssf_streams WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let sealed = sealed.expect("still set");
    assert!(
        !String::from_utf8_lossy(&sealed).contains("receiver-secret"),
        "sealed, not stored in clear"
    );

    // PUT replaces the whole configuration: a poll stream now, no
    // Authorization, everything asked for.
    let replaced = ssf(
        &app,
        "PUT",
        "/ssf/streams",
        &key,
        Some(&json!({"stream_id": id, "delivery": {"method": POLL}})),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", text(&replaced));
    let replaced = replaced.json();
    assert_eq!(replaced["delivery"]["method"], POLL);
    assert_eq!(
        replaced["delivery"]["endpoint_url"],
        format!("{ISSUER}/ssf/poll/{id}")
    );
    assert!(
        replaced["delivery"].get("authorization_header").is_none(),
        "{replaced}"
    );
    assert!(replaced.get("description").is_none(), "{replaced}");
    assert_eq!(replaced["events_delivered"], replaced["events_supported"]);

    let deleted = ssf(
        &app,
        "DELETE",
        &format!("/ssf/streams?stream_id={id}"),
        &key,
        None,
    )
    .await;
    assert_eq!(deleted.status, 204, "{}", text(&deleted));
    let gone = ssf(&app, "GET", &format!("/ssf/streams?stream_id={id}"), &key, None).await;
    assert_eq!(gone.status, 404, "{}", text(&gone));
    assert_eq!(gone.json()["error"], "not_found");
    let again = ssf(
        &app,
        "DELETE",
        &format!("/ssf/streams?stream_id={id}"),
        &key,
        None,
    )
    .await;
    assert_eq!(again.status, 404);
    let list = ssf(&app, "GET", "/ssf/streams", &key, None).await;
    assert_eq!(list.json(), json!([poll]));
}

#[tokio::test]
async fn a_stream_is_its_owners_alone_and_only_receivers_may_ask() {
    let app = spawn_app().await;
    let a = app.service_key("receiver-a", &["events.receive"]).await;
    let b = app.service_key("receiver-b", &["events.receive"]).await;
    let push = create_stream(
        &app,
        &a,
        &json!({"delivery": {"method": PUSH, "endpoint_url": "https://a.example/ev",
                             "authorization_header": SECRET},
                "description": "a's"}),
    )
    .await;
    let poll = create_stream(&app, &a, &json!({"delivery": {"method": POLL}})).await;

    for stream in [&push, &poll] {
        let id = stream["stream_id"].as_str().unwrap();
        let attempts: Vec<(&str, String, Option<Value>)> = vec![
            ("GET", format!("/ssf/streams?stream_id={id}"), None),
            (
                "PATCH",
                "/ssf/streams".into(),
                Some(json!({"stream_id": id, "description": "b's now"})),
            ),
            (
                "PUT",
                "/ssf/streams".into(),
                Some(json!({"stream_id": id, "delivery": {"method": POLL}})),
            ),
            ("DELETE", format!("/ssf/streams?stream_id={id}"), None),
            ("GET", format!("/ssf/status?stream_id={id}"), None),
            (
                "POST",
                "/ssf/status".into(),
                Some(json!({"stream_id": id, "status": "disabled"})),
            ),
            (
                "POST",
                "/ssf/verify".into(),
                Some(json!({"stream_id": id, "state": "b"})),
            ),
            (
                "POST",
                format!("/ssf/poll/{id}"),
                Some(json!({"returnImmediately": true})),
            ),
        ];
        for (method, path, body) in &attempts {
            let response = ssf(&app, method, path, &b, body.as_ref()).await;
            assert_eq!(response.status, 404, "B {method} {path}: {}", text(&response));
            assert!(!text(&response).contains("receiver-secret"));
        }
        // Untouched, and no message was queued for it.
        let still = ssf(&app, "GET", &format!("/ssf/streams?stream_id={id}"), &a, None).await;
        assert_eq!(still.status, 200);
        assert_eq!(&still.json(), stream);
        let status = ssf(&app, "GET", &format!("/ssf/status?stream_id={id}"), &a, None).await;
        assert_eq!(status.json()["status"], "enabled");
        let (messages,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM ssf_stream_messages WHERE stream_id = $1::uuid")
                .bind(id)
                .fetch_one(&app.db)
                .await
                .unwrap();
        assert_eq!(messages, 0);
    }
    let list = ssf(&app, "GET", "/ssf/streams", &b, None).await;
    assert_eq!(list.json(), json!([]));

    // A service without events.receive.
    let other = app.service_key("not-a-receiver", &["users.read"]).await;
    for (method, path) in [
        ("GET", "/ssf/streams".to_owned()),
        (
            "GET",
            format!("/ssf/status?stream_id={}", poll["stream_id"].as_str().unwrap()),
        ),
        (
            "POST",
            format!("/ssf/poll/{}", poll["stream_id"].as_str().unwrap()),
        ),
    ] {
        let response = ssf(&app, method, &path, &other, Some(&json!({}))).await;
        assert_eq!(response.status, 403, "{method} {path}: {}", text(&response));
        assert_eq!(response.json()["error"], "insufficient_scope");
    }
    let created = ssf(
        &app,
        "POST",
        "/ssf/streams",
        &other,
        Some(&json!({"delivery": {"method": POLL}})),
    )
    .await;
    assert_eq!(created.status, 403);

    // No credential, a made-up one, a user's access token.
    let anonymous = Request::new("GET", "/ssf/streams").send(app.addr).await;
    assert_eq!(anonymous.status, 401, "{}", text(&anonymous));
    let garbage = ssf(&app, "GET", "/ssf/streams", "not-a-key-at-all", None).await;
    assert_eq!(garbage.status, 401, "{}", text(&garbage));
    let forged = ssf(&app, "GET", "/ssf/streams", &format!("{a}x"), None).await;
    assert_eq!(forged.status, 401, "{}", text(&forged));
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let user = app.tokens_of(&email).await;
    let as_user = ssf(&app, "GET", "/ssf/streams", &user.access_token, None).await;
    assert_eq!(as_user.status, 401, "{}", text(&as_user));
    let basic = Request::new("GET", "/ssf/streams")
        .header("authorization", crate::http1::basic("receiver-a", &a))
        .send(app.addr)
        .await;
    assert_eq!(basic.status, 401, "{}", text(&basic));
}

async fn set_status(app: &TestApp, key: &str, id: &str, status: &str) {
    let response = ssf(
        app,
        "POST",
        "/ssf/status",
        key,
        Some(&json!({"stream_id": id, "status": status, "reason": format!("test: {status}")})),
    )
    .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["status"], status);
    let read = ssf(app, "GET", &format!("/ssf/status?stream_id={id}"), key, None).await;
    assert_eq!(
        read.json(),
        json!({"stream_id": id, "status": status, "reason": format!("test: {status}")})
    );
}

fn status_of(set: &Value) -> &str {
    set["events"][STREAM_UPDATED]["status"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_paused_push_stream_holds_its_events_and_sends_them_in_order_once_enabled() {
    let app = spawn_app_with(|c| c.ssf_allow_private = true).await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let admin = admin_key(&app).await;
    let Some(pushed) = receiver(&app, "receiver-a", "Bearer rcv").await else {
        return;
    };
    let stream = create_stream(
        &app,
        &key,
        &json!({"events_requested": account_events(),
                "delivery": {"method": PUSH, "endpoint_url": pushed.url, "authorization_header": "Bearer rcv"}}),
    )
    .await;
    let id = stream["stream_id"].as_str().unwrap();

    // Delivered while enabled.
    let before = disable_and_enable(&app, &admin).await;
    let got = pushed.wait_for(2, WAIT).await;
    assert_eq!(event_types(&got), [ACCOUNT_DISABLED, ACCOUNT_ENABLED], "{got:#?}");

    set_status(&app, &key, id, "paused").await;
    let got = pushed.wait_for(3, WAIT).await;
    assert_eq!(event_type(&got[2]), STREAM_UPDATED, "{got:#?}");
    assert_eq!(status_of(&got[2]), "paused");
    assert_eq!(
        got[2]["sub_id"],
        json!({"format": "opaque", "id": id}),
        "{got:#?}"
    );
    let (paused_at, ..) = stream_row(&app, id).await;

    let held = disable_and_enable(&app, &admin).await;
    // The stream's own SETs still go out while paused; by the time this
    // one arrives, nothing of the account's went with it.
    verify(&app, &key, id, "while-paused").await;
    let got = pushed.wait_for(4, WAIT).await;
    assert_eq!(
        event_types(&got),
        [ACCOUNT_DISABLED, ACCOUNT_ENABLED, STREAM_UPDATED, VERIFICATION],
        "{got:#?}"
    );
    assert_eq!(got[3]["events"][VERIFICATION]["state"], "while-paused");
    assert_eq!(
        stream_row(&app, id).await.0,
        paused_at,
        "the cursor waits while paused"
    );

    set_status(&app, &key, id, "enabled").await;
    let got = pushed.wait_for(7, WAIT).await;
    assert_eq!(
        event_types(&got),
        [
            ACCOUNT_DISABLED,
            ACCOUNT_ENABLED,
            STREAM_UPDATED,
            VERIFICATION,
            STREAM_UPDATED,
            ACCOUNT_DISABLED,
            ACCOUNT_ENABLED
        ],
        "{got:#?}"
    );
    assert_eq!(status_of(&got[4]), "enabled");
    let subjects: Vec<Option<&str>> = got.iter().map(subject).collect();
    assert_eq!(
        subjects,
        [
            Some(before.as_str()),
            Some(before.as_str()),
            None,
            None,
            None,
            Some(held.as_str()),
            Some(held.as_str())
        ]
    );
    assert!(pushed.rejected().is_empty(), "{:?}", pushed.rejected());
    // Nothing twice: a last verification closes the record.
    verify(&app, &key, id, "end").await;
    let got = pushed.wait_for(8, WAIT).await;
    assert_eq!(got.len(), 8, "{got:#?}");
    assert_eq!(got[7]["events"][VERIFICATION]["state"], "end");
}

#[tokio::test]
async fn a_disabled_stream_drops_what_happens_meanwhile_and_restarts_from_now() {
    let app = spawn_app_with(|c| c.ssf_allow_private = true).await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let admin = admin_key(&app).await;
    let Some(pushed) = receiver(&app, "receiver-a", "Bearer rcv").await else {
        return;
    };
    let stream = create_stream(
        &app,
        &key,
        &json!({"events_requested": account_events(),
                "delivery": {"method": PUSH, "endpoint_url": pushed.url, "authorization_header": "Bearer rcv"}}),
    )
    .await;
    let id = stream["stream_id"].as_str().unwrap();
    let poll = create_stream(
        &app,
        &key,
        &json!({"events_requested": account_events(), "delivery": {"method": POLL}}),
    )
    .await;
    let poll_id = poll["stream_id"].as_str().unwrap();

    set_status(&app, &key, id, "disabled").await;
    set_status(&app, &key, poll_id, "disabled").await;
    let got = pushed.wait_for(1, WAIT).await;
    assert_eq!(event_types(&got), [STREAM_UPDATED], "{got:#?}");
    assert_eq!(status_of(&got[0]), "disabled");

    let dropped = disable_and_enable(&app, &admin).await;
    // A disabled poll stream answers with nothing at all.
    let polled = ssf(
        &app,
        "POST",
        &format!("/ssf/poll/{poll_id}"),
        &key,
        Some(&json!({"returnImmediately": true})),
    )
    .await;
    assert_eq!(polled.status, 200);
    assert_eq!(polled.json()["sets"], json!({}));

    set_status(&app, &key, id, "enabled").await;
    set_status(&app, &key, poll_id, "enabled").await;
    let after = disable_and_enable(&app, &admin).await;
    let got = pushed.wait_for(4, WAIT).await;
    assert_eq!(
        event_types(&got),
        [STREAM_UPDATED, STREAM_UPDATED, ACCOUNT_DISABLED, ACCOUNT_ENABLED],
        "{got:#?}"
    );
    assert_eq!(status_of(&got[1]), "enabled");
    for set in &got[2..] {
        assert_eq!(subject(set), Some(after.as_str()), "{set}");
    }
    assert!(got.iter().all(|s| subject(s) != Some(dropped.as_str())));

    // The poll receiver: its two stream-updated SETs, then only `after`'s.
    let Some(run) = poll_until(&app, &key, &poll, "receiver-a", 4).await else {
        return;
    };
    assert_eq!(run.exit_code, 0, "{}", run.stderr);
    let polled: Vec<Value> = run.received().into_iter().cloned().collect();
    assert_eq!(
        event_types(&polled),
        [STREAM_UPDATED, STREAM_UPDATED, ACCOUNT_DISABLED, ACCOUNT_ENABLED],
        "{polled:#?}"
    );
    for set in &polled[2..] {
        assert_eq!(subject(set), Some(after.as_str()), "{set}");
    }
}

#[tokio::test]
async fn a_verification_set_carries_the_state_asked_for_by_push_and_by_poll() {
    let app = spawn_app_with(|c| c.ssf_allow_private = true).await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let Some(pushed) = PushReceiver::spawn_expecting(
        &jwks_url(app.addr),
        ISSUER,
        "receiver-a",
        Some("Bearer rcv"),
        Some("push-state-7"),
    )
    .await
    else {
        return;
    };
    let push = push_stream(&app, &key, &pushed, "Bearer rcv").await;
    let push_id = push["stream_id"].as_str().unwrap();
    verify(&app, &key, push_id, "push-state-7").await;
    let got = pushed.wait_for(1, WAIT).await;
    assert_eq!(event_types(&got), [VERIFICATION], "{got:#?}");
    assert_eq!(got[0]["events"][VERIFICATION]["state"], "push-state-7");
    assert_eq!(got[0]["sub_id"], json!({"format": "opaque", "id": push_id}));
    assert!(pushed.rejected().is_empty(), "{:?}", pushed.rejected());

    let poll = create_stream(&app, &key, &json!({"delivery": {"method": POLL}})).await;
    let poll_id = poll["stream_id"].as_str().unwrap();
    verify(&app, &key, poll_id, "poll-state-9").await;
    let url = poll["delivery"]["endpoint_url"]
        .as_str()
        .unwrap()
        .replace(ISSUER, &base(app.addr));
    let authorization = format!("Bearer {key}");
    let jwks = jwks_url(app.addr);
    let Some(run) = run_poll(&Poll {
        url: &url,
        authorization: &authorization,
        issuer: ISSUER,
        audience: "receiver-a",
        jwks_url: &jwks,
        max_events: 10,
        return_immediately: false,
        until: Some(1),
        timeout: WAIT,
        expect_state: Some("poll-state-9"),
    })
    .await
    else {
        return;
    };
    assert_eq!(run.exit_code, 0, "{}", run.stderr);
    assert!(run.rejected().is_empty(), "{:?}", run.rejected());
    let received = run.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0]["events"][VERIFICATION]["state"], "poll-state-9");
    // Acknowledged: the message is gone, the next poll has nothing.
    let next = ssf(
        &app,
        "POST",
        &format!("/ssf/poll/{poll_id}"),
        &key,
        Some(&json!({"returnImmediately": true})),
    )
    .await;
    assert_eq!(next.json()["sets"], json!({}), "{}", text(&next));

    // A verification without a state, and one with a state too long.
    let bare = ssf(
        &app,
        "POST",
        "/ssf/verify",
        &key,
        Some(&json!({"stream_id": poll_id})),
    )
    .await;
    assert_eq!(bare.status, 204);
    let long = ssf(
        &app,
        "POST",
        "/ssf/verify",
        &key,
        Some(&json!({"stream_id": poll_id, "state": "s".repeat(1025)})),
    )
    .await;
    assert_eq!(long.status, 400, "{}", text(&long));
    assert!(text(&long).contains("state"));
}
