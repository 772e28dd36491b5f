//! Standard `wasi:http` 0.2 components, built for other hosts, served beside WSGI apps.

use std::io::{BufReader, Write};

use crate::support::{RawResponse, Server, guest, meta};

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
    // An absolute-form target with a query and no path.
    let bare = server.raw(b"GET http://gw.test?name=bare HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    assert_eq!(bare.text(), "Hello, bare!\n");
}

#[test]
fn a_wasi_http_0_3_component_answers_and_streams_its_body() {
    let server = Server::start("http_hello_p3", &["--workers", "2"]);
    let mut stream = server.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for name in ["p3", "again"] {
        write!(stream, "GET /?name={name} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("Hello, {name}!\n"));
    }
    // Written line by line by a task of the guest's after its handler returned: chunked.
    stream
        .write_all(b"GET /stream?n=500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let streamed = RawResponse::read(&mut reader, false);
    assert!(streamed.chunked);
    let expected: String = (1..=500).map(|n| format!("line {n}\n")).collect();
    assert_eq!(streamed.text(), expected);
    stream
        .write_all(b"HEAD /?name=x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(RawResponse::read(&mut reader, true).status, 200);
    // The same connection still serves: the HEAD's body never went out.
    stream
        .write_all(b"GET /?name=last HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(
        RawResponse::read(&mut reader, false).text(),
        "Hello, last!\n"
    );

    // The request's own body as the response's: read from the client as it is written out.
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                     4\r\nping\r\n5\r\n pong\r\n0\r\n\r\n",
        )
        .unwrap();
    assert_eq!(RawResponse::read(&mut reader, false).text(), "ping pong");

    // Held to its deadline like any app: 504, and the worker goes on with a new instance.
    let limited = Server::start("http_hello_p3", &["--workers", "1", "--timeout", "1"]);
    assert_eq!(
        limited.raw(b"GET /loop HTTP/1.1\r\nHost: a\r\n\r\n").status,
        504
    );
    limited.wait_for_log(&["stopped after exceeding the 1s deadline"]);
    assert_eq!(
        limited
            .raw(b"GET /?name=after HTTP/1.1\r\nHost: a\r\n\r\n")
            .text(),
        "Hello, after!\n"
    );
    limited.wait_for_log(&["instance replaced", "timeout"]);
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
fn a_component_learns_its_mount_and_client_from_headers_no_client_can_forge() {
    let echo = guest("http_echo");
    let server = Server::start_mounts(&[
        "--mount",
        &format!("/={}", echo.display()),
        "--mount",
        &format!("/api/v1={}", echo.display()),
    ]);
    let ours = |meta: &serde_json::Value, name: &str| -> Vec<String> {
        meta["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|pair| pair[1].as_str().unwrap().to_owned())
            .collect()
    };
    let mounted = meta(&server.raw(
        b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: a\r\n\
          Wasm-GW-Script-Name: /forged\r\nwasm-gw-remote-addr: 203.0.113.9\r\n\r\n",
    ));
    assert_eq!(
        mounted["path"], "/api/v1/items",
        "the full path, prefix included"
    );
    assert_eq!(mounted["query"], "page=2");
    assert_eq!(ours(&mounted, "wasm-gw-script-name"), ["/api/v1"]);
    assert_eq!(ours(&mounted, "wasm-gw-remote-addr"), ["127.0.0.1"]);
    let root = meta(&server.raw(b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_eq!(root["path"], "/other");
    assert_eq!(ours(&root, "wasm-gw-script-name"), [""]);
    // The prefix is the path's, as the client spelled it.
    let encoded = meta(&server.raw(b"GET /%61pi/v1/x HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_eq!(encoded["path"], "/%61pi/v1/x");
    assert_eq!(ours(&encoded, "wasm-gw-script-name"), ["/%61pi/v1"]);
    // Bytes a URI cannot hold as they are reach the component percent-encoded.
    let odd = server.raw(b"GET /?q=<x> HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(odd.status, 200);
    assert_eq!(meta(&odd)["query"], "q=%3Cx%3E");
}

#[test]
fn a_component_reads_its_request_body_as_the_client_sends_it() {
    let server = Server::start(
        "http_echo",
        &[
            "--workers",
            "1",
            "--timeout",
            "1",
            "--max-body-size",
            "1KiB",
            // Every body streams to the app as it arrives, none is read whole first.
            "--client-body-buffer-size",
            "0",
        ],
    );
    // The component waits on the client longer than its whole deadline, which only counts
    // its own time.
    let response = crate::support::post_slowly(&server);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "1234567890");
    // A body declared over --max-body-size is refused before the component runs.
    let mut request = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n".to_vec();
    request.resize(request.len() + 2048, b'x');
    assert_eq!(server.raw(&request).status, 413);
    // A chunked one is refused as it arrives, while the component reads it.
    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert_eq!(server.raw(chunked.as_bytes()).status, 413);
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
    // The head and what was written went out with the write; then the body is cut off,
    // without its last chunk.
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.contains("partial") && !text.ends_with("0\r\n\r\n"),
        "{text}"
    );
    server.wait_for_log(&["panicked after starting its response"]);

    // A guest that waits to write a body nobody can take yet (its response is not set)
    // waits out its deadline and no more: 504, and the worker serves on with a new instance.
    assert_eq!(
        server
            .raw(b"GET /write-before-set HTTP/1.1\r\nHost: a\r\n\r\n")
            .status,
        504
    );
    server.wait_for_log(&["stopped after exceeding the 1s deadline"]);
    assert_eq!(
        server.raw(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").text(),
        "ok"
    );

    // A response set before the request body is read: a body that turns out malformed
    // gets the server's 400, not the component's 200.
    let read = server.raw(
        b"POST /respond-then-read HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(
        (read.status, read.text()),
        (200, "read 3 bytes\n".to_owned())
    );
    // A body shorter than its Content-Length is cut off, and the log says why.
    let mut short = server.connect();
    short
        .write_all(b"GET /wrong-length HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let received = crate::support::read_to_close(&mut short);
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 500 ")
            || (text.to_ascii_lowercase().contains("content-length: 10")
                && text.ends_with("short")),
        "{text}"
    );
    server.wait_for_log(&["ERROR", "response body failed"]);
    let broken = server.raw(
        b"POST /respond-then-read HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\nzz\r\n",
    );
    assert_eq!(broken.status, 400);
}

#[test]
fn outbound_requests_are_denied_with_the_standard_error() {
    let server = Server::start("http_faulty", &[]);
    let response = server.raw(b"GET /outbound HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "ErrorCode::HttpRequestDenied");
    server.wait_for_log(&["denied an outbound HTTP request", "example.com"]);
}
