//! The ceiling of the password RPCs: how fast this machine computes argon2id
//! with authd's default parameters, measured in this process while authd
//! idles.

use std::time::{Duration, Instant};

use authd::config::Argon2Settings;

use crate::procfs::{CpuSnapshot, cores};

fn argon2_hasher() -> argon2::Argon2<'static> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let s = Argon2Settings::default();
    let params = Params::new(s.memory_kib, s.iterations, s.parallelism, Some(32)).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_once(argon: &argon2::Argon2<'_>, i: usize, memory: &mut [argon2::Block]) {
    let mut out = [0u8; 32];
    let password = format!("load test passphrase {i}");
    argon
        .hash_password_into_with_memory(password.as_bytes(), b"sixteen byte salt", &mut out, memory)
        .unwrap();
    std::hint::black_box(out);
}

fn argon2_memory() -> Vec<argon2::Block> {
    vec![argon2::Block::default(); Argon2Settings::default().memory_kib as usize]
}

/// Times of `n` argon2id hashes with the default parameters, one after the
/// other on one thread, after a warm-up. The memory blocks are allocated once
/// and reused: this is the hash itself, not page faults or malloc.
fn argon2_samples(n: usize) -> Vec<Duration> {
    let argon = argon2_hasher();
    let mut memory = argon2_memory();
    hash_once(&argon, 0, &mut memory);
    (0..n)
        .map(|i| {
            let t = Instant::now();
            hash_once(&argon, i, &mut memory);
            t.elapsed()
        })
        .collect()
}

/// Hashes per second with every core hashing at once (for reference).
fn argon2_parallel_rate(cores: usize, per_thread: usize) -> f64 {
    let argon = argon2_hasher();
    let t = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..cores {
            let argon = &argon;
            scope.spawn(move || {
                let mut memory = argon2_memory();
                for i in 0..per_thread {
                    hash_once(argon, c * 1000 + i, &mut memory);
                }
            });
        }
    });
    (cores * per_thread) as f64 / t.elapsed().as_secs_f64()
}

fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The argon2 baseline, measured at the start and again just before each
/// scenario that hashes (while the service idles); the ceiling uses the
/// median of all samples, since a co-tenant's burst can skew one series.
#[derive(Default)]
pub struct Argon2Baseline {
    pub samples: Vec<Duration>,
    pub series_medians: Vec<Duration>,
    /// CPU ticks used on the machine outside this process while measuring.
    pub foreign_ticks: u64,
    pub measuring: Duration,
    /// Hashes per second with every core hashing at once, per series: what
    /// the machine really delivers when all cores hash (shared caches and
    /// memory bandwidth, or SMT siblings, make it less than the ceiling).
    pub parallel_rates: Vec<f64>,
}

impl Argon2Baseline {
    pub async fn measure(&mut self, n: usize) {
        let before = CpuSnapshot::take(None);
        let t = Instant::now();
        let series = tokio::task::spawn_blocking(move || argon2_samples(n))
            .await
            .unwrap();
        self.measuring += t.elapsed();
        let after = CpuSnapshot::take(None);
        if let (Some(b), Some(a)) = (before.busy, after.busy) {
            self.foreign_ticks += a
                .saturating_sub(b)
                .saturating_sub(after.own.saturating_sub(before.own));
        }
        self.series_medians.push(median(&series));
        self.samples.extend(series);
        let cores = cores();
        let rate = tokio::task::spawn_blocking(move || argon2_parallel_rate(cores, n.div_ceil(2)))
            .await
            .unwrap();
        self.parallel_rates.push(rate);
    }

    pub fn parallel_rate(&self) -> f64 {
        let mut v = self.parallel_rates.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    pub fn median(&self) -> Duration {
        median(&self.samples)
    }
}
