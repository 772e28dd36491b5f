//! The request head: the request line and header fields, parsed in place with httparse, and
//! the framing facts derived from them.

use super::Limits;
use super::error::RequestError;

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding, up to the last chunk and trailers.
    Chunked,
}

/// What the connection needs to know about a request beyond what the app sees.
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    pub body: BodyKind,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// Whether the client asked to reuse the connection after this exchange.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// A HEAD request: the response carries no body.
    pub is_head: bool,
}

/// A parsed request head, borrowing the connection's read buffer.
pub struct Head<'b, 'h> {
    pub method: &'b str,
    pub target: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    pub framing: Framing,
}

/// Parses a request head from the front of `buf` into the header `slots` (one per field the
/// limits allow). Returns `None` while it is incomplete, or the head and its length in bytes.
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    slots: &'h mut [httparse::Header<'b>],
    limits: &Limits,
) -> Result<Option<(Head<'b, 'h>, usize)>, RequestError> {
    check_request_line_length(buf, limits.request_line)?;
    let mut request = httparse::Request::new(slots);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes() => {
            return Err(RequestError::FieldsTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::FieldsTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(_) => return Err(RequestError::Malformed("invalid request line or header")),
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(RequestError::Malformed("incomplete request line"));
    };
    // RFC 9112 §2.2 lets a recipient accept a bare LF as a line end; refusing it keeps this
    // server from reading a head differently from a proxy in front of it.
    if has_bare_lf(&buf[..len]) {
        return Err(RequestError::Malformed("bare LF in request head"));
    }
    // Gunicorn's default: a method with a lowercase letter or `#`, or of fewer than 3 or
    // more than 20 characters, is a mistake or a probe, though a valid token.
    if !limits.unconventional_methods
        && (!(3..=20).contains(&method.len())
            || method.bytes().any(|b| b.is_ascii_lowercase() || b == b'#'))
    {
        return Err(RequestError::Malformed(
            "unconventional method (--permit-unconventional-http-method allows it)",
        ));
    }
    let headers: &'h [httparse::Header<'b>] = request.headers;
    if headers
        .iter()
        .any(|field| field_line_bytes(buf, field) > limits.field_bytes)
    {
        return Err(RequestError::FieldsTooLarge);
    }
    let framing = framing(method, target, minor_version, headers)?;
    Ok(Some((
        Head {
            method,
            target,
            headers,
            framing,
        },
        len,
    )))
}

/// The bytes of `field`'s line in `buf` as Gunicorn counts them against
/// `limit_request_field_size`: name, colon, whitespace and value, and the CRLF.
fn field_line_bytes(buf: &[u8], field: &httparse::Header) -> usize {
    let offset = |part: &[u8]| (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    let start = offset(field.name.as_bytes());
    let value_end = (offset(field.value) + field.value.len()).min(buf.len());
    let line_end = memchr::memchr(b'\r', &buf[value_end..]).map_or(buf.len(), |at| value_end + at);
    line_end.saturating_sub(start) + 2
}

/// Serves a request of HTTP/1.2 to 1.9 as HTTP/1.1, by rewriting its version in `buf` once
/// the request line is whole. RFC 9110 §6.2: a server "SHOULD send a response version equal
/// to the highest version to which the server is conformant that has a major version less
/// than or equal to the one received in the request", and a recipient treats a higher
/// minor version of a major it speaks as the highest minor it speaks.
pub fn serve_higher_minor_as_1_1(buf: &mut [u8]) {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let Some(line_end) = memchr::memchr(b'\r', &buf[start..]).map(|at| start + at) else {
        return;
    };
    if let [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] = &mut buf[start..line_end]
        && (b'2'..=b'9').contains(minor)
    {
        *minor = b'1';
    }
}

/// Whether a line of `head` ends in LF without CR.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r')
}

/// Answers 414 as soon as the request line is known to exceed `limit`, even before it ends.
fn check_request_line_length(buf: &[u8], limit: usize) -> Result<(), RequestError> {
    // RFC 9112 §2.2: a server "SHOULD ignore at least one empty line (CRLF) received prior to
    // the request-line", as httparse does.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let length = memchr::memchr(b'\n', line).unwrap_or(line.len());
    let length = length - usize::from(line[..length].ends_with(b"\r"));
    if length > limit {
        Err(RequestError::RequestLineTooLong(limit))
    } else {
        Ok(())
    }
}

/// An `HTTP/x.y` version that httparse does not speak is one we don't support (505); anything
/// else in that place is garbage (400).
fn version_error(buf: &[u8]) -> RequestError {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    // "request-line = method SP request-target SP HTTP-version": anything else is garbage.
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [_, _, version] = parts[..] else {
        return RequestError::Malformed("invalid request line");
    };
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            RequestError::VersionNotSupported
        }
        [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit() => {
            RequestError::VersionNotSupported
        }
        _ => RequestError::Malformed("invalid HTTP version"),
    }
}

