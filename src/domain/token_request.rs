//! A request for a token for one destination, parsed once: the parameters
//! of RFC 6749 §4.4 (client_credentials) and RFC 8693 §2.1 (token
//! exchange), as ExchangeToken and `POST /oauth2/token` both receive them.

use uuid::Uuid;

use super::{FieldReason, Invalid};

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: what a subject token is, and what authd issues.
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Scopes (or roles) one request may name.
const MAX_SCOPES: usize = 32;
/// Longest scope string accepted.
const MAX_SCOPE_LEN: usize = 2048;

/// The parameters as they arrive (empty = absent).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenRequestFields<'a> {
    pub grant_type: &'a str,
    pub audience: &'a str,
    pub scope: &'a str,
    pub subject_token: &'a str,
    pub subject_token_type: &'a str,
    pub requested_subject: &'a str,
}

/// What is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The calling service's own token; `audience` `None`: authd's own.
    ClientCredentials {
        audience: Option<String>,
        scopes: Option<Vec<String>>,
    },
    /// A user's token narrowed to `audience`, keeping `roles` of the
    /// subject's (`None`: all).
    Exchange {
        audience: String,
        roles: Option<Vec<String>>,
        subject_token: String,
    },
    /// A token acting for `user_id` with no token of theirs.
    Impersonate {
        audience: String,
        roles: Option<Vec<String>>,
        user_id: Uuid,
    },
}

