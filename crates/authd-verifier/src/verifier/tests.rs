//! The verifier's decisions without authd: keys, revocations and stream
//! state set by hand, the time passed in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::test_shared as shared;
use super::*;
use crate::test_keys::{TestKey, claims_json};
use crate::watcher::apply_message;

const T: i64 = 1_900_000_000;

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

fn event(
    id: i64,
    kind: pb::RevocationKind,
    user: &str,
    sessions: &[&str],
    secs: i64,
) -> pb::WatchRevocationsResponse {
    pb::WatchRevocationsResponse {
        event_id: id,
        kind: kind.into(),
        user_id: user.into(),
        session_id: String::new(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        }),
        session_ids: sessions.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn heartbeat(id: i64) -> pb::WatchRevocationsResponse {
    event(id, pb::RevocationKind::Heartbeat, "", &[], T)
}

#[tokio::test]
async fn a_valid_token_passes_once_the_stream_has_started_and_fails_closed_when_it_goes_quiet() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let token = key.sign(&claims_json(T + 100, 900));
    let started = Instant::now();
    assert_eq!(
        s.verify(&token, at(T + 100), started).await,
        Err(VerifyError::Unavailable),
        "no stream yet"
    );
    s.health.started_from_present(at(T), started);
    let claims = s.verify(&token, at(T + 100), started).await.unwrap();
    assert_eq!(claims.user_id(), "user-1");
    let later = started + Duration::from_secs(11);
    assert_eq!(
        s.verify(&token, at(T + 111), later).await,
        Err(VerifyError::Unavailable),
        "silent for longer than max_staleness"
    );
}

#[tokio::test]
async fn events_refuse_the_tokens_they_concern() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.started_from_present(at(T), now);
    let token = key.sign(&claims_json(T + 100, 900));
    assert!(s.verify(&token, at(T + 100), now).await.is_ok());
    apply_message(&s, &heartbeat(41), at(T + 101));
    assert_eq!(s.health.cursor(), 41, "a heartbeat carries the cursor");
    apply_message(
        &s,
        &event(
            42,
            pb::RevocationKind::SessionEnded,
            "user-1",
            &["session-1"],
            T + 102,
        ),
        at(T + 102),
    );
    assert_eq!(s.health.cursor(), 42);
    assert_eq!(
        s.verify(&token, at(T + 103), now).await,
        Err(VerifyError::Revoked(Revocation::SessionEnded)),
        "remembered as verified, refused all the same"
    );

    let other_session = key.sign(&{
        let mut c = claims_json(T + 100, 900);
        c["sid"] = "session-2".into();
        c
    });
    assert!(s.verify(&other_session, at(T + 103), now).await.is_ok());
    apply_message(
        &s,
        &event(43, pb::RevocationKind::UserDisabled, "user-1", &[], T + 104),
        at(T + 104),
    );
    assert_eq!(
        s.verify(&other_session, at(T + 105), now).await,
        Err(VerifyError::Revoked(Revocation::UserDisabled))
    );
    let issued_after_enabling = key.sign(&{
        let mut c = claims_json(T + 200, 900);
        c["sid"] = "session-3".into();
        c
    });
    assert!(s.verify(&issued_after_enabling, at(T + 200), now).await.is_ok());
    apply_message(
        &s,
        &event(44, pb::RevocationKind::UserDeleted, "user-1", &[], T + 201),
        at(T + 201),
    );
    assert_eq!(
        s.verify(&issued_after_enabling, at(T + 202), now).await,
        Err(VerifyError::Revoked(Revocation::UserDeleted))
    );
}

#[tokio::test]
async fn expiry_is_checked_on_every_call_and_comes_before_revocation() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.started_from_present(at(T), now);
    let token = key.sign(&claims_json(T + 100, 900));
    assert!(s.verify(&token, at(T + 100), now).await.is_ok());
    assert_eq!(
        s.verify(&token, at(T + 1006), now).await,
        Err(VerifyError::Expired),
        "remembered, then expired"
    );
}

