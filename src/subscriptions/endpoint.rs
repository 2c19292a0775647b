//! Where rest-hook notifications may go. A Subscription is written by its subscriber, who may
//! be a patient's app: without a check, the server would POST wherever it is told, including
//! to services on its own network that trust it (server-side request forgery). So endpoints
//! are on public addresses unless the operator allows private ones, and this is checked twice:
//! on the URL when the Subscription is written, and on every address its host resolves to when
//! a notification is sent (a name may resolve elsewhere later).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The operator's rules for rest-hook endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Plain http is accepted on any host (else only on loopback).
    pub allow_http: bool,
    /// Loopback, private-network and link-local addresses are accepted (else only public ones).
    pub allow_private: bool,
}

/// Whether `ip` is an address of the public internet: not loopback, private (RFC 1918, unique
/// local, site-local), shared (carrier NAT), link-local (where cloud metadata services
/// answer), unspecified, multicast, broadcast, documentation, reserved, IPv4-compatible, nor
/// an IPv6 address that carries one of those IPv4 addresses (mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let first = segments[0];
    let v4 = |high: u16, low: u16| Ipv4Addr::from(((high as u32) << 16) | low as u32);
    // Addresses that carry an IPv4 address reach it: NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(v4(segments[6], segments[7]));
    }
    if first == 0x2002 {
        return is_public_v4(v4(segments[1], segments[2]));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || segments[..6] == [0; 6]
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || first == 0x2001 && segments[1] == 0x0db8)
}

impl EndpointPolicy {
    /// Whether notifications may go to `ip`.
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip)
    }

    /// The HTTP client that sends notifications under this policy: no redirects followed (an
    /// endpoint names where notifications go, and a redirect must not send health data
    /// elsewhere), and host names resolved to admitted addresses only.
    pub fn client(&self) -> &'static reqwest::Client {
        // One client per resolver (the only part of the policy the client holds).
        static ANY: OnceLock<reqwest::Client> = OnceLock::new();
        static PUBLIC: OnceLock<reqwest::Client> = OnceLock::new();
        let cell = if self.allow_private { &ANY } else { &PUBLIC };
        let policy = *self;
        cell.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // A proxy would resolve and reach the host itself, past the resolver's check.
                .no_proxy()
                .connect_timeout(Duration::from_secs(10))
                .dns_resolver(Arc::new(AdmittedAddresses(policy)))
                .build()
                .expect("the rest-hook client builds")
        })
    }
}

/// A resolver that answers only with the addresses a policy admits.
struct AdmittedAddresses(EndpointPolicy);

impl reqwest::dns::Resolve for AdmittedAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let admitted: Vec<SocketAddr> = found.into_iter().filter(|a| policy.admits(a.ip())).collect();
            if admitted.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address (private addresses need --allow-private-rest-hooks)")
                        .into();
                return Err(refused);
            }
            let addresses: reqwest::dns::Addrs = Box::new(admitted.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "::a00:1",
            "fec0::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn names_resolve_to_admitted_addresses_only() {
        use reqwest::dns::Resolve;
        let localhost = || "localhost".parse().unwrap();
        let strict = AdmittedAddresses(EndpointPolicy::default());
        let refused = strict.resolve(localhost()).await.err().expect("loopback refused");
        assert!(refused.to_string().contains("no public address"), "{refused}");
        let private = AdmittedAddresses(EndpointPolicy { allow_private: true, ..Default::default() });
        let found: Vec<SocketAddr> = private.resolve(localhost()).await.expect("loopback admitted").collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty());
    }
}
