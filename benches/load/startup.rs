//! Start-up: the time from exec of the authd binary to a health Check
//! answering SERVING, with the development cluster (no `DATABASE_URL`), on
//! an empty data folder (first run: initdb, a new database, every
//! migration, a new signing key) and on the folder that first run left
//! behind (warm: the cluster exists and is stopped).
//!
//! The log's timestamps (JSON, RUST_LOG=info) say where the time went:
//! the milestones below are lines authd logs on its way up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::server::{authd_binary, free_port};

/// How often SERVING is asked for: the resolution of the measurement.
const POLL: Duration = Duration::from_millis(5);
const GIVE_UP: Duration = Duration::from_secs(60);

/// Log lines that mark the steps of a start, in the order they happen.
const MILESTONES: &[(&str, &str)] = &[
    ("initialising a local PostgreSQL cluster", "initdb"),
    ("DEVELOPMENT SETUP: DATABASE_URL is not set", "cluster up"),
    ("signing key", "migrated, key"),
    ("authd listening", "listening"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An empty data folder.
    First,
    /// The folder of an earlier run, its cluster stopped.
    Warm,
}

/// One start: exec → SERVING, and when each milestone was logged.
pub struct Start {
    pub kind: Kind,
    pub serving: Duration,
    pub milestones: Vec<(&'static str, Duration)>,
    /// Exec → the process exited after SIGTERM, for the record.
    pub stopped_in: Duration,
}

pub struct Outcome {
    pub starts: Vec<Start>,
    pub notes: Vec<String>,
    pub errors: u64,
}

impl Outcome {
    fn median(&self, kind: Kind) -> Option<Duration> {
        let mut all: Vec<Duration> = self
            .starts
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.serving)
            .collect();
        all.sort_unstable();
        all.get(all.len().saturating_sub(1) / 2).copied()
    }
}

/// `repeats` times: a first run in a new folder, stopped, then a warm start
/// in it, stopped.
pub async fn run(scratch: &Path, repeats: usize) -> Outcome {
    let mut outcome = Outcome {
        starts: Vec::new(),
        notes: Vec::new(),
        errors: 0,
    };
    for i in 0..repeats {
        let dir = scratch.join(format!("startup-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the start-up folder");
        for kind in [Kind::First, Kind::Warm] {
            match start_and_stop(&dir, kind).await {
                Ok(start) => outcome.starts.push(start),
                Err(e) => {
                    outcome.errors += 1;
                    outcome.notes.push(format!("startup: {kind:?} start failed: {e}"));
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    for (kind, label, target) in [
        (
            Kind::Warm,
            "existing development cluster (warm)",
            Duration::from_secs(1),
        ),
        (
            Kind::First,
            "empty data folder (first run: initdb)",
            Duration::from_secs(5),
        ),
    ] {
        let Some(median) = outcome.median(kind) else {
            continue;
        };
        let each: Vec<String> = outcome
            .starts
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| ms(s.serving))
            .collect();
        outcome.notes.push(format!(
            "startup, {label}: exec → SERVING {} ms (median of {}: {} ms); target < {} ms: {}",
            ms(median),
            each.len(),
            each.join("/"),
            ms(target),
            if median < target { "met" } else { "MISSED" },
        ));
    }
    // Where the time went, in the start nearest each median.
    for kind in [Kind::Warm, Kind::First] {
        let Some(median) = outcome.median(kind) else {
            continue;
        };
        if let Some(s) = outcome
            .starts
            .iter()
            .find(|s| s.kind == kind && s.serving == median)
        {
            let steps: Vec<String> = s
                .milestones
                .iter()
                .map(|(name, at)| format!("{name} {}", ms(*at)))
                .collect();
            outcome.notes.push(format!(
                "startup, {kind:?}, ms after exec: {}, SERVING {}; after SIGTERM exited at {}",
                steps.join(", "),
                ms(s.serving),
                ms(s.stopped_in),
            ));
        }
    }
    outcome
}

async fn start_and_stop(dir: &Path, kind: Kind) -> Result<Start, String> {
    let data_dir = dir.join("data");
    let log = dir.join(format!("authd-{kind:?}.log"));
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let listen = format!("127.0.0.1:{}", free_port());
    let addr = format!("http://{listen}");
    let mut command = tokio::process::Command::new(authd_binary());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AUTHD_DATA_DIR", &data_dir)
        .env("AUTHD_LISTEN", &listen)
        .env("AUTHD_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,sqlx=warn")
        // No .env file of a developer's in the way.
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .kill_on_drop(true);
    if let Some(bin) = std::env::var_os("AUTHD_PG_BIN") {
        command.env("AUTHD_PG_BIN", bin);
    }
    let wall = SystemTime::now();
    let t = Instant::now();
    let mut child = command.spawn().map_err(|e| format!("exec: {e}"))?;
    let serving = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("authd exited with {status}; see {}", log.display()));
        }
        if serving(&addr).await {
            break t.elapsed();
        }
        if t.elapsed() > GIVE_UP {
            let _ = child.kill().await;
            return Err(format!("not SERVING after {GIVE_UP:?}; see {}", log.display()));
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let stopped_in = match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) if status.success() => t.elapsed(),
        Ok(Ok(status)) => return Err(format!("authd exited with {status} after SIGTERM")),
        _ => {
            let _ = child.kill().await;
            return Err("authd did not stop within 30 s of SIGTERM".into());
        }
    };
    Ok(Start {
        kind,
        serving,
        milestones: milestones(&log, wall),
        stopped_in,
    })
}

async fn serving(addr: &str) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(addr.to_owned()) else {
        return false;
    };
    let Ok(channel) = endpoint.connect_timeout(Duration::from_secs(1)).connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32)
}

/// When each milestone line was logged, after `exec` (the first match of
/// each; milestones not logged are left out).
fn milestones(log: &PathBuf, exec: SystemTime) -> Vec<(&'static str, Duration)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let exec: chrono::DateTime<chrono::Utc> = exec.into();
    let mut found = Vec::new();
    for (needle, name) in MILESTONES {
        let at = text.lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let message = v["message"].as_str()?;
            if !message.contains(needle) {
                return None;
            }
            let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
            (ts.with_timezone(&chrono::Utc) - exec).to_std().ok()
        });
        if let Some(at) = at {
            found.push((*name, at));
        }
    }
    found
}
