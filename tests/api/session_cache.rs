//! The in-memory session cache must never serve an ended session for more
//! than the milliseconds a notification takes.

use std::time::{Duration, Instant};

use authd::pb::auth::v1 as pb;
use tonic::Code;

use crate::helpers::*;

/// Polls GetMe until it answers SESSION_REVOKED; returns how long it took.
async fn time_until_revoked(app: &TestApp, access: &str) -> Duration {
    let started = Instant::now();
    loop {
        match app.get_me(access).await {
            Err(s) if s.code() == Code::Unauthenticated => return started.elapsed(),
            Err(s) => panic!("unexpected {s:?}"),
            Ok(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still served after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_listener(app: &TestApp) {
    for _ in 0..200 {
        let listening: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%')",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if listening {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cache listener never connected");
}

#[tokio::test]
async fn a_session_ended_behind_authds_back_is_dropped_within_milliseconds() {
    let app = spawn_app().await;
    wait_for_listener(&app).await;
    let (_, tokens) = app.signed_in_user().await;
    app.get_me(&tokens.access_token).await.unwrap();
    app.get_me(&tokens.access_token).await.unwrap(); // now cached
    sqlx::query("UPDATE sessions SET revoked_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    let took = time_until_revoked(&app, &tokens.access_token).await;
    println!("revocation seen after {took:?}");
}

#[tokio::test]
async fn a_logout_at_one_replica_reaches_the_cache_of_another() {
    let a = spawn_app().await;
    let b = a.replica().await;
    wait_for_listener(&b).await;
    let (_, tokens) = a.signed_in_user().await;
    b.get_me(&tokens.access_token).await.unwrap();
    b.get_me(&tokens.access_token).await.unwrap();
    a.logout(&tokens.refresh_token).await.unwrap();
    let took = time_until_revoked(&b, &tokens.access_token).await;
    println!("cross-replica revocation seen after {took:?}");
}

#[tokio::test]
async fn account_changes_are_not_served_stale() {
    let app = spawn_app().await;
    wait_for_listener(&app).await;
    let (_, tokens) = app.signed_in_user().await;
    app.get_me(&tokens.access_token).await.unwrap();
    sqlx::query("UPDATE users SET full_name = 'Renamed Elsewhere'")
        .execute(&app.db)
        .await
        .unwrap();
    let started = Instant::now();
    while app.get_me(&tokens.access_token).await.unwrap().full_name != "Renamed Elsewhere" {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stale profile after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn losing_the_notification_connection_turns_the_cache_off() {
    let app = spawn_app().await;
    wait_for_listener(&app).await;
    let (_, tokens) = app.signed_in_user().await;
    app.get_me(&tokens.access_token).await.unwrap();
    // Kill the listener's connection, then end the session while nobody is
    // listening: the notification is lost for good.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("UPDATE sessions SET revoked_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    time_until_revoked(&app, &tokens.access_token).await;
    // And the cache comes back once listening resumes.
    wait_for_listener(&app).await;
    let (_, fresh) = app.signed_in_user().await;
    app.get_me(&fresh.access_token).await.unwrap();
}

/// Cache hits so far, from the replica's Prometheus endpoint.
async fn cache_hits(app: &TestApp) -> f64 {
    let page = crate::metrics::scrape(app, None).await;
    crate::metrics::value(&page.body, "authd_session_cache_hits_total").unwrap_or(0.0)
}

/// The PostgreSQL backend serving the one replica listening on the
/// database now.
async fn listener_backend(app: &TestApp) -> i32 {
    wait_for_listener(app).await;
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// A backend stopped with SIGSTOP, continued when dropped (even when the
/// test fails: the cluster is shared by the whole suite).
struct Frozen(i32);

impl Frozen {
    fn new(pid: i32) -> Self {
        signal(pid, "STOP");
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[tokio::test]
async fn a_stalled_listener_silences_the_cache_within_the_bound() {
    let b = spawn_app_with(crate::metrics::with_metrics).await;
    let frozen_pid = listener_backend(&b).await;
    let a = b.replica().await;
    crate::admin::wait_for_listeners(&a, 2).await;

    let (_, tokens) = a.signed_in_user().await;
    // Wait until B's cache answers (its first beat heard), then cache it.
    let started = Instant::now();
    let before = loop {
        let before = cache_hits(&b).await;
        b.get_me(&tokens.access_token).await.unwrap();
        b.get_me(&tokens.access_token).await.unwrap();
        if cache_hits(&b).await > before {
            break before;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B's cache never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(cache_hits(&b).await > before);

    // B's listener hangs without closing its socket; A ends the session.
    let frozen = Frozen::new(frozen_pid);
    a.logout(&tokens.refresh_token).await.unwrap();
    let logged_out = Instant::now();
    let took = loop {
        match b.get_me(&tokens.access_token).await {
            Err(s) if s.code() == Code::Unauthenticated => break logged_out.elapsed(),
            Err(s) => panic!("unexpected {s:?}"),
            Ok(_) => {}
        }
        assert!(
            logged_out.elapsed() < Duration::from_millis(1_500),
            "B still served the revoked session after 1.5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("stalled listener: revocation honoured after {took:?}");
    // The lapse is reported: counted, the gauge down, a WARN in the log.
    let reported = Instant::now();
    loop {
        let page = crate::metrics::scrape(&b, None).await;
        let lost = crate::metrics::value(&page.body, "authd_change_listener_losses_total").unwrap_or(0.0);
        let on = crate::metrics::value(&page.body, "authd_session_cache_enabled");
        if lost >= 1.0 && on == Some(0.0) {
            break;
        }
        assert!(
            reported.elapsed() < Duration::from_secs(2),
            "the stall was not reported:\n{}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(logs) = captured_logs() {
        assert!(logs.contains("change listener has not proven it keeps up; caches off"));
    }
    // While stalled B answers from the database, correctly and uncached.
    let (_, other) = a.signed_in_user().await;
    let hits = cache_hits(&b).await;
    b.get_me(&other.access_token).await.unwrap();
    b.get_me(&other.access_token).await.unwrap();
    assert_eq!(cache_hits(&b).await, hits, "the cache answered while unproven");

    // Once the backend resumes, the beats are heard and the cache is back.
    drop(frozen);
    let resumed = Instant::now();
    loop {
        let hits = cache_hits(&b).await;
        b.get_me(&other.access_token).await.unwrap();
        b.get_me(&other.access_token).await.unwrap();
        if cache_hits(&b).await > hits {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(5),
            "the cache never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.get_me(&tokens.access_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn with_the_cache_switched_off_every_check_reads_the_database() {
    let app = spawn_app_with(|c| {
        crate::metrics::with_metrics(c);
        c.session_cache = false;
    })
    .await;
    let (_, tokens) = app.signed_in_user().await;
    for _ in 0..5 {
        app.get_me(&tokens.access_token).await.unwrap();
    }
    let page = crate::metrics::scrape(&app, None).await;
    assert_eq!(
        crate::metrics::value(&page.body, "authd_session_cache_hits_total"),
        Some(0.0)
    );
    assert_eq!(
        crate::metrics::value(&page.body, "authd_session_cache_enabled"),
        Some(0.0)
    );
    assert!(crate::metrics::value(&page.body, "authd_session_cache_misses_total").unwrap() >= 5.0);
}

/// A flood that holds every pooled connection (here: calls waiting on a
/// locked row) does not switch the caches off: the liveness beat does not
/// need the pool.
#[tokio::test]
async fn a_flood_that_holds_every_pooled_connection_leaves_the_caches_on() {
    let app = spawn_app_with(|c| {
        crate::metrics::with_metrics(c);
        c.db_max_connections = 2;
        c.request_timeout = Duration::from_secs(10);
    })
    .await;
    crate::metrics::caches_on(&app).await;
    let losses =
        |page: &str| crate::metrics::value(page, "authd_change_listener_losses_total").unwrap_or(0.0);
    let (user, tokens) = app.signed_in_user().await;
    let before = losses(&crate::metrics::scrape(&app, None).await.body);

    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
        .bind(&user.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let (app_client, access) = (app.client.clone(), tokens.access_token.clone());
            tokio::spawn(async move {
                let mut client = app_client;
                client
                    .change_password(with_bearer(
                        pb::ChangePasswordRequest {
                            current_password: PASSWORD.into(),
                            new_password: format!("a completely new passphrase {i}"),
                        },
                        &access,
                    ))
                    .await
            })
        })
        .collect();
    // Longer than the bound within which the beat must be heard.
    tokio::time::sleep(authd::coherence::freshness::BOUND * 3).await;
    lock.rollback().await.unwrap();
    for call in calls {
        let _ = call.await;
    }

    let after = losses(&crate::metrics::scrape(&app, None).await.body);
    assert_eq!(after, before, "the caches went off while the pool was busy");
}

/// A flood that keeps every worker of the request runtime busy leaves the
/// caches on: the listener and its beat run on a thread of their own. Here
/// the runtime (the test's, single-threaded, which also serves authd) does
/// nothing at all for three bounds; before the listener had its own thread
/// its beat could not run meanwhile and the caches went off.
#[tokio::test]
async fn a_runtime_kept_busy_leaves_the_caches_on() {
    let app = spawn_app_with(crate::metrics::with_metrics).await;
    crate::metrics::caches_on(&app).await;
    let losses =
        |page: &str| crate::metrics::value(page, "authd_change_listener_losses_total").unwrap_or(0.0);
    let before = losses(&crate::metrics::scrape(&app, None).await.body);

    std::thread::sleep(authd::coherence::freshness::BOUND * 3);
    // The beat's report runs at its next tick.
    tokio::time::sleep(authd::coherence::freshness::BEAT * 3).await;

    let page = crate::metrics::scrape(&app, None).await.body;
    assert_eq!(
        losses(&page),
        before,
        "the caches went off while the runtime was busy"
    );
    assert_eq!(
        crate::metrics::value(&page, "authd_session_cache_enabled"),
        Some(1.0)
    );
}
