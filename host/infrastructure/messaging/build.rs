//! Compiles the event contract `proto/oms/events/v1/events.proto` with protox (pure Rust: no
//! `protoc` on the build machine) into prost messages only (no gRPC services).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: the compiled build script is reused from a shared
    // target directory by checkouts in other folders (CI clones anew each run), and a path
    // baked in at compile time would point at a checkout that may be gone.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../../proto");
    let file = proto_root.join("oms/events/v1/events.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([file], [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
