#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Load generator for authd (`cargo bench --bench load -- [options]`).
//!
//! Without `--addr` it starts a throwaway PostgreSQL cluster and the release
//! `authd` binary as a separate process on 127.0.0.1, seeds accounts with
//! Register, then drives each scenario with N concurrent tasks over M HTTP/2
//! connections for T seconds. One table row per scenario: successful calls
//! per second, p50/p99/p99.9 latency of successful calls, and every non-OK
//! answer counted as an error by gRPC code (never as a success). Baselines
//! measured in the same run: the health Check floor and the argon2 ceiling
//! (cores ÷ one argon2id hash with the default parameters). Finally the peak
//! RSS of the service during a burst of simultaneous Logins.
//!
//! Timings are reported, never asserted. `--smoke` (about a second per
//! scenario) exits non-zero if any call failed, for CI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use authd::crypto::password::Argon2Settings;
use authd::local_pg::{Durability, LocalPostgres};
use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const USAGE: &str = "usage: cargo bench --bench load -- [options]

  --duration SECS       seconds per scenario (default 10; --smoke: 1)
  --concurrency N       concurrent calls in flight (default 64)
  --connections M       HTTP/2 connections they share (default 4)
  --scenarios LIST      comma-separated, in order (default: all)
                        health,getme,introspect,jwks,refresh,mix,login,register
  --burst N             simultaneous Logins for the memory measurement
                        (default 500; --smoke: 64; 0: skip)
  --addr URL            drive an already running server (http://127.0.0.1:PORT)
                        instead of starting one; it needs AUTHD_PEER_RATE_LIMIT=0
  --pid PID             with --addr: the server's process, for its peak RSS
  --server-env K=V      extra environment for the started authd (repeatable),
                        e.g. AUTHD_HASH_WORKERS=3 or MALLOC_ARENA_MAX=2
  --smoke               quick CI run; exits 1 if any call failed";

// ---------------------------------------------------------------- options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Health,
    GetMe,
    Introspect,
    Jwks,
    Refresh,
    Login,
    Register,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Health => "health",
            Op::GetMe => "getme",
            Op::Introspect => "introspect",
            Op::Jwks => "jwks",
            Op::Refresh => "refresh",
            Op::Login => "login",
            Op::Register => "register",
        }
    }
}

/// A scenario: which operations, in what proportions (percent).
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    mix: Vec<(Op, u32)>,
}

fn scenario(name: &str) -> Option<Scenario> {
    let single = |op: Op| Scenario {
        name: op.name(),
        mix: vec![(op, 100)],
    };
    Some(match name {
        "health" => single(Op::Health),
        "getme" => single(Op::GetMe),
        "introspect" => single(Op::Introspect),
        "jwks" => single(Op::Jwks),
        "refresh" => single(Op::Refresh),
        "login" => single(Op::Login),
        "register" => single(Op::Register),
        "mix" => Scenario {
            name: "mix",
            mix: vec![(Op::GetMe, 90), (Op::Refresh, 8), (Op::Login, 2)],
        },
        _ => return None,
    })
}

const ALL_SCENARIOS: &str = "health,getme,introspect,jwks,refresh,mix,login,register";

struct Options {
    duration: Duration,
    concurrency: usize,
    connections: usize,
    scenarios: Vec<Scenario>,
    burst: usize,
    addr: Option<String>,
    pid: Option<u32>,
    server_env: Vec<(String, String)>,
    smoke: bool,
}

