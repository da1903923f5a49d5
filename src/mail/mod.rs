//! Mail: messages are composed into the `email_outbox` table inside the
//! transaction of the change they report, and a background worker delivers
//! them over SMTP with retries, so an SMTP outage delays mail but never
//! fails a call or loses a message.

pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// What the use cases need to write mail.
#[derive(Clone)]
pub struct MailSettings {
    /// Link template of reset mails, with `{token}` where the token goes.
    pub reset_url: String,
    pub reset_ttl: Duration,
    /// Link template of verification and email-change mails, with `{token}`.
    pub verify_url: String,
    pub verify_ttl: Duration,
    /// How long an email-change link works.
    pub change_ttl: Duration,
    /// Wakes this process's worker after a commit that queued mail, so
    /// delivery does not wait for the next poll.
    pub queued: Arc<Notify>,
    /// Wakes this process's resolver of ForgotPassword requests.
    pub reset_requested: Arc<Notify>,
}
