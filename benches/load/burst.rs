//! Memory under a burst: many Logins released at once, each holding an
//! argon2 working set while it waits for or runs its hash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use authd::pb::auth::v1::auth_service_client::AuthServiceClient;

use crate::client::{connect, login};
use crate::procfs::proc_status_kib;
use crate::seeding::Shared;
use crate::stats::{Row, Stats};

pub struct BurstResult {
    pub logins: usize,
    pub row: Row,
    pub wall: Duration,
    pub rss_before_kib: Option<u64>,
    pub lifetime_hwm_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub hwm_reset: bool,
    pub sampled_max_kib: u64,
}

/// `n` Logins released at once, over enough connections that the server
/// sees them all concurrently; peak RSS of `pid` meanwhile.
pub async fn login_burst(addr: &str, shared: &Arc<Shared>, n: usize, pid: Option<u32>) -> BurstResult {
    // The server allows 128 concurrent streams per connection.
    let channels = connect(addr, n.div_ceil(100).max(1)).await;
    let rss_before_kib = pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    let lifetime_hwm_kib = pid.and_then(|p| proc_status_kib(p, "VmHWM:"));
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    let hwm_reset = pid.is_some_and(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok());
    let done = Arc::new(AtomicBool::new(false));
    let sampled = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|p| {
        let done = Arc::clone(&done);
        let sampled = Arc::clone(&sampled);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = proc_status_kib(p, "VmRSS:") {
                    sampled.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let shared = Arc::clone(shared);
        let barrier = Arc::clone(&barrier);
        let mut client = AuthServiceClient::new(channels[i % channels.len()].clone());
        handles.push(tokio::spawn(async move {
            let account = &shared.accounts[i % shared.accounts.len()];
            let mut stats = Stats::default();
            barrier.wait().await;
            let t = Instant::now();
            let outcome = login(&mut client, account).await.map(drop);
            stats.record(t, outcome);
            stats
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all = Stats::default();
    for h in handles {
        all.merge(h.await.expect("burst task panicked"));
    }
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let hwm_kib = pid.and_then(|p| proc_status_kib(p, "VmHWM:"));
    BurstResult {
        logins: n,
        row: Row::from_stats(format!("login burst ×{n}"), all, wall),
        wall,
        rss_before_kib,
        lifetime_hwm_kib,
        hwm_kib,
        hwm_reset,
        sampled_max_kib: sampled.load(Ordering::Relaxed),
    }
}
