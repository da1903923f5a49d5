//! Single-use recovery codes: 80 random bits each, shown once as
//! `xxxx-xxxx-xxxx-xxxx` (lowercase base32, no 0/1/8/9 to misread), stored
//! only as SHA-256. 80 bits are beyond any search, so a fast hash suffices
//! and checking a code costs no password-hash time.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::opaque::TokenHash;

/// Codes handed out at a time.
pub const COUNT: usize = 10;
const CODE_BYTES: usize = 10;
/// 80 bits in base32.
const CODE_CHARS: usize = 16;
const GROUP: usize = 4;

/// A new code and what the database keeps of it.
pub struct NewRecoveryCode {
    pub code: Zeroizing<String>,
    pub hash: TokenHash,
}

/// A fresh set of [`COUNT`] codes.
pub fn generate() -> Result<Vec<NewRecoveryCode>, getrandom::Error> {
    (0..COUNT)
        .map(|_| {
            let mut bytes = Zeroizing::new([0u8; CODE_BYTES]);
            getrandom::getrandom(bytes.as_mut())?;
            let plain = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(bytes.as_ref()).to_lowercase());
            let hash = hash_normalized(&plain);
            let grouped: Vec<&str> = plain
                .as_bytes()
                .chunks(GROUP)
                .filter_map(|c| std::str::from_utf8(c).ok())
                .collect();
            Ok(NewRecoveryCode {
                code: Zeroizing::new(grouped.join("-")),
                hash,
            })
        })
        .collect()
}

/// The hash of a code as typed (spaces, hyphens and letter case ignored);
/// `None` when it cannot be one of ours.
pub fn hash_presented(input: &str) -> Option<TokenHash> {
    let plain: Zeroizing<String> = Zeroizing::new(
        input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    );
    let ours = plain.len() == CODE_CHARS && plain.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'));
    ours.then(|| hash_normalized(&plain))
}

fn hash_normalized(plain: &str) -> TokenHash {
    let mut hasher = Sha256::new();
    // Keeps these hashes apart from every other SHA-256 authd stores.
    hasher.update(b"authd recovery code\0");
    hasher.update(plain.as_bytes());
    TokenHash(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_distinct_and_recognised_however_typed() {
        let codes = generate().unwrap();
        assert_eq!(codes.len(), COUNT);
        let mut seen = std::collections::HashSet::new();
        for c in &codes {
            assert_eq!(c.code.len(), 19, "{}", c.code.as_str());
            assert_eq!(c.code.matches('-').count(), 3);
            assert!(seen.insert(c.code.to_string()), "duplicate code");
            assert_eq!(hash_presented(&c.code), Some(c.hash));
            let shouted = c.code.to_uppercase().replace('-', " ");
            assert_eq!(hash_presented(&shouted), Some(c.hash));
            assert_eq!(hash_presented(&c.code.replace('-', "")), Some(c.hash));
        }
    }

    #[test]
    fn anything_else_is_no_code() {
        for bad in [
            "",
            "abcd-efgh-ijkl",
            "abcd-efgh-ijkl-mnop-q",
            "abcd-efgh-ijkl-mno1",
            "123456",
        ] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }
}
