//! What `/proc` says about CPU time and memory: of authd, of this process
//! and of the whole machine. Linux only; a missing reading prints as `?`.

use std::time::{Duration, Instant};

/// Microseconds per clock tick of /proc (USER_HZ is 100 on Linux).
pub const TICK_US: f64 = 10_000.0;

/// CPU time in clock ticks at one moment: the service, this process, and
/// the whole machine (busy, i.e. everything but idle, iowait and steal).
#[derive(Clone, Copy)]
pub struct CpuSnapshot {
    pub server: Option<u64>,
    pub own: u64,
    pub busy: Option<u64>,
}

/// CPU used during a scenario: ticks per party, and how busy the machine was.
pub struct CpuUse {
    pub server: Option<u64>,
    pub own: u64,
    /// PostgreSQL and anything else running on the machine.
    pub rest: Option<u64>,
    pub busy_percent: f64,
    /// The service's resident memory at the end, KiB.
    pub server_rss_kib: Option<u64>,
}

fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm)": state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

impl CpuUse {
    /// Two windows as one: ticks add up, busy is weighted by time, the
    /// memory is the later window's.
    pub fn merge(self, elapsed: Duration, later: CpuUse, later_elapsed: Duration) -> CpuUse {
        let add = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a + b);
        let (w1, w2) = (elapsed.as_secs_f64(), later_elapsed.as_secs_f64());
        CpuUse {
            server: add(self.server, later.server),
            own: self.own + later.own,
            rest: add(self.rest, later.rest),
            busy_percent: (self.busy_percent * w1 + later.busy_percent * w2) / (w1 + w2).max(1e-9),
            server_rss_kib: later.server_rss_kib.or(self.server_rss_kib),
        }
    }
}

impl CpuSnapshot {
    pub fn take(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|p| process_ticks(&p.to_string())),
            own: process_ticks("self").unwrap_or(0),
            busy: machine_busy_ticks(),
        }
    }

    fn since(&self, before: &Self, elapsed: Duration, cores: usize) -> CpuUse {
        let server = self.server.zip(before.server).map(|(a, b)| a.saturating_sub(b));
        let own = self.own.saturating_sub(before.own);
        let busy = self.busy.zip(before.busy).map(|(a, b)| a.saturating_sub(b));
        CpuUse {
            server,
            own,
            rest: busy.zip(server).map(|(b, s)| b.saturating_sub(s + own)),
            busy_percent: busy.map_or(f64::NAN, |b| {
                b as f64 * TICK_US / (elapsed.as_secs_f64() * 1e6 * cores as f64) * 100.0
            }),
            server_rss_kib: None,
        }
    }
}

/// The CPU columns of one table row: opened when a scenario's load starts,
/// closed once every load task has finished.
pub struct CpuWindow {
    before: CpuSnapshot,
    started: Instant,
    server_pid: Option<u32>,
}

impl CpuWindow {
    pub fn open(server_pid: Option<u32>) -> Self {
        Self {
            before: CpuSnapshot::take(server_pid),
            started: Instant::now(),
            server_pid,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn close(self) -> CpuUse {
        let mut cpu = CpuSnapshot::take(self.server_pid).since(&self.before, self.started.elapsed(), cores());
        cpu.server_rss_kib = self.server_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
        cpu
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A `kB` field of `/proc/PID/status` such as `VmRSS:` or `VmHWM:`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
