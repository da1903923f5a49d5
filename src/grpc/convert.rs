use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::domain::User;
use crate::pb::auth::v1 as pb;
use crate::service::TokenPair;

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
