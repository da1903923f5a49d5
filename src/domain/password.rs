use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

/// A password after NFKC normalisation, so that every Unicode form of the
/// same text hashes alike. Kept in a `SecretString`: it never prints.
#[derive(Clone)]
pub struct Password(SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

/// Upper bound on what authd accepts, in code points (NIST SP 800-63B asks
/// for at least 64).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Raw input larger than this cannot be 128 code points even after NFKC
/// expansion is undone, so it is refused before any normalisation work.
const MAX_PASSWORD_BYTES: usize = MAX_PASSWORD_CHARS * 4;

impl Password {
    /// Normalises without applying the policy: used for the password of a
    /// Login, which must match whatever the policy was when it was set.
    pub fn normalize(input: &str) -> Result<Self, String> {
        if input.is_empty() {
            return Err("is required".into());
        }
        if input.len() > MAX_PASSWORD_BYTES {
            return Err(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
        }
        let normalized: String = input.nfkc().collect();
        if normalized.chars().count() > MAX_PASSWORD_CHARS {
            return Err(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
        }
        Ok(Self(SecretString::from(normalized)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn char_count(&self) -> usize {
        self.expose().chars().count()
    }
}

/// What a new password must satisfy (NIST SP 800-63B: length and a block
/// list, no composition rules).
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_chars: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_chars: 8 }
    }
}

impl PasswordPolicy {
    /// Parses and checks a new password. `identifiers` are the account's
    /// email and username, which a password must not equal or contain.
    pub fn parse_new(&self, input: &str, identifiers: &[&str]) -> Result<Password, String> {
        let password = Password::normalize(input)?;
        let chars = password.char_count();
        if chars < self.min_chars {
            return Err(format!(
                "must be at least {} characters (a few unrelated words make a strong, memorable password)",
                self.min_chars
            ));
        }
        let lower = password.expose().to_lowercase();
        for id in identifiers.iter().filter(|id| !id.is_empty()) {
            let id = id.to_lowercase();
            let local = id.split('@').next().unwrap_or_default();
            if lower.contains(&id) || (local.chars().count() >= 4 && lower.contains(local)) {
                return Err("must not contain your email address or username".into());
            }
        }
        if crate::domain::password::common::is_common(&lower) {
            return Err(
                "is too common and appears in lists of leaked passwords; choose something less predictable"
                    .into(),
            );
        }
        Ok(password)
    }
}

mod common {
    /// A small built-in list of the most used passwords; see SECURITY.md.
    const COMMON: &[&str] = &[
        "password",
        "password1",
        "password123",
        "12345678",
        "123456789",
        "1234567890",
        "qwertyuiop",
        "qwerty123",
        "iloveyou",
        "sunshine",
        "princess",
        "football",
        "baseball",
        "welcome1",
        "letmein1",
        "passw0rd",
        "abc12345",
        "11111111",
        "00000000",
        "87654321",
        "qwerty12",
        "trustno1",
        "1q2w3e4r",
        "zaq12wsx",
        "superman",
        "starwars",
        "whatever",
        "dragon12",
        "monkey12",
        "changeme",
        "administrator",
        "1qaz2wsx",
        "asdfghjkl",
        "123123123",
        "password!",
    ];

    pub fn is_common(lowercased: &str) -> bool {
        COMMON.contains(&lowercased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfkc_makes_equivalent_forms_equal() {
        // "ﬁ" ligature and full-width letters normalise to ASCII.
        let a = Password::normalize("ﬁnance Ｐａｓｓ").map(|p| p.expose().to_owned());
        assert_eq!(a, Ok("finance Pass".to_owned()));
        // Composed and decomposed é are one password.
        let composed = Password::normalize("caf\u{e9}-secret").map(|p| p.expose().to_owned());
        let decomposed = Password::normalize("cafe\u{301}-secret").map(|p| p.expose().to_owned());
        assert_eq!(composed, decomposed);
    }

    #[test]
    fn length_is_counted_in_code_points() {
        let policy = PasswordPolicy::default();
        assert!(policy.parse_new("ääääääää", &[]).is_ok());
        assert!(policy.parse_new("äääääää", &[]).is_err());
        assert!(policy.parse_new(&"😀".repeat(128), &[]).is_ok());
        assert!(policy.parse_new(&"😀".repeat(129), &[]).is_err());
        assert!(Password::normalize(&"a".repeat(1_000_000)).is_err());
        assert!(Password::normalize("").is_err());
    }

    #[test]
    fn common_and_personal_passwords_are_refused() {
        let policy = PasswordPolicy::default();
        assert!(policy.parse_new("Password1", &[]).is_err());
        assert!(
            policy
                .parse_new("alice.smith-2024", &["alice.smith@example.com"])
                .is_err()
        );
        assert!(policy.parse_new("xx-bobby99-xx", &["a@b.co", "bobby99"]).is_err());
        assert!(
            policy
                .parse_new("correct horse battery", &["alice@example.com"])
                .is_ok()
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let p = Password::normalize("hunter2-secret").map(|p| format!("{p:?}"));
        assert_eq!(p.as_deref(), Ok("Password([REDACTED])"));
    }
}
