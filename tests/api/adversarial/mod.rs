//! The adversarial suite: one module per area, one test per attack, each
//! named after what it attacks. Throttling and the password blocklist have
//! their own module (`throttling`).

mod account_lifecycle;
mod forged_tokens;
mod forgot_timing;
mod hostile_input;
mod login_timing;
mod mfa;
mod raw_h2;
mod secrets_in_logs;
mod service_keys;
mod stolen_database;
mod takeover;
mod token_grants;
mod transport_limits;

use std::time::{Duration, Instant};

use authd::config::Argon2Settings;

use crate::helpers::{TestApp, fresh_email};

/// Parameters under which one argon2 computation takes the better part of a
/// second here, so "no hashing happened" and "the deadline passed mid-hash"
/// are visible against the noise of a loaded two-core machine.
pub const HEAVY_ARGON2: Argon2Settings = Argon2Settings {
    memory_kib: 64 * 1024,
    iterations: 16,
    parallelism: 1,
};

/// A password no blocklist holds and no other test uses.
pub fn fresh_password() -> String {
    format!("unguessable {} passphrase", uuid::Uuid::new_v4().simple())
}

/// How long one password check of the app takes: a login of an account that
/// does not exist, which costs one verification against the dummy hash.
pub async fn one_hash(app: &TestApp) -> Duration {
    let started = Instant::now();
    let _ = app.login(&fresh_email(), "whatever it is").await;
    started.elapsed()
}
