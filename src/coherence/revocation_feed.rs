//! What feeds WatchRevocations subscribers on this replica. The newest
//! event id known to exist is raised by the change listener's
//! `authd_revocation` notifications (and by this replica's numbering of
//! pending events) and, as a safety net for a lost
//! notification, by a poll of the log while anyone is subscribed. One
//! reader task ([`RevocationFeed::fan_out`]) reads the new events once and
//! broadcasts them to every subscriber through a bounded in-memory buffer,
//! so the database's work per event does not grow with the subscribers; a
//! subscriber that falls further behind than the buffer reads the log on
//! its own, slowing nobody else. It also carries the server's "shutting
//! down" flag, which ends every stream.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{broadcast, watch};

use crate::db;
use crate::db::revocations::EventRow;
use crate::error::AppError;
use crate::metrics::Metrics;

/// How long events stay resumable unless configured
/// (`AUTHD_EVENT_RETENTION`); the design's contract.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Events read per query; also bounds a catch-up's memory.
pub const BATCH: i64 = 256;
/// Events kept in memory for subscribers that read slower than others; a
/// subscriber further behind than this reads the log itself. At a few
/// hundred bytes per event (more for a user's many sessions), a few MB.
pub const BUFFER: usize = 1024;
/// How long the reader waits before reading again after a failed read.
const RETRY: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct RevocationFeed {
    inner: Arc<Inner>,
}

struct Inner {
    head: watch::Sender<i64>,
    closing: watch::Sender<bool>,
    /// A subscriber with nothing to deliver sends a heartbeat this often.
    heartbeat: Duration,
    /// How long events stay in the log.
    retention: chrono::Duration,
    /// Taken for a moment to publish an event or to subscribe, so that a
    /// subscriber knows exactly which events it will be sent.
    fanout: Mutex<Fanout>,
    /// Events were recorded and wait for their ids (`authd_revocation_pending`).
    pending: tokio::sync::Notify,
}

struct Fanout {
    /// Every event up to this id was either sent on `events` or existed
    /// before anyone subscribed; every event after it will be sent.
    published: i64,
    events: broadcast::Sender<Published>,
}

/// What the reader sends every subscriber.
#[derive(Debug, Clone)]
pub enum Published {
    Event(Arc<EventRow>),
    /// The reader could not read the log (`unavailable`: the database did
    /// not answer). Subscribers end their streams, as each did when it read
    /// for itself: a stream that kept sending heartbeats would vouch for a
    /// log nobody is reading.
    ReadFailed {
        unavailable: bool,
    },
}

/// One subscriber's share of the feed.
pub struct Subscription {
    /// Events after `published`, in id order. `Lagged` means the
    /// subscriber fell behind the buffer: it reads the log to catch up.
    pub events: broadcast::Receiver<Published>,
    /// Events up to this id are not sent here: read them from the log.
    pub published: i64,
}

impl RevocationFeed {
    pub fn new(heartbeat: Duration, retention: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                head: watch::Sender::new(0),
                closing: watch::Sender::new(false),
                heartbeat,
                retention: chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7)),
                fanout: Mutex::new(Fanout {
                    published: 0,
                    events: broadcast::Sender::new(BUFFER),
                }),
                pending: tokio::sync::Notify::new(),
            }),
        }
    }

    fn fanout(&self) -> MutexGuard<'_, Fanout> {
        // Nothing panics while holding it; a poisoned lock's state is whole.
        self.inner.fanout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a subscription. `head` is an event id known to have
    /// committed (read from the log by the caller): when nobody else
    /// follows the feed, nothing before it needs reading for fan-out.
    pub fn subscribe(&self, head: i64) -> Subscription {
        self.announce(head);
        let mut fanout = self.fanout();
        if fanout.events.receiver_count() == 0 {
            fanout.published = fanout.published.max(head);
        }
        Subscription {
            events: fanout.events.subscribe(),
            published: fanout.published,
        }
    }

    fn subscribers(&self) -> usize {
        self.fanout().events.receiver_count()
    }

    /// The replica's one reader: whenever the head passes what was
    /// published, reads the new events once and sends them to every
    /// subscriber. With nobody subscribed it reads nothing and only moves
    /// `published` along, so the first subscriber does not make it read
    /// the retained log.
    pub async fn fan_out(self, pool: PgPool, metrics: Metrics) {
        let mut head = self.head();
        loop {
            let target = *head.borrow_and_update();
            let cursor = {
                let mut fanout = self.fanout();
                if fanout.events.receiver_count() == 0 {
                    fanout.published = fanout.published.max(target);
                    None
                } else {
                    Some(fanout.published).filter(|published| *published < target)
                }
            };
            if let Some(cursor) = cursor {
                metrics.revocation_feed_read();
                match db::revocations::after(&pool, cursor, BATCH).await {
                    Ok(rows) => {
                        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= BATCH;
                        let mut fanout = self.fanout();
                        for row in rows {
                            // Moved past it while reading (everyone left
                            // and someone subscribed after it): known.
                            if row.id <= fanout.published {
                                continue;
                            }
                            fanout.published = row.id;
                            // A gap (pruned while this reader was behind)
                            // is sent as it is: each subscriber sees it
                            // and learns the truth from the log.
                            let _ = fanout.events.send(Published::Event(Arc::new(row)));
                        }
                        if full {
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation feed read failed; ending the streams");
                        let unavailable = matches!(e, AppError::Unavailable(_));
                        let _ = self.fanout().events.send(Published::ReadFailed { unavailable });
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            // The head never closes while the feed exists (it holds it).
            if head.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    pub fn retention(&self) -> chrono::Duration {
        self.inner.retention
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

    /// Wakes whoever waits on [`Self::head`] without a new event: a
    /// Shared Signals stream has a message of its own to deliver.
    pub fn nudge(&self) {
        self.inner.head.send_modify(|_| {});
    }

    /// Events committed somewhere wait for their ids: wakes this replica's
    /// numbering task (`jobs::event_numbering`). A wake-up while it runs is
    /// kept, so it runs again for what committed after its last look.
    pub fn events_pending(&self) {
        self.inner.pending.notify_one();
    }

    /// Returns at the next [`Self::events_pending`] (or at once for one
    /// that came while nobody waited).
    pub async fn pending_events(&self) {
        self.inner.pending.notified().await;
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
            if self.subscribers() == 0 {
                continue;
            }
            match db::revocations::state(&pool).await {
                Ok(state) => self.announce(state.last_event_id),
                Err(e) => tracing::debug!(error = %e, "revocation log poll failed"),
            }
        }
    }
}
