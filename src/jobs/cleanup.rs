//! The clean-up: deletes what authd keeps only for a while, on one replica
//! at a time, in bounded batches.
//!
//! What goes (the retention rules):
//! - sessions that ended (revoked, or past either expiry) more than a day
//!   ago, and their refresh tokens;
//! - throttle counters nobody touched for a day and that hold no lock;
//! - reset and verification tokens issued more than a day ago and expired;
//! - sent or discarded mail older than a week;
//! - revocation events past `AUTHD_EVENT_RETENTION`;
//! - login challenges past their expiry, and factor enrollments never
//!   confirmed past theirs.
//!
//! **Bounded batches.** Every statement deletes at most
//! `AUTHD_CLEANUP_BATCH_SIZE` rows and is its own short transaction, with a
//! pause after it as long as it took (so the clean-up takes at most about
//! half of one database connection's time, and request traffic gets the
//! rest). Tables are walked in ranges of heap blocks with TID range scans,
//! which need no index: none serves the end of a session, and none may
//! (Refresh moves `idle_expires_at`; an index on it would end its HOT
//! updates). A range spans about a batch's worth of rows (from the
//! planner's rows per block), and is deleted from again while a batch comes
//! back full. The block count is read at the start of each table's walk;
//! rows written behind it later are the next pass's. Ended sessions lose
//! their refresh tokens in batches of their own first, so the cascade of a
//! session batch has nothing left to delete. Revocation events go in id
//! ranges, each batch moving the log's `pruned_through` in its transaction,
//! so the events left are always the contiguous tail after it.
//! Login challenges and pending enrollments are few and die at an indexed
//! `expires_at`: they go in batches along that index.
//!
//! **One replica at a time.** A pass runs on a connection of its own (not
//! a pooled one, which would keep the session's advisory lock when given
//! back) holding `pg_try_advisory_lock(LOCK_KEY)`; a replica that does not
//! get it skips (`busy`). Under the lock, a replica also skips when
//! `maintenance_runs` says a pass finished less than an interval ago
//! (`recent`), so that ten replicas run one pass per interval, not ten in a
//! row. A replica that dies mid-pass loses its connection and with it the
//! lock, and leaves `finished_at` empty: the next attempt runs a pass.
//!
//! **Not at start-up.** The first attempt comes after a random half to a
//! whole interval, later ones after 0.9 to 1.1 intervals, or, when a pass
//! was recent, just after the next one is due (plus up to a tenth of an
//! interval), so restarted replicas do not all attempt at once.
//!
//! At shutdown a pass ends between two batches; it is then not recorded as
//! finished, so another replica runs one soon.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand_core::{OsRng, RngCore as _};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::watch;

use crate::db;
use crate::db::maintenance::{AgedRows, Blocks, CleanupTable, ExpiredRows};
use crate::error::AppError;
use crate::metrics::{CleanupOutcome, Metrics};

/// The advisory lock a replica holds while it runs a pass (`authdcln` in
/// ASCII).
pub const LOCK_KEY: i64 = 0x6175_7468_6463_6c6e;
/// The clean-up's row in `maintenance_runs`.
pub const TASK: &str = "cleanup";

/// How long ended sessions are kept (ListSessions shows none of them; the
/// day leaves room to look into a recent incident).
const SESSION_RETENTION: chrono::Duration = chrono::Duration::days(1);
/// Reset and verification tokens: longer than any link lives and than the
/// hour the per-account mail caps count.
const TOKEN_RETENTION: chrono::Duration = chrono::Duration::days(1);
/// Sent and discarded mail.
const MAIL_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// Rows per heap block assumed for a table the planner has not analysed
/// yet (a session row with its fill factor takes about this).
const DEFAULT_ROWS_PER_BLOCK: f64 = 50.0;
/// The widest block range, whatever the estimate (64 MiB of heap).
const MAX_SPAN: i64 = 8192;
/// The pause after a batch is as long as the batch took, within these.
const MIN_PAUSE: Duration = Duration::from_millis(2);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Limits of the clean-up's own connection: a batch that waits this long
/// for a row lock, or runs this long, fails instead of holding on.
const CONNECTION_SETTINGS: [(&str, &str); 2] = [("lock_timeout", "2s"), ("statement_timeout", "60s")];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between attempts, however long the interval.
const MAX_WAIT: Duration = Duration::from_secs(366 * 86_400);

