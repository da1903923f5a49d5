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
    /// A link that verifies the account's address (Register,
    /// SendVerificationEmail).
    EmailVerification,
    /// A link, to the new address, that moves the account there (ChangeEmail).
    EmailChange,
    /// The notice to the old address that a move was asked for.
    EmailChangeNotice,
    /// The notice to the old address that the account has moved.
    EmailChanged,
    /// The notice that an account and its data were deleted.
    AccountDeleted,
    /// Second-factor notices (see [`FactorNotice`]).
    FactorAdded,
    FactorRemoved,
    RecoveryCodeUsed,
    RecoveryCodesRegenerated,
    FactorsReset,
    PasskeyCloned,
}

impl MailKind {
    const ALL: [Self; 13] = [
        Self::PasswordReset,
        Self::PasswordChanged,
        Self::EmailVerification,
        Self::EmailChange,
        Self::EmailChangeNotice,
        Self::EmailChanged,
        Self::AccountDeleted,
        Self::FactorAdded,
        Self::FactorRemoved,
        Self::RecoveryCodeUsed,
        Self::RecoveryCodesRegenerated,
        Self::FactorsReset,
        Self::PasskeyCloned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::EmailVerification => "email_verification",
            Self::EmailChange => "email_change",
            Self::EmailChangeNotice => "email_change_notice",
            Self::EmailChanged => "email_changed",
            Self::AccountDeleted => "account_deleted",
            Self::FactorAdded => "factor_added",
            Self::FactorRemoved => "factor_removed",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            Self::FactorsReset => "factors_reset",
            Self::PasskeyCloned => "passkey_cloned",
        }
    }

    /// Kinds whose outbox row goes entirely once the message is sent or
    /// discarded: the notice of a deletion is the last trace of the account
    /// (its address), kept only until it is delivered.
    pub const FORGOTTEN_WHEN_DONE: [Self; 1] = [Self::AccountDeleted];
}

impl TryFrom<String> for MailKind {
    type Error = String;

    fn try_from(stored: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == stored)
            .ok_or_else(|| format!("unknown mail kind {stored:?}"))
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
    link(template, token)
}

