//! AdminService.WatchRevocations: every kind of revocation arrives as an
//! event, in order, from whichever replica made it; a subscriber resumes
//! from its cursor and misses nothing; a rolled-back change emits nothing.

use std::time::Duration;

use authd::pb::auth::v1::{self as pb, RevocationKind};
use tokio::time::Instant;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

use crate::admin::wait_for_listeners;
use crate::helpers::*;
use crate::recovery::{app_with_mail, requested_reset, reset};

const WATCH: &str = "revocations.watch";
const WRITE: &str = "users.write";
/// Generous: the suite runs many servers on two cores.
const EVENT_WAIT: Duration = Duration::from_secs(10);

async fn watch(
    app: &TestApp,
    key: &str,
    after: i64,
) -> Result<Streaming<pb::WatchRevocationsResponse>, tonic::Status> {
    app.admin()
        .watch_revocations(with_bearer(
            pb::WatchRevocationsRequest {
                after_event_id: after,
                since: None,
                ..Default::default()
            },
            key,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn watcher(app: &TestApp) -> (String, Streaming<pb::WatchRevocationsResponse>) {
    let key = app.service_key("watcher", &[WATCH]).await;
    let stream = watch(app, &key, 0).await.unwrap();
    (key, stream)
}

/// The next event that is not a heartbeat.
async fn next_event(stream: &mut Streaming<pb::WatchRevocationsResponse>) -> pb::WatchRevocationsResponse {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("no revocation event in time")
            .expect("stream failed")
            .expect("stream ended");
        if message.kind() != RevocationKind::Heartbeat {
            return message;
        }
    }
}

/// The next event is one this stream's contract does not define (a
/// password change, say, which Shared Signals receivers hear of): it comes
/// as a USER_SESSIONS_ENDED naming no session, right after `previous`.
async fn assert_other_event(stream: &mut Streaming<pb::WatchRevocationsResponse>, previous: i64) {
    let other = next_event(stream).await;
    assert_eq!(other.event_id, previous + 1);
    assert_eq!(other.kind(), RevocationKind::UserSessionsEnded, "{other:?}");
    assert!(
        other.session_ids.is_empty() && other.session_id.is_empty(),
        "{other:?}"
    );
}

/// Asserts that nothing but heartbeats arrives for `quiet`.
async fn assert_no_event(stream: &mut Streaming<pb::WatchRevocationsResponse>, quiet: Duration) {
    let deadline = Instant::now() + quiet;
    while let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await {
        let message = message.unwrap().expect("stream ended");
        assert_eq!(
            message.kind(),
            RevocationKind::Heartbeat,
            "unexpected {message:?}"
        );
    }
}

/// The event ended exactly these sessions, in any order.
#[track_caller]
fn assert_same_sessions(ended: &[String], mut expected: Vec<String>) {
    let mut ended = ended.to_vec();
    ended.sort();
    expected.sort();
    assert_eq!(ended, expected);
}

#[tokio::test]
async fn logout_refresh_reuse_and_change_password_each_emit_their_event() {
    let app = spawn_app().await;
    let (_key, mut stream) = watcher(&app).await;

    // Logout: SESSION_ENDED naming the session.
    let (user, tokens) = app.signed_in_user().await;
    app.logout(&tokens.refresh_token).await.unwrap();
    let first = next_event(&mut stream).await;
    assert_eq!(first.kind(), RevocationKind::SessionEnded);
    assert_eq!(first.user_id, user.id);
    assert_eq!(first.session_id, session_of(&tokens.access_token));
    assert_eq!(first.session_ids, vec![first.session_id.clone()]);
    assert!(first.occurred_at.is_some());
    // A repeated Logout ends nothing and emits nothing.
    app.logout(&tokens.refresh_token).await.unwrap();

    // Refresh-token reuse: the session it belongs to.
    let reused = app.tokens_of(&user.email).await;
    let mut client = app.client.clone();
    client
        .refresh(pb::RefreshRequest {
            refresh_token: reused.refresh_token.clone(),
        })
        .await
        .unwrap();
    let replay = client
        .refresh(pb::RefreshRequest {
            refresh_token: reused.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&replay), "REFRESH_TOKEN_REUSED");
    let second = next_event(&mut stream).await;
    assert_eq!(second.event_id, first.event_id + 1, "ids are consecutive");
    assert_eq!(second.kind(), RevocationKind::SessionEnded);
    assert_eq!(second.session_id, session_of(&reused.access_token));

    // ChangePassword: the user's other sessions, not the caller's.
    let keep = app.tokens_of(&user.email).await;
    let other_a = app.tokens_of(&user.email).await;
    let other_b = app.tokens_of(&user.email).await;
    app.change_password(&keep.access_token, PASSWORD, "another long passphrase 2026")
        .await
        .unwrap();
    let third = next_event(&mut stream).await;
    assert_eq!(third.event_id, second.event_id + 1);
    assert_eq!(third.kind(), RevocationKind::UserSessionsEnded);
    assert_eq!(third.user_id, user.id);
    assert!(third.session_id.is_empty());
    assert_same_sessions(
        &third.session_ids,
        vec![
            session_of(&other_a.access_token),
            session_of(&other_b.access_token),
        ],
    );
    assert_other_event(&mut stream, third.event_id).await;
    assert_no_event(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn reset_password_disable_user_and_revoke_user_sessions_emit_their_events() {
    let (app, smtp) = app_with_mail(|_| {}).await;
    let (_key, mut stream) = watcher(&app).await;
    let admin_key = app.service_key("admin", &[WRITE]).await;

    // ResetPassword ends every session.
    let (email, token) = requested_reset(&app, &smtp).await;
    let tokens = app.tokens_of(&email).await;
    reset(&app, &token, "a brand new passphrase for recovery")
        .await
        .unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind(), RevocationKind::UserSessionsEnded);
    assert_eq!(event.session_ids, vec![session_of(&tokens.access_token)]);
    assert_other_event(&mut stream, event.event_id).await;

    // DisableUser: the sessions, then the account.
    let (user, tokens) = app.signed_in_user().await;
    crate::admin::disable(&app, &admin_key, &user.id).await.unwrap();
    let mut admin = app.admin();
    let sessions = next_event(&mut stream).await;
    assert_eq!(sessions.kind(), RevocationKind::UserSessionsEnded);
    assert_eq!(sessions.session_ids, vec![session_of(&tokens.access_token)]);
    let disabled = next_event(&mut stream).await;
    assert_eq!(disabled.kind(), RevocationKind::UserDisabled);
    assert_eq!(disabled.user_id, user.id);
    assert_eq!(disabled.event_id, sessions.event_id + 1);
    // Disabling again changes nothing and emits nothing.
    admin
        .disable_user(with_bearer(
            pb::DisableUserRequest {
                user_id: user.id.clone(),
            },
            &admin_key,
        ))
        .await
        .unwrap();
    assert_no_event(&mut stream, Duration::from_millis(300)).await;

    // RevokeUserSessions: all of them, one event.
    let (user, first) = app.signed_in_user().await;
    let second = app.tokens_of(&user.email).await;
    let answer = admin
        .revoke_user_sessions(with_bearer(
            pb::RevokeUserSessionsRequest {
                user_id: user.id.clone(),
            },
            &admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.revoked_count, 2);
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind(), RevocationKind::UserSessionsEnded);
    assert_same_sessions(
        &event.session_ids,
        vec![session_of(&first.access_token), session_of(&second.access_token)],
    );
    // Nothing live left: nothing ended, no event.
    admin
        .revoke_user_sessions(with_bearer(
            pb::RevokeUserSessionsRequest { user_id: user.id },
            &admin_key,
        ))
        .await
        .unwrap();
    assert_no_event(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_resumed_subscriber_gets_exactly_the_missed_events_in_order() {
    let app = spawn_app().await;
    let (key, mut stream) = watcher(&app).await;
    let (_, tokens) = app.signed_in_user().await;
    app.logout(&tokens.refresh_token).await.unwrap();
    let seen = next_event(&mut stream).await;
    drop(stream);

    let mut missed = Vec::new();
    for _ in 0..3 {
        let (_, tokens) = app.signed_in_user().await;
        app.logout(&tokens.refresh_token).await.unwrap();
        missed.push(session_of(&tokens.access_token));
    }
    let mut resumed = watch(&app, &key, seen.event_id).await.unwrap();
    for (offset, session) in (1..).zip(&missed) {
        let event = next_event(&mut resumed).await;
        assert_eq!(event.event_id, seen.event_id + offset);
        assert_eq!(&event.session_id, session);
    }
    assert_no_event(&mut resumed, Duration::from_millis(300)).await;

    // From 0 means from now: none of the past.
    let mut fresh = watch(&app, &key, 0).await.unwrap();
    assert_no_event(&mut fresh, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_rolled_back_change_emits_nothing_and_leaves_no_gap() {
    let app = spawn_app().await;
    let (_key, mut stream) = watcher(&app).await;
    let (user, tokens) = app.signed_in_user().await;

    // The statement Logout runs, inside a transaction that rolls back.
    crate::helpers::number_events(&app.db).await;
    let head: i64 = sqlx::query_scalar("SELECT last_event_id FROM revocation_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let _pending: i64 = sqlx::query_scalar(
        "WITH ended AS (UPDATE sessions SET revoked_at = now(), revoked_reason = 'test'
                         WHERE user_id = $1::uuid AND revoked_at IS NULL RETURNING id, user_id)
         SELECT authd_record_revocation('SESSION_ENDED', user_id, ARRAY[id], now()) FROM ended",
    )
    .bind(&user.id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_no_event(&mut stream, Duration::from_millis(500)).await;
    app.get_me(&tokens.access_token)
        .await
        .expect("the session is still live");

    app.logout(&tokens.refresh_token).await.unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(
        event.event_id,
        head + 1,
        "the rolled-back event took no id: no gap"
    );
    assert_eq!(event.session_id, session_of(&tokens.access_token));
}

#[tokio::test]
async fn a_change_on_one_replica_reaches_a_subscriber_of_another() {
    let a = spawn_app().await;
    let b = a.replica().await;
    wait_for_listeners(&a, 2).await;
    let (_key, mut at_b) = watcher(&b).await;
    let (_, tokens) = a.signed_in_user().await;
    let logged_out = Instant::now();
    a.logout(&tokens.refresh_token).await.unwrap();
    let event = next_event(&mut at_b).await;
    assert_eq!(event.session_id, session_of(&tokens.access_token));
    // Pushed by the notification, not found by the one-second poll.
    assert!(
        logged_out.elapsed() < Duration::from_millis(900),
        "took {:?}",
        logged_out.elapsed()
    );
}

#[tokio::test]
async fn cursors_outside_the_log_are_refused_with_cursor_expired() {
    let app = spawn_app().await;
    let key = app.service_key("watcher", &[WATCH]).await;
    for _ in 0..3 {
        let (_, tokens) = app.signed_in_user().await;
        app.logout(&tokens.refresh_token).await.unwrap();
    }
    // From the future (another deployment, a restored database).
    assert_error(
        watch(&app, &key, 1_000).await.map(drop),
        Code::FailedPrecondition,
        "CURSOR_EXPIRED",
    );
    // Negative: a malformed request.
    let status = watch(&app, &key, -1).await.map(drop).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["after_event_id"]);

    // Event ids start at 2: 1 stands for "before anything", a cursor that
    // resumes (0 would mean "from now").
    watch(&app, &key, 1)
        .await
        .expect("cursor 1 is resumable on a fresh log");
    // Past the retention: the first two events (2 and 3) are pruned.
    let pruned = app.prune_revocations_through(3).await;
    assert_eq!(pruned, 2);
    assert_error(
        watch(&app, &key, 2).await.map(drop),
        Code::FailedPrecondition,
        "CURSOR_EXPIRED",
    );
    let mut from_three = watch(&app, &key, 3).await.expect("everything after 3 is kept");
    assert_eq!(next_event(&mut from_three).await.event_id, 4);
}

#[tokio::test]
async fn the_stream_needs_the_watch_scope() {
    let app = spawn_app().await;
    let reader = app.service_key("reader", &["users.read", "users.write"]).await;
    assert_error(
        watch(&app, &reader, 0).await.map(drop),
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    let (_, tokens) = app.signed_in_user().await;
    assert_error(
        watch(&app, &tokens.access_token, 0).await.map(drop),
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    let status = app
        .admin()
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "TOKEN_MISSING");
}

#[tokio::test]
async fn a_quiet_stream_sends_heartbeats_with_its_cursor() {
    let app = spawn_app_with(|c| c.revocation_heartbeat = Duration::from_millis(200)).await;
    let (_, tokens) = app.signed_in_user().await;
    app.logout(&tokens.refresh_token).await.unwrap();
    let (_key, mut stream) = watcher(&app).await;
    // The first message, at once: the cursor.
    let first = tokio::time::timeout(Duration::from_millis(500), stream.message())
        .await
        .expect("the cursor comes at once")
        .unwrap()
        .unwrap();
    assert_eq!(first.kind(), RevocationKind::Heartbeat);
    assert_eq!(first.event_id, 2);
    let started = Instant::now();
    for _ in 0..3 {
        let beat = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(beat.kind(), RevocationKind::Heartbeat);
        assert_eq!(beat.event_id, 2, "the cursor: the last event before subscribing");
        assert!(beat.user_id.is_empty() && beat.session_ids.is_empty());
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_catches_up_from_the_log_in_order() {
    let app = spawn_app().await;
    let (_key, mut stream) = watcher(&app).await;
    let (user, _) = app.signed_in_user().await;
    // Far more than the server's channel and batch hold, while the
    // subscriber reads nothing.
    sqlx::query(
        "SELECT authd_record_revocation('USER_SESSIONS_ENDED', $1::uuid, ARRAY[gen_random_uuid()], now())
           FROM generate_series(1, 1500)",
    )
    .bind(&user.id)
    .execute(&app.db)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for expected in 2..=1501 {
        let event = next_event(&mut stream).await;
        assert_eq!(event.event_id, expected);
    }
}

#[tokio::test]
async fn shutdown_ends_the_stream_with_unavailable_and_does_not_wait_for_it() {
    let app = spawn_app_with(|c| c.shutdown_drain = Duration::from_secs(20)).await;
    let (_key, mut stream) = watcher(&app).await;
    let started = Instant::now();
    let stopping = tokio::spawn(app.stop());
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.kind() == RevocationKind::Heartbeat => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream did not end");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "UNAVAILABLE");
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_lifecycle_rpcs_emit_their_events() {
    let app = spawn_app().await;
    let (_key, mut stream) = watcher(&app).await;
    let (user, current) = app.signed_in_user().await;
    let other = app.tokens_of(&user.email).await;
    let third = app.tokens_of(&user.email).await;

    // RevokeSession: that one session.
    app.client
        .clone()
        .revoke_session(with_bearer(
            pb::RevokeSessionRequest {
                session_id: session_of(&other.access_token),
            },
            &current.access_token,
        ))
        .await
        .unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind(), RevocationKind::SessionEnded);
    assert_eq!(event.session_id, session_of(&other.access_token));

    // RevokeOtherSessions: all but the caller's, as one event.
    let fourth = app.tokens_of(&user.email).await;
    let answer = app
        .client
        .clone()
        .revoke_other_sessions(with_bearer(
            pb::RevokeOtherSessionsRequest {},
            &current.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.revoked_count, 2);
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind(), RevocationKind::UserSessionsEnded);
    assert_same_sessions(
        &event.session_ids,
        vec![session_of(&third.access_token), session_of(&fourth.access_token)],
    );

    // DeleteMe: the account, by id only.
    app.client
        .clone()
        .delete_me(with_bearer(
            pb::DeleteMeRequest {
                current_password: PASSWORD.into(),
            },
            &current.access_token,
        ))
        .await
        .unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind(), RevocationKind::UserDeleted);
    assert_eq!(event.user_id, user.id);
    assert!(event.session_ids.is_empty());
    assert_no_event(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn events_pruned_before_a_slow_subscriber_read_them_end_its_stream_with_cursor_expired() {
    let app = spawn_app().await;
    let key = app.service_key("watcher", &[WATCH]).await;
    let (user, _) = app.signed_in_user().await;
    // A day's backlog of large events (300 sessions each, about 11 kB on
    // the wire): far more than the server's batch, its channel and the
    // connection's flow-control windows hold.
    sqlx::query(
        "SELECT authd_record_revocation('USER_SESSIONS_ENDED', $1::uuid,
                                        ARRAY(SELECT gen_random_uuid() FROM generate_series(1, 300)),
                                        now() - interval '23 hours')
           FROM generate_series(1, 1000)",
    )
    .bind(&user.id)
    .execute(&app.db)
    .await
    .unwrap();
    crate::helpers::number_events(&app.db).await;
    // A resumable cursor; the subscriber catches up slowly.
    let mut stream = watch(&app, &key, 1).await.unwrap();
    assert_eq!(next_event(&mut stream).await.event_id, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile the retention passes for events it has not read yet.
    let pruned = app.prune_revocations_through(601).await;
    assert_eq!(pruned, 600);
    // What it gets is contiguous, then CURSOR_EXPIRED (so it knows to fall
    // back): never a silent jump over what was pruned.
    let mut expected = 3;
    loop {
        assert!(
            expected <= 601,
            "the server had read everything before the prune: more backlog needed"
        );
        let message = tokio::time::timeout(EVENT_WAIT, stream.message())
            .await
            .expect("the stream stalled");
        match message {
            Ok(Some(m)) if m.kind() == RevocationKind::Heartbeat => {}
            Ok(Some(m)) => {
                assert_eq!(m.event_id, expected, "events pruned before delivery were skipped");
                expected += 1;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(reason(&status), "CURSOR_EXPIRED");
                break;
            }
        }
    }
}

/// Records `n` events for `user_id` in one transaction, each naming
/// `sessions` sessions.
async fn record_events(app: &TestApp, user_id: &str, n: i32, sessions: i32) {
    sqlx::query(
        "SELECT authd_record_revocation('USER_SESSIONS_ENDED', $1::uuid,
                                        ARRAY(SELECT gen_random_uuid() FROM generate_series(1, $3)),
                                        now())
           FROM generate_series(1, $2)",
    )
    .bind(user_id)
    .bind(n)
    .bind(sessions)
    .execute(&app.db)
    .await
    .unwrap();
}

async fn counter(app: &TestApp, name: &str) -> f64 {
    let page = crate::metrics::scrape(app, None).await;
    crate::metrics::value(&page.body, name).unwrap_or_else(|| panic!("no {name} in\n{}", page.body))
}

#[tokio::test]
async fn each_event_is_read_once_per_replica_however_many_subscribe() {
    const EVENTS: i32 = 5;
    let app = spawn_app_with(crate::metrics::with_metrics).await;
    let key = app.service_key("watcher", &[WATCH]).await;
    let (user, _) = app.signed_in_user().await;
    let mut reads = Vec::new();
    for subscribers in [1, 20] {
        let mut streams = Vec::new();
        for _ in 0..subscribers {
            streams.push(watch(&app, &key, 0).await.unwrap());
        }
        let before = counter(&app, "authd_revocation_feed_reads_total").await;
        // One at a time, each delivered everywhere before the next: one
        // read per event, however the wake-ups fall.
        for _ in 0..EVENTS {
            record_events(&app, &user.id, 1, 1).await;
            for stream in &mut streams {
                next_event(stream).await;
            }
        }
        reads.push(counter(&app, "authd_revocation_feed_reads_total").await - before);
    }
    assert_eq!(
        reads,
        [f64::from(EVENTS); 2],
        "reads with 1 and with 20 subscribers"
    );
}

#[tokio::test]
async fn a_subscriber_that_lags_beyond_the_buffer_catches_up_from_the_log_and_slows_nobody() {
    // Far more than the replica's buffer (1024 events), the subscriber's
    // channel and the connection's flow-control windows (2 MB for the
    // stream, at about 3.7 kB per event) hold.
    const CHUNK: i32 = 250;
    const CHUNKS: i32 = 12;
    let app = spawn_app_with(crate::metrics::with_metrics).await;
    let key = app.service_key("watcher", &[WATCH]).await;
    let (user, _) = app.signed_in_user().await;
    let mut slow = watch(&app, &key, 0).await.unwrap();
    let mut fast = watch(&app, &key, 0).await.unwrap();
    let first = next_heartbeat_cursor(&mut fast).await + 1;
    let mut expected = first;
    for _ in 0..CHUNKS {
        record_events(&app, &user.id, CHUNK, 100).await;
        for _ in 0..CHUNK {
            assert_eq!(next_event(&mut fast).await.event_id, expected);
            expected += 1;
        }
    }
    // The fast subscriber got everything from memory while the slow one
    // read nothing.
    assert_eq!(counter(&app, "authd_revocation_catch_ups_total").await, 0.0);
    for expected in first..first + i64::from(CHUNK * CHUNKS) {
        assert_eq!(next_event(&mut slow).await.event_id, expected);
    }
    assert!(counter(&app, "authd_revocation_catch_ups_total").await >= 1.0);
}

/// The cursor of the stream's first heartbeat (sent once it caught up).
async fn next_heartbeat_cursor(stream: &mut Streaming<pb::WatchRevocationsResponse>) -> i64 {
    let message = tokio::time::timeout(EVENT_WAIT, stream.message())
        .await
        .expect("no heartbeat in time")
        .unwrap()
        .unwrap();
    assert_eq!(message.kind(), RevocationKind::Heartbeat);
    message.event_id
}

#[tokio::test]
async fn a_log_the_replica_cannot_read_ends_the_streams_instead_of_vouching_with_heartbeats() {
    let app = spawn_app_with(|c| c.revocation_heartbeat = Duration::from_millis(100)).await;
    let (_key, mut stream) = watcher(&app).await;
    let (user, _) = app.signed_in_user().await;
    // An event this build cannot decode (as a newer build might write):
    // the replica's reader fails on it.
    for (table, check) in [
        ("revocation_events", "revocation_events_kind_check"),
        ("revocation_pending", "revocation_pending_kind_check"),
    ] {
        sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT {check}"))
            .execute(&app.db)
            .await
            .unwrap();
    }
    sqlx::query("SELECT authd_record_revocation('FROM_THE_FUTURE', $1::uuid, '{}', now())")
        .bind(&user.id)
        .execute(&app.db)
        .await
        .unwrap();
    let end = tokio::time::timeout(EVENT_WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.kind() == RevocationKind::Heartbeat => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream kept sending heartbeats for a log nobody could read");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_cut_off_with_its_cursor_and_a_reader_is_not() {
    let app = spawn_app_with(|c| {
        crate::metrics::with_metrics(c);
        c.revocation_heartbeat = Duration::from_millis(500);
    })
    .await;
    let key = app.service_key("watcher", &[WATCH]).await;
    let (user, _) = app.signed_in_user().await;
    // A client whose HTTP/2 window is gRPC's usual 64 KiB (tonic's 2 MiB
    // would only take longer to fill).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_lazy();
    let mut idle = authd::pb::auth::v1::admin_service_client::AdminServiceClient::new(channel)
        .watch_revocations(with_bearer(pb::WatchRevocationsRequest::default(), &key))
        .await
        .unwrap()
        .into_inner();
    let start = idle.message().await.unwrap().unwrap().event_id;
    let reader = watch(&app, &key, 0).await.unwrap();
    const EVENTS: i64 = 2000;
    let reading = tokio::spawn(async move {
        let mut reader = reader;
        let mut last = start;
        while last < start + EVENTS {
            let message = reader
                .message()
                .await
                .expect("the reader is never cut off")
                .unwrap();
            if message.kind() != RevocationKind::Heartbeat {
                assert_eq!(message.event_id, last + 1);
                last = message.event_id;
            }
        }
        reader
    });

    // Far more than the idle subscriber's HTTP/2 window and authd's
    // channel hold (each event names 20 sessions).
    sqlx::query(
        "SELECT authd_record_revocation('USER_SESSIONS_ENDED', $1::uuid,
                ARRAY(SELECT gen_random_uuid() FROM generate_series(1, 20)), now())
           FROM generate_series(1, $2)",
    )
    .bind(&user.id)
    .bind(EVENTS)
    .execute(&app.db)
    .await
    .unwrap();
    let produced = Instant::now();
    let _reader = tokio::time::timeout(EVENT_WAIT, reading)
        .await
        .expect("the reader got every event")
        .unwrap();

    // The idle subscriber's task ends (the reader's stream stays open).
    loop {
        let page = crate::metrics::scrape(&app, None).await.body;
        let cut_off = crate::metrics::value(&page, "authd_revocation_streams_cut_off_total");
        let open = crate::metrics::value(&page, "authd_revocation_streams");
        if cut_off == Some(1.0) && open == Some(1.0) {
            break;
        }
        assert!(
            produced.elapsed() < EVENT_WAIT,
            "the idle subscriber was not cut off: cut off {cut_off:?}, open {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "idle subscriber cut off {:?} after the events were produced",
        produced.elapsed()
    );

    // What it gets when it reads at last: contiguous events, then a status
    // naming the last one, from which it resumes.
    let mut last = start;
    let status = loop {
        match idle.message().await {
            Ok(Some(m)) if m.kind() == RevocationKind::Heartbeat => assert_eq!(m.event_id, last),
            Ok(Some(m)) => {
                assert_eq!(m.event_id, last + 1);
                last = m.event_id;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert!(last < start + EVENTS, "it was sent everything: {last}");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "SUBSCRIBER_TOO_SLOW", "{status:?}");
    assert_eq!(retry_delay(&status), Duration::ZERO, "reconnect at once");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("after_event_id"),
        Some(&last.to_string()),
        "{status:?}"
    );
    let mut resumed = watch(&app, &key, last).await.unwrap();
    assert_eq!(next_event(&mut resumed).await.event_id, last + 1);
}

/// The statement Logout runs, for `user`'s live sessions, inside `tx`.
async fn end_sessions_in(tx: &mut sqlx::PgConnection, user: &pb::User) {
    sqlx::query(
        "WITH ended AS (UPDATE sessions SET revoked_at = now(), revoked_reason = 'test'
                         WHERE user_id = $1::uuid AND revoked_at IS NULL RETURNING id, user_id)
         SELECT authd_record_revocation('SESSION_ENDED', user_id, ARRAY[id], now()) FROM ended",
    )
    .bind(&user.id)
    .fetch_one(tx)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_revocation_does_not_wait_for_another_accounts_uncommitted_one() {
    let app = spawn_app().await;
    let (_key, mut stream) = watcher(&app).await;
    let (slow, slow_tokens) = app.signed_in_user().await;
    let (_, tokens) = app.signed_in_user().await;
    // One account's sessions end in a transaction that has not committed
    // yet (a slow DeleteMe, a long admin change).
    let mut open = app.db.begin().await.unwrap();
    end_sessions_in(&mut open, &slow).await;

    // Another account's Logout neither waits for it nor waits to be seen.
    tokio::time::timeout(Duration::from_secs(5), app.logout(&tokens.refresh_token))
        .await
        .expect("Logout waited for another account's open transaction")
        .unwrap();
    let first = next_event(&mut stream).await;
    assert_eq!(first.session_id, session_of(&tokens.access_token));

    // The open one commits and takes the next id: no gap, no reordering
    // of what a subscriber already holds.
    open.commit().await.unwrap();
    let second = next_event(&mut stream).await;
    assert_eq!(second.event_id, first.event_id + 1);
    assert_eq!(second.session_id, session_of(&slow_tokens.access_token));
}

#[tokio::test]
async fn concurrent_revocations_on_two_replicas_reach_a_subscriber_once_each_with_gapless_ids() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.database_url(), |c| {
        c.signing_keys = a.config.signing_keys.clone()
    })
    .await;
    let (_key, mut stream) = watcher(&a).await;
    let mut ended = std::collections::BTreeSet::new();
    let mut pairs = Vec::new();
    for _ in 0..40 {
        let (_, tokens) = a.signed_in_user().await;
        ended.insert(session_of(&tokens.access_token));
        pairs.push(tokens);
    }
    // Forty Logouts at once, half through each replica.
    let logouts = pairs.iter().enumerate().map(|(i, tokens)| {
        let mut client = if i % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        let refresh_token = tokens.refresh_token.clone();
        async move { client.logout(pb::LogoutRequest { refresh_token }).await }
    });
    for outcome in crate::register::futures_join_all(logouts).await {
        outcome.unwrap();
    }
    let first = next_event(&mut stream).await;
    let mut seen = vec![first.session_id.clone()];
    let mut last = first.event_id;
    while seen.len() < ended.len() {
        let event = next_event(&mut stream).await;
        assert_eq!(event.event_id, last + 1, "ids without gaps, in order");
        last = event.event_id;
        seen.push(event.session_id);
    }
    let seen_set: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen_set.len(), seen.len(), "each session once");
    assert_eq!(seen_set, ended);
    assert_no_event(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn events_recorded_while_no_replica_ran_are_numbered_when_one_starts() {
    let first = spawn_app().await;
    let url = first.database_url();
    let (user, _) = first.signed_in_user().await;
    crate::helpers::number_events(&first.db).await;
    let head: i64 = sqlx::query_scalar("SELECT last_event_id FROM revocation_log")
        .fetch_one(&first.db)
        .await
        .unwrap();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    first.stop().await.unwrap();
    // Written with no replica running (an operator's SQL, a replica killed
    // right after the commit): the events wait, unnumbered.
    let mut conn = db.acquire().await.unwrap();
    end_sessions_in(&mut conn, &user).await;
    drop(conn);
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM revocation_pending")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(pending, 1);

    // A replica that starts numbers them without being told.
    let second = spawn_app_on(&url, |_| {}).await;
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let now_head: i64 = sqlx::query_scalar("SELECT last_event_id FROM revocation_log")
            .fetch_one(&second.db)
            .await
            .unwrap();
        if now_head == head + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "still unnumbered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (kind, user_id): (String, uuid::Uuid) =
        sqlx::query_as("SELECT kind, user_id FROM revocation_events WHERE id = $1")
            .bind(head + 1)
            .fetch_one(&second.db)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), user_id.to_string()),
        ("SESSION_ENDED", user.id.clone())
    );
}

#[tokio::test]
async fn an_event_whose_notification_was_lost_is_numbered_by_the_sweep() {
    let app = spawn_app().await;
    let (_key, mut stream) = watcher(&app).await;
    let (user, _) = app.signed_in_user().await;
    // Written as authd_record_event does, but without its notification
    // (a listener that was reconnecting when it was sent).
    sqlx::query(
        "INSERT INTO revocation_pending (kind, user_id, session_ids, txn)
         VALUES ('USER_SESSIONS_ENDED', $1::uuid, '{}', pg_current_xact_id()::text::bigint)",
    )
    .bind(&user.id)
    .execute(&app.db)
    .await
    .unwrap();
    // The sweep runs every second: within about that, the event is
    // numbered and reaches the subscriber.
    let started = Instant::now();
    let event = next_event(&mut stream).await;
    assert_eq!(event.user_id, user.id);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "numbered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stopping_replica_numbers_what_its_last_calls_recorded() {
    let app = spawn_app().await;
    let url = app.database_url();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let (user, _) = app.signed_in_user().await;
    crate::helpers::number_events(&db).await;
    // A change committed as the replica stops, whose notification it will
    // not be there to hear (nor the next sweep, a second away).
    sqlx::query(
        "INSERT INTO revocation_pending (kind, user_id, session_ids, txn)
         VALUES ('USER_SESSIONS_ENDED', $1::uuid, '{}', pg_current_xact_id()::text::bigint)",
    )
    .bind(&user.id)
    .execute(&db)
    .await
    .unwrap();
    app.stop().await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM revocation_pending")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(pending, 0, "the stopped replica left its last events without ids");
    let kind: String = sqlx::query_scalar("SELECT kind FROM revocation_events ORDER BY id DESC LIMIT 1")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(kind, "USER_SESSIONS_ENDED");
}
