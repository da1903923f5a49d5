//! Signing keys: loaded from PKCS#8 PEM, or generated once into the data
//! folder for development. Every key verifies and is published in the JWK
//! set; the first one signs, so keys rotate by prepending a new one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The public half of a key as published in the JWK set (RFC 7517).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub y: String,
    pub kid: String,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
}

pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    /// Signs access tokens; parsed once, since jsonwebtoken's `encode`
    /// re-parses the PKCS#8 key and re-derives its public half on every call
    /// (two scalar multiplications, about a fifth of authd's CPU in a
    /// Refresh).
    pub signer: Signer,
    pub decoding: DecodingKey,
    pub jwk: PublicJwk,
}

/// A parsed private key.
pub enum Signer {
    Ed25519(ed25519_dalek::SigningKey),
    Es256(p256::ecdsa::SigningKey),
}

impl Signer {
    /// The JWS signature of `message` (RFC 7515 / 8037): 64 bytes for both
    /// algorithms (ES256 as R ‖ S, not DER).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Signer::Ed25519(key) => ed25519_dalek::Signer::sign(key, message).to_bytes().to_vec(),
            Signer::Es256(key) => {
                let signature: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(key, message);
                signature.to_bytes().to_vec()
            }
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    /// Parses a PKCS#8 private key: Ed25519 (EdDSA) or P-256 (ES256).
    pub fn from_pkcs8_pem(pem: &str) -> anyhow::Result<Self> {
        if let Ok(sk) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
            let thumbprint = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
            let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumbprint.as_bytes()));
            return Ok(Self {
                signer: Signer::Ed25519(sk),
                decoding: DecodingKey::from_ed_components(&x)?,
                alg: Algorithm::EdDSA,
                jwk: PublicJwk {
                    kty: "OKP",
                    crv: "Ed25519",
                    x,
                    y: String::new(),
                    kid: kid.clone(),
                    alg: "EdDSA",
                    use_: "sig",
                },
                kid,
            });
        }
        if let Ok(sk) = p256::SecretKey::from_pkcs8_pem(pem) {
            let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&sk.public_key(), false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                anyhow::bail!("P-256 key has no affine coordinates");
            };
            let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
            let thumbprint = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumbprint.as_bytes()));
            return Ok(Self {
                signer: Signer::Es256(p256::ecdsa::SigningKey::from(&sk)),
                decoding: DecodingKey::from_ec_components(&x, &y)?,
                alg: Algorithm::ES256,
                jwk: PublicJwk {
                    kty: "EC",
                    crv: "P-256",
                    x,
                    y,
                    kid: kid.clone(),
                    alg: "ES256",
                    use_: "sig",
                },
                kid,
            });
        }
        anyhow::bail!("not a PKCS#8 Ed25519 or P-256 private key (expected -----BEGIN PRIVATE KEY-----)")
    }
}

/// A new Ed25519 key as PKCS#8 PEM.
pub fn generate_ed25519_pem() -> anyhow::Result<String> {
    let sk = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let pem = sk
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the key failed: {e}"))?;
    Ok(pem.to_string())
}

/// Loads the configured keys, or the development key under `data_dir`
/// (generating it on first start).
pub fn load(configured: &[PathBuf], data_dir: &Path) -> anyhow::Result<Vec<Key>> {
    if !configured.is_empty() {
        let mut keys = Vec::with_capacity(configured.len());
        for path in configured {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading signing key {}", path.display()))?;
            keys.push(Key::from_pkcs8_pem(&pem).with_context(|| format!("signing key {}", path.display()))?);
        }
        return Ok(keys);
    }
    let path = data_dir.join("keys").join("signing-ed25519.pem");
    let pem = read_or_create_dev_key(&path)?;
    tracing::warn!(
        path = %path.display(),
        "AUTHD_SIGNING_KEYS is not set: using a development signing key kept in the data folder"
    );
    Ok(vec![Key::from_pkcs8_pem(&pem)?])
}

fn read_or_create_dev_key(path: &Path) -> anyhow::Result<String> {
    if let Ok(pem) = std::fs::read_to_string(path) {
        return Ok(pem);
    }
    let dir = path.parent().context("key path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pem = generate_ed25519_pem()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(pem.as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new Ed25519 signing key");
            Ok(pem)
        }
        // Another replica sharing the folder won the race: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(std::fs::read_to_string(path)?),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_get_a_thumbprint_kid() {
        let pem = generate_ed25519_pem().unwrap();
        let key = Key::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(key.alg, Algorithm::EdDSA);
        assert_eq!(key.kid.len(), 43);
        assert_eq!(Key::from_pkcs8_pem(&pem).unwrap().kid, key.kid);
        assert_eq!(key.jwk.x.len(), 43);
    }

    #[test]
    fn p256_keys_are_es256() {
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&sk, Default::default()).unwrap();
        let key = Key::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(key.alg, Algorithm::ES256);
        assert_eq!((key.jwk.kty, key.jwk.crv), ("EC", "P-256"));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Key::from_pkcs8_pem("not a key").is_err());
    }

    #[test]
    fn dev_key_is_created_once() {
        let dir = std::env::temp_dir().join(format!("authd-keytest-{}", uuid::Uuid::new_v4()));
        let a = load(&[], &dir).unwrap();
        let b = load(&[], &dir).unwrap();
        assert_eq!(a[0].kid, b[0].kid);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
