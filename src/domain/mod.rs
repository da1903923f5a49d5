//! Request values parsed once into types that are trusted afterwards.

mod assurance;
mod client;
mod email;
mod factor;
pub mod mail;
mod mfa_requirement;
mod password;
mod profile;
pub mod push_endpoint;
mod service_account;
mod session;
pub mod signal;
pub mod stream_config;
mod throttle_key;
pub mod token_request;
mod user;
mod username;

pub use assurance::{Acr, Assurance, AuthMethod};
pub use client::{ClientInfo, UserAgent};
pub use email::Email;
pub use factor::{Factor, FactorKind, FactorName, PasskeyBackup};
pub use mfa_requirement::MfaRequirement;
pub use password::{Password, PasswordPolicy};
pub use profile::{FullName, ImageUrl, Phone};
pub use service_account::{Role, Scope, ServiceAccountName};
pub use session::EndReason;
pub use signal::{ChangeType, CredentialType, SetEnvelope, Signal, StreamStatus, security_event};
pub use throttle_key::ThrottleKey;
pub use token_request::{Grant, TokenRequestError, TokenRequestFields};
pub use user::User;
pub use username::Username;

/// Refuses control characters anywhere, which also covers NUL, CR and LF.
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Why a field's value was refused, for machines: front ends branch on it to
/// show their own, translated message. The names are the `reason` strings of
/// `google.rpc.BadRequest.FieldViolation` and are listed in the proto's
/// `FieldViolationReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldReason {
    Required,
    TooShort,
    TooLong,
    InvalidFormat,
    InvalidCharacters,
    TooCommon,
    ContainsIdentifier,
    /// A name the field does not accept (an unknown `update_mask` path).
    UnknownField,
}

impl FieldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "REQUIRED",
            Self::TooShort => "TOO_SHORT",
            Self::TooLong => "TOO_LONG",
            Self::InvalidFormat => "INVALID_FORMAT",
            Self::InvalidCharacters => "INVALID_CHARACTERS",
            Self::TooCommon => "TOO_COMMON",
            Self::ContainsIdentifier => "CONTAINS_IDENTIFIER",
            Self::UnknownField => "UNKNOWN_FIELD",
        }
    }
}

/// A refused value: the machine reason and an English description a person
/// can act on ("must be at most 254 bytes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: FieldReason,
    pub description: String,
}

impl Invalid {
    pub fn new(reason: FieldReason, description: impl Into<String>) -> Self {
        Self {
            reason,
            description: description.into(),
        }
    }

    pub fn required() -> Self {
        Self::new(FieldReason::Required, "is required")
    }

    pub fn too_long(description: impl Into<String>) -> Self {
        Self::new(FieldReason::TooLong, description)
    }

    pub fn format(description: impl Into<String>) -> Self {
        Self::new(FieldReason::InvalidFormat, description)
    }

    pub fn characters(description: impl Into<String>) -> Self {
        Self::new(FieldReason::InvalidCharacters, description)
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}
