//! The egress guard: which addresses an outbound request made on behalf of a plugin or an
//! order's notification may reach. One policy for every outbound path (the plugins' `wasi:http`
//! capability, the webhook channel), so a private-network rule cannot hold on one and be
//! forgotten on the other.
//!
//! Never: unspecified, multicast/broadcast, and the cloud metadata endpoints. Loopback,
//! private (RFC 1918, unique-local), CGNAT and link-local only when the policy allows private
//! targets (tests, local development, an operator's internal receivers). A name is refused if
//! *any* of its addresses is refused, and callers connect to the addresses checked here, not
//! to the name again, so a DNS answer that changes between check and connect (rebinding)
//! cannot redirect them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What kind of destination an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// Loopback, RFC 1918, CGNAT, unique-local or link-local: only when private targets are
    /// allowed.
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

/// Why a destination was refused or could not be found.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("{host} resolves to {address}, which outbound requests may not reach ({class})")]
    Prohibited {
        host: String,
        address: IpAddr,
        class: &'static str,
    },
    #[error("{host} could not be resolved: {source}")]
    Dns {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} has no address")]
    NotFound { host: String },
}

/// Which destinations outbound requests may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Loopback, private, CGNAT and link-local targets too.
    pub allow_private: bool,
}

impl EgressPolicy {
    /// Whether an address may be connected to.
    pub fn allows(self, ip: IpAddr) -> bool {
        match classify(ip) {
            AddressClass::Public => true,
            AddressClass::Private => self.allow_private,
            AddressClass::Forbidden => false,
        }
    }

    /// Why `ip` is refused, for the error; `None` when it is allowed.
    fn refusal(self, host: &str, ip: IpAddr) -> Option<EgressError> {
        let class = match classify(ip) {
            AddressClass::Public => return None,
            AddressClass::Private if self.allow_private => return None,
            AddressClass::Private => "a private, loopback or link-local address",
            AddressClass::Forbidden => "an unspecified, multicast or cloud metadata address",
        };
        Some(EgressError::Prohibited {
            host: host.to_owned(),
            address: ip,
            class,
        })
    }

    /// The addresses of `host` (a name or an IP literal, brackets allowed) at `port`, all of
    /// them allowed; refused when any is not.
    pub async fn resolve(self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|source| EgressError::Dns {
                    host: bare.to_owned(),
                    source,
                })?
                .collect(),
        };
        if let Some(refused) = addrs.iter().find_map(|a| self.refusal(bare, a.ip())) {
            return Err(refused);
        }
        if addrs.is_empty() {
            return Err(EgressError::NotFound {
                host: bare.to_owned(),
            });
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|_| unreachable!("{s} is an address"))
    }

    #[test]
    fn classifies_addresses() {
        let c = |s: &str| classify(ip(s));
        assert_eq!(c("93.184.216.34"), AddressClass::Public);
        assert_eq!(c("127.0.0.1"), AddressClass::Private);
        assert_eq!(c("10.1.2.3"), AddressClass::Private);
        assert_eq!(c("100.64.0.1"), AddressClass::Private);
        assert_eq!(c("169.254.1.1"), AddressClass::Private);
        assert_eq!(c("169.254.169.254"), AddressClass::Forbidden);
        assert_eq!(c("0.0.0.0"), AddressClass::Forbidden);
        assert_eq!(c("::1"), AddressClass::Private);
        assert_eq!(c("::ffff:169.254.169.254"), AddressClass::Forbidden);
        assert_eq!(c("::ffff:10.0.0.1"), AddressClass::Private);
        assert_eq!(c("fe80::1"), AddressClass::Private);
        assert_eq!(c("fd00:ec2::254"), AddressClass::Forbidden);
        assert_eq!(c("2606:4700::1111"), AddressClass::Public);
    }

    #[tokio::test]
    async fn names_and_literals_are_checked_alike() {
        let strict = EgressPolicy::default();
        let open = EgressPolicy {
            allow_private: true,
        };
        for host in ["127.0.0.1", "[::1]", "localhost"] {
            assert!(
                matches!(
                    strict.resolve(host, 80).await,
                    Err(EgressError::Prohibited { .. })
                ),
                "{host} is private"
            );
            assert!(open.resolve(host, 80).await.is_ok(), "{host} when allowed");
        }
        assert!(matches!(
            open.resolve("169.254.169.254", 80).await,
            Err(EgressError::Prohibited { .. })
        ));
        assert_eq!(
            open.resolve("10.0.0.1", 8443).await.ok(),
            Some(vec![SocketAddr::new(ip("10.0.0.1"), 8443)])
        );
    }
}
