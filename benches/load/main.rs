#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]
//! Load generator for authd (`cargo bench --bench load -- [options]`).
//!
//! Without `--addr` it starts a throwaway PostgreSQL cluster and the
//! `authd` binary as a separate process on 127.0.0.1 (`server`), seeds
//! accounts with Register and signs every load task in (`seeding`), then
//! runs each scenario (`scenarios`, `cache_scenario`) with N concurrent
//! tasks over M HTTP/2 connections for T seconds. One table row per
//! scenario (`stats`, `report`): successful calls per second,
//! p50/p99/p99.9 latency of successful calls, every non-OK answer counted
//! as an error by gRPC code (never as a success), and CPU time per call
//! read from /proc (`procfs`). Baselines measured in the same run: the
//! health Check floor and the argon2 ceiling (`argon2_baseline`). Finally
//! the peak RSS of the service during a burst of simultaneous Logins
//! (`burst`). The revocation scenario (`revocation_scenario`) times a
//! Logout's way to a service using authd-verifier, and the verifier's cost
//! per call against a bare tonic call. The token grant scenarios
//! (`grant_scenario`) mint tokens for a second audience, client_credentials
//! and token exchange, over gRPC and over the HTTP face. The passkey login
//! (`passkey_scenario`) is measured in turns with the password Login.
//!
//! Timings are reported, never asserted. `--smoke` (about a second per
//! scenario) exits non-zero if any call failed, for CI.

mod argon2_baseline;
mod args;
mod burst;
mod cache_scenario;
mod client;
mod flood;
mod grant_scenario;
mod mfa_scenario;
mod passkey_scenario;
mod procfs;
mod report;
mod retry_flood;
mod revocation_scenario;
mod scale;
// The bulk seed the scale run shares with the tests (one file, two users).
#[path = "../../tests/seed/scale.rs"]
mod scale_seed;
mod scenarios;
mod seeding;
mod server;
mod ssf_scenario;
mod startup;
mod stats;

use std::sync::Arc;
use std::time::Instant;

use authd::config::Argon2Settings;

