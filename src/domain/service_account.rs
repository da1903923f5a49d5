use std::fmt;

use super::{FieldReason, Invalid};

/// What a service account may do. A method of the policy table names the
/// scope it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    UsersRead,
    UsersWrite,
    TokensIntrospect,
    RevocationsWatch,
    /// Exchange a user's access token for one narrowed to another service
    /// (RFC 8693).
    TokensExchange,
    /// Mint a short-lived token acting for any enabled user, with no token
    /// of theirs: audited.
    UsersImpersonate,
    /// Own Shared Signals streams and receive their events (SSF 1.0).
    EventsReceive,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Self::UsersRead,
        Self::UsersWrite,
        Self::TokensIntrospect,
        Self::RevocationsWatch,
        Self::TokensExchange,
        Self::UsersImpersonate,
        Self::EventsReceive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsersRead => "users.read",
            Self::UsersWrite => "users.write",
            Self::TokensIntrospect => "tokens.introspect",
            Self::RevocationsWatch => "revocations.watch",
            Self::TokensExchange => "tokens.exchange",
            Self::UsersImpersonate => "users.impersonate",
            Self::EventsReceive => "events.receive",
        }
    }

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == input.trim())
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                Invalid::format(format!("must be one of {}", known.join(", ")))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service account's name: 1 to 63 of `a-z 0-9 . _ -`, starting with a
/// letter or digit (it appears in logs and metrics labels as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountName(String);

impl ServiceAccountName {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let s = input.trim();
        if s.is_empty() {
            return Err(Invalid::required());
        }
        if s.len() > 63 {
            return Err(Invalid::too_long("must be at most 63 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Invalid::characters("may only contain a-z, 0-9, '.', '_' and '-'"));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(Invalid::new(
                FieldReason::InvalidFormat,
                "must start with a letter or digit",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role a service authorizes on: 1 to 64 of `a-z 0-9 _ . : -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Role(String);

impl Role {
    pub const MAX_PER_USER: usize = 32;

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let s = input;
        if s.is_empty() {
            return Err(Invalid::required());
        }
        if s.len() > 64 {
            return Err(Invalid::too_long("each role must be at most 64 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | '-'))
        {
            return Err(Invalid::characters(
                "each role may only contain a-z, 0-9, '_', '.', ':' and '-'",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// At most 32 roles, each valid; duplicates are merged and the set is
    /// sorted, so a user's roles have one spelling.
    pub fn parse_set(inputs: &[String]) -> Result<Vec<Role>, Invalid> {
        if inputs.len() > Self::MAX_PER_USER {
            return Err(Invalid::too_long("at most 32 roles"));
        }
        let mut roles = inputs
            .iter()
            .map(|r| Self::parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        roles.sort();
        roles.dedup();
        Ok(roles)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_unknown_ones_are_refused() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Ok(scope));
        }
        assert!(Scope::parse("users.admin").is_err());
        assert!(Scope::parse("").is_err());
    }

    #[test]
    fn names_and_roles() {
        assert!(ServiceAccountName::parse("billing-api").is_ok());
        assert!(ServiceAccountName::parse("Billing").is_err());
        assert!(ServiceAccountName::parse("-x").is_err());
        assert!(ServiceAccountName::parse(&"a".repeat(64)).is_err());
        assert_eq!(
            Role::parse_set(&["b:read".into(), "a".into(), "b:read".into()])
                .unwrap()
                .iter()
                .map(Role::as_str)
                .collect::<Vec<_>>(),
            ["a", "b:read"]
        );
        assert!(Role::parse("Admin").is_err());
        assert!(Role::parse(&"r".repeat(65)).is_err());
        assert!(Role::parse_set(&vec!["r".to_owned(); 33]).is_err());
    }
}
