//! Which destinations an app may reach: the allow-list, checked against the request's
//! authority and then against every address that authority resolves to.
//!
//! A pattern is `scheme://host[:port]`: `host` a name, `*.` and a name for any of its
//! subdomains (not the name itself), an IP address, or a CIDR network; no port means the
//! scheme's default, `:*` any port. After DNS resolution, an address in the loopback,
//! private, link-local, unique-local, multicast or unspecified ranges, or one the server
//! itself listens on, is refused unless the pattern that allowed the request names that
//! address or a network holding it: a public name that resolves to 127.0.0.1 is refused
//! (DNS rebinding, and the lesson of Spin's CVE-2024-32980).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One allowed destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    scheme: Scheme,
    host: Host,
    /// `None` for any port.
    port: Option<u16>,
    /// As the operator wrote it: the metrics' label for what it allows.
    text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// A name, lowercase.
    Name(String),
    /// Any subdomain of this name, lowercase, with its leading dot.
    Subdomains(String),
    /// An address or network: it also allows addresses of the ranges refused by default.
    Network(IpAddr, u8),
}

impl std::str::FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| format!("{text:?} is not an outbound pattern: {why}");
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("write scheme://host[:port], as in https://api.example.com"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("the scheme is http or https")),
        };
        if rest.contains(['?', '#', '@']) {
            return Err(bad("a pattern names a host and a port, no path or user"));
        }
        // [v6]:port, [v6], v6/len, host:port, host.
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (address, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address ends with ]"))?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err(bad("only :port may follow ]; write a network as ::1/128"));
            }
            (address, after.strip_prefix(':'))
        } else if rest.matches(':').count() > 1 {
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => Some(scheme.default_port()),
            Some("*") => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| bad("the port is a number from 1 to 65535, or *"))?,
            ),
        };
        let host = parse_host(host).map_err(|why| bad(&why))?;
        Ok(Pattern {
            scheme,
            host,
            port,
            text: text.to_owned(),
        })
    }
}

fn parse_host(host: &str) -> Result<Host, String> {
    if let Some((address, bits)) = host.split_once('/') {
        let address: IpAddr = address.parse().map_err(|_| {
            "a pattern names a host and a port, no path; / follows only a network's address"
                .to_owned()
        })?;
        let most = if address.is_ipv4() { 32 } else { 128 };
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|bits| *bits <= most)
            .ok_or_else(|| format!("the prefix length is at most {most}"))?;
        return network(address, bits);
    }
    if let Ok(address) = host.parse::<IpAddr>() {
        let bits = if address.is_ipv4() { 32 } else { 128 };
        return network(address, bits);
    }
    let (subdomains, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        });
    if !valid {
        return Err(format!("{host:?} is not a host name, address or network"));
    }
    let name = name.to_ascii_lowercase();
    Ok(match subdomains {
        true => Host::Subdomains(format!(".{name}")),
        false => Host::Name(name),
    })
}

/// A network of `bits` at `address`; an IPv4-mapped IPv6 one as the IPv4 network it is.
fn network(address: IpAddr, bits: u8) -> Result<Host, String> {
    if let IpAddr::V6(v6) = address
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        if bits < 96 {
            return Err("an IPv4-mapped network's prefix length is at least 96".into());
        }
        return Ok(Host::Network(IpAddr::V4(v4), bits - 96));
    }
    Ok(Host::Network(address, bits))
}

/// Why a destination is refused, for the log line and the count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no --allow-outbound pattern allows {0}")]
    NotAllowed(String),
    #[error("{host} resolves to {address}, which is {range}, and no pattern names it")]
    Address {
        host: String,
        address: IpAddr,
        range: &'static str,
    },
    #[error("{0} is this server's own address")]
    Ourselves(SocketAddr),
}

/// An app's allow-list, and the server's own addresses.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    patterns: Vec<Pattern>,
    own: Vec<SocketAddr>,
}

impl Policy {
    pub fn new(patterns: Vec<Pattern>, own: Vec<SocketAddr>) -> Policy {
        Policy { patterns, own }
    }

