//! Property tests of plugin loading, the proptest form of issue 11's manifest and `.wasm`
//! fuzz targets: any manifest text, any bytes and any corruption of a real component are
//! loaded or refused with a `LoadError`, never a panic; bytes that are no component are
//! always refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use oms_plugin_runtime::{LoadError, Manifest};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// `default` cases, or `PROPTEST_CASES` for a longer run (an explicit case count would
/// otherwise override the variable).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `fakepay`'s manifest with its digest replaced by that of `wasm`.
fn manifest_for(wasm: &[u8]) -> String {
    let text = std::fs::read_to_string(manifest("fakepay")).unwrap();
    let digest = hex::encode(Sha256::digest(wasm));
    set_line(&text, "sha256", &format!("\"{digest}\""))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn any_manifest_text_is_parsed_or_refused(text in any::<String>()) {
        let _ = Manifest::parse(&text, Path::new("p.toml"));
    }

    #[test]
    fn any_manifest_values_are_parsed_or_refused(
        name in any::<String>(),
        kind in prop_oneof![Just("payment".to_owned()), any::<String>()],
        contract in prop_oneof![Just("oms:plugins@0.1.0".to_owned()), any::<String>()],
        memory_mib in any::<i64>(),
        deadline_ms in any::<i64>(),
        allow in proptest::collection::vec(any::<String>(), 0..3),
    ) {
        let mut doc = toml::Table::new();
        doc.insert("name".into(), name.into());
        doc.insert("kind".into(), kind.into());
        doc.insert("contract".into(), contract.into());
        doc.insert("version".into(), "1.0.0".into());
        doc.insert("sha256".into(), "0".repeat(64).into());
        let mut limits = toml::Table::new();
        limits.insert("memory_mib".into(), memory_mib.into());
        limits.insert("deadline_ms".into(), deadline_ms.into());
        doc.insert("limits".into(), limits.into());
        let mut http = toml::Table::new();
        http.insert("allow".into(), allow.into());
        let mut capabilities = toml::Table::new();
        capabilities.insert("http".into(), http.into());
        doc.insert("capabilities".into(), capabilities.into());
        let _ = Manifest::parse(&toml::to_string(&doc).unwrap(), Path::new("p.toml"));
    }
}

#[test]
fn bytes_that_are_no_component_are_always_refused() {
    let rt = runtime();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let path = manifest("fakepay");
    proptest!(ProptestConfig::with_cases(cases(256)), |(bytes in proptest::collection::vec(any::<u8>(), 0..2048))| {
        let text = manifest_for(&bytes);
        let refused = tokio.block_on(rt.check_bytes(&text, &path, bytes));
        prop_assert!(
            matches!(refused, Err(LoadError::Compile { .. } | LoadError::WrongWorld { .. })),
            "{refused:?}"
        );
    });
}

#[test]
fn a_corrupted_component_is_loaded_or_refused_never_a_panic() {
    let rt = runtime();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let path = manifest("fakepay");
    let wasm = std::fs::read(plugins_dir().join("fakepay.wasm")).unwrap();
    let len = wasm.len();
    proptest!(ProptestConfig::with_cases(cases(48)), |(flips in proptest::collection::vec((0..len, any::<u8>()), 1..8))| {
        let mut corrupted = wasm.clone();
        for (at, byte) in flips {
            corrupted[at] = byte;
        }
        let text = manifest_for(&corrupted);
        // Loaded (a flip in a custom section or data) or refused: either is an answer.
        let _ = tokio.block_on(rt.check_bytes(&text, &path, corrupted));
    });
}