fn parse_args() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut o = Options {
        duration: Duration::from_secs(if smoke { 1 } else { 10 }),
        concurrency: 64,
        connections: 4,
        scenarios: Vec::new(),
        burst: if smoke { 64 } else { 500 },
        addr: None,
        pid: None,
        server_env: Vec::new(),
        smoke,
    };
    let mut scenarios = ALL_SCENARIOS.to_owned();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            // cargo passes --bench to harness = false targets.
            "--bench" | "--smoke" => {}
            "--duration" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--duration: {e}"))?;
                if !(secs > 0.0 && secs < 3600.0) {
                    return Err("--duration must be between 0 and 3600 seconds".into());
                }
                o.duration = Duration::from_secs_f64(secs);
            }
            "--concurrency" => o.concurrency = positive(&flag, &value()?)?,
            "--connections" => o.connections = positive(&flag, &value()?)?,
            "--burst" => o.burst = value()?.parse().map_err(|e| format!("--burst: {e}"))?,
            "--scenarios" => scenarios = value()?,
            "--addr" => o.addr = Some(value()?),
            "--pid" => o.pid = Some(value()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--server-env" => {
                let v = value()?;
                let (k, v) = v.split_once('=').ok_or("--server-env takes KEY=VALUE")?;
                o.server_env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    for name in scenarios.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        o.scenarios
            .push(scenario(name).ok_or_else(|| format!("unknown scenario {name}"))?);
    }
    if let Some(addr) = &o.addr {
        let host_ok = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
            .iter()
            .any(|p| addr.starts_with(p));
        if !host_ok {
            return Err("--addr must be a loopback address such as http://127.0.0.1:50051".into());
        }
    }
    Ok(o)
}

fn positive(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} must be a positive integer")),
    }
}

// ---------------------------------------------------------------- stats

/// Latencies (µs) of successful calls and counts of failed ones.
#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn record(&mut self, started: Instant, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                let us = started.elapsed().as_micros();
                self.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Err(label) => *self.errors.entry(label).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// One line of the results table.
struct Row {
    name: String,
    calls_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    ok: usize,
    errors: BTreeMap<String, u64>,
    cpu: Option<CpuUse>,
}

impl Row {
    fn from_stats(name: String, mut stats: Stats, elapsed: Duration) -> Self {
        stats.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            let v = &stats.latencies_us;
            if v.is_empty() {
                return f64::NAN;
            }
            // Nearest rank.
            let rank = ((v.len() as f64) * p).ceil() as usize;
            f64::from(v[rank.clamp(1, v.len()) - 1]) / 1000.0
        };
        Row {
            name,
            calls_per_sec: stats.latencies_us.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            ok: stats.latencies_us.len(),
            errors: stats.errors,
            cpu: None,
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn print(&self) {
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cpu = match &self.cpu {
            Some(c) if self.ok > 0 => {
                let per_call = |ticks: Option<u64>| {
                    ticks.map_or_else(
                        || "?".to_owned(),
                        |t| format!("{:.0}", t as f64 * TICK_US / self.ok as f64),
                    )
                };
                format!(
                    "{:.0}% | {} | {} | {} | {}",
                    c.busy_percent,
                    per_call(c.server),
                    per_call(Some(c.own)),
                    per_call(c.rest),
                    c.server_rss_kib
                        .map_or_else(|| "?".to_owned(), |k| format!("{:.0}", mib(k)))
                )
            }
            _ => " | | | | ".to_owned(),
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {cpu} |",
            self.name, self.calls_per_sec, self.p50_ms, self.p99_ms, self.p999_ms, self.ok, errors
        );
    }
}

fn code_label(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

// ---------------------------------------------------------------- CPU

/// Microseconds per clock tick of /proc (USER_HZ is 100 on Linux).
const TICK_US: f64 = 10_000.0;

/// CPU time in clock ticks at one moment: the service, this process, and
/// the whole machine (busy, i.e. everything but idle, iowait and steal).
#[derive(Clone, Copy)]
struct CpuSnapshot {
    server: Option<u64>,
    own: u64,
    busy: Option<u64>,
}

/// CPU used during a scenario: ticks per party, and how busy the machine was.
struct CpuUse {
    server: Option<u64>,
    own: u64,
    /// PostgreSQL and anything else running on the machine.
    rest: Option<u64>,
    busy_percent: f64,
    /// The service's resident memory at the end, KiB.
    server_rss_kib: Option<u64>,
}

fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm)": state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

impl CpuSnapshot {
    fn take(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|p| process_ticks(&p.to_string())),
            own: process_ticks("self").unwrap_or(0),
            busy: machine_busy_ticks(),
        }
    }

    fn since(&self, before: &Self, elapsed: Duration, cores: usize) -> CpuUse {
        let server = self.server.zip(before.server).map(|(a, b)| a.saturating_sub(b));
        let own = self.own.saturating_sub(before.own);
        let busy = self.busy.zip(before.busy).map(|(a, b)| a.saturating_sub(b));
        CpuUse {
            server,
            own,
            rest: busy.zip(server).map(|(b, s)| b.saturating_sub(s + own)),
            busy_percent: busy.map_or(f64::NAN, |b| {
                b as f64 * TICK_US / (elapsed.as_secs_f64() * 1e6 * cores as f64) * 100.0
            }),
            server_rss_kib: None,
        }
    }
}

