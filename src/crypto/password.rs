//! argon2id hashing on a bounded blocking pool.
//!
//! Each hash takes ~19 MiB and tens of milliseconds of CPU, so it runs on
//! tokio's blocking threads behind a semaphore of about the core count: the
//! async executor never stalls and memory stays bounded however many logins
//! arrive at once.
//!
//! The working memory of argon2 is allocated once per worker and reused.
//! Allocating 19 MiB per hash made glibc keep freed buffers in per-thread
//! arenas (RSS grew to ~400 MiB under load) and cost page faults on every
//! hash; a buffer per permit keeps the process at `workers` × m_cost.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand_core::OsRng;
use tokio::sync::Semaphore;

use crate::config::Argon2Settings;
use crate::domain::Password;
use crate::error::AppError;
use crate::metrics::{DurationHistogram, QUEUE_WAIT_BUCKETS};

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

/// An idle pool trusts its estimate of the work's duration this long after
/// work last updated it; then it takes work to learn the current cost.
const PROBE_AFTER: Duration = Duration::from_secs(2);

struct Inner {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password: unknown accounts are verified against it
    /// so they take as long as known ones.
    dummy_hash: String,
    /// Working memory of idle workers; at most one buffer per permit exists.
    memory: Mutex<Vec<Vec<Block>>>,
    workers: usize,
    /// How long work waited for a permit; the metrics page reads it.
    queue_wait: DurationHistogram,
    /// Callers waiting for a permit now.
    waiting: AtomicUsize,
    /// Moving average of one piece of work, in microseconds: with the queue
    /// it predicts when a newcomer would be done.
    work_micros: AtomicU64,
    /// When the last piece of work ended (or the pool started), in
    /// microseconds since `started`.
    last_work_micros: AtomicU64,
    started: Instant,
}

/// Occupancy of the hashing pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub workers: usize,
    /// Computations holding a worker now.
    pub in_flight: usize,
}