    /// The patterns that allow `scheme://host:port` before resolution, or why none does.
    pub fn check(&self, scheme: Scheme, host: &str, port: u16) -> Result<Allowed<'_>, Denied> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let matching: Vec<&Pattern> = self
            .patterns
            .iter()
            .filter(|pattern| pattern.scheme == scheme && pattern.port.is_none_or(|p| p == port))
            .filter(|pattern| match (&pattern.host, literal) {
                (Host::Name(name), None) => *name == host,
                (Host::Subdomains(suffix), None) => host.ends_with(suffix.as_str()),
                (Host::Network(network, bits), Some(address)) => {
                    in_network(address, *network, *bits)
                }
                _ => false,
            })
            .collect();
        if matching.is_empty() {
            let scheme = match scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            };
            return Err(Denied::NotAllowed(format!("{scheme}://{host}:{port}")));
        }
        Ok(Allowed {
            policy: self,
            host,
            matching,
        })
    }
}

/// A destination the allow-list lets through, before its addresses are known.
pub struct Allowed<'a> {
    policy: &'a Policy,
    host: String,
    matching: Vec<&'a Pattern>,
}

impl Allowed<'_> {
    /// The pattern that allowed the request, as the operator wrote it: a label whose
    /// values the operator, not the guest, chooses.
    pub fn label(&self) -> String {
        self.matching
            .first()
            .map_or_else(String::new, |pattern| pattern.text.clone())
    }

    /// The host as an IP address, if it is one: connected to as it is, without DNS.
    pub fn literal(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }

    /// Whether the request may connect to `address`, one of those its host resolved to.
    pub fn address(&self, address: SocketAddr) -> Result<(), Denied> {
        let ip = canonical(address.ip());
        let named = self.matching.iter().any(|pattern| match pattern.host {
            Host::Network(network, bits) => in_network(ip, network, bits),
            _ => false,
        });
        if named {
            return Ok(());
        }
        // A server listening on an unspecified address is reached on this machine's own
        // addresses, which the ranges below refuse where they are loopback or private.
        if self
            .policy
            .own
            .iter()
            .any(|own| own.port() == address.port() && canonical(own.ip()) == ip)
        {
            return Err(Denied::Ourselves(address));
        }
        match refused_range(ip) {
            Some(range) => Err(Denied::Address {
                host: self.host.clone(),
                address: ip,
                range,
            }),
            None => Ok(()),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `address` is in the network of `bits` at `network` (IPv4-mapped networks are
/// IPv4 ones already, see [`network`]).
fn in_network(address: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (canonical(address), network) {
        (IpAddr::V4(address), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(address) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(address), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(address) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// The range of `address` that outbound requests may not reach unless a pattern names it.
fn refused_range(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [first, second, third, _] = address.octets();
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_private() {
        Some("private")
    } else if first == 100 && second & 0xc0 == 64 {
        // 100.64.0.0/10, shared address space (100.100.100.200 is a cloud's metadata).
        Some("shared (carrier-grade NAT)")
    } else if first == 192 && second == 0 && third == 0 {
        // 192.0.0.0/24, IETF protocol assignments (192.0.0.192 is a cloud's metadata).
        Some("reserved for protocols")
    } else if first == 0 {
        Some("unspecified")
    } else if first >= 240 && !address.is_broadcast() {
        Some("reserved")
    } else if address.is_link_local() {
        // 169.254.169.254, the cloud metadata service, among them.
        Some("link-local")
    } else if address.is_multicast() || address.is_broadcast() {
        Some("multicast")
    } else if address.is_unspecified() {
        Some("unspecified")
    } else {
        None
    }
}

fn refused_v6(address: Ipv6Addr) -> Option<&'static str> {
    let segments = address.segments();
    let first = segments[0];
    // IPv6 forms that carry an IPv4 address, which is what is reached: NAT64
    // (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16) and the deprecated IPv4-compatible
    // ::a.b.c.d.
    let embedded = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    let carried = if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || segments[..2] == [0x64, 0xff9b] && segments[2] == 1
    {
        Some(embedded(segments[6], segments[7]))
    } else if first == 0x2002 {
        Some(embedded(segments[1], segments[2]))
    } else if segments[..6] == [0; 6] && !address.is_loopback() && !address.is_unspecified() {
        Some(embedded(segments[6], segments[7]))
    } else {
        None
    };
    if let Some(v4) = carried {
        return refused_v4(v4);
    }
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_unspecified() {
        Some("unspecified")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if address.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> Policy {
        Policy::new(
            patterns.iter().map(|text| text.parse().unwrap()).collect(),
            vec![
                "127.0.0.1:8000".parse().unwrap(),
                "203.0.113.5:9000".parse().unwrap(),
            ],
        )
    }

    #[test]
    fn patterns_parse_or_say_why_not() {
        for good in [
            "https://api.example.com",
            "http://api.example.com:8080",
            "https://*.example.com:*",
            "http://127.0.0.1:5000",
            "http://10.0.0.0/8:*",
            "https://[::1]:443",
            "http://fd00::/8",
        ] {
            assert!(good.parse::<Pattern>().is_ok(), "{good}");
        }
        for bad in [
            "api.example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:http",
            "http://10.0.0.0/33",
            "https://exa mple.com",
            "https://*.",
        ] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_authority_must_match_scheme_host_and_port() {
        let policy = policy(&["https://api.example.com", "https://*.cdn.test:*"]);
        assert!(policy.check(Scheme::Https, "api.example.com", 443).is_ok());
        assert!(policy.check(Scheme::Https, "API.Example.com.", 443).is_ok());
        assert!(policy.check(Scheme::Http, "api.example.com", 443).is_err());
        assert!(
            policy
                .check(Scheme::Https, "api.example.com", 8443)
                .is_err()
        );
        assert!(
            policy
                .check(Scheme::Https, "evil-api.example.com", 443)
                .is_err()
        );
        assert!(policy.check(Scheme::Https, "a.b.cdn.test", 1234).is_ok());
        assert!(policy.check(Scheme::Https, "cdn.test", 443).is_err());
        assert!(
            Policy::default()
                .check(Scheme::Https, "api.example.com", 443)
                .is_err()
        );
    }

    #[test]
    fn internal_addresses_need_a_pattern_that_names_them() {
        let policy = policy(&[
            "http://localhost:5000",
            "http://127.0.0.1:6000",
            "http://public.test",
        ]);
        let allowed = policy.check(Scheme::Http, "localhost", 5000).unwrap();
        let refused = allowed
            .address("127.0.0.1:5000".parse().unwrap())
            .unwrap_err();
        assert!(
            matches!(
                refused,
                Denied::Address {
                    range: "loopback",
                    ..
                }
            ),
            "{refused}"
        );
        let named = policy.check(Scheme::Http, "127.0.0.1", 6000).unwrap();
        assert!(named.address("127.0.0.1:6000".parse().unwrap()).is_ok());
        let public = policy.check(Scheme::Http, "public.test", 80).unwrap();
        for (address, range) in [
            ("169.254.169.254:80", "link-local"),
            ("10.1.2.3:80", "private"),
            ("[::ffff:192.168.1.1]:80", "private"),
            ("[fd12::1]:80", "unique-local"),
            ("[fe80::1]:80", "link-local"),
            ("0.0.0.0:80", "unspecified"),
            ("224.0.0.1:80", "multicast"),
            ("100.100.100.200:80", "shared (carrier-grade NAT)"),
            ("192.0.0.192:80", "reserved for protocols"),
            ("0.1.2.3:80", "unspecified"),
            ("[64:ff9b::a9fe:a9fe]:80", "link-local"),
            ("[2002:7f00:1::1]:80", "loopback"),
            ("[::10.0.0.1]:80", "private"),
        ] {
            match public.address(address.parse().unwrap()) {
                Err(Denied::Address { range: got, .. }) => assert_eq!(got, range, "{address}"),
                other => panic!("{address}: {other:?}"),
            }
        }
        assert!(public.address("93.184.216.34:80".parse().unwrap()).is_ok());
    }

    #[test]
    fn an_ipv4_mapped_network_is_the_ipv4_network_it_stands_for() {
        let policy = policy(&["http://[::ffff:10.1.2.3]:*"]);
        let allowed = policy.check(Scheme::Http, "10.1.2.3", 80).unwrap();
        assert!(allowed.address("10.1.2.3:80".parse().unwrap()).is_ok());
        assert!(policy.check(Scheme::Http, "127.0.0.1", 80).is_err());
        assert!(policy.check(Scheme::Http, "169.254.169.254", 80).is_err());
        assert!("http://::ffff:10.0.0.0/95".parse::<Pattern>().is_err());
        assert!("http://[::1]/64".parse::<Pattern>().is_err());
    }

    #[test]
    fn the_servers_own_addresses_are_refused_unless_named() {
        let policy = policy(&["http://public.test:*", "http://127.0.0.1:8000"]);
        let public = policy.check(Scheme::Http, "public.test", 9000).unwrap();
        assert!(matches!(
            public.address("203.0.113.5:9000".parse().unwrap()),
            Err(Denied::Ourselves(_))
        ));
        assert!(public.address("203.0.113.6:9000".parse().unwrap()).is_ok());
        let named = policy.check(Scheme::Http, "127.0.0.1", 8000).unwrap();
        assert!(named.address("127.0.0.1:8000".parse().unwrap()).is_ok());
    }
}
