//! Outbound HTTP through the standard `wasi:http/outgoing-handler`, deny by default.
//!
//! A request goes out only if (1) the manifest grants `[capabilities.http]`, (2) its
//! `host:port` is on the allowlist exactly, and (3) every address the name resolves to passes
//! the host's egress guard ([`oms_egress`], shared with the webhook channel): never
//! unspecified, multicast/broadcast or the cloud metadata addresses; never loopback, private,
//! CGNAT or link-local unless the manifest sets `allow_private` (tests, local development).
//! The host then connects to the address it checked, not to the name, so a DNS answer that
//! changes between check and connect (rebinding) cannot redirect it. HTTPS verifies the
//! allowlisted name against Mozilla's roots (`http_tls.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::http1;
use oms_egress::{EgressError, EgressPolicy};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::error::LoadError;
use crate::manifest::Manifest;

/// Connect timeout when the guest sets none; the call's deadline bounds it anyway.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a plugin may send requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    allow: Vec<(String, u16)>,
    egress: EgressPolicy,
}

impl HttpGrant {
    /// `None` when the manifest grants no HTTP; an entry that is not `host:port` is refused.
    pub fn from_manifest(m: &Manifest) -> Result<Option<Self>, LoadError> {
        let Some(spec) = &m.capabilities.http else {
            return Ok(None);
        };
        let allow = spec
            .allow
            .iter()
            .map(|entry| {
                parse_host_port(entry).ok_or_else(|| LoadError::Capability {
                    plugin: m.name.clone(),
                    capability: "http",
                    reason: format!("allow entry {entry:?} is not host:port"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Self {
            allow,
            egress: EgressPolicy {
                allow_private: spec.allow_private,
            },
        }))
    }

    /// Whether `host:port` is on the allowlist (host names compare case-insensitively).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host))
    }
}

fn parse_host_port(entry: &str) -> Option<(String, u16)> {
    let (host, port) = entry.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.to_ascii_lowercase(), port.parse().ok()?))
}

/// The `wasi:http` hooks of one call: every outgoing request passes through [`send_checked`].
pub struct HttpHooks {
    pub(crate) plugin: Arc<str>,
    pub(crate) grant: Option<Arc<HttpGrant>>,
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        let plugin = self.plugin.clone();
        let grant = self.grant.clone();
        Box::new(async move {
            let response = send_checked(&plugin, grant.as_deref(), request, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

fn is_https(uri: &http::Uri) -> bool {
    uri.scheme() == Some(&http::uri::Scheme::HTTPS)
}

/// The one address a request may go to, or why it may not go anywhere.
async fn destination(
    plugin: &str,
    grant: Option<&HttpGrant>,
    uri: &http::Uri,
) -> Result<SocketAddr, Error> {
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if is_https(uri) { 443 } else { 80 });
    let Some(grant) = grant else {
        tracing::warn!(plugin, %host, port, "plugin HTTP refused: capability not granted");
        return Err(Error::HttpRequestDenied);
    };
    if !grant.allows(&host, port) {
        tracing::warn!(plugin, %host, port, "plugin HTTP refused: not on the allowlist");
        return Err(Error::HttpRequestDenied);
    }
    match grant.egress.resolve(&host, port).await {
        Ok(addrs) => addrs.first().copied().ok_or(Error::DestinationNotFound),
        Err(EgressError::Prohibited { address, .. }) => {
            tracing::warn!(plugin, %host, port, %address, "plugin HTTP refused: destination address not allowed");
            Err(Error::DestinationIpProhibited)
        }
        Err(EgressError::Dns { source, .. }) => Err(Error::DnsError {
            rcode: Some(source.to_string()),
            info_code: None,
        }),
        Err(EgressError::NotFound { .. }) => Err(Error::DestinationNotFound),
    }
}

fn empty_body() -> WasiBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Checks the grant, resolves, checks every address, connects to a checked one, sends.
pub async fn send_checked(
    plugin: &str,
    grant: Option<&HttpGrant>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<http::Response<WasiBody>, Error> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let uri = request.uri().clone();
    let connected = async {
        let addr = destination(plugin, grant, &uri).await?;
        let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Connect)?;
        // Each connection task ends when the response body and the sender are dropped, at
        // the latest with the call's store.
        if is_https(&uri) {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let tls = super::http_tls::connect(stream, host).await?;
            let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            Ok::<_, Error>(sender)
        } else {
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            Ok(sender)
        }
    };
    let mut sender = match connected.await {
        Ok(c) => c,
        Err(refusal) => {
            // Drain (never send) the body the guest may still be writing, so that its writes
            // succeed and it learns the refusal from the response future, the one place the
            // contract reports it, instead of from a closed stream. The drain ends with the
            // body, at the latest when the call's store is dropped.
            let mut body = std::mem::replace(request.body_mut(), empty_body());
            tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
            return Err(refusal);
        }
    };
    // Origin-form request line: the authority travels in the Host header.
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let send = sender.send_request(request);
    let response = match options.and_then(|o| o.first_byte_timeout) {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??,
        None => send.await?,
    };
    Ok(response.map(|body| body.map_err(Error::from).boxed_unsync()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_is_exact_host_and_port() {
        let g = HttpGrant {
            allow: vec![parse_host_port("Stock.Example.com:8080").unwrap()],
            egress: EgressPolicy::default(),
        };
        assert!(g.allows("stock.example.com", 8080));
        assert!(!g.allows("stock.example.com", 80));
        assert!(!g.allows("evil.example.com", 8080));
        assert_eq!(parse_host_port("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(parse_host_port("nohost"), None);
    }
}