/// The compression codings Gunicorn takes before `chunked` in a Transfer-Encoding.
const COMPRESSIONS: [&[u8]; 5] = [b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"];

fn framing(
    method: &str,
    target: &str,
    minor_version: u8,
    headers: &[httparse::Header],
) -> Result<Framing, RequestError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut hosts = 0;
    let mut host: &[u8] = b"";
    let mut content_types = 0;
    let mut unusual_coding = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;

    for header in headers {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(RequestError::InvalidContentLength);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if list_items(value).next().is_none() {
                return Err(RequestError::Malformed("empty Transfer-Encoding"));
            }
            for coding in list_items(value) {
                if chunked_last {
                    // RFC 9112 §6.1: chunked "MUST NOT" be applied more than once, and any
                    // coding after it leaves the body's end undetectable.
                    return Err(RequestError::Malformed("transfer coding after chunked"));
                }
                transfer_encoding = true;
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked_last = true;
                } else if coding.eq_ignore_ascii_case(b"identity")
                    || COMPRESSIONS
                        .iter()
                        .any(|known| coding.eq_ignore_ascii_case(known))
                {
                    // Gunicorn's verdict, which RFC 9112 §6.1 allows (its 501 is a SHOULD):
                    // before chunked, which frames the body, identity is no coding and a
                    // compression reaches the app as sent. A front end that knows only a
                    // bare `chunked` could read such a body otherwise, so the connection
                    // closes after the exchange and reads nothing more from it.
                    unusual_coding = true;
                } else {
                    return Err(RequestError::UnsupportedTransferCoding);
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = value;
        } else if name.eq_ignore_ascii_case("content-type") {
            // RFC 9110 §5.3: Content-Type is a singleton field; two are a sender's mistake
            // or an attempt to be read two ways, and Gunicorn refuses them.
            content_types += 1;
            if content_types > 1 {
                return Err(RequestError::Malformed("more than one Content-Type"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_items(value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(RequestError::UnsupportedExpectation);
            }
        }
    }

    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    // HTTP/1.1 request message that lacks a Host header field and to any request message that
    // contains more than one Host header field".
    if hosts > 1 || (hosts == 0 && minor_version == 1) {
        return Err(RequestError::Malformed(
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    if !is_valid_host(host) {
        return Err(RequestError::Malformed("invalid Host"));
    }
    check_target(method, target, (hosts == 1).then_some(host))?;
    let body = if transfer_encoding {
        // RFC 9112 §6.1: a request with both "ought to be handled as an error"; rejecting it
        // is the only choice that no proxy in front can read differently.
        if content_length.is_some() {
            return Err(RequestError::AmbiguousLength);
        }
        if minor_version == 0 {
            return Err(RequestError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        // "If a Transfer-Encoding header field is present in a request and the chunked
        // transfer coding is not the final encoding, the message body length cannot be
        // determined reliably; the server MUST respond with the 400 (Bad Request) status
        // code and then close the connection." Gunicorn takes `identity` alone; this MUST
        // does not let us.
        if !chunked_last {
            return Err(RequestError::Malformed("Transfer-Encoding without chunked"));
        }
        BodyKind::Chunked
    } else {
        BodyKind::Length(content_length.unwrap_or(0))
    };
    Ok(Framing {
        body,
        minor_version,
        keep_alive: !unusual_coding
            && if minor_version == 1 {
                !close
            } else {
                keep_alive && !close
            },
        expect_continue: expect_continue && minor_version == 1,
        is_head: method == "HEAD",
    })
}

/// Checks the request target's form against the method (RFC 9112 §3.2).
fn check_target(method: &str, target: &str, host: Option<&[u8]>) -> Result<(), RequestError> {
    let malformed = |why| Err(RequestError::Malformed(why));
    if target == "*" {
        // "The asterisk-form of request-target is only used for a server-wide OPTIONS request"
        return if method == "OPTIONS" {
            Ok(())
        } else {
            malformed("* is only for OPTIONS")
        };
    }
    if method == "CONNECT" {
        // "The authority-form of request-target is only used for CONNECT requests"
        return if target.starts_with('/') || target.contains("://") {
            malformed("CONNECT takes an authority")
        } else {
            Ok(())
        };
    }
    if target.starts_with('/') {
        return Ok(());
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return malformed("authority-form is only for CONNECT");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return malformed("unsupported scheme in absolute-form");
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    // RFC 9110 §4.2.4: a recipient "SHOULD parse for userinfo and treat its presence as an
    // error"; Gunicorn takes it, and the host after it is what must agree with Host.
    let authority = match authority.split_once('@') {
        None => authority,
        // RFC 3986 §3.2.1: userinfo = *( unreserved / pct-encoded / sub-delims / ":" ); no
        // second `@`, and no `\`, which some URL parsers read as a `/` and so another host.
        Some((userinfo, host)) => {
            let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:".contains(&b);
            if !userinfo.bytes().all(allowed) || host.contains('@') {
                return malformed("invalid userinfo in the absolute-form target");
            }
            host
        }
    };
    // The target's authority names the host; a different Host header is a confused or
    // forged request.
    match host {
        Some(host) if host.eq_ignore_ascii_case(authority.as_bytes()) => Ok(()),
        Some(_) => malformed("Host differs from the absolute-form target"),
        // Without a Host, the authority names the host, and is held to Host's rules.
        None if !authority.is_empty() && is_valid_host(authority.as_bytes()) => Ok(()),
        None => malformed("invalid authority in the absolute-form target"),
    }
}

/// RFC 9110 §7.2: `Host = uri-host [ ":" port ]`, where `uri-host` is an IP literal in
/// brackets or a reg-name of unreserved, percent-encoded and sub-delim characters, and the
/// port fits in 16 bits. An empty value is allowed for targets without an authority. Longer
/// than any DNS name, it is refused: it could only be hostile.
fn is_valid_host(host: &[u8]) -> bool {
    if host.len() > MAX_HOST {
        return false;
    }
    let (name, port) = match host.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end)
                if literal[..end]
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') =>
            {
                (&b""[..], &literal[end + 1..])
            }
            _ => return false,
        },
        None => match host.iter().rposition(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &b""[..]),
        },
    };
    let port_ok = match port {
        [] | [b':'] => true,
        [b':', digits @ ..] => std::str::from_utf8(digits).is_ok_and(|digits| {
            digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok()
        }),
        _ => false,
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    port_ok && name_ok
}

/// The longest Host: a 253-byte DNS name, a colon and a 5-digit port.
const MAX_HOST: usize = 253 + 6;

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`; no sign, no spaces inside, no overflow.
fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::InvalidContentLength);
    }
    value.iter().try_fold(0u64, |total, &digit| {
        total
            .checked_mul(10)
            .and_then(|total| total.checked_add(u64::from(digit - b'0')))
            .ok_or(RequestError::InvalidContentLength)
    })
}

/// The items of a comma-separated header list, trimmed, empty ones skipped.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        request_line: 64,
        fields: 16,
        field_bytes: 128,
        unconventional_methods: false,
    };

    #[test]
    fn bare_line_feeds() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\n"));
        assert!(has_bare_lf(b"\n"));
        assert!(!has_bare_lf(b"a\rb\r\n"));
    }

    fn parse_all(raw: &[u8]) -> Result<Option<(Framing, usize)>, RequestError> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        parse(raw, &mut slots, &LIMITS).map(|parsed| parsed.map(|(head, len)| (head.framing, len)))
    }

    #[test]
    fn a_head_split_anywhere_is_partial_until_complete() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let head_len = raw.len() - 3;
        for cut in 0..head_len {
            assert!(parse_all(&raw[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (framing, len) = parse_all(raw).unwrap().unwrap();
        assert_eq!(len, head_len);
        assert_eq!(framing.body, BodyKind::Length(3));
        assert!(framing.keep_alive);
    }

    #[test]
    fn framing_rules() {
        let status = |raw: &[u8]| parse_all(raw).map(|_| 0).unwrap_or_else(|e| e.status().0);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(status(b"GET / HTTP/1.0\r\n\r\n"), 0, "1.0 needs no Host");
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n"),
            400
        );
        assert_eq!(
            status(
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
            ),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            0,
            "Gunicorn's verdict"
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400,
            "not chunked last"
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n"),
            400,
            "empty"
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
            417
        );
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n"),
            0,
            "empty port"
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a:65535\r\n\r\n"), 0);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), 400);
        assert!(is_valid_host(&[b'a'; 253]));
        assert!(!is_valid_host(&[b'a'; 260]), "longer than any DNS name");
        assert_eq!(
            status(b"GET http://h:1/ HTTP/1.0\r\n\r\n"),
            0,
            "authority, no Host"
        );
        assert_eq!(status(b"GET http://u@h/ HTTP/1.0\r\n\r\n"), 0, "userinfo");
        assert_eq!(
            status(b"GET http://u:p@h:1/ HTTP/1.1\r\nHost: u:p@h:1\r\n\r\n"),
            400,
            "userinfo in Host"
        );
        assert_eq!(status(b"GET http://a@b@h/ HTTP/1.0\r\n\r\n"), 400, "two @");
        assert_eq!(
            status(b"GET http://evil\\@h/ HTTP/1.0\r\n\r\n"),
            400,
            "backslash in userinfo"
        );
        assert_eq!(
            status(b"GET http:///x HTTP/1.0\r\n\r\n"),
            400,
            "no authority"
        );
        assert_eq!(status(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), 400, "bare LF");
        assert_eq!(
            status(&[b"GET /".as_slice(), &[b'a'; 64], b" HTTP/1.1\r\n"].concat()),
            414
        );
        assert_eq!(
            status(&[b"GET /".as_slice(), &[b'a'; 64]].concat()),
            414,
            "known before it ends"
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), 0);
        assert_eq!(status(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
        assert_eq!(status(b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n"), 0);
        assert_eq!(status(b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
        assert_eq!(status(b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTX/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn keep_alive_defaults() {
        let keep = |raw: &[u8]| parse_all(raw).unwrap().unwrap().0.keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }
}
