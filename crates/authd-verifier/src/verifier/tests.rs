//! The verifier's decisions without authd: keys, revocations and stream
//! state set by hand, the time passed in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::test_shared as shared;
use super::*;
use crate::policy::Policy;
use crate::test_keys::{TestKey, claims_json, service_claims_json};
use crate::watcher::{Applied, apply_message};

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
    s.health.covered_from(at(T), started);
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
    s.health.covered_from(at(T), now);
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
    s.health.covered_from(at(T), now);
    let token = key.sign(&claims_json(T + 100, 900));
    assert!(s.verify(&token, at(T + 100), now).await.is_ok());
    assert_eq!(
        s.verify(&token, at(T + 1006), now).await,
        Err(VerifyError::Expired),
        "remembered, then expired"
    );
}

#[tokio::test]
async fn a_gap_in_event_ids_asks_to_start_over_and_duplicates_are_ignored() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.covered_from(at(T), now);
    assert_eq!(apply_message(&s, &heartbeat(10), at(T + 1)), Applied::InStep);
    let ended_a = event(11, pb::RevocationKind::SessionEnded, "u", &["a"], T + 2);
    assert_eq!(apply_message(&s, &ended_a, at(T + 2)), Applied::InStep);
    let repeated = event(11, pb::RevocationKind::SessionEnded, "u", &["b"], T + 2);
    assert_eq!(apply_message(&s, &repeated, at(T + 2)), Applied::InStep);
    assert_eq!(read(&s.revocations).len(), 1, "event 11 applied once");
    assert_eq!(s.health.covered_since(), Some(at(T)));
    let after_gap = event(13, pb::RevocationKind::SessionEnded, "u", &["c"], T + 3);
    assert_eq!(
        apply_message(&s, &after_gap, at(T + 3)),
        Applied::EventsLost,
        "event 12 was lost"
    );
    assert_eq!(
        read(&s.revocations).len(),
        2,
        "what did arrive is applied all the same"
    );
    assert_eq!(s.health.cursor(), 11, "the stream task starts over from a time");

    let s = shared(&key, OnStale::FailClosed);
    s.health.covered_from(at(T), now);
    apply_message(&s, &heartbeat(10), at(T + 1));
    assert_eq!(
        apply_message(&s, &heartbeat(12), at(T + 4)),
        Applied::EventsLost,
        "a heartbeat ahead of the cursor: 11 and 12 were lost"
    );
}

#[tokio::test]
async fn an_unknown_kind_ends_the_sessions_it_names_and_older_tokens_are_stale() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.covered_from(at(T), now);
    let older = key.sign(&claims_json(T + 100, 900));
    assert!(s.verify(&older, at(T + 100), now).await.is_ok());
    let mut unknown = event(1, pb::RevocationKind::SessionEnded, "u", &["s"], T + 200);
    unknown.kind = 99;
    assert_eq!(apply_message(&s, &unknown, at(T + 201)), Applied::InStep);
    assert_eq!(read(&s.revocations).len(), 1);
    assert_eq!(s.health.covered_since(), Some(at(T + 200)));
    assert_eq!(
        s.verify(&older, at(T + 201), now).await,
        Err(VerifyError::Unavailable),
        "it may have revoked this one: stale, not valid"
    );
    let newer = key.sign(&claims_json(T + 300, 900));
    assert!(s.verify(&newer, at(T + 300), now).await.is_ok());
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
    s.health.covered_from(at(T + 200), Instant::now());
    assert_eq!(
        s.verify(&token, at(T + 200), Instant::now()).await,
        Err(VerifyError::Unavailable)
    );
    // Issued after the start: the stream vouches, nothing is asked.
    let fresh = key.sign(&claims_json(T + 300, 900));
    assert!(s.verify(&fresh, at(T + 300), Instant::now()).await.is_ok());
}

#[tokio::test]
async fn with_fail_closed_a_token_older_than_the_coverage_is_refused_as_stale() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    s.health.covered_from(at(T + 200), Instant::now());
    let token = key.sign(&claims_json(T + 100, 900));
    assert_eq!(
        s.verify(&token, at(T + 200), Instant::now()).await,
        Err(VerifyError::Unavailable),
        "never accepted on its signature alone"
    );
}

