//! authd's public keys as the verifier holds them: each key with the one
//! algorithm its JWK allows, decided from the key's type and curve when the
//! set is fetched and never from a token's header (RFC 8725 §3.1).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use authd_token_rules::PinnedKey;

use crate::pb;

/// Every usable key, by `kid`.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<PinnedKey>>,
}

impl KeySet {
    /// The usable keys of a GetJwks answer. A key that cannot be used
    /// (another key type, an `alg` that contradicts its curve, not a
    /// signing key, a duplicate `kid`) is left out with a warning: one odd
    /// key must not stop the others from verifying.
    pub(crate) fn from_jwks(jwks: &[pb::Jwk]) -> Self {
        let mut by_kid = HashMap::new();
        let mut duplicated = HashSet::new();
        for jwk in jwks {
            match pin(jwk) {
                Ok(key) => {
                    if by_kid.insert(jwk.kid.clone(), Arc::new(key)).is_some() {
                        duplicated.insert(jwk.kid.clone());
                    }
                }
                Err(why) => tracing::warn!(kid = %jwk.kid, why, "skipping a key authd published"),
            }
        }
        // Two keys under one name: neither can be trusted to be the one a
        // token means.
        for kid in duplicated {
            tracing::warn!(%kid, "authd published two keys with one kid; using neither");
            by_kid.remove(&kid);
        }
        Self { by_kid }
    }

    pub(crate) fn get(&self, kid: &str) -> Option<Arc<PinnedKey>> {
        self.by_kid.get(kid).cloned()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// Whether both sets hold the same key ids (a refetch that changed
    /// nothing keeps what was verified with them).
    pub(crate) fn same_kids(&self, other: &KeySet) -> bool {
        self.by_kid.len() == other.by_kid.len() && self.by_kid.keys().all(|k| other.by_kid.contains_key(k))
    }
}

fn pin(jwk: &pb::Jwk) -> Result<PinnedKey, &'static str> {
    if jwk.kid.is_empty() {
        return Err("no kid");
    }
    if !(jwk.r#use.is_empty() || jwk.r#use == "sig") {
        return Err("not a signing key");
    }
    PinnedKey::from_jwk(&jwk.kty, &jwk.crv, &jwk.alg, &jwk.x, &jwk.y)
}

#[cfg(test)]
mod tests {
    use authd_token_rules::Algorithm;

    use super::*;

    fn jwk(kid: &str, kty: &str, crv: &str, alg: &str) -> pb::Jwk {
        pb::Jwk {
            kid: kid.into(),
            kty: kty.into(),
            crv: crv.into(),
            // 32 zero bytes: a valid encoding, which is all pinning needs.
            x: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            y: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            alg: alg.into(),
            r#use: "sig".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_algorithm_comes_from_the_key_type_and_curve() {
        let pinned = |kty: &str, crv: &str, alg: &str| {
            KeySet::from_jwks(&[jwk("a", kty, crv, alg)])
                .get("a")
                .map(|k| k.alg())
        };
        assert_eq!(pinned("OKP", "Ed25519", "EdDSA"), Some(Algorithm::EdDSA));
        assert_eq!(pinned("OKP", "Ed25519", ""), Some(Algorithm::EdDSA));
        assert_eq!(pinned("EC", "P-256", "ES256"), Some(Algorithm::ES256));
        assert_eq!(pinned("EC", "P-256", "EdDSA"), None);
        assert_eq!(pinned("OKP", "Ed25519", "HS256"), None);
        assert_eq!(pinned("RSA", "", "RS256"), None);
    }

    #[test]
    fn unusable_and_duplicate_keys_are_left_out() {
        let mut encryption = jwk("enc", "OKP", "Ed25519", "EdDSA");
        encryption.r#use = "enc".into();
        let set = KeySet::from_jwks(&[
            jwk("ed", "OKP", "Ed25519", "EdDSA"),
            jwk("mixed", "EC", "P-256", "EdDSA"),
            jwk("twice", "OKP", "Ed25519", "EdDSA"),
            jwk("twice", "OKP", "Ed25519", "EdDSA"),
            jwk("twice", "OKP", "Ed25519", "EdDSA"),
            jwk("", "OKP", "Ed25519", "EdDSA"),
            encryption,
        ]);
        assert!(set.get("ed").is_some_and(|k| k.alg() == Algorithm::EdDSA));
        for missing in ["mixed", "twice", "", "enc"] {
            assert!(set.get(missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn key_sets_compare_by_kid() {
        let a = KeySet::from_jwks(&[jwk("a", "OKP", "Ed25519", "EdDSA")]);
        let b = KeySet::from_jwks(&[jwk("a", "OKP", "Ed25519", "EdDSA")]);
        let ab = KeySet::from_jwks(&[
            jwk("a", "OKP", "Ed25519", "EdDSA"),
            jwk("b", "OKP", "Ed25519", "EdDSA"),
        ]);
        assert!(a.same_kids(&b));
        assert!(!a.same_kids(&ab));
        assert!(KeySet::default().is_empty());
    }
}
