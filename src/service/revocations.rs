//! WatchRevocations: one task per subscriber that pushes events into a
//! small channel. New events come from the replica's feed, read once for
//! every subscriber; the task reads the log itself only to catch up (a
//! resumed cursor, or when it fell further behind than the feed's bounded
//! buffer). It sends a heartbeat when it had nothing to say for a while,
//! and waits on the channel when the subscriber reads slowly: beyond the
//! feed's buffer, the log in PostgreSQL is the buffer, never this
//! process's memory. A subscriber that takes nothing for two heartbeat
//! intervals once that channel is full is cut off (SUBSCRIBER_TOO_SLOW,
//! with the last event it was sent), so it holds no task here while it
//! does not read.

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::Core;
use crate::coherence::revocation_feed::{BATCH, Published, Subscription};
use crate::db::{self, revocations::EventKind, revocations::EventRow};
use crate::domain::{FieldReason, Invalid};
use crate::error::AppError;

/// Messages a subscriber may have in flight before its task waits; one
/// more place is kept for the status that ends the stream.
const CHANNEL: usize = 64;
/// A subscriber whose channel is full and that takes no message for this
/// many heartbeat intervals is cut off: a reading subscriber takes at
/// least a heartbeat per interval.
const STALLED_HEARTBEATS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    SessionEnded,
    UserSessionsEnded,
    UserDisabled,
    UserDeleted,
    /// A second factor was added, removed or reset, or recovery codes
    /// changed; revokes no token.
    FactorsChanged,
    /// An event this stream's contract does not define (a password, role,
    /// address change or an enabled account, for Shared Signals): sent as
    /// a USER_SESSIONS_ENDED naming no session, since the ids must stay
    /// gapless.
    Other,
    Heartbeat,
}

