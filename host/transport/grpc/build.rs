//! Compiles `proto/` with protox (pure Rust: no `protoc` on the build machine) and keeps the
//! encoded descriptor set, which server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: the compiled build script is reused from a shared
    // target directory by checkouts in other folders (CI clones anew each run), and a path
    // baked in at compile time would point at a checkout that may be gone.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per API, so that each listener's reflection lists only the
    // services it serves.
    for (file, descriptor) in [
        ("oms/v1/orders.proto", "oms_descriptor.bin"),
        ("oms/admin/v1/admin.proto", "admin_descriptor.bin"),
    ] {
        let file = proto_root.join(file);
        println!("cargo:rerun-if-changed={}", file.display());
        let fds = protox::compile([file], [&proto_root])?;
        std::fs::write(
            out_dir.join(descriptor),
            prost::Message::encode_to_vec(&fds),
        )?;
        tonic_prost_build::configure()
            // Malformed request bodies are INVALID_ARGUMENT, not tonic-prost's INTERNAL.
            .codec_path("crate::codec::OmsCodec")
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)?;
    }
    Ok(())
}
