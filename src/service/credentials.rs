//! Who is calling: the credential checks the transports run before a use
//! case. A user proves who they are with an access token for authd's own
//! audience; a service with its key (`sk_…`) or with a token that key minted
//! (client_credentials) for authd's audience. A service token is worth what
//! its key is worth, no more: its scopes are the token's within the
//! account's current ones, and deleting the key ends it at once here.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::crypto::jwt::AccessTokens;
pub use crate::crypto::jwt::VerifiedAccess;
use crate::domain::Scope;
use crate::error::{AppError, TokenProblem};
use crate::service::keys::{Credential, ServiceIdentity, ServiceKeys};

/// A service key's prefix; anything else presented as a service's
/// credential is read as a token.
const SERVICE_KEY_PREFIX: &str = "sk_";

/// The credential checks. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    tokens: AccessTokens,
    keys: ServiceKeys,
}

impl Credentials {
    pub fn new(tokens: AccessTokens, keys: ServiceKeys) -> Self {
        Self { tokens, keys }
    }

    /// A user's access token for authd (signature, claims, lifetime; its
    /// session is the use case's business).
    pub fn user(&self, token: &str, now: DateTime<Utc>) -> Result<VerifiedAccess, TokenProblem> {
        self.tokens.verify(token, now)
    }

    /// Whether `presented` is a service key rather than a token.
    pub fn is_key(presented: &str) -> bool {
        presented.starts_with(SERVICE_KEY_PREFIX)
    }

    /// The live service behind a key or a service token; `None` for anything
    /// that is neither (a user's token included).
    pub async fn service(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<ServiceIdentity>>, AppError> {
        if Self::is_key(presented) {
            return self.keys.identify(presented, now).await;
        }
        let Ok(token) = self.tokens.verify_service(presented, now, false) else {
            return Ok(None);
        };
        let Some(key) = self.keys.identify_by_key_id(token.key_id, now).await? else {
            return Ok(None);
        };
        Ok(narrowed(&key, &token.name, &token.scopes))
    }

    /// Like [`Self::service`] from memory only: a key cached as live, or a
    /// token whose key is (what a client past its failure limit still gets).
    pub fn service_in_memory(&self, presented: &str, now: DateTime<Utc>) -> Option<Arc<ServiceIdentity>> {
        if Self::is_key(presented) {
            return self.keys.identify_in_memory(presented, now);
        }
        // Checking the signature costs no database read, so a client past
        // its limit still gets this: the token is worth what its key is.
        let token = self.tokens.verify_service(presented, now, false).ok()?;
        let key = self.keys.identify_by_key_id_in_memory(token.key_id, now)?;
        narrowed(&key, &token.name, &token.scopes)
    }

    /// Why a credential that is no live service's was refused: a user's
    /// valid token is a credential without the scope; an expired token is
    /// expired; anything else is invalid.
    pub fn refusal_of(&self, presented: &str, scope: Scope, now: DateTime<Utc>) -> AppError {
        if Self::is_key(presented) {
            return AppError::Token(TokenProblem::Invalid);
        }
        let as_user = self.tokens.verify(presented, now);
        if as_user.is_ok() {
            return AppError::MissingScope(scope);
        }
        let expired = as_user == Err(TokenProblem::Expired)
            || self.tokens.verify_service(presented, now, false) == Err(TokenProblem::Expired);
        AppError::Token(if expired {
            TokenProblem::Expired
        } else {
            TokenProblem::Invalid
        })
    }
}

/// The service a token names, with the token's scopes that the account
/// still has; `None` when the token names another account than its key's.
fn narrowed(key: &ServiceIdentity, name: &str, token_scopes: &[String]) -> Option<Arc<ServiceIdentity>> {
    if key.name != name {
        return None;
    }
    let scopes = key
        .scopes
        .iter()
        .copied()
        .filter(|scope| token_scopes.iter().any(|s| s == scope.as_str()))
        .collect();
    Some(Arc::new(ServiceIdentity {
        scopes,
        credential: Credential::Token,
        ..key.clone()
    }))
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_service_token_keeps_only_the_scopes_its_account_still_has() {
        let key = ServiceIdentity {
            account_id: Uuid::new_v4(),
            key_id: Uuid::new_v4(),
            name: "billing".into(),
            scopes: vec![Scope::UsersRead, Scope::TokensIntrospect],
            credential: Credential::Key,
        };
        let token = narrowed(&key, "billing", &["users.read".into(), "users.write".into()]).unwrap();
        assert_eq!(token.scopes, vec![Scope::UsersRead]);
        assert_eq!(token.credential, Credential::Token);
        assert!(narrowed(&key, "ledger", &["users.read".into()]).is_none());
    }
}
