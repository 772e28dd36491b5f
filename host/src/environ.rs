//! Building the WSGI environ from a parsed request head (PEP 3333's CGI and `wsgi.*` keys).

use std::borrow::Cow;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::bindings::wasm_gw::wsgi::request::Environ;
use crate::http::request::{BodyKind, Head};
use crate::listener::Peer;
use crate::tls::TlsFacts;

/// Facts about the connection and the server that the environ reports, formatted once for
/// all the connection's requests.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The address the connection reached; none on a Unix socket, whose SERVER_NAME falls
    /// back to `localhost`. Kept as an address, and written out for each request into the
    /// strings it reuses: formatting two addresses into strings of their own was a tenth
    /// of the server's instructions for a connection with one request.
    local_ip: Option<IpAddr>,
    local_port: u16,
    /// None on a Unix socket, whose REMOTE_ADDR is empty, as Gunicorn has it.
    peer_ip: Option<IpAddr>,
    peer_port: u16,
    /// `https` on a TLS listener, else `http`, unless a trusted proxy says otherwise.
    scheme: &'static str,
    /// Whether other instances may serve requests for the app at the same time.
    multithread: bool,
    /// The proxies to believe, if the peer is one of them: then its forwarding headers
    /// name the client and the scheme.
    proxies: Option<Arc<Proxies>>,
}

impl ConnectionInfo {
    /// For a connection from `peer` that arrived on `local`, `None` on a Unix socket.
    pub fn new(
        local: Option<SocketAddr>,
        peer: Peer,
        scheme: &'static str,
        multithread: bool,
        proxies: &Arc<Proxies>,
    ) -> ConnectionInfo {
        // A Unix socket's connections have no addresses: REMOTE_ADDR is empty, as Gunicorn
        // has it, and SERVER_NAME falls back to localhost.
        let (local_ip, local_port) = match local {
            Some(local) => (Some(local.ip()), local.port()),
            None if scheme == "https" => (None, 443),
            None => (None, 80),
        };
        let (peer_ip, peer_port, trusted) = match peer {
            Peer::Ip(peer) => (Some(peer.ip()), peer.port(), proxies.trusts(peer.ip())),
            // Only processes allowed by the socket file's mode connect there: a proxy in
            // front of a Unix socket is believed, as Gunicorn believes it.
            Peer::Local => (None, 0, true),
        };
        ConnectionInfo {
            local_ip,
            local_port,
            peer_ip,
            peer_port,
            scheme,
            multithread,
            proxies: trusted.then(|| proxies.clone()),
        }
    }
}

impl ConnectionInfo {
    /// The same connection, as coming from `client` and reaching `reached`, which a PROXY
    /// protocol header named.
    pub fn for_client(
        &self,
        reached: SocketAddr,
        client: SocketAddr,
        proxies: &Arc<Proxies>,
    ) -> ConnectionInfo {
        ConnectionInfo::new(
            Some(reached),
            Peer::Ip(client),
            self.scheme,
            self.multithread,
            proxies,
        )
    }
}

/// The peers whose `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` headers are
/// believed (`--forwarded-allow-ips`, Gunicorn's name and default): addresses and networks,
/// or any peer at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proxies {
    Any,
    Networks(Vec<(IpAddr, u8)>),
}

impl Proxies {
    /// Whether `ip` is one of them. An IPv4 address mapped into IPv6 counts as itself.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self {
            Proxies::Any => true,
            Proxies::Networks(networks) => {
                networks.iter().any(|&(network, bits)| match (network, ip) {
                    (IpAddr::V4(network), IpAddr::V4(ip)) => {
                        let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                        u32::from(network) & mask == u32::from(ip) & mask
                    }
                    (IpAddr::V6(network), IpAddr::V6(ip)) => {
                        let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                        u128::from(network) & mask == u128::from(ip) & mask
                    }
                    _ => false,
                })
            }
        }
    }
}

impl std::str::FromStr for Proxies {
    type Err = String;

