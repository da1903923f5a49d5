use super::{Invalid, has_control};

/// An email address: trimmed, syntactically plausible, stored as given.
/// Uniqueness is case-insensitive (enforced by the database on `lower(email)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let s = input.trim();
        if s.is_empty() {
            return Err(Invalid::required());
        }
        if s.len() > Self::MAX_LEN {
            return Err(Invalid::too_long(format!(
                "must be at most {} bytes",
                Self::MAX_LEN
            )));
        }
        if has_control(s) || s.chars().any(|c| c.is_whitespace() || is_invisible(c)) {
            return Err(Invalid::characters(
                "must not contain spaces, control or invisible characters",
            ));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(Invalid::format("must look like name@example.com"));
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(Invalid::format("must look like name@example.com"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(Invalid::format(
                "must not have a dot at the start or end of the name, or two in a row",
            ));
        }
        if local.chars().any(|c| "\"(),:;<>[\\]".contains(c)) {
            return Err(Invalid::characters(
                "must not contain quotes, brackets, commas or semicolons",
            ));
        }
        if !valid_domain(domain) {
            return Err(Invalid::format("must have a domain like example.com after the @"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unicode format characters (zero-width, bidi overrides, tags): invisible
/// when shown, so `bob\u{200B}@example.com` would pass for bob@example.com
/// while being another account.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{AD}'
        | '\u{600}'..='\u{605}'
        | '\u{61C}'
        | '\u{6DD}'
        | '\u{70F}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

fn valid_domain(domain: &str) -> bool {
    if domain.len() > 253 || !domain.contains('.') {
        return false;
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.chars().count() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    })
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn accepts_ordinary_addresses_and_trims() {
        for ok in [
            "a@b.co",
            "first.last+tag@example.com",
            "  Alice@Example.COM ",
            "jörg@bücher.de",
            "o'brien@example.org",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            Email::parse(" Alice@Example.com\t").map(|e| e.as_str().to_owned()),
            Ok("Alice@Example.com".to_owned())
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let too_long = format!("a@{}.com", "b".repeat(260));
        for bad in [
            "",
            "   ",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@example.com",
            "a@exa mple.com",
            "a\r\n@example.com",
            "a\0@example.com",
            "a@-example.com",
            "a@example..com",
            ".a@example.com",
            "a..b@example.com",
            "a\"b@example.com",
            "a@example.com;drop",
            "bob\u{200B}@example.com",
            "bob@exam\u{200D}ple.com",
            "\u{202E}moc.elpmaxe@bob",
            "\u{FEFF}bob@example.com",
            long_local.as_str(),
            too_long.as_str(),
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::Email;

        /// Addresses of the ordinary shape, which must always be accepted.
        fn ordinary() -> impl Strategy<Value = String> {
            (
                "[A-Za-z0-9+_-]{1,12}(\\.[A-Za-z0-9+_-]{1,12}){0,2}",
                "[a-z0-9]{1,12}(-[a-z0-9]{1,8})?",
                "[a-z]{2,8}",
            )
                .prop_map(|(local, host, tld)| format!("{local}@{host}.{tld}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn never_panics_and_accepts_only_what_it_would_accept_again(input in any::<String>()) {
                if let Ok(email) = Email::parse(&input) {
                    let s = email.as_str();
                    prop_assert!(s.len() <= Email::MAX_LEN);
                    prop_assert_eq!(s, s.trim());
                    prop_assert!(s.contains('@'));
                    prop_assert!(!s.chars().any(|c| c.is_control() || c.is_whitespace()));
                    prop_assert_eq!(Email::parse(s), Ok(email.clone()));
                }
            }

            #[test]
            fn near_misses_never_panic_and_never_pass_with_two_ats(
                parts in proptest::collection::vec(
                    prop_oneof![
                        "[a-zA-Z0-9]{1,4}",
                        Just("@".to_owned()),
                        Just(".".to_owned()),
                        Just("-".to_owned()),
                        "[ \"(),:;<>\\[\\]\u{0}\u{7f}\u{200b}\u{202e}\u{ff20}]",
                        "\\PC",
                    ],
                    0..24,
                ),
            ) {
                let input: String = parts.concat();
                if let Ok(email) = Email::parse(&input) {
                    let (local, domain) = email.as_str().rsplit_once('@').unwrap_or_default();
                    prop_assert!(!local.is_empty() && !local.contains('@'));
                    prop_assert!(domain.contains('.'));
                }
            }

            #[test]
            fn ordinary_addresses_round_trip_as_given(email in ordinary(), pad in "[ \t\n]{0,3}") {
                let parsed = Email::parse(&format!("{pad}{email}{pad}"));
                prop_assert_eq!(parsed.as_ref().map(Email::as_str), Ok(email.as_str()));
            }
        }
    }
}