/// Why a request is not one authd can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRequestError {
    /// A grant type authd does not offer (RFC 6749 `unsupported_grant_type`).
    UnsupportedGrant,
    /// A missing or malformed parameter (`invalid_request`).
    Invalid(Vec<(&'static str, Invalid)>),
}

impl Grant {
    pub fn parse(f: TokenRequestFields<'_>) -> Result<Self, TokenRequestError> {
        let mut problems = Vec::new();
        let scopes = match parse_scope(f.scope) {
            Ok(scopes) => scopes,
            Err(problem) => {
                problems.push(("scope", problem));
                None
            }
        };
        let audience = match f.audience.trim() {
            "" => None,
            a if a.len() > 256 || !a.bytes().all(|b| b.is_ascii_graphic()) => {
                problems.push(("audience", Invalid::format("must be one registered audience")));
                None
            }
            a => Some(a.to_owned()),
        };
        let grant = match f.grant_type.trim() {
            "" => {
                problems.push(("grant_type", Invalid::required()));
                None
            }
            GRANT_CLIENT_CREDENTIALS => {
                for (field, value) in [
                    ("subject_token", f.subject_token),
                    ("subject_token_type", f.subject_token_type),
                    ("requested_subject", f.requested_subject),
                ] {
                    if !value.is_empty() {
                        problems.push((field, Invalid::format("is not a parameter of client_credentials")));
                    }
                }
                Some(Grant::ClientCredentials {
                    audience: audience.clone(),
                    scopes: scopes.clone(),
                })
            }
            GRANT_TOKEN_EXCHANGE => exchange(f, audience.clone(), scopes.clone(), &mut problems),
            _ => return Err(TokenRequestError::UnsupportedGrant),
        };
        match grant {
            Some(grant) if problems.is_empty() => Ok(grant),
            _ => Err(TokenRequestError::Invalid(problems)),
        }
    }
}

fn exchange(
    f: TokenRequestFields<'_>,
    audience: Option<String>,
    roles: Option<Vec<String>>,
    problems: &mut Vec<(&'static str, Invalid)>,
) -> Option<Grant> {
    let audience = audience.or_else(|| {
        if f.audience.trim().is_empty() {
            problems.push((
                "audience",
                Invalid::new(FieldReason::Required, "is required: the service the token is for"),
            ));
        }
        None
    });
    if !matches!(
        f.subject_token_type.trim(),
        "" | TOKEN_TYPE_ACCESS | TOKEN_TYPE_JWT
    ) {
        problems.push((
            "subject_token_type",
            Invalid::format(format!("must be {TOKEN_TYPE_ACCESS} or {TOKEN_TYPE_JWT}")),
        ));
    }
    let subject = match (f.subject_token.trim(), f.requested_subject.trim()) {
        ("", "") => {
            problems.push((
                "subject_token",
                Invalid::new(
                    FieldReason::Required,
                    "is required (or requested_subject, for impersonation)",
                ),
            ));
            None
        }
        (token, "") => Some(Ok(token.to_owned())),
        ("", user) => match Uuid::parse_str(user) {
            Ok(user_id) => Some(Err(user_id)),
            Err(_) => {
                problems.push(("requested_subject", Invalid::format("must be a user id (UUID)")));
                None
            }
        },
        _ => {
            problems.push((
                "requested_subject",
                Invalid::format("give subject_token or requested_subject, not both"),
            ));
            None
        }
    };
    match (audience?, subject?) {
        (audience, Ok(subject_token)) => Some(Grant::Exchange {
            audience,
            roles,
            subject_token,
        }),
        (audience, Err(user_id)) => Some(Grant::Impersonate {
            audience,
            roles,
            user_id,
        }),
    }
}

/// RFC 6749 §3.3: space-delimited, each `%x21 / %x23-5B / %x5D-7E`;
/// empty: `None` (everything the caller may have).
fn parse_scope(scope: &str) -> Result<Option<Vec<String>>, Invalid> {
    if scope.len() > MAX_SCOPE_LEN {
        return Err(Invalid::too_long("scope is too long"));
    }
    let mut scopes: Vec<String> = Vec::new();
    for token in scope.split(' ').filter(|s| !s.is_empty()) {
        if !token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(Invalid::characters(
                "scope tokens may only hold printable ASCII without '\"' and '\\'",
            ));
        }
        if !scopes.iter().any(|s| s == token) {
            scopes.push(token.to_owned());
        }
    }
    if scopes.len() > MAX_SCOPES {
        return Err(Invalid::too_long("at most 32 scopes"));
    }
    Ok((!scopes.is_empty()).then_some(scopes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(grant_type: &'a str) -> TokenRequestFields<'a> {
        TokenRequestFields {
            grant_type,
            ..Default::default()
        }
    }

    #[test]
    fn client_credentials_needs_nothing_else() {
        assert_eq!(
            Grant::parse(fields(GRANT_CLIENT_CREDENTIALS)),
            Ok(Grant::ClientCredentials {
                audience: None,
                scopes: None
            })
        );
        let f = TokenRequestFields {
            scope: "users.read  users.read tokens.introspect",
            audience: "billing",
            ..fields(GRANT_CLIENT_CREDENTIALS)
        };
        assert_eq!(
            Grant::parse(f),
            Ok(Grant::ClientCredentials {
                audience: Some("billing".into()),
                scopes: Some(vec!["users.read".into(), "tokens.introspect".into()])
            })
        );
    }

    #[test]
    fn an_unknown_grant_is_unsupported_and_a_missing_one_invalid() {
        assert_eq!(
            Grant::parse(fields("password")),
            Err(TokenRequestError::UnsupportedGrant)
        );
        assert!(matches!(
            Grant::parse(fields("")),
            Err(TokenRequestError::Invalid(p)) if p[0].0 == "grant_type"
        ));
    }

    #[test]
    fn an_exchange_needs_an_audience_and_exactly_one_subject() {
        let named = |subject_token, requested_subject, audience| TokenRequestFields {
            subject_token,
            requested_subject,
            audience,
            ..fields(GRANT_TOKEN_EXCHANGE)
        };
        let user = Uuid::new_v4().to_string();
        assert!(matches!(
            Grant::parse(named("t", "", "billing")),
            Ok(Grant::Exchange { .. })
        ));
        assert!(matches!(
            Grant::parse(named("", &user, "billing")),
            Ok(Grant::Impersonate { .. })
        ));
        for (token, subject, audience, field) in [
            ("t", "", "", "audience"),
            ("", "", "billing", "subject_token"),
            ("t", user.as_str(), "billing", "requested_subject"),
            ("", "not-a-uuid", "billing", "requested_subject"),
        ] {
            match Grant::parse(named(token, subject, audience)) {
                Err(TokenRequestError::Invalid(p)) => {
                    assert!(p.iter().any(|(f, _)| *f == field), "{field}: {p:?}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let wrong_type = TokenRequestFields {
            subject_token_type: "urn:ietf:params:oauth:token-type:refresh_token",
            ..named("t", "", "billing")
        };
        assert!(matches!(
            Grant::parse(wrong_type),
            Err(TokenRequestError::Invalid(_))
        ));
    }

    #[test]
    fn scopes_with_forbidden_characters_are_invalid() {
        for scope in ["a\"b", "a\\b", "é", "a\tb"] {
            let f = TokenRequestFields {
                scope,
                ..fields(GRANT_CLIENT_CREDENTIALS)
            };
            assert!(
                matches!(Grant::parse(f), Err(TokenRequestError::Invalid(_))),
                "{scope:?}"
            );
        }
    }
}
