//! Account enumeration by timing on ForgotPassword: the answer is the same
//! for known and unknown addresses, and so must be the time it takes. The
//! request path records the request and nothing else; the account is
//! resolved in the background.

use std::time::{Duration, Instant};

use super::fresh_password;
use crate::helpers::*;

const PAIRS: usize = 50;

async fn timed_forgot(app: &TestApp, email: &str) -> Duration {
    let started = Instant::now();
    app.forgot_password(email).await.unwrap();
    started.elapsed()
}

/// One round: `PAIRS` known and unknown calls, interleaved in both orders
/// (drift in the machine's load, and the background work a known address
/// causes, hit both sides alike). Returns the median of the paired
/// differences (known minus unknown) relative to the median call: robust
/// to a slow stretch, which moves both calls of a pair.
async fn paired_difference(app: &TestApp, known: &[String]) -> f64 {
    let mut differences = Vec::with_capacity(known.len());
    let mut all = Vec::with_capacity(known.len() * 2);
    for (i, email) in known.iter().enumerate() {
        let (k, u) = if i % 2 == 0 {
            let k = timed_forgot(app, email).await;
            (k, timed_forgot(app, &fresh_email()).await)
        } else {
            let u = timed_forgot(app, &fresh_email()).await;
            (timed_forgot(app, email).await, u)
        };
        differences.push(k.as_secs_f64() - u.as_secs_f64());
        all.extend([k, u]);
    }
    differences.sort_by(f64::total_cmp);
    let typical = median(all).as_secs_f64();
    differences[differences.len() / 2] / typical
}

#[tokio::test]
async fn forgot_password_takes_alike_long_for_known_and_unknown_addresses() {
    let app = spawn_app().await;
    // Warm-up: connections, prepared statements.
    for _ in 0..5 {
        timed_forgot(&app, &fresh_email()).await;
    }
    // A machine shared with other tests is noisy: a round may be disturbed,
    // so up to three rounds (fresh accounts each, so the hourly cap never
    // changes the work). An oracle shows in every round: before the work
    // left the request path, a known address took 1.5-3x as long.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let mut known = Vec::with_capacity(PAIRS);
        for _ in 0..PAIRS {
            let email = fresh_email();
            app.register(&email, &fresh_password()).await;
            known.push(email);
        }
        let relative = paired_difference(&app, &known).await;
        println!("forgot-password timing, {PAIRS} pairs: known - unknown = {relative:+.2} of a call");
        rounds.push(relative);
        if relative.abs() < 0.2 {
            break;
        }
    }
    assert!(
        rounds.iter().any(|r| r.abs() < 0.2),
        "known and unknown addresses told apart by timing in every round: {rounds:?}"
    );
    // The known addresses did get their mail queued, in the background.
    let expected = (PAIRS * rounds.len()) as i64;
    let started = Instant::now();
    loop {
        let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM password_reset_tokens")
            .fetch_one(&app.db)
            .await
            .unwrap();
        if tokens == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {tokens} of {expected} tokens issued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM password_reset_requests")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(pending, 0, "every request resolved and forgotten");
}
