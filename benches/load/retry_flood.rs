//! Login floods from clients that retry (`--scenarios retry-flood`): the
//! same N clients, each with its own account and right password, log in
//! over and over for T seconds, first politely (a refused call waits the
//! RetryInfo delay it came with), then impolitely (every refused or timed
//! out call is retried after 0.2 s, whatever RetryInfo said). Meanwhile a
//! few signed-in tasks call GetMe at a steady pace, as another service
//! would (a thread, runtime and connection of their own), so the cheap
//! calls' latency during each flood shows whether the flood starves them. Per
//! phase: goodput (successful Logins per second), refusals by reason,
//! timeouts, GetMe p50/p99, the change listener's lapses (its "caches off"
//! warnings in authd's log: a lapse sends every session check to the
//! database), and authd's CPU time per call answered.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::client::{Account, get_me};
use crate::procfs::{CpuWindow, TICK_US};
use crate::seeding::TaskState;
use crate::stats::percentile_ms;

pub struct Settings {
    pub duration: Duration,
    pub clients: usize,
    /// GetMe tasks, each pausing `getme_pause` between calls.
    pub getme_tasks: usize,
    pub getme_pause: Duration,
    /// How long an impolite client waits before it tries again.
    pub impolite_retry: Duration,
    pub deadline: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Manners {
    /// Waits what RetryInfo says.
    Polite,
    /// Retries after `impolite_retry`, whatever it was told.
    Impolite,
}

#[derive(Default)]
struct Outcomes {
    ok: u64,
    refused: BTreeMap<String, u64>,
    timeouts: u64,
    other: BTreeMap<String, u64>,
}

/// One phase's results, for the comparison line.
struct Phase {
    goodput: f64,
    getme_p99_ms: f64,
}

/// The GetMe probes of one phase, as another service would call during
/// the flood: a thread, a runtime and a connection of their own. On the
/// flood's runtime and connections they measured the load generator's own
/// queues (1 200 clients on two worker threads, HTTP/2 streams queued
/// behind the flood's) as much as authd. Returns each call's latency in µs
/// and the failures.
fn probe_getme(
    addr: &str,
    probes: &[TaskState],
    settings: &Settings,
    until: Instant,
) -> std::thread::JoinHandle<(Vec<u32>, u64)> {
    let addr = addr.to_owned();
    let authorizations: Vec<_> = probes
        .iter()
        .take(settings.getme_tasks)
        .map(|p| p.authorization.clone())
        .collect();
    let pause = settings.getme_pause;
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return (Vec::new(), 1);
        };
        runtime.block_on(async move {
            let channel = crate::client::connect(&addr, 1).await.remove(0);
            let mut probes = Vec::new();
            for authorization in authorizations {
                let channel = channel.clone();
                probes.push(tokio::spawn(async move {
                    let mut client = AuthServiceClient::new(channel);
                    let mut latencies = Vec::new();
                    let mut failures = 0u64;
                    while Instant::now() < until {
                        let t = Instant::now();
                        match get_me(&mut client, &authorization).await {
                            Ok(()) => {
                                latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                            }
                            Err(_) => failures += 1,
                        }
                        tokio::time::sleep(pause).await;
                    }
                    (latencies, failures)
                }));
            }
            let mut latencies = Vec::new();
            let mut failures = 0;
            for probe in probes {
                if let Ok((l, f)) = probe.await {
                    latencies.extend(l);
                    failures += f;
                }
            }
            (latencies, failures)
        })
    })
}

