//! A guest's stdout and stderr, into the host log. WASI components (componentize-py and
//! componentize-js ones above all) print: a Python traceback of an uncaught exception goes to
//! stderr. Each line becomes a log record of the plugin (`target: "plugin"`, its name and
//! version, `stream`), stdout at `info` and stderr at `warn`, through the same level filter,
//! rate limit and size cap as the `log` capability, so printing grants a plugin nothing the
//! log capability does not. Always on, like `log`; a strict component has no stdio at all.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::Level;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::PluginContext;
use super::log::{MAX_MESSAGE_BYTES, truncate};

/// Which of the two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    fn level(self) -> Level {
        match self {
            Self::Stdout => Level::INFO,
            Self::Stderr => Level::WARN,
        }
    }
}

/// The bytes of the line being written, emitted at each newline, when it reaches the size
/// cap, and at the end of the call (when the store, and so the last handle, is dropped).
struct Lines {
    ctx: Arc<PluginContext>,
    stream: Stream,
    pending: Mutex<Vec<u8>>,
}

impl Lines {
    fn write(&self, mut bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            pending.extend_from_slice(&bytes[..end]);
            self.emit(&mut pending);
            bytes = &bytes[end + 1..];
        }
        pending.extend_from_slice(bytes);
        if pending.len() >= MAX_MESSAGE_BYTES {
            // Cut at a character boundary: a multi-byte character split across the cut
            // would show as two replacement characters.
            let cut = match std::str::from_utf8(&pending) {
                Ok(_) => pending.len(),
                Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                Err(_) => pending.len(),
            };
            let rest = pending.split_off(cut);
            self.emit(&mut pending);
            *pending = rest;
        }
    }

    fn emit(&self, pending: &mut Vec<u8>) {
        let line = String::from_utf8_lossy(pending)
            .trim_end_matches('\r')
            .to_owned();
        pending.clear();
        if line.is_empty() || !self.ctx.log.admit(self.stream.level()) {
            return;
        }
        let message = truncate(line);
        let (plugin, version, stream) = (&*self.ctx.name, &*self.ctx.version, self.stream.name());
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: "plugin", plugin, version, stream, "{message}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "plugin", plugin, version, stream, "{message}")
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let mut pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            self.emit(&mut pending);
        }
    }
}

/// One of a call's two output streams, as WASI sees it.
#[derive(Clone)]
pub(crate) struct GuestOutput(Arc<Lines>);

impl GuestOutput {
    pub(crate) fn new(ctx: Arc<PluginContext>, stream: Stream) -> Self {
        Self(Arc::new(Lines {
            ctx,
            stream,
            pending: Mutex::new(Vec::new()),
        }))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: lines are bounded and rate-limited, never queued.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::Manifest;

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

    fn context(lines_per_sec: u32) -> Arc<PluginContext> {
        let text = format!(
            "name = \"printer\"\nkind = \"payment-provider\"\ncontract = \"0.1.0\"\n\
             version = \"1.2.3\"\nsha256 = \"{}\"\n[limits]\nlog_lines_per_sec = {lines_per_sec}\n",
            "0".repeat(64)
        );
        let manifest = Manifest::parse(&text, Path::new("printer.toml")).unwrap();
        Arc::new(PluginContext::from_manifest(&manifest, None).unwrap())
    }

    /// The log lines `f` produced, as the text formatter writes them.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn each_line_is_a_record_of_the_plugin_and_the_last_one_is_kept_at_the_end() {
        let ctx = context(100);
        let lines = logged(|| {
            let mut out = GuestOutput::new(ctx.clone(), Stream::Stdout);
            let mut err = GuestOutput::new(ctx.clone(), Stream::Stderr);
            OutputStream::write(&mut out, Bytes::from_static(b"hello\nwor")).unwrap();
            OutputStream::write(&mut out, Bytes::from_static(b"ld\r\n\n")).unwrap();
            let traceback = b"Traceback (most recent call last):\n  File \"app.py\"";
            OutputStream::write(&mut err, Bytes::from_static(traceback)).unwrap();
            drop((out, err));
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].contains("INFO") && lines[0].contains("hello"),
            "{lines:?}"
        );
        assert!(lines[1].contains(" world "), "{lines:?}");
        assert!(
            lines[0].contains("plugin=\"printer\"")
                && lines[0].contains("version=\"1.2.3\"")
                && lines[0].contains("stream=\"stdout\""),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("WARN") && lines[2].contains("Traceback"),
            "{lines:?}"
        );
        // The unterminated last line, emitted when the call's store is dropped.
        assert!(
            lines[3].contains("File \"app.py\"") && lines[3].contains("stream=\"stderr\""),
            "{lines:?}"
        );
    }

    #[test]
    fn printing_is_rate_limited_like_the_log_capability() {
        let ctx = context(2);
        let lines = logged(|| {
            let mut out = GuestOutput::new(ctx.clone(), Stream::Stdout);
            OutputStream::write(&mut out, Bytes::from_static(b"1\n2\n3\n4\n")).unwrap();
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(ctx.log.dropped(), 2);
    }

    #[test]
    fn a_long_line_is_cut_between_characters() {
        let ctx = context(100);
        let lines = logged(|| {
            let mut out = GuestOutput::new(ctx.clone(), Stream::Stdout);
            let mut long = vec![b'a'; MAX_MESSAGE_BYTES - 1];
            long.push(0xC3); // the first byte of "é"
            OutputStream::write(&mut out, Bytes::from(long)).unwrap();
            OutputStream::write(&mut out, Bytes::from_static(b"\xA9t\xC3\xA9\n")).unwrap();
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains(" été "), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains('\u{FFFD}')), "{lines:?}");
    }
}
