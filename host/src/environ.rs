//! Building the WSGI environ from a parsed request head (PEP 3333's CGI and `wsgi.*` keys).

use std::net::SocketAddr;

use crate::bindings::wasm_gw::wsgi::request::Environ;
use crate::http::request::{BodyKind, Head};

/// Facts about the connection and the server that the environ reports, formatted once for
/// all the connection's requests.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    local_ip: String,
    local_port: u16,
    peer_ip: String,
    peer_port: u16,
    /// Whether other instances may serve requests for the app at the same time.
    multithread: bool,
}

impl ConnectionInfo {
    pub fn new(local: SocketAddr, peer: SocketAddr, multithread: bool) -> ConnectionInfo {
        ConnectionInfo {
            local_ip: local.ip().to_string(),
            local_port: local.port(),
            peer_ip: peer.ip().to_string(),
            peer_port: peer.port(),
            multithread,
        }
    }
}

/// Builds the environ for `head`. Every string is a PEP 3333 native string: one char per
/// byte, so latin-1 header bytes survive unchanged.
pub fn build(head: &Head, connection: &ConnectionInfo) -> Environ {
    let (authority, path, query) = split_target(head.target);
    let mut content_type = None;
    let mut content_length = None;
    let mut host = None;
    let mut headers = Vec::with_capacity(head.headers.len());
    let mut cgi_headers: Vec<(String, String)> = Vec::with_capacity(head.headers.len());
    for header in head.headers {
        let value = latin1(header.value);
        if header.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.clone());
        } else if header.name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        } else if !header.name.contains('_') {
            if header.name.eq_ignore_ascii_case("host") {
                host = Some(header.value);
            }
            add_cgi_header(&mut cgi_headers, header.name, &value);
        }
        headers.push((header.name.to_owned(), value));
    }
    if head.framing.body == BodyKind::Chunked {
        content_length = None;
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority names the host; an HTTP/1.0
    // request may have it and no Host.
    let (server_name, server_port) = host
        .or(authority.map(str::as_bytes))
        .and_then(split_host)
        .unwrap_or_else(|| (connection.local_ip.clone(), connection.local_port));
    Environ {
        request_method: head.method.to_owned(),
        script_name: String::new(),
        path_info: decode_path(path),
        query_string: latin1(query.as_bytes()),
        content_type,
        content_length,
        server_name,
        server_port,
        server_protocol: if head.framing.minor_version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
        .to_owned(),
        remote_addr: connection.peer_ip.clone(),
        remote_port: connection.peer_port,
        raw_uri: latin1(head.target.as_bytes()),
        url_scheme: "http".to_owned(),
        multithread: connection.multithread,
        multiprocess: false,
        run_once: false,
        cgi_headers,
        headers,
    }
}

/// Splits a request target into its authority, if it has one, its path and its query.
/// Absolute-form (`http://host/path`) yields both; `*` (for OPTIONS) stays as it is.
fn split_target(target: &str) -> (Option<&str>, &str, &str) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => {
            let at = rest.find('/').unwrap_or(rest.len());
            let path = if at == rest.len() { "/" } else { &rest[at..] };
            (Some(&rest[..at]), path, query)
        }
        _ => (None, path, query),
    }
}

/// Adds `HTTP_NAME`, joining a repeated header's values with `,` as RFC 9110 §5.3 allows.
fn add_cgi_header(cgi_headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    key.extend(name.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    match cgi_headers
        .iter_mut()
        .find(|(existing, _)| *existing == key)
    {
        Some((_, joined)) => {
            joined.push(',');
            joined.push_str(value);
        }
        None => cgi_headers.push((key, value.to_owned())),
    }
}

/// Splits a Host value into name and port: `example.com:8080`, `[::1]:80`, `example.com`.
fn split_host(host: &[u8]) -> Option<(String, u16)> {
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
    Some((name.to_owned(), port))
}

/// PATH_INFO: the path with its escapes decoded, as a native string.
fn decode_path(path: &str) -> String {
    // Most paths are plain ASCII without escapes: one copy, no decoding pass.
    if path.bytes().all(|b| b.is_ascii() && b != b'%') {
        return path.to_owned();
    }
    latin1(&percent_decode(path.as_bytes()))
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
    match std::str::from_utf8(bytes) {
        Ok(text) if text.is_ascii() => text.to_owned(),
        _ => bytes.iter().map(|&byte| char::from(byte)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target("/a/b?x=1&y"), (None, "/a/b", "x=1&y"));
        assert_eq!(split_target("http://h:1/p?q"), (Some("h:1"), "/p", "q"));
        assert_eq!(split_target("http://h"), (Some("h"), "/", ""));
        assert_eq!(split_target("http://h?q"), (Some("h"), "/", "q"));
        assert_eq!(split_target("*"), (None, "*", ""));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode(b"/a%20b%2F%zz%4"), b"/a b/%zz%4");
        assert_eq!(latin1(b"caf\xe9"), "caf\u{e9}");
        assert_eq!(split_host(b"[::1]:8080"), Some(("[::1]".into(), 8080)));
        assert_eq!(split_host(b"example.com"), Some(("example.com".into(), 80)));
        assert_eq!(split_host(b"example.com:x"), None);
        assert_eq!(
            split_host(b"example.com:"),
            Some(("example.com".into(), 80))
        );
    }
}