#[tokio::test]
async fn a_gap_in_event_ids_restarts_coverage_and_duplicates_are_ignored() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.started_from_present(at(T), now);
    apply_message(&s, &heartbeat(10), at(T + 1));
    apply_message(
        &s,
        &event(11, pb::RevocationKind::SessionEnded, "u", &["a"], T + 2),
        at(T + 2),
    );
    apply_message(
        &s,
        &event(11, pb::RevocationKind::SessionEnded, "u", &["b"], T + 2),
        at(T + 2),
    );
    assert_eq!(read(&s.revocations).len(), 1, "event 11 applied once");
    assert_eq!(s.health.covered_since(), Some(at(T)));
    apply_message(
        &s,
        &event(13, pb::RevocationKind::SessionEnded, "u", &["c"], T + 3),
        at(T + 3),
    );
    assert_eq!(s.health.cursor(), 13);
    assert_eq!(s.health.covered_since(), Some(at(T + 3)), "event 12 was lost");
    apply_message(&s, &heartbeat(15), at(T + 4));
    assert_eq!(s.health.cursor(), 15);
    assert_eq!(s.health.covered_since(), Some(at(T + 4)), "14 and 15 were lost");
}

#[tokio::test]
async fn an_unknown_kind_ends_the_sessions_it_names_and_restarts_coverage() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    s.health.started_from_present(at(T), Instant::now());
    let mut unknown = event(1, pb::RevocationKind::SessionEnded, "u", &["s"], T + 1);
    unknown.kind = 99;
    apply_message(&s, &unknown, at(T + 1));
    assert_eq!(read(&s.revocations).len(), 1);
    assert_eq!(s.health.covered_since(), Some(at(T + 1)));
}

#[tokio::test]
async fn introspection_that_cannot_reach_authd_refuses_with_unavailable() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::Introspect);
    let token = key.sign(&claims_json(T + 100, 900));
    // Stale (never started): IntrospectToken is tried, and fails.
    assert_eq!(
        s.verify(&token, at(T + 100), Instant::now()).await,
        Err(VerifyError::Unavailable)
    );
    // Fresh, but the token predates the stream's start: asked too.
    s.health.started_from_present(at(T + 200), Instant::now());
    assert_eq!(
        s.verify(&token, at(T + 200), Instant::now()).await,
        Err(VerifyError::Unavailable)
    );
    // Issued after the start: the stream vouches, nothing is asked.
    let fresh = key.sign(&claims_json(T + 300, 900));
    assert!(s.verify(&fresh, at(T + 300), Instant::now()).await.is_ok());
}

#[tokio::test]
async fn with_fail_closed_a_token_older_than_the_stream_is_judged_locally() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    s.health.started_from_present(at(T + 200), Instant::now());
    let token = key.sign(&claims_json(T + 100, 900));
    assert!(s.verify(&token, at(T + 200), Instant::now()).await.is_ok());
}

#[tokio::test]
async fn an_unknown_kid_is_refused_and_refetches_are_rate_limited() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    s.health.started_from_present(at(T), Instant::now());
    let stranger = TestKey::ed25519();
    let token = stranger.sign(&claims_json(T + 100, 900));
    assert_eq!(
        s.verify(&token, at(T + 100), Instant::now()).await,
        Err(VerifyError::Invalid)
    );
    let first = *s.last_kid_refetch.lock().await;
    assert!(first.is_some(), "the first unknown kid refetches at once");
    assert_eq!(
        s.verify(&token, at(T + 100), Instant::now()).await,
        Err(VerifyError::Invalid)
    );
    assert_eq!(
        *s.last_kid_refetch.lock().await,
        first,
        "the second, within the interval, does not"
    );
}

#[tokio::test]
async fn a_changed_key_set_forgets_remembered_tokens() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    s.health.started_from_present(at(T), Instant::now());
    let token = key.sign(&claims_json(T + 100, 900));
    assert!(s.verify(&token, at(T + 100), Instant::now()).await.is_ok());
    assert_eq!(s.verified.len(), 1);
    let expect = Expectations {
        issuer: "https://authd.test",
        audience: "svc",
    };
    s.install_keys(KeySet::from_jwks(&[key.jwk()], &expect));
    assert_eq!(s.verified.len(), 1, "same keys: nothing forgotten");
    let rotated = TestKey::ed25519();
    s.install_keys(KeySet::from_jwks(&[rotated.jwk()], &expect));
    assert_eq!(s.verified.len(), 0);
    assert_eq!(
        s.verify(&token, at(T + 100), Instant::now()).await,
        Err(VerifyError::Invalid),
        "its key is gone"
    );
    s.install_keys(KeySet::default());
    let by_rotated = rotated.sign(&claims_json(T + 100, 900));
    assert!(
        s.verify(&by_rotated, at(T + 100), Instant::now()).await.is_ok(),
        "an empty answer keeps the keys"
    );
}
