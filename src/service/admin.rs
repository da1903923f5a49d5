//! AdminService's use cases: what a service with its own credentials may do
//! to accounts. Ids arrive as strings and are parsed here, once.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use uuid::Uuid;

use super::Core;
use crate::db::revocations::{EventDetail, EventKind};
use crate::db::{self, users::LoginKey, users::PagePosition};
use crate::domain::{Email, EndReason, FieldReason, Invalid, Role, User, Username};
use crate::error::{AppError, Violation};

pub const MAX_BATCH: usize = 100;
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;
/// `server_secrets` name of the key that signs page tokens.
const PAGE_TOKEN_SECRET: &str = "page_token_key";
/// Bytes of the MAC kept in a page token: 128 bits cannot be guessed.
const MAC_BYTES: usize = 16;

fn user_id(field: &'static str, input: &str) -> Result<Uuid, Invalid> {
    if input.trim().is_empty() {
        return Err(Invalid::required());
    }
    Uuid::parse_str(input.trim()).map_err(|_| Invalid::format(format!("{field} must be a UUID")))
}

fn parse_user_id(input: &str) -> Result<Uuid, AppError> {
    user_id("user_id", input).map_err(|e| AppError::invalid("user_id", e))
}

/// Signs and checks page tokens with a secret all replicas share, so a
/// token from one replica works on another and a changed byte is refused.
#[derive(Clone, Default)]
pub struct PageTokens {
    key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
}