/// A batch deletes from one table in one block range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockStep {
    /// Refresh tokens of ended sessions, before the sessions themselves.
    EndedSessionTokens,
    EndedSessions,
    StaleCounters,
    OldResetTokens,
    OldVerificationTokens,
    OldMail,
}

impl BlockStep {
    fn table(self) -> CleanupTable {
        match self {
            Self::EndedSessionTokens => CleanupTable::RefreshTokens,
            Self::EndedSessions => CleanupTable::Sessions,
            Self::StaleCounters => CleanupTable::LoginThrottle,
            Self::OldResetTokens => CleanupTable::ResetTokens,
            Self::OldVerificationTokens => CleanupTable::VerificationTokens,
            Self::OldMail => CleanupTable::Outbox,
        }
    }
}

/// The tables walked in block ranges, with the steps each range goes
/// through in order.
const BLOCK_WALKS: [(CleanupTable, &[BlockStep]); 5] = [
    (
        CleanupTable::Sessions,
        &[BlockStep::EndedSessionTokens, BlockStep::EndedSessions],
    ),
    (CleanupTable::LoginThrottle, &[BlockStep::StaleCounters]),
    (CleanupTable::ResetTokens, &[BlockStep::OldResetTokens]),
    (
        CleanupTable::VerificationTokens,
        &[BlockStep::OldVerificationTokens],
    ),
    (CleanupTable::Outbox, &[BlockStep::OldMail]),
];
/// The tables cleaned along their expiry index, after the walks.
const EXPIRY_SWEEPS: [ExpiredRows; 3] = [
    ExpiredRows::MfaChallenges,
    ExpiredRows::PendingFactors,
    ExpiredRows::WebauthnCeremonies,
];

/// The name a replica records in `maintenance_runs` and shows as its
/// clean-up connection's `application_name`: host, process, gRPC address.
pub fn replica_name(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}/{}/{listen}", std::process::id())
}

/// The background task; [`Cleanup::run`] until told to stop.
pub struct Cleanup {
    options: PgConnectOptions,
    interval: Duration,
    batch_size: u32,
    event_retention: chrono::Duration,
    replica: String,
    metrics: Metrics,
}

/// How one attempt ended, for the wait before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Ran, found another replica's pass running, or failed: try again in
    /// about an interval.
    Done,
    /// A pass finished recently: the next is due in this long.
    Recent(Duration),
    /// Shutdown.
    Stopped,
}

/// After a table: on to the next, or end the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Go,
    /// Shutdown.
    Stop,
    /// The database is gone.
    GiveUp,
}

/// Why a table's walk ended before its end.
enum Halt {
    Stopped,
    Failed(AppError),
}

impl From<AppError> for Halt {
    fn from(e: AppError) -> Self {
        Self::Failed(e)
    }
}

