//! Signing keys and tokens for the unit tests: authd's token format, made
//! here so the crate's tests need no authd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::pb;

pub(crate) struct TestKey {
    pub(crate) kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: pb::Jwk,
}

impl TestKey {
    pub(crate) fn ed25519() -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let pem = sk
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
        let kid = format!("ed-{}", &x[..8]);
        Self {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            jwk: pb::Jwk {
                kid: kid.clone(),
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x,
                alg: "EdDSA".into(),
                r#use: "sig".into(),
                ..Default::default()
            },
            kid,
        }
    }

    pub(crate) fn es256() -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        use p256::pkcs8::EncodePrivateKey as _;
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        let point = sk.public_key().to_encoded_point(false);
        let x = URL_SAFE_NO_PAD.encode(point.x().unwrap());
        let y = URL_SAFE_NO_PAD.encode(point.y().unwrap());
        let kid = format!("es-{}", &x[..8]);
        Self {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            jwk: pb::Jwk {
                kid: kid.clone(),
                kty: "EC".into(),
                crv: "P-256".into(),
                x,
                y,
                alg: "ES256".into(),
                r#use: "sig".into(),
                ..Default::default()
            },
            kid,
        }
    }

    pub(crate) fn jwk(&self) -> pb::Jwk {
        self.jwk.clone()
    }

    /// A token as authd makes it.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_full(claims, Some("at+jwt"), &self.kid)
    }

    pub(crate) fn sign_with_typ(&self, claims: &serde_json::Value, typ: Option<&str>) -> String {
        self.sign_full(claims, typ, &self.kid)
    }

    /// Signed with this key but naming another key's `kid`.
    pub(crate) fn sign_as(&self, claims: &serde_json::Value, kid: &str) -> String {
        self.sign_full(claims, Some("at+jwt"), kid)
    }

    fn sign_full(&self, claims: &serde_json::Value, typ: Option<&str>, kid: &str) -> String {
        let mut header = Header::new(self.alg);
        header.typ = typ.map(str::to_owned);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// authd's claims for `user-1`'s `session-1`, issued at `iat`.
pub(crate) fn claims_json(iat: i64, lifetime: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": "https://authd.test",
        "aud": "svc",
        "sub": "user-1",
        "sid": "session-1",
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime,
        "jti": "token-1",
        "roles": ["admin"],
    })
}

/// authd's claims for the service account `name`'s own token (client
/// credentials) with `scope`, issued at `iat`.
pub(crate) fn service_claims_json(iat: i64, lifetime: i64, name: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": "https://authd.test",
        "aud": "svc",
        "sub": format!("svc:{name}"),
        "client_id": name,
        "scope": scope,
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime,
        "jti": "service-token-1",
        "key_id": "key-1",
    })
}