impl PageTokens {
    async fn key(&self, core: &Core) -> Result<&[u8], AppError> {
        let key = self
            .key
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                getrandom::getrandom(&mut candidate).map_err(AppError::internal)?;
                db::secrets::shared(&core.db, PAGE_TOKEN_SECRET, &candidate).await
            })
            .await?;
        Ok(key)
    }

    fn mac(key: &[u8], payload: &[u8]) -> Result<Hmac<Sha256>, AppError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(AppError::internal)?;
        mac.update(payload);
        Ok(mac)
    }

    async fn encode(&self, core: &Core, after: PagePosition) -> Result<String, AppError> {
        let mut bytes = Vec::with_capacity(8 + 16 + MAC_BYTES);
        bytes.extend_from_slice(&after.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(after.id.as_bytes());
        let tag = Self::mac(self.key(core).await?, &bytes)?.finalize().into_bytes();
        bytes.extend_from_slice(&tag[..MAC_BYTES]);
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    async fn decode(&self, core: &Core, token: &str) -> Result<PagePosition, AppError> {
        let refused = || {
            AppError::invalid(
                "page_token",
                Invalid::format("is not a page token from this ListUsers"),
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| refused())?;
        if bytes.len() != 8 + 16 + MAC_BYTES {
            return Err(refused());
        }
        let (payload, tag) = bytes.split_at(8 + 16);
        Self::mac(self.key(core).await?, payload)?
            .verify_truncated_left(tag)
            .map_err(|_| refused())?;
        let micros = i64::from_be_bytes(payload[..8].try_into().map_err(|_| refused())?);
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(refused)?;
        let id = Uuid::from_slice(&payload[8..]).map_err(|_| refused())?;
        Ok(PagePosition { created_at, id })
    }
}

impl Core {
    #[tracing::instrument(skip_all)]
    pub async fn get_user(&self, user_id: &str) -> Result<User, AppError> {
        let id = parse_user_id(user_id)?;
        db::users::by_id(&self.db, id)
            .await?
            .ok_or(AppError::UserNotFound)
    }

    /// Up to 100 accounts in the order asked, unknown ones left out.
    #[tracing::instrument(skip_all, fields(count = user_ids.len()))]
    pub async fn batch_get_users(&self, user_ids: &[String]) -> Result<Vec<User>, AppError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        if user_ids.len() > MAX_BATCH {
            return Err(AppError::invalid(
                "user_ids",
                Invalid::too_long(format!("at most {MAX_BATCH} ids per call")),
            ));
        }
        let ids = user_ids
            .iter()
            .map(|s| user_id("each id", s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AppError::invalid("user_ids", e))?;
        let found: HashMap<Uuid, User> = db::users::by_ids(&self.db, &ids)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        // The request's order; an id asked twice is answered twice.
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    /// The account with exactly one of `email`, `username`.
    #[tracing::instrument(skip_all)]
    pub async fn lookup_user(&self, email: &str, username: &str) -> Result<User, AppError> {
        let key = match (email.trim().is_empty(), username.trim().is_empty()) {
            (false, true) => {
                let email = Email::parse(email).map_err(|e| AppError::invalid("email", e))?;
                db::users::by_login(&self.db, LoginKey::Email(email.as_str())).await?
            }
            (true, false) => {
                let name = Username::parse(username).map_err(|e| AppError::invalid("username", e))?;
                db::users::by_login(&self.db, LoginKey::Username(name.as_str())).await?
            }
            _ => {
                let problem =
                    || Invalid::new(FieldReason::Required, "give exactly one of email and username");
                return Err(AppError::Validation(vec![
                    Violation::new("email", problem()),
                    Violation::new("username", problem()),
                ]));
            }
        };
        key.ok_or(AppError::UserNotFound)
    }

    /// A page of accounts, oldest first, and the token of the next page
    /// (empty after the last).
    #[tracing::instrument(skip_all, fields(page_size))]
    pub async fn list_users(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<User>, String), AppError> {
        let size = match i64::from(page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(AppError::invalid(
                    "page_size",
                    Invalid::too_long(format!(
                        "must be 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE}"
                    )),
                ));
            }
        };
        let after = if page_token.trim().is_empty() {
            None
        } else {
            Some(self.page_tokens.decode(self, page_token).await?)
        };
        // One more than asked tells whether another page follows.
        let mut users = db::users::page(&self.db, after, size + 1).await?;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let more = users.len() > size;
        users.truncate(size);
        let next = match (more, users.last()) {
            (true, Some(last)) => {
                let position = PagePosition {
                    created_at: last.created_at,
                    id: last.id,
                };
                self.page_tokens.encode(self, position).await?
            }
            _ => String::new(),
        };
        Ok((users, next))
    }

    /// Disables the account, ends every session of it and kills its
    /// outstanding links, in one transaction; every replica's caches hear
    /// of it. Enabling it later does not bring the links back.
    #[tracing::instrument(skip_all)]
    pub async fn disable_user(&self, user_id: &str, now: DateTime<Utc>) -> Result<User, AppError> {
        let id = parse_user_id(user_id)?;
        let mut tx = super::begin(&self.db).await?;
        let user = db::users::set_disabled(&mut *tx, id, true, now)
            .await?
            .ok_or(AppError::UserNotFound)?;
        db::users::rotate_security_stamp(&mut tx, id).await?;
        let ended =
            db::sessions::revoke_all_for_user(&mut *tx, id, None, EndReason::UserDisabled, now).await?;
        db::revocations::record_user_disabled(&mut *tx, id, now).await?;
        tx.commit().await?;
        self.cache.evict_user(id);
        tracing::info!(user_id = %id, ended_sessions = ended, "account disabled");
        Ok(user)
    }

    #[tracing::instrument(skip_all)]
    pub async fn enable_user(&self, user_id: &str, now: DateTime<Utc>) -> Result<User, AppError> {
        let id = parse_user_id(user_id)?;
        let mut tx = super::begin(&self.db).await?;
        let was = db::users::lock(&mut tx, id)
            .await?
            .ok_or(AppError::UserNotFound)?;
        let user = db::users::set_disabled(&mut *tx, id, false, now)
            .await?
            .ok_or(AppError::UserNotFound)?;
        if was.disabled {
            db::revocations::record(&mut *tx, EventKind::UserEnabled, id, None).await?;
        }
        tx.commit().await?;
        self.cache.evict_user(id);
        Ok(user)
    }

    /// Replaces the roles; tokens issued from now on carry them.
    #[tracing::instrument(skip_all)]
    pub async fn set_user_roles(
        &self,
        user_id: &str,
        roles: &[String],
        now: DateTime<Utc>,
    ) -> Result<User, AppError> {
        let id = parse_user_id(user_id);
        let roles = Role::parse_set(roles);
        let (id, roles) = match (id, roles) {
            (Ok(id), Ok(roles)) => (id, roles),
            (id, roles) => {
                let mut violations = Vec::new();
                if let Err(AppError::Validation(v)) = id {
                    violations.extend(v);
                }
                if let Err(e) = roles {
                    violations.push(Violation::new("roles", e));
                }
                return Err(AppError::Validation(violations));
            }
        };
        let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
        let mut tx = super::begin(&self.db).await?;
        let was = db::users::lock(&mut tx, id)
            .await?
            .ok_or(AppError::UserNotFound)?;
        let user = db::users::set_roles(&mut *tx, id, &names, now)
            .await?
            .ok_or(AppError::UserNotFound)?;
        // Only a change is an event (receivers refresh claims on it).
        if was.roles != user.roles {
            let detail = EventDetail::Roles {
                roles: names.iter().map(|r| (*r).to_owned()).collect(),
            };
            db::revocations::record(&mut *tx, EventKind::RolesChanged, id, Some(&detail)).await?;
        }
        tx.commit().await?;
        self.cache.evict_user(id);
        Ok(user)
    }

    /// Ends every live session of the account and kills its outstanding
    /// links (a service ends sessions when it suspects a takeover, and a
    /// link kept by the intruder would undo that); how many sessions there
    /// were.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_user_sessions(&self, user_id: &str, now: DateTime<Utc>) -> Result<u64, AppError> {
        let id = parse_user_id(user_id)?;
        let mut tx = super::begin(&self.db).await?;
        // The account first, in the order every other change locks it.
        if db::users::lock(&mut tx, id).await?.is_none() {
            return Err(AppError::UserNotFound);
        }
        db::users::rotate_security_stamp(&mut tx, id).await?;
        let ended =
            db::sessions::revoke_all_for_user(&mut *tx, id, None, EndReason::RevokedByService, now).await?;
        tx.commit().await?;
        self.cache.evict_user(id);
        Ok(ended)
    }
}
