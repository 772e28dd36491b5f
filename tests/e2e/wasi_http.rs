//! Standard `wasi:http` 0.2 components, built for other hosts, served beside WSGI apps.

use std::io::{BufReader, Write};

use crate::support::{RawResponse, Server, guest};

#[test]
fn a_component_built_for_wasmtime_serve_answers_unchanged() {
    let server = Server::start("http_hello", &["--workers", "2"]);
    let mut stream = server.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // Keep-alive: two requests on one connection, each a whole response.
    for name in ["wasi", "again"] {
        write!(
            stream,
            "GET /?name={name} HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        )
        .unwrap();
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("Hello, {name}!\n"));
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    // HEAD gets the head alone, framed by the server.
    stream
        .write_all(b"HEAD /?name=x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .unwrap();
    let head = RawResponse::read(&mut reader, true);
    assert_eq!(head.status, 200);
    server.wait_for_log(&["\"GET /?name=again HTTP/1.1\" 200"]);
    // An absolute-form target reaches the component as its path and query; an HTTP/1.0
    // request with no Host still gets an authority (the listen address).
    let absolute =
        server.raw(b"GET http://gw.test/?name=absolute HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    assert_eq!(absolute.text(), "Hello, absolute!\n");
    let hostless = server.raw(b"GET /?name=old HTTP/1.0\r\n\r\n");
    assert_eq!(hostless.text(), "Hello, old!\n");
}

#[test]
fn a_wasi_http_component_and_a_wsgi_app_share_a_port() {
    let http = guest("http_hello");
    let wsgi = guest("hello");
    let server = Server::start_mounts(&[
        "--mount",
        &format!("/={}", wsgi.display()),
        "--mount",
        &format!("/api={}", http.display()),
    ]);
    // The component sees the full path and query, mount prefix included.
    let api = server.raw(b"GET /api/?name=component HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(api.text(), "Hello, component!\n");
    let root = server.raw(b"GET /?name=wsgi HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(root.text(), "Hello, wsgi!\n");
}

#[test]
fn a_wasi_http_component_is_held_to_its_limits_like_any_app() {
    let server = Server::start(
        "http_faulty",
        &["--workers", "1", "--timeout", "1", "--max-memory", "32MiB"],
    );
    let status = |path: &str| {
        server
            .raw(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .status
    };
    assert_eq!(status("/loop"), 504);
    server.wait_for_log(&["stopped after exceeding the 1s deadline"]);
    assert_eq!(status("/alloc"), 500);
    server.wait_for_log(&["ran out of memory"]);
    assert_eq!(status("/panic"), 500);
    assert_eq!(status("/no-response"), 500);
    server.wait_for_log(&["without setting a response"]);
    // The one instance was replaced after each fault, and serves on.
    assert_eq!(
        server.raw(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").text(),
        "ok"
    );
}

#[test]
fn an_endless_stream_is_cut_at_the_stream_timeout_and_its_instance_replaced() {
    let server = Server::start(
        "http_faulty",
        &["--workers", "1", "--timeout", "30", "--stream-timeout", "1"],
    );
    let mut stream = server.connect();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // The head and some lines come, then the connection is cut.
    let received = crate::support::read_to_close(&mut stream);
    assert!(
        received.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        &received[..received.len().min(64)]
    );
    // Cut, not ended: no last chunk.
    assert!(received.len() > 1000 && !received.ends_with(b"0\r\n\r\n"));
    server.wait_for_log(&["stream stopped after running for 1s"]);
    // The one worker serves on, with a fresh instance.
    assert_eq!(
        server.raw(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").text(),
        "ok"
    );
    server.wait_for_log(&["instance replaced", "timeout"]);
}

#[test]
fn a_guest_that_fails_mid_response_never_looks_complete() {
    let server = Server::start("http_faulty", &["--workers", "1", "--timeout", "1"]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /late-panic HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let received = crate::support::read_to_close(&mut stream);
    // Either the 500 in its place, or a head and a body cut off without its last chunk.
    let failed = received.starts_with(b"HTTP/1.1 500 ");
    let cut = received.starts_with(b"HTTP/1.1 200 ") && !received.ends_with(b"0\r\n\r\n");
    assert!(failed || cut, "{}", String::from_utf8_lossy(&received));
    server.wait_for_log(&["panicked after starting its response"]);

    // A guest blocked in a host call, out of the deadline's reach, is given up: 504, and
    // the worker serves on with a new instance and thread.
    assert_eq!(
        server
            .raw(b"GET /write-before-set HTTP/1.1\r\nHost: a\r\n\r\n")
            .status,
        504
    );
    server.wait_for_log(&["stuck in a host call past its deadline"]);
    assert_eq!(
        server.raw(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").text(),
        "ok"
    );
}

#[test]
fn outbound_requests_are_denied_with_the_standard_error() {
    let server = Server::start("http_faulty", &[]);
    let response = server.raw(b"GET /outbound HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "ErrorCode::HttpRequestDenied");
    server.wait_for_log(&["denied an outbound HTTP request", "example.com"]);
}
