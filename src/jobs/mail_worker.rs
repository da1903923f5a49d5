//! Delivers the outbox: claims one due message at a time (replicas share the
//! work through `FOR UPDATE SKIP LOCKED`), hands it to the transport, and
//! marks it sent only once the SMTP server accepted it. Failures are retried
//! with exponential backoff until the message expires; while the server
//! cannot take mail at all, one message a pass, and the passes back off.
//!
//! Logs name a message by its outbox id, kind and recipient domain only:
//! bodies hold reset links.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::db;
use crate::domain::mail::{MailKind, recipient_domain};
use crate::error::AppError;
use crate::mail::transport::{Handoff, Transport};
use crate::metrics::Metrics;

/// Longest one delivery may take (connect, TLS, every command) before it
/// counts as failed.
const SEND_DEADLINE: Duration = Duration::from_secs(90);
/// Upper bound of the wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// How often a delivered message's outcome is retried when the database
/// hiccups, before leaving it to the lease (and a duplicate mail).
const OUTCOME_WRITES: u32 = 5;

pub struct OutboxWorker {
    db: PgPool,
    transport: Transport,
    from: Mailbox,
    queued: Arc<Notify>,
    poll_interval: Duration,
    retry_base: Duration,
    /// How long a claimed message is left alone (`AUTHD_MAIL_LEASE`). The
    /// sending replica renews it every third of that while a delivery
    /// lasts, so two replicas do not send one message at once; a replica
    /// that dies mid-delivery leaves it to the others within it.
    lease: Duration,
    metrics: Option<Metrics>,
}

