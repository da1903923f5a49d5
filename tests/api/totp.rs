//! The tests' own RFC 6238 (TOTP) and RFC 4226 (HOTP) implementation, written
//! from the RFCs and checked against their published vectors, so the codes
//! the server accepts are the codes any authenticator app computes, not the
//! codes authd's own implementation happens to agree with.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// What authd uses and authenticator apps assume: 30 s steps, 6 digits.
pub const STEP_SECONDS: u64 = 30;
/// Codes are not computed closer than this to a step boundary, so the
/// server sees the same step the test meant even on a slow machine.
pub const EDGE_MARGIN: u64 = 3;

/// RFC 4226 §5.3: HMAC-SHA-1 of the counter, dynamic truncation, modulo
/// 10^digits, left-padded with zeros.
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[hash.len() - 1] & 0x0f);
    let binary = (u32::from(hash[offset] & 0x7f) << 24)
        | (u32::from(hash[offset + 1]) << 16)
        | (u32::from(hash[offset + 2]) << 8)
        | u32::from(hash[offset + 3]);
    let code = binary % 10u32.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

/// RFC 4648 §6 base32 (upper or lower case, padding optional).
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET
            .iter()
            .position(|&a| a == c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("{:?} is not base32", char::from(c))) as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The time step `now` falls in.
pub fn step_of(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

/// The 6-digit code of time step `step` for a base32 secret.
pub fn code_at_step(secret_base32: &str, step: u64) -> String {
    hotp(&base32_decode(secret_base32), step, 6)
}

/// The code of the step the clock is in now (no wait for a safe moment:
/// for callers that use the code at once and need no particular step).
pub fn code_now(secret_base32: &str) -> String {
    code_at_step(secret_base32, step_of(unix_now()))
}

/// Waits until the clock is at least `EDGE_MARGIN` seconds away from a step
/// boundary; returns the step it is in then.
pub async fn safe_step() -> u64 {
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let into = now.as_secs() % STEP_SECONDS;
        if (EDGE_MARGIN..STEP_SECONDS - EDGE_MARGIN).contains(&into) {
            return step_of(now.as_secs());
        }
        let until_safe = if into < EDGE_MARGIN {
            EDGE_MARGIN - into
        } else {
            STEP_SECONDS - into + EDGE_MARGIN
        };
        tokio::time::sleep(
            Duration::from_secs(until_safe) - Duration::from_nanos(u64::from(now.subsec_nanos())),
        )
        .await;
    }
}

/// An authenticator app holding one secret that never shows a step the
/// server has already accepted: each `code()` is for a step later than the
/// last one used and within the server's ±1 window (waiting for the next
/// step when the window is used up).
pub struct Authenticator {
    pub secret: String,
    last_step: Mutex<Option<u64>>,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            last_step: Mutex::new(None),
        }
    }

    /// A code for a step not used before, and the step; the step counts as
    /// used from now on.
    pub async fn code_and_step(&self) -> (String, u64) {
        loop {
            let now = safe_step().await;
            if let Some(step) = self.claim_step(now) {
                return (code_at_step(&self.secret, step), step);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The earliest unused step the server accepts at step `now`, if any.
    fn claim_step(&self, now: u64) -> Option<u64> {
        let mut last = self.last_step.lock().unwrap();
        let candidate = match *last {
            Some(last) => (last + 1).max(now - 1),
            None => now,
        };
        (candidate <= now + 1).then(|| {
            *last = Some(candidate);
            candidate
        })
    }

    pub async fn code(&self) -> String {
        self.code_and_step().await.0
    }

    /// Marks `step` as used by someone else (a code the test computed
    /// directly and the server accepted).
    pub fn used(&self, step: u64) {
        let mut last = self.last_step.lock().unwrap();
        *last = Some(last.map_or(step, |l| l.max(step)));
    }
}

/// RFC 6238 Appendix B, the SHA-1 rows (8 digits, the ASCII key
/// "12345678901234567890"), and RFC 4226 Appendix D.
#[test]
fn the_test_implementation_matches_the_rfc_vectors() {
    let key = b"12345678901234567890";
    for (time, expected) in [
        (59u64, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ] {
        assert_eq!(hotp(key, time / STEP_SECONDS, 8), expected, "T = {time}");
    }
    for (counter, expected) in ["755224", "287082", "359152", "969429", "338314"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(hotp(key, counter as u64, 6), expected, "counter {counter}");
    }
    // The same key in base32, as EnrollTotp hands secrets out.
    assert_eq!(base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), key);
    assert_eq!(base32_decode("gezdgnbvgy3tqojqgezdgnbvgy3tqojq"), key);
    assert_eq!(code_at_step("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 1), "287082");
}
