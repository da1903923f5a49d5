//! The login-mfa scenario: Login + CompleteLogin with a TOTP code, on
//! accounts with a confirmed authenticator, in turns with Login alone on the
//! task accounts (legs in the scale run's balanced order, A B B A B A A B,
//! each a quarter of `--duration`), so that both are measured under the same
//! noise of this shared machine and their ratio means something.
//!
//! A factor accepts a step once, and never one older than the last it
//! accepted, so an account finishes at most one login per 30-second step.
//! The scenario therefore prepares a pool of accounts larger than the
//! Logins the machine can do within one step, and remembers for each the
//! last step it used: a task takes the account that has waited longest
//! among those whose last step is over. Should none be left, the task
//! counts a `no_free_account` error and waits for the next step, so a pool
//! too small shows instead of slowing the rows down unseen.
//!
//! The pool is made with SQL, not Register: the rows carry the password
//! hash authd wrote for one registered account (so every Login verifies a
//! real argon2 hash with the server's parameters), each gets an access
//! token through Refresh, then EnrollTotp and ConfirmTotp through the API.
//! Confirmation uses the previous step's code, which the window allows, so
//! that the account's first login may use the current step.
//!
//! The second proof is a TOTP code, not a recovery code: a code from an
//! authenticator is the second step of every ordinary login, and the costly
//! one (the sealed secret opened, the codes of the window computed, the
//! step recorded); a recovery code is the rare fallback, at most ten per
//! account, and spending one also queues a notice mail.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use authd::crypto::totp::{PERIOD_SECS, TotpSecret, step_at};
use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use zeroize::Zeroizing;

use crate::cache_scenario::population;
use crate::client::{bearer, call_each, code_label};
use crate::procfs::CpuWindow;
use crate::scale::paired::ORDER;
use crate::scenarios::{self, Mix, MixRun, Op};
use crate::seeding::{Shared, TaskState};
use crate::stats::{Row, Stats};

pub struct Settings {
    pub duration: Duration,
    pub concurrency: usize,
    /// The argon2 ceiling of this run (hashes/s): no Login rate exceeds it,
    /// so it sizes the pool.
    pub hash_rate: f64,
    /// One argon2 hash alone, the yardstick of the second step.
    pub hash_time: Duration,
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// Accounts per Login the ceiling allows within one step: the margin
/// covers a machine that is faster than its baseline said.
const POOL_MARGIN: f64 = 1.5;

/// The pool's accounts, and which of them may give a code now.
struct Pool {
    password: String,
    emails: Vec<String>,
    secrets: Vec<TotpSecret>,
    free: Mutex<Free>,
}

struct Free {
    /// (account, last step it used), the longest waiting first.
    queue: VecDeque<(usize, i64)>,
    /// Logins completed per step: how close the pool came to its end.
    per_step: BTreeMap<i64, usize>,
}

impl Pool {
    /// An account whose last step is before `step`, if any is left.
    fn take(&self, step: i64) -> Option<usize> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let at = free.queue.iter().position(|&(_, last)| last < step)?;
        free.queue.remove(at).map(|(account, _)| account)
    }

    /// Back in the queue; `step` is the one its code was made for, whether
    /// or not authd took it, so it is never offered twice.
    fn give_back(&self, account: usize, step: i64, completed: bool) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.queue.push_back((account, step));
        if completed {
            *free.per_step.entry(step).or_default() += 1;
        }
    }

    fn busiest_step(&self) -> (usize, usize) {
        let free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        (
            free.per_step.values().copied().max().unwrap_or(0),
            free.per_step.len(),
        )
    }
}

fn current_step() -> i64 {
    step_at(chrono::Utc::now())
}

fn code(secret: &TotpSecret, step: i64) -> String {
    format!("{:06}", secret.code_at_step(step))
}

/// How many accounts the pool needs: every Login the ceiling allows while
/// the pairs' legs run within one step, with a margin, and never fewer than
/// two per task. A leg runs past its end until the calls started before it
/// are answered: up to a queue of `concurrency` Logins, once per leg.
fn pool_size(settings: &Settings) -> usize {
    let rate = settings.hash_rate.max(1.0);
    let overrun = Duration::from_secs_f64(4.0 * settings.concurrency as f64 / rate);
    let within_one_step = (settings.duration + overrun).min(Duration::from_secs(PERIOD_SECS.unsigned_abs()));
    let logins = rate * within_one_step.as_secs_f64() * POOL_MARGIN;
    (logins.ceil() as usize).max(2 * settings.concurrency)
}

