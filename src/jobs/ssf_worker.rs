//! Push delivery of Shared Signals streams (RFC 8935). Each replica leases
//! push streams from the database (one replica delivers a stream at a
//! time; a lapsed lease is taken over) and runs one task per leased
//! stream, so a dead or slow receiver holds up only its own stream. A task
//! sends the stream's SETs in order, one at a time, and moves the stream's
//! cursor past each SET the receiver accepted, fenced by its lease: after
//! a crash, delivery resumes from the last accepted SET (at least once;
//! the same `jti` when sent again). A failing receiver is retried with
//! exponential backoff and jitter, from the same cursor.

// A job's edge: it reads the clock to schedule retries.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::ssf_push::{PushClient, PushOutcome};
use crate::db::ssf::StreamRow;
use crate::domain::push_endpoint::PushEndpoint;
use crate::error::AppError;
use crate::service::Core;

/// How the worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct PushSettings {
    /// How long a replica's lease on a stream lasts unrenewed: a crashed
    /// replica's streams wait this long for another.
    pub lease: Duration,
    /// First wait after a failed push; doubles with each failure in a row.
    pub retry_base: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// How often the replica looks for streams to take.
    pub claim_every: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            claim_every: Duration::from_secs(2),
        }
    }
}

/// SETs sent per round before the task checks its lease and status again.
const ROUND: usize = 64;

pub struct PushWorker {
    core: Core,
    db: PgPool,
    client: PushClient,
    settings: PushSettings,
    replica: Uuid,
}

impl PushWorker {
    pub fn new(core: Core, db: PgPool, client: PushClient, settings: PushSettings) -> Self {
        Self {
            core,
            db,
            client,
            settings,
            replica: Uuid::new_v4(),
        }
    }

