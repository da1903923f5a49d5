use super::{FieldReason, Invalid};

/// An optional handle: 3–32 characters of `[A-Za-z0-9._-]`, starting with a
/// letter or digit. Never contains '@', so a login string is unambiguous.
/// Unique case-insensitively (the database enforces it on `lower(username)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 32;

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let s = input.trim();
        let len = s.chars().count();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            let reason = if len < Self::MIN_LEN {
                FieldReason::TooShort
            } else {
                FieldReason::TooLong
            };
            let description = format!("must be {} to {} characters long", Self::MIN_LEN, Self::MAX_LEN);
            return Err(Invalid::new(reason, description));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Invalid::characters(
                "may only contain letters a-z, digits, '.', '_' and '-'",
            ));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(Invalid::format("must start with a letter or digit"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Username;

    #[test]
    fn accepts_conservative_handles() {
        for ok in ["bob", "Alice_99", "j.doe-x", "a1b", &"x".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "ab",
            &"x".repeat(33),
            "bob@example.com",
            "_bob",
            ".bob",
            "bo b",
            "böb",
            "bo\nb",
            "bob;--",
            "Ⅻbob",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::Username;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn never_panics_and_accepts_only_the_safe_set(input in any::<String>()) {
                if let Ok(name) = Username::parse(&input) {
                    let s = name.as_str();
                    prop_assert!((Username::MIN_LEN..=Username::MAX_LEN).contains(&s.len()));
                    prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
                    prop_assert!(!s.contains('@'));
                    prop_assert_eq!(Username::parse(s), Ok(name.clone()));
                }
            }

            #[test]
            fn valid_handles_round_trip(name in "[A-Za-z0-9][A-Za-z0-9._-]{2,31}", pad in " {0,2}") {
                let parsed = Username::parse(&format!("{pad}{name}{pad}"));
                prop_assert_eq!(parsed.as_ref().map(Username::as_str), Ok(name.as_str()));
            }

            #[test]
            fn anything_outside_the_set_is_refused(
                prefix in "[a-z]{1,10}",
                bad in "[^A-Za-z0-9._\\- ]",
                suffix in "[a-z]{1,10}",
            ) {
                let name = format!("{prefix}{bad}{suffix}");
                prop_assert!(Username::parse(&name).is_err());
            }
        }
    }
}
