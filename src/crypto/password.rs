//! argon2id hashing on a bounded blocking pool.
//!
//! Each hash takes ~19 MiB and tens of milliseconds of CPU, so it runs on
//! tokio's blocking threads behind a semaphore of about the core count: the
//! async executor never stalls and memory stays bounded however many logins
//! arrive at once.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::OsRng;
use tokio::sync::Semaphore;

use crate::domain::Password;
use crate::error::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's recommendation for argon2id.
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Outcome of checking a password against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, and here is a hash with the current parameters to store.
    YesRehashed(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password: unknown accounts are verified against it
    /// so they take as long as known ones.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(settings: Argon2Settings, workers: usize) -> anyhow::Result<Self> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let mut random = [0u8; 24];
        getrandom::getrandom(&mut random)?;
        let dummy_hash = hash_with(&params, &random)?;
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                permits: Arc::new(Semaphore::new(workers.max(1))),
                dummy_hash,
            }),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, AppError> {
        let params = self.inner.params.clone();
        let bytes = password.expose().as_bytes().to_vec();
        self.run(move || hash_with(&params, &bytes).map_err(AppError::Internal))
            .await?
    }

    /// Verifies against `stored`, or against the dummy hash when there is no
    /// account, so both paths cost the same.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> Result<Verified, AppError> {
        let inner = self.inner.clone();
        let is_real = stored.is_some();
        let stored = stored.unwrap_or(&self.inner.dummy_hash).to_owned();
        let bytes = password.expose().as_bytes().to_vec();
        self.run(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Err(AppError::internal(anyhow::anyhow!(
                    "stored password hash is malformed"
                )));
            };
            let ok = argon2_for(&inner.params).verify_password(&bytes, &parsed).is_ok();
            if !ok || !is_real {
                return Ok(Verified::No);
            }
            if is_outdated(&parsed, &inner.params) {
                return hash_with(&inner.params, &bytes)
                    .map(Verified::YesRehashed)
                    .map_err(AppError::Internal);
            }
            Ok(Verified::Yes)
        })
        .await?
    }

    /// Runs CPU-heavy work (hashing, password strength estimation) on the
    /// bounded blocking pool, never on the async executor.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(AppError::internal)?;
        // The permit travels with the work: a caller that gives up (deadline,
        // cancelled RPC) cannot free it while the computation still runs, or
        // cancelled calls would pile up hashes beyond the bound.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(AppError::internal)
    }
}

fn argon2_for(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_with(params: &Params, password: &[u8]) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2_for(params)
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
}

fn is_outdated(hash: &PasswordHash<'_>, current: &Params) -> bool {
    if hash.algorithm.as_str() != "argon2id" {
        return true;
    }
    match Params::try_from(hash) {
        // Only weaker hashes are upgraded: during a rolling change of
        // parameters, a replica still on the old ones must not re-hash
        // passwords the new replicas already strengthened.
        Ok(p) => {
            p.m_cost() < current.m_cost() || p.t_cost() < current.t_cost() || p.p_cost() < current.p_cost()
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Password {
        match Password::normalize(s) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    const FAST: Argon2Settings = Argon2Settings {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hashes_verify_and_dummy_never_matches() -> anyhow::Result<()> {
        let h = PasswordHasher::new(FAST, 2)?;
        let hash = h.hash(&pw("correct horse")).await?;
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert_eq!(h.verify(&pw("correct horse"), Some(&hash)).await?, Verified::Yes);
        assert_eq!(h.verify(&pw("wrong horse"), Some(&hash)).await?, Verified::No);
        assert_eq!(h.verify(&pw("correct horse"), None).await?, Verified::No);
        Ok(())
    }

    #[tokio::test]
    async fn callers_that_give_up_do_not_free_the_pool_early() -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let h = PasswordHasher::new(FAST, 1)?;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let (running, most) = (running.clone(), most.clone());
            let work = h.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(150));
                running.fetch_sub(1, Ordering::SeqCst);
            });
            // Like an RPC whose deadline passes mid-hash.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(10), work).await;
        }
        // Whatever was started finishes; a fresh call waits for it.
        h.run(|| ()).await?;
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "one worker means one computation at a time"
        );
        Ok(())
    }

    #[tokio::test]
    async fn outdated_parameters_are_upgraded_on_success() -> anyhow::Result<()> {
        let old = PasswordHasher::new(FAST, 1)?;
        let hash = old.hash(&pw("correct horse")).await?;
        let new = PasswordHasher::new(
            Argon2Settings {
                memory_kib: 2048,
                ..FAST
            },
            1,
        )?;
        match new.verify(&pw("correct horse"), Some(&hash)).await? {
            Verified::YesRehashed(h) => assert!(h.contains("m=2048")),
            other => panic!("expected a rehash, got {other:?}"),
        }
        assert_eq!(new.verify(&pw("wrong"), Some(&hash)).await?, Verified::No);
        Ok(())
    }

    #[tokio::test]
    async fn stronger_parameters_are_never_downgraded() -> anyhow::Result<()> {
        let strong = PasswordHasher::new(
            Argon2Settings {
                memory_kib: 2048,
                iterations: 2,
                ..FAST
            },
            1,
        )?;
        let hash = strong.hash(&pw("correct horse")).await?;
        let weak = PasswordHasher::new(FAST, 1)?;
        assert_eq!(
            weak.verify(&pw("correct horse"), Some(&hash)).await?,
            Verified::Yes
        );
        Ok(())
    }
}
