//! The example clients in examples/ run their whole flow against a real
//! server, which proves the contract from outside Rust: stubs generated from
//! proto/auth.proto alone, error details decoded with each language's own
//! googleapis types. Their dependencies come from `examples/install.sh`;
//! without them a test prints `SKIPPED: ...` and passes.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    let addr = app.addr.to_string();
    let stdout = run_tool(program, &[script.as_os_str(), addr.as_ref()], &[], TIMEOUT).await;
    print!("{stdout}");
}

#[tokio::test]
async fn the_python_example_runs_a_whole_session() {
    let imports = "import grpc, grpc_tools.protoc, grpc_status.rpc_status, \
                   google.api.annotations_pb2, google.rpc.error_details_pb2, pyotp";
    let install = "pip install -r examples/python/requirements.txt";
    if let Some(why) = tool_missing("python3", &["-c", imports]).await {
        return skip(&why, install);
    }
    run_flow("python3", repo().join("examples/python/flow.py")).await;
}

#[tokio::test]
async fn the_node_example_runs_a_whole_session() {
    let install = "cd examples/node && npm ci";
    if let Some(why) = tool_missing("node", &["--version"]).await {
        return skip(&why, install);
    }
    if !repo().join("examples/node/node_modules").is_dir() {
        return skip("examples/node/node_modules is absent", install);
    }
    run_flow("node", repo().join("examples/node/flow.js")).await;
}