#[derive(Debug, Clone)]
pub struct RevocationEvent {
    /// On a heartbeat: the cursor, the last event delivered.
    pub id: i64,
    pub kind: RevocationKind,
    pub user_id: Option<Uuid>,
    pub session_ids: Vec<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

impl From<EventRow> for RevocationEvent {
    fn from(row: EventRow) -> Self {
        let kind = match row.kind {
            EventKind::SessionEnded => RevocationKind::SessionEnded,
            EventKind::UserSessionsEnded => RevocationKind::UserSessionsEnded,
            EventKind::UserDisabled => RevocationKind::UserDisabled,
            EventKind::UserDeleted => RevocationKind::UserDeleted,
            EventKind::FactorsChanged => RevocationKind::FactorsChanged,
            EventKind::PasswordChanged
            | EventKind::RolesChanged
            | EventKind::UserEnabled
            | EventKind::IdentifierChanged => RevocationKind::Other,
        };
        Self {
            id: row.id,
            kind,
            user_id: Some(row.user_id),
            session_ids: row.session_ids,
            occurred_at: row.occurred_at,
        }
    }
}

pub type RevocationStream = mpsc::Receiver<Result<RevocationEvent, AppError>>;

impl Core {
    /// Checks where the subscriber starts now (so a bad cursor or time is
    /// the call's status, not a broken stream) and starts its task. It
    /// starts after `after_event_id`, or with the first event that occurred
    /// at or after `since`, or at the present when neither is given.
    #[tracing::instrument(skip_all, fields(after_event_id))]
    pub async fn watch_revocations(
        &self,
        after_event_id: i64,
        since: Option<DateTime<Utc>>,
    ) -> Result<RevocationStream, AppError> {
        if after_event_id < 0 {
            return Err(AppError::invalid(
                "after_event_id",
                Invalid::new(FieldReason::InvalidFormat, "must be 0 (from now) or an event id"),
            ));
        }
        if after_event_id == 0 {
            // "From now" (or from a time) is read from the log once every
            // change committed before this call has its id: events are
            // numbered just after their commit, and one committed a moment
            // ago might still be waiting, to be sent as if it came later.
            self.number_committed_events().await?;
        }
        let (cursor, head) = match (after_event_id, since) {
            (0, Some(since)) => self.cursor_at(since).await?,
            (_, Some(_)) => {
                return Err(AppError::invalid(
                    "since",
                    Invalid::new(FieldReason::InvalidFormat, "only when after_event_id is 0"),
                ));
            }
            (after, None) => {
                let state = db::revocations::state(&self.db).await?;
                let cursor = match after {
                    0 => state.last_event_id,
                    // Equal to pruned_through is fine: everything after it is kept.
                    c if c < state.pruned_through || c > state.last_event_id => {
                        return Err(AppError::CursorExpired);
                    }
                    c => c,
                };
                (cursor, state.last_event_id)
            }
        };
        // Joined before the task starts, so nothing the feed publishes
        // from now on can pass this subscriber by.
        let feed_events = self.revocation_feed.subscribe(head);
        let (tx, rx) = mpsc::channel(CHANNEL + 1);
        let last_word = tx
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("a new channel has no room")))?;
        let subscriber = Subscriber {
            tx,
            last_word: Some(last_word),
            delivered: cursor,
            stall: self.revocation_feed.heartbeat() * STALLED_HEARTBEATS,
        };
        tokio::spawn(
            self.clone()
                .serve_subscriber(cursor, head, feed_events, subscriber),
        );
        Ok(rx)
    }

    /// The cursor just before the first event that occurred at or after
    /// `since`, and the log's head. Times are the database's and rise with
    /// ids, so every event from `since` on comes after that cursor; and
    /// within the retention, by the same clock, none of them was pruned.
    async fn cursor_at(&self, since: DateTime<Utc>) -> Result<(i64, i64), AppError> {
        let start = db::revocations::start_at(&self.db, since).await?;
        if since > start.now {
            return Err(AppError::invalid(
                "since",
                Invalid::new(FieldReason::InvalidFormat, "is in the future"),
            ));
        }
        if since < start.now - self.revocation_feed.retention() {
            return Err(AppError::CursorExpired);
        }
        let cursor = start.first_id.map_or(start.last_event_id, |id| id - 1);
        Ok((cursor, start.last_event_id))
    }

    async fn serve_subscriber(
        self,
        mut cursor: i64,
        head: i64,
        mut feed_events: Subscription,
        mut tx: Subscriber,
    ) {
        let _open = self.metrics.revocation_stream();
        let feed = self.revocation_feed.clone();
        let mut closing = feed.closing();
        let every = feed.heartbeat();
        // Events up to the head (committed before the call began) and up
        // to what the feed had published when this subscriber joined are
        // not sent to it: those it reads from the log.
        let mut behind = cursor < head.max(feed_events.published);
        // A heartbeat says every event committed before the call began has
        // been delivered, so the first one waits for the catch-up (it is
        // the first message when there is none): a subscriber that starts
        // from a time knows when it has heard of everything since. It also
        // carries the cursor, so a subscriber that starts from 0 and loses
        // the stream before the first event resumes where it was.
        let mut caught_up = false;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            if *closing.borrow() {
                tx.end(AppError::ShuttingDown);
                return;
            }
            if behind {
                self.metrics.revocation_catch_up();
                match db::revocations::after(&self.db, cursor, BATCH).await {
                    Ok(rows) => {
                        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= BATCH;
                        if rows.is_empty() {
                            // Events after the cursor committed (the head
                            // or the feed says so) but none is left: pruned
                            // while this subscriber was behind, with
                            // nothing newer to show the gap.
                            match self.successors_pruned(cursor).await {
                                Ok(false) => {}
                                Ok(true) => {
                                    tx.end(AppError::CursorExpired);
                                    return;
                                }
                                Err(e) => {
                                    tx.end(e);
                                    return;
                                }
                            }
                        }
                        for row in rows {
                            match deliver(&mut tx, &mut cursor, row, &self).await {
                                Delivered::Yes => {}
                                Delivered::Gap => {
                                    // Ids are gapless, so a missing one was
                                    // pruned (its retention passed while this
                                    // subscriber was behind): the subscriber
                                    // must learn it, not skip it.
                                    tx.end(AppError::CursorExpired);
                                    return;
                                }
                                Delivered::Gone => return,
                            }
                        }
                        quiet_since = tokio::time::Instant::now();
                        if full {
                            // More is waiting: read on without waiting for news.
                            continue;
                        }
                        // The log's end was at or past every event the feed
                        // had published; from here the feed sends the rest.
                        behind = false;
                    }
                    Err(e) => {
                        tx.end(e);
                        return;
                    }
                }
            }
            if !caught_up {
                caught_up = true;
                if tx.send(heartbeat(cursor), &self).await.is_err() {
                    return;
                }
                quiet_since = tokio::time::Instant::now();
            }
            tokio::select! {
                event = feed_events.events.recv() => match event {
                    Ok(Published::ReadFailed { unavailable }) => {
                        let failed = anyhow::anyhow!("reading new revocation events failed");
                        let error = if unavailable {
                            AppError::Unavailable(failed)
                        } else {
                            AppError::internal(failed)
                        };
                        tx.end(error);
                        return;
                    }
                    Ok(Published::Event(row)) => {
                        match deliver(&mut tx, &mut cursor, (*row).clone(), &self).await {
                            Delivered::Yes => quiet_since = tokio::time::Instant::now(),
                            // Pruned before the feed read it, or missed:
                            // the log says which.
                            Delivered::Gap => behind = true,
                            Delivered::Gone => return,
                        }
                    }
                    // Fell further behind than the feed's buffer: the log
                    // has what the buffer dropped.
                    Err(broadcast::error::RecvError::Lagged(_)) => behind = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = closing.changed() => {}
                () = tx.tx.closed() => return,
                () = tokio::time::sleep_until(quiet_since + every) => {
                    if tx.send(heartbeat(cursor), &self).await.is_err() {
                        return;
                    }
                    quiet_since = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Whether events right after `cursor` were pruned.
    async fn successors_pruned(&self, cursor: i64) -> Result<bool, AppError> {
        Ok(db::revocations::state(&self.db).await?.pruned_through > cursor)
    }
}

enum Delivered {
    Yes,
    /// The event is not the one after the cursor.
    Gap,
    /// The subscriber hung up, or was cut off.
    Gone,
}

/// Sends `row` if it is the event after `cursor` and moves the cursor; one
/// at or before the cursor was delivered already (from the log or the feed).
async fn deliver(tx: &mut Subscriber, cursor: &mut i64, row: EventRow, core: &Core) -> Delivered {
    if row.id <= *cursor {
        return Delivered::Yes;
    }
    if row.id != *cursor + 1 {
        return Delivered::Gap;
    }
    let id = row.id;
    if tx.send(RevocationEvent::from(row), core).await.is_err() {
        return Delivered::Gone;
    }
    *cursor = id;
    Delivered::Yes
}

/// One subscriber's end of its channel.
struct Subscriber {
    tx: mpsc::Sender<Result<RevocationEvent, AppError>>,
    /// The place kept for the status that ends the stream, so that status
    /// never waits for a subscriber that does not read.
    last_word: Option<mpsc::OwnedPermit<Result<RevocationEvent, AppError>>>,
    /// The last event id sent (a heartbeat's is the cursor).
    delivered: i64,
    stall: std::time::Duration,
}

impl Subscriber {
    /// Sends `event`, or ends the stream: the subscriber is gone, or took
    /// nothing for `stall` with its channel full.
    async fn send(&mut self, event: RevocationEvent, core: &Core) -> Result<(), ()> {
        let id = event.id;
        // Room in the channel, the usual case: no timer to arm. With a
        // thousand subscribers every event costs a thousand sends.
        let event = match self.tx.try_send(Ok(event)) {
            Ok(()) => {
                self.delivered = id;
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        match tokio::time::timeout(self.stall, self.tx.send(event)).await {
            Ok(Ok(())) => {
                self.delivered = id;
                Ok(())
            }
            Ok(Err(_)) => Err(()),
            Err(_) => {
                core.metrics.revocation_stream_cut_off();
                tracing::info!(
                    after_event_id = self.delivered,
                    "revocation subscriber took no message for {:?}; cut off",
                    self.stall
                );
                self.end(AppError::SubscriberTooSlow {
                    after_event_id: self.delivered,
                });
                Err(())
            }
        }
    }

    /// Ends the stream with `error`, after what the subscriber was sent.
    fn end(&mut self, error: AppError) {
        if let Some(permit) = self.last_word.take() {
            permit.send(Err(error));
        }
    }
}

#[allow(clippy::disallowed_methods)] // a stream's edge: a heartbeat says when it was sent
fn heartbeat(cursor: i64) -> RevocationEvent {
    RevocationEvent {
        id: cursor,
        kind: RevocationKind::Heartbeat,
        user_id: None,
        session_ids: Vec::new(),
        occurred_at: Utc::now(),
    }
}