/// A configured link template (`AUTHD_RESET_URL`, `AUTHD_VERIFY_URL`) with
/// the token put in.
pub fn link(template: &str, token: &str) -> String {
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

/// The mail with a link that verifies the account's address. It expires
/// with its token.
pub fn email_verification(
    recipient: &str,
    link: &str,
    ttl: Duration,
    expires_at: DateTime<Utc>,
) -> OutgoingMail {
    let valid_for = human_duration(ttl);
    let text = format!(
        "Hello,\n\n\
         Please confirm that {recipient} is your address by opening this link \
         within {valid_for}:\n\n\
         {link}\n\n\
         The link works once. If you did not create an account, ignore this mail.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>Please confirm that {recipient} is your address by opening this link \
         within {valid_for}:</p>\n\
         <p><a href=\"{href}\">Confirm my address</a></p>\n\
         <p>Or copy this address into your browser:<br>\n{href}</p>\n\
         <p>The link works once. If you did not create an account, ignore this mail.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
        href = escape_html(link),
    );
    OutgoingMail {
        kind: MailKind::EmailVerification,
        recipient: recipient.to_owned(),
        subject: "Verify your email address".into(),
        text,
        html,
        expires_at,
    }
}

/// The mail to a new address with the link that moves the account there.
/// It does not name the account's current address: whoever reads this
/// mailbox learns nothing about the account unless they own it.
pub fn email_change(recipient: &str, link: &str, ttl: Duration, expires_at: DateTime<Utc>) -> OutgoingMail {
    let valid_for = human_duration(ttl);
    let text = format!(
        "Hello,\n\n\
         Someone asked to use {recipient} as the address of their account.\n\
         If that was you, open this link within {valid_for} to confirm it:\n\n\
         {link}\n\n\
         Until then the account keeps its old address. The link works once. \
         If you did not ask for this, ignore this mail.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>Someone asked to use {recipient} as the address of their account.<br>\n\
         If that was you, open this link within {valid_for} to confirm it:</p>\n\
         <p><a href=\"{href}\">Confirm my new address</a></p>\n\
         <p>Or copy this address into your browser:<br>\n{href}</p>\n\
         <p>Until then the account keeps its old address. The link works once. \
         If you did not ask for this, ignore this mail.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
        href = escape_html(link),
    );
    OutgoingMail {
        kind: MailKind::EmailChange,
        recipient: recipient.to_owned(),
        subject: "Confirm your new email address".into(),
        text,
        html,
        expires_at,
    }
}

/// The notice to an account's current address that a move to another one
/// was asked for. No link and not the new address: it tells the owner, and
/// nobody else, that something is happening.
pub fn email_change_notice(recipient: &str, at: DateTime<Utc>) -> OutgoingMail {
    let when = at.format("%Y-%m-%d %H:%M UTC");
    let text = format!(
        "Hello,\n\n\
         On {when} someone signed in to the account {recipient} asked to move it to \
         another email address. The address changes only once the link sent to the \
         new address is opened.\n\n\
         If you did not ask for this, change your password now: that cancels the \
         move, and signs out every other device. Then tell your administrator.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>On {when} someone signed in to the account {recipient} asked to move it to \
         another email address. The address changes only once the link sent to the \
         new address is opened.</p>\n\
         <p>If you did not ask for this, change your password now: that cancels the \
         move, and signs out every other device. Then tell your administrator.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
    );
    OutgoingMail {
        kind: MailKind::EmailChangeNotice,
        recipient: recipient.to_owned(),
        subject: "Your email address is about to change".into(),
        text,
        html,
        expires_at: at + NOTIFICATION_LIFETIME,
    }
}

/// The notice to the address an account had that it now has another one.
/// Like the request notice, it carries no link and not the new address:
/// the old mailbox may no longer be the owner's, and the new one is none of
/// its business.
pub fn email_changed_notice(recipient: &str, at: DateTime<Utc>) -> OutgoingMail {
    let when = at.format("%Y-%m-%d %H:%M UTC");
    let text = format!(
        "Hello,\n\n\
         On {when} the account that used {recipient} moved to another email address, \
         confirmed with a link mailed to that address. This address no longer signs \
         in to it and gets no more mail about it.\n\n\
         If you did not do this, your account may have been taken over: tell your \
         administrator now.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>On {when} the account that used {recipient} moved to another email address, \
         confirmed with a link mailed to that address. This address no longer signs \
         in to it and gets no more mail about it.</p>\n\
         <p>If you did not do this, your account may have been taken over: tell your \
         administrator now.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
    );
    OutgoingMail {
        kind: MailKind::EmailChanged,
        recipient: recipient.to_owned(),
        subject: "Your email address was changed".into(),
        text,
        html,
        expires_at: at + NOTIFICATION_LIFETIME,
    }
}

/// The notice that an account was deleted, to the address it had.
pub fn account_deleted(recipient: &str, at: DateTime<Utc>) -> OutgoingMail {
    let when = at.format("%Y-%m-%d %H:%M UTC");
    let text = format!(
        "Hello,\n\n\
         The account {recipient} was deleted on {when}, with everything stored about \
         it. Every device signed in to it has been signed out.\n\n\
         If you did not do this, someone knew your password: tell your administrator.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>The account {recipient} was deleted on {when}, with everything stored about \
         it. Every device signed in to it has been signed out.</p>\n\
         <p>If you did not do this, someone knew your password: tell your \
         administrator.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
    );
    OutgoingMail {
        kind: MailKind::AccountDeleted,
        recipient: recipient.to_owned(),
        subject: "Your account was deleted".into(),
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
    fn every_kind_reads_back_from_its_stored_name() {
        for kind in MailKind::ALL {
            assert_eq!(MailKind::try_from(kind.as_str().to_owned()), Ok(kind));
        }
        assert!(MailKind::try_from("nonsense".to_owned()).is_err());
    }

    #[test]
    fn link_mails_carry_the_link_and_notices_none() {
        let now = Utc::now();
        let link = "https://app.example/verify?token=ev_abc&x=1";
        let ttl = Duration::from_secs(86_400);
        for mail in [
            email_verification("a@example.com", link, ttl, now),
            email_change("new@example.com", link, ttl, now),
        ] {
            assert!(mail.text.contains(link), "{}", mail.text);
            assert!(mail.text.contains("24 hours"), "{}", mail.text);
            assert!(mail.html.contains("token=ev_abc&amp;x=1"), "{}", mail.html);
            assert_eq!(mail.expires_at, now);
            assert!(!format!("{mail:?}").contains("ev_abc"));
        }
        for mail in [
            email_change_notice("old@example.com", now),
            account_deleted("gone@example.com", now),
        ] {
            assert!(
                !mail.text.contains("http") && !mail.html.contains("href"),
                "{}",
                mail.text
            );
            assert!(mail.expires_at > now);
        }
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

/// A change to an account's second factors, told to its address so that
/// its owner notices one they did not make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorNotice {
    Added,
    /// A passkey was registered.
    PasskeyAdded,
    /// A passkey's signature counter went backwards: two authenticators
    /// hold its key, and the login was refused.
    PasskeyCloned,
    Removed,
    RecoveryCodeUsed,
    RecoveryCodesRegenerated,
    /// An administrator removed every factor.
    Reset,
}

impl FactorNotice {
    fn kind(self) -> MailKind {
        match self {
            Self::Added | Self::PasskeyAdded => MailKind::FactorAdded,
            Self::PasskeyCloned => MailKind::PasskeyCloned,
            Self::Removed => MailKind::FactorRemoved,
            Self::RecoveryCodeUsed => MailKind::RecoveryCodeUsed,
            Self::RecoveryCodesRegenerated => MailKind::RecoveryCodesRegenerated,
            Self::Reset => MailKind::FactorsReset,
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Self::Added => "Two-step verification: an authenticator app was added",
            Self::PasskeyAdded => "A passkey was added to your account",
            Self::PasskeyCloned => "A sign-in with a copy of your passkey was refused",
            Self::Removed => "Two-step verification: a factor was removed",
            Self::RecoveryCodeUsed => "A recovery code was used to sign in",
            Self::RecoveryCodesRegenerated => "New recovery codes were created",
            Self::Reset => "Your two-step verification was reset",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Added => "an authenticator app was added as a second factor to",
            Self::PasskeyAdded => "a passkey was added (it signs in alone, or as a second factor) to",
            Self::PasskeyCloned => {
                "a sign-in was refused because a passkey answered with an older signature counter than it had before (a sign that the passkey was copied to another device) for"
            }
            Self::Removed => "a second factor was removed from",
            Self::RecoveryCodeUsed => "one of the recovery codes was used to sign in to",
            Self::RecoveryCodesRegenerated => {
                "new recovery codes were created (the old ones no longer work) for"
            }
            Self::Reset => {
                "an administrator removed every second factor and recovery code, and signed out every session, of"
            }
        }
    }
}

/// The notice of a second-factor change.
pub fn factor_notice(notice: FactorNotice, recipient: &str, at: DateTime<Utc>) -> OutgoingMail {
    let when = at.format("%Y-%m-%d %H:%M UTC");
    let what = notice.what();
    let text = format!(
        "Hello,\n\n\
         On {when} {what} the account {recipient}.\n\n\
         If this was not you, change your password now and tell your administrator.\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>On {when} {what} the account {recipient}.</p>\n\
         <p>If this was not you, change your password now and tell your administrator.</p>\n\
         </body></html>\n",
        recipient = escape_html(recipient),
    );
    OutgoingMail {
        kind: notice.kind(),
        recipient: recipient.to_owned(),
        subject: notice.subject().into(),
        text,
        html,
        expires_at: at + NOTIFICATION_LIFETIME,
    }
}
