//! Second factors: enrolling an authenticator app, recovery codes, proving
//! a factor (CompleteLogin, StepUp), and an administrator's reset. How
//! recent a proof a sensitive change needs is in `attempts.rs`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{Core, chrono_duration, seconds_until};
use crate::crypto::jwt::{Subject, VerifiedAccess};
use crate::crypto::opaque::{self, TokenHash, TokenKind};
use crate::crypto::recovery_codes;
use crate::crypto::totp::{TotpCode, TotpSecret};
use crate::db::revocations::{FactorChange, FactorCredential};
use crate::db::sealed_secrets::factor_secret_aad;
use crate::db::{self, throttle::Backoff};
use crate::domain::mail::{FactorNotice, factor_notice};
use crate::domain::{
    Assurance, AuthMethod, EndReason, Factor, FactorKind, FactorName, Invalid, ThrottleKey, User,
};
use crate::error::{AppError, TokenProblem};

/// How long an enrollment waits for its first code.
const ENROLLMENT_TTL: Duration = Duration::from_secs(10 * 60);
/// Live authenticator apps an account may have.
const MAX_TOTP_FACTORS: i64 = 5;

/// A second factor as presented, not yet checked.
#[derive(Debug, Clone)]
pub enum Proof {
    Totp(String),
    RecoveryCode(String),
    /// A passkey's assertion, as the browser's `toJSON()` gives it.
    Passkey(serde_json::Value),
}

/// A proof whose form is right; only the database can tell whether it holds.
enum ParsedProof {
    Totp(TotpCode),
    RecoveryCode(TokenHash),
    Passkey(Box<crate::crypto::passkeys::Assertion>),
}

/// A started enrollment, shown once.
pub struct Enrollment {
    pub id: Uuid,
    pub secret_base32: Zeroizing<String>,
    pub otpauth_uri: Zeroizing<String>,
    pub expires_at: DateTime<Utc>,
}

/// A fresh access token of the bearer's session (StepUp).
pub struct SteppedUp {
    pub access_token: String,
    pub expires_in: Duration,
}

fn parse_proof(proof: Option<Proof>) -> Result<ParsedProof, AppError> {
    match proof {
        None => Err(AppError::invalid(
            "totp_code",
            Invalid::new(
                crate::domain::FieldReason::Required,
                "a totp_code, a recovery_code or a passkey_assertion is required",
            ),
        )),
        Some(Proof::Totp(code)) => TotpCode::parse(&code).map(ParsedProof::Totp).ok_or_else(|| {
            AppError::invalid(
                "totp_code",
                Invalid::new(crate::domain::FieldReason::InvalidFormat, "must be 6 digits"),
            )
        }),
        Some(Proof::Passkey(json)) => super::passkeys::parse_passkey_proof(json, "passkey_assertion")
            .map(|a| ParsedProof::Passkey(Box::new(a))),
        Some(Proof::RecoveryCode(code)) => recovery_codes::hash_presented(&code)
            .map(ParsedProof::RecoveryCode)
            .ok_or_else(|| {
                AppError::invalid(
                    "recovery_code",
                    Invalid::new(
                        crate::domain::FieldReason::InvalidFormat,
                        "must be a recovery code (xxxx-xxxx-xxxx-xxxx)",
                    ),
                )
            }),
    }
}

fn parse_uuid(field: &'static str, input: &str) -> Result<Uuid, AppError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(AppError::invalid(field, Invalid::required()));
    }
    Uuid::parse_str(input).map_err(|_| {
        AppError::invalid(
            field,
            Invalid::new(crate::domain::FieldReason::InvalidFormat, "must be a UUID"),
        )
    })
}

