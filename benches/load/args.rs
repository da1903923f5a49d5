//! Command-line options (`cargo bench --bench load -- --help`).

use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use sqlx::postgres::PgConnectOptions;

use crate::scenarios::{self, Scenario};

/// Load generator for authd. Without --addr it starts a throwaway PostgreSQL
/// cluster and the authd binary, then runs each scenario and prints one table
/// row per scenario (see BENCHMARKS.md). Timings are printed, never asserted.
#[derive(Debug, Parser)]
#[command(
    name = "load",
    override_usage = "cargo bench --bench load -- [OPTIONS]",
    // As with the hand-written parser this replaced, a repeated option
    // takes its last value instead of being an error.
    args_override_self = true
)]
struct Args {
    /// Seconds per scenario [default: 10; --smoke: 1]
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    duration: Option<Duration>,

    /// Concurrent calls in flight
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = positive)]
    concurrency: usize,

    /// HTTP/2 connections they share
    #[arg(long, value_name = "M", default_value_t = 4, value_parser = positive)]
    connections: usize,

    /// Comma-separated, in order [default: all:
    /// health,getme,getuser,lookupuser,listusers,listsessions,introspect,jwks,client-credentials,exchange,
    /// client-credentials-http,exchange-http,refresh,mix,login,register,login-mfa,passkey-login,cache,revocation,
    /// ssf-push,ssf-poll,ssf-push-dead,startup (passkey-login answers as a page on authd's default
    /// AUTHD_WEBAUTHN_ORIGINS, http://localhost:3000, its tasks each from an address of its own in
    /// x-forwarded-for: with --addr, start authd with
    /// AUTHD_TRUSTED_PROXY_HEADER=x-forwarded-for);
    /// also available: flood (Logins at 1×, 2×, 4× the argon2 ceiling), retry-flood (clients retrying
    /// refused Logins politely, then every 0.2 s); with --addr, cache and login-mfa
    /// only with --database-url, revocation only with --watch-key, the four token grants only with
    /// --token-client, the three Shared Signals scenarios only with --ssf-key;
    /// with --scale: startup, cleanup and the call scenarios, default
    /// startup,health,getme,introspect,refresh,listsessions,getuser,lookupuser,listusers,mix,login,register,cleanup]
    #[arg(long, value_name = "LIST", value_parser = scenario_list)]
    scenarios: Option<ScenarioList>,

    /// Simultaneous Logins for the memory measurement; 0 skips it [default: 500; --smoke: 64]
    #[arg(long, value_name = "N")]
    burst: Option<usize>,

    /// Drive an already running server (http://127.0.0.1:PORT) instead of
    /// starting one; it needs AUTHD_PEER_RATE_LIMIT=0
    #[arg(long, value_name = "URL", value_parser = loopback_url)]
    addr: Option<String>,

    /// With --addr: the server's process, for its peak RSS
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,

    /// With --addr: the server's database (postgres://…), which the cache
    /// and login-mfa scenarios fill with SQL (without it, they are left out)
    #[arg(long, value_name = "URL", value_parser = database_url)]
    database_url: Option<PgConnectOptions>,

    /// With --addr: a service key (sk_…) with scope tokens.introspect, which
    /// IntrospectToken requires; a started authd gets one made for it
    #[arg(long, value_name = "KEY")]
    service_key: Option<String>,

    /// With --addr: a service key (sk_…) with scope revocations.watch, for
    /// the revocation scenario; a started authd gets one made for it
    #[arg(long, value_name = "KEY")]
    watch_key: Option<String>,

    /// With --addr: a service account with scope tokens.exchange, as
    /// NAME:sk_…, for the token grant scenarios (client-credentials,
    /// exchange and their -http twins); the server must list the audience
    /// billing in AUTHD_AUDIENCES. A started authd gets one made for it
    #[arg(long, value_name = "NAME:KEY", value_parser = token_client)]
    token_client: Option<(String, String)>,

    /// Revocation scenario: Logouts timed per subscriber count
    /// [default: 300; --smoke: 10]
    #[arg(long, value_name = "N", value_parser = positive)]
    revocation_logouts: Option<usize>,

    /// Revocation scenario: the subscriber counts measured, the verifier
    /// included (e.g. 1,100,1000)
    #[arg(long, value_name = "N,…", value_delimiter = ',', value_parser = positive, default_values_t = [1, 100])]
    revocation_subscribers: Vec<usize>,

    /// Shared Signals scenarios: the stream counts measured
    #[arg(long, value_name = "N,…", value_delimiter = ',', value_parser = at_most_200, default_values_t = [1, 100])]
    ssf_streams: Vec<usize>,

    /// Shared Signals scenarios: Logouts timed per measurement
    /// [default: 200; --smoke: 5]
    #[arg(long, value_name = "N", value_parser = positive)]
    ssf_logouts: Option<usize>,

    /// Shared Signals scenarios: Logouts in flight, each waiting for its
    /// SET at every stream before the next
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = positive)]
    ssf_clients: usize,

    /// With --addr: a service key (sk_…) with scope events.receive, for the
    /// Shared Signals scenarios (ssf-push, ssf-poll, ssf-push-dead); the
    /// server needs AUTHD_SSF_ALLOW_PRIVATE=true for the push receivers on
    /// 127.0.0.1. A started authd gets both
    #[arg(long, value_name = "KEY")]
    ssf_key: Option<String>,

    /// Extra environment for the started authd (repeatable), e.g.
    /// AUTHD_HASH_WORKERS=3 or MALLOC_ARENA_MAX=2
    #[arg(long = "server-env", value_name = "K=V", value_parser = key_value)]
    server_env: Vec<(String, String)>,

    /// Cache scenario: live sessions it puts into authd's session cache
    /// [default: 100000; --smoke: 2000]
    #[arg(long, value_name = "N", value_parser = at_least_100)]
    cache_sessions: Option<usize>,

    /// Cache scenario: account changes per second in its second measurement
    #[arg(long, value_name = "N", default_value_t = 300, value_parser = positive_u32)]
    cache_changes: u32,

    /// Quick CI run (short scenarios, a small cache); exits 1 if any call failed
    #[arg(long)]
    smoke: bool,

    /// The scale run: two authd on one PostgreSQL cluster, one on an empty
    /// database and one on a seeded copy (tests/seed/scale.rs), each
    /// scenario on both in turns (E S S E S E E S, a quarter of --duration
    /// each), with the ratios; then Refresh during a clean-up pass
    /// (BENCHMARKS.md)
    #[arg(long, conflicts_with_all = ["addr", "smoke"])]
    scale: bool,

    /// --scale: accounts of the seed (about 5 sessions each)
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = scale_accounts)]
    scale_accounts: i64,

    /// --scale: the folder of the kept cluster that holds the seeded
    /// template database(s), one per --scale-accounts [default: authd-scale
    /// in cargo's target tmp folder]
    #[arg(long, value_name = "DIR")]
    scale_dir: Option<std::path::PathBuf>,

    /// --scale: seed again even if the kept cluster holds a seed of this size
    #[arg(long)]
    scale_reseed: bool,

    /// --scale, cleanup: seconds of Refresh load from the start of the
    /// clean-up pass (less if the pass ends sooner)
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds)]
    cleanup_window: Duration,

    /// --scale, cleanup: a pass still running this many seconds after its
    /// start is stopped and reported with its rate
    #[arg(long, value_name = "SECS", default_value = "1800", value_parser = long_seconds)]
    cleanup_max: Duration,

    /// `cargo bench` passes this to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone)]