    /// `*`, or addresses and CIDR networks separated by commas: `127.0.0.1,::1,10.0.0.0/8`.
    fn from_str(text: &str) -> Result<Proxies, String> {
        if text.trim() == "*" {
            return Ok(Proxies::Any);
        }
        let networks = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (address, bits) = item.split_once('/').unwrap_or((item, ""));
                let address: IpAddr = address
                    .parse()
                    .map_err(|_| format!("{item:?} is not an IP address or network"))?;
                let most = if address.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    "" => most,
                    bits => bits
                        .parse::<u8>()
                        .ok()
                        .filter(|&bits| bits <= most)
                        .ok_or_else(|| format!("{item:?} has no valid prefix length"))?,
                };
                Ok((address.to_canonical(), bits))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Proxies::Networks(networks))
    }
}

/// The client and scheme a trusted proxy forwarded: the rightmost hop that is not itself a
/// trusted proxy, since every hop left of it was written by someone no one vouches for
/// (a client can put anything there), and the scheme of the last proxy's `proto`.
fn forwarded(
    proxies: &Proxies,
    forwarded_for: &[&[u8]],
    forwarded_proto: Option<&[u8]>,
    forwarded: &[&[u8]],
) -> (Option<IpAddr>, Option<&'static str>) {
    let mut hops: Vec<&[u8]> = Vec::new();
    let mut proto = forwarded_proto.and_then(|value| {
        value
            .split(|&b| b == b',')
            .next_back()
            .map(<[u8]>::trim_ascii)
    });
    if forwarded.is_empty() {
        for value in forwarded_for {
            hops.extend(value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
    } else {
        // RFC 7239 §4: `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]"`.
        for element in forwarded
            .iter()
            .flat_map(|value| value.split(|&b| b == b','))
        {
            for pair in element.split(|&b| b == b';') {
                let Some(at) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let (name, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
                let value = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                if name.eq_ignore_ascii_case(b"for") {
                    hops.push(value);
                } else if name.eq_ignore_ascii_case(b"proto") {
                    proto = Some(value);
                }
            }
        }
    }
    let client = hops
        .iter()
        .rev()
        .map(|hop| parse_hop(hop))
        .find(|hop| !hop.is_some_and(|ip| proxies.trusts(ip)))
        .flatten();
    let scheme = match proto {
        Some(proto) if proto.eq_ignore_ascii_case(b"https") => Some("https"),
        Some(proto) if proto.eq_ignore_ascii_case(b"http") => Some("http"),
        _ => None,
    };
    (client, scheme)
}

/// A hop's address: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443` or `192.0.2.1:80`;
/// `None` for anything else (`unknown`, an obfuscated name).
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?;
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(address) = hop.parse::<SocketAddr>() {
        return Some(address.ip());
    }
    hop.strip_prefix('[')?.split_once(']')?.0.parse().ok()
}

/// The request's header lines as received, kept as the WSGI environ's text holds them:
/// each name and value a native string followed by [`SEPARATOR`], so that an environ takes
/// them in one copy. Made into a string pair each, a browser's dozen headers were a third
/// of a request's cost.
#[derive(Debug, Default)]
pub struct HeaderLines {
    text: String,
    /// Where each line's name and value end in `text`, before their separators.
    ends: Vec<(usize, usize)>,
}

impl HeaderLines {
    /// Holds `head`'s lines in place of the ones held.
    fn refill(&mut self, head: &Head) {
        self.text.clear();
        self.ends.clear();
        for header in head.headers {
            self.text.push_str(header.name);
            let name_end = self.text.len();
            self.text.push(SEPARATOR);
            push_latin1(&mut self.text, header.value);
            let value_end = self.text.len();
            self.text.push(SEPARATOR);
            self.ends.push((name_end, value_end));
        }
    }

    /// Every line as (name, value), in order, repeats included; the value as the bytes
    /// received.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Cow<'_, [u8]>)> {
        let separator = SEPARATOR.len_utf8();
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let name = &self.text[start..name_end];
            let value = &self.text[name_end + separator..value_end];
            start = value_end + separator;
            (name, native_bytes(value))
        })
    }
}

