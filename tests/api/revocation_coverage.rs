//! A verifier hears of every revocation that can concern a token still
//! unexpired, from its first message: it starts its stream one token
//! lifetime in the past (WatchRevocations `since`), and starts over the
//! same way when authd no longer has its cursor. The log behind the stream
//! notices pruned events even when nothing newer exists, and takes its
//! times from one clock, the database's.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use authd::pb::auth::v1::{self as pb, RevocationKind};
use authd_verifier::{OnStale, Revocation, Verifier, VerifierConfig, VerifyError};
use tonic::{Code, Streaming};

use crate::helpers::*;
use crate::verifier::start_verifier;

const WATCH: &str = "revocations.watch";
const WRITE: &str = "users.write";
/// Generous: the suite runs many servers on two cores.
const WAIT: Duration = Duration::from_secs(10);

/// A verifier of `app`'s tokens whose key may watch revocations and do
/// nothing else: an introspection it tried would fail with UNAVAILABLE,
/// so a SESSION_REVOKED it answers came from the stream.
async fn watch_only_verifier(app: &TestApp, name: &str, on_stale: OnStale) -> Verifier {
    let key = app.service_key(name, &[WATCH]).await;
    let config = VerifierConfig::new(&app.config.issuer, &app.config.audience, key).with_on_stale(on_stale);
    start_verifier(app.addr, config).await
}

async fn watch(
    app: &TestApp,
    key: &str,
    request: pb::WatchRevocationsRequest,
) -> Result<Streaming<pb::WatchRevocationsResponse>, tonic::Status> {
    app.admin()
        .watch_revocations(with_bearer(request, key))
        .await
        .map(tonic::Response::into_inner)
}