impl Cleanup {
    /// The clean-up of the database `pool` connects to, run every `interval`
    /// across replicas (zero: never on this one), deleting at most
    /// `batch_size` rows per statement; `replica` names this replica.
    pub fn new(
        pool: &PgPool,
        interval: Duration,
        batch_size: u32,
        event_retention: Duration,
        replica: String,
        metrics: Metrics,
    ) -> Self {
        metrics.cleanup_tables(&CleanupTable::ALL.map(CleanupTable::name));
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&format!("authd clean-up {replica}"))
            .options(CONNECTION_SETTINGS);
        Self {
            options,
            interval,
            batch_size: batch_size.max(1),
            event_retention: chrono::Duration::from_std(event_retention).unwrap_or(chrono::Duration::days(7)),
            replica,
            metrics,
        }
    }

    /// Attempts a pass now and then until `stop` turns true (or its sender
    /// goes); a pass under way ends between two batches.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.interval.is_zero() {
            tracing::info!("clean-up off on this replica (AUTHD_CLEANUP_INTERVAL=0)");
            return;
        }
        self.metrics.set_cleanup_running(false);
        let mut wait = scaled(self.interval, 0.5 + 0.5 * fraction());
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            wait = match self.attempt(&mut stop).await {
                Attempt::Done => scaled(self.interval, 0.9 + 0.2 * fraction()),
                Attempt::Recent(due) => (due + scaled(self.interval, 0.1 * fraction())).min(MAX_WAIT),
                Attempt::Stopped => return,
            };
        }
    }

    /// One attempt: connect, take the lock, run a pass unless one is recent.
    async fn attempt(&self, stop: &mut watch::Receiver<bool>) -> Attempt {
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options)).await;
        let mut conn = match connected {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "clean-up: cannot connect to the database; next attempt in about an interval");
                self.metrics.cleanup_attempt(CleanupOutcome::Error);
                return Attempt::Done;
            }
            Err(_) => {
                tracing::warn!(
                    "clean-up: connecting to the database timed out; next attempt in about an interval"
                );
                self.metrics.cleanup_attempt(CleanupOutcome::Error);
                return Attempt::Done;
            }
        };
        if let Err(e) = db::maintenance::pin_plans(&mut conn).await {
            tracing::warn!(error = %e, "clean-up: cannot pin its planner settings; next attempt in about an interval");
            self.metrics.cleanup_attempt(CleanupOutcome::Error);
            return Attempt::Done;
        }
        let attempt = self.attempt_on(&mut conn, stop).await;
        // Ending the session releases the lock, whatever happened.
        if tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await.is_err() {
            tracing::debug!("clean-up: closing its connection timed out; dropped");
        }
        attempt
    }

    async fn attempt_on(&self, conn: &mut PgConnection, stop: &mut watch::Receiver<bool>) -> Attempt {
        match db::maintenance::try_lock(conn, LOCK_KEY).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("clean-up skipped: another replica is running a pass");
                self.metrics.cleanup_attempt(CleanupOutcome::Busy);
                return Attempt::Done;
            }
            Err(e) => {
                tracing::warn!(error = %chain(e), "clean-up: cannot take its lock");
                self.metrics.cleanup_attempt(CleanupOutcome::Error);
                return Attempt::Done;
            }
        }
        let attempt = self.pass_unless_recent(conn, stop).await;
        if let Err(e) = db::maintenance::unlock(conn, LOCK_KEY).await {
            tracing::debug!(error = %chain(e), "clean-up: unlocking failed; closing the connection releases it");
        }
        attempt
    }

    /// Under the lock: a pass, unless one finished less than an interval ago.
    #[allow(clippy::disallowed_methods)] // a job's loop top: a pass measures every cut-off from its start
    async fn pass_unless_recent(&self, conn: &mut PgConnection, stop: &mut watch::Receiver<bool>) -> Attempt {
        match db::maintenance::next_due_in(conn, TASK, self.interval).await {
            Ok(None) => {}
            Ok(Some(due)) => {
                tracing::debug!(due_in = ?due, "clean-up skipped: a pass finished less than an interval ago");
                self.metrics.cleanup_attempt(CleanupOutcome::Recent);
                return Attempt::Recent(due);
            }
            Err(e) => {
                tracing::warn!(error = %chain(e), "clean-up: cannot read when the last pass finished");
                self.metrics.cleanup_attempt(CleanupOutcome::Error);
                return Attempt::Done;
            }
        }
        if *stop.borrow() {
            return Attempt::Stopped;
        }
        if let Err(e) = db::maintenance::start_run(conn, TASK, &self.replica).await {
            tracing::warn!(error = %chain(e), "clean-up: cannot record the start of a pass");
            self.metrics.cleanup_attempt(CleanupOutcome::Error);
            return Attempt::Done;
        }
        tracing::info!(replica = %self.replica, batch_size = self.batch_size, "clean-up pass started");
        self.metrics.set_cleanup_running(true);
        let started = Instant::now();
        let mut pass = Pass::new(self, conn, stop, Utc::now());
        let stopped = pass.run().await;
        let Pass { tally, failed, .. } = pass;
        let elapsed = started.elapsed();
        let outcome = if stopped {
            CleanupOutcome::Stopped
        } else {
            match db::maintenance::finish_run(conn, TASK, &self.replica, tally.deleted()).await {
                Ok(()) if failed => CleanupOutcome::Error,
                Ok(()) => CleanupOutcome::Ran,
                Err(e) => {
                    tracing::warn!(error = %chain(e), "clean-up: cannot record the end of the pass");
                    CleanupOutcome::Error
                }
            }
        };
        self.metrics.cleanup_pass_took(elapsed);
        self.metrics.set_cleanup_running(false);
        self.metrics.cleanup_attempt(outcome);
        tracing::info!(
            replica = %self.replica,
            outcome = outcome.label(),
            deleted = tally.deleted(),
            batches = tally.batches.iter().sum::<u64>(),
            elapsed_ms = elapsed.as_millis(),
            by_table = %tally.by_table(),
            "clean-up pass finished"
        );
        if stopped { Attempt::Stopped } else { Attempt::Done }
    }
}

