//! A steady stream of account changes, each firing the `authd_user_changed`
//! notification that makes authd evict the account's cached sessions, and
//! how long those evictions take to show.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use authd::pb::auth::v1::auth_service_client::AuthServiceClient;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use uuid::Uuid;

use super::observe::wait_until_evicted;
use super::population::LiveSession;

/// Changes are sent in small batches this often, one statement each.
const TICK: Duration = Duration::from_millis(10);
/// One change this often is followed until its eviction shows.
const TRACK_EVERY: Duration = Duration::from_millis(100);
/// An eviction that has not shown by then is a stale cache: an error.
const GIVE_UP: Duration = Duration::from_secs(60);

pub struct ChangeStream {
    /// Accounts changed, and over how long.
    pub changed: usize,
    pub elapsed: Duration,
    /// Commit to the first refused GetMe, for the tracked changes.
    pub eviction_lags: Vec<Duration>,
    /// The same for one change made after the stream stopped: how long the
    /// cache took to work through what was still queued.
    pub drain: Option<Duration>,
    pub errors: BTreeMap<String, u64>,
}

/// Changes `per_sec` accounts per second from `accounts` (in order, again
/// from the start once all were changed) until `deadline`, then `closing`.
/// Each account's session should be cached, so that each change evicts
/// something, and used by nobody else: a tracked change lets the session
/// lapse too (silently), so a GetMe for it is refused once evicted.
pub async fn run(
    db: PgPool,
    control: Channel,
    accounts: Vec<LiveSession>,
    closing: LiveSession,
    per_sec: u32,
    deadline: Instant,
) -> ChangeStream {
    let started = Instant::now();
    let mut sent = 0usize;
    let mut changed = 0usize;
    let mut next_tracked = started;
    let mut trackers = JoinSet::new();
    let mut errors = BTreeMap::new();
    while Instant::now() < deadline {
        // Paced by the clock rather than by ticks, so a slow statement is
        // made up for by a bigger next batch.
        let due = (started.elapsed().as_secs_f64() * f64::from(per_sec)) as usize;
        let batch: Vec<&LiveSession> = (sent..due)
            .take(1000)
            .map(|k| &accounts[k % accounts.len()])
            .collect();
        if !batch.is_empty() {
            // Only a first change evicts something to follow.
            let tracked = (Instant::now() >= next_tracked && sent < accounts.len()).then(|| batch[0]);
            let users: Vec<Uuid> = batch.iter().map(|s| s.user_id).collect();
            match change(&db, &users, tracked.map(|s| s.session_id)).await {
                Ok(()) => {
                    changed += batch.len();
                    if let Some(session) = tracked {
                        next_tracked += TRACK_EVERY;
                        track(&mut trackers, &control, session.clone(), Instant::now());
                    }
                }
                Err(e) => *errors.entry(format!("account change: {e}")).or_default() += 1,
            }
            sent += batch.len();
        }
        tokio::time::sleep(TICK).await;
    }
    let elapsed = started.elapsed();

    let drain = match change(&db, &[closing.user_id], Some(closing.session_id)).await {
        Ok(()) => {
            let mut client = AuthServiceClient::new(control.clone());
            match wait_until_evicted(&mut client, &closing, Instant::now(), GIVE_UP).await {
                Ok(lag) => Some(lag),
                Err(e) => {
                    *errors.entry(format!("eviction check: {e}")).or_default() += 1;
                    None
                }
            }
        }
        Err(e) => {
            *errors.entry(format!("account change: {e}")).or_default() += 1;
            None
        }
    };
    let mut eviction_lags = Vec::new();
    while let Some(joined) = trackers.join_next().await {
        match joined.expect("eviction tracker panicked") {
            Ok(lag) => eviction_lags.push(lag),
            Err(e) => *errors.entry(format!("eviction check: {e}")).or_default() += 1,
        }
    }
    ChangeStream {
        changed,
        elapsed,
        eviction_lags,
        drain,
        errors,
    }
}

/// One statement: the accounts change (a NOTIFY each, at commit) and, if
/// given, a session lapses without one.
async fn change(db: &PgPool, users: &[Uuid], lapse: Option<Uuid>) -> Result<(), String> {
    sqlx::query(
        "WITH lapsed AS (
             UPDATE sessions SET idle_expires_at = now() - interval '1 second' WHERE id = $2)
         UPDATE users SET full_name = 'changed by the load generator', updated_at = now()
          WHERE id = ANY($1)",
    )
    .bind(users)
    .bind(lapse)
    .execute(db)
    .await
    .map(drop)
    .map_err(|e| match e.as_database_error().and_then(|d| d.code()) {
        Some(code) => format!("SQLSTATE {code}"),
        None => "database unreachable".to_owned(),
    })
}

fn track(
    trackers: &mut JoinSet<Result<Duration, String>>,
    control: &Channel,
    session: LiveSession,
    committed: Instant,
) {
    let mut client = AuthServiceClient::new(control.clone());
    trackers.spawn(async move { wait_until_evicted(&mut client, &session, committed, GIVE_UP).await });
}
