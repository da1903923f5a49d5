//! Tokens for one destination: a service's own token (client_credentials),
//! a user's token narrowed for another service (RFC 8693 token exchange),
//! and impersonation. Every grant only narrows: the audience is one that is
//! registered, scopes and roles a subset of what the caller or the subject
//! has, the lifetime within the subject's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Core;
use crate::crypto::jwt::{Delegation, ServiceGrant, UserToken};
use crate::db;
use crate::domain::token_request::TOKEN_TYPE_ACCESS;
use crate::domain::{ClientInfo, Grant, Scope};
use crate::error::{AppError, TokenProblem};
use crate::service::keys::{Credential, ServiceIdentity};

/// How long an impersonating token (and its session) lives.
const IMPERSONATION_TTL: Duration = Duration::from_secs(300);
/// Exchanges of an exchanged token allowed in a row: the `act` chain
/// grows with each and every verifier reads it.
const MAX_ACTORS: usize = 5;

/// A minted token as the transports answer it.
#[derive(Debug)]
pub struct GrantedToken {
    pub access_token: String,
    pub expires_in: Duration,
    /// Scopes (client_credentials) or roles (exchange), space-separated.
    pub scope: String,
    /// RFC 8693 `issued_token_type`, for an exchange.
    pub issued_token_type: Option<&'static str>,
}