fn factor_from_row(row: db::factors::FactorRow) -> Result<Factor, AppError> {
    let kind = FactorKind::parse(&row.kind)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown factor kind {:?}", row.kind)))?;
    Ok(Factor {
        id: row.id,
        kind,
        name: FactorName::from_stored(row.name),
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        backup: match (row.backup_eligible, row.backed_up) {
            (Some(eligible), Some(backed_up)) => Some(crate::domain::PasskeyBackup { eligible, backed_up }),
            _ => None,
        },
    })
}

impl Core {
    /// The account's Login throttle, charged by a bearer's second-factor
    /// code (the transport counts a throttled answer on the metrics page).
    async fn charge_code_attempt(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(ThrottleKey, super::attempts::Charged), AppError> {
        let key = ThrottleKey::account(user_id);
        let charge = self.charge_check(&key, &Backoff::LOGIN, now).await?;
        Ok((key, charge))
    }

    /// A stored TOTP secret, opened with the data key that sealed it.
    fn open_totp_secret(
        &self,
        stored: &db::factors::StoredTotp,
        user_id: Uuid,
    ) -> Result<TotpSecret, AppError> {
        let secret = self
            .factors
            .data_keys
            .open(
                &stored.secret_key_id,
                &stored.secret_sealed,
                &factor_secret_aad(stored.id, user_id),
            )
            .map_err(AppError::internal)?;
        Ok(TotpSecret::from_bytes(secret))
    }

    /// The bearer's account behind a live session.
    pub(super) async fn bearer_user(
        &self,
        bearer: &VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<User, AppError> {
        Ok((*self
            .live_session_user(bearer, now)
            .await?
            .ok_or(AppError::Token(TokenProblem::SessionRevoked))?)
        .clone())
    }

    /// Checks a second factor of `user_id`. A TOTP code is accepted for at
    /// most one step per factor (atomically, whichever replica asks); a
    /// recovery code is spent, its owner told and the change logged; a
    /// passkey's assertion takes the ceremony it answers. Returns the
    /// methods proven; `None` means the proof does not hold, however close
    /// it was.
    async fn prove_second_factor(
        &self,
        user_id: Uuid,
        proof: &ParsedProof,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<AuthMethod>>, AppError> {
        let otp = |held: bool| held.then(|| vec![AuthMethod::Otp]);
        match proof {
            ParsedProof::Passkey(assertion) => Ok(self
                .prove_passkey(user_id, assertion, now)
                .await?
                .map(|p| p.methods.to_vec())),
            ParsedProof::Totp(code) => {
                let factors = db::factors::live_totp(&self.db, user_id).await?;
                // Every factor is tried, so the time taken does not say
                // which one matched or whether any was close.
                let mut matched = None;
                for stored in &factors {
                    let secret = self.open_totp_secret(stored, user_id)?;
                    if let Some(step) = secret.matching_step(code, now) {
                        matched.get_or_insert((stored.id, step));
                    }
                }
                match matched {
                    Some((factor_id, step)) => Ok(otp(db::factors::accept_step(
                        &self.db, factor_id, step, now,
                    )
                    .await?)),
                    None => Ok(None),
                }
            }
            ParsedProof::RecoveryCode(hash) => {
                let mut tx = super::begin(&self.db).await?;
                if !db::factors::spend_recovery_code(&mut *tx, user_id, hash, now).await? {
                    return Ok(None);
                }
                if let Some(user) = db::users::lock(&mut tx, user_id).await? {
                    let mail = factor_notice(FactorNotice::RecoveryCodeUsed, &user.email, now);
                    db::outbox::enqueue(&mut tx, &mail, Some(user_id), now).await?;
                }
                db::factors::record_factors_changed(
                    &mut *tx,
                    user_id,
                    FactorCredential::RecoveryCodes,
                    FactorChange::Updated,
                )
                .await?;
                tx.commit().await?;
                self.mail.queued.notify_one();
                Ok(otp(true))
            }
        }
    }

    /// Starts enrolling an authenticator app for the bearer.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id))]
    pub async fn enroll_totp(
        &self,
        bearer: VerifiedAccess,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Enrollment, AppError> {
        let name = FactorName::parse(name, FactorKind::Totp).map_err(|e| AppError::invalid("name", e))?;
        let user = self.bearer_user(&bearer, now).await?;
        if db::factors::live_totp_count(&self.db, user.id).await? >= MAX_TOTP_FACTORS {
            return Err(AppError::FactorLimitReached);
        }
        let secret = TotpSecret::generate().map_err(AppError::internal)?;
        let id = Uuid::new_v4();
        let sealed = self
            .factors
            .data_keys
            .seal(secret.as_bytes(), &factor_secret_aad(id, user.id))
            .map_err(AppError::internal)?;
        let expires_at = now + chrono_duration(ENROLLMENT_TTL);
        let mut tx = super::begin(&self.db).await?;
        db::factors::start_enrollment(
            &mut tx,
            &db::factors::NewEnrollment {
                id,
                user_id: user.id,
                name: name.as_str(),
                secret_sealed: &sealed.bytes,
                secret_key_id: &sealed.key_id,
                expires_at,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Enrollment {
            id,
            secret_base32: secret.base32(),
            otpauth_uri: secret.otpauth_uri(&self.factors.totp_issuer, &user.email),
            expires_at,
        })
    }

    /// Makes an enrollment live with a code from the app. The account's
    /// first factor also gets recovery codes (returned once); the bearer's
    /// session counts as proven by both factors from now on.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id))]
    pub async fn confirm_totp(
        &self,
        bearer: VerifiedAccess,
        enrollment_id: &str,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<(Factor, Vec<Zeroizing<String>>), AppError> {
        let id = parse_uuid("enrollment_id", enrollment_id);
        let code = TotpCode::parse(code).ok_or_else(|| {
            AppError::invalid(
                "code",
                if code.trim().is_empty() {
                    Invalid::required()
                } else {
                    Invalid::new(crate::domain::FieldReason::InvalidFormat, "must be 6 digits")
                },
            )
        });
        let (id, code) = match (id, code) {
            (Ok(id), Ok(code)) => (id, code),
            (Err(AppError::Validation(mut a)), Err(AppError::Validation(b))) => {
                a.extend(b);
                return Err(AppError::Validation(a));
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        // Adding a factor to an account that has one is a sensitive change:
        // a stolen session must not plant its own authenticator.
        self.require_fresh(&bearer, now).await?;
        let (throttle_key, charge) = self.charge_code_attempt(bearer.user_id, now).await?;

        let mut tx = super::begin(&self.db).await?;
        let Some(user) = db::users::lock(&mut tx, bearer.user_id).await? else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        let Some((stored, _name)) = db::factors::lock_enrollment(&mut tx, id, user.id, now).await? else {
            return Err(AppError::EnrollmentExpired);
        };
        let Some(step) = self.open_totp_secret(&stored, user.id)?.matching_step(&code, now) else {
            drop(tx);
            charge.checked();
            return Err(AppError::InvalidCode);
        };
        let live = db::factors::live_totp_count(&mut *tx, user.id).await?;
        if live >= MAX_TOTP_FACTORS {
            return Err(AppError::FactorLimitReached);
        }
        let first = !db::factors::has_live_factor(&mut *tx, user.id).await?;
        let row = db::factors::confirm(&mut tx, id, step, now).await?;
        // The code just proved the new factor in this session.
        let codes = welcome_factor(&mut tx, user.id, bearer.session_id, AuthMethod::Otp, first, now).await?;
        db::throttle::forgive(&mut *tx, &throttle_key).await?;
        let mail = factor_notice(FactorNotice::Added, &user.email, now);
        db::outbox::enqueue(&mut tx, &mail, Some(user.id), now).await?;
        db::factors::record_factors_changed(&mut *tx, user.id, FactorCredential::Totp, FactorChange::Added)
            .await?;
        tx.commit().await?;
        charge.checked();
        self.mail.queued.notify_one();
        Ok((factor_from_row(row)?, codes))
    }

    /// The bearer's live factors and unused recovery codes.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id))]
    pub async fn list_factors(
        &self,
        bearer: VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Factor>, i64), AppError> {
        let user = self.bearer_user(&bearer, now).await?;
        let (rows, codes) = db::factors::list(&self.db, user.id).await?;
        let factors = rows.into_iter().map(factor_from_row).collect::<Result<_, _>>()?;
        Ok((factors, codes))
    }

    /// Removes one of the bearer's factors (fresh second factor required).
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id))]
    pub async fn remove_factor(
        &self,
        bearer: VerifiedAccess,
        factor_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let factor_id = parse_uuid("factor_id", factor_id)?;
        self.require_fresh(&bearer, now).await?;
        let mut tx = super::begin(&self.db).await?;
        let Some(user) = db::users::lock(&mut tx, bearer.user_id).await? else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        let Some(kind) = db::factors::remove(&mut tx, user.id, factor_id).await? else {
            return Err(AppError::FactorNotFound);
        };
        db::sessions::lower_to_password(&mut *tx, user.id, bearer.session_id).await?;
        let mail = factor_notice(FactorNotice::Removed, &user.email, now);
        db::outbox::enqueue(&mut tx, &mail, Some(user.id), now).await?;
        db::factors::record_factors_changed(&mut *tx, user.id, kind.into(), FactorChange::Removed).await?;
        tx.commit().await?;
        self.mail.queued.notify_one();
        Ok(())
    }

    /// Replaces the bearer's recovery codes (fresh second factor required).
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id))]
    pub async fn regenerate_recovery_codes(
        &self,
        bearer: VerifiedAccess,
        now: DateTime<Utc>,
    ) -> Result<Vec<Zeroizing<String>>, AppError> {
        self.require_fresh(&bearer, now).await?;
        let fresh = recovery_codes::generate().map_err(AppError::internal)?;
        let hashes: Vec<TokenHash> = fresh.iter().map(|c| c.hash).collect();
        let mut tx = super::begin(&self.db).await?;
        let Some(user) = db::users::lock(&mut tx, bearer.user_id).await? else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        if !db::factors::has_live_factor(&mut *tx, user.id).await? {
            return Err(AppError::NoFactor);
        }
        db::factors::replace_recovery_codes(&mut tx, user.id, &hashes, now).await?;
        let mail = factor_notice(FactorNotice::RecoveryCodesRegenerated, &user.email, now);
        db::outbox::enqueue(&mut tx, &mail, Some(user.id), now).await?;
        db::factors::record_factors_changed(
            &mut *tx,
            user.id,
            FactorCredential::RecoveryCodes,
            FactorChange::Updated,
        )
        .await?;
        tx.commit().await?;
        self.mail.queued.notify_one();
        Ok(fresh.into_iter().map(|c| c.code).collect())
    }

    /// Proves a second factor again within the bearer's session: a new
    /// access token with a fresh `auth_time`, and the session keeps the
    /// raised assurance.
    #[tracing::instrument(skip_all, fields(user_id = %bearer.user_id, session_id = %bearer.session_id))]
    pub async fn step_up(
        &self,
        bearer: VerifiedAccess,
        proof: Option<Proof>,
        now: DateTime<Utc>,
    ) -> Result<SteppedUp, AppError> {
        let proof = parse_proof(proof)?;
        let user = self.bearer_user(&bearer, now).await?;
        if !db::factors::has_live_factor(&self.db, user.id).await? {
            return Err(AppError::NoFactor);
        }
        let (throttle_key, charge) = self.charge_code_attempt(user.id, now).await?;
        let Some(methods) = self.prove_second_factor(user.id, &proof, now).await? else {
            charge.checked();
            return Err(match proof {
                ParsedProof::Passkey(_) => AppError::PasskeyProofInvalid,
                ParsedProof::Totp(_) | ParsedProof::RecoveryCode(_) => AppError::InvalidCode,
            });
        };
        let mut tx = super::begin(&self.db).await?;
        let Some((idle_expires_at, session)) =
            db::sessions::lock_live(&mut tx, user.id, bearer.session_id, now).await?
        else {
            return Err(AppError::Token(TokenProblem::SessionRevoked));
        };
        let raised = session.assurance.with_proofs(&methods, now);
        db::sessions::record_proof(&mut *tx, user.id, bearer.session_id, &raised, now).await?;
        db::throttle::forgive(&mut *tx, &throttle_key).await?;
        tx.commit().await?;
        charge.checked();
        let access = self
            .tokens
            .issue(
                &Subject {
                    user_id: user.id,
                    session_id: bearer.session_id,
                    roles: &user.roles,
                    assurance: &raised,
                    mfa_enrollment_required: false,
                },
                now,
                idle_expires_at,
            )
            .map_err(AppError::internal)?;
        Ok(SteppedUp {
            access_token: access.token,
            expires_in: access.expires_in,
        })
    }

    /// Finishes a Login that asked for a second factor.
    #[tracing::instrument(skip_all)]
    pub async fn complete_login(
        &self,
        mfa_token: &str,
        proof: Option<Proof>,
        client: &crate::domain::ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(super::TokenPair, User), AppError> {
        if mfa_token.trim().is_empty() {
            return Err(AppError::invalid("mfa_token", Invalid::required()));
        }
        let proof = parse_proof(proof)?;
        let hash =
            opaque::parse_presented(TokenKind::MfaChallenge, mfa_token).ok_or(AppError::MfaTokenInvalid)?;
        // The attempt is taken before the proof is checked, so concurrent
        // guesses cannot outrun the limit of a token.
        let challenge = db::factors::take_attempt(&self.db, &hash, now)
            .await?
            .ok_or(AppError::MfaTokenInvalid)?;
        // The password was proven with this token: the state of the account
        // is no secret to its holder.
        if challenge.disabled {
            return Err(AppError::AccountDisabled);
        }
        if !challenge.stamp_ok {
            return Err(AppError::MfaTokenInvalid);
        }
        let charge = self
            .charge_check(&challenge.throttle_key, &Backoff::LOGIN, now)
            .await?;
        let Some(methods) = self.prove_second_factor(challenge.user_id, &proof, now).await? else {
            charge.checked();
            return Err(AppError::InvalidCredentials);
        };
        // Disabled meanwhile: the session's statement refuses to start.
        let Some(user) = db::users::by_id(&self.db, challenge.user_id).await? else {
            return Err(AppError::MfaTokenInvalid);
        };
        let assurance = Assurance::password(challenge.created_at).with_proofs(&methods, now);
        let mut tx = super::begin(&self.db).await?;
        if !db::factors::consume_challenge(&mut tx, &hash, now).await? {
            return Err(AppError::MfaTokenInvalid);
        }
        let pair = self
            .start_session_in(
                &mut *tx,
                &user,
                db::sessions::SessionProof {
                    assurance,
                    mfa_enrollment_required: false,
                },
                &challenge.throttle_key,
                client,
                now,
            )
            .await?;
        tx.commit().await?;
        charge.checked();
        Ok((pair, user))
    }

    /// Removes every factor and recovery code of an account, ends its
    /// sessions and tells its owner (AdminService.ResetUserFactors).
    #[tracing::instrument(skip_all)]
    pub async fn reset_user_factors(&self, user_id: &str, now: DateTime<Utc>) -> Result<User, AppError> {
        let user_id = parse_uuid("user_id", user_id)?;
        let mut tx = super::begin(&self.db).await?;
        let Some(user) = db::users::lock(&mut tx, user_id).await? else {
            return Err(AppError::UserNotFound);
        };
        db::factors::remove_all(&mut tx, user.id).await?;
        // Links and pending logins issued before the reset die with it.
        db::users::rotate_security_stamp(&mut tx, user.id).await?;
        let mail = factor_notice(FactorNotice::Reset, &user.email, now);
        db::outbox::enqueue(&mut tx, &mail, Some(user.id), now).await?;
        db::factors::record_factors_changed(&mut *tx, user.id, FactorCredential::All, FactorChange::Removed)
            .await?;
        db::sessions::revoke_all_for_user(&mut *tx, user.id, None, EndReason::FactorsReset, now).await?;
        tx.commit().await?;
        self.cache.evict_user(user.id);
        self.mail.queued.notify_one();
        Ok(user)
    }

    /// The Login answer for an account with a live factor: a challenge
    /// instead of a session.
    pub(super) async fn challenge_second_factor(
        &self,
        user_id: Uuid,
        throttle_key: &str,
        now: DateTime<Utc>,
    ) -> Result<MfaChallenge, AppError> {
        let token = opaque::NewToken::generate(TokenKind::MfaChallenge).map_err(AppError::internal)?;
        let expires_at = now + chrono_duration(MFA_TOKEN_TTL);
        db::factors::insert_challenge(
            &self.db,
            &db::factors::NewChallenge {
                hash: &token.hash,
                user_id,
                throttle_key,
                expires_at,
            },
            now,
        )
        .await?;
        let mut factors = Vec::new();
        if db::factors::live_totp_count(&self.db, user_id).await? > 0 {
            factors.push(FactorKindOrCode::Totp);
        }
        let passkey_options = self.passkey_second_factor_options(user_id, now).await?;
        if passkey_options.is_some() {
            factors.push(FactorKindOrCode::Passkey);
        }
        if db::factors::recovery_codes_left(&self.db, user_id).await? > 0 {
            factors.push(FactorKindOrCode::RecoveryCode);
        }
        Ok(MfaChallenge {
            mfa_token: token.secret,
            factors,
            passkey_options,
            expires_at,
            expires_in: seconds_until(now, expires_at),
        })
    }
}

/// What a new live factor brings, in the transaction that made it live:
/// recovery codes when it is the account's `first` (returned once), the
/// bearer's session counted as proven by it (`method`), and the end of a
/// required enrolment.
pub(super) async fn welcome_factor(
    tx: &mut sqlx::PgConnection,
    user_id: Uuid,
    session_id: Uuid,
    method: AuthMethod,
    first: bool,
    now: DateTime<Utc>,
) -> Result<Vec<Zeroizing<String>>, AppError> {
    let mut codes = Vec::new();
    if first {
        let fresh = recovery_codes::generate().map_err(AppError::internal)?;
        let hashes: Vec<TokenHash> = fresh.iter().map(|c| c.hash).collect();
        db::factors::replace_recovery_codes(&mut *tx, user_id, &hashes, now).await?;
        codes = fresh.into_iter().map(|c| c.code).collect();
    }
    let Some((_, proof)) = db::sessions::lock_live(&mut *tx, user_id, session_id, now).await? else {
        return Err(AppError::Token(TokenProblem::SessionRevoked));
    };
    let raised = proof.assurance.with_proof(method, now);
    db::sessions::record_proof(&mut *tx, user_id, session_id, &raised, now).await?;
    db::sessions::clear_enrollment_required(&mut *tx, user_id).await?;
    Ok(codes)
}

/// How long a Login waits for its second factor.
const MFA_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// A kind of proof CompleteLogin accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorKindOrCode {
    Totp,
    RecoveryCode,
    Passkey,
}

/// Login's answer when a second factor is due.
pub struct MfaChallenge {
    pub mfa_token: secrecy::SecretString,
    pub factors: Vec<FactorKindOrCode>,
    /// Request options naming the account's passkeys, when it has any.
    pub passkey_options: Option<serde_json::Value>,
    pub expires_at: DateTime<Utc>,
    pub expires_in: Duration,
}
