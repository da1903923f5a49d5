//! The names of the back-off counters (`login_throttle.key`): one type, so
//! the counter a Login charges and the one ChangePassword, a second-factor
//! code or a deletion forgives are built by the same rule.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThrottleKey(String);

impl ThrottleKey {
    /// An account's password checks (Login by email, ChangePassword and the
    /// other checks of a bearer's password, second-factor codes).
    pub fn account(user_id: Uuid) -> Self {
        Self(format!("user:{user_id}"))
    }

    /// Login by username. Apart from the account's other counter: were they
    /// one, failures through an email address would throttle a username,
    /// and an attacker would learn that both name one account. The price is
    /// a second back-off ladder for the same password.
    pub fn account_by_username(user_id: Uuid) -> Self {
        Self(format!("user:{user_id}:username"))
    }

    /// A login string that names no account. Hashed: people type passwords
    /// into the login field, and a key stored in the clear would keep them;
    /// hashing also takes any byte (NUL included) into a form PostgreSQL's
    /// `text` accepts.
    pub fn unknown_login(login: &str) -> Self {
        let digest = Sha256::digest(login.to_lowercase().as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("login:{hex}"))
    }

    /// Wrong ResetPassword tokens from one client address.
    pub fn reset_guesses(client: impl fmt::Display) -> Self {
        Self(format!("reset:{client}"))
    }

    /// Wrong VerifyEmail tokens from one client address.
    pub fn verify_guesses(client: impl fmt::Display) -> Self {
        Self(format!("verify:{client}"))
    }

    /// Failed passkey ceremonies from one client address.
    pub fn passkey_failures(client: impl fmt::Display) -> Self {
        Self(format!("passkey:{client}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ThrottleKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_has_its_own_name() {
        let id = Uuid::nil();
        assert_eq!(ThrottleKey::account(id).as_str(), format!("user:{id}"));
        assert_eq!(
            ThrottleKey::account_by_username(id).as_str(),
            format!("user:{id}:username")
        );
        // The login string is hashed, letter case folded first.
        let typed = ThrottleKey::unknown_login("Hunter2@Example.com");
        assert!(typed.starts_with("login:") && !typed.contains("unter2"));
        assert_eq!(typed, ThrottleKey::unknown_login("hunter2@example.com"));
        assert_eq!(
            ThrottleKey::reset_guesses("203.0.113.9").as_str(),
            "reset:203.0.113.9"
        );
        assert_eq!(
            ThrottleKey::verify_guesses("203.0.113.9").as_str(),
            "verify:203.0.113.9"
        );
    }
}
