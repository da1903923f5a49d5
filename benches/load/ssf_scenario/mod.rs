//! The Shared Signals scenarios (issue 26): how long a Logout takes to
//! reach every receiver as a session-revoked SET, by push (RFC 8935) and by
//! poll (RFC 8936), with 1 and 100 streams, and what it costs authd.
//!
//! - `ssf-push`: one receiver per stream inside the generator (an HTTP/1
//!   server on a port of its own, answering 202), streams configured over
//!   the HTTP face with a service key of scope `events.receive`.
//! - `ssf-poll`: one poll client per stream, long polling with
//!   `returnImmediately: false` and acknowledging each batch in its next
//!   poll, over HTTP/2 connections of their own.
//! - `ssf-push-dead`: 100 push streams, 99 of them the same live receivers
//!   throughout, the 100th in turns alive, a receiver that accepts
//!   connections and never answers, and a port that refuses them; the 99's
//!   latencies compared across the three in this run.
//!
//! Sessions are logged in first (not timed, outside the CPU window: Login
//! is argon2's). Then `clients` tasks each take a session, send its Logout,
//! and wait until its SET reached every counted stream before the next;
//! the clock starts **when Logout's answer arrives** (a SET that arrives
//! before that counts as 0). Two rows per stream count: every SET's
//! latency at every stream (calls/s: SETs delivered per second; CPU per
//! SET), and the last stream's (calls/s: Logouts per second; CPU per
//! Logout). A SET that never arrives (10 s) is an error.

mod receivers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use tokio::sync::Mutex;

use self::receivers::{Board, DeadReceiver, Face, PushReceiver, session_of, spawn_poller};
use crate::client::code_label;
use crate::procfs::{CpuUse, CpuWindow};
use crate::revocation_scenario::sign_in;
use crate::seeding::Shared;
use crate::stats::{Row, Stats, percentile_ms};

/// A SET not at every counted stream this long after its Logout's answer
/// counts as an error.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Streams of the dead-receiver comparison, the odd one out included.
const DEAD_STREAMS: usize = 100;

pub struct Settings {
    /// Stream counts measured (`--ssf-streams`).
    pub streams: Vec<usize>,
    /// Logouts per measurement (`--ssf-logouts`).
    pub logouts: usize,
    /// Logouts in flight (`--ssf-clients`).
    pub clients: usize,
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Push,
    Poll,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::Push => "ssf-push",
            Delivery::Poll => "ssf-poll",
        }
    }
}

