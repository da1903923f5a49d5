use chrono::{DateTime, Utc};
use uuid::Uuid;

/// An account as the use cases see it: what authd knows about a person,
/// never their password or its hash (those stay in `db`, and only the
/// password checks read them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub full_name: String,
    pub phone: String,
    pub image_url: String,
    pub email_verified: bool,
    /// What services may authorize this account for (sorted, no repeats).
    pub roles: Vec<String>,
    /// A disabled account cannot log in and has no live session.
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