impl Inner {
    /// Runs `f` with a working-memory buffer of at least `blocks` blocks,
    /// and keeps the buffer for the next hash if it has the configured size.
    fn with_memory<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let pooled = self.memory.lock().ok().and_then(|mut pool| pool.pop());
        let mut memory = match pooled {
            Some(m) if m.len() >= blocks => m,
            other => {
                if let Some(m) = other {
                    self.give_back(m);
                }
                vec![Block::default(); blocks]
            }
        };
        let out = f(&mut memory);
        // Buffers sized for a stored hash's other parameters are dropped.
        if memory.len() == self.params.block_count() {
            self.give_back(memory);
        }
        out
    }

    fn give_back(&self, memory: Vec<Block>) {
        if let Ok(mut pool) = self.memory.lock() {
            pool.push(memory);
        }
    }

    fn hash(&self, password: &[u8]) -> anyhow::Result<String> {
        self.with_memory(self.params.block_count(), |memory| {
            hash_with(&self.params, password, memory)
        })
    }
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
        let mut memory = vec![Block::default(); params.block_count()];
        let timed = Instant::now();
        let dummy_hash = hash_with(&params, &random, &mut memory)?;
        let first_hash = timed.elapsed();
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                permits: Arc::new(Semaphore::new(workers.max(1))),
                dummy_hash,
                memory: Mutex::new(vec![memory]),
                workers: workers.max(1),
                queue_wait: DurationHistogram::new(QUEUE_WAIT_BUCKETS),
                waiting: AtomicUsize::new(0),
                work_micros: AtomicU64::new(micros(first_hash)),
                last_work_micros: AtomicU64::new(0),
                started: Instant::now(),
            }),
        })
    }

    /// Read from the semaphore when asked, so hashing pays nothing for it.
    pub fn pool_stats(&self) -> PoolStats {
        let free = self.inner.permits.available_permits();
        PoolStats {
            workers: self.inner.workers,
            in_flight: self.inner.workers.saturating_sub(free),
        }
    }

    pub fn queue_wait(&self) -> &DurationHistogram {
        &self.inner.queue_wait
    }

    pub async fn hash(&self, password: &Password) -> Result<String, AppError> {
        let inner = self.inner.clone();
        let bytes = password.expose().as_bytes().to_vec();
        self.run(move || inner.hash(&bytes).map_err(AppError::internal))
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
            let ok = matches_hash(&inner, &bytes, &parsed);
            if !ok || !is_real {
                return Ok(Verified::No);
            }
            if is_outdated(&parsed, &inner.params) {
                return inner
                    .hash(&bytes)
                    .map(Verified::YesRehashed)
                    .map_err(AppError::internal);
            }
            Ok(Verified::Yes)
        })
        .await?
    }

    /// An idle pool with a stale estimate: work now is a probe, whose time
    /// replaces the estimate instead of moving it by an eighth.
    fn probing(&self) -> bool {
        self.idle() && self.estimate_age() > PROBE_AFTER
    }

    /// Time since the estimate last learnt from finished work.
    fn estimate_age(&self) -> Duration {
        let last = Duration::from_micros(self.inner.last_work_micros.load(Ordering::Relaxed));
        self.inner.started.elapsed().saturating_sub(last)
    }

    /// A worker is free and nobody waits for one.
    fn idle(&self) -> bool {
        self.inner.waiting.load(Ordering::Relaxed) == 0 && self.inner.permits.available_permits() > 0
    }

    /// When work queued now would be done, from the queue ahead of it and
    /// the average piece of work.
    fn expected_done_in(&self) -> Duration {
        let work = Duration::from_micros(self.inner.work_micros.load(Ordering::Relaxed));
        let free = self.inner.permits.available_permits();
        let ahead = self.inner.waiting.load(Ordering::Relaxed);
        if free > ahead {
            return work;
        }
        // Every worker is busy: the queue moves one round of work per
        // `workers` finished pieces.
        let rounds = (ahead - free) / self.inner.workers + 1;
        work * u32::try_from(rounds).unwrap_or(u32::MAX) + work
    }

    /// Refuses at once ([`AppError::Overloaded`]) when work queued now
    /// could not be done before the call's deadline; fine outside a call.
    ///
    /// An idle pool whose estimate is older than [`PROBE_AFTER`] takes the
    /// work whatever the estimate says: only work updates it, and a pool
    /// that refused because of one slow spell (a starved machine) would
    /// otherwise refuse every call with a short deadline for good.
    pub fn admit(&self) -> Result<(), AppError> {
        if self.probing() {
            return Ok(());
        }
        if let Some(deadline) = crate::deadline::current() {
            let done_in = self.expected_done_in();
            if tokio::time::Instant::now() + done_in > deadline {
                return Err(AppError::Overloaded(done_in));
            }
        }
        Ok(())
    }

    /// Runs CPU-heavy work (hashing, password strength estimation) on the
    /// bounded blocking pool, never on the async executor.
    ///
    /// Inside a call with a deadline (`crate::deadline`), work that could
    /// not be finished by then is refused at once with
    /// [`AppError::Overloaded`], before and again after the wait for a
    /// worker: under overload the pool then spends itself on calls whose
    /// callers still wait for the answer, and the others learn to back off
    /// at once instead of timing out.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let probe = self.probing();
        self.admit()?;
        let deadline = crate::deadline::current();
        let queued = Instant::now();
        // Work that found a worker free was judged by `admit`; work that
        // waited is judged again, by the time it is to start.
        let (permit, waited) = match self.inner.permits.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => {
                self.inner.waiting.fetch_add(1, Ordering::Relaxed);
                let acquired = self.inner.permits.clone().acquire_owned().await;
                self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
                (acquired.map_err(AppError::internal)?, true)
            }
        };
        self.inner.queue_wait.observe(queued.elapsed());
        if let Some(deadline) = deadline.filter(|_| waited) {
            let work = Duration::from_micros(self.inner.work_micros.load(Ordering::Relaxed));
            if tokio::time::Instant::now() + work > deadline {
                return Err(AppError::Overloaded(self.expected_done_in()));
            }
        }
        // The permit travels with the work: a caller that gives up (deadline,
        // cancelled RPC) cannot free it while the computation still runs, or
        // cancelled calls would pile up hashes beyond the bound.
        // The caller's span goes along, so what the work logs (or an error
        // it causes) is attributed to the RPC and use case that asked.
        let span = tracing::Span::current();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let done = span.in_scope(work);
            inner.record_work(started.elapsed(), probe && !waited);
            done
        })
        .await
        .map_err(AppError::internal)
    }
}

impl Inner {
    /// Folds one piece of work into the average (weight 1/8: recent
    /// enough to follow a change of load, smooth enough to ignore one
    /// outlier).
    fn record_work(&self, took: Duration, probe: bool) {
        self.last_work_micros
            .store(micros(self.started.elapsed()), Ordering::Relaxed);
        let took = micros(took);
        if probe {
            self.work_micros.store(took, Ordering::Relaxed);
            return;
        }
        let _ = self
            .work_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(avg - avg / 8 + took / 8)
            });
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn argon2_for(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) of `password`
/// with a fresh salt, computed in `memory`.
fn hash_with(params: &Params, password: &[u8], memory: &mut [Block]) -> anyhow::Result<String> {
    let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("argon2 hashing failed: {e}");
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let argon = argon2_for(params);
    let output = Output::init_with(params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN), |out| {
        argon
            .hash_password_into_with_memory(password, salt_bytes, out, &mut *memory)
            .map_err(Into::into)
    })
    .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to `stored` with the algorithm, version and
/// parameters recorded in it. Anything unparsable is a mismatch.
fn matches_hash(inner: &Inner, password: &[u8], stored: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(stored.algorithm), Params::try_from(stored))
    else {
        return false;
    };
    let version = match stored.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    let computed = inner.with_memory(params.block_count(), |memory| {
        Output::init_with(expected.len(), |out| {
            argon
                .hash_password_into_with_memory(password, salt_bytes, out, memory)
                .map_err(Into::into)
        })
    });
    // `Output`'s equality is constant-time.
    computed.is_ok_and(|c| c == *expected)
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