pub async fn run(
    db: &PgConnectOptions,
    shared: &Arc<Shared>,
    states: &mut Vec<TaskState>,
    settings: &Settings,
    server_pid: Option<u32>,
) -> Outcome {
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.clone())
        .await
        .unwrap_or_else(|e| panic!("login-mfa: connecting to authd's database failed: {e}"));
    let n = pool_size(settings);
    let (pool, setup_note) = prepare(&db, shared, n, settings.concurrency).await;
    let pool = Arc::new(pool);

    let alone = Mix {
        name: "login-mfa: login alone",
        ops: vec![(Op::Login, 100)],
    };
    let leg = settings.duration / 4;
    let mut runs: [Option<MixRun>; 2] = [None, None];
    for side in ORDER {
        let run = if side == 0 {
            scenarios::drive(&alone, states, shared, leg, server_pid).await
        } else {
            drive_pairs(&pool, shared, settings.concurrency, leg, server_pid).await
        };
        runs[side] = Some(match runs[side].take() {
            Some(earlier) => earlier.merge(run),
            None => run,
        });
    }
    let [alone_run, pairs_run] = runs.map(|r| r.expect("both kinds of leg ran"));
    let mut rows = scenarios::rows(&alone, alone_run);
    rows.extend(pairs_run.pair_rows([
        "login-mfa: login + complete",
        "  login-mfa: the login step",
        "  login-mfa: the complete step",
    ]));

    let mut notes = vec![setup_note];
    notes.extend(ratios(&rows, settings));
    let (busiest, steps) = pool.busiest_step();
    notes.push(format!(
        "login-mfa: the busiest of {steps} steps completed {busiest} logins on the pool of {n} accounts \
         (each account at most once per step)"
    ));
    Outcome { rows, notes }
}

/// The pool: `n` accounts with the password of one registered account and a
/// confirmed TOTP factor each. Panics if any step fails: without them there
/// is nothing to measure.
async fn prepare(db: &PgPool, shared: &Shared, n: usize, concurrency: usize) -> (Pool, String) {
    let started = Instant::now();
    let batch = format!(
        "mfa-{}-{}",
        shared.run_id,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let password = format!("load test passphrase {}", uuid::Uuid::new_v4());
    let template = format!("{batch}-template@example.com");
    AuthServiceClient::new(shared.channels[0].clone())
        .register(pb::RegisterRequest {
            email: template.clone(),
            password: password.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("login-mfa: Register of the template account failed: {s:?}"));
    let (hash,): (String,) = sqlx::query_as("SELECT password_hash FROM users WHERE lower(email) = lower($1)")
        .bind(&template)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("login-mfa: reading the template's password hash failed: {e}"));

    let (sessions, timings) = population::create(db, &shared.channels, &batch, &hash, n, concurrency).await;

    let t = Instant::now();
    let bearers: Vec<_> = sessions.iter().map(|s| s.authorization.clone()).collect();
    let answers = call_each(
        &shared.channels,
        &bearers,
        concurrency,
        |mut client, authorization| async move {
            let enrolled = client
                .enroll_totp(bearer(pb::EnrollTotpRequest::default(), &authorization))
                .await
                .map_err(|s| format!("EnrollTotp: {}", code_label(&s)))?
                .into_inner();
            let bytes = data_encoding::BASE32_NOPAD
                .decode(enrolled.secret.as_bytes())
                .map_err(|e| format!("EnrollTotp: secret not base32: {e}"))?;
            let secret = TotpSecret::from_bytes(Zeroizing::new(bytes));
            let step = current_step() - 1;
            client
                .confirm_totp(bearer(
                    pb::ConfirmTotpRequest {
                        enrollment_id: enrolled.enrollment_id,
                        code: code(&secret, step),
                    },
                    &authorization,
                ))
                .await
                .map_err(|s| format!("ConfirmTotp: {}", code_label(&s)))?;
            Ok::<_, String>((secret, step))
        },
    )
    .await;
    let mut secrets = Vec::with_capacity(n);
    let mut queue = VecDeque::with_capacity(n);
    for (i, answer) in answers.into_iter().enumerate() {
        let (secret, step) = answer.unwrap_or_else(|e| panic!("login-mfa: enrolling a factor failed: {e}"));
        secrets.push(secret);
        queue.push_back((i, step));
    }
    let enrol = t.elapsed();

    // The bulk inserts wake autovacuum; better now than during the load.
    let t = Instant::now();
    sqlx::query("VACUUM (ANALYZE) users, sessions, refresh_tokens, factors, recovery_codes")
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("login-mfa: VACUUM failed: {e}"));
    let vacuum = t.elapsed();

    let note = format!(
        "login-mfa: set up {n} accounts with a confirmed TOTP factor in {:.1} s: accounts and sessions \
         with SQL ({:.1} s), one Refresh each ({:.1} s), EnrollTotp + ConfirmTotp each ({:.1} s), \
         VACUUM ANALYZE ({:.1} s); the second proof is a TOTP code",
        started.elapsed().as_secs_f64(),
        timings.sql.as_secs_f64(),
        timings.refresh.as_secs_f64(),
        enrol.as_secs_f64(),
        vacuum.as_secs_f64(),
    );
    let pool = Pool {
        password,
        emails: sessions.into_iter().map(|s| s.email).collect(),
        secrets,
        free: Mutex::new(Free {
            queue,
            per_step: BTreeMap::new(),
        }),
    };
    (pool, note)
}

/// Which of a leg's [`Stats`] holds what.
const PAIR: usize = 0;
const LOGIN: usize = 1;
const COMPLETE: usize = 2;