    /// Claims streams and runs their tasks until `stop`; then lets the
    /// tasks end and gives the leases back, so another replica takes over
    /// at once.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let worker = std::sync::Arc::new(self);
        let mut tasks: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(worker.settings.claim_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            tasks.retain(|_, task| !task.is_finished());
            let claimed =
                match crate::db::ssf::claim_push(&worker.db, worker.replica, worker.settings.lease, 10_000)
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        tracing::debug!(error = %e, "could not claim push streams");
                        continue;
                    }
                };
            for id in claimed {
                if tasks.contains_key(&id) {
                    continue;
                }
                let worker = worker.clone();
                let stop = stop.clone();
                tasks.insert(id, tokio::spawn(async move { worker.serve(id, stop).await }));
            }
        }
        for (_, task) in tasks.drain() {
            // A task ends at its next wait; one stuck in a delivery is cut
            // off by its timeouts.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Err(e) = crate::db::ssf::release_all(&worker.db, worker.replica).await {
            tracing::debug!(error = %e, "could not give the push leases back");
        }
    }

    /// One stream's task: while this replica holds the lease.
    async fn serve(&self, id: Uuid, mut stop: watch::Receiver<bool>) {
        let mut head = self.core.revocation_head();
        let mut renewed = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            if renewed.elapsed() >= self.settings.lease / 3 {
                match crate::db::ssf::renew(&self.db, id, self.replica, self.settings.lease).await {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => return,
                    Err(e) => tracing::debug!(error = %e, stream_id = %id, "lease renewal failed"),
                }
            }
            let wait = match self.round(id).await {
                Ok(Round::Busy) => Duration::ZERO,
                Ok(Round::Idle) => self.settings.lease / 3,
                Ok(Round::Until(wait)) => wait.min(self.settings.lease / 3),
                Ok(Round::Gone) => return,
                Err(e) => {
                    tracing::debug!(error = %e, stream_id = %id, "push round failed");
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = head.changed() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Sends what is pending, up to a round's worth.
    async fn round(&self, id: Uuid) -> Result<Round, AppError> {
        let Some(row) = self.core.ssf_stream_for_delivery(id).await? else {
            return Ok(Round::Gone);
        };
        if row.endpoint_url.is_none() {
            return Ok(Round::Gone);
        }
        // Before the status: a paused or disabled stream's messages go to
        // the same failing receiver, which was otherwise asked again at
        // every wake-up (every event in the log), whatever its back-off
        // or Retry-After. A status change clears retry_at, so the
        // stream-updated SET still goes out at once.
        if let Some(retry_at) = row.retry_at {
            let now = Utc::now();
            if retry_at > now {
                return Ok(Round::Until((retry_at - now).to_std().unwrap_or_default()));
            }
        }
        if row.status != "enabled" {
            // Paused: its events wait; disabled: nothing to send. A status
            // message about the change still goes out.
            return self.send_messages_only(&row).await;
        }
        if !self.core.ssf_check_retention(&row, Utc::now()).await? {
            return Ok(Round::Busy);
        }
        let (sets, more) = self
            .core
            .ssf_pending(&row, ROUND, &BTreeSet::new(), Utc::now())
            .await?;
        if sets.is_empty() {
            return Ok(Round::Idle);
        }
        // The status was read before the SETs: a pause committed in
        // between put its stream-updated SET in `sets`, with events after
        // it, which would go out while paused. Read again now that `sets`
        // is fixed: still enabled means every SET in it came before any
        // later pause (whose message then goes in the next round).
        match self.core.ssf_stream_for_delivery(id).await? {
            Some(now) if now.status == "enabled" => {}
            Some(_) => return Ok(Round::Busy),
            None => return Ok(Round::Gone),
        }
        let target = match self.target(&row)? {
            Ok(target) => target,
            Err(reason) => return self.failed(&row, &reason, None).await,
        };
        for set in sets {
            let signed = self.core.ssf_sign(&set.set)?;
            match self.client.deliver(&target.0, target.1.as_deref(), &signed).await {
                PushOutcome::Accepted => {
                    self.core.metrics().ssf_push("accepted");
                    if !self.delivered(&row, &set).await? {
                        return Ok(Round::Gone);
                    }
                }
                PushOutcome::Rejected { err, description } if err == "invalid_request" => {
                    // The receiver judged this SET malformed; sending it
                    // again gets the same answer. Passed over, and said.
                    self.core.metrics().ssf_push("rejected");
                    tracing::warn!(stream_id = %row.id, jti = set.jti, err, description, "receiver rejected a SET");
                    if !self.delivered(&row, &set).await? {
                        return Ok(Round::Gone);
                    }
                    self.core
                        .ssf_note_rejection(row.id, &format!("{}: rejected ({err})", set.jti))
                        .await?;
                }
                PushOutcome::Rejected { err, description } => {
                    // The other RFC 8935 errors (a key, issuer, audience or
                    // credential the receiver does not accept) are about
                    // the stream's set-up, not this SET: skipping would lose
                    // every event until it is fixed, so it is retried, and
                    // the stream's status says why.
                    self.core.metrics().ssf_push("rejected");
                    let reason = format!("receiver refused: {err} {}", description.unwrap_or_default());
                    return self.failed(&row, reason.trim_end(), None).await;
                }
                PushOutcome::Retry { reason, after } => {
                    self.core.metrics().ssf_push("retry");
                    return self.failed(&row, &reason, after).await;
                }
                PushOutcome::Refused { reason } => {
                    self.core.metrics().ssf_push("refused");
                    return self.failed(&row, &reason, None).await;
                }
            }
        }
        Ok(if more { Round::Busy } else { Round::Idle })
    }

    async fn send_messages_only(&self, row: &StreamRow) -> Result<Round, AppError> {
        let messages = self.core.ssf_messages(row, Utc::now()).await?;
        if messages.is_empty() {
            return Ok(Round::Idle);
        }
        let target = match self.target(row)? {
            Ok(target) => target,
            Err(reason) => return self.failed(row, &reason, None).await,
        };
        for set in messages {
            let signed = self.core.ssf_sign(&set.set)?;
            match self.client.deliver(&target.0, target.1.as_deref(), &signed).await {
                PushOutcome::Accepted | PushOutcome::Rejected { .. } => {
                    self.delivered(row, &set).await?;
                }
                PushOutcome::Retry { reason, after } => return self.failed(row, &reason, after).await,
                PushOutcome::Refused { reason } => return self.failed(row, &reason, None).await,
            }
        }
        Ok(Round::Busy)
    }

    /// Where to push and with what credential; `Err` with the reason when
    /// today's guard refuses the stored URL (stored while
    /// `AUTHD_SSF_ALLOW_PRIVATE` was on, say): a failure like any other,
    /// kept in the stream's `last_error` and retried with back-off, so the
    /// stream does not sit silently idle.
    #[allow(clippy::type_complexity)]
    fn target(&self, row: &StreamRow) -> Result<Result<(PushEndpoint, Option<String>), String>, AppError> {
        let Some(url) = &row.endpoint_url else {
            return Ok(Err("the stream has no push URL".into()));
        };
        let allow_private = self.core.ssf_allows_private();
        let endpoint = match PushEndpoint::parse(url, allow_private) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                self.core.metrics().ssf_push("refused");
                let switch = if allow_private {
                    ""
                } else {
                    " (AUTHD_SSF_ALLOW_PRIVATE is off)"
                };
                return Ok(Err(format!("push URL refused: {e}{switch}")));
            }
        };
        Ok(Ok((endpoint, self.core.ssf_authorization(row)?)))
    }

    /// Moves the cursor past `set` (or drops the stream message it was);
    /// false when this replica lost the stream meanwhile.
    async fn delivered(
        &self,
        row: &StreamRow,
        set: &crate::service::ssf::RenderedSet,
    ) -> Result<bool, AppError> {
        self.core.metrics().ssf_delivered("push", 1);
        self.core.ssf_delivered(row, set, self.replica).await
    }

    async fn failed(
        &self,
        row: &StreamRow,
        reason: &str,
        after: Option<Duration>,
    ) -> Result<Round, AppError> {
        let failures = u32::try_from(row.failures.max(0)).unwrap_or(u32::MAX);
        let backoff = backoff(self.settings, failures, rand_fraction());
        let wait = after.map_or(backoff, |a| a.max(backoff).min(self.settings.retry_max));
        let retry_at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        self.core
            .ssf_push_failed(row.id, self.replica, retry_at, reason)
            .await?;
        tracing::info!(stream_id = %row.id, failures = failures + 1, retry_in = ?wait, reason, "push failed; will retry");
        Ok(Round::Until(wait))
    }
}

enum Round {
    /// More is pending: go on at once.
    Busy,
    /// Nothing pending: wait for the log.
    Idle,
    /// Wait this long (backoff).
    Until(Duration),
    /// The stream is gone, no longer pushed, or another replica's.
    Gone,
}

/// The wait after `failures` failures in a row: `retry_base` doubled each
/// time, at most `retry_max`, with full jitter over its upper half so that
/// streams failing together do not retry together.
fn backoff(settings: PushSettings, failures: u32, fraction: f64) -> Duration {
    let doubled = settings
        .retry_base
        .saturating_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX));
    let capped = doubled.min(settings.retry_max);
    capped.mul_f64(0.5 + 0.5 * fraction.clamp(0.0, 1.0))
}

fn rand_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::getrandom(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_within_the_upper_half() {
        let settings = PushSettings {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..PushSettings::default()
        };
        assert_eq!(backoff(settings, 0, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(settings, 3, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(settings, 3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(settings, 30, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(settings, u32::MAX, 0.0), Duration::from_secs(30));
    }
}