#[tokio::test]
async fn a_stream_from_a_time_vouches_for_nothing_until_it_has_caught_up() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    let token = key.sign(&claims_json(T + 100, 900));
    // Opened from a token lifetime before T + 200.
    s.health.syncing_from(T + 200 - 915);
    s.health.connected();
    let backlog = event(7, pb::RevocationKind::SessionEnded, "user-1", &["other"], T + 50);
    assert_eq!(apply_message(&s, &backlog, at(T + 200)), Applied::InStep);
    assert_eq!(
        s.verify(&token, at(T + 200), now).await,
        Err(VerifyError::Unavailable),
        "still catching up"
    );
    assert_eq!(apply_message(&s, &heartbeat(7), at(T + 200)), Applied::InStep);
    assert!(s.verify(&token, at(T + 200), now).await.is_ok(), "caught up");
    assert_eq!(s.health.covered_since(), Some(at(T + 200 - 915)));
}

#[tokio::test]
async fn an_unknown_kid_is_refused_and_refetches_are_rate_limited() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    s.health.covered_from(at(T), Instant::now());
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
    s.health.covered_from(at(T), Instant::now());
    let token = key.sign(&claims_json(T + 100, 900));
    assert!(s.verify(&token, at(T + 100), Instant::now()).await.is_ok());
    assert_eq!(s.verified.len(), 1);
    s.install_keys(KeySet::from_jwks(&[key.jwk()]));
    assert_eq!(s.verified.len(), 1, "same keys: nothing forgotten");
    let rotated = TestKey::ed25519();
    s.install_keys(KeySet::from_jwks(&[rotated.jwk()]));
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

/// `claims_json` proven by password and a one-time code at `auth_time`.
fn aal2_claims(iat: i64, auth_time: i64) -> serde_json::Value {
    let mut claims = claims_json(iat, 900);
    claims["amr"] = serde_json::json!(["mfa", "otp", "pwd"]);
    claims["acr"] = "aal2".into();
    claims["auth_time"] = auth_time.into();
    claims
}

#[tokio::test]
async fn a_factor_change_on_the_stream_voids_earlier_proofs_for_second_factor_policies() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.covered_from(at(T), now);
    apply_message(&s, &heartbeat(1), at(T + 1));
    let aal2 = Policy::new().require_acr(crate::Acr::Aal2);
    let otp = Policy::new().require_amr("otp");
    let proven_early = key.sign(&aal2_claims(T + 100, T + 90));
    assert!(
        s.verify_with(&proven_early, &aal2, at(T + 100), now)
            .await
            .is_ok()
    );

    let change = event(2, pb::RevocationKind::FactorsChanged, "user-1", &[], T + 200);
    assert_eq!(apply_message(&s, &change, at(T + 200)), Applied::InStep);
    assert_eq!(s.health.cursor(), 2, "in step: the kind is known");
    assert_eq!(s.health.covered_since(), Some(at(T)), "and vouched for");
    for policy in [&aal2, &otp] {
        assert_eq!(
            s.verify_with(&proven_early, policy, at(T + 201), now).await,
            Err(VerifyError::ReauthenticationRequired { max_age: None }),
            "proven before the change: {policy:?}"
        );
    }
    assert!(
        s.verify_with(&proven_early, &Policy::default(), at(T + 201), now)
            .await
            .is_ok(),
        "revokes nothing: a policy without a second factor accepts it"
    );
    let refreshed = key.sign(&aal2_claims(T + 300, T + 90));
    assert_eq!(
        s.verify_with(&refreshed, &aal2, at(T + 300), now).await,
        Err(VerifyError::ReauthenticationRequired { max_age: None }),
        "a later token of the same proof"
    );
    let stepped_up = key.sign(&aal2_claims(T + 300, T + 300));
    assert!(s.verify_with(&stepped_up, &aal2, at(T + 300), now).await.is_ok());
    let other_user = key.sign(&{
        let mut c = aal2_claims(T + 150, T + 90);
        c["sub"] = "user-2".into();
        c
    });
    assert!(s.verify_with(&other_user, &aal2, at(T + 201), now).await.is_ok());

    // Remembered as long as a token issued before it can be unexpired.
    let retention = 905;
    apply_message(&s, &heartbeat(2), at(T + 200 + retention - 1));
    assert_eq!(read(&s.revocations).factors_changed_at("user-1"), Some(T + 200));
    apply_message(&s, &heartbeat(2), at(T + 200 + retention));
    assert_eq!(read(&s.revocations).factors_changed_at("user-1"), None);
    assert_eq!(read(&s.revocations).len(), 0);
}