/// Rows deleted and batches run, by table.
#[derive(Debug, Default)]
struct Tally {
    deleted: [u64; CleanupTable::ALL.len()],
    batches: [u64; CleanupTable::ALL.len()],
}

impl Tally {
    fn deleted(&self) -> u64 {
        self.deleted.iter().sum()
    }

    /// `table=rows` for every table, for the pass's log line.
    fn by_table(&self) -> String {
        CleanupTable::ALL
            .iter()
            .zip(self.deleted)
            .map(|(table, rows)| format!("{}={rows}", table.name()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The limits every rule is measured from, fixed at the start of a pass.
struct Cutoffs {
    now: DateTime<Utc>,
    sessions: DateTime<Utc>,
    tokens: DateTime<Utc>,
    mail: DateTime<Utc>,
}

/// One pass over every table, on the locked connection.
struct Pass<'a> {
    cleanup: &'a Cleanup,
    conn: &'a mut PgConnection,
    stop: &'a mut watch::Receiver<bool>,
    cutoffs: Cutoffs,
    tally: Tally,
    /// A table failed (logged); the others were cleaned.
    failed: bool,
}

impl<'a> Pass<'a> {
    fn new(
        cleanup: &'a Cleanup,
        conn: &'a mut PgConnection,
        stop: &'a mut watch::Receiver<bool>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            cleanup,
            conn,
            stop,
            cutoffs: Cutoffs {
                now,
                sessions: now - SESSION_RETENTION,
                tokens: now - TOKEN_RETENTION,
                mail: now - MAIL_RETENTION,
            },
            tally: Tally::default(),
            failed: false,
        }
    }

    /// Every table in turn; a table that fails is logged and the others
    /// still cleaned, unless the database is gone. True when stopped.
    async fn run(&mut self) -> bool {
        for (table, steps) in BLOCK_WALKS {
            let walked = self.walk_blocks(table.name(), steps).await;
            match self.settle(table, walked) {
                Next::Go => {}
                Next::Stop => return true,
                Next::GiveUp => return false,
            }
        }
        let pruned = self.prune_revocations().await;
        match self.settle(CleanupTable::RevocationEvents, pruned) {
            Next::Go => {}
            Next::Stop => return true,
            Next::GiveUp => return false,
        }
        for rows in EXPIRY_SWEEPS {
            let swept = self.sweep_expired(rows).await;
            match self.settle(rows.table(), swept) {
                Next::Go => {}
                Next::Stop => return true,
                Next::GiveUp => return false,
            }
        }
        false
    }

    /// Notes how a table's walk ended, and what comes next.
    fn settle(&mut self, table: CleanupTable, walked: Result<(), Halt>) -> Next {
        let relation = table.name();
        match walked {
            Ok(()) => Next::Go,
            Err(Halt::Stopped) => {
                tracing::info!(table = relation, "clean-up pass stopped at shutdown");
                Next::Stop
            }
            Err(Halt::Failed(e)) => {
                self.failed = true;
                let unavailable = matches!(e, AppError::Unavailable(_));
                tracing::warn!(table = relation, error = %chain(e), "clean-up of a table failed");
                // Without a database the other tables would fail too; a
                // later pass does them all.
                if unavailable { Next::GiveUp } else { Next::Go }
            }
        }
    }

    async fn walk_blocks(&mut self, relation: &str, steps: &[BlockStep]) -> Result<(), Halt> {
        let limit = self.cleanup.batch_size;
        let size = db::maintenance::table_size(self.conn, relation).await?;
        let per_block = size
            .rows_per_block
            .filter(|r| r.is_finite() && *r >= 1.0)
            .unwrap_or(DEFAULT_ROWS_PER_BLOCK);
        // About a batch's worth of rows; whole blocks.
        let span = ((f64::from(limit) / per_block).ceil() as i64).clamp(1, MAX_SPAN);
        let mut start = 0;
        while start < size.blocks {
            let blocks = Blocks {
                start,
                end: start.saturating_add(span).min(size.blocks),
            };
            for &step in steps {
                // A full batch may have left more behind in the range.
                while self.block_batch(step, blocks).await? >= u64::from(limit) {}
            }
            start = blocks.end;
        }
        Ok(())
    }

    /// One batch of `step` in `blocks`, counted, then the pause.
    async fn block_batch(&mut self, step: BlockStep, blocks: Blocks) -> Result<u64, Halt> {
        if *self.stop.borrow() {
            return Err(Halt::Stopped);
        }
        let limit = self.cleanup.batch_size;
        let c = &self.cutoffs;
        let conn = &mut *self.conn;
        let started = Instant::now();
        let deleted = match step {
            BlockStep::EndedSessionTokens => {
                db::sessions::delete_ended_tokens_in(conn, blocks, c.sessions, limit).await
            }
            BlockStep::EndedSessions => db::sessions::delete_ended_in(conn, blocks, c.sessions, limit).await,
            BlockStep::StaleCounters => db::throttle::delete_stale_in(conn, blocks, c.now, limit).await,
            BlockStep::OldResetTokens => {
                db::maintenance::delete_aged_in(conn, AgedRows::ResetTokens, blocks, c.tokens, limit).await
            }
            BlockStep::OldVerificationTokens => {
                db::maintenance::delete_aged_in(conn, AgedRows::VerificationTokens, blocks, c.tokens, limit)
                    .await
            }
            BlockStep::OldMail => {
                db::maintenance::delete_aged_in(conn, AgedRows::FinishedMail, blocks, c.mail, limit).await
            }
        }?;
        self.counted(step.table(), deleted, started.elapsed()).await?;
        Ok(deleted)
    }

    /// Rows past their `expires_at`, along its index, a batch at a time
    /// until one comes back short.
    async fn sweep_expired(&mut self, rows: ExpiredRows) -> Result<(), Halt> {
        let limit = self.cleanup.batch_size;
        loop {
            if *self.stop.borrow() {
                return Err(Halt::Stopped);
            }
            let started = Instant::now();
            let deleted = db::maintenance::delete_expired(self.conn, rows, self.cutoffs.now, limit).await?;
            self.counted(rows.table(), deleted, started.elapsed()).await?;
            if deleted < u64::from(limit) {
                return Ok(());
            }
        }
    }

    /// Revocation events past retention, in id ranges. The retention is
    /// measured on the database's clock, which wrote the events' times and
    /// checks subscribers' `since`, not on this replica's.
    async fn prune_revocations(&mut self) -> Result<(), Halt> {
        let retention = self.cleanup.event_retention;
        let Some(horizon) = db::revocations::prune_horizon(&mut *self.conn, retention).await? else {
            return Ok(());
        };
        loop {
            if *self.stop.borrow() {
                return Err(Halt::Stopped);
            }
            let started = Instant::now();
            let Some(batch) =
                db::revocations::prune_batch(self.conn, horizon, self.cleanup.batch_size).await?
            else {
                return Ok(());
            };
            self.counted(CleanupTable::RevocationEvents, batch.deleted, started.elapsed())
                .await?;
        }
    }

    /// Counts a batch, then yields to request traffic for as long as it took.
    async fn counted(&mut self, table: CleanupTable, deleted: u64, took: Duration) -> Result<(), Halt> {
        let i = table.index();
        if let (Some(rows), Some(batches)) = (self.tally.deleted.get_mut(i), self.tally.batches.get_mut(i)) {
            *rows += deleted;
            *batches += 1;
        }
        self.cleanup.metrics.cleanup_batch(table.name(), deleted);
        tokio::select! {
            () = tokio::time::sleep(took.clamp(MIN_PAUSE, MAX_PAUSE)) => Ok(()),
            _ = self.stop.wait_for(|stop| *stop) => Err(Halt::Stopped),
        }
    }
}

/// `interval` times `factor`, at most [`MAX_WAIT`].
fn scaled(interval: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(interval.as_secs_f64() * factor)
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT)
}

/// A uniformly random number in [0, 1).
fn fraction() -> f64 {
    (OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// An error with its causes, for a log line.
fn chain(e: AppError) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fractions_stay_in_the_unit_interval() {
        for _ in 0..1000 {
            let f = fraction();
            assert!((0.0..1.0).contains(&f), "{f}");
        }
    }

    #[test]
    fn waits_scale_with_the_interval_and_never_overflow() {
        assert_eq!(scaled(Duration::from_secs(600), 0.5), Duration::from_secs(300));
        assert_eq!(scaled(Duration::from_secs(u64::MAX), 1.1), MAX_WAIT);
        assert_eq!(scaled(Duration::from_secs(600), 0.0), Duration::ZERO);
    }

    #[test]
    fn a_replica_is_named_by_host_process_and_address() {
        let name = replica_name("127.0.0.1:50051".parse().unwrap());
        assert!(
            name.ends_with(&format!("/{}/127.0.0.1:50051", std::process::id())),
            "{name}"
        );
        assert!(!name.starts_with('/'), "{name}");
    }
}
