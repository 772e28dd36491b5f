//! The PROXY protocol header (HAProxy's v1 text line and v2 binary block) that a load
//! balancer sends before a connection's first bytes, naming the client it accepted: read
//! from what has arrived, without waiting, by the `ppp` crate.

use std::net::SocketAddr;

use ppp::PartialResult;

/// Which headers `--proxy-protocol` takes (Gunicorn's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    V1,
    V2,
    Auto,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Mode, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "no" => Ok(Mode::Off),
            "v1" => Ok(Mode::V1),
            "v2" => Ok(Mode::V2),
            "auto" | "true" | "yes" => Ok(Mode::Auto),
            _ => Err(format!("{text:?} is not off, v1, v2 or auto")),
        }
    }
}

/// What a connection's first bytes say of a PROXY header.
#[derive(Debug, PartialEq, Eq)]
pub enum Preamble {
    /// Too few bytes yet to tell, or a header not whole yet.
    NeedMore,
    /// The connection does not start with one: its bytes are the request's.
    Absent,
    /// A header begins here; whether its sender may send one is the caller's to check
    /// before it waits for the rest.
    Started,
    /// A whole header of `length` bytes, with the client's address and the address it
    /// reached, if it names them (not for `UNKNOWN`, `LOCAL` or Unix sockets).
    Header {
        length: usize,
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    Invalid(String),
}

/// v2's 12-byte signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// Reads the PROXY header at the start of `buffered`. With `whole` false it only says
/// whether one has started ([`Preamble::Started`]), so that a peer not allowed to send one
/// is refused before its header is waited for.
pub fn parse(buffered: &[u8], mode: Mode, whole: bool) -> Preamble {
    let v2 = matches!(mode, Mode::V2 | Mode::Auto);
    let v1 = matches!(mode, Mode::V1 | Mode::Auto);
    let starts = |prefix: &[u8]| {
        if buffered.len() < prefix.len() {
            prefix.starts_with(buffered).then_some(Preamble::NeedMore)
        } else {
            buffered.starts_with(prefix).then_some(Preamble::Started)
        }
    };
    let started = match (v2.then(|| starts(V2_SIGNATURE)).flatten(), v1) {
        (Some(found), _) => Some((found, true)),
        (None, true) => starts(V1_PREFIX).map(|found| (found, false)),
        (None, false) => None,
    };
    let Some((found, is_v2)) = started else {
        return Preamble::Absent;
    };
    if found == Preamble::NeedMore || !whole {
        return found;
    }
    if is_v2 {
        let header = ppp::v2::Header::try_from(buffered);
        if header.is_incomplete() {
            return Preamble::NeedMore;
        }
        match header {
            Ok(header) => {
                let addresses = match (header.command, header.addresses) {
                    (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(ip)) => Some((
                        SocketAddr::from((ip.source_address, ip.source_port)),
                        SocketAddr::from((ip.destination_address, ip.destination_port)),
                    )),
                    (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(ip)) => Some((
                        SocketAddr::from((ip.source_address, ip.source_port)),
                        SocketAddr::from((ip.destination_address, ip.destination_port)),
                    )),
                    _ => None,
                };
                Preamble::Header {
                    length: header.len(),
                    addresses,
                }
            }
            Err(error) => Preamble::Invalid(format!("PROXY v2 header: {error}")),
        }
    } else {
        let header = ppp::v1::Header::try_from(buffered);
        if header.is_incomplete() {
            return Preamble::NeedMore;
        }
        match header {
            Ok(header) => {
                let addresses = match header.addresses {
                    ppp::v1::Addresses::Tcp4(ip) => Some((
                        SocketAddr::from((ip.source_address, ip.source_port)),
                        SocketAddr::from((ip.destination_address, ip.destination_port)),
                    )),
                    ppp::v1::Addresses::Tcp6(ip) => Some((
                        SocketAddr::from((ip.source_address, ip.source_port)),
                        SocketAddr::from((ip.destination_address, ip.destination_port)),
                    )),
                    ppp::v1::Addresses::Unknown => None,
                };
                Preamble::Header {
                    length: header.header.len(),
                    addresses,
                }
            }
            Err(error) => Preamble::Invalid(format!("PROXY v1 header: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line, Mode::Auto, true),
            Preamble::Header {
                length: 43,
                addresses: Some((address("203.0.113.7:51234"), address("10.0.0.1:443"))),
            }
        );
        assert_eq!(parse(line, Mode::Auto, false), Preamble::Started);
        assert_eq!(parse(line, Mode::V2, true), Preamble::Absent);
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse(six, Mode::V1, true),
            Preamble::Header { length: 40, addresses: Some((source, _)) } if source == address("[2001:db8::1]:1")
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", Mode::Auto, true),
            Preamble::Header {
                length: 15,
                addresses: None
            }
        );
        for part in [&b"P"[..], b"PROX", b"PROXY TCP4 1.2.3.4"] {
            assert_eq!(
                parse(part, Mode::Auto, true),
                Preamble::NeedMore,
                "{part:?}"
            );
        }
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 nope 1 2\r\n", Mode::Auto, true),
            Preamble::Invalid(_)
        ));
        assert!(matches!(
            parse(&[b'A'; 200][..], Mode::Auto, true),
            Preamble::Absent
        ));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend([b'1'; 200]);
        assert!(matches!(
            parse(&long, Mode::Auto, true),
            Preamble::Invalid(_)
        ));
    }

    #[test]
    fn v2_blocks() {
        let mut block = V2_SIGNATURE.to_vec();
        // PROXY over TCP/IPv4, 12 bytes of addresses.
        block.extend([
            0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x01, 0xbb,
        ]);
        let whole = block.len();
        block.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&block, Mode::V2, true),
            Preamble::Header {
                length: whole,
                addresses: Some((address("203.0.113.7:51234"), address("10.0.0.1:443"))),
            }
        );
        assert_eq!(parse(&block, Mode::V1, true), Preamble::Absent);
        for cut in [1, 11, 12, 15, 20] {
            assert_eq!(
                parse(&block[..cut], Mode::Auto, true),
                Preamble::NeedMore,
                "{cut}"
            );
        }
        assert_eq!(parse(&block[..12], Mode::Auto, false), Preamble::Started);
        // LOCAL: a health check by the balancer itself, which names no client.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local, Mode::Auto, true),
            Preamble::Header {
                length: 16,
                addresses: None
            }
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend([0x31, 0x11, 0, 12]);
        bad.extend([0; 12]);
        assert!(matches!(
            parse(&bad, Mode::Auto, true),
            Preamble::Invalid(_)
        ));
    }

    #[test]
    fn modes() {
        assert_eq!("auto".parse(), Ok(Mode::Auto));
        assert_eq!("V1".parse(), Ok(Mode::V1));
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert!("v3".parse::<Mode>().is_err());
    }
}