struct ScenarioList(Vec<Scenario>);

/// The options with their defaults resolved.
pub struct Options {
    pub duration: Duration,
    pub concurrency: usize,
    pub connections: usize,
    pub scenarios: Vec<Scenario>,
    pub burst: usize,
    pub addr: Option<String>,
    pub pid: Option<u32>,
    pub database: Option<PgConnectOptions>,
    pub service_key: Option<String>,
    pub watch_key: Option<String>,
    /// (service account name, key) for the token grant scenarios.
    pub token_client: Option<(String, String)>,
    pub revocation_logouts: usize,
    pub revocation_subscribers: Vec<usize>,
    pub ssf_streams: Vec<usize>,
    pub ssf_logouts: usize,
    pub ssf_clients: usize,
    pub ssf_key: Option<String>,
    pub server_env: Vec<(String, String)>,
    pub cache_sessions: usize,
    pub cache_changes_per_sec: u32,
    pub smoke: bool,
    pub scale: Option<Scale>,
}

/// The scale run's settings.
pub struct Scale {
    pub accounts: i64,
    pub dir: std::path::PathBuf,
    pub reseed: bool,
    pub cleanup_window: Duration,
    pub cleanup_max: Duration,
}

/// Parses the command line; prints help or the error and exits on failure.
pub fn parse() -> Options {
    let args = Args::parse();
    let smoke = args.smoke;
    let no_database = args.addr.is_some() && args.database_url.is_none();
    let no_watch_key = args.addr.is_some() && args.watch_key.is_none();
    let no_token_client = args.addr.is_some() && args.token_client.is_none();
    let no_ssf_key = args.addr.is_some() && args.ssf_key.is_none();
    let scale_only = |s: &Scenario| matches!(s, Scenario::Cleanup);
    let scenarios = match args.scenarios {
        Some(list) => list.0,
        None if args.scale => scenario_list(scenarios::SCALE).map_or_else(|e| unreachable!("{e}"), |l| l.0),
        None => {
            let all = scenario_list(scenarios::ALL).map_or_else(|e| unreachable!("{e}"), |l| l.0);
            // `--addr` alone, as before the cache scenario existed, still
            // runs everything else.
            all.into_iter()
                .filter(|s| !(no_database && s.fills_database()))
                .filter(|s| !(no_watch_key && matches!(s, Scenario::Revocation)))
                .filter(|s| !(no_token_client && s.grants_tokens()))
                .filter(|s| !(no_ssf_key && s.receives_signals()))
                .collect()
        }
    };
    if args.scale
        && let Some(s) = scenarios.iter().find(|s| {
            !matches!(s, Scenario::Calls(_) | Scenario::Startup | Scenario::Cleanup) || s.grants_tokens()
        })
    {
        Args::command()
            .error(
                ErrorKind::InvalidValue,
                format!(
                    "--scale runs startup, cleanup and the call scenarios but the token grants, not {s:?}"
                ),
            )
            .exit();
    }
    if !args.scale && scenarios.iter().any(scale_only) {
        Args::command()
            .error(ErrorKind::InvalidValue, "the cleanup scenario needs --scale")
            .exit();
    }
    if no_database && scenarios.iter().any(Scenario::fills_database) {
        Args::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "the cache and login-mfa scenarios against --addr need --database-url (they fill the database with SQL)",
            )
            .exit();
    }
    if no_watch_key && scenarios.iter().any(|s| matches!(s, Scenario::Revocation)) {
        Args::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "the revocation scenario against --addr needs --watch-key (a key with scope revocations.watch)",
            )
            .exit();
    }
    if no_token_client && scenarios.iter().any(Scenario::grants_tokens) {
        Args::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "the token grant scenarios against --addr need --token-client (NAME:KEY of a service account \
                 with scope tokens.exchange, on a server whose AUTHD_AUDIENCES lists billing)",
            )
            .exit();
    }
    if no_ssf_key && scenarios.iter().any(Scenario::receives_signals) {
        Args::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "the Shared Signals scenarios against --addr need --ssf-key (a key with scope events.receive, \
                 on a server started with AUTHD_SSF_ALLOW_PRIVATE=true)",
            )
            .exit();
    }
    Options {
        duration: args
            .duration
            .unwrap_or(Duration::from_secs(if smoke { 1 } else { 10 })),
        concurrency: args.concurrency,
        connections: args.connections,
        scenarios,
        burst: args.burst.unwrap_or(if smoke { 64 } else { 500 }),
        addr: args.addr,
        pid: args.pid,
        database: args.database_url,
        service_key: args.service_key,
        watch_key: args.watch_key,
        token_client: args.token_client,
        revocation_logouts: args.revocation_logouts.unwrap_or(if smoke { 10 } else { 300 }),
        revocation_subscribers: args.revocation_subscribers,
        ssf_streams: args.ssf_streams,
        ssf_logouts: args.ssf_logouts.unwrap_or(if smoke { 5 } else { 200 }),
        ssf_clients: args.ssf_clients,
        ssf_key: args.ssf_key,
        server_env: args.server_env,
        cache_sessions: args.cache_sessions.unwrap_or(if smoke { 2_000 } else { 100_000 }),
        cache_changes_per_sec: args.cache_changes,
        smoke,
        scale: args.scale.then(|| Scale {
            accounts: args.scale_accounts,
            dir: args
                .scale_dir
                .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("authd-scale")),
            reseed: args.scale_reseed,
            cleanup_window: args.cleanup_window,
            cleanup_max: args.cleanup_max,
        }),
    }
}

