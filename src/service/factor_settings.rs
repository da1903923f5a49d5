//! What the second-factor use cases are configured with.

use std::time::Duration;

use std::sync::Arc;

use crate::crypto::data_keys::DataKeys;
use crate::crypto::passkeys::RelyingParty;
use crate::domain::MfaRequirement;

#[derive(Debug, Clone)]
pub struct FactorSettings {
    /// Seal TOTP secrets at rest (`AUTHD_DATA_KEYS`).
    pub data_keys: DataKeys,
    /// The issuer label of `otpauth://` URIs (`AUTHD_TOTP_ISSUER`).
    pub totp_issuer: String,
    /// How recent a proof must be for the calls that need a fresh one
    /// (`AUTHD_REAUTH_MAX_AGE`).
    pub reauth_max_age: Duration,
    /// Which accounts must have a second factor (`AUTHD_REQUIRE_MFA`).
    pub require_mfa: MfaRequirement,
    /// The WebAuthn relying party (`AUTHD_WEBAUTHN_RP_ID`,
    /// `AUTHD_WEBAUTHN_ORIGINS`).
    pub relying_party: RelyingParty,
    /// The key of the stand-in credential ids a named passkey login gets
    /// for an account without passkeys: shared by every replica (stored in
    /// the database on first use), so the stand-ins do not change between
    /// calls or replicas and tell nothing.
    pub decoy_key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
}