// ---------------------------------------------------------------- clients

struct Account {
    email: String,
    password: String,
}

/// What one load task carries from scenario to scenario: its account and
/// its own session (access token and rotating refresh token).
struct TaskState {
    account: usize,
    access: String,
    /// `Bearer <access>`, parsed once per token rather than once per call.
    authorization: MetadataValue<Ascii>,
    refresh: String,
    /// A Refresh failed: the chain may be broken; log in again first.
    relogin: bool,
    rng: u64,
    registered: u64,
}

struct Shared {
    channels: Vec<Channel>,
    accounts: Vec<Account>,
    run_id: String,
}

fn authorization(access_token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {access_token}").parse().unwrap()
}

fn bearer<T>(message: T, authorization: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    request
}

impl TaskState {
    fn set_tokens(&mut self, tokens: pb::TokenPair) {
        self.authorization = authorization(&tokens.access_token);
        self.access = tokens.access_token;
        self.refresh = tokens.refresh_token;
    }
}

async fn login(client: &mut AuthServiceClient<Channel>, account: &Account) -> Result<pb::TokenPair, String> {
    let response = client
        .login(pb::LoginRequest {
            login: account.email.clone(),
            password: account.password.clone(),
        })
        .await
        .map_err(|s| code_label(&s))?;
    response.into_inner().tokens.ok_or_else(|| "no_tokens".to_owned())
}

/// One call of `op`; `Err` carries the label it is counted under.
async fn call(
    op: Op,
    task: usize,
    state: &mut TaskState,
    client: &mut AuthServiceClient<Channel>,
    health: &mut HealthClient<Channel>,
    shared: &Shared,
) -> Result<(), String> {
    match op {
        Op::Health => {
            let r = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|s| code_label(&s))?;
            if r.get_ref().status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err("NOT_SERVING".into())
            }
        }
        Op::GetMe => {
            let r = client
                .get_me(bearer(pb::GetMeRequest {}, &state.authorization))
                .await
                .map_err(|s| code_label(&s))?;
            match r.into_inner().user {
                Some(_) => Ok(()),
                None => Err("no_user".into()),
            }
        }
        Op::Introspect => {
            let r = client
                .introspect_token(pb::IntrospectTokenRequest {
                    access_token: state.access.clone(),
                })
                .await
                .map_err(|s| code_label(&s))?;
            if r.get_ref().active {
                Ok(())
            } else {
                Err("inactive".into())
            }
        }
        Op::Jwks => {
            let r = client
                .get_jwks(pb::GetJwksRequest {})
                .await
                .map_err(|s| code_label(&s))?;
            if r.get_ref().keys.is_empty() {
                Err("no_keys".into())
            } else {
                Ok(())
            }
        }
        Op::Refresh => {
            let result = client
                .refresh(pb::RefreshRequest {
                    refresh_token: state.refresh.clone(),
                })
                .await;
            match result.map(|r| r.into_inner().tokens) {
                Ok(Some(tokens)) => {
                    state.set_tokens(tokens);
                    Ok(())
                }
                Ok(None) => {
                    state.relogin = true;
                    Err("no_tokens".into())
                }
                Err(s) => {
                    state.relogin = true;
                    Err(code_label(&s))
                }
            }
        }
        Op::Login => login(client, &shared.accounts[state.account]).await.map(drop),
        Op::Register => {
            state.registered += 1;
            let r = client
                .register(pb::RegisterRequest {
                    email: format!("reg-{}-{task}-{}@example.com", shared.run_id, state.registered),
                    password: format!("load test passphrase {}", uuid::Uuid::new_v4()),
                    ..Default::default()
                })
                .await
                .map_err(|s| code_label(&s))?;
            match r.into_inner().user {
                Some(_) => Ok(()),
                None => Err("no_user".into()),
            }
        }
    }
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn pick(mix: &[(Op, u32)], rng: &mut u64) -> Op {
    if mix.len() == 1 {
        return mix[0].0;
    }
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut r = (next_random(rng) % u64::from(total)) as u32;
    for (op, weight) in mix {
        if r < *weight {
            return *op;
        }
        r -= weight;
    }
    mix[mix.len() - 1].0
}

