//! The bearer's own account: UpdateMe and DeleteMe.

use chrono::{DateTime, Utc};

use super::Core;
use super::accounts::optional;
use crate::crypto::jwt::VerifiedAccess;
use crate::db;
use crate::db::users::ProfileUpdate;
use crate::domain::mail as outbox;
use crate::domain::{FieldReason, FullName, ImageUrl, Invalid, Password, Phone, ThrottleKey, User, Username};
use crate::error::{AppError, TokenProblem, Violation};

/// A profile field UpdateMe can change, by its proto name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileField {
    Username,
    FullName,
    Phone,
    ImageUrl,
}

impl ProfileField {
    const ALL: [Self; 4] = [Self::Username, Self::FullName, Self::Phone, Self::ImageUrl];

    fn name(self) -> &'static str {
        match self {
            Self::Username => "username",
            Self::FullName => "full_name",
            Self::Phone => "phone",
            Self::ImageUrl => "image_url",
        }
    }

    /// The field's path in UpdateMe's request, for its field violation.
    fn request_path(self) -> &'static str {
        match self {
            Self::Username => "user.username",
            Self::FullName => "user.full_name",
            Self::Phone => "user.phone",
            Self::ImageUrl => "user.image_url",
        }
    }
}

/// UpdateMe's raw input, exactly as received.
#[derive(Debug, Default)]
pub struct UpdateMeInput {
    /// `None` when the request has no `user` at all.
    pub values: Option<ProfileValues>,
    pub paths: Vec<String>,
}

/// The profile fields of the request's `user`.
#[derive(Debug, Default)]
pub struct ProfileValues {
    pub username: String,
    pub full_name: String,
    pub phone: String,
    pub image_url: String,
}

/// The fields a mask names, each once; an empty mask or a path that is not
/// an updatable field is refused.
fn parse_mask(paths: &[String]) -> Result<Vec<ProfileField>, Invalid> {
    if paths.is_empty() {
        return Err(Invalid::new(
            FieldReason::Required,
            "must name at least one field: username, full_name, phone, image_url",
        ));
    }
    let mut fields = Vec::new();
    let mut unknown = Vec::new();
    for path in paths {
        match ProfileField::ALL.into_iter().find(|f| f.name() == path.trim()) {
            Some(field) if !fields.contains(&field) => fields.push(field),
            Some(_) => {}
            None => unknown.push(path.as_str()),
        }
    }
    if unknown.is_empty() {
        return Ok(fields);
    }
    // Echoing a path back is safe: it is a field name, never a value, and
    // quoted with its control characters escaped.
    let shown: Vec<String> = unknown
        .iter()
        .take(5)
        .map(|p| format!("{:?}", p.chars().take(64).collect::<String>()))
        .collect();
    Err(Invalid::new(
        FieldReason::UnknownField,
        format!(
            "names no field UpdateMe can change ({}); it can change username, full_name, phone and \
             image_url (the address changes through ChangeEmail)",
            shown.join(", ")
        ),
    ))
}

/// The parsed values of the masked fields. Every bad field is reported.
struct ParsedUpdate {
    username: Option<Option<Username>>,
    full_name: Option<FullName>,
    phone: Option<Option<Phone>>,
    image_url: Option<Option<ImageUrl>>,
}

impl ParsedUpdate {
    fn parse(fields: &[ProfileField], values: &ProfileValues) -> Result<Self, Vec<Violation>> {
        let mut violations = Vec::new();
        let mut parsed = Self {
            username: None,
            full_name: None,
            phone: None,
            image_url: None,
        };
        for field in fields {
            let path = field.request_path();
            // As at Register: an empty optional field means "none".
            match field {
                ProfileField::Username => {
                    let v = optional(&values.username, Username::parse);
                    Violation::note(path, &v, &mut violations);
                    parsed.username = v.ok();
                }
                ProfileField::FullName => {
                    let v = FullName::parse(&values.full_name);
                    Violation::note(path, &v, &mut violations);
                    parsed.full_name = v.ok();
                }
                ProfileField::Phone => {
                    let v = optional(&values.phone, Phone::parse);
                    Violation::note(path, &v, &mut violations);
                    parsed.phone = v.ok();
                }
                ProfileField::ImageUrl => {
                    let v = optional(&values.image_url, ImageUrl::parse);
                    Violation::note(path, &v, &mut violations);
                    parsed.image_url = v.ok();
                }
            }
        }
        if violations.is_empty() {
            Ok(parsed)
        } else {
            Err(violations)
        }
    }

    fn as_update(&self) -> ProfileUpdate<'_> {
        ProfileUpdate {
            username: self.username.as_ref().map(|u| u.as_ref().map(Username::as_str)),
            full_name: self.full_name.as_ref().map(FullName::as_str),
            phone: self.phone.as_ref().map(|p| p.as_ref().map_or("", Phone::as_str)),
            image_url: self
                .image_url
                .as_ref()
                .map(|i| i.as_ref().map_or("", ImageUrl::as_str)),
        }
    }
}

