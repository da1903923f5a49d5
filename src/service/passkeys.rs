//! Passkeys (WebAuthn): registering one for a signed-in account, logging
//! in with one alone, and proving one as a second factor (CompleteLogin,
//! StepUp: see `factors.rs`).
//!
//! A ceremony's state lives in PostgreSQL under its challenge, which is
//! also the id clients see: any replica finishes what another started, and
//! taking it deletes it, so it is finished once.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{Core, TokenPair, chrono_duration};
use crate::crypto::jwt::VerifiedAccess;
use crate::crypto::passkeys::{Assertion, NewCredential, Refusal, base64url, base64url_decode};
use crate::db::passkeys::{CeremonyKind, NewCeremony, NewPasskeyRow};
use crate::db::revocations::{FactorChange, FactorCredential};
use crate::db::sessions::SessionProof;
use crate::db::throttle::Backoff;
use crate::db::{self, users::LoginKey};
use crate::domain::mail::{FactorNotice, factor_notice};
use crate::domain::{
    Assurance, AuthMethod, ClientInfo, Email, Factor, FactorKind, FactorName, FieldReason, Invalid,
    PasskeyBackup, ThrottleKey, User, Username,
};
use crate::error::{AppError, TokenProblem, Violation};
use crate::metrics::ThrottleKind;

/// How long a ceremony waits for the browser's answer.
const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Passkeys an account may have.
const MAX_PASSKEYS: i64 = 10;
/// Longest login string worth looking up (an email's maximum).
const MAX_LOGIN_LEN: usize = 254;
/// The name of the shared secret behind stand-in credential ids.
const DECOY_SECRET: &str = "passkey_decoy_key";

/// A started ceremony, for the client.
pub struct PasskeyCeremony {
    pub ceremony_id: String,
    pub options: Value,
    pub expires_at: DateTime<Utc>,
}

/// A passkey that proved a login or step-up: what the session records.
pub(super) struct ProvenPasskey {
    pub user_id: Uuid,
    pub methods: [AuthMethod; 2],
}

/// The ceremony id a client sent: the base64url challenge.
fn parse_ceremony_id(input: &str) -> Result<Vec<u8>, Violation> {
    let input = input.trim();
    if input.is_empty() {
        return Err(Violation::new("ceremony_id", Invalid::required()));
    }
    match base64url_decode(input) {
        Some(bytes) if (16..=64).contains(&bytes.len()) => Ok(bytes),
        _ => Err(Violation::new(
            "ceremony_id",
            Invalid::format("must be a ceremony id from the Start call"),
        )),
    }
}

/// The credential a client sent: a JSON object.
fn parse_credential(input: Option<Value>) -> Result<Value, Violation> {
    match input {
        Some(Value::Object(o)) if !o.is_empty() => Ok(Value::Object(o)),
        _ => Err(Violation::new(
            "credential",
            Invalid::new(
                FieldReason::Required,
                "the browser's PublicKeyCredential, as its toJSON() gives it, is required",
            ),
        )),
    }
}

fn both(ceremony_id: &str, credential: Option<Value>) -> Result<(Vec<u8>, Value), AppError> {
    match (parse_ceremony_id(ceremony_id), parse_credential(credential)) {
        (Ok(id), Ok(credential)) => Ok((id, credential)),
        (id, credential) => Err(AppError::Validation(
            [id.err(), credential.err()].into_iter().flatten().collect(),
        )),
    }
}

/// A credential that is not a PublicKeyCredential's JSON.
fn malformed(detail: &str) -> AppError {
    AppError::invalid(
        "credential",
        Invalid::format(format!(
            "is not a PublicKeyCredential's toJSON() ({})",
            short(detail)
        )),
    )
}

/// serde's message, bounded: it may quote the input.
fn short(detail: &str) -> String {
    detail.chars().take(160).collect()
}

