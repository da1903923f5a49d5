//! Data keys: the symmetric keys that seal secrets authd must be able to read
//! back (TOTP secrets), so a copy of the database alone reveals none of them.
//!
//! A key file holds 256 random bits in base64 on one line. Several keys may
//! be loaded: the first seals, every one opens, so a key rotates by putting a
//! new file first, re-sealing what the old one sealed, then dropping it. A
//! key's id is derived from the key itself and stored next to each sealed
//! value, so ids never need configuring and the right key is found at once.
//!
//! Sealed form: a version byte, a random 96-bit nonce, then the AES-256-GCM
//! ciphertext and tag. The caller's associated data (what the secret belongs
//! to) and the version byte are authenticated, so a sealed value moved to
//! another row, or altered in any byte, does not open.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Bytes of key material in a key file.
const KEY_LEN: usize = 32;
/// The first byte of every sealed value; another layout gets another one.
const VERSION: u8 = 1;
/// Bytes of the authentication tag AES-GCM appends.
const TAG_LEN: usize = 16;
/// Hashed with the key to name it: the id reveals nothing usable about the
/// key and cannot collide with a hash made for another purpose.
const KEY_ID_LABEL: &[u8] = b"authd data key id v1\0";

/// The loaded data keys; cheap to clone.
#[derive(Clone)]
pub struct DataKeys {
    inner: Arc<Inner>,
}

struct Inner {
    /// In configured order: the first seals.
    keys: Vec<DataKey>,
    random: SystemRandom,
}

struct DataKey {
    id: String,
    aead: LessSafeKey,
}

/// A secret as stored: the id of the key that sealed it, and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

/// Why a sealed value did not open. Deliberately coarse: a wrong key, a
/// wrong owner and a flipped bit look alike to whoever tampered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataKeyError {
    #[error("sealed under a data key that is not loaded (AUTHD_DATA_KEYS)")]
    UnknownKey,
    #[error("sealed value does not open: altered, truncated, or stored for another owner")]
    Corrupt,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.inner.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("DataKeys").field("ids", &ids).finish()
    }
}

impl DataKeys {
    /// Reads the key files in order; the first will seal. Refuses an empty
    /// list, a file that is not a key, and the same key named twice.
    pub fn load(paths: &[PathBuf]) -> anyhow::Result<Self> {
        anyhow::ensure!(!paths.is_empty(), "no data key file given");
        let mut keys: Vec<DataKey> = Vec::with_capacity(paths.len());
        let mut origins: Vec<&Path> = Vec::with_capacity(paths.len());
        for path in paths {
            let material = read_key_file(path)?;
            let key = DataKey::new(&material).with_context(|| format!("data key {}", path.display()))?;
            if let Some(at) = keys.iter().position(|k| k.id == key.id) {
                anyhow::bail!(
                    "data key {} is the same key as {} (id {}): list each key once",
                    path.display(),
                    origins[at].display(),
                    key.id
                );
            }
            keys.push(key);
            origins.push(path);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                keys,
                random: SystemRandom::new(),
            }),
        })
    }

    /// The configured keys, or the development key under `data_dir`
    /// (generated on first start), with a warning that says so.
    pub fn load_or_generate(configured: &[PathBuf], data_dir: &Path) -> anyhow::Result<Self> {
        if !configured.is_empty() {
            return Self::load(configured);
        }
        let path = development_key_path(data_dir);
        if !path.exists() {
            let dir = path.parent().context("data key path has no parent")?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            match generate_key_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "generated a new data key"),
                // Another process sharing the folder made it first: use it.
                Err(e) if path.exists() => {
                    tracing::debug!(error = %format!("{e:#}"), "data key appeared meanwhile")
                }
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(
            path = %path.display(),
            "AUTHD_DATA_KEYS is not set: TOTP secrets are sealed with a development data key kept in \
             the data folder; losing it makes every enrolled authenticator unusable. Set AUTHD_DATA_KEYS \
             (keys made with `authd data-keys generate`) for anything but local development."
        );
        Self::load(&[path])
    }

    /// The id of the key new seals use.
    pub fn primary_id(&self) -> &str {
        // `load` refuses an empty list, so there is always a first key.
        self.inner.keys.first().map_or("", |k| k.id.as_str())
    }

    /// Whether a key with this id is loaded.
    pub fn knows(&self, key_id: &str) -> bool {
        self.key(key_id).is_some()
    }

    /// Seals `plaintext` under the first key, bound to `aad` (what the
    /// secret belongs to: the same bytes must be given to open it).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> anyhow::Result<Sealed> {
        let key = self.inner.keys.first().context("no data key loaded")?;
        let mut nonce = [0u8; NONCE_LEN];
        self.inner
            .random
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        // Encrypted where it is copied to, with room for the tag reserved,
        // so no copy of the plaintext is left behind in a reallocation.
        let mut ciphertext = Vec::with_capacity(plaintext.len() + TAG_LEN);
        ciphertext.extend_from_slice(plaintext);
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound_aad(aad).as_slice()),
                &mut ciphertext,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut bytes = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        bytes.push(VERSION);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: key.id.clone(),
            bytes,
        })
    }

    /// Opens what `seal` made under key `key_id` with the same `aad`.
    pub fn open(&self, key_id: &str, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, DataKeyError> {
        let key = self.key(key_id).ok_or(DataKeyError::UnknownKey)?;
        let Some((&VERSION, rest)) = sealed.split_first() else {
            return Err(DataKeyError::Corrupt);
        };
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(DataKeyError::Corrupt);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| DataKeyError::Corrupt)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(bound_aad(aad).as_slice()), &mut buffer)
            .map_err(|_| DataKeyError::Corrupt)?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }

    fn key(&self, key_id: &str) -> Option<&DataKey> {
        self.inner.keys.iter().find(|k| k.id == key_id)
    }
}

