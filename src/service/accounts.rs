//! Register and GetMe.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Core;
use crate::crypto::jwt::VerifiedAccess;
use crate::db;
use crate::db::verification::Purpose;
use crate::domain::{Email, FullName, ImageUrl, Invalid, Password, Phone, User, Username};
use crate::error::{AppError, TokenProblem, Violation};

/// Register's raw input, exactly as received.
#[derive(Default)]
pub struct RegisterInput {
    pub email: String,
    pub password: String,
    pub username: String,
    pub full_name: String,
    pub phone: String,
    pub image_url: String,
}

struct NewAccount {
    email: Email,
    password: Password,
    username: Option<Username>,
    full_name: FullName,
    phone: Option<Phone>,
    image_url: Option<ImageUrl>,
}

impl NewAccount {
    /// Parses every field and reports every bad one, not just the first.
    fn parse(input: &RegisterInput, password: Result<Password, Invalid>) -> Result<Self, AppError> {
        let email = Email::parse(&input.email);
        let username = optional(&input.username, Username::parse);
        let full_name = FullName::parse(&input.full_name);
        let phone = optional(&input.phone, Phone::parse);
        let image_url = optional(&input.image_url, ImageUrl::parse);
        let mut violations = Vec::new();
        Violation::note("email", &email, &mut violations);
        Violation::note("password", &password, &mut violations);
        Violation::note("username", &username, &mut violations);
        Violation::note("full_name", &full_name, &mut violations);
        Violation::note("phone", &phone, &mut violations);
        Violation::note("image_url", &image_url, &mut violations);
        match (email, password, username, full_name, phone, image_url) {
            (Ok(email), Ok(password), Ok(username), Ok(full_name), Ok(phone), Ok(image_url)) => Ok(Self {
                email,
                password,
                username,
                full_name,
                phone,
                image_url,
            }),
            _ => Err(AppError::Validation(violations)),
        }
    }
}

/// Empty input means "not given".
pub(super) fn optional<T>(
    input: &str,
    parse: impl Fn(&str) -> Result<T, Invalid>,
) -> Result<Option<T>, Invalid> {
    if input.trim().is_empty() {
        Ok(None)
    } else {
        parse(input).map(Some)
    }
}

impl Core {
    #[tracing::instrument(skip_all)]
    pub async fn register(&self, input: RegisterInput, now: DateTime<Utc>) -> Result<User, AppError> {
        let identifiers = [input.email.trim(), input.username.trim()];
        let password = self.check_new_password(&input.password, &identifiers).await?;
        let account = NewAccount::parse(&input, password)?;
        let hash = self.hasher.hash(&account.password).await?;
        // The account and the mail that verifies its address: both or neither.
        let mut tx = super::begin(&self.db).await?;
        let user = db::users::insert(
            &mut *tx,
            db::users::NewUserRow {
                id: Uuid::new_v4(),
                email: account.email.as_str(),
                username: account.username.as_ref().map(Username::as_str),
                full_name: account.full_name.as_str(),
                phone: account.phone.as_ref().map_or("", Phone::as_str),
                image_url: account.image_url.as_ref().map_or("", ImageUrl::as_str),
                password_hash: &hash,
                now,
            },
        )
        .await?;
        self.queue_address_proof(&mut tx, user.id, Purpose::Verify, &user.email, now)
            .await?;
        tx.commit().await?;
        self.mail.queued.notify_one();
        Ok(user)
    }

    /// The bearer's account, provided its session is still live: from the
    /// session cache when it can, else in one query.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn get_me(&self, bearer: VerifiedAccess, now: DateTime<Utc>) -> Result<Arc<User>, AppError> {
        self.live_session_user(&bearer, now)
            .await?
            .ok_or(AppError::Token(TokenProblem::SessionRevoked))
    }

    /// The account behind a live session, or `None` when it is not live.
    pub(super) async fn live_session_user(
        &self,
        bearer: &VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<User>>, AppError> {
        if let Some(user) = self.cache.get(bearer.user_id, bearer.session_id, now) {
            self.metrics.session_cache_hit();
            return Ok(Some(user));
        }
        self.metrics.session_cache_miss();
        let ticket = self.cache.ticket(bearer.user_id, bearer.session_id);
        let Some(live) = db::sessions::live_user(&self.db, bearer.user_id, bearer.session_id, now).await?
        else {
            return Ok(None);
        };
        let user = Arc::new(live.user);
        self.cache
            .insert(ticket, bearer.session_id, user.clone(), live.live_until);
        Ok(Some(user))
    }
}
