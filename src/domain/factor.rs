//! Second factors as their owner sees them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Invalid, has_control};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorKind {
    /// An authenticator app (RFC 6238).
    Totp,
    /// A WebAuthn credential.
    Passkey,
}

impl FactorKind {
    /// The stored form (`factors.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Passkey => "passkey",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "totp" => Some(Self::Totp),
            "passkey" => Some(Self::Passkey),
            _ => None,
        }
    }
}

/// A live factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Factor {
    pub id: Uuid,
    pub kind: FactorKind,
    pub name: FactorName,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Passkeys: whether it may be synced, and whether it was when it last
    /// signed.
    pub backup: Option<PasskeyBackup>,
}

/// A passkey's backup flags (WebAuthn BE and BS), as its authenticator
/// last reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasskeyBackup {
    pub eligible: bool,
    pub backed_up: bool,
}

/// A label that tells an account's factors apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactorName(String);

impl FactorName {
    pub const MAX_CHARS: usize = 64;
    pub const DEFAULT_TOTP: &'static str = "Authenticator app";
    pub const DEFAULT_PASSKEY: &'static str = "Passkey";

    /// Trimmed; empty means the kind's default.
    pub fn parse(input: &str, kind: FactorKind) -> Result<Self, Invalid> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Ok(Self(
                match kind {
                    FactorKind::Totp => Self::DEFAULT_TOTP,
                    FactorKind::Passkey => Self::DEFAULT_PASSKEY,
                }
                .to_owned(),
            ));
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(Invalid::too_long(format!(
                "must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if has_control(trimmed) {
            return Err(Invalid::new(
                super::FieldReason::InvalidCharacters,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// A stored name, already checked when it was written.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_trim_and_refuse_long_or_control_input() {
        assert_eq!(
            FactorName::parse("  ", FactorKind::Totp).unwrap().as_str(),
            "Authenticator app"
        );
        assert_eq!(
            FactorName::parse(" Phone ", FactorKind::Totp).unwrap().as_str(),
            "Phone"
        );
        assert!(FactorName::parse(&"é".repeat(64), FactorKind::Totp).is_ok());
        assert!(FactorName::parse(&"é".repeat(65), FactorKind::Totp).is_err());
        assert!(FactorName::parse("a\nb", FactorKind::Totp).is_err());
    }
}