/// The bytes a native string stands for: each char is one byte.
fn native_bytes(text: &str) -> Cow<'_, [u8]> {
    match text.is_ascii() {
        true => Cow::Borrowed(text.as_bytes()),
        // Chars above U+00FF never get in: the host made the string from bytes.
        false => Cow::Owned(text.chars().map(|c| c as u8).collect()),
    }
}

/// A request as the host keeps it, whatever world the app it goes to speaks: each world
/// builds what its apps see from it (a WSGI environ, with [`RequestHead::fill_environ`]).
/// Every string is a native string in PEP 3333's sense: one char per byte, so latin-1
/// bytes survive unchanged. A connection keeps it after a request, so that its next request
/// refills its strings instead of allocating its own.
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: String,
    /// The path, percent-decoded to bytes and read as latin-1.
    pub path: String,
    /// How many bytes of `path` are the app's mount prefix (WSGI's SCRIPT_NAME).
    pub mount: usize,
    /// After `?`, still percent-encoded; empty if none.
    pub query: String,
    /// The request target exactly as received.
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub protocol: String,
    /// `http` or `https`: the listener's, or a trusted proxy's.
    pub scheme: String,
    /// From the Host header, or the address the request arrived on.
    pub server_name: String,
    pub server_port: u16,
    /// The client: the peer, or whom a trusted proxy names.
    pub remote_addr: String,
    /// The address `remote_addr` was written from.
    remote_ip: Option<IpAddr>,
    pub remote_port: u16,
    pub content_type: Option<String>,
    /// Absent for a chunked body.
    pub content_length: Option<u64>,
    /// Whether other instances may serve the app's requests at the same time.
    pub multithread: bool,
    /// Variables of the server's own, as CGI names them: TLS's, on a TLS listener.
    pub variables: Vec<(String, String)>,
    pub headers: HeaderLines,
}

/// What ends each string of the environ's text: U+0100, the first char past latin-1, so
/// that no native string holds it.
pub const SEPARATOR: char = '\u{100}';

/// An environ with nothing in it, whose buffer [`RequestHead::fill_environ`] fills.
pub fn empty_environ() -> Environ {
    Environ {
        text: String::new(),
        server_variables: 0,
        content_length: None,
        server_port: 0,
        remote_port: 0,
        multithread: false,
        multiprocess: false,
        run_once: false,
        has_content_type: false,
    }
}

thread_local! {
    /// The request strings of a connection this thread closed, for the next new one: a new
    /// connection's first request would otherwise allocate and grow a dozen strings.
    static RECYCLED: Cell<Option<RequestHead>> = const { Cell::new(None) };
}

impl RequestHead {
    /// The strings a closed connection left on this thread, or new ones. Every field is
    /// refilled by [`build`] but the TLS variables, which a connection keeps: those were
    /// another connection's, and go.
    fn recycled() -> RequestHead {
        let mut head = RECYCLED.take().unwrap_or_default();
        head.variables.clear();
        head
    }

    /// Leaves these strings to this thread's next new connection.
    pub fn recycle(self) {
        RECYCLED.set(Some(self));
    }

    /// Writes this request's WSGI environ into `environ`, in the memory it has: the strings
    /// in the contract's order (`variable`'s, the server's variables, the header lines),
    /// each followed by [`SEPARATOR`].
    pub fn fill_environ(&self, environ: &mut Environ) {
        let text = &mut environ.text;
        text.clear();
        let (script_name, path_info) = self.path.split_at(self.mount);
        for variable in [
            self.method.as_str(),
            script_name,
            path_info,
            &self.query,
            self.content_type.as_deref().unwrap_or_default(),
            &self.server_name,
            &self.protocol,
            &self.remote_addr,
            &self.target,
            &self.scheme,
        ] {
            text.push_str(variable);
            text.push(SEPARATOR);
        }
        for (name, value) in &self.variables {
            text.push_str(name);
            text.push(SEPARATOR);
            text.push_str(value);
            text.push(SEPARATOR);
        }
        text.push_str(&self.headers.text);
        environ.server_variables = self.variables.len() as u32;
        environ.content_length = self.content_length;
        environ.server_port = self.server_port;
        environ.remote_port = self.remote_port;
        environ.multithread = self.multithread;
        environ.has_content_type = self.content_type.is_some();
    }
}

