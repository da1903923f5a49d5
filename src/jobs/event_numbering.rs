//! Gives recorded events their ids, right after the transactions that
//! recorded them commit (see the migration `revocation_numbering`).
//!
//! Use cases record events unnumbered, so that revocations of unrelated
//! accounts never wait for each other's commits on one counter row. Every
//! replica runs this task: woken by `authd_revocation_pending` (through the
//! change listener), it numbers whatever has committed, in batches, under
//! the counter for one short transaction per batch. Replicas never queue on
//! the counter: one that finds it held tries again a moment later, and
//! every replica is woken by every pending event, so none is left behind.
//! A sweep every [`SWEEP`] numbers what a lost notification (or a replica
//! killed mid-batch) left, and one at start numbers what was recorded while
//! no replica ran.

use std::time::Duration;

use sqlx::PgPool;

use crate::coherence::revocation_feed::RevocationFeed;
use crate::db::revocations;

/// How often a replica looks for pending events nobody announced.
pub const SWEEP: Duration = Duration::from_secs(1);

pub struct EventNumbering {
    pool: PgPool,
    feed: RevocationFeed,
    sweep: Duration,
}

impl EventNumbering {
    pub fn new(pool: PgPool, feed: RevocationFeed) -> Self {
        Self {
            pool,
            feed,
            sweep: SWEEP,
        }
    }

    /// Runs until aborted (with the replica).
    pub async fn run(self) {
        let mut sweep = tokio::time::interval(self.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The first tick is at once: the start-up sweep.
            tokio::select! {
                _ = sweep.tick() => {}
                () = self.feed.pending_events() => {}
            }
            self.number_all().await;
        }
    }

    /// Numbers batches until nothing committed is pending. A failure is
    /// logged and left to the next wake-up or sweep: the events stay
    /// pending, none is lost.
    pub async fn number_all(&self) {
        match revocations::number_all_pending(&self.pool, revocations::NUMBERING_BATCH).await {
            // This replica's subscribers need not wait for the
            // notification's round trip.
            Ok(Some(head)) => self.feed.announce(head),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "numbering recorded events failed; retrying at the next sweep");
            }
        }
    }
}
