//! Compiles the event contract `proto/oms/events/v1/events.proto` with protox (pure Rust: no
//! `protoc` on the build machine) into prost messages only (no gRPC services).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../proto");
    let file = proto_root.join("oms/events/v1/events.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([file], [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
