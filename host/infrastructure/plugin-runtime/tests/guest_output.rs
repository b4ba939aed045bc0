//! What a plugin prints reaches the host log as records of that plugin. Its own test binary:
//! it installs the process-wide log subscriber it reads.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Rust plugin that panics prints the panic message to stderr before it traps (the
/// message a Python traceback would be): it used to be thrown away, leaving only a Wasm
/// backtrace in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_leaves_its_message_in_the_host_log() {
    let out = Captured::default();
    let writer = out.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let rt = runtime();
    rt.install(manifest("testing/trap")).await.unwrap();
    let failed = rt
        .payment("trap")
        .authorize(authorize_request("tok_ok", "printed"))
        .await;
    assert!(failed.is_err());
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("trap plugin: deliberate panic in authorize"))
        .unwrap_or_else(|| panic!("the panic message is not in the log:\n{text}"));
    assert!(
        line.contains("WARN")
            && line.contains("plugin=\"trap\"")
            && line.contains("stream=\"stderr\""),
        "{line}"
    );
}
