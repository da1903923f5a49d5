//! Logout at authd → refusal by the verifier, one session at a time, with
//! a chosen number of other subscribers on the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use authd::pb::auth::v1::{
    self as pb, admin_service_client::AdminServiceClient, auth_service_client::AuthServiceClient,
};
use authd_verifier::{Verifier, VerifyError};
use tokio::task::JoinHandle;

use crate::client::{Account, bearer, call_each, code_label, connect, login};
use crate::procfs::CpuWindow;
use crate::seeding::Shared;
use crate::stats::{Row, Stats, percentile_ms};

/// How often the token is presented to the verifier after the Logout.
const POLL: Duration = Duration::from_micros(50);
/// A token still accepted this long after its Logout counts as an error.
const GIVE_UP: Duration = Duration::from_secs(5);

pub struct Measured {
    pub row: Row,
    pub notes: Vec<String>,
}

pub async fn measure(
    addr: &str,
    watch_key: &str,
    shared: &Shared,
    verifier: &Verifier,
    other_subscribers: usize,
    logouts: usize,
    server_pid: Option<u32>,
) -> Measured {
    let sessions = sign_in(shared, logouts).await;
    let others = OtherSubscribers::start(addr, watch_key, other_subscribers).await;
    let mut client = AuthServiceClient::new(shared.channels[0].clone());
    let mut stats = Stats::default();
    let mut logout_us: Vec<u32> = Vec::with_capacity(sessions.len());
    let window = CpuWindow::open(server_pid);
    let started = window.started();
    for tokens in &sessions {
        if let Err(refusal) = verifier.verify(&tokens.access_token).await {
            stats.error(format!("refused_before_logout:{}", refusal.reason()));
            continue;
        }
        let sent = Instant::now();
        let answer = client
            .logout(pb::LogoutRequest {
                refresh_token: tokens.refresh_token.clone(),
            })
            .await;
        let answered = Instant::now();
        if let Err(status) = answer {
            stats.error(format!("logout:{}", code_label(&status)));
            continue;
        }
        logout_us.push(micros(answered - sent));
        match time_until_refused(verifier, &tokens.access_token, answered).await {
            Ok(took) => stats.latencies_us.push(micros(took)),
            Err(label) => stats.error(label),
        }
    }
    let elapsed = started.elapsed();
    let cpu = window.close();
    let subscribers = other_subscribers + 1;
    let mut notes = Vec::new();
    logout_us.sort_unstable();
    notes.push(format!(
        "revocation, {subscribers} subscriber(s): {} Logouts; the Logout call itself p50 {:.2} ms, p99 {:.2} ms; \
         the latency columns are from its answer to the verifier's refusal",
        logout_us.len(),
        percentile_ms(&logout_us, 0.5),
        percentile_ms(&logout_us, 0.99),
    ));
    if other_subscribers > 0 {
        let received = others.finish(logout_us.len()).await;
        let (min, max) = (
            received.iter().copied().min().unwrap_or(0),
            received.iter().copied().max().unwrap_or(0),
        );
        notes.push(format!(
            "revocation, {subscribers} subscribers: the {other_subscribers} raw streams each received \
             between {min} and {max} of the {} events",
            logout_us.len()
        ));
        let short = received.iter().filter(|n| **n < logout_us.len()).count();
        if short > 0 {
            stats.errors.insert("stream_missed_events".into(), short as u64);
        }
    }
    let mut row = Row::from_stats(
        format!(
            "revocation: {subscribers} subscriber{}",
            if subscribers == 1 { "" } else { "s" }
        ),
        stats,
        elapsed,
    );
    row.cpu = Some(cpu);
    Measured { row, notes }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// `n` fresh sessions over the seeded accounts (Login is not timed).
pub async fn sign_in(shared: &Shared, n: usize) -> Vec<pb::TokenPair> {
    let accounts: Vec<(String, String)> = (0..n)
        .map(|i| {
            let account = &shared.accounts[i % shared.accounts.len()];
            (account.email.clone(), account.password.clone())
        })
        .collect();
    // Consecutive items are different accounts, so with no more calls in
    // flight than accounts the per-account Login throttle is never hit.
    let concurrency = shared.accounts.len().min(16);
    let answers = call_each(
        &shared.channels,
        &accounts,
        concurrency,
        |mut client, (email, password)| async move { login(&mut client, &Account { email, password }).await },
    )
    .await;
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|e| panic!("Login failed: {e}")))
        .collect()
}

/// Presents `token` to the verifier every [`POLL`] until it is refused as
/// revoked; the time since `since`. Polled from a blocking thread, so the
/// wait between polls is a short sleep of that thread rather than a timer
/// tick of the runtime (1 ms).
async fn time_until_refused(verifier: &Verifier, token: &str, since: Instant) -> Result<Duration, String> {
    let (verifier, token) = (verifier.clone(), token.to_owned());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        loop {
            match runtime.block_on(verifier.verify(&token)) {
                Err(VerifyError::Revoked(_)) => return Ok(since.elapsed()),
                Err(other) => return Err(format!("refused_as:{}", other.reason())),
                Ok(_) if since.elapsed() > GIVE_UP => return Err("never_refused".into()),
                Ok(_) => std::thread::sleep(POLL),
            }
        }
    })
    .await
    .expect("the poller panicked")
}

/// Raw WatchRevocations streams that only count the events they receive.
struct OtherSubscribers {
    received: Vec<Arc<AtomicUsize>>,
    tasks: Vec<JoinHandle<()>>,
}

impl OtherSubscribers {
    /// Opens `n` streams from the present over at least 4 connections, no
    /// more than 100 on each (authd allows 128 streams per connection);
    /// returns once every one is open.
    async fn start(addr: &str, watch_key: &str, n: usize) -> Self {
        if n == 0 {
            return Self {
                received: Vec::new(),
                tasks: Vec::new(),
            };
        }
        let channels = connect(addr, n.min(n.div_ceil(100).max(4))).await;
        let authorization = format!("Bearer {watch_key}").parse().unwrap();
        let mut received = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let mut admin = AdminServiceClient::new(channels[i % channels.len()].clone());
            let mut stream = admin
                .watch_revocations(bearer(pb::WatchRevocationsRequest::default(), &authorization))
                .await
                .unwrap_or_else(|s| panic!("revocation scenario: WatchRevocations refused: {s:?}"))
                .into_inner();
            let count = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&count);
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(message)) = stream.message().await {
                    if message.kind() != pb::RevocationKind::Heartbeat {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            received.push(count);
        }
        Self { received, tasks }
    }

    /// Waits (at most [`GIVE_UP`]) until every stream has `expected` events,
    /// closes them, and returns what each received.
    async fn finish(self, expected: usize) -> Vec<usize> {
        let give_up = Instant::now() + GIVE_UP;
        while Instant::now() < give_up && self.received.iter().any(|c| c.load(Ordering::Relaxed) < expected) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        self.received.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}
