//! Time-based one-time passwords (RFC 6238) with the parameters every
//! authenticator app supports: HMAC-SHA-1, 6 digits, 30-second steps.
//! Other settings are not offered: apps that ignore them silently show
//! wrong codes.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// RFC 4226 recommends 160 bits, the HMAC-SHA-1 output size.
pub const SECRET_BYTES: usize = 20;
pub const DIGITS: u32 = 6;
pub const PERIOD_SECS: i64 = 30;
/// Steps accepted either side of the current one (clock drift, typing time).
pub const WINDOW: i64 = 1;

/// A TOTP shared secret; wiped from memory when dropped.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl TotpSecret {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        getrandom::getrandom(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Base32 without padding, as authenticator apps take it typed in.
    pub fn base32(&self) -> Zeroizing<String> {
        Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&self.0))
    }

    /// The Key URI Format authenticator apps read from a QR code:
    /// `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        let label = format!("{}:{}", percent_encode(issuer), percent_encode(account));
        Zeroizing::new(format!(
            "otpauth://totp/{label}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECS}",
            secret = self.base32().as_str(),
            issuer = percent_encode(issuer),
        ))
    }

    /// The code of one time step.
    pub fn code_at_step(&self, step: i64) -> u32 {
        // HMAC takes a key of any length; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&self.0) else {
            return u32::MAX;
        };
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        // Dynamic truncation (RFC 4226 §5.3).
        let offset = usize::from(digest[digest.len() - 1] & 0x0f);
        let binary = u32::from_be_bytes([
            digest[offset] & 0x7f,
            digest[offset + 1],
            digest[offset + 2],
            digest[offset + 3],
        ]);
        binary % 10u32.pow(DIGITS)
    }

    /// The step within the window whose code is `code`, if any. Every step
    /// of the window is computed and compared in constant time, so the
    /// answer takes as long whether the code was close or not.
    pub fn matching_step(&self, code: &TotpCode, now: DateTime<Utc>) -> Option<i64> {
        let current = step_at(now);
        let mut found = None;
        for step in current - WINDOW..=current + WINDOW {
            let expected = self.code_at_step(step);
            if bool::from(expected.to_be_bytes().ct_eq(&code.0.to_be_bytes())) {
                found = Some(step);
            }
        }
        found
    }
}

/// The 30-second step of a moment (RFC 6238 T with T0 = 0).
pub fn step_at(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(PERIOD_SECS)
}

/// A code as typed: six digits (spaces ignored, since apps show "123 456").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TotpCode(u32);

impl std::fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpCode([REDACTED])")
    }
}

impl TotpCode {
    pub fn parse(input: &str) -> Option<Self> {
        let digits: String = input.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() != DIGITS as usize || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Self)
    }
}

/// RFC 3986 unreserved characters stay; everything else is %XX of its UTF-8.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(Zeroizing::new(b"12345678901234567890".to_vec()))
    }

    #[test]
    fn rfc_6238_sha1_vectors_truncated_to_six_digits() {
        // Appendix B, SHA-1 column (8 digits there; the last 6 here).
        let vectors = [
            (59, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ];
        let secret = rfc_secret();
        for (time, eight) in vectors {
            let at = DateTime::from_timestamp(time, 0).unwrap();
            assert_eq!(secret.code_at_step(step_at(at)), eight % 1_000_000, "T = {time}");
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_two_are_not() {
        let secret = rfc_secret();
        let now = DateTime::from_timestamp(1_700_000_015, 0).unwrap();
        let step = step_at(now);
        for (offset, accepted) in [(-2, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = TotpCode::parse(&format!("{:06}", secret.code_at_step(step + offset))).unwrap();
            let found = secret.matching_step(&code, now);
            assert_eq!(found.is_some(), accepted, "offset {offset}");
            if accepted {
                assert_eq!(found, Some(step + offset));
            }
        }
    }

    #[test]
    fn codes_are_six_digits_and_spaces_are_ignored() {
        assert!(TotpCode::parse("123 456").is_some());
        assert!(TotpCode::parse("012345").is_some());
        for bad in ["", "12345", "1234567", "12345a", "+12345", "１２３４５６"] {
            assert!(TotpCode::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_uri_names_every_parameter_and_encodes_the_label() {
        let uri = rfc_secret().otpauth_uri("authd dev", "a+b@example.com");
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/authd%20dev:a%2Bb%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=authd%20dev&algorithm=SHA1&digits=6&period=30"
        );
    }
}