/// Runs both phases; returns the lines to print, and how many outcomes
/// were wrong (neither a success, a refusal with RetryInfo nor a timeout).
pub async fn run(
    addr: &str,
    channels: &[Channel],
    run_id: &str,
    probes: &[TaskState],
    authd_log: Option<&Path>,
    server_pid: Option<u32>,
    settings: &Settings,
) -> (Vec<String>, u64) {
    let t = Instant::now();
    let accounts = Arc::new(
        crate::seeding::seed_accounts(channels, &format!("{run_id}-retry"), settings.clients, 16).await,
    );
    let mut lines = vec![format!(
        "retry flood: {} clients (accounts seeded in {:.1} s), {} GetMe tasks every {:?}, {:?} per phase, deadline {:?}",
        settings.clients,
        t.elapsed().as_secs_f64(),
        settings.getme_tasks.min(probes.len()),
        settings.getme_pause,
        settings.duration,
        settings.deadline,
    )];
    lines.push(format!(
        "{:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>11} {:>7}  refusals",
        "clients",
        "offered/s",
        "goodput",
        "timeouts",
        "GetMe p50",
        "GetMe p99",
        "lapses",
        "CPU/answer",
        "other"
    ));
    let mut wrong = 0;
    let mut phases = Vec::new();
    for manners in [Manners::Polite, Manners::Impolite] {
        let lapses_before = lapses(authd_log);
        let cpu = CpuWindow::open(server_pid);
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let offered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let until = started + settings.duration;
        let mut tasks = Vec::new();
        for (i, channel) in (0..settings.clients).zip(channels.iter().cycle()) {
            let (accounts, outcomes, offered, channel) = (
                accounts.clone(),
                outcomes.clone(),
                offered.clone(),
                channel.clone(),
            );
            let (deadline, retry) = (settings.deadline, settings.impolite_retry);
            tasks.push(tokio::spawn(async move {
                let mut client = AuthServiceClient::new(channel);
                while Instant::now() < until {
                    offered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait =
                        login_once(&mut client, &accounts[i], deadline, manners, retry, &outcomes).await;
                    if let Some(wait) = wait {
                        tokio::time::sleep(wait.min(until.saturating_duration_since(Instant::now()))).await;
                    }
                }
            }));
        }
        let probing = probe_getme(addr, probes, settings, until);
        for task in tasks {
            let _ = task.await;
        }
        let (mut latencies, getme_failures) = tokio::task::spawn_blocking(move || probing.join())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let elapsed = started.elapsed();
        let cpu = cpu.close();
        latencies.sort_unstable();
        let o = outcomes
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default();
        let answered = o.ok + o.refused.values().sum::<u64>() + o.other.values().sum::<u64>();
        let cpu_per_answer = cpu.server.map_or_else(
            || "n/a".to_owned(),
            |ticks| format!("{:.0} µs", ticks as f64 * TICK_US / answered.max(1) as f64),
        );
        let lapsed = match (lapses_before, lapses(authd_log)) {
            (Some(before), Some(after)) => (after - before).to_string(),
            _ => "n/a".to_owned(),
        };
        let goodput = o.ok as f64 / elapsed.as_secs_f64();
        let (p50, p99) = (percentile_ms(&latencies, 0.50), percentile_ms(&latencies, 0.99));
        wrong += o.other.values().sum::<u64>() + getme_failures;
        lines.push(format!(
            "{:>9} {:>9.0} {:>9.1} {:>9} {:>8.1} ms {:>8.1} ms {:>7} {:>11} {:>7}  {:?}",
            format!("{manners:?}").to_lowercase(),
            offered.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
            goodput,
            o.timeouts,
            p50,
            p99,
            lapsed,
            cpu_per_answer,
            o.other.values().sum::<u64>() + getme_failures,
            o.refused,
        ));
        if !o.other.is_empty() {
            lines.push(format!("    other outcomes ({manners:?}): {:?}", o.other));
        }
        phases.push(Phase {
            goodput,
            getme_p99_ms: p99,
        });
        // Let waits and queues empty before the next phase.
        tokio::time::sleep(settings.deadline).await;
    }
    if let [polite, impolite] = &phases[..] {
        lines.push(format!(
            "retry flood: impolite goodput {:.2}× the polite one; GetMe p99 {:.1} ms polite, {:.1} ms impolite",
            impolite.goodput / polite.goodput.max(f64::MIN_POSITIVE),
            polite.getme_p99_ms,
            impolite.getme_p99_ms,
        ));
    }
    (lines, wrong)
}

/// One Login; how long this client waits before the next.
async fn login_once(
    client: &mut AuthServiceClient<Channel>,
    account: &Account,
    deadline: Duration,
    manners: Manners,
    impolite_retry: Duration,
    outcomes: &Mutex<Outcomes>,
) -> Option<Duration> {
    let mut request = tonic::Request::new(pb::LoginRequest {
        login: account.email.clone(),
        password: account.password.clone(),
    });
    request.set_timeout(deadline);
    let result = client.login(request).await;
    let mut o = outcomes.lock().ok()?;
    match result {
        Ok(_) => {
            o.ok += 1;
            None
        }
        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
            let reason = s.get_details_error_info().map(|i| i.reason).unwrap_or_default();
            *o.refused.entry(reason).or_default() += 1;
            let told = s.get_details_retry_info().and_then(|r| r.retry_delay);
            Some(match manners {
                // A refusal without RetryInfo breaks the contract: counted
                // as other below, and waited out for a second.
                Manners::Polite => told.unwrap_or(Duration::from_secs(1)),
                Manners::Impolite => impolite_retry,
            })
        }
        Err(s) if matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            o.timeouts += 1;
            Some(impolite_retry)
        }
        Err(s) => {
            *o.other
                .entry(format!("{:?}/{}", s.code(), crate::client::code_label(&s)))
                .or_default() += 1;
            Some(impolite_retry)
        }
    }
}

/// The change listener's "caches off" warnings in authd's log so far.
fn lapses(log: Option<&Path>) -> Option<u64> {
    let text = std::fs::read_to_string(log?).ok()?;
    Some(text.lines().filter(|l| l.contains("caches off")).count() as u64)
}
