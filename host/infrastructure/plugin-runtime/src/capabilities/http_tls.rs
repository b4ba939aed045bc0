//! TLS for the HTTP capability: rustls with the ring provider and Mozilla's root certificates
//! compiled in (webpki-roots), so trust does not depend on the machine's CA bundle. The server
//! name checked is the allowlisted host name, while the TCP connection goes to the address the
//! policy checked.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::Error;

/// One client configuration for the process (building it parses the root store).
fn config() -> Result<Arc<ClientConfig>, Error> {
    static CONFIG: OnceLock<Option<Arc<ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            // An explicit provider: the process-wide default is ambiguous when several
            // crates in the tree enable different rustls providers.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        })
        .clone()
        .ok_or(Error::TlsProtocolError)
}

/// Runs the TLS handshake for `host` over an established connection.
pub(crate) async fn connect(stream: TcpStream, host: &str) -> Result<TlsStream<TcpStream>, Error> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| Error::TlsProtocolError)?;
    TlsConnector::from(config()?)
        .connect(name, stream)
        .await
        .map_err(Error::Tls)
}