/// Builds the host's request for `head`, into `reused`, if a request left one.
pub fn build(
    head: &Head,
    connection: &ConnectionInfo,
    tls: Option<&TlsFacts>,
    reused: Option<RequestHead>,
) -> RequestHead {
    let mut request = reused.unwrap_or_else(RequestHead::recycled);
    let (authority, path, query) = split_target(head.target);
    let mut content_type = None;
    let mut content_length = None;
    let mut host = None;
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    let mut forwarded_proto = None;
    let mut forwarded_rfc: Vec<&[u8]> = Vec::new();
    for header in head.headers {
        if connection.proxies.is_some() {
            if header.name.eq_ignore_ascii_case("x-forwarded-for") {
                forwarded_for.push(header.value);
            } else if header.name.eq_ignore_ascii_case("x-forwarded-proto") {
                forwarded_proto = Some(header.value);
            } else if header.name.eq_ignore_ascii_case("forwarded") {
                forwarded_rfc.push(header.value);
            }
        }
        if header.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(header.value);
        } else if header.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|length| length.parse().ok());
        } else if header.name.eq_ignore_ascii_case("host") {
            host = Some(header.value);
        }
    }
    if head.framing.body == BodyKind::Chunked {
        content_length = None;
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority names the host; an HTTP/1.0
    // request may have it and no Host.
    let named = host.or(authority.map(str::as_bytes)).and_then(split_host);
    let protocol = if head.framing.minor_version == 0 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    refill(&mut request.method, head.method);
    request.path.clear();
    request.mount = 0;
    push_path_info(&mut request.path, path);
    request.query.clear();
    push_latin1(&mut request.query, query.as_bytes());
    request.content_type = content_type.map(|value| {
        let mut text = request.content_type.take().unwrap_or_default();
        text.clear();
        push_latin1(&mut text, value);
        text
    });
    request.content_length = content_length;
    request.server_name.clear();
    request.server_port = match named {
        Some((name, port)) => {
            request.server_name.push_str(name);
            port
        }
        None => {
            match connection.local_ip {
                Some(ip) => push_ip(&mut request.server_name, ip),
                None => request.server_name.push_str("localhost"),
            }
            connection.local_port
        }
    };
    refill(&mut request.protocol, protocol);
    let (client, scheme) = match &connection.proxies {
        Some(proxies)
            if !forwarded_for.is_empty()
                || !forwarded_rfc.is_empty()
                || forwarded_proto.is_some() =>
        {
            forwarded(proxies, &forwarded_for, forwarded_proto, &forwarded_rfc)
        }
        _ => (None, None),
    };
    // Written out only when it changes: a keep-alive connection's requests, and most
    // connections behind a proxy, come from one address.
    let remote = client
        .map(|client| client.to_canonical())
        .or(connection.peer_ip);
    if remote.is_none() || remote != request.remote_ip {
        request.remote_addr.clear();
        if let Some(ip) = remote {
            push_ip(&mut request.remote_addr, ip);
        }
        request.remote_ip = remote;
    }
    request.remote_port = connection.peer_port;
    request.target.clear();
    push_latin1(&mut request.target, head.target.as_bytes());
    refill(&mut request.scheme, scheme.unwrap_or(connection.scheme));
    request.multithread = connection.multithread;
    // mod_ssl's variables, beside the headers' (whose names all start `HTTP_`, so no client
    // can pose as them). A connection's TLS does not change, and `reused` is the same
    // connection's last request: its variables stand.
    // Each a native string like every other: a client certificate's subject is UTF-8 and
    // may hold any char, U+0100 (the environ's separator) included, which would let its
    // holder add strings of its own to the environ.
    match tls {
        Some(tls) if request.variables.is_empty() => request.variables.extend(
            tls.variables()
                .map(|(name, value)| (name.to_owned(), latin1(value.as_bytes()))),
        ),
        Some(_) => {}
        None => request.variables.clear(),
    }
    request.headers.refill(head);
    request
}

