//! What the second-factor use cases are configured with.

use std::time::Duration;

use crate::crypto::data_keys::DataKeys;
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
}