/// Verifies until the token is refused as revoked (accepted, or refused
/// as stale while the stream is down or catching up, it is tried again);
/// fails if it is not after `WAIT`.
async fn revoked(verifier: &Verifier, token: &str) -> Revocation {
    let started = Instant::now();
    loop {
        let answer = verifier.verify(token).await;
        if let Err(VerifyError::Revoked(revocation)) = answer {
            return revocation;
        }
        assert!(
            started.elapsed() < WAIT,
            "not refused as revoked after {WAIT:?}: {answer:?}, {:?}",
            verifier.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_verifier_started_after_a_logout_refuses_the_still_unexpired_token() {
    let app = spawn_app().await;
    let (_, logged_out) = app.signed_in_user().await;
    let (disabled_user, of_disabled) = app.signed_in_user().await;
    let (_, live) = app.signed_in_user().await;
    app.logout(&logged_out.refresh_token).await.unwrap();
    let writer = app.service_key("disabler", &[WRITE]).await;
    app.admin()
        .disable_user(with_bearer(
            pb::DisableUserRequest {
                user_id: disabled_user.id.clone(),
            },
            &writer,
        ))
        .await
        .unwrap();

    // Then the service (re)starts, both ways of handling staleness.
    for on_stale in [OnStale::FailClosed, OnStale::Introspect] {
        let verifier = watch_only_verifier(&app, "restarted-service", on_stale).await;
        assert!(
            verifier.wait_until_fresh(WAIT).await,
            "{on_stale:?}: never fresh: {:?}",
            verifier.status()
        );
        assert_eq!(
            verifier.verify(&logged_out.access_token).await.map(drop),
            Err(VerifyError::Revoked(Revocation::SessionEnded)),
            "{on_stale:?}: the Logout before the start was delivered"
        );
        assert!(
            matches!(
                verifier.verify(&of_disabled.access_token).await,
                Err(VerifyError::Revoked(_))
            ),
            "{on_stale:?}: the account disabled before the start"
        );
        assert!(
            verifier.verify(&live.access_token).await.is_ok(),
            "{on_stale:?}: an unrevoked token of before the start: {:?}",
            verifier.status()
        );
    }
}

#[tokio::test]
async fn a_verifier_whose_cursor_expired_resyncs_from_a_time_and_refuses_what_it_missed() {
    let a = spawn_app_with(|c| c.revocation_heartbeat = Duration::from_millis(200)).await;
    let key = a.service_key("resyncing-service", &[WATCH]).await;
    // Fail-closed with a key that cannot introspect: only the stream can
    // tell this verifier of a revocation.
    let config = VerifierConfig::new(&a.config.issuer, &a.config.audience, key)
        .with_max_staleness(Duration::from_secs(60));
    let verifier = start_verifier(a.addr, config).await;
    assert!(verifier.wait_until_fresh(WAIT).await);
    let (_, earlier) = a.signed_in_user().await;
    a.logout(&earlier.refresh_token).await.unwrap();
    let known = Instant::now();
    while verifier.cursor() < 2 {
        assert!(known.elapsed() < WAIT, "no cursor: {:?}", verifier.status());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cursor = verifier.cursor();
    let (_, tokens) = a.signed_in_user().await;
    verifier.verify(&tokens.access_token).await.unwrap();

    // The verifier's authd goes away. Meanwhile an event it has not seen
    // passes the retention and is pruned (so its cursor is refused), and
    // the token's session ends at another replica.
    let (url, keys, addr, pem) = (
        a.database_url(),
        a.config.signing_keys.clone(),
        a.addr,
        a.signing_pem.clone(),
    );
    let other = spawn_app_on(&url, |c| c.signing_keys = keys.clone()).await;
    a.stop().await.unwrap();
    let (_, unseen) = other.signed_in_user().await;
    other.logout(&unseen.refresh_token).await.unwrap();
    let pruned = other.prune_revocations_through(i64::MAX).await;
    assert!(pruned >= 2, "{pruned}");
    let pruned_through: i64 = sqlx::query_scalar("SELECT pruned_through FROM revocation_log")
        .fetch_one(&other.db)
        .await
        .unwrap();
    assert!(pruned_through > cursor, "{pruned_through} <= {cursor}");
    other.logout(&tokens.refresh_token).await.unwrap();

    let key_file = scratch_dir("resync-key");
    std::fs::write(&key_file, pem).unwrap();
    let _restarted = spawn_app_on(&url, |c| {
        c.listen = addr;
        c.signing_keys = vec![key_file.clone()];
    })
    .await;
    // CURSOR_EXPIRED, then a stream from one token lifetime ago, which
    // carries the Logout made while the verifier was away.
    assert_eq!(
        revoked(&verifier, &tokens.access_token).await,
        Revocation::SessionEnded
    );
    assert!(verifier.wait_until_fresh(WAIT).await);
    let (_, after) = other.signed_in_user().await;
    assert!(verifier.verify(&after.access_token).await.is_ok());
    if let Some(logs) = captured_logs() {
        assert!(
            logs.contains("authd no longer has the revocation cursor"),
            "the verifier says why it started over"
        );
    }
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test]
async fn pruned_events_after_the_cursor_end_the_stream_even_when_nothing_newer_exists() {
    // Heartbeats every second: this subscriber pauses (300 ms and the
    // prune) with its buffers full, and one that takes nothing for two
    // intervals is cut off as too slow, which is not what this test is about.
    let app = spawn_app_with(|c| c.revocation_heartbeat = Duration::from_secs(1)).await;
    let key = app.service_key("slow-watcher", &[WATCH]).await;
    let (user, _) = app.signed_in_user().await;
    // A backlog of large events (300 sessions each, about 11 kB on the
    // wire): far more than the server's batch, its channel and the
    // connection's flow-control windows hold.
    sqlx::query(
        "SELECT authd_record_revocation('USER_SESSIONS_ENDED', $1::uuid,
                                        ARRAY(SELECT gen_random_uuid() FROM generate_series(1, 300)),
                                        now())
           FROM generate_series(1, 1000)",
    )
    .bind(&user.id)
    .execute(&app.db)
    .await
    .unwrap();
    crate::helpers::number_events(&app.db).await;
    let mut stream = watch(
        &app,
        &key,
        pb::WatchRevocationsRequest {
            after_event_id: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = loop {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message.kind() != RevocationKind::Heartbeat {
            break message;
        }
    };
    assert_eq!(first.event_id, 2, "{first:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every event passes the retention and is pruned, the ones the slow
    // subscriber has not read included; nothing newer is ever written.
    let pruned = app.prune_revocations_through(i64::MAX).await;
    assert_eq!(pruned, 1000);
    // What it gets is contiguous, then CURSOR_EXPIRED: not heartbeats that
    // vouch for a cursor whose successors are gone.
    let mut expected = 3;
    let mut heartbeats = 0;
    loop {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("the stream stalled");
        match message {
            Ok(Some(m)) if m.kind() == RevocationKind::Heartbeat => {
                heartbeats += 1;
                assert!(
                    heartbeats < 10,
                    "heartbeats with cursor {} after its successors were pruned",
                    m.event_id
                );
            }
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
    assert!(
        expected <= 1001,
        "the server had sent everything before the prune: more backlog needed"
    );
}

#[tokio::test]
async fn event_times_come_from_the_database_clock_whatever_the_caller_passes() {
    let app = spawn_app().await;
    let database_now =
        || sqlx::query_scalar::<_, DateTime<Utc>>("SELECT clock_timestamp()").fetch_one(&app.db);
    let before = database_now().await.unwrap();
    // A writer whose clock is three hours behind, then one an hour ahead.
    sqlx::query(
        "SELECT authd_record_revocation('SESSION_ENDED', gen_random_uuid(), ARRAY[gen_random_uuid()],
                                        now() + skew)
           FROM unnest(ARRAY[interval '-3 hours', interval '1 hour']) AS s(skew)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    crate::helpers::number_events(&app.db).await;
    let after = database_now().await.unwrap();
    let times: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT occurred_at FROM (SELECT id, occurred_at FROM revocation_events ORDER BY id DESC LIMIT 2) t
          ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(times.len(), 2);
    for t in &times {
        assert!(
            before <= *t && *t <= after,
            "{t} is not the database's time (between {before} and {after})"
        );
    }
    assert!(times[0] <= times[1], "times do not rise with ids: {times:?}");
}

/// A point in time as the request carries it.
fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap(),
    })
}

/// The database's clock, `offset` from now.
async fn database_time(app: &TestApp, offset: &str) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now() + $1::interval")
        .bind(offset)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn next_message(stream: &mut Streaming<pb::WatchRevocationsResponse>) -> pb::WatchRevocationsResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no message in time")
        .expect("stream failed")
        .expect("stream ended")
}

#[tokio::test]
async fn a_stream_since_a_time_delivers_every_event_from_then_on_then_a_heartbeat() {
    let app = spawn_app().await;
    let key = app.service_key("since-watcher", &[WATCH]).await;
    for _ in 0..3 {
        let (_, tokens) = app.signed_in_user().await;
        app.logout(&tokens.refresh_token).await.unwrap();
    }
    crate::helpers::number_events(&app.db).await;
    // Events 2, 3 and 4, two hours, one hour and ten minutes old.
    sqlx::query(
        "UPDATE revocation_events
            SET occurred_at = now() - CASE id WHEN 2 THEN interval '2 hours'
                                              WHEN 3 THEN interval '1 hour'
                                              ELSE interval '10 minutes' END",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let since = |t| pb::WatchRevocationsRequest {
        after_event_id: 0,
        since: timestamp(t),
        ..Default::default()
    };
    let mut stream = watch(&app, &key, since(database_time(&app, "-90 minutes").await))
        .await
        .unwrap();
    let ids: Vec<(i64, RevocationKind)> = [
        next_message(&mut stream).await,
        next_message(&mut stream).await,
        next_message(&mut stream).await,
    ]
    .iter()
    .map(|m| (m.event_id, m.kind()))
    .collect();
    assert_eq!(
        ids,
        vec![
            (3, RevocationKind::SessionEnded),
            (4, RevocationKind::SessionEnded),
            (4, RevocationKind::Heartbeat),
        ],
        "the events from then on, then the heartbeat that says it caught up"
    );

    // At an event's exact time: that event is included.
    let third: DateTime<Utc> = sqlx::query_scalar("SELECT occurred_at FROM revocation_events WHERE id = 3")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut stream = watch(&app, &key, since(third)).await.unwrap();
    assert_eq!(next_message(&mut stream).await.event_id, 3);

    // Nothing since: the heartbeat at once, and what happens next.
    let mut stream = watch(&app, &key, since(database_time(&app, "-5 minutes").await))
        .await
        .unwrap();
    let first = next_message(&mut stream).await;
    assert_eq!((first.event_id, first.kind()), (4, RevocationKind::Heartbeat));
    let (_, tokens) = app.signed_in_user().await;
    app.logout(&tokens.refresh_token).await.unwrap();
    let event = loop {
        let m = next_message(&mut stream).await;
        if m.kind() != RevocationKind::Heartbeat {
            break m;
        }
    };
    assert_eq!(event.event_id, 5);
}

#[tokio::test]
async fn since_in_the_future_with_a_cursor_or_beyond_the_retention_is_refused() {
    let app = spawn_app().await;
    let key = app.service_key("since-watcher", &[WATCH]).await;
    let future = database_time(&app, "1 minute").await;
    let status = watch(
        &app,
        &key,
        pb::WatchRevocationsRequest {
            after_event_id: 0,
            since: timestamp(future),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), vec!["since"]);

    let recent = database_time(&app, "-1 minute").await;
    let status = watch(
        &app,
        &key,
        pb::WatchRevocationsRequest {
            after_event_id: 1,
            since: timestamp(recent),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), vec!["since"], "one or the other");

    let status = watch(
        &app,
        &key,
        pb::WatchRevocationsRequest {
            after_event_id: 0,
            since: Some(prost_types::Timestamp {
                seconds: recent.timestamp(),
                nanos: -1,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["since"]);

    let beyond = database_time(&app, "-24 hours -1 minute").await;
    assert_error(
        watch(
            &app,
            &key,
            pb::WatchRevocationsRequest {
                after_event_id: 0,
                since: timestamp(beyond),
                ..Default::default()
            },
        )
        .await
        .map(drop),
        Code::FailedPrecondition,
        "CURSOR_EXPIRED",
    );
    let within = database_time(&app, "-23 hours -59 minutes").await;
    watch(
        &app,
        &key,
        pb::WatchRevocationsRequest {
            after_event_id: 0,
            since: timestamp(within),
            ..Default::default()
        },
    )
    .await
    .expect("within the retention");
}

#[tokio::test]
async fn a_verifier_that_authd_cannot_take_back_a_token_lifetime_refuses_older_tokens_as_stale() {
    let app = spawn_app().await;
    let (_, before) = app.signed_in_user().await;
    let key = app.service_key("long-lived-tokens", &[WATCH]).await;
    // Tokens said to live longer than authd's 24 h retention: authd
    // refuses `since`, and the verifier starts from the present.
    let config = VerifierConfig::new(&app.config.issuer, &app.config.audience, key)
        .with_max_token_lifetime(Duration::from_secs(25 * 3600))
        .with_leeway(Duration::ZERO);
    let verifier = start_verifier(app.addr, config).await;
    assert!(verifier.wait_until_fresh(WAIT).await, "{:?}", verifier.status());
    assert_eq!(
        verifier.verify(&before.access_token).await.map(drop),
        Err(VerifyError::Unavailable),
        "issued before the stream started: stale, not valid"
    );
    // A token of a later second is covered.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, after) = app.signed_in_user().await;
    assert!(
        verifier.verify(&after.access_token).await.is_ok(),
        "{:?}",
        verifier.status()
    );
    if let Some(logs) = captured_logs() {
        assert!(
            logs.contains("authd no longer has revocations from one token lifetime ago"),
            "the verifier says why"
        );
    }
}