/// Appends `ip` as `Display` writes it; an IPv4 address, nearly every client's, by hand,
/// without the formatting machinery.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (at, octet) in ip.octets().into_iter().enumerate() {
                if at > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(ip) => {
            use std::fmt::Write;
            let _ = write!(out, "{ip}");
        }
    }
}

/// Makes `field` hold `text`, in the memory it has.
fn refill(field: &mut String, text: &str) {
    field.clear();
    field.push_str(text);
}

/// Splits a request target into its authority, if it has one, its path and its query.
/// Absolute-form (`http://host/path`) yields both; `*` (for OPTIONS) stays as it is.
fn split_target(target: &str) -> (Option<&str>, &str, &str) {
    // RFC 9112 §3.2: the request target carries no fragment; one sent all the same is
    // dropped, as Gunicorn does. RAW_URI keeps the target as sent.
    let target = target.split_once('#').map_or(target, |(before, _)| before);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => {
            let at = rest.find('/').unwrap_or(rest.len());
            let path = if at == rest.len() { "/" } else { &rest[at..] };
            // Any userinfo before the host is no part of it.
            let authority = &rest[..at];
            let authority = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            (Some(authority), path, query)
        }
        _ => (None, path, query),
    }
}

/// Splits a Host value into name and port: `example.com:8080`, `[::1]:80`, `example.com`.
fn split_host(host: &[u8]) -> Option<(&str, u16)> {
    let host = std::str::from_utf8(host).ok()?;
    let (name, port) = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    };
    // `example.com:` has an empty port: the default, as with none.
    let port = match port {
        Some(port) if !port.is_empty() => port.parse().ok()?,
        _ => 80,
    };
    Some((name, port))
}

/// Appends PATH_INFO: the path with its escapes decoded, as a native string.
fn push_path_info(out: &mut String, path: &str) {
    // Most paths are plain ASCII without escapes: one copy, no decoding pass.
    if path.bytes().all(|b| b.is_ascii() && b != b'%') {
        out.push_str(path);
    } else {
        push_latin1(out, &percent_decode(path.as_bytes()));
    }
}

/// Decodes `%XX` escapes to bytes; a `%` not followed by two hex digits stays as it is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = match (byte, tail) {
            (b'%', [high, low, ..]) => hex_value(*high).zip(hex_value(*low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                out.push(high << 4 | low);
                rest = &tail[2..];
            }
            None => {
                out.push(byte);
                rest = tail;
            }
        }
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

/// Bytes as a PEP 3333 native string: each byte becomes the char with that code point.
pub fn latin1(bytes: &[u8]) -> String {
    let mut text = String::new();
    push_latin1(&mut text, bytes);
    text
}

