//! authd's public keys as the verifier holds them: each key with the one
//! algorithm its JWK allows, decided from the key's type and curve when the
//! set is fetched and never from a token's header (RFC 8725 §3.1).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::pb;

/// One verifying key and the validation rules of tokens it signed.
pub(crate) struct PinnedKey {
    pub(crate) alg: Algorithm,
    pub(crate) decoding: DecodingKey,
    pub(crate) validation: Validation,
}

/// Every usable key, by `kid`.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<PinnedKey>>,
}

/// What token checks every key applies; built into each key's
/// `Validation` once, not per request.
pub(crate) struct Expectations<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) audience: &'a str,
}

impl KeySet {
    /// The usable keys of a GetJwks answer. A key that cannot be used
    /// (another key type, an `alg` that contradicts its curve, not a
    /// signing key, a duplicate `kid`) is left out with a warning: one odd
    /// key must not stop the others from verifying.
    pub(crate) fn from_jwks(jwks: &[pb::Jwk], expect: &Expectations<'_>) -> Self {
        let mut by_kid = HashMap::new();
        let mut duplicated = HashSet::new();
        for jwk in jwks {
            match pin(jwk, expect) {
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

/// The algorithm a JWK's type and curve allow: the only one its tokens may
/// use. An `alg` member, if present, must agree.
fn pinned_algorithm(jwk: &pb::Jwk) -> Result<Algorithm, &'static str> {
    let alg = match (jwk.kty.as_str(), jwk.crv.as_str()) {
        ("OKP", "Ed25519") => Algorithm::EdDSA,
        ("EC", "P-256") => Algorithm::ES256,
        _ => return Err("not an Ed25519 or P-256 key"),
    };
    let named = match jwk.alg.as_str() {
        "" => alg,
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        _ => return Err("unsupported alg"),
    };
    if named != alg {
        return Err("alg does not match the key's curve");
    }
    Ok(alg)
}

fn pin(jwk: &pb::Jwk, expect: &Expectations<'_>) -> Result<PinnedKey, &'static str> {
    if jwk.kid.is_empty() {
        return Err("no kid");
    }
    if !(jwk.r#use.is_empty() || jwk.r#use == "sig") {
        return Err("not a signing key");
    }
    let alg = pinned_algorithm(jwk)?;
    let decoding = match alg {
        Algorithm::EdDSA => DecodingKey::from_ed_components(&jwk.x),
        _ => DecodingKey::from_ec_components(&jwk.x, &jwk.y),
    }
    .map_err(|_| "malformed key material")?;
    let mut validation = Validation::new(alg);
    // `exp` and `nbf` are judged against the caller's clock reading with
    // the configured leeway (see `token`); jsonwebtoken would read the
    // clock itself.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(&[expect.audience]);
    Ok(PinnedKey {
        alg,
        decoding,
        validation,
    })
}

#[cfg(test)]
mod tests {
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

    const EXPECT: Expectations<'static> = Expectations {
        issuer: "iss",
        audience: "aud",
    };

    #[test]
    fn the_algorithm_comes_from_the_key_type_and_curve() {
        assert_eq!(
            pinned_algorithm(&jwk("a", "OKP", "Ed25519", "EdDSA")),
            Ok(Algorithm::EdDSA)
        );
        assert_eq!(
            pinned_algorithm(&jwk("a", "OKP", "Ed25519", "")),
            Ok(Algorithm::EdDSA)
        );
        assert_eq!(
            pinned_algorithm(&jwk("a", "EC", "P-256", "ES256")),
            Ok(Algorithm::ES256)
        );
        assert!(pinned_algorithm(&jwk("a", "EC", "P-256", "EdDSA")).is_err());
        assert!(pinned_algorithm(&jwk("a", "OKP", "Ed25519", "HS256")).is_err());
        assert!(pinned_algorithm(&jwk("a", "RSA", "", "RS256")).is_err());
        assert!(pinned_algorithm(&jwk("a", "EC", "P-384", "ES384")).is_err());
    }

    #[test]
    fn unusable_and_duplicate_keys_are_left_out() {
        let mut encryption = jwk("enc", "OKP", "Ed25519", "EdDSA");
        encryption.r#use = "enc".into();
        let set = KeySet::from_jwks(
            &[
                jwk("ed", "OKP", "Ed25519", "EdDSA"),
                jwk("mixed", "EC", "P-256", "EdDSA"),
                jwk("twice", "OKP", "Ed25519", "EdDSA"),
                jwk("twice", "OKP", "Ed25519", "EdDSA"),
                jwk("twice", "OKP", "Ed25519", "EdDSA"),
                jwk("", "OKP", "Ed25519", "EdDSA"),
                encryption,
            ],
            &EXPECT,
        );
        assert!(set.get("ed").is_some_and(|k| k.alg == Algorithm::EdDSA));
        for missing in ["mixed", "twice", "", "enc"] {
            assert!(set.get(missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn key_sets_compare_by_kid() {
        let a = KeySet::from_jwks(&[jwk("a", "OKP", "Ed25519", "EdDSA")], &EXPECT);
        let b = KeySet::from_jwks(&[jwk("a", "OKP", "Ed25519", "EdDSA")], &EXPECT);
        let ab = KeySet::from_jwks(
            &[
                jwk("a", "OKP", "Ed25519", "EdDSA"),
                jwk("b", "OKP", "Ed25519", "EdDSA"),
            ],
            &EXPECT,
        );
        assert!(a.same_kids(&b));
        assert!(!a.same_kids(&ab));
        assert!(KeySet::default().is_empty());
    }
}
