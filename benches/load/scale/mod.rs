//! The scale run (`--scale`): do request costs stay flat when the database
//! holds a busy deployment's rows?
//!
//! 1. Start-up times (`startup`), while nothing else of ours runs.
//! 2. A PostgreSQL cluster kept between runs (`cluster`) with a seeded
//!    template database (`tests/seed/scale.rs`, seeded once per size), and
//!    two authd on it: one on a new empty database, one on a fresh copy of
//!    the template. The seed's password hash is that of an account
//!    registered through the API.
//! 3. The load generator's own accounts, registered on both the same way,
//!    and one session per load task on each.
//! 4. Each call scenario on both in turns (`paired`), with the ratios
//!    seeded ÷ empty against the targets, and each authd's memory after.
//! 5. Refresh on the seeded database without, then during, a clean-up pass
//!    (`cleanup_pass`), which deletes the seed's ended sessions.

mod cleanup_pass;
mod cluster;
pub mod paired;

use std::sync::Arc;
use std::time::Instant;

use crate::args::{Options, Scale};
use crate::procfs::{mib, proc_status_kib};
use crate::scenarios::Scenario;
use crate::seeding::{self, Shared};
use crate::server::{self, Server, start_authd, stop_server, wait_until_serving};
use crate::startup;
use paired::{Pair, Side};

/// Every seeded account's password (the seed writes one hash for all).
const SEED_PASSWORD: &str = "scale seed shared passphrase";

/// The environment both servers get, besides `--server-env`: no clean-up
/// pass of their own (the `cleanup` scenario starts one on purpose).
const SERVER_ENV: &[(&str, &str)] = &[("AUTHD_CLEANUP_INTERVAL", "0")];

