use super::has_control;

/// An email address: trimmed, syntactically plausible, stored as given.
/// Uniqueness is case-insensitive (enforced by the database on `lower(email)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("is required".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} bytes", Self::MAX_LEN));
        }
        if has_control(s) || s.chars().any(char::is_whitespace) {
            return Err("must not contain spaces or control characters".into());
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err("must look like name@example.com".into());
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err("must look like name@example.com".into());
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err("must not have a dot at the start or end of the name, or two in a row".into());
        }
        if local.chars().any(|c| "\"(),:;<>[\\]".contains(c)) {
            return Err("must not contain quotes, brackets, commas or semicolons".into());
        }
        if !valid_domain(domain) {
            return Err("must have a domain like example.com after the @".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
            long_local.as_str(),
            too_long.as_str(),
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }
}