impl OutboxWorker {
    pub fn new(
        db: PgPool,
        transport: Transport,
        from: Mailbox,
        queued: Arc<Notify>,
        poll_interval: Duration,
        retry_base: Duration,
    ) -> Self {
        Self {
            db,
            transport,
            from,
            queued,
            poll_interval,
            retry_base,
            lease: Duration::from_secs(30),
            metrics: None,
        }
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Counts failed deliveries in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `stop` turns true (finishing the message it is sending)
    /// or it is aborted: drains what is due, then sleeps until the poll
    /// interval passes or a message is queued in this process.
    #[allow(clippy::disallowed_methods)] // a job's loop top: each delivery is judged at its own now
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if matches!(self.transport, Transport::Unconfigured) {
            tracing::warn!(
                "DEVELOPMENT SETUP: AUTHD_SMTP_URL is not set, so no mail is sent; \
                 each message is logged as not sent and dropped"
            );
        }
        // Reported once per outage, not once per poll.
        let mut unreachable = false;
        // Passes in a row that ended on an SMTP server that could not take
        // mail. While it cannot, each pass tries one message and the next
        // waits longer: the backlog is not read and retried whole every
        // poll, and what is queued meanwhile does not wake the worker.
        let mut smtp_down: i32 = 0;
        loop {
            loop {
                if *stop.borrow() {
                    return;
                }
                match self.deliver_next(Utc::now()).await {
                    Ok(delivered) => {
                        if unreachable {
                            tracing::info!("mail outbox: database reachable again");
                            unreachable = false;
                        }
                        match delivered {
                            Delivered::Nothing => break,
                            Delivered::One => smtp_down = 0,
                            Delivered::SmtpDown => {
                                smtp_down = smtp_down.saturating_add(1);
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        if !unreachable {
                            tracing::warn!(error = %format!("{e:#}"), "mail outbox: cannot read due mail");
                            unreachable = true;
                        }
                        break;
                    }
                }
            }
            if smtp_down > 0 {
                let wait = retry_delay(self.retry_base, smtp_down).max(self.poll_interval);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                continue;
            }
            tokio::select! {
                () = self.queued.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Delivers the most overdue message, if any.
    async fn deliver_next(&self, now: DateTime<Utc>) -> Result<Delivered, AppError> {
        let lease_until = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let Some(mail) = db::outbox::claim_due(&self.db, now, lease_until).await? else {
            return Ok(Delivered::Nothing);
        };
        let id = mail.id;
        let domain = recipient_domain(&mail.recipient).to_owned();
        let mail_kind = mail.kind;
        let kind = mail_kind.as_str();
        let subject = mail.subject.clone();
        let attempt = mail.attempts;

        if mail.expires_at <= now {
            tracing::warn!(outbox_id = %id, kind, recipient_domain = domain, attempt,
                "mail expired before it could be delivered; dropped");
            self.record(id, Outcome::Discard("expired before delivery".into()))
                .await;
            return Ok(Delivered::One);
        }
        let message = match compose(mail, &self.from) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(outbox_id = %id, kind, recipient_domain = domain, error = %e,
                    "mail cannot be built (bad recipient address?); dropped");
                self.record(id, Outcome::Discard(format!("cannot build message: {e}")))
                    .await;
                return Ok(Delivered::One);
            }
        };
        let sent = self.send_holding_lease(id, message).await;
        // A permanent refusal is this message's (its recipient, say); any
        // other failure (no connection, a timeout, 4xx) is the server's.
        let delivered = match &sent {
            Ok(Err(e)) if e.is_permanent() => Delivered::One,
            Ok(Err(_)) | Err(_) => Delivered::SmtpDown,
            Ok(Ok(_)) => Delivered::One,
        };
        let outcome = match sent {
            Ok(Ok(Handoff::Accepted)) => {
                tracing::info!(outbox_id = %id, kind, recipient_domain = domain, attempt, "mail sent");
                Outcome::Sent
            }
            Ok(Ok(Handoff::NotConfigured)) => {
                tracing::warn!(outbox_id = %id, kind, subject, recipient_domain = domain,
                    "mail NOT sent: no SMTP server configured (AUTHD_SMTP_URL); dropped");
                Outcome::Discard("not sent: AUTHD_SMTP_URL is not set".into())
            }
            Ok(Err(e)) => self.failed(id, mail_kind, &domain, attempt, &e.to_string()),
            Err(_) => self.failed(id, mail_kind, &domain, attempt, "SMTP delivery timed out"),
        };
        self.record(id, outcome).await;
        Ok(delivered)
    }

    /// Sends, renewing the message's lease while the delivery lasts.
    #[allow(clippy::disallowed_methods)] // a job's edge: a renewed lease runs from the renewal
    async fn send_holding_lease(
        &self,
        id: Uuid,
        message: Message,
    ) -> Result<Result<Handoff, lettre::transport::smtp::Error>, tokio::time::error::Elapsed> {
        let send = tokio::time::timeout(SEND_DEADLINE, self.transport.send(message));
        tokio::pin!(send);
        let every = self.lease / 3;
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                sent = &mut send => return sent,
                _ = renew.tick() => {
                    let until = Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
                    if let Err(e) = db::outbox::extend_lease(&self.db, id, until).await {
                        tracing::debug!(outbox_id = %id, error = %e, "could not renew a mail's lease");
                    }
                }
            }
        }
    }

    fn failed(&self, id: Uuid, kind: MailKind, domain: &str, attempt: i32, error: &str) -> Outcome {
        let delay = retry_delay(self.retry_base, attempt);
        if let Some(metrics) = &self.metrics {
            metrics.mail_delivery_failed();
        }
        let kind = kind.as_str();
        tracing::warn!(outbox_id = %id, kind, recipient_domain = domain, attempt, error,
            retry_in = ?delay, "mail delivery failed; will retry");
        Outcome::Retry(delay, error.to_owned())
    }

    /// Writes an outcome, retrying briefly: a sent message whose outcome is
    /// lost would be sent again when its lease runs out.
    #[allow(clippy::disallowed_methods)] // a job's edge: each write records when it happened
    async fn record(&self, id: Uuid, outcome: Outcome) {
        for attempt in 1..=OUTCOME_WRITES {
            let now = Utc::now();
            let written = match &outcome {
                Outcome::Sent => db::outbox::mark_sent(&self.db, id, now).await,
                Outcome::Discard(reason) => db::outbox::discard(&self.db, id, now, reason).await,
                Outcome::Retry(delay, error) => {
                    let next = now + chrono::Duration::from_std(*delay).unwrap_or(chrono::Duration::MAX);
                    db::outbox::retry_at(&self.db, id, next, error).await
                }
            };
            match written {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(outbox_id = %id, attempt, error = %format!("{e:#}"),
                        "mail outbox: could not record a delivery outcome");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// What one turn of the delivery loop did.
enum Delivered {
    /// Nothing was due.
    Nothing,
    /// One message handled: sent, dropped, or refused for itself.
    One,
    /// The SMTP server could not take a message: end the pass.
    SmtpDown,
}

enum Outcome {
    Sent,
    Discard(String),
    Retry(Duration, String),
}

/// `base`, doubling with each failed attempt, capped.
fn retry_delay(base: Duration, attempt: i32) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(20);
    base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

/// The RFC 5322 message of an outbox row. Its Message-ID derives from the
/// outbox id, so a retried message is recognisably the same one.
fn compose(mail: db::outbox::ClaimedMail, from: &Mailbox) -> Result<Message, String> {
    let to: Mailbox = mail.recipient.parse().map_err(|e| format!("recipient: {e}"))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject)
        .date(mail.created_at.into())
        .message_id(Some(format!("<{}@{}>", mail.id, from.email.domain())))
        .multipart(MultiPart::alternative_plain_html(mail.body_text, mail.body_html))
        .map_err(|e| e.to_string())
}

/// The outbox as the metrics page reads it: a query of the few pending
/// rows, which the partial due index keeps cheap.
pub struct OutboxBacklog(pub PgPool);

impl crate::metrics::Backlog for OutboxBacklog {
    fn pending(&self) -> crate::metrics::PendingFuture<'_> {
        Box::pin(async move {
            crate::db::outbox::pending_summary(&self.0)
                .await
                .map(|s| (s.count, s.oldest_created_at))
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let base = Duration::from_secs(2);
        assert_eq!(retry_delay(base, 1), Duration::from_secs(2));
        assert_eq!(retry_delay(base, 2), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 5), Duration::from_secs(32));
        assert_eq!(retry_delay(base, 9), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(base, i32::MAX), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(base, 0), base);
    }
}