/// Runs the scale scenarios; returns the number of failed calls and steps.
pub async fn run(options: &Options, scale: &Scale) -> u64 {
    let mut errors = 0u64;
    let mut notes: Vec<String> = Vec::new();
    let scratch = std::env::temp_dir().join(format!("authd-scale-run-{}", uuid::Uuid::new_v4().simple()));
    let built = server::pin_binary(&scratch);
    println!(
        "scale run: {} seeded accounts; cluster and seed kept in {}; authd {}",
        scale.accounts,
        scale.dir.display(),
        built.display()
    );

    if options.scenarios.iter().any(|s| matches!(s, Scenario::Startup)) {
        let outcome = startup::run(&scratch, 3).await;
        for note in &outcome.notes {
            println!("{note}");
        }
        errors += outcome.errors;
        notes.extend(outcome.notes);
    }

    let t = Instant::now();
    let cluster = cluster::Kept::open(&scale.dir).await;
    println!(
        "PostgreSQL cluster {} up in {:.1} s",
        cluster.pg.data_dir().display(),
        t.elapsed().as_secs_f64()
    );
    let mut env: Vec<(String, String)> = SERVER_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.extend(options.server_env.iter().cloned());

    cluster.recreate(cluster::EMPTY).await;
    let mut empty = start_authd(&cluster.pg, cluster::EMPTY, &scratch.join("empty"), &env);
    wait_until_serving(&mut empty).await;

    // The seed: kept, or written now with the hash of an account that
    // registered through the API.
    let kept = if scale.reseed {
        Err("--scale-reseed".to_owned())
    } else {
        cluster.kept_seed(scale.accounts).await
    };
    let seed = match kept {
        Ok(record) => record,
        Err(why) => {
            println!(
                "seeding {} accounts ({why}); about 5 sessions each, with their tokens and a day's backlog…",
                scale.accounts
            );
            let hash = password_hash(&empty).await;
            cluster
                .seed(scale.accounts, &hash, &scratch.join("migrate"))
                .await
        }
    };
    let total: u64 = seed.rows.iter().map(|(_, n)| n).sum();
    let seed_line = format!(
        "seed of {} accounts: {total} rows in {:.1} s ({}), {}: {}",
        seed.accounts,
        seed.elapsed.as_secs_f64(),
        if seed.fresh {
            "written now".to_owned()
        } else {
            format!("written {} and reused", seed.seeded_at)
        },
        "rows",
        seed.rows
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{seed_line}");
    notes.push(seed_line);
    let copy = cluster.copy_seed(scale.accounts, cluster::SEEDED).await;
    let copy_line = format!(
        "copied the seeded template to {} ({}) in {:.1} s",
        cluster::SEEDED,
        cluster.size(cluster::SEEDED).await,
        copy.as_secs_f64()
    );
    println!("{copy_line}");
    notes.push(copy_line);
    let t = Instant::now();
    let mut seeded = start_authd(&cluster.pg, cluster::SEEDED, &scratch.join("seeded"), &env);
    wait_until_serving(&mut seeded).await;
    println!(
        "authd on the empty database: pid {}, {}; on the seeded one: pid {}, {} (SERVING after {:.1} s)",
        empty.pid.unwrap_or(0),
        empty.addr,
        seeded.pid.unwrap_or(0),
        seeded.addr,
        t.elapsed().as_secs_f64()
    );

    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let t = Instant::now();
    let mut sides = [
        side(empty, &run_id, options).await,
        side(seeded, &run_id, options).await,
    ];
    println!(
        "registered {} accounts and signed {} tasks in on each side in {:.1} s",
        sides[0].shared.accounts.len(),
        sides[0].states.len(),
        t.elapsed().as_secs_f64()
    );
    let rss_before = sides.each_ref().map(|s| memory(&s.server));

    println!();
    paired::table_header();
    let mut pairs: Vec<Pair> = Vec::new();
    let mut preparations: Vec<String> = Vec::new();
    for scenario in &options.scenarios {
        if let Scenario::Calls(mix) = scenario {
            let (new_pairs, found, failed) = paired::run(mix, &mut sides, options.duration).await;
            for pair in new_pairs {
                paired::table_row(&pair);
                pairs.push(pair);
            }
            preparations.extend(found);
            errors += failed;
        }
    }
    let rss_after = sides.each_ref().map(|s| memory(&s.server));

    println!();
    for line in preparations {
        println!("{line}");
        notes.push(line);
    }
    for pair in pairs.iter().filter(|p| !p.name.starts_with(' ')) {
        let line = format!(
            "{}: seeded ÷ empty calls/s {:.0} / {:.0} = {:.2}; p50 {:.2} / {:.2} ms = {:.2}; p99 {:.2} / {:.2} ms = {:.2}{}",
            pair.name,
            pair.seeded.calls_per_sec,
            pair.empty.calls_per_sec,
            pair.throughput_ratio(),
            pair.seeded.p50_ms,
            pair.empty.p50_ms,
            pair.p50_ratio(),
            pair.seeded.p99_ms,
            pair.empty.p99_ms,
            pair.p99_ratio(),
            match (pair.targeted, pair.misses()) {
                (false, _) => String::new(),
                (true, m) if m.is_empty() => "  [target met]".to_owned(),
                (true, m) => format!("  [target MISSED: {}]", m.join(", ")),
            }
        );
        println!("{line}");
        notes.push(line);
    }
    errors += pairs
        .iter()
        .filter(|p| !p.name.starts_with(' '))
        .map(|p| p.empty.error_count() + p.seeded.error_count())
        .sum::<u64>();
    let show = |k: Option<u64>| k.map_or_else(|| "?".to_owned(), |k| format!("{:.1}", mib(k)));
    let ratio = |s: Option<u64>, e: Option<u64>| {
        s.zip(e)
            .map_or_else(|| "?".to_owned(), |(s, e)| format!("{:.2}", s as f64 / e as f64))
    };
    let line = format!(
        "authd memory, empty / seeded (MiB): VmRSS after sign-in {} / {}, after the runs {} / {} (seeded ÷ empty {}); \
         VmHWM {} / {} ({})",
        show(rss_before[0].0),
        show(rss_before[1].0),
        show(rss_after[0].0),
        show(rss_after[1].0),
        ratio(rss_after[1].0, rss_after[0].0),
        show(rss_after[0].1),
        show(rss_after[1].1),
        ratio(rss_after[1].1, rss_after[0].1),
    );
    println!("{line}");
    notes.push(line);

    if options.scenarios.iter().any(|s| matches!(s, Scenario::Cleanup)) {
        let [_, seeded_side] = &mut sides;
        let settings = cleanup_pass::Settings {
            duration: options.duration,
            window: scale.cleanup_window,
            max_pass: scale.cleanup_max,
            server_env: env.clone(),
        };
        let outcome = cleanup_pass::run(&cluster, seeded_side, &scratch.join("cleaner"), &settings).await;
        errors += outcome.errors;
        notes.extend(outcome.notes);
    }

    let [mut e, mut s] = sides.map(|side| side.server);
    stop_server(&mut e).await;
    stop_server(&mut s).await;
    cluster.drop_database(cluster::SEEDED).await;
    cluster.drop_database(cluster::EMPTY).await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("\nsummary:");
    for note in &notes {
        println!("{note}");
    }
    errors
}

/// An account registered through `server`'s API with [`SEED_PASSWORD`],
/// and the hash authd stored for it.
async fn password_hash(server: &Server) -> String {
    use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
    let email = format!("scale-hash-{}@example.com", uuid::Uuid::new_v4().simple());
    let channel = crate::client::connect(&server.addr, 1).await.remove(0);
    AuthServiceClient::new(channel)
        .register(pb::RegisterRequest {
            email: email.clone(),
            password: SEED_PASSWORD.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("registering the seed's account: {s:?}"));
    let db = server.db.as_ref().expect("a started server has a database");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(db)
        .await
        .expect("connecting to the empty database");
    sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&mut conn)
        .await
        .expect("reading the registered account's hash")
}

/// A server with its service key, accounts and one session per task.
async fn side(server: Server, run_id: &str, options: &Options) -> Side {
    let key = server::create_introspection_key(&server)
        .await
        .expect("a started server gets a service key");
    let channels = crate::client::connect(&server.addr, options.connections).await;
    let accounts = seeding::seed_accounts(&channels, run_id, options.concurrency, options.concurrency).await;
    let shared = Arc::new(Shared {
        channels,
        accounts,
        run_id: run_id.to_owned(),
        service_authorization: Some(
            format!("Bearer {key}")
                .parse()
                .expect("a service key is printable ASCII"),
        ),
        tokens: None,
    });
    let states = seeding::sign_in_tasks(&shared, options.concurrency).await;
    Side {
        server,
        shared,
        states,
    }
}

/// VmRSS and VmHWM of a server, KiB.
fn memory(server: &Server) -> (Option<u64>, Option<u64>) {
    server.pid.map_or((None, None), |pid| {
        (proc_status_kib(pid, "VmRSS:"), proc_status_kib(pid, "VmHWM:"))
    })
}