impl DataKey {
    fn new(material: &[u8; KEY_LEN]) -> anyhow::Result<Self> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, material).map_err(|_| anyhow::anyhow!("not an AES-256 key"))?;
        let mut hash = Sha256::new();
        hash.update(KEY_ID_LABEL);
        hash.update(material);
        let digest = hash.finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            id,
            aead: LessSafeKey::new(unbound),
        })
    }
}

/// The version byte and the caller's data, authenticated together so the
/// layout byte cannot be changed either.
fn bound_aad(aad: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(1 + aad.len());
    bound.push(VERSION);
    bound.extend_from_slice(aad);
    bound
}

/// Where the development key lives when `AUTHD_DATA_KEYS` is not set.
pub fn development_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("data-key-1")
}

/// The key material of a key file: 32 bytes in base64 on one line
/// (surrounding whitespace ignored).
fn read_key_file(path: &Path) -> anyhow::Result<Zeroizing<[u8; KEY_LEN]>> {
    let text =
        Zeroizing::new(std::fs::read(path).with_context(|| format!("reading data key {}", path.display()))?);
    warn_if_readable_by_others(path);
    let expected = "expected 32 random bytes in base64 on one line, as `authd data-keys generate` \
                    or `openssl rand -base64 32` writes";
    let trimmed = text.trim_ascii();
    let decoded = Zeroizing::new(
        STANDARD
            .decode(trimmed)
            .map_err(|_| anyhow::anyhow!("data key {} is not base64: {expected}", path.display()))?,
    );
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if decoded.len() != KEY_LEN {
        anyhow::bail!(
            "data key {} holds {} bytes: {expected}",
            path.display(),
            decoded.len()
        );
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "data key file is readable by other users; make it 0600 (or 0400)");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Writes a new key file: 256 random bits in base64, readable by its owner
/// only. Refuses to replace an existing file, which may be a key in use.
pub fn generate_key_file(path: &Path) -> anyhow::Result<()> {
    let mut material = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(material.as_mut())
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let mut line = Zeroizing::new(STANDARD.encode(material.as_ref()));
    line.push('\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists already; a data key is never overwritten (it may seal stored secrets)",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating data key {}", path.display()))
        }
    })?;
    let written = file.write_all(line.as_bytes()).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // A half-written key must not be mistaken for a key later.
        let _ = std::fs::remove_file(path);
        return Err(anyhow::Error::new(e).context(format!("writing data key {}", path.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("authd-datakeys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn new_key(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        generate_key_file(&path).unwrap();
        path
    }

    fn error_of(paths: &[PathBuf]) -> String {
        format!("{:#}", DataKeys::load(paths).err().unwrap())
    }

    #[test]
    fn a_sealed_secret_opens_with_the_same_owner() {
        let dir = scratch();
        let keys = DataKeys::load(&[new_key(&dir, "a")]).unwrap();
        let sealed = keys.seal(b"JBSWY3DPEHPK3PXP", b"owner").unwrap();
        assert_eq!(sealed.key_id, keys.primary_id());
        assert_eq!(sealed.key_id.len(), 16);
        assert_eq!(sealed.bytes[0], VERSION);
        assert_eq!(sealed.bytes.len(), 1 + NONCE_LEN + 16 + TAG_LEN);
        assert!(!sealed.bytes.windows(16).any(|w| w == b"JBSWY3DPEHPK3PXP"));
        let opened = keys.open(&sealed.key_id, &sealed.bytes, b"owner").unwrap();
        assert_eq!(opened.as_slice(), b"JBSWY3DPEHPK3PXP");
        // A fresh nonce each time: the same secret never seals the same.
        assert_ne!(
            keys.seal(b"JBSWY3DPEHPK3PXP", b"owner").unwrap().bytes,
            sealed.bytes
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn another_owner_or_an_altered_byte_does_not_open() {
        let dir = scratch();
        let keys = DataKeys::load(&[new_key(&dir, "a")]).unwrap();
        let sealed = keys.seal(b"secret", b"owner").unwrap();
        assert_eq!(
            keys.open(&sealed.key_id, &sealed.bytes, b"other"),
            Err(DataKeyError::Corrupt)
        );
        for at in 0..sealed.bytes.len() {
            let mut tampered = sealed.bytes.clone();
            tampered[at] ^= 0x01;
            assert_eq!(
                keys.open(&sealed.key_id, &tampered, b"owner"),
                Err(DataKeyError::Corrupt),
                "byte {at}"
            );
        }
        for len in 0..sealed.bytes.len() {
            assert_eq!(
                keys.open(&sealed.key_id, &sealed.bytes[..len], b"owner"),
                Err(DataKeyError::Corrupt),
                "truncated to {len}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_that_is_not_loaded_is_named_as_such() {
        let dir = scratch();
        let a = DataKeys::load(&[new_key(&dir, "a")]).unwrap();
        let b = DataKeys::load(&[new_key(&dir, "b")]).unwrap();
        let sealed = a.seal(b"secret", b"owner").unwrap();
        assert_eq!(
            b.open(&sealed.key_id, &sealed.bytes, b"owner"),
            Err(DataKeyError::UnknownKey)
        );
        assert!(!b.knows(&sealed.key_id));
        // Forging the id of a loaded key does not help.
        assert_eq!(
            b.open(b.primary_id(), &sealed.bytes, b"owner"),
            Err(DataKeyError::Corrupt)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn after_a_rotation_old_secrets_open_and_new_ones_use_the_new_key() {
        let dir = scratch();
        let (old, new) = (new_key(&dir, "old"), new_key(&dir, "new"));
        let before = DataKeys::load(std::slice::from_ref(&old)).unwrap();
        let sealed = before.seal(b"secret", b"owner").unwrap();
        let after = DataKeys::load(&[new.clone(), old]).unwrap();
        assert_eq!(
            after
                .open(&sealed.key_id, &sealed.bytes, b"owner")
                .unwrap()
                .as_slice(),
            b"secret"
        );
        let resealed = after.seal(b"secret", b"owner").unwrap();
        assert_ne!(resealed.key_id, sealed.key_id);
        assert_eq!(resealed.key_id, after.primary_id());
        assert_eq!(resealed.key_id, DataKeys::load(&[new]).unwrap().primary_id());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn key_ids_come_from_the_key() {
        let dir = scratch();
        let a = new_key(&dir, "a");
        let copy = dir.join("copy");
        std::fs::copy(&a, &copy).unwrap();
        assert_eq!(
            DataKeys::load(std::slice::from_ref(&a)).unwrap().primary_id(),
            DataKeys::load(std::slice::from_ref(&copy)).unwrap().primary_id()
        );
        let err = error_of(&[a.clone(), copy.clone()]);
        assert!(
            err.contains("same key") && err.contains(&*a.to_string_lossy()),
            "{err}"
        );
        assert!(err.contains(&*copy.to_string_lossy()), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_new_key_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch();
        let path = new_key(&dir, "k");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read(&path).unwrap();
        let err = format!("{:#}", generate_key_file(&path).unwrap_err());
        assert!(err.contains("exists already"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // 256 bits in base64, one line.
        assert_eq!(before.len(), 45);
        assert_eq!(STANDARD.decode(before.trim_ascii()).unwrap().len(), 32);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_key_files_are_refused_by_name() {
        let dir = scratch();
        let cases: [(&str, &[u8], &str); 4] = [
            ("short", b"c2hvcnQ=\n", "holds 5 bytes"),
            ("text", b"not a key at all\n", "is not base64"),
            ("empty", b"", "holds 0 bytes"),
            ("long", &[b'A'; 64], "holds 48 bytes"),
        ];
        for (name, contents, expected) in cases {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            let err = error_of(std::slice::from_ref(&path));
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.contains(&*path.to_string_lossy()), "{name}: {err}");
        }
        let missing = dir.join("missing");
        let err = error_of(std::slice::from_ref(&missing));
        assert!(
            err.contains("reading data key") && err.contains(&*missing.to_string_lossy()),
            "{err}"
        );
        assert!(error_of(&[]).contains("no data key"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_written_by_openssl_loads() {
        let dir = scratch();
        let path = dir.join("openssl");
        // What `openssl rand -base64 32` prints.
        std::fs::write(&path, format!("{}\n", STANDARD.encode([7u8; 32]))).unwrap();
        assert!(DataKeys::load(&[path]).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_development_key_is_made_once() {
        let dir = scratch();
        let a = DataKeys::load_or_generate(&[], &dir).unwrap();
        let b = DataKeys::load_or_generate(&[], &dir).unwrap();
        assert_eq!(a.primary_id(), b.primary_id());
        assert!(development_key_path(&dir).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn debug_output_shows_ids_only() {
        let dir = scratch();
        let path = new_key(&dir, "a");
        let material = std::fs::read_to_string(&path).unwrap();
        let keys = DataKeys::load(&[path]).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains(keys.primary_id()), "{shown}");
        assert!(!shown.contains(material.trim()), "{shown}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
