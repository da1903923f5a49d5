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
            FactorKind::Passkey => Self::Passkey,
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
            backup_eligible: f.backup.is_some_and(|b| b.eligible),
            backed_up: f.backup.is_some_and(|b| b.backed_up),
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
                    FactorKindOrCode::Passkey => pb::FactorKind::Passkey.into(),
                })
                .collect(),
            passkey_options: c.passkey_options.map(json_to_struct),
            expires_at: Some(timestamp(c.expires_at)),
        }
    }
}

/// A second factor from the oneof of CompleteLogin and StepUp.
pub fn complete_login_proof(p: Option<pb::complete_login_request::Proof>) -> Option<Proof> {
    p.map(|p| match p {
        pb::complete_login_request::Proof::TotpCode(c) => Proof::Totp(c),
        pb::complete_login_request::Proof::RecoveryCode(c) => Proof::RecoveryCode(c),
        pb::complete_login_request::Proof::PasskeyAssertion(s) => Proof::Passkey(struct_to_json(s)),
    })
}

pub fn step_up_proof(p: Option<pb::step_up_request::Proof>) -> Option<Proof> {
    p.map(|p| match p {
        pb::step_up_request::Proof::TotpCode(c) => Proof::Totp(c),
        pb::step_up_request::Proof::RecoveryCode(c) => Proof::RecoveryCode(c),
        pb::step_up_request::Proof::PasskeyAssertion(s) => Proof::Passkey(struct_to_json(s)),
    })
}

/// A `google.protobuf.Struct` as the JSON object it stands for. Struct
/// numbers are doubles: whole ones become JSON integers again (WebAuthn's
/// `alg`, `timeout`), so that strict parsers of the JSON accept them.
pub fn struct_to_json(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.into_iter().map(|(k, v)| (k, value_to_json(v))).collect())
}

fn value_to_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            // Exactly representable integers (|n| < 2^53) go back to
            // integers; anything else stays a double (NaN and infinities,
            // which JSON cannot hold, become null).
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                #[allow(clippy::cast_possible_truncation)]
                Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

/// A JSON object as a `google.protobuf.Struct` (anything else: empty).
pub fn json_to_struct(v: serde_json::Value) -> prost_types::Struct {
    match v {
        serde_json::Value::Object(map) => prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        },
        _ => prost_types::Struct::default(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(json_to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}