/// Runs one scenario; returns its total row and, for a mix, one row per op.
async fn run_scenario(
    sc: &Scenario,
    states: &mut Vec<TaskState>,
    shared: &Arc<Shared>,
    duration: Duration,
    server_pid: Option<u32>,
) -> Vec<Row> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_before = CpuSnapshot::take(server_pid);
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::with_capacity(states.len());
    for (task, mut state) in std::mem::take(states).into_iter().enumerate() {
        let shared = Arc::clone(shared);
        let mix = sc.mix.clone();
        handles.push(tokio::spawn(async move {
            let channel = shared.channels[task % shared.channels.len()].clone();
            let mut client = AuthServiceClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            let mut stats: Vec<Stats> = mix.iter().map(|_| Stats::default()).collect();
            while Instant::now() < deadline {
                if state.relogin {
                    // Recovery is not timed; the failure was already counted.
                    if let Ok(tokens) = login(&mut client, &shared.accounts[state.account]).await {
                        state.set_tokens(tokens);
                        state.relogin = false;
                    }
                    continue;
                }
                let op = pick(&mix, &mut state.rng);
                let index = mix.iter().position(|(o, _)| *o == op).unwrap_or(0);
                let t = Instant::now();
                let outcome = call(op, task, &mut state, &mut client, &mut health, &shared).await;
                stats[index].record(t, outcome);
            }
            (state, stats, Instant::now())
        }));
    }
    let mut per_op: Vec<Stats> = sc.mix.iter().map(|_| Stats::default()).collect();
    let mut finished = started;
    for handle in handles {
        let (state, stats, done) = handle.await.expect("load task panicked");
        states.push(state);
        finished = finished.max(done);
        for (total, s) in per_op.iter_mut().zip(stats) {
            total.merge(s);
        }
    }
    let elapsed = finished - started;
    let mut cpu = CpuSnapshot::take(server_pid).since(&cpu_before, started.elapsed(), cores);
    cpu.server_rss_kib = server_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let mut rows = Vec::new();
    if sc.mix.len() > 1 {
        let mut all = Stats::default();
        for s in &per_op {
            all.latencies_us.extend_from_slice(&s.latencies_us);
            for (k, v) in &s.errors {
                *all.errors.entry(k.clone()).or_default() += v;
            }
        }
        rows.push(Row::from_stats(sc.name.to_owned(), all, elapsed));
        rows[0].cpu = Some(cpu);
        for ((op, _), s) in sc.mix.iter().zip(per_op) {
            rows.push(Row::from_stats(
                format!("  {}:{}", sc.name, op.name()),
                s,
                elapsed,
            ));
        }
    } else {
        let s = per_op.pop().unwrap_or_default();
        let mut row = Row::from_stats(sc.name.to_owned(), s, elapsed);
        row.cpu = Some(cpu);
        rows.push(row);
    }
    rows
}

// ---------------------------------------------------------------- server

struct Server {
    addr: String,
    child: Option<tokio::process::Child>,
    pid: Option<u32>,
    log: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    pg: Option<LocalPostgres>,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr").port()
}

async fn start_server(scratch: &Path, extra_env: &[(String, String)]) -> Server {
    let pg_root = scratch.join("cluster");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&pg_root, Durability::Throwaway))
        .await
        .unwrap()
        .expect("starting the throwaway PostgreSQL cluster");
    pg.ensure_database("authd_bench")
        .await
        .expect("creating the database");
    let data_dir = scratch.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    // A configured key, as in production (no development-key warning).
    let key = data_dir.join("signing.pem");
    std::fs::write(&key, authd::crypto::keys::generate_ed25519_pem().unwrap()).unwrap();
    let log = scratch.join("authd.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_authd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", pg.url("authd_bench"))
        .env("AUTHD_LISTEN", &listen)
        .env("AUTHD_DATA_DIR", &data_dir)
        .env("AUTHD_PEER_RATE_LIMIT", "0")
        .env("AUTHD_SIGNING_KEYS", &key)
        .env("AUTHD_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .current_dir(&data_dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("starting authd");
    let pid = child.id();
    Server {
        addr: format!("http://{listen}"),
        child: Some(child),
        pid,
        log: Some(log),
        data_dir: Some(data_dir),
        pg: Some(pg),
    }
}

