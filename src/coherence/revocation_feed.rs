//! What wakes WatchRevocations subscribers on this replica: the newest
//! event id known to exist, raised by the change listener's
//! `authd_revocation` notifications and, as a safety net for a lost
//! notification, by a poll of the log while anyone is subscribed. It also
//! carries the server's "shutting down" flag, which ends every stream.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::db;

/// How long events stay resumable; the design's contract.
pub const RETENTION: chrono::Duration = chrono::Duration::hours(24);

#[derive(Clone)]
pub struct RevocationFeed {
    inner: Arc<Inner>,
}

struct Inner {
    head: watch::Sender<i64>,
    closing: watch::Sender<bool>,
    /// A subscriber with nothing to deliver sends a heartbeat this often.
    heartbeat: Duration,
}

impl RevocationFeed {
    pub fn new(heartbeat: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                head: watch::Sender::new(0),
                closing: watch::Sender::new(false),
                heartbeat,
            }),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    /// An event with this id has committed somewhere.
    pub fn announce(&self, event_id: i64) {
        self.inner.head.send_if_modified(|head| {
            let newer = event_id > *head;
            if newer {
                *head = event_id;
            }
            newer
        });
    }

    pub fn head(&self) -> watch::Receiver<i64> {
        self.inner.head.subscribe()
    }

    /// Ends every stream (with UNAVAILABLE, so clients reconnect elsewhere).
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Reads the log's head every `every` while someone is subscribed, so a
    /// notification lost with the listener's connection costs at most that
    /// much latency, never an event.
    pub async fn poll_periodically(self, pool: PgPool, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.inner.head.receiver_count() == 0 {
                continue;
            }
            match db::revocations::state(&pool).await {
                Ok(state) => self.announce(state.last_event_id),
                Err(e) => tracing::debug!(error = %e, "revocation log poll failed"),
            }
        }
    }
}