#[tokio::test]
async fn policies_refuse_valid_tokens_with_authds_reasons() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.covered_from(at(T), now);
    let password = key.sign(&claims_json(T + 100, 900));
    let fresh = Policy::new()
        .require_acr(crate::Acr::Aal2)
        .max_age(Duration::from_secs(600));
    assert_eq!(
        s.verify_with(&password, &fresh, at(T + 100), now).await,
        Err(VerifyError::ReauthenticationRequired {
            max_age: Some(Duration::from_secs(600))
        })
    );
    let proven = key.sign(&aal2_claims(T + 100, T + 100));
    assert!(s.verify_with(&proven, &fresh, at(T + 700), now).await.is_ok());
    assert_eq!(
        s.verify_with(&proven, &fresh, at(T + 701), now).await,
        Err(VerifyError::ReauthenticationRequired {
            max_age: Some(Duration::from_secs(600))
        }),
        "remembered as verified, judged again by age"
    );
    // Validity comes first: a revoked token is revoked, not too weak.
    apply_message(
        &s,
        &event(
            1,
            pb::RevocationKind::SessionEnded,
            "user-1",
            &["session-1"],
            T + 702,
        ),
        at(T + 702),
    );
    assert_eq!(
        s.verify_with(&password, &fresh, at(T + 703), now).await,
        Err(VerifyError::Revoked(Revocation::SessionEnded))
    );
    let mut pending = claims_json(T + 800, 900);
    pending["sid"] = "session-2".into();
    pending["mfa_enrollment_required"] = true.into();
    let pending = key.sign(&pending);
    assert_eq!(
        s.verify_with(&pending, &Policy::default(), at(T + 800), now)
            .await,
        Err(VerifyError::MfaEnrollmentRequired)
    );
    let enrol = Policy::new().allow_mfa_enrollment_pending();
    assert!(s.verify_with(&pending, &enrol, at(T + 800), now).await.is_ok());
}

/// `claims_json` exchanged for `audience` by billing, after orders had
/// exchanged the login's token.
fn exchanged_twice(iat: i64, audience: &str) -> serde_json::Value {
    let mut claims = claims_json(iat, 600);
    claims["aud"] = audience.into();
    claims["client_id"] = "billing".into();
    claims["act"] = serde_json::json!({"sub": "svc:billing", "act": {"sub": "svc:orders"}});
    claims["amr"] = serde_json::json!(["pwd"]);
    claims["auth_time"] = iat.into();
    claims
}

#[tokio::test]
async fn an_exchanged_token_shows_its_actors_and_ends_with_the_session_it_keeps() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.covered_from(at(T), now);
    let token = key.sign(&exchanged_twice(T + 100, "svc"));
    let claims = s.verify(&token, at(T + 100), now).await.unwrap();
    assert_eq!(claims.actors(), ["svc:billing", "svc:orders"]);
    assert_eq!(claims.actor(), Some("svc:billing"));
    assert_eq!(claims.client_id(), Some("billing"));
    assert_eq!(claims.session_id(), "session-1");
    apply_message(
        &s,
        &event(
            1,
            pb::RevocationKind::SessionEnded,
            "user-1",
            &["session-1"],
            T + 101,
        ),
        at(T + 101),
    );
    assert_eq!(
        s.verify(&token, at(T + 102), now).await,
        Err(VerifyError::Revoked(Revocation::SessionEnded)),
        "the user's Logout ends what services exchanged their token for"
    );
}