/// Appends `bytes` as a native string.
fn push_latin1(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.is_ascii() => out.push_str(text),
        _ => out.extend(bytes.iter().map(|&byte| char::from(byte))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Limits;
    use crate::http::request::parse;

    /// Parses the head in `raw` and builds its environ, from 127.0.0.2:5000 to 127.0.0.1:8000.
    fn build_from(raw: &[u8], reused: Option<RequestHead>) -> RequestHead {
        build_over(raw, None, reused)
    }

    /// [`build_from`] on a TLS connection with `tls`'s facts, if it is one.
    fn build_over(raw: &[u8], tls: Option<&TlsFacts>, reused: Option<RequestHead>) -> RequestHead {
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let limits = Limits {
            request_line: 64,
            fields: 8,
            field_bytes: 128,
            unconventional_methods: false,
        };
        let (head, _) = parse(raw, &mut slots, &limits).unwrap().unwrap();
        let local = "127.0.0.1:8000".parse().unwrap();
        let peer = "127.0.0.2:5000".parse().unwrap();
        let proxies = Arc::new(Proxies::Networks(Vec::new()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        build(
            &head,
            &ConnectionInfo::new(Some(local), Peer::Ip(peer), scheme, true, &proxies),
            tls,
            reused,
        )
    }

    /// The environ's strings, unpacked.
    fn strings(environ: &Environ) -> Vec<&str> {
        let mut strings: Vec<&str> = environ.text.split(SEPARATOR).collect();
        assert_eq!(
            strings.pop(),
            Some(""),
            "each string ends with the separator"
        );
        strings
    }

    #[test]
    fn the_environ_packs_its_strings_in_the_contracts_order() {
        let raw =
            b"POST /api/p?q=1 HTTP/1.1\r\nHost: h:81\r\nX-A: 1\r\nContent-Type: text/plain\r\n\
            Content-Length: 2\r\nX_Sneaky: y\r\nx-a: \xe92\r\n\r\nhi";
        let mut request = build_from(raw, None);
        request.mount = 4;
        let mut environ = empty_environ();
        request.fill_environ(&mut environ);
        assert_eq!(
            strings(&environ),
            [
                "POST",
                "/api",
                "/p",
                "q=1",
                "text/plain",
                "h",
                "HTTP/1.1",
                "127.0.0.2",
                "/api/p?q=1",
                "http",
                "Host",
                "h:81",
                "X-A",
                "1",
                "Content-Type",
                "text/plain",
                "Content-Length",
                "2",
                "X_Sneaky",
                "y",
                "x-a",
                "\u{e9}2",
            ]
        );
        assert_eq!(environ.server_variables, 0);
        assert_eq!(environ.content_length, Some(2));
        assert_eq!((environ.server_port, environ.remote_port), (81, 5000));
        assert!(environ.multithread && environ.has_content_type);
        assert!(!environ.multiprocess && !environ.run_once);
        assert!(environ.text.ends_with("x-a\u{100}\u{e9}2\u{100}"));
    }

    #[test]
    fn no_string_of_the_environ_holds_its_separator() {
        // U+0100 in UTF-8 is C4 80: in a path's escapes, a header's value, and the subject
        // of a client certificate, which arrives as UTF-8 text.
        let tls = TlsFacts {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_subject: Some("CN=\u{100}dams".into()),
        };
        let raw = b"GET /%C4%80 HTTP/1.0\r\nX: \xc4\x80\r\n\r\n";
        let request = build_over(raw, Some(&tls), None);
        let mut environ = empty_environ();
        request.fill_environ(&mut environ);
        let strings = strings(&environ);
        assert_eq!(strings.len(), 10 + 2 * 5 + 2, "{strings:?}");
        assert_eq!(strings[2], "/\u{c4}\u{80}");
        assert_eq!(strings[19], "CN=\u{c4}\u{80}dams");
        assert_eq!(strings[21], "\u{c4}\u{80}");
    }

    #[test]
    fn a_reused_environ_keeps_nothing_of_the_last_request() {
        let first = build_from(
            b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h:81\r\nContent-Type: text/plain\r\n\
              Content-Length: 0\r\nX-A: 1\r\n\r\n",
            None,
        );
        let mut environ = empty_environ();
        first.fill_environ(&mut environ);
        let second = b"GET /c HTTP/1.0\r\n\r\n";
        let reused = build_from(second, Some(first));
        let fresh = build_from(second, None);
        assert_eq!(format!("{reused:?}"), format!("{fresh:?}"));
        reused.fill_environ(&mut environ);
        let mut new = empty_environ();
        fresh.fill_environ(&mut new);
        assert_eq!(format!("{environ:?}"), format!("{new:?}"));
    }

    #[test]
    fn a_recycled_head_keeps_nothing_of_its_last_connection() {
        let tls = TlsFacts {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_subject: Some("CN=someone else".into()),
        };
        let first = build_over(
            b"POST /a?x=1 HTTP/1.1\r\nHost: h:81\r\nContent-Type: text/plain\r\n\r\n",
            Some(&tls),
            None,
        );
        assert!(!first.variables.is_empty());
        first.recycle();
        // A new plain connection's first request takes the strings this thread kept.
        let second = b"GET /c HTTP/1.0\r\n\r\n";
        let recycled = build_from(second, None);
        let fresh = build_from(second, Some(RequestHead::default()));
        assert!(
            recycled.path.capacity() > 0,
            "the kept strings were not taken"
        );
        assert_eq!(format!("{recycled:?}"), format!("{fresh:?}"));
        assert!(recycled.variables.is_empty());
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.9",
            "255.255.255.255",
            "::1",
            "::ffff:192.0.2.1",
            "2001:db8::8:800:200c:417a",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}"));
        }
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("/a/b?x=1&y"), (None, "/a/b", "x=1&y"));
        assert_eq!(split_target("http://h:1/p?q"), (Some("h:1"), "/p", "q"));
        assert_eq!(split_target("http://h"), (Some("h"), "/", ""));
        assert_eq!(split_target("http://h?q"), (Some("h"), "/", "q"));
        assert_eq!(split_target("*"), (None, "*", ""));
        assert_eq!(
            split_target("/forums/1/topics/2375?page=1#posts-17408"),
            (None, "/forums/1/topics/2375", "page=1")
        );
        assert_eq!(split_target("/frag#x?y"), (None, "/frag", ""));
        assert_eq!(
            split_target("http://user:pass@example.com:8080/foo?q=1"),
            (Some("example.com:8080"), "/foo", "q=1")
        );
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode(b"/a%20b%2F%zz%4"), b"/a b/%zz%4");
        assert_eq!(latin1(b"caf\xe9"), "caf\u{e9}");
        assert_eq!(split_host(b"[::1]:8080"), Some(("[::1]", 8080)));
        assert_eq!(split_host(b"example.com"), Some(("example.com", 80)));
        assert_eq!(split_host(b"example.com:x"), None);
        assert_eq!(split_host(b"example.com:"), Some(("example.com", 80)));
    }

    #[test]
    fn proxies_are_addresses_and_networks() {
        let proxies: Proxies = "127.0.0.1, ::1, 10.0.0.0/8".parse().unwrap();
        let trusts = |ip: &str| proxies.trusts(ip.parse().unwrap());
        assert!(trusts("127.0.0.1") && trusts("::1") && trusts("10.9.8.7"));
        assert!(
            trusts("::ffff:10.1.2.3"),
            "an IPv4-mapped address is itself"
        );
        assert!(!trusts("127.0.0.2") && !trusts("11.0.0.1") && !trusts("::2"));
        assert_eq!("*".parse(), Ok(Proxies::Any));
        assert!("10.0.0.0/33".parse::<Proxies>().is_err());
        assert!("example.com".parse::<Proxies>().is_err());
    }

    #[test]
    fn the_client_is_the_rightmost_hop_no_proxy_vouches_for() {
        let proxies: Proxies = "127.0.0.1,10.0.0.0/8".parse().unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().ok();
        // A client may write anything left of the first trusted proxy's entry.
        let (client, scheme) = forwarded(
            &proxies,
            &[b"6.6.6.6, 203.0.113.7", b"10.0.0.2"],
            Some(b"https"),
            &[],
        );
        assert_eq!((client, scheme), (ip("203.0.113.7"), Some("https")));
        // RFC 7239, with its quoting and ports, wins over X-Forwarded-For.
        let (client, scheme) = forwarded(
            &proxies,
            &[b"6.6.6.6"],
            None,
            &[b"for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\";proto=https"],
        );
        assert_eq!((client, scheme), (ip("2001:db8::1"), Some("https")));
        // A hop that is no address ends the walk: nothing to believe past it.
        let (client, _) = forwarded(&proxies, &[b"203.0.113.7, unknown"], None, &[]);
        assert_eq!(client, None);
    }
}
