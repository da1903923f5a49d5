//! The mails authd writes into the outbox: subject, plain-text and HTML
//! bodies, and how long each is worth delivering. Composing is pure, so it
//! lives here, where both the outbox table (`db::outbox`) and the delivery
//! worker (`mail::worker`) use it without depending on each other.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// An undelivered notification is still worth sending for this long; after
/// that the worker gives up on it (as mail servers do after a few days).
const NOTIFICATION_LIFETIME: chrono::Duration = chrono::Duration::days(3);

/// What a message is about; stored in `email_outbox.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    PasswordReset,
    PasswordChanged,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
        }
    }
}

impl TryFrom<String> for MailKind {
    type Error = String;

    fn try_from(stored: String) -> Result<Self, Self::Error> {
        match stored.as_str() {
            "password_reset" => Ok(Self::PasswordReset),
            "password_changed" => Ok(Self::PasswordChanged),
            _ => Err(format!("unknown mail kind {stored:?}")),
        }
    }
}

/// A composed message on its way into the outbox. Its bodies can hold a
/// reset link, so `Debug` shows neither them nor the full address.
pub struct OutgoingMail {
    pub kind: MailKind,
    pub recipient: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("kind", &self.kind)
            .field("recipient_domain", &recipient_domain(&self.recipient))
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The part of an address that may appear in logs.
pub fn recipient_domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, domain)| domain)
}

/// The configured link template with the token put in. The token is
/// URL-safe as generated, so it needs no escaping.
pub fn reset_link(template: &str, token: &str) -> String {
    template.replace("{token}", token)
}

/// The mail with a reset link. It expires with its token: a dead link is
/// not worth delivering.
pub fn password_reset(recipient: &str, link: &str, ttl: Duration, expires_at: DateTime<Utc>) -> OutgoingMail {
    let valid_for = human_duration(ttl);
    let text = format!(
        "Hello,\n\n\
         Someone asked to reset the password of the account {recipient}.\n\
         If that was you, open this link within {valid_for} to choose a new password:\n\n\
         {link}\n\n\
         The link works once. If you did not ask for this, ignore this mail: \
         your password stays as it is.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>Someone asked to reset the password of the account {recipient}.<br>\n\
         If that was you, open this link within {valid_for} to choose a new password:</p>\n\
         <p><a href=\"{href}\">Choose a new password</a></p>\n\
         <p>Or copy this address into your browser:<br>\n{href}</p>\n\
         <p>The link works once. If you did not ask for this, ignore this mail: \
         your password stays as it is.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
        href = escape_html(link),
    );
    OutgoingMail {
        kind: MailKind::PasswordReset,
        recipient: recipient.to_owned(),
        subject: "Reset your password".into(),
        text,
        html,
        expires_at,
    }
}

/// The notice that an account's password changed (by ChangePassword or a
/// reset), so its owner notices a change they did not make.
pub fn password_changed(recipient: &str, at: DateTime<Utc>) -> OutgoingMail {
    let when = at.format("%Y-%m-%d %H:%M UTC");
    let text = format!(
        "Hello,\n\n\
         The password of the account {recipient} was changed on {when}.\n\
         Sessions signed in with the old password have been signed out.\n\n\
         If you did not change it, reset your password now with \"Forgot password\" \
         and tell your administrator.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>The password of the account {recipient} was changed on {when}.<br>\n\
         Sessions signed in with the old password have been signed out.</p>\n\
         <p>If you did not change it, reset your password now with \
         &quot;Forgot password&quot; and tell your administrator.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
    );
    OutgoingMail {
        kind: MailKind::PasswordChanged,
        recipient: recipient.to_owned(),
        subject: "Your password was changed".into(),
        text,
        html,
        expires_at: at + NOTIFICATION_LIFETIME,
    }
}

/// "30 minutes", "2 hours", "90 seconds": the largest unit that divides.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Escapes text for HTML content and attribute values (the link template
/// is the operator's and may contain `&`).
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_the_template_with_the_token() {
        assert_eq!(
            reset_link("https://app.example/reset?token={token}&x=1", "pr_abc"),
            "https://app.example/reset?token=pr_abc&x=1"
        );
    }

    #[test]
    fn reset_mail_carries_the_link_in_both_bodies_escaped_in_html() {
        let now = Utc::now();
        let link = "https://app.example/r?a=1&token=pr_abc";
        let mail = password_reset("o'neil@example.com", link, Duration::from_secs(1800), now);
        assert!(mail.text.contains(link));
        assert!(mail.text.contains("30 minutes"));
        assert!(
            mail.html
                .contains("href=\"https://app.example/r?a=1&amp;token=pr_abc\"")
        );
        assert!(mail.html.contains("o&#39;neil@example.com"));
        assert_eq!(mail.expires_at, now);
        let debug = format!("{mail:?}");
        assert!(!debug.contains("pr_abc") && !debug.contains("o'neil"), "{debug}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(1800)), "30 minutes");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(human_duration(Duration::from_secs(90)), "90 seconds");
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
    }

    #[test]
    fn only_the_domain_of_a_recipient_is_loggable() {
        assert_eq!(recipient_domain("alice@example.com"), "example.com");
        assert_eq!(recipient_domain("nonsense"), "");
    }
}