#[tokio::test]
async fn a_service_token_passes_only_where_services_are_admitted_with_their_scopes() {
    let key = TestKey::ed25519();
    // Never started: the stream vouches for nothing, which concerns users'
    // tokens only.
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    let service = key.sign(&service_claims_json(T + 100, 300, "reports", "invoices.read"));
    let user = key.sign(&claims_json(T + 100, 900));
    let wall = at(T + 100);

    let caller = s
        .verify_caller(&service, &Policy::services(), Admits::Services, wall, now)
        .await
        .unwrap();
    let claims = caller.service().unwrap();
    assert_eq!(
        (claims.client_id(), claims.scopes()),
        ("reports", &["invoices.read".to_owned()][..])
    );
    assert!(caller.user().is_none());

    let reading = Policy::services().require_scope("invoices.read");
    let writing = Policy::services()
        .require_scope("invoices.read")
        .require_scope("invoices.write");
    assert!(
        s.verify_caller(&service, &reading, reading.admits(), wall, now)
            .await
            .is_ok()
    );
    assert_eq!(
        s.verify_caller(&service, &writing, writing.admits(), wall, now)
            .await,
        Err(VerifyError::MissingScope)
    );

    for (what, policy) in [
        ("the default policy", Policy::new()),
        (
            "a user policy with a scope",
            Policy::new().require_scope("invoices.read"),
        ),
    ] {
        assert_eq!(
            s.verify_caller(&service, &policy, policy.admits(), wall, now)
                .await,
            Err(VerifyError::Invalid),
            "a service's token where a user's is required: {what}"
        );
    }
    assert_eq!(
        s.verify_with(&service, &Policy::services(), wall, now).await,
        Err(VerifyError::Invalid),
        "verify_with wants a user's token whatever the policy admits"
    );
    assert_eq!(
        s.verify_caller(&user, &Policy::services(), Admits::Services, wall, now)
            .await,
        Err(VerifyError::Invalid),
        "a user's token where a service's is required"
    );

    // Both admitted: each kind is judged by its own requirements.
    let both = Policy::new().allow_services().require_scope("invoices.read");
    assert!(matches!(
        s.verify_caller(&service, &both, both.admits(), wall, now).await,
        Ok(Caller::Service(_))
    ));
    assert_eq!(
        s.verify_caller(&user, &both, both.admits(), wall, now).await,
        Err(VerifyError::Unavailable),
        "a user's token still needs the stream"
    );
    s.health.covered_from(at(T), now);
    assert!(matches!(
        s.verify_caller(&user, &both, both.admits(), wall, now).await,
        Ok(Caller::User(_))
    ));

    // Remembered as a service's token: the second call skips the signature
    // and is still told apart.
    assert_eq!(
        s.verify_caller(&service, &Policy::new(), Admits::Users, wall, now)
            .await,
        Err(VerifyError::Invalid)
    );
    assert_eq!(
        s.verify_caller(&service, &reading, reading.admits(), at(T + 406), now)
            .await,
        Err(VerifyError::Expired),
        "it lives until its exp"
    );
}

#[tokio::test]
async fn each_route_accepts_its_own_audience_only() {
    let key = TestKey::ed25519();
    let s = shared(&key, OnStale::FailClosed);
    let now = Instant::now();
    s.health.covered_from(at(T), now);
    let wall = at(T + 100);
    let for_svc = key.sign(&exchanged_twice(T + 100, "svc"));
    let for_admin = key.sign(&exchanged_twice(T + 100, "svc-admin"));
    let for_other = key.sign(&exchanged_twice(T + 100, "other"));
    let admin = Policy::new().require_audience("svc-admin");

    assert!(s.verify_with(&for_svc, &Policy::new(), wall, now).await.is_ok());
    assert_eq!(
        s.verify_with(&for_admin, &Policy::new(), wall, now).await,
        Err(VerifyError::Invalid),
        "the default route wants the configured audience"
    );
    assert_eq!(
        s.verify_with(&for_admin, &admin, wall, now)
            .await
            .unwrap()
            .audience(),
        "svc-admin"
    );
    assert_eq!(
        s.verify_with(&for_svc, &admin, wall, now).await,
        Err(VerifyError::Invalid),
        "nor does the admin route take the other audience"
    );
    for policy in [Policy::new(), admin, Policy::new().require_audience("other")] {
        assert_eq!(
            s.verify_with(&for_other, &policy, wall, now).await,
            Err(VerifyError::Invalid),
            "an audience the verifier does not accept passes nowhere: {policy:?}"
        );
    }

    let service_for_admin = key.sign(&{
        let mut c = service_claims_json(T + 100, 300, "reports", "");
        c["aud"] = "svc-admin".into();
        c
    });
    assert_eq!(
        s.verify_caller(
            &service_for_admin,
            &Policy::services(),
            Admits::Services,
            wall,
            now
        )
        .await,
        Err(VerifyError::Invalid)
    );
    let admin_services = Policy::services().require_audience("svc-admin");
    assert!(
        s.verify_caller(&service_for_admin, &admin_services, Admits::Services, wall, now)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_before_authd_is_asked_about_it() {
    let key = TestKey::ed25519();
    // Stale and introspecting over a channel that leads nowhere: asking
    // authd would answer UNAVAILABLE.
    let s = shared(&key, OnStale::Introspect);
    let now = Instant::now();
    let for_admin = key.sign(&exchanged_twice(T + 100, "svc-admin"));
    assert_eq!(
        s.verify(&for_admin, at(T + 100), now).await,
        Err(VerifyError::Invalid)
    );
    let for_svc = key.sign(&exchanged_twice(T + 100, "svc"));
    assert_eq!(
        s.verify(&for_svc, at(T + 100), now).await,
        Err(VerifyError::Unavailable),
        "the route's own audience is asked about"
    );
}
