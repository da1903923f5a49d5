//! Account enumeration by timing: a login for an account that does not exist
//! must cost what a wrong password for one that does costs (the dummy hash).

use std::time::{Duration, Instant};

use authd::config::Argon2Settings;
use tonic::Code;

use super::fresh_password;
use crate::helpers::*;

const RUNS: usize = 30;

async fn timed_failed_login(app: &TestApp, login: &str) -> Duration {
    let started = Instant::now();
    let result = app.login(login, "not the password at all").await;
    let took = started.elapsed();
    assert_error(result, Code::Unauthenticated, "INVALID_CREDENTIALS");
    took
}

#[tokio::test]
async fn unknown_account_and_wrong_password_take_alike_long() {
    // The production parameters, so the hash dominates each login the way it
    // does in production rather than drowning in scheduling noise.
    let app = spawn_app_with(|c| c.argon2 = Argon2Settings::default()).await;
    // One account per wrong-password attempt, so no attempt is throttled.
    let mut known = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let email = fresh_email();
        app.register(&email, &fresh_password()).await;
        known.push(email);
    }
    let (mut unknown_times, mut wrong_times) = (Vec::new(), Vec::new());
    // Interleaved, so drift in the machine's load hits both sides alike.
    for email in &known {
        unknown_times.push(timed_failed_login(&app, &fresh_email()).await);
        wrong_times.push(timed_failed_login(&app, email).await);
    }
    let (unknown, wrong) = (median(unknown_times), median(wrong_times));
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    println!(
        "login timing over {RUNS} runs each: unknown account median {unknown:?}, \
         wrong password median {wrong:?}, ratio {ratio:.2}"
    );
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown {unknown:?} vs wrong password {wrong:?}"
    );
}
