use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

use super::{FieldReason, Invalid};

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
/// Estimated guesses a new password must withstand.
const MIN_GUESSES: u64 = 1_000_000;
/// Raw input larger than this cannot be 128 code points even after NFKC
/// expansion is undone, so it is refused before any normalisation work.
const MAX_PASSWORD_BYTES: usize = MAX_PASSWORD_CHARS * 4;

impl Password {
    /// Normalises without applying the policy: used for the password of a
    /// Login, which must match whatever the policy was when it was set.
    pub fn normalize(input: &str) -> Result<Self, Invalid> {
        if input.is_empty() {
            return Err(Invalid::required());
        }
        if input.len() > MAX_PASSWORD_BYTES {
            return Err(Invalid::too_long(format!(
                "must be at most {MAX_PASSWORD_CHARS} characters"
            )));
        }
        let normalized: String = input.nfkc().collect();
        if normalized.chars().count() > MAX_PASSWORD_CHARS {
            return Err(Invalid::too_long(format!(
                "must be at most {MAX_PASSWORD_CHARS} characters"
            )));
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
    /// Loads the strength estimator's dictionaries (tens of milliseconds,
    /// once) so the first Register does not pay for it.
    pub fn warm_up() {
        let _ = zxcvbn::zxcvbn("warm up the dictionaries", &[]);
    }

    /// Parses and checks a new password. `identifiers` are the account's
    /// email and username, which a password must not equal or contain.
    pub fn parse_new(&self, input: &str, identifiers: &[&str]) -> Result<Password, Invalid> {
        let password = Password::normalize(input)?;
        let chars = password.char_count();
        if chars < self.min_chars {
            return Err(Invalid::new(
                FieldReason::TooShort,
                format!(
                    "must be at least {} characters (a few unrelated words make a strong, memorable password)",
                    self.min_chars
                ),
            ));
        }
        let lower = password.expose().to_lowercase();
        for id in identifiers.iter().filter(|id| !id.is_empty()) {
            let id = id.to_lowercase();
            let local = id.split('@').next().unwrap_or_default();
            if lower.contains(&id) || (local.chars().count() >= 4 && lower.contains(local)) {
                return Err(Invalid::new(
                    FieldReason::ContainsIdentifier,
                    "must not contain your email address or username",
                ));
            }
        }
        // The blocklist: zxcvbn's dictionaries of common and leaked passwords,
        // names and words, with l33t, keyboard-pattern, repeat and sequence
        // detection. Below a million guesses a password falls to a throttled
        // online attack, so it is refused (NIST SP 800-63B 3.1.1.2).
        let entropy = zxcvbn::zxcvbn(password.expose(), identifiers);
        if entropy.guesses() < MIN_GUESSES {
            let hint = entropy
                .feedback()
                .and_then(|f| f.warning())
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            return Err(Invalid::new(
                FieldReason::TooCommon,
                format!(
                    "is too easy to guess{hint}; a few unrelated words make a strong, memorable password"
                ),
            ));
        }
        Ok(password)
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
        assert!(policy.parse_new("äöüßéñçå", &[]).is_ok());
        assert!(policy.parse_new("äöüßéñç", &[]).is_err());
        // 128 distinct CJK ideographs: long, and no pattern zxcvbn objects to.
        let long: String = (0..128u32)
            .filter_map(|i| char::from_u32(0x4E00 + i * 37))
            .collect();
        assert!(policy.parse_new(&long, &[]).is_ok());
        assert!(policy.parse_new(&format!("{long}x"), &[]).is_err());
        assert!(Password::normalize(&"a".repeat(1_000_000)).is_err());
        assert!(Password::normalize("").is_err());
    }

    #[test]
    fn common_and_personal_passwords_are_refused() {
        let policy = PasswordPolicy::default();
        for common in [
            "Password1",
            "qwertyuiop",
            "iloveyou",
            "aaaaaaaaaaaa",
            "12345678910",
            "P@ssw0rd123",
            "abcdefghijk",
        ] {
            assert!(policy.parse_new(common, &[]).is_err(), "{common}");
        }
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
