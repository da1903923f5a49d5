//! Client stubs for authd's AuthService and AdminService, generated from the
//! repository's contract. Client code only: this crate never serves authd's
//! services, and it must not depend on the `authd` crate.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("auth.proto").display()
    );
    // protox parses in Rust (no system protoc). prost needs the imported
    // descriptors to decide what it can derive; of the imports it writes
    // only google.api's option types, which `pb` leaves out, and takes the
    // well-known types from prost-types.
    let mut compiler = protox::Compiler::new([&proto_dir])?;
    compiler.include_imports(true).open_files(["auth.proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