/// `concurrency` tasks each log in and complete with a code, one account
/// after another, for `duration`.
async fn drive_pairs(
    pool: &Arc<Pool>,
    shared: &Arc<Shared>,
    concurrency: usize,
    duration: Duration,
    server_pid: Option<u32>,
) -> MixRun {
    let window = CpuWindow::open(server_pid);
    let started = window.started();
    let deadline = started + duration;
    let mut handles = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let (pool, shared) = (Arc::clone(pool), Arc::clone(shared));
        handles.push(tokio::spawn(async move {
            let mut client = AuthServiceClient::new(shared.channels[task % shared.channels.len()].clone());
            let mut stats: [Stats; 3] = Default::default();
            while Instant::now() < deadline {
                let Some(account) = pool.take(current_step()) else {
                    stats[PAIR].error("no_free_account".into());
                    let into_step = chrono::Utc::now().timestamp().rem_euclid(PERIOD_SECS);
                    let next_step = Duration::from_secs((PERIOD_SECS - into_step).unsigned_abs());
                    tokio::time::sleep(next_step.min(deadline.saturating_duration_since(Instant::now())))
                        .await;
                    continue;
                };
                let (step, completed) = login_and_complete(&mut client, &pool, account, &mut stats).await;
                pool.give_back(account, step, completed);
            }
            (stats, Instant::now())
        }));
    }
    let mut tasks = Vec::new();
    for handle in handles {
        tasks.push(handle.await.expect("login-mfa task panicked"));
    }
    MixRun::gather(3, started, window, tasks)
}

/// One Login and its CompleteLogin, timed together and each alone; returns
/// the step the code was made for (the account's last step from now on)
/// and whether the login was completed.
async fn login_and_complete(
    client: &mut AuthServiceClient<tonic::transport::Channel>,
    pool: &Pool,
    account: usize,
    stats: &mut [Stats; 3],
) -> (i64, bool) {
    let t = Instant::now();
    let answer = client
        .login(pb::LoginRequest {
            login: pool.emails[account].clone(),
            password: pool.password.clone(),
        })
        .await;
    let challenge = match answer {
        Ok(r) => r
            .into_inner()
            .mfa_required
            .ok_or_else(|| "no_mfa_required".to_owned()),
        Err(s) => Err(code_label(&s)),
    };
    let challenge = match challenge {
        Ok(challenge) => challenge,
        Err(label) => {
            stats[LOGIN].error(label.clone());
            stats[PAIR].error(label);
            // No code was given: the step before the current one is no
            // older than the account's last, and frees it at once.
            return (current_step() - 1, false);
        }
    };
    stats[LOGIN].record(t, Ok(()));

    let step = current_step();
    let second = Instant::now();
    let answer = client
        .complete_login(pb::CompleteLoginRequest {
            mfa_token: challenge.mfa_token,
            proof: Some(pb::complete_login_request::Proof::TotpCode(code(
                &pool.secrets[account],
                step,
            ))),
        })
        .await;
    let outcome = match answer {
        Ok(r) if r.get_ref().tokens.is_some() => Ok(()),
        Ok(_) => Err("no_tokens".to_owned()),
        Err(s) => Err(code_label(&s)),
    };
    let completed = outcome.is_ok();
    stats[COMPLETE].record(second, outcome.clone());
    stats[PAIR].record(t, outcome);
    (step, completed)
}

/// The pair against Login alone, and the second step against one Login and
/// one argon2 hash.
fn ratios(rows: &[Row], settings: &Settings) -> Vec<String> {
    let find = |prefix: &str| rows.iter().find(|r| r.name.trim_start().starts_with(prefix));
    let (Some(alone), Some(pair), Some(complete)) = (
        find("login-mfa: login alone"),
        find("login-mfa: login + complete"),
        find("login-mfa: the complete step"),
    ) else {
        return Vec::new();
    };
    let hash_ms = settings.hash_time.as_secs_f64() * 1000.0;
    let cpu = match (pair.authd_us_per_call(), alone.authd_us_per_call()) {
        (Some(p), Some(a)) => format!(
            "; authd CPU per call {p:.0} / {a:.0} µs, the second step {:+.0} µs = {:.3} × one hash",
            p - a,
            (p - a) / (hash_ms * 1000.0)
        ),
        _ => String::new(),
    };
    vec![
        format!(
            "login-mfa: Login + CompleteLogin / Login alone, legs in turns: {:.1} / {:.1} calls/s = {:.2}{cpu}",
            pair.calls_per_sec,
            alone.calls_per_sec,
            pair.calls_per_sec / alone.calls_per_sec,
        ),
        format!(
            "login-mfa: CompleteLogin p50 {:.2} ms, p99 {:.2} ms; one Login (alone) p50 {:.2} ms; one argon2 hash \
             {hash_ms:.2} ms: CompleteLogin p50 = {:.3} × Login p50 = {:.3} × one hash, p99 = {:.3} × one hash",
            complete.p50_ms,
            complete.p99_ms,
            alone.p50_ms,
            complete.p50_ms / alone.p50_ms,
            complete.p50_ms / hash_ms,
            complete.p99_ms / hash_ms,
        ),
    ]
}