/// `ssf-push` or `ssf-poll` at each stream count. `key` has scope
/// `events.receive`.
pub async fn run(
    delivery: Delivery,
    addr: &str,
    key: &str,
    shared: &Shared,
    settings: &Settings,
    server_pid: Option<u32>,
) -> Outcome {
    let mut outcome = Outcome {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    for &n in &settings.streams {
        let board = Arc::new(Board::default());
        // The streams' own connections: control and, for poll, 50 long
        // polls per connection (authd allows 128 streams on one).
        let face = Arc::new(Face::connect(addr, key, n.div_ceil(50).max(1)).await);
        let mut ids = Vec::with_capacity(n);
        let mut receivers = Vec::new();
        let mut pollers = Vec::new();
        for stream in 0..n {
            match delivery {
                Delivery::Push => {
                    let receiver = PushReceiver::spawn(stream, &board).await;
                    ids.push(
                        face.push_stream(&receiver.url, Some(&receiver.authorization))
                            .await,
                    );
                    receivers.push(receiver);
                }
                Delivery::Poll => {
                    let id = face.poll_stream().await;
                    pollers.push(spawn_poller(&face, stream, stream, &id, &board));
                    ids.push(id);
                }
            }
        }
        let label = format!("{}, {n} stream{}", delivery.name(), if n == 1 { "" } else { "s" });
        let plan = Plan {
            label: &label,
            warm_up_streams: n,
            counted: n,
            logouts: settings.logouts,
        };
        let measured = measure(shared, &board, &plan, settings.clients, server_pid).await;
        for poller in &pollers {
            poller.abort();
        }
        face.delete_streams(&ids, &board).await;
        drop(receivers);
        outcome.notes.extend(measured.notes(&label, &board));
        outcome.rows.extend(measured.rows(&label, n, &board));
    }
    outcome
}

/// `ssf-push-dead`: 99 live push streams throughout, and a 100th whose
/// receiver is alive, silent, then refusing; one row pair each, and the
/// ratios of the 99's latencies. With 20 Logouts or more the three take
/// turns twice, in the order A B C C B A, half the Logouts each time, so
/// that drift of this shared machine falls on all three alike.
pub async fn run_dead(
    addr: &str,
    key: &str,
    shared: &Shared,
    settings: &Settings,
    server_pid: Option<u32>,
) -> Outcome {
    const VARIANTS: [&str; 3] = ["alive", "silent", "refusing"];
    let counted = DEAD_STREAMS - 1;
    let board = Arc::new(Board::default());
    let face = Face::connect(addr, key, 1).await;
    let mut receivers = Vec::with_capacity(counted);
    let mut ids = Vec::with_capacity(counted);
    for stream in 0..counted {
        let receiver = PushReceiver::spawn(stream, &board).await;
        ids.push(
            face.push_stream(&receiver.url, Some(&receiver.authorization))
                .await,
        );
        receivers.push(receiver);
    }
    let order: &[usize] = if settings.logouts >= 20 {
        &[0, 1, 2, 2, 1, 0]
    } else {
        &[0, 1, 2]
    };
    let logouts = settings.logouts / (order.len() / VARIANTS.len());
    let mut results: Vec<Option<Measured>> = (0..VARIANTS.len()).map(|_| None).collect();
    let mut silent_accepted = 0;
    for &v in order {
        let label = format!("ssf-push-dead, 99 + 1 {}", VARIANTS[v]);
        let (odd_id, measured) = if v == 0 {
            let odd = PushReceiver::spawn(counted, &board).await;
            let id = face.push_stream(&odd.url, Some(&odd.authorization)).await;
            // The warm-up waits for the 100th too: it is claimed and live.
            let plan = Plan {
                label: &label,
                warm_up_streams: DEAD_STREAMS,
                counted,
                logouts,
            };
            let measured = measure(shared, &board, &plan, settings.clients, server_pid).await;
            drop(odd);
            (id, measured)
        } else {
            let dead = if v == 1 {
                DeadReceiver::silent().await
            } else {
                DeadReceiver::refusing().await
            };
            let id = face.push_stream(&dead.url, None).await;
            // authd claims new push streams every 2 s; the dead one must be
            // failing before the clock starts (the warm-up Logout gives it
            // its first SET to fail with).
            tokio::time::sleep(Duration::from_millis(2_100)).await;
            let plan = Plan {
                label: &label,
                warm_up_streams: counted,
                counted,
                logouts,
            };
            let measured = measure(shared, &board, &plan, settings.clients, server_pid).await;
            silent_accepted += dead.accepted.load(std::sync::atomic::Ordering::Relaxed);
            (id, measured)
        };
        face.delete_streams(std::slice::from_ref(&odd_id), &board).await;
        results[v] = Some(match results[v].take() {
            Some(before) => before.merge(measured),
            None => measured,
        });
    }
    face.delete_streams(&ids, &board).await;
    drop(receivers);
    let mut outcome = Outcome {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let mut p99s: Vec<(&str, f64, f64)> = Vec::new();
    for (v, measured) in results.into_iter().enumerate() {
        let Some(measured) = measured else { continue };
        let label = format!("ssf-push-dead, 99 + 1 {}", VARIANTS[v]);
        outcome.notes.extend(measured.notes(&label, &board));
        let rows = measured.rows(&label, counted, &board);
        p99s.push((
            VARIANTS[v],
            rows.first().map_or(f64::NAN, |r| r.p99_ms),
            rows.last().map_or(f64::NAN, |r| r.p99_ms),
        ));
        outcome.rows.extend(rows);
    }
    outcome.notes.push(format!(
        "ssf-push-dead: {} turn(s) per variant (order {}); the silent receiver accepted {silent_accepted} \
         connection(s) and answered none; strays are mostly the uncounted 100th stream's SETs arriving \
         after the 99 others'",
        order.len() / VARIANTS.len(),
        order.iter().map(|&v| VARIANTS[v]).collect::<Vec<_>>().join(" "),
    ));
    if let Some(&(_, alive_each, alive_last)) = p99s.first() {
        for &(variant, each, last) in &p99s[1..] {
            outcome.notes.push(format!(
                "ssf-push-dead: the 99 live streams' p99 with the 100th {variant} ÷ alive: each SET \
                 {each:.2} ÷ {alive_each:.2} ms = {:.2}; last stream {last:.2} ÷ {alive_last:.2} ms = {:.2}",
                each / alive_each,
                last / alive_last
            ));
        }
    }
    let errors = board.take_errors();
    if let Some(row) = outcome.rows.last_mut() {
        for (k, v) in errors {
            *row.errors.entry(k).or_default() += v;
        }
    }
    outcome
}

/// What one measurement does: `logouts` Logouts whose SETs must reach
/// streams `0..counted`, after a warm-up Logout that must reach streams
/// `0..warm_up_streams`.
struct Plan<'a> {
    label: &'a str,
    warm_up_streams: usize,
    counted: usize,
    logouts: usize,
}

/// One measurement's results.
struct Measured {
    /// Every SET at every counted stream.
    each: Stats,
    /// The last counted stream's, per Logout.
    last: Stats,
    logout_us: Vec<u32>,
    /// SETs that arrived before their Logout's answer.
    early: u64,
    elapsed: Duration,
    cpu: CpuUse,
    warm_up: Result<Duration, String>,
}

impl Measured {
    /// Two turns of the same variant as one.
    fn merge(mut self, later: Measured) -> Measured {
        self.each.merge(later.each);
        self.last.merge(later.last);
        self.logout_us.extend(later.logout_us);
        self.early += later.early;
        self.cpu = self.cpu.merge(self.elapsed, later.cpu, later.elapsed);
        self.elapsed += later.elapsed;
        self.warm_up = match (self.warm_up, later.warm_up) {
            (Ok(a), Ok(b)) => Ok(a.max(b)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        self
    }

    fn notes(&self, label: &str, board: &Board) -> Vec<String> {
        let mut logout_us = self.logout_us.clone();
        logout_us.sort_unstable();
        let warm_up = match &self.warm_up {
            Ok(took) => format!(
                "the warm-up Logout(s) reached every stream within {:.0} ms",
                took.as_secs_f64() * 1e3
            ),
            Err(e) => format!("warm-up Logout: {e}"),
        };
        vec![format!(
            "{label}: {} Logouts; the Logout call itself p50 {:.2} ms, p99 {:.2} ms; {} SET(s) arrived before \
             Logout's answer (counted as 0); duplicates {}, strays {}; {warm_up}",
            logout_us.len(),
            percentile_ms(&logout_us, 0.5),
            percentile_ms(&logout_us, 0.99),
            self.early,
            board.duplicates.swap(0, std::sync::atomic::Ordering::Relaxed),
            board.strays.swap(0, std::sync::atomic::Ordering::Relaxed),
        )]
    }

    /// One row for one stream; two (each SET, last stream) for more.
    fn rows(self, label: &str, counted: usize, board: &Board) -> Vec<Row> {
        let mut last = Row::from_stats(format!("{label}: last stream"), self.last, self.elapsed);
        for (k, v) in board.take_errors() {
            *last.errors.entry(k).or_default() += v;
        }
        if counted == 1 {
            last.name = label.to_owned();
            last.cpu = Some(self.cpu);
            return vec![last];
        }
        let mut each = Row::from_stats(format!("{label}: each SET"), self.each, self.elapsed);
        each.cpu = Some(copy(&self.cpu));
        last.cpu = Some(self.cpu);
        vec![each, last]
    }
}

fn copy(c: &CpuUse) -> CpuUse {
    CpuUse {
        server: c.server,
        own: c.own,
        rest: c.rest,
        busy_percent: c.busy_percent,
        server_rss_kib: c.server_rss_kib,
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One Logout and its SET at streams `0..counted`: (latency per stream,
/// the Logout call's own time, SETs that beat the answer), or the label.
async fn logout_and_wait(
    client: &mut AuthServiceClient<tonic::transport::Channel>,
    board: &Board,
    tokens: &pb::TokenPair,
    counted: usize,
) -> Result<(Vec<Option<u32>>, u32, u64), String> {
    let sid = session_of(&tokens.access_token);
    let fired = board.expect(&sid, counted);
    let sent = Instant::now();
    let answer = client
        .logout(pb::LogoutRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await;
    let answered = Instant::now();
    if let Err(status) = answer {
        board.take(&sid);
        return Err(format!("logout:{}", code_label(&status)));
    }
    let _ = tokio::time::timeout(GIVE_UP, fired).await;
    let arrived = board.take(&sid);
    let early = arrived.iter().flatten().filter(|t| **t < answered).count() as u64;
    let latencies = arrived
        .iter()
        .map(|t| t.map(|t| micros(t.saturating_duration_since(answered))))
        .collect();
    Ok((latencies, micros(answered - sent), early))
}

/// Logs the sessions in, makes the warm-up Logout, then times the
/// Logouts with `clients` in flight.
async fn measure(
    shared: &Shared,
    board: &Arc<Board>,
    plan: &Plan<'_>,
    clients: usize,
    server_pid: Option<u32>,
) -> Measured {
    let (label, warm_up_streams, counted) = (plan.label, plan.warm_up_streams, plan.counted);
    let mut sessions = sign_in(shared, plan.logouts + 1).await;
    let warm = sessions.pop().expect("one session to warm up with");
    let mut client = AuthServiceClient::new(shared.channels[0].clone());
    let t = Instant::now();
    let warm_up = match logout_and_wait(&mut client, board, &warm, warm_up_streams).await {
        Ok((latencies, _, _)) if latencies.iter().all(Option::is_some) => Ok(t.elapsed()),
        Ok((latencies, _, _)) => Err(format!(
            "{label}: reached {} of {warm_up_streams} streams in {GIVE_UP:?}",
            latencies.iter().flatten().count()
        )),
        Err(e) => Err(e),
    };
    let queue = Arc::new(Mutex::new(sessions));
    let window = CpuWindow::open(server_pid);
    let started = window.started();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut client = AuthServiceClient::new(shared.channels[c % shared.channels.len()].clone());
        let queue = Arc::clone(&queue);
        let board = Arc::clone(board);
        tasks.push(tokio::spawn(async move {
            let (mut each, mut last) = (Stats::default(), Stats::default());
            let (mut logout_us, mut early) = (Vec::new(), 0u64);
            loop {
                let Some(tokens) = queue.lock().await.pop() else {
                    break;
                };
                match logout_and_wait(&mut client, &board, &tokens, counted).await {
                    Ok((latencies, call_us, beat)) => {
                        logout_us.push(call_us);
                        early += beat;
                        for latency in &latencies {
                            match latency {
                                Some(us) => each.latencies_us.push(*us),
                                None => each.error("not_delivered".into()),
                            }
                        }
                        match latencies.iter().copied().collect::<Option<Vec<u32>>>() {
                            Some(all) => last.latencies_us.push(all.into_iter().max().unwrap_or(0)),
                            None => last.error("not_delivered_everywhere".into()),
                        }
                    }
                    Err(label) => {
                        each.error(label.clone());
                        last.error(label);
                    }
                }
            }
            (each, last, logout_us, early)
        }));
    }
    let mut measured = Measured {
        each: Stats::default(),
        last: Stats::default(),
        logout_us: Vec::new(),
        early: 0,
        elapsed: Duration::ZERO,
        cpu: CpuUse {
            server: None,
            own: 0,
            rest: None,
            busy_percent: f64::NAN,
            server_rss_kib: None,
        },
        warm_up,
    };
    for task in tasks {
        let (each, last, logout_us, early) = task.await.expect("ssf client panicked");
        measured.each.merge(each);
        measured.last.merge(last);
        measured.logout_us.extend(logout_us);
        measured.early += early;
    }
    measured.elapsed = started.elapsed();
    measured.cpu = window.close();
    measured
}
