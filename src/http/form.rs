//! Reading an `application/x-www-form-urlencoded` request body the way
//! RFC 6749 asks (§3.2, §3.1): that content type only, each parameter at
//! most once, an empty value the same as none, unknown parameters ignored.
//! Bodies are small; a large one is refused before it is read whole.

use std::collections::HashMap;

use http::{HeaderMap, header};
use http_body_util::BodyExt;

/// Largest body read; token requests are a few hundred bytes (a subject
/// token is at most 4 KiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Why a body is not a form authd reads.
#[derive(Debug, PartialEq, Eq)]
pub enum FormError {
    /// Not `application/x-www-form-urlencoded`.
    ContentType,
    /// Longer than [`MAX_BODY_BYTES`].
    TooLarge,
    /// Not UTF-8, or a broken body stream.
    Unreadable,
    /// A parameter given twice.
    Repeated(String),
}

impl FormError {
    pub fn description(&self) -> String {
        match self {
            Self::ContentType => "the body must be application/x-www-form-urlencoded".into(),
            Self::TooLarge => format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            Self::Unreadable => "the body is not UTF-8 form data".into(),
            Self::Repeated(name) => format!("{name} is given more than once"),
        }
    }
}

/// The parameters of a form, by name (values never empty).
#[derive(Debug, Default)]
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of `name`, or "" when absent.
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// Parses an already read body.
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        if std::str::from_utf8(body).is_err() {
            return Err(FormError::Unreadable);
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut named: Vec<String> = Vec::new();
        for (name, value) in form_urlencoded::parse(body) {
            // A percent-escape that decodes to invalid UTF-8 comes back
            // with replacement characters: not a value anyone sent.
            if name.contains('\u{FFFD}') || value.contains('\u{FFFD}') {
                return Err(FormError::Unreadable);
            }
            if named.iter().any(|n| *n == name) {
                return Err(FormError::Repeated(name.into_owned()));
            }
            named.push(name.to_string());
            if !value.is_empty() {
                seen.insert(name.into_owned(), value.into_owned());
            }
        }
        Ok(Self(seen))
    }
}

/// Whether the request says its body is a form (parameters such as
/// `charset` allowed).
pub fn is_form(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads the form of a request: content type, size, parameters.
pub async fn read(req: http::Request<tonic::body::Body>) -> Result<(http::request::Parts, Form), FormError> {
    if !is_form(req.headers()) {
        return Err(FormError::ContentType);
    }
    let (parts, bytes) = read_bounded(req, MAX_BODY_BYTES).await?;
    Ok((parts, Form::parse(&bytes)?))
}

/// The whole body of `req`, refused as [`FormError::TooLarge`] past `max`
/// bytes (before reading, when its Content-Length says so).
pub async fn read_bounded(
    req: http::Request<tonic::body::Body>,
    max: usize,
) -> Result<(http::request::Parts, bytes::Bytes), FormError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(FormError::TooLarge);
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, max);
    match limited.collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FormError::TooLarge),
        Err(_) => Err(FormError::Unreadable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_parameter_is_refused_and_an_empty_one_is_absent() {
        assert_eq!(
            Form::parse(b"grant_type=a&grant_type=b").unwrap_err(),
            FormError::Repeated("grant_type".into())
        );
        let form = Form::parse(b"scope=&audience=billing+x%20y").unwrap();
        assert_eq!(form.get("scope"), None);
        assert_eq!(form.get("audience"), Some("billing x y"));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused() {
        assert_eq!(Form::parse(b"a=%FF").unwrap_err(), FormError::Unreadable);
        assert_eq!(
            Form::parse(&[b'a', b'=', 0xff]).unwrap_err(),
            FormError::Unreadable
        );
    }

    #[test]
    fn only_the_form_media_type_is_a_form() {
        let mut headers = HeaderMap::new();
        assert!(!is_form(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        assert!(is_form(&headers));
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_form(&headers));
    }
}