impl Core {
    /// The client's budget of failed ceremonies (per address group, like
    /// VerifyEmail's guesses): refused while it waits, but nothing is
    /// counted until an attempt fails. Guessing a signature is hopeless, so
    /// the budget only bounds the work a client's garbage costs; counting
    /// in advance would refuse the many good logins in flight at once
    /// behind one NAT.
    async fn check_passkey_budget(
        &self,
        client: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Option<ThrottleKey>, AppError> {
        let Some(ip) = client else {
            return Ok(None);
        };
        let key = ThrottleKey::passkey_failures(ip);
        if let Some(wait) = db::throttle::wait_for(&self.db, &key, now).await? {
            self.metrics.throttled(ThrottleKind::PasskeyFailures);
            return Err(AppError::Throttled(wait));
        }
        Ok(Some(key))
    }

    /// Counts a failed ceremony on the client's budget and hands the
    /// failure back.
    async fn passkey_failed(
        &self,
        key: Option<&ThrottleKey>,
        failure: AppError,
        now: DateTime<Utc>,
    ) -> AppError {
        let Some(key) = key else {
            return failure;
        };
        match db::throttle::charge(&self.db, key, &Backoff::PASSKEY_FAILURES, now).await {
            Ok(_) => failure,
            Err(e) => e,
        }
    }

    async fn store_ceremony(
        &self,
        started: &crate::crypto::passkeys::Started,
        kind: CeremonyKind,
        user_id: Option<Uuid>,
        named: bool,
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, AppError> {
        let expires_at = now + chrono_duration(CEREMONY_TTL);
        db::passkeys::insert_ceremony(
            &self.db,
            &NewCeremony {
                challenge: &started.challenge,
                kind,
                user_id,
                named,
                name,
                state: &started.state,
                expires_at,
            },
            now,
        )
        .await?;
        Ok(expires_at)
    }

    /// Starts registering a passkey for the bearer (fresh second factor on
    /// an account that has one).
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id))]
    pub async fn start_passkey_registration(
        &self,
        bearer: VerifiedAccess,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<PasskeyCeremony, AppError> {
        let name = FactorName::parse(name, FactorKind::Passkey).map_err(|e| AppError::invalid("name", e))?;
        self.require_fresh(&bearer, now).await?;
        let user = self.bearer_user(&bearer, now).await?;
        let exclude = db::passkeys::credential_ids(&self.db, user.id).await?;
        if i64::try_from(exclude.len()).unwrap_or(i64::MAX) >= MAX_PASSKEYS {
            return Err(AppError::FactorLimitReached);
        }
        let display = user.username.clone().unwrap_or_else(|| user.email.clone());
        let started = self
            .factors
            .relying_party
            .start_registration(user.id, &user.email, &display, exclude)
            .map_err(AppError::internal)?;
        let expires_at = self
            .store_ceremony(
                &started,
                CeremonyKind::Registration,
                Some(user.id),
                false,
                Some(name.as_str()),
                now,
            )
            .await?;
        Ok(PasskeyCeremony {
            ceremony_id: base64url(&started.challenge),
            options: started.options,
            expires_at,
        })
    }

    /// Finishes a registration: the passkey becomes a live factor. The
    /// account's first factor also gets recovery codes (returned once).
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id))]
    pub async fn finish_passkey_registration(
        &self,
        bearer: VerifiedAccess,
        ceremony_id: &str,
        credential: Option<Value>,
        client: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(Factor, Vec<Zeroizing<String>>), AppError> {
        let (challenge, credential) = both(ceremony_id, credential)?;
        let credential = NewCredential::parse(credential).map_err(|r| match r {
            Refusal::Malformed(detail) | Refusal::Invalid(detail) => malformed(&detail),
            Refusal::CounterWentBack => AppError::PasskeyRefused,
        })?;
        // Checked again here, as ConfirmTotp does: the account may have got
        // a factor since the start, and a stolen password-only session must
        // not plant its own passkey then.
        self.require_fresh(&bearer, now).await?;
        let user = self.bearer_user(&bearer, now).await?;
        let throttle_key = self.check_passkey_budget(client, now).await?;
        let Some(ceremony) =
            db::passkeys::take_ceremony(&self.db, &challenge, CeremonyKind::Registration, now)
                .await?
                .filter(|c| c.user_id == Some(user.id))
        else {
            return Err(self
                .passkey_failed(throttle_key.as_ref(), AppError::CeremonyExpired, now)
                .await);
        };
        let new = match self
            .factors
            .relying_party
            .finish_registration(&credential, &ceremony.state)
        {
            Ok(new) => new,
            Err(Refusal::Malformed(detail)) => return Err(malformed(&detail)),
            Err(Refusal::Invalid(detail)) => {
                tracing::info!(%detail, "passkey registration refused");
                return Err(self
                    .passkey_failed(throttle_key.as_ref(), AppError::PasskeyRefused, now)
                    .await);
            }
            Err(Refusal::CounterWentBack) => {
                return Err(self
                    .passkey_failed(throttle_key.as_ref(), AppError::PasskeyRefused, now)
                    .await);
            }
        };
        let name = FactorName::from_stored(
            ceremony
                .name
                .unwrap_or_else(|| FactorName::DEFAULT_PASSKEY.to_owned()),
        );
        let factor_id = Uuid::new_v4();
        let mut tx = super::begin(&self.db).await?;
        let Some(user) = db::users::lock(&mut tx, user.id).await? else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        if db::passkeys::count(&mut *tx, user.id).await? >= MAX_PASSKEYS {
            return Err(AppError::FactorLimitReached);
        }
        let first = !db::factors::has_live_factor(&mut *tx, user.id).await?;
        let stored = NewPasskeyRow {
            factor_id,
            user_id: user.id,
            name: name.as_str(),
            credential_id: &new.credential_id,
            credential: &new.stored,
            sign_count: new.sign_count,
            backup: new.backup,
        };
        if !db::passkeys::insert(&mut tx, &stored, now).await? {
            // Registered already, here or to another account: the answer
            // is the same, so it tells nothing of other accounts.
            return Err(AppError::PasskeyRefused);
        }
        // The authenticator verified its user to make the key: the session
        // counts as proven by it, as a TOTP code proves a new app.
        let codes = super::factors::welcome_factor(
            &mut tx,
            user.id,
            bearer.session_id,
            key_method(new.backup),
            first,
            now,
        )
        .await?;
        if let Some(key) = &throttle_key {
            db::throttle::forgive(&mut *tx, key).await?;
        }
        let mail = factor_notice(FactorNotice::PasskeyAdded, &user.email, now);
        db::outbox::enqueue(&mut tx, &mail, Some(user.id), now).await?;
        db::factors::record_factors_changed(
            &mut *tx,
            user.id,
            FactorCredential::Passkey,
            FactorChange::Added,
        )
        .await?;
        tx.commit().await?;
        self.mail.queued.notify_one();
        Ok((
            Factor {
                id: factor_id,
                kind: FactorKind::Passkey,
                name,
                created_at: now,
                last_used_at: None,
                backup: Some(new.backup),
            },
            codes,
        ))
    }

    /// Starts a passkey login: any discoverable credential, or the named
    /// account's passkeys. An account that does not exist or has no
    /// passkey gets stand-in credential ids, the same on every call, so
    /// the answer does not tell it apart.
    #[tracing::instrument(skip_all)]
    pub async fn start_passkey_login(
        &self,
        login: &str,
        now: DateTime<Utc>,
    ) -> Result<PasskeyCeremony, AppError> {
        let login = login.trim();
        if login.len() > MAX_LOGIN_LEN {
            return Err(AppError::invalid(
                "login",
                Invalid::too_long(format!("must be at most {MAX_LOGIN_LEN} bytes")),
            ));
        }
        let named = !login.is_empty();
        let (user_id, allow) = if named {
            let user_id = self.user_id_for_login(login).await?;
            let ids = match user_id {
                Some(id) => db::passkeys::credential_ids(&self.db, id).await?,
                None => Vec::new(),
            };
            if ids.is_empty() {
                (None, self.decoy_credential_ids(login).await?)
            } else {
                (user_id, ids)
            }
        } else {
            (None, Vec::new())
        };
        let started = self
            .factors
            .relying_party
            .start_login(&allow)
            .map_err(AppError::internal)?;
        let expires_at = self
            .store_ceremony(&started, CeremonyKind::Authentication, user_id, named, None, now)
            .await?;
        Ok(PasskeyCeremony {
            ceremony_id: base64url(&started.challenge),
            options: started.options,
            expires_at,
        })
    }

    /// The account a login names, if any (any letter case).
    async fn user_id_for_login(&self, login: &str) -> Result<Option<Uuid>, AppError> {
        let found = if login.contains('@') {
            match Email::parse(login) {
                Ok(email) => db::users::find_credentials(&self.db, LoginKey::Email(email.as_str())).await?,
                Err(_) => None,
            }
        } else {
            match Username::parse(login) {
                Ok(name) => db::users::find_credentials(&self.db, LoginKey::Username(name.as_str())).await?,
                Err(_) => None,
            }
        };
        Ok(found.map(|c| c.user.id))
    }

    /// One or two stand-in credential ids for `login`, derived with a key
    /// every replica shares, so they are stable and look like real ones.
    async fn decoy_credential_ids(&self, login: &str) -> Result<Vec<Vec<u8>>, AppError> {
        use hmac::{Hmac, Mac};
        let key = self
            .factors
            .decoy_key
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                getrandom::getrandom(&mut candidate).map_err(AppError::internal)?;
                db::secrets::shared(&self.db, DECOY_SECRET, &candidate).await
            })
            .await?;
        let id = |n: u8| -> Result<Vec<u8>, AppError> {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(AppError::internal)?;
            mac.update(&[n]);
            mac.update(login.to_lowercase().as_bytes());
            Ok(mac.finalize().into_bytes().to_vec())
        };
        let first = id(0)?;
        // Accounts with two passkeys are common: one stand-in only would
        // make every list of two a proof that the account exists.
        let count = if first[0] & 1 == 0 { 1 } else { 2 };
        (0..count).map(id).collect()
    }

    /// Finishes a passkey login: a user-verified passkey alone starts a
    /// session (`acr` aal2). Failures are charged to `counted_as`, the
    /// client's address group.
    #[tracing::instrument(skip_all)]
    pub async fn finish_passkey_login(
        &self,
        ceremony_id: &str,
        credential: Option<Value>,
        client: &ClientInfo,
        counted_as: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(TokenPair, User), AppError> {
        let (challenge, credential) = both(ceremony_id, credential)?;
        let assertion = Assertion::parse(credential).map_err(|r| match r {
            Refusal::Malformed(detail) | Refusal::Invalid(detail) => malformed(&detail),
            Refusal::CounterWentBack => AppError::PasskeyInvalid,
        })?;
        let throttle_key = self.check_passkey_budget(counted_as, now).await?;
        let Some(ceremony) =
            db::passkeys::take_ceremony(&self.db, &challenge, CeremonyKind::Authentication, now).await?
        else {
            return Err(self
                .passkey_failed(throttle_key.as_ref(), AppError::CeremonyExpired, now)
                .await);
        };
        let Some(proven) = self.verify_assertion(&assertion, &ceremony, None, now).await? else {
            return Err(self
                .passkey_failed(throttle_key.as_ref(), AppError::PasskeyInvalid, now)
                .await);
        };
        let Some(user) = db::users::by_id(&self.db, proven.user_id).await? else {
            return Err(AppError::PasskeyInvalid);
        };
        // The passkey was proven: the state of the account is no secret to
        // its holder.
        if user.disabled {
            return Err(AppError::AccountDisabled);
        }
        if self.sessions.require_verified_email && !user.email_verified {
            return Err(AppError::EmailNotVerified);
        }
        let proof = SessionProof {
            assurance: Assurance::from_parts(proven.methods, now),
            mfa_enrollment_required: false,
        };
        let forgive = throttle_key.unwrap_or_else(|| ThrottleKey::passkey_failures("unknown"));
        let pair = self
            .start_session_in(&self.db, &user, proof, &forgive, client, now)
            .await?;
        Ok((pair, user))
    }

    /// Checks an assertion against its (already taken) ceremony. The
    /// credential must be a live passkey of the account the ceremony was
    /// for (`expected`, or the ceremony's named account), or, for a
    /// discoverable ceremony, of the account its user handle names. `None`
    /// when the assertion does not hold; a counter that went backwards also
    /// mails the passkey's owner.
    pub(super) async fn verify_assertion(
        &self,
        assertion: &Assertion,
        ceremony: &db::passkeys::Ceremony,
        expected: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Option<ProvenPasskey>, AppError> {
        let Some(stored) = db::passkeys::by_credential_id(&self.db, assertion.credential_id()).await? else {
            tracing::info!("passkey assertion refused: unknown credential");
            return Ok(None);
        };
        let owner_ok = match (expected, ceremony.user_id, ceremony.named) {
            (Some(expected), Some(bound), _) => expected == bound && stored.user_id == expected,
            (Some(expected), None, false) => stored.user_id == expected,
            (None, Some(bound), _) => stored.user_id == bound,
            (None, None, false) => assertion.user_handle() == Some(stored.user_id),
            // A named login whose account has no passkey.
            (_, None, true) => false,
        };
        if !owner_ok {
            tracing::info!("passkey assertion refused: the credential is another account's");
            return Ok(None);
        }
        let asserted =
            match self
                .factors
                .relying_party
                .finish_login(assertion, &ceremony.state, &stored.credential)
            {
                Ok(asserted) => asserted,
                Err(Refusal::CounterWentBack) => {
                    self.passkey_cloned(stored.user_id, now).await?;
                    return Ok(None);
                }
                Err(Refusal::Invalid(detail) | Refusal::Malformed(detail)) => {
                    tracing::info!(detail = %short(&detail), "passkey assertion refused");
                    return Ok(None);
                }
            };
        let used = db::passkeys::Use {
            factor_id: stored.factor_id,
            credential: &asserted.stored,
            sign_count: asserted.sign_count,
            backup: asserted.backup,
        };
        if !db::passkeys::record_use(&self.db, &used, now).await? {
            // Another replica accepted this count or a later one meanwhile.
            self.passkey_cloned(stored.user_id, now).await?;
            return Ok(None);
        }
        debug_assert!(asserted.user_verified);
        Ok(Some(ProvenPasskey {
            user_id: stored.user_id,
            methods: [key_method(asserted.backup), AuthMethod::User],
        }))
    }

    /// A passkey signed with a counter already seen: two authenticators
    /// hold its key. The login is refused and the owner told.
    async fn passkey_cloned(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<(), AppError> {
        tracing::warn!(%user_id, "passkey signature counter went backwards: login refused");
        let mut tx = super::begin(&self.db).await?;
        if let Some(user) = db::users::lock(&mut tx, user_id).await? {
            let mail = factor_notice(FactorNotice::PasskeyCloned, &user.email, now);
            db::outbox::enqueue(&mut tx, &mail, Some(user_id), now).await?;
        }
        tx.commit().await?;
        self.mail.queued.notify_one();
        Ok(())
    }

    /// Options and a stored ceremony for a second factor due for `user_id`
    /// (Login's challenge), when the account has passkeys.
    pub(super) async fn passkey_second_factor_options(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Value>, AppError> {
        let ids = db::passkeys::credential_ids(&self.db, user_id).await?;
        if ids.is_empty() {
            return Ok(None);
        }
        let started = self
            .factors
            .relying_party
            .start_login(&ids)
            .map_err(AppError::internal)?;
        self.store_ceremony(
            &started,
            CeremonyKind::Authentication,
            Some(user_id),
            false,
            None,
            now,
        )
        .await?;
        Ok(Some(started.options))
    }

    /// Proves a passkey of `user_id` as a second factor: the assertion
    /// answers a ceremony (Login's challenge, or StartPasskeyLogin's) that
    /// it takes. `None` when it does not hold.
    pub(super) async fn prove_passkey(
        &self,
        user_id: Uuid,
        assertion: &Assertion,
        now: DateTime<Utc>,
    ) -> Result<Option<ProvenPasskey>, AppError> {
        let Some(challenge) = assertion.challenge() else {
            return Ok(None);
        };
        let Some(ceremony) =
            db::passkeys::take_ceremony(&self.db, challenge, CeremonyKind::Authentication, now).await?
        else {
            return Ok(None);
        };
        self.verify_assertion(assertion, &ceremony, Some(user_id), now)
            .await
    }
}

/// `swk` for a passkey that may be synced between devices, `hwk` for one
/// bound to its authenticator (RFC 8176).
fn key_method(backup: PasskeyBackup) -> AuthMethod {
    if backup.eligible {
        AuthMethod::Swk
    } else {
        AuthMethod::Hwk
    }
}

/// Parses a second factor's passkey answer (CompleteLogin, StepUp).
pub(super) fn parse_passkey_proof(json: Value, field: &'static str) -> Result<Assertion, AppError> {
    let Value::Object(_) = &json else {
        return Err(AppError::invalid(
            field,
            Invalid::new(
                FieldReason::InvalidFormat,
                "must be the browser's PublicKeyCredential, as its toJSON() gives it",
            ),
        ));
    };
    Assertion::parse(json).map_err(|r| match r {
        Refusal::Malformed(detail) | Refusal::Invalid(detail) => AppError::invalid(
            field,
            Invalid::format(format!(
                "is not a PublicKeyCredential's toJSON() ({})",
                short(&detail)
            )),
        ),
        Refusal::CounterWentBack => AppError::PasskeyInvalid,
    })
}