impl Core {
    /// Answers a token request from the service `caller`.
    #[tracing::instrument(skip_all)]
    pub async fn grant_token(
        &self,
        caller: &ServiceIdentity,
        grant: Grant,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<GrantedToken, AppError> {
        match grant {
            Grant::ClientCredentials { audience, scopes } => {
                self.client_credentials(caller, audience, scopes, now)
            }
            Grant::Exchange {
                audience,
                roles,
                subject_token,
            } => self.exchange(caller, &audience, roles, &subject_token, now).await,
            Grant::Impersonate {
                audience,
                roles,
                user_id,
            } => {
                self.impersonate(caller, &audience, roles, user_id, client, now)
                    .await
            }
        }
    }

    fn registered(&self, audience: &str) -> Result<(), AppError> {
        if self.tokens.is_registered(audience) {
            Ok(())
        } else {
            Err(AppError::TargetInvalid)
        }
    }

    fn client_credentials(
        &self,
        caller: &ServiceIdentity,
        audience: Option<String>,
        scopes: Option<Vec<String>>,
        now: DateTime<Utc>,
    ) -> Result<GrantedToken, AppError> {
        // Only the key mints: a token minting its successor would outlive
        // the key's deletion forever.
        if caller.credential != Credential::Key {
            return Err(AppError::Token(TokenProblem::Invalid));
        }
        let audience = audience.unwrap_or_else(|| self.tokens.own_audience().to_owned());
        self.registered(&audience)?;
        let held: Vec<String> = caller.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let scopes = narrow(&held, scopes)?;
        let issued = self
            .tokens
            .issue_service(
                &ServiceGrant {
                    name: &caller.name,
                    key_id: caller.key_id,
                    scopes: &scopes,
                    audience: &audience,
                },
                now,
            )
            .map_err(AppError::internal)?;
        self.metrics.token_granted("client_credentials");
        Ok(GrantedToken {
            access_token: issued.token,
            expires_in: issued.expires_in,
            scope: scopes.join(" "),
            issued_token_type: None,
        })
    }

    async fn exchange(
        &self,
        caller: &ServiceIdentity,
        audience: &str,
        roles: Option<Vec<String>>,
        subject_token: &str,
        now: DateTime<Utc>,
    ) -> Result<GrantedToken, AppError> {
        if !caller.may(Scope::TokensExchange) {
            return Err(AppError::MissingScope(Scope::TokensExchange));
        }
        self.registered(audience)?;
        let UserToken { access, claims } = self
            .tokens
            .read_user_token(subject_token, now)
            .map_err(|_| invalid_subject())?;
        let chain = claims.act.as_ref().map_or(0, |act| act.depth());
        if access.mfa_enrollment_required || chain >= MAX_ACTORS {
            return Err(invalid_subject());
        }
        if self.live_session_user(&access, now).await?.is_none() {
            return Err(invalid_subject());
        }
        let roles = narrow(&claims.roles, roles)?;
        let issued = self
            .tokens
            .issue_delegated(
                &claims,
                Delegation {
                    audience,
                    actor: &caller.name,
                    roles: roles.clone(),
                    not_after: Some(claims.exp),
                    ttl: self.tokens.ttl(),
                },
                now,
            )
            .map_err(AppError::internal)?;
        tracing::info!(
            target: "authd::audit",
            service_account = %caller.name,
            user_id = %access.user_id,
            session_id = %access.session_id,
            audience,
            outcome = "ok",
            "token exchanged"
        );
        self.metrics.token_granted("token_exchange");
        Ok(GrantedToken {
            access_token: issued.token,
            expires_in: issued.expires_in,
            scope: roles.join(" "),
            issued_token_type: Some(TOKEN_TYPE_ACCESS),
        })
    }

    async fn impersonate(
        &self,
        caller: &ServiceIdentity,
        audience: &str,
        roles: Option<Vec<String>>,
        user_id: Uuid,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<GrantedToken, AppError> {
        if !caller.may(Scope::UsersImpersonate) {
            return Err(AppError::MissingScope(Scope::UsersImpersonate));
        }
        self.registered(audience)?;
        let refused = AppError::GrantInvalid {
            field: "requested_subject",
        };
        let Some(user) = db::users::by_id(&self.db, user_id).await? else {
            return Err(refused);
        };
        if user.disabled {
            return Err(refused);
        }
        let roles = narrow(&user.roles, roles)?;
        let session_id = Uuid::new_v4();
        let ends = now + super::chrono_duration(IMPERSONATION_TTL);
        let label = format!("impersonation by svc:{}", caller.name);
        let ip = client.ip_text();
        // Disabled between the read and the insert: refused all the same.
        if !db::sessions::start_impersonation(&self.db, session_id, user.id, ends, &label, ip.as_deref(), now)
            .await?
        {
            return Err(refused);
        }
        let subject = authd_token_rules::UserAccess {
            iss: String::new(),
            aud: String::new(),
            sub: user.id.to_string(),
            sid: session_id.to_string(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: String::new(),
            roles: Vec::new(),
            // Nothing about the user was proven.
            amr: Vec::new(),
            acr: String::new(),
            auth_time: 0,
            mfa_enrollment_required: false,
            client_id: None,
            act: None,
        };
        let issued = self
            .tokens
            .issue_delegated(
                &subject,
                Delegation {
                    audience,
                    actor: &caller.name,
                    roles: roles.clone(),
                    not_after: None,
                    ttl: IMPERSONATION_TTL,
                },
                now,
            )
            .map_err(AppError::internal)?;
        tracing::warn!(
            target: "authd::audit",
            service_account = %caller.name,
            user_id = %user.id,
            session_id = %session_id,
            audience,
            outcome = "ok",
            "impersonation token issued"
        );
        self.metrics.token_granted("impersonation");
        Ok(GrantedToken {
            access_token: issued.token,
            expires_in: issued.expires_in,
            scope: roles.join(" "),
            issued_token_type: Some(TOKEN_TYPE_ACCESS),
        })
    }
}

fn invalid_subject() -> AppError {
    AppError::GrantInvalid {
        field: "subject_token",
    }
}

/// `asked` when every one of them is `held` (`None`: all of `held`), in
/// the order asked; else SCOPE_INVALID.
fn narrow(held: &[String], asked: Option<Vec<String>>) -> Result<Vec<String>, AppError> {
    match asked {
        None => Ok(held.to_vec()),
        Some(asked) if asked.iter().all(|a| held.contains(a)) => Ok(asked),
        Some(_) => Err(AppError::ScopeInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::narrow;
    use crate::error::AppError;

    #[test]
    fn a_grant_only_narrows() {
        let held = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(narrow(&held, None).unwrap(), held);
        assert_eq!(
            narrow(&held, Some(vec!["b".into()])).unwrap(),
            vec!["b".to_owned()]
        );
        assert!(matches!(
            narrow(&held, Some(vec!["b".into(), "c".into()])),
            Err(AppError::ScopeInvalid)
        ));
        assert!(matches!(
            narrow(&[], Some(vec!["a".into()])),
            Err(AppError::ScopeInvalid)
        ));
    }
}
