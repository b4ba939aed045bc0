//! Outbound HTTP through the standard `wasi:http/outgoing-handler`, deny by default.
//!
//! A request goes out only if (1) the manifest grants `[capabilities.http]`, (2) its
//! `host:port` is on the allowlist exactly, and (3) every address the name resolves to is
//! acceptable: never unspecified, multicast/broadcast or the cloud metadata addresses; never
//! loopback, private, CGNAT or link-local unless the manifest sets `allow_private` (tests,
//! local development). The host then connects to the address it checked, not to the name, so
//! a DNS answer that changes between check and connect (rebinding) cannot redirect it. HTTPS
//! verifies the allowlisted name against Mozilla's roots (`http_tls.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::http1;
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
    allow_private: bool,
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
            allow_private: spec.allow_private,
        }))
    }

    /// Whether `host:port` is on the allowlist (host names compare case-insensitively).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host))
    }

    /// Whether a resolved address may be connected to.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        match classify(ip) {
            AddressClass::Public => true,
            AddressClass::Private => self.allow_private,
            AddressClass::Forbidden => false,
        }
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

/// What kind of destination an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// Loopback, RFC 1918, CGNAT, unique-local or link-local: only with `allow_private`.
    Private,
    /// Never: unspecified, multicast, broadcast, cloud metadata endpoints.
    Forbidden,
}

/// Classifies an address; IPv4-mapped IPv6 addresses are judged as the IPv4 they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    // AWS/GCP/Azure/OpenStack metadata, Alibaba's, and the Azure wire server.
    let metadata = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(100, 100, 100, 200),
        Ipv4Addr::new(168, 63, 129, 16),
    ];
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || metadata.contains(&ip) {
        AddressClass::Forbidden
    } else if ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || o[0] == 0
    {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    // fd00:ec2::254 is the AWS metadata endpoint over IPv6.
    if ip.is_unspecified()
        || ip.is_multicast()
        || ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
    {
        AddressClass::Forbidden
    } else if ip.is_loopback() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
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
    let lookup_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup_host.as_str(), port))
        .await
        .map_err(|e| Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?
        .collect();
    // Refuse if *any* answer is forbidden: a name that can resolve to a metadata or private
    // address is not trusted with the others either.
    if let Some(bad) = addrs.iter().find(|a| !grant.address_allowed(a.ip())) {
        tracing::warn!(plugin, %host, port, address = %bad.ip(), "plugin HTTP refused: destination address not allowed");
        return Err(Error::DestinationIpProhibited);
    }
    addrs.first().copied().ok_or(Error::DestinationNotFound)
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
    fn classifies_addresses() {
        let c = |s: &str| classify(s.parse().unwrap());
        assert_eq!(c("93.184.216.34"), AddressClass::Public);
        assert_eq!(c("127.0.0.1"), AddressClass::Private);
        assert_eq!(c("10.1.2.3"), AddressClass::Private);
        assert_eq!(c("100.64.0.1"), AddressClass::Private);
        assert_eq!(c("169.254.1.1"), AddressClass::Private);
        assert_eq!(c("169.254.169.254"), AddressClass::Forbidden);
        assert_eq!(c("0.0.0.0"), AddressClass::Forbidden);
        assert_eq!(c("::1"), AddressClass::Private);
        assert_eq!(c("::ffff:169.254.169.254"), AddressClass::Forbidden);
        assert_eq!(c("fe80::1"), AddressClass::Private);
        assert_eq!(c("fd00:ec2::254"), AddressClass::Forbidden);
        assert_eq!(c("2606:4700::1111"), AddressClass::Public);
    }

    #[test]
    fn allowlist_is_exact_host_and_port() {
        let g = HttpGrant {
            allow: vec![parse_host_port("Stock.Example.com:8080").unwrap()],
            allow_private: false,
        };
        assert!(g.allows("stock.example.com", 8080));
        assert!(!g.allows("stock.example.com", 80));
        assert!(!g.allows("evil.example.com", 8080));
        assert!(!g.address_allowed("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_host_port("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(parse_host_port("nohost"), None);
    }
}
