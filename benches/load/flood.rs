//! Login flood (`--scenarios flood`): Logins with correct passwords offered
//! at 1×, 2× and 4× the argon2 ceiling measured in this run, each with a
//! deadline (`grpc-timeout`, 5 s), open loop (arrivals do not wait for
//! answers, as real users do not). Per multiple: goodput (successful Logins
//! per second), early refusals (RESOURCE_EXHAUSTED OVERLOADED: told at once
//! to back off), timeouts (DEADLINE_EXCEEDED, or the client's own CANCELLED
//! at the deadline), anything else, and — from the database — how many
//! accounts were left with failed attempts charged although every password
//! was right. Accounts get at most three Logins in flight, like a user who
//! retries, so the per-account throttle never refuses by design.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use sqlx::postgres::PgConnectOptions;
use tonic::transport::Channel;

use crate::client::Account;

pub struct Settings {
    pub duration: Duration,
    pub deadline: Duration,
    pub multiples: Vec<f64>,
}

#[derive(Default)]
struct Outcomes {
    ok: u64,
    early: Vec<Duration>,
    timeouts: u64,
    other: BTreeMap<String, u64>,
}

/// Runs the flood; returns the lines to print, and how many outcomes were
/// wrong (neither a success, an early refusal nor a timeout).
pub async fn run(
    channels: &[Channel],
    run_id: &str,
    capacity: f64,
    database: Option<&PgConnectOptions>,
    settings: &Settings,
) -> (Vec<String>, u64) {
    let peak = settings.multiples.iter().copied().fold(1.0, f64::max);
    let in_flight_at_peak = (capacity * peak * settings.deadline.as_secs_f64()).ceil() as usize;
    let n_accounts = in_flight_at_peak.div_ceil(3).max(1);
    let t = Instant::now();
    let accounts =
        Arc::new(crate::seeding::seed_accounts(channels, &format!("{run_id}-flood"), n_accounts, 16).await);
    let mut lines = vec![format!(
        "login flood: {n_accounts} accounts seeded in {:.1} s; argon2 ceiling {capacity:.1}/s; deadline {:?}; {:?} per multiple",
        t.elapsed().as_secs_f64(),
        settings.deadline,
        settings.duration
    )];
    lines.push(format!(
        "{:>8} {:>9} {:>9} {:>10} {:>8} {:>12} {:>9} {:>7} {:>10}",
        "offered", "calls/s", "goodput", "goodput/c", "early", "early p50", "timeouts", "other", "throttled"
    ));
    let mut wrong = 0;
    let pool = match database {
        Some(options) => sqlx::PgPool::connect_with(options.clone()).await.ok(),
        None => None,
    };
    for &multiple in &settings.multiples {
        let rate = capacity * multiple;
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let mut tasks = Vec::new();
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut offered = 0usize;
        while started.elapsed() < settings.duration {
            tick.tick().await;
            let account = offered % accounts.len();
            offered += 1;
            let (accounts, outcomes, channel) = (
                accounts.clone(),
                outcomes.clone(),
                channels[offered % channels.len()].clone(),
            );
            let deadline = settings.deadline;
            tasks.push(tokio::spawn(async move {
                login_once(channel, &accounts[account], deadline, &outcomes).await;
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        // Refunds of uncharged attempts are written just after the calls.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let throttled = match &pool {
            Some(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM login_throttle WHERE key LIKE 'user:%' AND failures > 0",
            )
            .fetch_one(pool)
            .await
            .map_or_else(|e| format!("? ({e})"), |n| n.to_string()),
            None => "n/a".to_owned(),
        };
        let o = outcomes
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default();
        let mut early = o.early.clone();
        early.sort();
        let early_p50 = early.get(early.len() / 2).map_or_else(
            || "-".to_owned(),
            |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        );
        let goodput = o.ok as f64 / settings.duration.as_secs_f64();
        wrong += o.other.values().sum::<u64>();
        lines.push(format!(
            "{:>7.0}× {:>9.1} {:>9.1} {:>10.2} {:>8} {:>12} {:>9} {:>7} {:>10}",
            multiple,
            offered as f64 / settings.duration.as_secs_f64(),
            goodput,
            goodput / capacity,
            early.len(),
            early_p50,
            o.timeouts,
            o.other.values().sum::<u64>(),
            throttled,
        ));
        if !o.other.is_empty() {
            lines.push(format!("    other outcomes at {multiple}×: {:?}", o.other));
        }
        // Let the queue empty before the next multiple.
        tokio::time::sleep(settings.deadline).await;
    }
    (lines, wrong)
}

async fn login_once(channel: Channel, account: &Account, deadline: Duration, outcomes: &Mutex<Outcomes>) {
    let mut client = AuthServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::LoginRequest {
        login: account.email.clone(),
        password: account.password.clone(),
    });
    request.set_timeout(deadline);
    let started = Instant::now();
    let result = client.login(request).await;
    let took = started.elapsed();
    let Ok(mut o) = outcomes.lock() else {
        return;
    };
    match result {
        Ok(_) => o.ok += 1,
        Err(s) if s.code() == tonic::Code::ResourceExhausted && reason(&s) == "OVERLOADED" => {
            o.early.push(took)
        }
        Err(s) if matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            o.timeouts += 1
        }
        Err(s) => {
            let label = format!("{:?}/{}", s.code(), reason(&s));
            *o.other.entry(label).or_default() += 1;
        }
    }
}

fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}
