//! Threads of their own for CPU-heavy work (argon2, strength estimates),
//! run at a lower scheduling priority than the async workers.
//!
//! On tokio's blocking threads the hashes shared the cores evenly with the
//! threads answering cheap calls: during a flood of logins from clients that
//! ignore RetryInfo, one GetMe in a hundred waited for a time slice behind a
//! hash (p99 170 ms against 11 ms in a polite flood, BENCHMARKS.md). At nice
//! [`NICE`] the kernel runs a woken async worker ahead of a hash, while a
//! hash still gets every cycle nothing else wants: an idle machine hashes as
//! fast as before, and a busy one answers its cheap calls first.
//!
//! The caller bounds the work in flight (the password pool's permits); the
//! queue here never holds more than that.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};

use crate::error::AppError;

/// The nice value of the workers: a weight of about a tenth of a nice-0
/// thread's when both want a core. Raising one's own nice value needs no
/// privilege; lowering it back would, which is why the work has threads of
/// its own instead of lowering tokio's shared blocking threads.
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

pub struct CpuWorkers {
    jobs: mpsc::Sender<Job>,
}

impl CpuWorkers {
    /// Starts `threads` workers named `{name}-{i}`; they end when this is
    /// dropped and the work queued before has run.
    pub fn start(name: &str, threads: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next
                        // job, never while one runs.
                        let next = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match next {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on a worker. A caller that stops waiting (deadline,
    /// cancelled call) does not stop the work: it holds whatever bound the
    /// caller took for it until it is done.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic in the work must not take a worker with it.
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
        });
        self.jobs
            .send(job)
            .map_err(|_| AppError::internal(anyhow::anyhow!("the CPU workers have stopped")))?;
        match outcome.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(AppError::internal(anyhow::anyhow!("CPU work panicked"))),
            Err(_) => Err(AppError::internal(anyhow::anyhow!("a CPU worker ended mid-work"))),
        }
    }
}

/// Lowers the calling thread's priority by [`NICE`] from where the process
/// runs (an operator's own `nice` is kept under it). Linux keeps the nice
/// value per thread, so `setpriority(PRIO_PROCESS, 0)` from a thread changes
/// only that thread. Where it is refused (a sandbox), the work runs at the
/// process's priority.
fn lower_priority() {
    let lowered = rustix::process::getpriority_process(None)
        .and_then(|now| rustix::process::setpriority_process(None, (now + NICE).min(19)));
    if let Err(e) = lowered {
        tracing::debug!(error = %e, "CPU workers keep the process's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of this thread as the kernel reports it
    /// (/proc/thread-self/stat, field 19).
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name may hold spaces; the fields after it do not.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn work_runs_on_named_threads_at_the_lower_priority_and_the_caller_keeps_its_own() {
        let workers = CpuWorkers::start("authd-test-cpu", 2).unwrap();
        let (name, nice) = workers
            .run(|| (std::thread::current().name().map(str::to_owned), own_nice()))
            .await
            .unwrap();
        assert_eq!(
            name.as_deref().map(|n| n.starts_with("authd-test-cpu-")),
            Some(true)
        );
        let before = own_nice();
        assert_eq!(nice, (before + i64::from(NICE)).min(19));
        assert_eq!(own_nice(), before, "the caller's thread must keep its priority");
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_workers_go_on() {
        let workers = CpuWorkers::start("authd-test-cpu", 1).unwrap();
        #[allow(clippy::panic)]
        let failed = workers.run(|| -> u32 { panic!("boom") }).await;
        assert!(failed.is_err());
        assert_eq!(workers.run(|| 7).await.unwrap(), 7);
    }
}
