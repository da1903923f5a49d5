//! The independent Shared Signals receiver (examples/ssf/receiver.py, written
//! from the RFCs, not from authd's code) driven from tests: a push receiver
//! in a child process, the poll loop as a run to completion, and what each
//! recorded. Without python3 and PyJWT the helpers print `SKIPPED: ...` and
//! hand back `None`; `bash examples/install.sh` installs them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{scratch_dir, skip_test, tool_missing};
use crate::http1::{HttpResponse, Request};

/// A cold interpreter importing `cryptography` takes a few seconds on a
/// loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ssf/receiver.py")
}

/// Whether the receiver can run here; prints SKIPPED when it cannot.
pub async fn receiver_available() -> bool {
    match tool_missing("python3", &["-c", "import jwt, cryptography"]).await {
        None => true,
        Some(why) => {
            skip_test(&format!(
                "{why}; install with `bash examples/install.sh` (or `pip install -r examples/ssf/requirements.txt`)"
            ));
            false
        }
    }
}

/// The JWKS URL of a spawned app (its HTTP face).
pub fn jwks_url(app_addr: SocketAddr) -> String {
    format!("http://{app_addr}/.well-known/jwks.json")
}

/// receiver.py in push mode (RFC 8935), listening on loopback.
pub struct PushReceiver {
    /// `http://127.0.0.1:PORT/events`: where SETs are POSTed.
    pub url: String,
    pub addr: SocketAddr,
    out: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl PushReceiver {
    /// A receiver accepting SETs of `issuer` for `audience`, signed by a
    /// key of `jwks_url`; with `authorization`, only requests carrying that
    /// exact Authorization value. `None` (after SKIPPED) without python3 or
    /// PyJWT.
    pub async fn spawn(
        jwks_url: &str,
        issuer: &str,
        audience: &str,
        authorization: Option<&str>,
    ) -> Option<Self> {
        Self::spawn_expecting(jwks_url, issuer, audience, authorization, None).await
    }

    /// [`Self::spawn`], refusing a verification event whose `state` is not
    /// `state` (`invalid_state`, SSF 1.0 §8.1.4.1).
    pub async fn spawn_expecting(
        jwks_url: &str,
        issuer: &str,
        audience: &str,
        authorization: Option<&str>,
        state: Option<&str>,
    ) -> Option<Self> {
        if !receiver_available().await {
            return None;
        }
        let dir = scratch_dir("ssf-receiver");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("received.jsonl");
        let mut args = vec![
            "--issuer".to_owned(),
            issuer.to_owned(),
            "--audience".to_owned(),
            audience.to_owned(),
            "--jwks".to_owned(),
            jwks_url.to_owned(),
            "--out".to_owned(),
            out.to_string_lossy().into_owned(),
        ];
        if let Some(authorization) = authorization {
            args.extend(["--authorization".to_owned(), authorization.to_owned()]);
        }
        if let Some(state) = state {
            args.extend(["--expect-state".to_owned(), state.to_owned()]);
        }
        let (child, addr) = start(&args, "127.0.0.1:0", &dir).await;
        Some(Self {
            url: format!("http://{addr}/events"),
            addr,
            out,
            args,
            child: Some(child),
        })
    }

    /// Every line the receiver recorded, in order.
    pub fn lines(&self) -> Vec<Value> {
        read_lines(&self.out)
    }

    /// The SETs accepted (202), duplicates included, in order.
    pub fn received(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l.get("rejected").is_none())
            .collect()
    }

    /// The refusals: `{"rejected": err, "description", "jti"?}`.
    pub fn rejected(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l.get("rejected").is_some())
            .collect()
    }

    /// The accepted SETs once there are at least `count`, or whatever
    /// arrived when `within` ran out (the caller asserts on it).
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= count || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs `set` as a transmitter does (RFC 8935 §2).
    pub async fn post(&self, set: &str, authorization: Option<&str>) -> HttpResponse {
        self.post_as(set, "application/secevent+jwt", authorization).await
    }

    /// [`Self::post`] with another Content-Type.
    pub async fn post_as(&self, set: &str, content_type: &str, authorization: Option<&str>) -> HttpResponse {
        let mut request = Request::new("POST", "/events")
            .header("content-type", content_type)
            .header("accept", "application/json");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.body = set.as_bytes().to_vec();
        request.send(self.addr).await
    }

    /// Stops the receiver (a receiver outage); what it recorded stays.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port, appending to the same record.
    pub async fn restart_same_port(&mut self) {
        self.kill().await;
        let dir = self.out.parent().unwrap().to_owned();
        let (child, addr) = start(&self.args, &self.addr.to_string(), &dir).await;
        assert_eq!(addr, self.addr, "restarted on another port");
        self.child = Some(child);
    }
}

/// Starts `receiver.py push` on `listen` and waits for its `listening` line.
async fn start(args: &[String], listen: &str, dir: &Path) -> (Child, SocketAddr) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap();
    let mut child = Command::new("python3")
        .arg(script())
        .arg("push")
        .args(["--listen", listen])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting receiver.py: {e}"));
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("receiver.py did not start within {START_TIMEOUT:?}"))
        .unwrap();
    let Some(line) = first else {
        let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        panic!("receiver.py exited before listening:\n{log}");
    };
    let url = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line from receiver.py: {line}"));
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/events")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    (child, addr)
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    };
    text.lines()
        // A line being written as we read is not yet a line.
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// What `receiver.py poll` is asked to do (RFC 8936).
pub struct Poll<'a> {
    pub url: &'a str,
    pub authorization: &'a str,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub jwks_url: &'a str,
    pub max_events: u32,
    pub return_immediately: bool,
    /// Stop after this many SETs were recorded (then acknowledge them).
    pub until: Option<u32>,
    pub timeout: Duration,
    /// Refuse a verification event without this `state`.
    pub expect_state: Option<&'a str>,
}

/// How a poll run ended.
#[derive(Debug)]
pub struct PollRun {
    /// 0: done; 1: `until` not reached in time; 2: the server refused.
    pub exit_code: i32,
    /// Every line recorded, in order (see [`PushReceiver::lines`]).
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl PollRun {
    pub fn received(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l.get("rejected").is_none())
            .collect()
    }

    pub fn rejected(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l.get("rejected").is_some())
            .collect()
    }
}

/// Runs `receiver.py poll` to its end. `None` (after SKIPPED) without
/// python3 or PyJWT.
pub async fn run_poll(poll: &Poll<'_>) -> Option<PollRun> {
    if !receiver_available().await {
        return None;
    }
    let dir = scratch_dir("ssf-poll");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("received.jsonl");
    let mut command = Command::new("python3");
    command
        .arg(script())
        .arg("poll")
        .args(["--url", poll.url])
        .args(["--authorization", poll.authorization])
        .args(["--issuer", poll.issuer])
        .args(["--audience", poll.audience])
        .args(["--jwks", poll.jwks_url])
        .arg("--out")
        .arg(&out)
        .args(["--max-events", &poll.max_events.to_string()])
        .args(["--timeout", &poll.timeout.as_secs_f64().to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if poll.return_immediately {
        command.arg("--return-immediately");
    }
    if let Some(until) = poll.until {
        command.args(["--until", &until.to_string()]);
    }
    if let Some(state) = poll.expect_state {
        command.args(["--expect-state", state]);
    }
    let within = poll.timeout + START_TIMEOUT;
    let output = tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("receiver.py poll did not end within {within:?}"))
        .unwrap_or_else(|e| panic!("starting receiver.py poll: {e}"));
    Some(PollRun {
        exit_code: output.status.code().unwrap_or(-1),
        lines: read_lines(&out),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