async fn wait_until_serving(server: &mut Server) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(child) = server.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("authd exited during start-up with {status}; {}", log_tail(server));
        }
        if let Ok(endpoint) = Endpoint::from_shared(server.addr.clone())
            && let Ok(channel) = endpoint.connect().await
            && let Ok(r) = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            && r.get_ref().status == ServingStatus::Serving as i32
        {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "authd at {} not SERVING after 60 s; {}",
            server.addr,
            log_tail(server)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_tail(server: &Server) -> String {
    let Some(log) = &server.log else {
        return String::new();
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("log {}:\n{tail}", log.display())
}

/// SIGTERM, a bounded wait for the graceful exit, then the cluster.
async fn stop_server(server: &mut Server) {
    if let (Some(mut child), Some(pid)) = (server.child.take(), server.pid) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("authd exited with {status}"),
            _ => {
                eprintln!("authd did not stop within 20 s of SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
    }
    if let Some(log) = &server.log {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines = text.lines().count();
        if lines > 0 {
            println!(
                "\nservice log (RUST_LOG=warn): {lines} line(s); last ones:\n{}",
                text.lines()
                    .skip(lines.saturating_sub(5))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    if let Some(pg) = server.pg.take() {
        tokio::task::spawn_blocking(move || pg.stop()).await.unwrap();
    }
    if let Some(dir) = server.data_dir.take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------- setup

async fn connect(addr: &str, n: usize) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = Endpoint::from_shared(addr.to_owned())
            .expect("server address")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connecting to authd");
        channels.push(channel);
    }
    channels
}

/// Registers `n` accounts with `concurrency` tasks.
async fn seed_accounts(channels: &[Channel], run_id: &str, n: usize, concurrency: usize) -> Vec<Account> {
    let accounts: Arc<Vec<Account>> = Arc::new(
        (0..n)
            .map(|i| Account {
                email: format!("load-{run_id}-{i}@example.com"),
                password: format!("load test passphrase {}", uuid::Uuid::new_v4()),
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for task in 0..concurrency.min(n) {
        let accounts = Arc::clone(&accounts);
        let next = Arc::clone(&next);
        let mut client = AuthServiceClient::new(channels[task % channels.len()].clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(account) = accounts.get(i) else {
                    return;
                };
                client
                    .register(pb::RegisterRequest {
                        email: account.email.clone(),
                        password: account.password.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|s| panic!("seeding: Register failed: {s:?}"));
            }
        }));
    }
    for h in handles {
        h.await.expect("seeding task panicked");
    }
    Arc::try_unwrap(accounts).unwrap_or_else(|_| unreachable!("seeding tasks are done"))
}

/// One session per load task, for its account.
async fn sign_in_tasks(shared: &Arc<Shared>, concurrency: usize) -> Vec<TaskState> {
    let mut handles = Vec::new();
    for task in 0..concurrency {
        let shared = Arc::clone(shared);
        handles.push(tokio::spawn(async move {
            let mut client = AuthServiceClient::new(shared.channels[task % shared.channels.len()].clone());
            let account = task % shared.accounts.len();
            let tokens = login(&mut client, &shared.accounts[account])
                .await
                .unwrap_or_else(|e| panic!("setup: Login failed: {e}"));
            TaskState {
                account,
                authorization: authorization(&tokens.access_token),
                access: tokens.access_token,
                refresh: tokens.refresh_token,
                relogin: false,
                rng: 0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                registered: 0,
            }
        }));
    }
    let mut states = Vec::with_capacity(concurrency);
    for h in handles {
        states.push(h.await.expect("sign-in task panicked"));
    }
    states
}

// ---------------------------------------------------------------- baselines

fn argon2_hasher() -> argon2::Argon2<'static> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let s = Argon2Settings::default();
    let params = Params::new(s.memory_kib, s.iterations, s.parallelism, Some(32)).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_once(argon: &argon2::Argon2<'_>, i: usize, memory: &mut [argon2::Block]) {
    let mut out = [0u8; 32];
    let password = format!("load test passphrase {i}");
    argon
        .hash_password_into_with_memory(password.as_bytes(), b"sixteen byte salt", &mut out, memory)
        .unwrap();
    std::hint::black_box(out);
}

fn argon2_memory() -> Vec<argon2::Block> {
    vec![argon2::Block::default(); Argon2Settings::default().memory_kib as usize]
}

/// Times of `n` argon2id hashes with the default parameters, one after the
/// other on one thread, after a warm-up. The memory blocks are allocated once
/// and reused: this is the hash itself, not page faults or malloc.
fn argon2_samples(n: usize) -> Vec<Duration> {
    let argon = argon2_hasher();
    let mut memory = argon2_memory();
    hash_once(&argon, 0, &mut memory);
    (0..n)
        .map(|i| {
            let t = Instant::now();
            hash_once(&argon, i, &mut memory);
            t.elapsed()
        })
        .collect()
}

/// Hashes per second with every core hashing at once (for reference).
fn argon2_parallel_rate(cores: usize, per_thread: usize) -> f64 {
    let argon = argon2_hasher();
    let t = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..cores {
            let argon = &argon;
            scope.spawn(move || {
                let mut memory = argon2_memory();
                for i in 0..per_thread {
                    hash_once(argon, c * 1000 + i, &mut memory);
                }
            });
        }
    });
    (cores * per_thread) as f64 / t.elapsed().as_secs_f64()
}

fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The argon2 baseline, measured at the start and again just before each
/// scenario that hashes (while the service idles); the ceiling uses the
/// median of all samples, since a co-tenant's burst can skew one series.
struct Argon2Baseline {
    samples: Vec<Duration>,
    series_medians: Vec<Duration>,
    /// CPU ticks used on the machine outside this process while measuring.
    foreign_ticks: u64,
    measuring: Duration,
    /// Hashes per second with every core hashing at once, per series: what
    /// the machine really delivers when all cores hash (shared caches and
    /// memory bandwidth, or SMT siblings, make it less than the ceiling).
    parallel_rates: Vec<f64>,
}

impl Argon2Baseline {
    async fn measure(&mut self, n: usize) {
        let before = CpuSnapshot::take(None);
        let t = Instant::now();
        let series = tokio::task::spawn_blocking(move || argon2_samples(n))
            .await
            .unwrap();
        self.measuring += t.elapsed();
        let after = CpuSnapshot::take(None);
        if let (Some(b), Some(a)) = (before.busy, after.busy) {
            self.foreign_ticks += a
                .saturating_sub(b)
                .saturating_sub(after.own.saturating_sub(before.own));
        }
        self.series_medians.push(median(&series));
        self.samples.extend(series);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rate = tokio::task::spawn_blocking(move || argon2_parallel_rate(cores, n.div_ceil(2)))
            .await
            .unwrap();
        self.parallel_rates.push(rate);
    }

    fn parallel_rate(&self) -> f64 {
        let mut v = self.parallel_rates.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn median(&self) -> Duration {
        median(&self.samples)
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct BurstResult {
    row: Row,
    wall: Duration,
    rss_before_kib: Option<u64>,
    lifetime_hwm_kib: Option<u64>,
    hwm_kib: Option<u64>,
    hwm_reset: bool,
    sampled_max_kib: u64,
}

/// `n` Logins released at once, over enough connections that the server
/// sees them all concurrently; peak RSS of `pid` meanwhile.
async fn login_burst(addr: &str, shared: &Arc<Shared>, n: usize, pid: Option<u32>) -> BurstResult {
    // The server allows 128 concurrent streams per connection.
    let channels = connect(addr, n.div_ceil(100).max(1)).await;
    let rss_before_kib = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let lifetime_hwm_kib = pid.and_then(|p| proc_status_kib(p, "VmHWM:"));
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    let hwm_reset = pid.is_some_and(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok());
    let done = Arc::new(AtomicBool::new(false));
    let sampled = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|p| {
        let done = Arc::clone(&done);
        let sampled = Arc::clone(&sampled);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = proc_status_kib(p, "VmRSS:") {
                    sampled.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let shared = Arc::clone(shared);
        let barrier = Arc::clone(&barrier);
        let mut client = AuthServiceClient::new(channels[i % channels.len()].clone());
        handles.push(tokio::spawn(async move {
            let account = &shared.accounts[i % shared.accounts.len()];
            let mut stats = Stats::default();
            barrier.wait().await;
            let t = Instant::now();
            let outcome = login(&mut client, account).await.map(drop);
            stats.record(t, outcome);
            stats
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all = Stats::default();
    for h in handles {
        all.merge(h.await.expect("burst task panicked"));
    }
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let hwm_kib = pid.and_then(|p| proc_status_kib(p, "VmHWM:"));
    BurstResult {
        row: Row::from_stats(format!("login burst ×{n}"), all, wall),
        wall,
        rss_before_kib,
        lifetime_hwm_kib,
        hwm_kib,
        hwm_reset,
        sampled_max_kib: sampled.load(Ordering::Relaxed),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------- main

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("load: {e}\n");
            }
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let run_started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let defaults = Argon2Settings::default();
    println!(
        "authd load: {cores} cores ({}), {} s per scenario, {} concurrent calls over {} connections{}",
        cpu_model(),
        options.duration.as_secs_f64(),
        options.concurrency,
        options.connections,
        if options.smoke { " [smoke]" } else { "" },
    );

    // The argon2 baseline first, while nothing else of ours runs.
    let samples = if options.smoke { 7 } else { 21 };
    let mut baseline = Argon2Baseline {
        samples: Vec::new(),
        series_medians: Vec::new(),
        foreign_ticks: 0,
        measuring: Duration::ZERO,
        parallel_rates: Vec::new(),
    };
    baseline.measure(samples).await;
    let parallel_rate = baseline.parallel_rate();
    println!(
        "argon2id m={} KiB t={} p={}: median {:.1} ms over {samples} hashes; {cores} threads hashing at once: {parallel_rate:.1}/s",
        defaults.memory_kib,
        defaults.iterations,
        defaults.parallelism,
        baseline.median().as_secs_f64() * 1000.0,
    );

    let scratch = std::env::temp_dir().join(format!("authd-bench-{}", uuid::Uuid::new_v4().simple()));
    let mut server = match &options.addr {
        Some(addr) => Server {
            addr: addr.clone(),
            child: None,
            pid: options.pid,
            log: None,
            data_dir: None,
            pg: None,
        },
        None => {
            let t = Instant::now();
            let s = start_server(&scratch, &options.server_env).await;
            print!(
                "started PostgreSQL (throwaway) and {} ",
                env!("CARGO_BIN_EXE_authd")
            );
            let mut s = s;
            wait_until_serving(&mut s).await;
            println!(
                "at {} (pid {}) in {:.1} s",
                s.addr,
                s.pid.unwrap_or(0),
                t.elapsed().as_secs_f64()
            );
            s
        }
    };
    if options.addr.is_some() {
        wait_until_serving(&mut server).await;
    }
    for (k, v) in &options.server_env {
        println!("authd started with {k}={v}");
    }

    let channels = connect(&server.addr, options.connections).await;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    // Login charges its throttle counter before checking the password, so an
    // account with more than 5 Logins in flight is throttled by design: one
    // account per task, and no more than 4 burst Logins per account.
    let n_accounts = options.concurrency.max(options.burst.div_ceil(4)).max(1);
    let t = Instant::now();
    let accounts = seed_accounts(&channels, &run_id, n_accounts, options.concurrency).await;
    let shared = Arc::new(Shared {
        channels,
        accounts,
        run_id,
    });
    let mut states = sign_in_tasks(&shared, options.concurrency).await;
    println!(
        "seeded {n_accounts} accounts and {} sessions in {:.1} s",
        states.len(),
        t.elapsed().as_secs_f64()
    );
    if let Some(pid) = server.pid {
        let show = |field| {
            proc_status_kib(pid, field).map_or_else(|| "n/a".to_owned(), |k| format!("{:.1} MiB", mib(k)))
        };
        println!(
            "authd memory after seeding: VmRSS {}, VmHWM {}",
            show("VmRSS:"),
            show("VmHWM:")
        );
    }
    println!(
        "CPU columns: share of both cores busy, and CPU time per successful call of authd, of this load generator, and of everything else (PostgreSQL, other tenants); authd's RSS after the scenario.\n"
    );

    println!(
        "| scenario | calls/s | p50 ms | p99 ms | p99.9 ms | ok calls | errors | CPU busy | authd µs/call | loadgen µs/call | other µs/call | authd RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    let mut rows: Vec<Row> = Vec::new();
    for sc in &options.scenarios {
        if sc
            .mix
            .iter()
            .any(|(op, _)| matches!(op, Op::Login | Op::Register))
        {
            baseline.measure(samples).await;
        }
        for row in run_scenario(sc, &mut states, &shared, options.duration, server.pid).await {
            row.print();
            rows.push(row);
        }
    }

    let burst = if options.burst > 0 {
        let b = login_burst(&server.addr, &shared, options.burst, server.pid).await;
        b.row.print();
        Some(b)
    } else {
        None
    };

    // Ratios against the baselines of this run.
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let mut errors_total = rows.iter().map(Row::error_count).sum::<u64>();
    println!();
    if let Some(floor) = find("health") {
        for (name, label) in [("getme", "GetMe"), ("introspect", "IntrospectToken")] {
            if let Some(r) = find(name) {
                println!(
                    "{label} / health floor: {:.0} / {:.0} = {:.2}  (p99 {:.2} ms)",
                    r.calls_per_sec,
                    floor.calls_per_sec,
                    r.calls_per_sec / floor.calls_per_sec,
                    r.p99_ms
                );
            }
        }
    }
    let hash_time = baseline.median();
    let ceiling = cores as f64 / hash_time.as_secs_f64();
    println!(
        "argon2 ceiling: {cores} cores ÷ {:.2} ms (median of {} hashes in {} series, series medians {} ms; \
         other processes used {:.0}% of one core meanwhile) = {ceiling:.1} hashes/s",
        hash_time.as_secs_f64() * 1000.0,
        baseline.samples.len(),
        baseline.series_medians.len(),
        baseline
            .series_medians
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join("/"),
        baseline.foreign_ticks as f64 * TICK_US / baseline.measuring.as_secs_f64().max(1e-9) / 1e4,
    );
    let parallel = baseline.parallel_rate();
    println!(
        "argon2 with {cores} threads hashing at once: {parallel:.1} hashes/s (median of {} series) = {:.2} × the ceiling",
        baseline.parallel_rates.len(),
        parallel / ceiling
    );
    for (name, label) in [("login", "Login"), ("register", "Register")] {
        if let Some(r) = find(name) {
            println!(
                "{label} / argon2 ceiling: {:.1} / {ceiling:.1} = {:.2}; / parallel argon2 rate: {:.2}",
                r.calls_per_sec,
                r.calls_per_sec / ceiling,
                r.calls_per_sec / parallel
            );
        }
    }
    if let Some(b) = &burst {
        errors_total += b.row.error_count();
        let show = |k: Option<u64>| k.map_or_else(|| "n/a".to_owned(), |k| format!("{:.1} MiB", mib(k)));
        println!(
            "peak RSS during {} concurrent Logins: {} (VmHWM{}), sampled max VmRSS {:.1} MiB; \
             before the burst: VmRSS {}, VmHWM {}; burst took {:.1} s",
            options.burst,
            show(b.hwm_kib),
            if b.hwm_reset {
                ", reset just before the burst"
            } else {
                " over the process lifetime"
            },
            mib(b.sampled_max_kib),
            show(b.rss_before_kib),
            show(b.lifetime_hwm_kib),
            b.wall.as_secs_f64(),
        );
    }

    if options.addr.is_none() {
        stop_server(&mut server).await;
        let _ = std::fs::remove_dir_all(&scratch);
    }
    println!(
        "\ntotal errors: {errors_total}; whole run {:.1} s",
        run_started.elapsed().as_secs_f64()
    );
    if options.smoke && errors_total > 0 {
        eprintln!("smoke run: {errors_total} call(s) failed");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