use crate::argon2_baseline::Argon2Baseline;
use crate::procfs::{cores, cpu_model, mib, proc_status_kib};
use crate::scenarios::Scenario;
use crate::seeding::Shared;
use crate::server::{Server, start_server, stop_server, wait_until_serving};
use crate::stats::Row;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    let options = args::parse();
    let run_started = Instant::now();
    let cores = cores();
    if let Some(scale) = &options.scale {
        println!(
            "authd load, scale run: {cores} cores ({}), {} s per scenario and side, {} concurrent calls over {} connections",
            cpu_model(),
            options.duration.as_secs_f64(),
            options.concurrency,
            options.connections,
        );
        let errors = scale::run(&options, scale).await;
        println!(
            "\ntotal errors: {errors}; whole run {:.1} s",
            run_started.elapsed().as_secs_f64()
        );
        return if errors > 0 {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        };
    }
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
    let mut baseline = Argon2Baseline::default();
    baseline.measure(samples).await;
    let parallel_rate = baseline.parallel_rate();
    println!(
        "argon2id m={} KiB t={} p={}: median {:.1} ms over {samples} hashes; {cores} threads hashing at once: {parallel_rate:.1}/s",
        defaults.memory_kib,
        defaults.iterations,
        defaults.parallelism,
        baseline.median().as_secs_f64() * 1000.0,
    );

    // The token grants mint for a second audience next to authd's own
    // (unless the command line sets the audiences itself).
    let mut server_env = options.server_env.clone();
    let grants_tokens = options.scenarios.iter().any(Scenario::grants_tokens);
    if grants_tokens
        && !server_env
            .iter()
            .any(|(k, _)| k == "AUTHD_AUDIENCES" || k == "AUTHD_AUDIENCE")
    {
        server_env.push((
            "AUTHD_AUDIENCES".to_owned(),
            format!("authd,{}", grant_scenario::AUDIENCE),
        ));
    }
    // The passkey logins come from many clients, each of its own address.
    if options
        .scenarios
        .iter()
        .any(|s| matches!(s, Scenario::PasskeyLogin))
        && !server_env.iter().any(|(k, _)| k == "AUTHD_TRUSTED_PROXY_HEADER")
    {
        server_env.push((
            "AUTHD_TRUSTED_PROXY_HEADER".to_owned(),
            passkey_scenario::FORWARDED.to_owned(),
        ));
    }
    // The Shared Signals receivers listen on 127.0.0.1.
    if options.scenarios.iter().any(Scenario::receives_signals)
        && !server_env.iter().any(|(k, _)| k == "AUTHD_SSF_ALLOW_PRIVATE")
    {
        server_env.push(("AUTHD_SSF_ALLOW_PRIVATE".to_owned(), "true".to_owned()));
    }
    let scratch = std::env::temp_dir().join(format!("authd-bench-{}", uuid::Uuid::new_v4().simple()));
    let built = server::pin_binary(&scratch);
    let mut server = match &options.addr {
        Some(addr) => {
            let mut s = Server::external(addr.clone(), options.pid, options.database.clone());
            wait_until_serving(&mut s).await;
            s
        }
        None => {
            let t = Instant::now();
            let mut s = start_server(&scratch, &server_env).await;
            print!("started PostgreSQL (throwaway) and {} ", built.display());
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
    if options.addr.is_none() {
        for (k, v) in &server_env {
            println!("authd started with {k}={v}");
        }
    }

    let service_key = match &options.service_key {
        Some(key) => Some(key.clone()),
        None => server::create_introspection_key(&server).await,
    };
    let service_authorization = service_key.map(|key| {
        format!("Bearer {key}")
            .parse()
            .expect("a service key is printable ASCII")
    });

    let token_client = match (&options.token_client, grants_tokens) {
        (_, false) => None,
        (Some((name, key)), true) => Some((name.clone(), key.clone())),
        (None, true) => {
            let name = "load-tokens";
            server::create_service_key(&server, name, &[grant_scenario::SCOPE])
                .await
                .map(|key| (name.to_owned(), key))
        }
    };
    let tokens = match token_client {
        Some((name, key)) => {
            Some(grant_scenario::TokenClient::connect(&server.addr, &name, &key, options.connections).await)
        }
        None => None,
    };

    let ssf_key = match (
        &options.ssf_key,
        options.scenarios.iter().any(Scenario::receives_signals),
    ) {
        (_, false) => None,
        (Some(key), true) => Some(key.clone()),
        (None, true) => server::create_service_key(&server, "load-ssf", &["events.receive"]).await,
    };

    let channels = client::connect(&server.addr, options.connections).await;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    // Login charges its throttle counter before checking the password, so an
    // account with more than 5 Logins in flight is throttled by design: one
    // account per task, and no more than 4 burst Logins per account.
    let n_accounts = options.concurrency.max(options.burst.div_ceil(4)).max(1);
    let t = Instant::now();
    let accounts = seeding::seed_accounts(&channels, &run_id, n_accounts, options.concurrency).await;
    let shared = Arc::new(Shared {
        channels,
        accounts,
        run_id,
        service_authorization,
        tokens,
    });
    let mut states = seeding::sign_in_tasks(&shared, options.concurrency).await;
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

    report::table_header();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut flood_wrong = 0u64;
    // Steps that failed: a start-up, preparing a scenario.
    let mut step_errors = 0u64;
    for scenario in &options.scenarios {
        if scenario.hashes_passwords() {
            baseline.measure(samples).await;
        }
        let new_rows = match scenario {
            Scenario::Startup => {
                let outcome = startup::run(&scratch, if options.smoke { 1 } else { 3 }).await;
                for line in &outcome.notes {
                    println!("{line}");
                }
                notes.extend(outcome.notes);
                step_errors += outcome.errors;
                Vec::new()
            }
            Scenario::Cleanup => unreachable!("args::parse allows cleanup only with --scale"),
            Scenario::Calls(mix) => {
                if mix.lists_users() {
                    match scenarios::prepare_list_starts(&mut states, &shared).await {
                        Ok((places, took)) => notes.push(format!(
                            "{}: each task pages from one of {places} places in the list of accounts \
                             (found in {:.1} s)",
                            mix.name,
                            took.as_secs_f64()
                        )),
                        Err(e) => {
                            notes.push(format!("{}: {e}", mix.name));
                            step_errors += 1;
                        }
                    }
                }
                scenarios::run_mix(mix, &mut states, &shared, options.duration, server.pid).await
            }
            Scenario::LoginMfa => {
                let db = server
                    .db
                    .as_ref()
                    .expect("args::parse requires a database for the login-mfa scenario");
                let settings = mfa_scenario::Settings {
                    duration: options.duration,
                    concurrency: options.concurrency,
                    hash_rate: cores as f64 / baseline.median().as_secs_f64(),
                    hash_time: baseline.median(),
                };
                let outcome = mfa_scenario::run(db, &shared, &mut states, &settings, server.pid).await;
                notes.extend(outcome.notes);
                outcome.rows
            }
            Scenario::PasskeyLogin => {
                let settings = passkey_scenario::Settings {
                    duration: options.duration,
                    concurrency: options.concurrency,
                };
                let outcome = passkey_scenario::run(&shared, &mut states, &settings, server.pid).await;
                notes.extend(outcome.notes);
                outcome.rows
            }
            Scenario::Cache => {
                let db = server
                    .db
                    .as_ref()
                    .expect("args::parse requires a database for the cache scenario");
                let settings = cache_scenario::Settings {
                    sessions: options.cache_sessions,
                    changes_per_sec: options.cache_changes_per_sec,
                    duration: options.duration,
                    concurrency: options.concurrency,
                };
                let outcome = cache_scenario::run(&server.addr, db, &shared, &settings, server.pid).await;
                notes.extend(outcome.notes);
                outcome.rows
            }
            Scenario::SsfPush | Scenario::SsfPoll | Scenario::SsfPushDead => {
                let key = ssf_key
                    .as_deref()
                    .expect("args::parse requires --ssf-key for the Shared Signals scenarios against --addr");
                let settings = ssf_scenario::Settings {
                    streams: options.ssf_streams.clone(),
                    logouts: options.ssf_logouts,
                    clients: options.ssf_clients,
                };
                let t = Instant::now();
                let outcome = match scenario {
                    Scenario::SsfPush => {
                        let push = ssf_scenario::Delivery::Push;
                        ssf_scenario::run(push, &server.addr, key, &shared, &settings, server.pid).await
                    }
                    Scenario::SsfPoll => {
                        let poll = ssf_scenario::Delivery::Poll;
                        ssf_scenario::run(poll, &server.addr, key, &shared, &settings, server.pid).await
                    }
                    _ => ssf_scenario::run_dead(&server.addr, key, &shared, &settings, server.pid).await,
                };
                notes.extend(outcome.notes);
                notes.push(format!(
                    "{scenario:?} took {:.1} s in all",
                    t.elapsed().as_secs_f64()
                ));
                outcome.rows
            }
            Scenario::Flood => {
                let settings = flood::Settings {
                    duration: options.duration,
                    deadline: std::time::Duration::from_secs(5),
                    multiples: vec![1.0, 2.0, 4.0],
                };
                let (lines, wrong) = flood::run(
                    &shared.channels,
                    &shared.run_id,
                    baseline.parallel_rate(),
                    server.db.as_ref(),
                    &settings,
                )
                .await;
                for line in &lines {
                    println!("{line}");
                }
                notes.extend(lines);
                flood_wrong += wrong;
                Vec::new()
            }
            Scenario::RetryFlood => {
                let settings = retry_flood::Settings {
                    duration: options.duration,
                    clients: if options.smoke { 24 } else { 1200 },
                    getme_tasks: 8,
                    getme_pause: std::time::Duration::from_millis(20),
                    impolite_retry: std::time::Duration::from_millis(200),
                    deadline: std::time::Duration::from_secs(5),
                };
                let (lines, wrong) = retry_flood::run(
                    &server.addr,
                    &shared.channels,
                    &shared.run_id,
                    &states,
                    server.log_path(),
                    server.pid,
                    &settings,
                )
                .await;
                for line in &lines {
                    println!("{line}");
                }
                notes.extend(lines);
                flood_wrong += wrong;
                Vec::new()
            }
            Scenario::Revocation => {
                let watch_key = match &options.watch_key {
                    Some(key) => key.clone(),
                    None => server::create_service_key(&server, "load-revocations", &["revocations.watch"])
                        .await
                        .expect(
                            "args::parse requires --watch-key for the revocation scenario against --addr",
                        ),
                };
                let settings = revocation_scenario::Settings {
                    logouts: options.revocation_logouts,
                    subscribers: options.revocation_subscribers.clone(),
                    duration: options.duration,
                    concurrency: options.concurrency,
                    connections: options.connections,
                };
                let sample_token = states.first().map(|s| s.access.clone()).unwrap_or_default();
                let outcome = revocation_scenario::run(
                    &server.addr,
                    &watch_key,
                    &sample_token,
                    &shared,
                    &settings,
                    server.pid,
                )
                .await;
                notes.extend(outcome.notes);
                outcome.rows
            }
        };
        for row in new_rows {
            report::table_row(&row);
            rows.push(row);
        }
    }

    let burst = if options.burst > 0 {
        let b = burst::login_burst(&server.addr, &shared, options.burst, server.pid).await;
        report::table_row(&b.row);
        Some(b)
    } else {
        None
    };

    println!();
    report::ratios(&rows, &baseline, burst.as_ref(), cores);
    for note in &notes {
        println!("{note}");
    }
    let errors_total = rows.iter().map(Row::error_count).sum::<u64>()
        + burst.as_ref().map_or(0, |b| b.row.error_count())
        + flood_wrong
        + step_errors;

    if options.addr.is_none() {
        stop_server(&mut server).await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
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
