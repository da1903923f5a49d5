//! Opaque random secrets (refresh, reset and email verification tokens): 256 bits from the OS
//! CSPRNG, handed out once, stored only as SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// What an opaque token is for. The prefix makes a leaked token easy to
/// recognise (secret scanners) and keeps one kind from being accepted as the
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Refresh,
    PasswordReset,
    /// A link that proves an address (VerifyEmail).
    EmailVerification,
    /// A service account's key (`authorization: Bearer sk_…`).
    ServiceKey,
    /// A login waiting for its second factor (CompleteLogin).
    MfaChallenge,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Refresh => "rt_",
            Self::PasswordReset => "pr_",
            Self::EmailVerification => "ev_",
            Self::ServiceKey => "sk_",
            Self::MfaChallenge => "mfa_",
        }
    }
}

/// SHA-256 of a token: what the database stores and looks up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash([REDACTED])")
    }
}

impl TokenHash {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A freshly generated token and its hash.
pub struct NewToken {
    pub secret: SecretString,
    pub hash: TokenHash,
}

impl NewToken {
    pub fn generate(kind: TokenKind) -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)?;
        let secret = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes));
        let hash = hash_token(&secret);
        Ok(Self {
            secret: SecretString::from(secret),
            hash,
        })
    }

    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// Hashes a presented token if it has the shape of `kind`; `None` for
/// anything else, which callers treat exactly like an unknown token.
pub fn parse_presented(kind: TokenKind, presented: &str) -> Option<TokenHash> {
    let body = presented.trim().strip_prefix(kind.prefix())?;
    // 32 bytes in unpadded base64url are 43 characters.
    if body.len() != 43
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(hash_token(presented.trim()))
}

fn hash_token(secret: &str) -> TokenHash {
    TokenHash(Sha256::digest(secret.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_to_their_hash() -> Result<(), getrandom::Error> {
        let t = NewToken::generate(TokenKind::Refresh)?;
        assert!(t.expose().starts_with("rt_"));
        assert_eq!(parse_presented(TokenKind::Refresh, t.expose()), Some(t.hash));
        assert_eq!(parse_presented(TokenKind::PasswordReset, t.expose()), None);
        assert_eq!(parse_presented(TokenKind::EmailVerification, t.expose()), None);
        let ev = NewToken::generate(TokenKind::EmailVerification)?;
        assert!(ev.expose().starts_with("ev_") && ev.expose().len() == 46);
        assert_eq!(
            parse_presented(TokenKind::EmailVerification, ev.expose()),
            Some(ev.hash)
        );
        let other = NewToken::generate(TokenKind::Refresh)?;
        assert_ne!(t.expose(), other.expose());
        Ok(())
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "rt_",
            "rt_short",
            "pr_AAAA",
            "eyJhbGciOi.x.y",
            &format!("rt_{}", "a".repeat(44)),
        ] {
            assert_eq!(parse_presented(TokenKind::Refresh, bad), None, "{bad}");
        }
    }
}
