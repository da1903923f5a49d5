//! The `email_outbox` table: mail written in the same transaction as the
//! change it reports, delivered later by the worker.
//!
//! A message is pending while neither `sent_at` nor `discarded_at` is set;
//! only pending messages keep their bodies (a check constraint enforces it),
//! so a reset link lives in the database only until its mail is out.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::mail::{MailKind, OutgoingMail};
use crate::error::AppError;

/// Longest `last_error` kept; server replies can be long.
const MAX_ERROR_CHARS: usize = 500;

/// Queues a message about the account `user_id`, due at once; deleting the
/// account deletes the message. Returns its id.
#[tracing::instrument(skip_all)]
pub async fn enqueue(
    tx: &mut PgConnection,
    mail: &OutgoingMail,
    user_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Uuid, AppError> {
    let id = Uuid::new_v4();
    sqlx::query!(
        "INSERT INTO email_outbox
             (id, kind, recipient, subject, body_text, body_html, created_at, expires_at, next_attempt_at,
              user_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, $9)",
        id,
        mail.kind.as_str(),
        &mail.recipient,
        &mail.subject,
        &mail.text,
        &mail.html,
        now,
        mail.expires_at,
        user_id,
    )
    .execute(tx)
    .await?;
    Ok(id)
}

/// A pending message claimed for one delivery attempt.
pub struct ClaimedMail {
    pub id: Uuid,
    pub kind: MailKind,
    pub recipient: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Attempts including this one.
    pub attempts: i32,
}

/// Claims the most overdue pending message: counts the attempt and moves
/// its next attempt to `lease_until`, so a replica that dies mid-delivery
/// leaves it to be retried then. `SKIP LOCKED` lets replicas claim
/// different messages at the same time without waiting on each other.
// Background work: a span only when debugging, not a trace every tick.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn claim_due<'e>(
    db: impl PgExecutor<'e>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<ClaimedMail>, AppError> {
    // A pending message keeps its bodies (a check constraint holds it).
    let Some(row) = sqlx::query!(
        r#"UPDATE email_outbox o
            SET attempts = o.attempts + 1, next_attempt_at = $2
           FROM (SELECT id FROM email_outbox
                  WHERE sent_at IS NULL AND discarded_at IS NULL AND next_attempt_at <= $1
                  ORDER BY next_attempt_at
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED) due
          WHERE o.id = due.id
         RETURNING o.id, o.kind, o.recipient, o.subject, o.body_text AS "body_text!",
                   o.body_html AS "body_html!", o.created_at, o.expires_at, o.attempts"#,
        now,
        lease_until,
    )
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(ClaimedMail {
        id: row.id,
        kind: MailKind::try_from(row.kind).map_err(|e| AppError::internal(anyhow::anyhow!(e)))?,
        recipient: row.recipient,
        subject: row.subject,
        body_text: row.body_text,
        body_html: row.body_html,
        created_at: row.created_at,
        expires_at: row.expires_at,
        attempts: row.attempts,
    }))
}

/// Keeps a claimed message from the other replicas until `until`, while
/// this one is still delivering it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn extend_lease<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    until: DateTime<Utc>,
) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE email_outbox SET next_attempt_at = $2
          WHERE id = $1 AND sent_at IS NULL AND discarded_at IS NULL",
        id,
        until,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The first step of a statement that records the outcome of message `$1`:
/// deletes it if it is pending and of a kind that leaves no trace once done
/// (bound at `kinds`, [`MailKind::FORGOTTEN_WHEN_DONE`]). The rest of the
/// statement touches every other kind only, so the two never write one row.
fn forget_if_done(kinds: &str) -> String {
    format!(
        "WITH forgotten AS (
             DELETE FROM email_outbox
              WHERE id = $1 AND kind = ANY({kinds}) AND sent_at IS NULL AND discarded_at IS NULL)"
    )
}

fn forgotten_kinds() -> Vec<&'static str> {
    MailKind::FORGOTTEN_WHEN_DONE.map(MailKind::as_str).to_vec()
}

/// Records that the SMTP server accepted a message, and forgets its body
/// (or the whole message, for a deletion notice).
#[tracing::instrument(skip_all)]
pub async fn mark_sent<'e>(db: impl PgExecutor<'e>, id: Uuid, now: DateTime<Utc>) -> Result<(), AppError> {
    sqlx::query(&format!(
        "{forget}
         UPDATE email_outbox
            SET sent_at = $2, body_text = NULL, body_html = NULL, last_error = NULL
          WHERE id = $1 AND kind <> ALL($3) AND sent_at IS NULL AND discarded_at IS NULL",
        forget = forget_if_done("$3")
    ))
    .bind(id)
    .bind(now)
    .bind(forgotten_kinds())
    .execute(db)
    .await?;
    Ok(())
}

/// Gives up on a message for good (expired, undeliverable, or there is no
/// SMTP server to send it to), and forgets its body (or the whole message,
/// for a deletion notice).
#[tracing::instrument(skip_all)]
pub async fn discard<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    now: DateTime<Utc>,
    reason: &str,
) -> Result<(), AppError> {
    sqlx::query(&format!(
        "{forget}
         UPDATE email_outbox
            SET discarded_at = $2, body_text = NULL, body_html = NULL, last_error = $3
          WHERE id = $1 AND kind <> ALL($4) AND sent_at IS NULL AND discarded_at IS NULL",
        forget = forget_if_done("$4")
    ))
    .bind(id)
    .bind(now)
    .bind(truncate(reason))
    .bind(forgotten_kinds())
    .execute(db)
    .await?;
    Ok(())
}

/// Records a failed attempt and when to try again.
#[tracing::instrument(skip_all)]
pub async fn retry_at<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    next_attempt_at: DateTime<Utc>,
    error: &str,
) -> Result<(), AppError> {
    sqlx::query!(
        "UPDATE email_outbox SET next_attempt_at = $2, last_error = $3
          WHERE id = $1 AND sent_at IS NULL AND discarded_at IS NULL",
        id,
        next_attempt_at,
        truncate(error),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The backlog: how many messages are pending and when the oldest was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSummary {
    pub count: i64,
    pub oldest_created_at: Option<DateTime<Utc>>,
}

/// The backlog, for the metrics page. Pending rows are the few the partial
/// due index covers, so this stays cheap however much mail was ever sent.
#[tracing::instrument(skip_all)]
pub async fn pending_summary<'e>(db: impl PgExecutor<'e>) -> Result<PendingSummary, AppError> {
    Ok(sqlx::query_as!(
        PendingSummary,
        r#"SELECT count(*) AS "count!", min(created_at) AS oldest_created_at
             FROM email_outbox
            WHERE sent_at IS NULL AND discarded_at IS NULL"#,
    )
    .fetch_one(db)
    .await?)
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_ERROR_CHARS).collect()
}