impl crate::metrics::WorkerPool for PasswordHasher {
    fn in_flight_and_workers(&self) -> (usize, usize) {
        let pool = self.pool_stats();
        (pool.in_flight, pool.workers)
    }

    fn queue_wait(&self) -> &DurationHistogram {
        PasswordHasher::queue_wait(self)
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
    async fn an_idle_pool_takes_work_whatever_its_estimate_says() -> anyhow::Result<()> {
        // One slow spell (a starved machine) left an estimate longer than
        // the deadline: the idle pool must still run the work, and so
        // learn the real cost, instead of refusing every such call.
        let h = PasswordHasher::new(FAST, 1)?;
        for _ in 0..40 {
            h.inner.record_work(Duration::from_secs(10), false);
        }
        assert!(h.expected_done_in() > Duration::from_secs(1));
        // While the estimate is fresh it is trusted: refused at once.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let refused = crate::deadline::within(deadline, h.hash(&pw("correct horse battery"))).await;
        assert!(matches!(refused, Err(AppError::Overloaded(_))), "{refused:?}");
        // Once it is stale, the idle pool works and learns.
        h.inner.last_work_micros.store(0, Ordering::Relaxed);
        tokio::time::sleep(PROBE_AFTER + Duration::from_millis(50)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let hashed = crate::deadline::within(deadline, h.hash(&pw("correct horse battery"))).await;
        assert!(hashed.is_ok(), "{hashed:?}");
        for _ in 0..40 {
            crate::deadline::within(deadline, h.hash(&pw("correct horse battery"))).await?;
        }
        assert!(
            h.expected_done_in() < Duration::from_secs(1),
            "{:?}",
            h.expected_done_in()
        );
        Ok(())
    }

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
    async fn hashes_are_interchangeable_with_the_argon2_crate() -> anyhow::Result<()> {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = PasswordHasher::new(FAST, 1)?;
        let params = Params::new(FAST.memory_kib, FAST.iterations, FAST.parallelism, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let theirs = argon2_for(&params)
            .hash_password(b"correct horse", &SaltString::generate(&mut OsRng))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string();
        assert_eq!(
            h.verify(&pw("correct horse"), Some(&theirs)).await?,
            Verified::Yes
        );
        assert_eq!(h.verify(&pw("correct horsE"), Some(&theirs)).await?, Verified::No);
        let ours = h.hash(&pw("correct horse")).await?;
        let parsed = PasswordHash::new(&ours).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(
            argon2_for(&params)
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            argon2_for(&params)
                .verify_password(b"correct horsE", &parsed)
                .is_err()
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_pool_reports_running_work_and_queue_waits() -> anyhow::Result<()> {
        let h = PasswordHasher::new(FAST, 1)?;
        assert_eq!(h.pool_stats().workers, 1);
        assert_eq!(h.pool_stats().in_flight, 0);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let h = h.clone();
            async move { h.run(move || hold.recv().is_ok()).await }
        });
        while h.pool_stats().in_flight == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.pool_stats().in_flight, 1);
        let queued = tokio::spawn({
            let h = h.clone();
            async move { h.run(|| ()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        release.send(())?;
        assert!(busy.await??);
        queued.await??;
        assert_eq!(h.pool_stats().in_flight, 0);
        assert_eq!(h.queue_wait().count(), 2, "one wait per run, queued or not");
        Ok(())
    }

    #[tokio::test]
    async fn working_memory_is_reused_not_reallocated() -> anyhow::Result<()> {
        let h = PasswordHasher::new(FAST, 2)?;
        let hash = h.hash(&pw("correct horse")).await?;
        for _ in 0..5 {
            h.verify(&pw("correct horse"), Some(&hash)).await?;
            h.verify(&pw("wrong horse"), None).await?;
        }
        let pooled = h.inner.memory.lock().map(|p| p.len()).unwrap_or(usize::MAX);
        assert!(pooled <= 2, "{pooled} buffers kept for 2 workers");
        // A stored hash with other parameters is checked in a buffer of its
        // own size, which is not kept.
        let bigger = PasswordHasher::new(
            Argon2Settings {
                memory_kib: 2048,
                ..FAST
            },
            1,
        )?;
        let big_hash = bigger.hash(&pw("correct horse")).await?;
        assert!(matches!(
            h.verify(&pw("correct horse"), Some(&big_hash)).await?,
            Verified::Yes
        ));
        let sizes: Vec<usize> = h
            .inner
            .memory
            .lock()
            .map(|p| p.iter().map(Vec::len).collect())
            .unwrap_or_default();
        assert!(sizes.iter().all(|&n| n == 1024), "{sizes:?}");
        Ok(())
    }

    #[tokio::test]
    async fn malformed_or_foreign_hashes_never_match() -> anyhow::Result<()> {
        let h = PasswordHasher::new(FAST, 1)?;
        for stored in [
            "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0$",
            "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0",
            "$argon2id$v=7$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$scrypt$ln=16,r=8,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let answer = h.verify(&pw("correct horse"), Some(stored)).await;
            assert!(
                matches!(answer, Ok(Verified::No) | Err(AppError::Internal(_))),
                "{stored}: {answer:?}"
            );
        }
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
