use super::{Invalid, has_control};

/// A display name: trimmed, at most 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    pub const MAX_LEN: usize = 200;

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let s = input.trim();
        if s.chars().count() > Self::MAX_LEN {
            return Err(Invalid::too_long(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if has_control(s) {
            return Err(Invalid::characters("must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number normalised to E.164 (`+` and 8–15 digits). Spaces, dashes,
/// dots and parentheses in the input are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let s = input.trim();
        if s.len() > 32 {
            return Err(Invalid::too_long(
                "must be a phone number in international form, like +15551234567",
            ));
        }
        let Some(rest) = s.strip_prefix('+') else {
            return Err(Invalid::format(
                "must start with + and the country code, like +15551234567",
            ));
        };
        let mut digits = String::with_capacity(16);
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(Invalid::characters("may only contain digits after the +")),
            }
        }
        if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
            return Err(Invalid::format(
                "must have 8 to 15 digits after the +, not starting with 0",
            ));
        }
        Ok(Self(format!("+{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute http(s) URL of an image, at most 2048 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUrl(String);

impl ImageUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let s = input.trim();
        if s.len() > Self::MAX_LEN {
            return Err(Invalid::too_long(format!(
                "must be at most {} bytes",
                Self::MAX_LEN
            )));
        }
        if has_control(s) || s.contains(char::is_whitespace) {
            return Err(Invalid::characters(
                "must not contain spaces or control characters",
            ));
        }
        let lower = s.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .ok_or_else(|| Invalid::format("must be an http:// or https:// URL"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        // Userinfo in an avatar URL is a phishing vector, never a need.
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        if host.is_empty() || authority.contains('@') {
            return Err(Invalid::format(
                "must name a host, like https://example.com/me.png",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_name_limits() {
        assert_eq!(
            FullName::parse("  Ada Lovelace ").map(|n| n.0),
            Ok("Ada Lovelace".into())
        );
        assert!(FullName::parse(&"é".repeat(200)).is_ok());
        assert!(FullName::parse(&"é".repeat(201)).is_err());
        assert!(FullName::parse("Ada\u{0}").is_err());
        assert!(FullName::parse("Ada\nLovelace").is_err());
    }

    #[test]
    fn phone_normalises_to_e164() {
        assert_eq!(
            Phone::parse("+1 (555) 123-4567").map(|p| p.0),
            Ok("+15551234567".into())
        );
        assert_eq!(
            Phone::parse("+49.30.1234567").map(|p| p.0),
            Ok("+49301234567".into())
        );
        for bad in [
            "5551234567",
            "+",
            "+123",
            "+0123456789",
            "+1555abc4567",
            "+1234567890123456",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_url_must_be_http() {
        assert!(ImageUrl::parse("https://cdn.example.com/a.png").is_ok());
        assert!(ImageUrl::parse("http://example.com:8080/a.png?x=1").is_ok());
        for bad in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "ftp://example.com/a.png",
            "https://",
            "https://user:pw@example.com/a.png",
            "https://exa mple.com/a.png",
            "//example.com/a.png",
        ] {
            assert!(ImageUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(ImageUrl::parse(&format!("https://e.com/{}", "a".repeat(2048))).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn full_name_never_panics_and_round_trips(input in any::<String>()) {
                if let Ok(name) = FullName::parse(&input) {
                    prop_assert!(name.as_str().chars().count() <= FullName::MAX_LEN);
                    prop_assert!(!name.as_str().chars().any(char::is_control));
                    prop_assert_eq!(FullName::parse(name.as_str()), Ok(name.clone()));
                }
            }

            #[test]
            fn phone_never_panics_and_its_output_is_e164(input in any::<String>()) {
                if let Ok(phone) = Phone::parse(&input) {
                    let digits = &phone.as_str()[1..];
                    prop_assert!(phone.as_str().starts_with('+'));
                    prop_assert!((8..=15).contains(&digits.len()));
                    prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                    prop_assert_eq!(Phone::parse(phone.as_str()), Ok(phone.clone()));
                }
            }

            #[test]
            fn formatted_phone_numbers_normalise_to_their_digits(
                first in "[1-9]",
                rest in proptest::collection::vec(("[0-9]", "[ .()-]?"), 7..=14),
            ) {
                let formatted: String = rest.iter().map(|(d, sep)| format!("{d}{sep}")).collect();
                let digits: String = rest.iter().map(|(d, _)| d.as_str()).collect();
                let parsed = Phone::parse(&format!("+{first} {formatted}"));
                // Separators can push the raw input past its length cap.
                if format!("+{first} {formatted}").trim().len() <= 32 {
                    prop_assert_eq!(parsed.map(|p| p.0), Ok(format!("+{first}{digits}")));
                }
            }

            #[test]
            fn image_url_never_panics_and_round_trips(input in any::<String>()) {
                if let Ok(url) = ImageUrl::parse(&input) {
                    let lower = url.as_str().to_ascii_lowercase();
                    prop_assert!(lower.starts_with("https://") || lower.starts_with("http://"));
                    prop_assert!(url.as_str().len() <= ImageUrl::MAX_LEN);
                    prop_assert_eq!(ImageUrl::parse(url.as_str()), Ok(url.clone()));
                }
            }

            #[test]
            fn http_urls_of_a_host_are_accepted(
                scheme in "https?",
                host in "[a-z0-9]{1,12}(\\.[a-z]{2,6}){1,2}",
                path in "(/[A-Za-z0-9._~-]{0,12}){0,3}",
            ) {
                let url = format!("{scheme}://{host}{path}");
                prop_assert_eq!(ImageUrl::parse(&url).map(|u| u.0), Ok(url));
            }

            #[test]
            fn userinfo_in_an_image_url_is_refused(
                user in "[a-z]{1,8}(:[a-z]{1,8})?",
                host in "[a-z]{1,12}\\.com",
            ) {
                let url = format!("https://{user}@{host}/a.png");
                prop_assert!(ImageUrl::parse(&url).is_err());
            }
        }
    }
}
