use std::{env, fs, path::PathBuf};

#[path = "build/method_paths.rs"]
mod method_paths;
#[path = "build/openapi.rs"]
mod openapi;

/// The contract and the Google types it returns in error details; every
/// import comes along, so reflection and REST gateways can load the set alone.
const PROTOS: &[&str] = &[
    "auth.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build");
    // protox parses the protos in Rust, so no system protoc is needed; the
    // well-known google/protobuf types come built in.
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Not prost's `encode_to_vec`: it drops extension options, and with them
    // every `google.api.http` rule a gateway needs.
    fs::write(
        out_dir.join("auth_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    fs::write(
        out_dir.join("method_paths.rs"),
        method_paths::generate(&compiler.descriptor_pool(), "auth.v1")?,
    )?;
    fs::write(
        out_dir.join("openapi.json"),
        openapi::generate(&compiler.descriptor_pool())?,
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
