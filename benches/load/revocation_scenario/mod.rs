//! The revocation scenario (issue 15): how long a Logout at authd takes to
//! reach a service that uses authd-verifier, and what the verifier costs a
//! service per call.
//!
//! 1. A `Verifier` follows authd's WatchRevocations over a connection of its
//!    own, as a service would.
//! 2. `logouts`: sessions are logged in first (not timed); then, one at a
//!    time, each session's token is verified, its Logout is sent, and the
//!    time from Logout's answer until the verifier's `verify()` (called
//!    in-process, every 50 µs) refuses the token is recorded. Once with the
//!    verifier as authd's only subscriber, once with 99 more raw
//!    WatchRevocations streams (by default; `--revocation-subscribers`),
//!    each of which must receive every event.
//! 3. `per_call`: one tonic service in this process, on two sockets: bare,
//!    and behind `VerifierLayer`; the same closed loop of calls with the same
//!    bearer header against each, alternating, so the ratio is of one run.
//! 4. `fanout_floor`: with 100 subscribers or more, the CPU a bare tonic
//!    server in this process pays per subscriber per event at the largest
//!    count: the floor under authd's fan-out cost.

mod fanout_floor;
mod logouts;
mod per_call;

/// Sessions logged in before a timed run (the Shared Signals scenarios too).
pub use logouts::sign_in;

use std::time::Duration;

use authd::pb::auth::v1::auth_service_client::AuthServiceClient;
use authd_verifier::{Verifier, VerifierConfig};
use base64::Engine as _;

use crate::client::{Account, connect, login};
use crate::seeding::Shared;
use crate::stats::Row;

pub struct Settings {
    /// Logouts measured per subscriber count.
    pub logouts: usize,
    /// Subscriber counts measured, the verifier included (`--revocation-subscribers`).
    pub subscribers: Vec<usize>,
    /// Per-call comparison: total time of each variant.
    pub duration: Duration,
    pub concurrency: usize,
    pub connections: usize,
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// `watch_key` has scope revocations.watch; `sample_token` is any access
/// token of this authd, read (not verified) for its issuer and audience.
pub async fn run(
    addr: &str,
    watch_key: &str,
    sample_token: &str,
    shared: &Shared,
    settings: &Settings,
    server_pid: Option<u32>,
) -> Outcome {
    let (issuer, audience) = issuer_and_audience(sample_token);
    let channel = connect(addr, 1).await.remove(0);
    let verifier = Verifier::start(channel, VerifierConfig::new(issuer, audience, watch_key))
        .await
        .unwrap_or_else(|e| panic!("revocation scenario: starting the verifier failed: {e}"));
    assert!(
        verifier.wait_until_fresh(Duration::from_secs(10)).await,
        "revocation scenario: the verifier's stream did not start: {:?}",
        verifier.status()
    );
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &subscribers in &settings.subscribers {
        let measured = logouts::measure(
            addr,
            watch_key,
            shared,
            &verifier,
            subscribers - 1,
            settings.logouts,
            server_pid,
        )
        .await;
        rows.push(measured.row);
        notes.extend(measured.notes);
    }

    // At the largest count only: with one subscriber the floor is far
    // below /proc's 10 ms tick over a few hundred events.
    if let Some(&most) = settings.subscribers.iter().max().filter(|n| **n >= 100) {
        let floor = fanout_floor::measure(most, settings.logouts).await;
        notes.push(format!(
            "fan-out floor (bare tonic, one prebuilt message put in every call's channel, no task per call): \
             {} subscribers, {} events: {:.0} µs of server CPU per event, {:.2} µs per subscriber per event",
            floor.subscribers, floor.events, floor.us_per_event, floor.us_per_subscriber_event
        ));
    }

    // A session of its own that no scenario ends, issued after the
    // verifier started (so the stream vouches for it).
    let mut client = AuthServiceClient::new(shared.channels[0].clone());
    let account: &Account = &shared.accounts[0];
    let tokens = login(&mut client, account)
        .await
        .unwrap_or_else(|e| panic!("revocation scenario: Login failed: {e}"));
    let compared = per_call::compare(&verifier, &tokens.access_token, settings, server_pid).await;
    rows.extend(compared.rows);
    notes.extend(compared.notes);
    Outcome { rows, notes }
}

/// `iss` and `aud` of an access token, read without verifying it: the
/// generator only needs to know what to configure the verifier with.
fn issuer_and_audience(token: &str) -> (String, String) {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let read = |name: &str| claims[name].as_str().unwrap_or_default().to_owned();
    (read("iss"), read("aud"))
}
