use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::domain::{Assurance, Factor, FactorKind, User};
use crate::pb::auth::v1 as pb;
use crate::service::{FactorKindOrCode, MfaChallenge, Proof, TokenPair};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl From<User> for pb::User {
    fn from(u: User) -> Self {
        Self::from(&u)
    }
}

impl From<&User> for pb::User {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email.clone(),
            username: u.username.clone().unwrap_or_default(),
            full_name: u.full_name.clone(),
            phone: u.phone.clone(),
            image_url: u.image_url.clone(),
            email_verified: u.email_verified,
            roles: u.roles.clone(),
            disabled: u.disabled,
            created_at: Some(timestamp(u.created_at)),
            updated_at: Some(timestamp(u.updated_at)),
        }
    }
}

impl From<TokenPair> for pb::TokenPair {
    fn from(p: TokenPair) -> Self {
        Self {
            access_token: p.access_token,
            refresh_token: p.refresh_token.expose_secret().to_owned(),
            token_type: "Bearer".into(),
            expires_in: i64::try_from(p.expires_in.as_secs()).unwrap_or(i64::MAX),
            refresh_expires_in: i64::try_from(p.refresh_expires_in.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

impl From<&Assurance> for pb::Assurance {
    fn from(a: &Assurance) -> Self {
        Self {
            amr: a.amr_strings(),
            acr: a.acr.as_str().to_owned(),
            auth_time: Some(timestamp(a.auth_time)),
        }
    }
}

impl From<FactorKind> for pb::FactorKind {
    fn from(kind: FactorKind) -> Self {
        match kind {
            FactorKind::Totp => Self::Totp,
        }
    }
}

impl From<Factor> for pb::Factor {
    fn from(f: Factor) -> Self {
        Self {
            id: f.id.to_string(),
            kind: pb::FactorKind::from(f.kind).into(),
            name: f.name.as_str().to_owned(),
            created_at: Some(timestamp(f.created_at)),
            last_used_at: f.last_used_at.map(timestamp),
        }
    }
}

impl From<MfaChallenge> for pb::MfaChallenge {
    fn from(c: MfaChallenge) -> Self {
        Self {
            mfa_token: c.mfa_token.expose_secret().to_owned(),
            factors: c
                .factors
                .iter()
                .map(|k| match k {
                    FactorKindOrCode::Totp => pb::FactorKind::Totp.into(),
                    FactorKindOrCode::RecoveryCode => pb::FactorKind::RecoveryCode.into(),
                })
                .collect(),
            expires_at: Some(timestamp(c.expires_at)),
        }
    }
}

/// A second factor from the oneof of CompleteLogin and StepUp.
pub fn complete_login_proof(p: Option<pb::complete_login_request::Proof>) -> Option<Proof> {
    p.map(|p| match p {
        pb::complete_login_request::Proof::TotpCode(c) => Proof::Totp(c),
        pb::complete_login_request::Proof::RecoveryCode(c) => Proof::RecoveryCode(c),
    })
}

pub fn step_up_proof(p: Option<pb::step_up_request::Proof>) -> Option<Proof> {
    p.map(|p| match p {
        pb::step_up_request::Proof::TotpCode(c) => Proof::Totp(c),
        pb::step_up_request::Proof::RecoveryCode(c) => Proof::RecoveryCode(c),
    })
}
