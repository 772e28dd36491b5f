//! A table of raw requests, each with the status it must get and whether the connection
//! stays open. A probe request rides behind every case in the same write: it must be
//! answered when the connection stays open, and never when it closes.

use std::io::{BufReader, Write};

use crate::support::{RawResponse, Server, echo_apps, read_to_close};

const PROBE: &[u8] = b"GET /probe HTTP/1.1\r\nHost: probe\r\n\r\n";

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    open: bool,
    /// The body the echo app must return, where the case checks it.
    body: Option<&'static [u8]>,
}

fn ok(name: &'static str, request: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        request: request.as_ref().to_vec(),
        status: 200,
        open: true,
        body: None,
    }
}

fn echoes(name: &'static str, request: impl AsRef<[u8]>, body: &'static [u8]) -> Case {
    Case {
        body: Some(body),
        ..ok(name, request)
    }
}

fn closes(name: &'static str, request: impl AsRef<[u8]>, status: u16) -> Case {
    Case {
        name,
        request: request.as_ref().to_vec(),
        status,
        open: false,
        body: None,
    }
}

fn get_with(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
}

fn chunked(body: &str) -> Vec<u8> {
    format!("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
}

fn many_fields(count: usize) -> String {
    (0..count).map(|i| format!("X-F{i}: v\r\n")).collect()
}

fn cases() -> Vec<Case> {
    let long_value = "v".repeat(8000);
    let latin = b"GET / HTTP/1.1\r\nHost: a\r\nX-L: caf\xe9 \xff\x80\r\n\r\n";
    let small_chunks: String = "x"
        .repeat(100)
        .chars()
        .map(|c| format!("1\r\n{c}\r\n"))
        .collect::<String>()
        + "0\r\n\r\n";
    vec![
        // Valid requests that keep the connection open.
        ok("simple GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("query string", "GET /p?a=1&b=%20 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("empty query", "GET /p? HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("percent-encoded path", "GET /a%2Fb%20c HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ok("1.1 explicit keep-alive", get_with("Connection: keep-alive\r\n")),
        echoes("POST with a body", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        echoes("POST with an empty body", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", b""),
        echoes("identical Content-Length twice", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        echoes("Content-Length with leading zeros", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 002\r\n\r\nok", b"ok"),
        echoes("PUT", "PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n1", b"1"),
        ok("DELETE", "DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("PATCH", "PATCH /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
        ok("extension method", "PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("a method of 20 characters", "ABCDEFGHIJKLMNOPQRST / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("a method of 3 characters", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        // RFC 9110 §6.2: a higher minor version of HTTP/1 is served as HTTP/1.1.
        ok("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        ok("HTTP/1.9", "GET / HTTP/1.9\r\nHost: a\r\n\r\n"),
        // RFC 9112 §3.2: a fragment is no part of the target; it is dropped, as Gunicorn does.
        ok("a fragment", "GET /forums/1/topics/2375?page=1#posts-17408 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("a fragment without a query", "GET /frag#x HTTP/1.1\r\nHost: a\r\n\r\n"),
        // The limits, counted as Gunicorn counts them: the request line without its CRLF,
        // a field line with its CRLF.
        ok("request line at the limit", format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(4094 - 14))),
        ok("field line at the limit", get_with(&format!("X-Big: {}\r\n", "v".repeat(8190 - 2 - 7)))),
        ok("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("HEAD", "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("absolute-form", "GET http://a/x?y HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("absolute-form with port", "GET http://a:8080/x HTTP/1.1\r\nHost: a:8080\r\n\r\n"),
        ok("absolute-form https", "GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("absolute-form, mixed-case scheme and host", "GET HTTP://A/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("Host with port", "GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"),
        ok("Host IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
        ok("Host IPv4", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ok("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        ok("mixed-case header names", "GET / HTTP/1.1\r\nhOsT: a\r\nX-MiXeD-CaSe: 1\r\n\r\n"),
        ok("latin-1 header bytes", latin),
        ok("empty header value", get_with("X-Empty:\r\n")),
        ok("tab in header value", get_with("X-Tab: a\tb\r\n")),
        ok("no space after colon", get_with("X-Tight:v\r\n")),
        ok("trailing whitespace in value", get_with("X-Trail: v  \r\n")),
        ok("long but legal header", get_with(&format!("X-Long: {long_value}\r\n"))),
        ok("98 extra fields", get_with(&many_fields(98))),
        ok("exactly 100 fields", get_with(&many_fields(99))),
        ok("leading empty line", "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ok("underscore header", get_with("X_Under: 1\r\n")),
        ok("repeated headers", get_with("X-R: 1\r\nX-R: 2\r\n")),
        ok("Expect 100-continue", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"),
        ok("Expect is case-insensitive", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nhi"),
        echoes("chunked", chunked("5\r\nhello\r\n0\r\n\r\n"), b"hello"),
        echoes("many small chunks", chunked(&small_chunks), b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        echoes("chunk extension", chunked("5;name=value\r\nhello\r\n0\r\n\r\n"), b"hello"),
        echoes("chunk extension without value", chunked("5;flag\r\nhello\r\n0;last\r\n\r\n"), b"hello"),
        echoes("quoted chunk extension", chunked("5;n=\"a b\"\r\nhello\r\n0\r\n\r\n"), b"hello"),
        echoes("whitespace before chunk extension", chunked("5 ;n=v\r\nhello\r\n0\r\n\r\n"), b"hello"),
        echoes("uppercase hex size", chunked("A\r\n0123456789\r\n0\r\n\r\n"), b"0123456789"),
        echoes("leading zeros in chunk size", chunked("0005\r\nhello\r\n0\r\n\r\n"), b"hello"),
        echoes("a trailer", chunked("5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), b"hello"),
        echoes("two trailers", chunked("5\r\nhello\r\n0\r\nA: 1\r\nB: 2\r\n\r\n"), b"hello"),
        echoes("trailer line at the size limit", chunked(&format!("5\r\nhello\r\n0\r\nX-T: {}\r\n\r\n", "v".repeat(8190 - 7))), b"hello"),
        echoes("empty chunked body", chunked("0\r\n\r\n"), b""),
        echoes("Chunked in any case", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", b"hi"),
        echoes("chunked with list whitespace", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked \r\n\r\n2\r\nhi\r\n0\r\n\r\n", b"hi"),
        echoes("binary body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\x00\xff\r\n", b"\x00\xff\r\n"),
        // Valid requests after which the connection closes.
        closes("HTTP/1.0 without keep-alive", "GET / HTTP/1.0\r\n\r\n", 200),
        closes("Connection: close", get_with("Connection: close\r\n"), 200),
        closes("close among other options", get_with("Connection: foo, close\r\n"), 200),
        // Host.
        closes("no Host in 1.1", "GET / HTTP/1.1\r\n\r\n", 400),
        closes("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        closes("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        closes("Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        closes("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
        closes("Host with a bad port", "GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n", 400),
        closes("Host with an open IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
        // Header syntax.
        closes("whitespace before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        closes("tab before colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A\t: 1\r\n\r\n", 400),
        closes("name that is not a token", get_with("X(y): 1\r\n"), 400),
        closes("empty name", get_with(": x\r\n"), 400),
        closes("line without colon", get_with("NoColon\r\n"), 400),
        closes("obs-fold", get_with("X-Fold: a\r\n folded\r\n"), 400),
        closes("obs-fold with tab", get_with("X-Fold: a\r\n\tfolded\r\n"), 400),
        closes("bare CR in value", get_with("X-A: a\rb\r\n"), 400),
        closes("NUL in value", get_with("X-A: a\0b\r\n"), 400),
        closes("whitespace before the first header", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
        closes("bare LF line ends", "GET / HTTP/1.1\nHost: a\n\n", 400),
        closes("bare LF after a header", "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 400),
        closes("non-ASCII in a name", b"GET / HTTP/1.1\r\nHost: a\r\nX-\xe9: 1\r\n\r\n", 400),
        // Content-Length.
        closes("Content-Length not digits", get_with("Content-Length: abc\r\n"), 400),
        closes("negative Content-Length", get_with("Content-Length: -1\r\n"), 400),
        closes("signed Content-Length", get_with("Content-Length: +1\r\n"), 400),
        closes("Content-Length with inner space", get_with("Content-Length: 1 2\r\n"), 400),
        closes("hex Content-Length", get_with("Content-Length: 0x10\r\n"), 400),
        closes("Content-Length list", get_with("Content-Length: 1, 1\r\n"), 400),
        closes("empty Content-Length", get_with("Content-Length:\r\n"), 400),
        closes("differing Content-Lengths", get_with("Content-Length: 1\r\nContent-Length: 2\r\n"), 400),
        closes("overflowing Content-Length", get_with("Content-Length: 99999999999999999999\r\n"), 400),
        // Transfer-Encoding.
        closes("Transfer-Encoding and Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
        closes("Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        closes("chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        closes("chunked twice in two fields", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        closes("gzip after chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        closes("identity after chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        closes("empty Transfer-Encoding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400),
        closes("unknown coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", 501),
        // RFC 9112 §6.1: "If a Transfer-Encoding header field is present in a request and the
        // chunked transfer coding is not the final encoding, ... the server MUST respond
        // with the 400 (Bad Request) status code and then close the connection."
        closes("gzip alone", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        // Gunicorn's verdicts: a compression before chunked is taken (the body reaches the
        // app as sent, and the connection closes after), and identity is no coding at all.
        closes("gzip then chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200),
        // RFC 9112 §6.1's MUST: chunked must come last (Gunicorn takes `identity` alone).
        closes("identity alone", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        closes("identity then chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200),
        closes("identity with a Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nWorld", 400),
        closes("Transfer-Encoding in HTTP/1.0, even identity", "POST / HTTP/1.0\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        // RFC 9110 §4.2.4 lets a recipient refuse userinfo; Gunicorn takes it.
        ok("absolute-form with userinfo", "GET http://user:pass@a:8080/foo?q=1 HTTP/1.1\r\nHost: a:8080\r\n\r\n"),
        // Chunked bodies.
        closes("0x chunk size", chunked("0x5\r\nhello\r\n0\r\n\r\n"), 400),
        closes("signed chunk size", chunked("+5\r\nhello\r\n0\r\n\r\n"), 400),
        closes("negative chunk size", chunked("-5\r\nhello\r\n0\r\n\r\n"), 400),
        closes("underscore in chunk size", chunked("5_0\r\n"), 400),
        closes("space before chunk size", chunked(" 5\r\nhello\r\n0\r\n\r\n"), 400),
        closes("space after chunk size", chunked("5 \r\nhello\r\n0\r\n\r\n"), 400),
        closes("missing chunk size", chunked("\r\nhello\r\n0\r\n\r\n"), 400),
        closes("overflowing chunk size", chunked("fffffffffffffffff\r\n"), 400),
        closes("no CRLF after chunk data", chunked("5\r\nhelloXX0\r\n\r\n"), 400),
        closes("bare LF after chunk data", chunked("5\r\nhello\n0\r\n\r\n"), 400),
        closes("bare LF after chunk size", chunked("5\nhello\r\n0\r\n\r\n"), 400),
        closes("bare LF in chunk extension", chunked("5;a\nb\r\nhello\r\n0\r\n\r\n"), 400),
        closes("bare CR in chunk extension", chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"), 400),
        closes("invalid trailer field", chunked("0\r\nBad Field: 1\r\n\r\n"), 400),
        closes("bare LF in trailer", chunked("0\r\nX: 1\n\r\n"), 400),
        closes("too many trailer fields", chunked(&format!("0\r\n{}\r\n", many_fields(101))), 431),
        // A trailer line counts as a header line does: all of it, with its CRLF.
        closes("trailer line over the size limit", chunked(&format!("0\r\nX-T: {}\r\n\r\n", "v".repeat(8190 - 7 + 1))), 431),
        // RFC 9110 §6.5.1: fields that framing, routing or authentication depend on.
        closes("Content-Length in a trailer", chunked("5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"), 400),
        closes("Host in a trailer", chunked("0\r\nHost: b\r\n\r\n"), 400),
        closes("Transfer-Encoding in a trailer", chunked("0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400),
        closes("Authorization in a trailer", chunked("0\r\nAuthorization: Basic eA==\r\n\r\n"), 400),
        closes("TE and Trailer in a trailer", chunked("0\r\nTE: trailers\r\nTrailer: X\r\n\r\n"), 400),
        // Gunicorn's default: a valid token, but no conventional method.
        closes("a lowercase method", "get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("a method with a lowercase letter", "-bl /foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("a method with #", "G#T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("a method of 2 characters", "GE / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("a method of 21 characters", "ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        // RFC 9110 §5.3: Content-Type is a singleton.
        closes("two Content-Types", get_with("Content-Type: text/plain\r\nContent-Type: text/html\r\n"), 400),
        // The request line.
        closes("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        closes("HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        closes("HTTP/2", "GET / HTTP/2\r\nHost: a\r\n\r\n", 505),
        closes("garbage version", "GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
        closes("lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        closes("HTTP/0.9 style", "GET /\r\n\r\n", 400),
        closes("empty target", "GET  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("two spaces before the version", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("asterisk with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("authority-form with GET", "GET a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n", 400),
        closes("CONNECT with origin-form", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("absolute-form with another Host", "GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n", 400),
        closes("absolute-form with another scheme", "GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("method that is not a token", "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        closes("garbage", "GARBAGE\r\n\r\n", 400),
        closes("binary garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        // Limits.
        closes("request line over the limit", format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(4094 - 13)), 414),
        closes("method over the line limit", format!("{} / HTTP/1.1\r\nHost: a\r\n\r\n", "M".repeat(8200)), 414),
        closes("field over the size limit", get_with(&format!("X-Big: {}\r\n", "v".repeat(8190 - 2 - 6))), 431),
        closes("101 fields", get_with(&many_fields(100)), 431),
        closes("Content-Length over the body limit", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", 413),
        closes("a chunk over the body limit", chunked("100001\r\n"), 413),
        closes("chunks adding up past the body limit", chunked("80000\r\n").into_iter().chain(vec![b'x'; 0x80000]).chain(*b"\r\n80001\r\n").collect::<Vec<u8>>(), 413),
        // Expect.
        closes("unknown expectation", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n", 417),
    ]
}

#[test]
fn the_request_corpus() {
    let cases = cases();
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &["--max-body-size", "1MiB"]);
        let mut failures = Vec::new();
        for case in &cases {
            if let Err(why) = run(&server, case) {
                failures.push(format!("{}: {why}", case.name));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

fn run(server: &Server, case: &Case) -> Result<(), String> {
    let mut stream = server.connect();
    let mut bytes = case.request.clone();
    bytes.extend_from_slice(PROBE);
    // The server may close as soon as it has seen enough; what it did not read is moot.
    let _ = stream.write_all(&bytes);
    let mut reader = BufReader::new(stream);
    let head_only = case.request.starts_with(b"HEAD ");
    let mut response = RawResponse::read(&mut reader, head_only);
    while response.status == 100 {
        response = RawResponse::read(&mut reader, false);
    }
    if response.status != case.status {
        return Err(format!(
            "status {} instead of {}",
            response.status, case.status
        ));
    }
    if let Some(body) = case.body
        && response.body != body
    {
        return Err(format!("body {:?}", response.text()));
    }
    if case.open {
        let probe = RawResponse::read(&mut reader, false);
        if probe.status != 200 || probe.header("x-echo-meta").is_none() {
            return Err(format!("probe got {}", probe.status));
        }
    } else {
        if response.header("connection") != Some("close") {
            return Err("no Connection: close on a closing response".into());
        }
        let rest = read_to_close(reader.get_mut());
        if !rest.is_empty() {
            return Err(format!(
                "bytes after the response: {:?}",
                String::from_utf8_lossy(&rest)
            ));
        }
    }
    Ok(())
}
