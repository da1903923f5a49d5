use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // protox parses the protos in Rust, so no system protoc is needed; the
    // well-known google/protobuf types come built in.
    let fds = protox::compile(["auth.proto", "google/rpc/error_details.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // The set includes every import, so reflection and REST gateways can load
    // it alone.
    fs::write(
        out_dir.join("auth_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
