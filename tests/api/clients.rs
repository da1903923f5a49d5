//! The example clients in examples/ run their whole flow against a real
//! server, which proves the contract from outside Rust: stubs generated from
//! proto/auth.proto alone, error details decoded with each language's own
//! googleapis types. Their dependencies come from `examples/install.sh`;
//! without them a test prints `SKIPPED: ...` and passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::helpers::*;

/// Long enough for a cold start of the interpreter and stub generation.
const TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn skip(why: &str, install: &str) {
    skip_test(&format!(
        "{why}; install with `bash examples/install.sh` (or `{install}`)"
    ));
}

/// Runs `program script <addr of a fresh authd>` and fails the test, showing
/// the child's output, unless it exits with 0.
async fn run_flow(program: &str, script: PathBuf) {
    let app = spawn_app().await;
    let child = Command::new(program)
        .arg(&script)
        .arg(app.addr.to_string())
        .current_dir(repo())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TIMEOUT, child)
        .await
        .unwrap_or_else(|_| panic!("{program} {} did not finish within {TIMEOUT:?}", script.display()))
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {} failed ({})\n--- stdout\n{stdout}--- stderr\n{stderr}",
        script.display(),
        output.status,
    );
    print!("{stdout}");
    eprint!("{stderr}");
}

#[tokio::test]
async fn the_python_example_runs_a_whole_session() {
    let imports = "import grpc, grpc_tools.protoc, grpc_status.rpc_status, \
                   google.api.annotations_pb2, google.rpc.error_details_pb2, pyotp";
    let install = "pip install -r examples/python/requirements.txt";
    match Command::new("python3").args(["-c", imports]).output().await {
        Err(e) => return skip(&format!("python3 cannot run ({e})"), install),
        Ok(probe) if !probe.status.success() => {
            let error = String::from_utf8_lossy(&probe.stderr);
            let last = error.lines().last().unwrap_or_default();
            return skip(&format!("Python modules missing ({last})"), install);
        }
        Ok(_) => {}
    }
    run_flow("python3", repo().join("examples/python/flow.py")).await;
}

#[tokio::test]
async fn the_node_example_runs_a_whole_session() {
    let install = "cd examples/node && npm ci";
    if let Err(e) = Command::new("node").arg("--version").output().await {
        return skip(&format!("node cannot run ({e})"), install);
    }
    if !repo().join("examples/node/node_modules").is_dir() {
        return skip("examples/node/node_modules is absent", install);
    }
    run_flow("node", repo().join("examples/node/flow.js")).await;
}