fn scale_accounts(v: &str) -> Result<i64, String> {
    match v.parse::<i64>() {
        Ok(n) if (100..=100_000_000).contains(&n) => Ok(n),
        _ => Err("must be an integer from 100 to 100000000".into()),
    }
}

fn seconds(v: &str) -> Result<Duration, String> {
    let secs: f64 = v.parse().map_err(|e| format!("{e}"))?;
    if !(secs > 0.0 && secs < 3600.0) {
        return Err("must be between 0 and 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn long_seconds(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err("must be 1 to 86400 seconds".into()),
    }
}

fn positive(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a positive integer".into()),
    }
}

/// A service account owns at most 200 streams.
fn at_most_200(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (1..=200).contains(&n) => Ok(n),
        _ => Err("must be an integer from 1 to 200".into()),
    }
}

fn positive_u32(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a positive integer".into()),
    }
}

/// The cache scenario splits its sessions into groups of at least one.
fn at_least_100(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= 100 => Ok(n),
        _ => Err("must be an integer of at least 100".into()),
    }
}

fn scenario_list(v: &str) -> Result<ScenarioList, String> {
    let mut list = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        list.push(
            Scenario::by_name(name)
                .ok_or_else(|| format!("unknown scenario {name} (known: {})", scenarios::ALL))?,
        );
    }
    Ok(ScenarioList(list))
}

/// The generator refuses to load anything but this machine.
fn loopback_url(v: &str) -> Result<String, String> {
    let host_ok = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
        .iter()
        .any(|p| v.starts_with(p));
    if host_ok {
        Ok(v.to_owned())
    } else {
        Err("must be a loopback address such as http://127.0.0.1:50051".into())
    }
}

fn database_url(v: &str) -> Result<PgConnectOptions, String> {
    v.parse().map_err(|e| format!("{e}"))
}

fn token_client(v: &str) -> Result<(String, String), String> {
    match v.split_once(':') {
        Some((name, key)) if !name.is_empty() && key.starts_with("sk_") => {
            Ok((name.to_owned(), key.to_owned()))
        }
        _ => Err("takes NAME:sk_… (a service account's name and key)".into()),
    }
}

fn key_value(v: &str) -> Result<(String, String), String> {
    let (k, v) = v.split_once('=').ok_or("takes KEY=VALUE")?;
    Ok((k.to_owned(), v.to_owned()))
}