impl Core {
    /// Changes the fields of the bearer's profile that the mask names, each
    /// validated as at Register, in one statement that also checks the
    /// session is live.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn update_me(
        &self,
        bearer: VerifiedAccess,
        input: UpdateMeInput,
        now: DateTime<Utc>,
    ) -> Result<User, AppError> {
        let mut violations = Vec::new();
        let fields = parse_mask(&input.paths);
        Violation::note("update_mask", &fields, &mut violations);
        let Some(values) = &input.values else {
            violations.push(Violation::new("user", Invalid::required()));
            return Err(AppError::Validation(violations));
        };
        let fields = fields.unwrap_or_default();
        let parsed = ParsedUpdate::parse(&fields, values);
        let parsed = match parsed {
            Ok(parsed) if violations.is_empty() => parsed,
            Ok(_) => return Err(AppError::Validation(violations)),
            Err(more) => {
                violations.extend(more);
                return Err(AppError::Validation(violations));
            }
        };
        let user = db::users::update_profile(
            &self.db,
            bearer.user_id,
            bearer.session_id,
            &parsed.as_update(),
            now,
        )
        .await?
        .ok_or(AppError::Token(TokenProblem::SessionRevoked))?;
        self.cache.evict_user(user.id);
        Ok(user)
    }

    /// Deletes the bearer's account once they typed its password again:
    /// its sessions end, everything stored about it goes (by cascade, and
    /// the throttle counters keyed by its address and username here), and a
    /// notice goes to its address. What outlives it holds only its id (the
    /// USER_DELETED revocation event).
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn delete_me(
        &self,
        bearer: VerifiedAccess,
        current_password: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        self.require_fresh(&bearer, now).await?;
        let current =
            Password::normalize(current_password).map_err(|e| AppError::invalid("current_password", e))?;
        if self.live_session_user(&bearer, now).await?.is_none() {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        }
        let (throttle_key, charge) = self
            .confirm_current_password(bearer.user_id, &current, now)
            .await?;

        let mut tx = super::begin(&self.db).await?;
        // Every lock before the deletion (whose trigger records the event).
        let account = db::users::lock(&mut tx, bearer.user_id).await?;
        let live = db::sessions::lock_live(&mut tx, bearer.user_id, bearer.session_id, now).await?;
        let (Some(account), Some(_)) = (account, live) else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        let mut counters = vec![
            throttle_key,
            ThrottleKey::account_by_username(account.id),
            ThrottleKey::unknown_login(&account.email),
        ];
        if let Some(username) = &account.username {
            counters.push(ThrottleKey::unknown_login(username));
        }
        db::throttle::forgive_all(&mut *tx, &counters).await?;
        db::recovery::forget_requests_for(&mut tx, &account.email).await?;
        // Not about the account (it would go with it): the notice outlives
        // it until it is delivered, and is then deleted too.
        db::outbox::enqueue(&mut tx, &outbox::account_deleted(&account.email, now), None, now).await?;
        db::users::delete(&mut tx, account.id).await?;
        tx.commit().await?;
        // The deletion forgave the count; nothing to give back.
        charge.checked();
        self.cache.evict_user(account.id);
        self.mail.queued.notify_one();
        tracing::info!("account deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_mask_names_updatable_fields_each_once() {
        assert_eq!(
            parse_mask(&paths(&["full_name", "phone", "full_name"])),
            Ok(vec![ProfileField::FullName, ProfileField::Phone])
        );
        assert_eq!(parse_mask(&[]).unwrap_err().reason, FieldReason::Required);
        for bad in [
            &["email"][..],
            &["id"],
            &["user.full_name"],
            &["*"],
            &["fullName"],
            &["phone", "roles"],
        ] {
            let err = parse_mask(&paths(bad)).unwrap_err();
            assert_eq!(err.reason, FieldReason::UnknownField, "{bad:?}");
        }
    }

    #[test]
    fn only_masked_fields_are_parsed_and_every_bad_one_is_reported() {
        let values = ProfileValues {
            username: "x".into(),
            full_name: "Ada".into(),
            phone: "12".into(),
            image_url: "not a url".into(),
        };
        let ok = ParsedUpdate::parse(&[ProfileField::FullName], &values).unwrap();
        assert_eq!(
            ok.as_update(),
            ProfileUpdate {
                full_name: Some("Ada"),
                ..ProfileUpdate::default()
            }
        );
        let err = ParsedUpdate::parse(&ProfileField::ALL, &values).err().unwrap();
        let fields: Vec<&str> = err.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["user.username", "user.phone", "user.image_url"]);
    }

    #[test]
    fn empty_values_clear_optional_fields() {
        let cleared = ParsedUpdate::parse(&ProfileField::ALL, &ProfileValues::default()).unwrap();
        assert_eq!(
            cleared.as_update(),
            ProfileUpdate {
                username: Some(None),
                full_name: Some(""),
                phone: Some(""),
                image_url: Some(""),
            }
        );
    }
}
