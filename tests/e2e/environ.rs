//! Environ fidelity through the echo guest, which reports what it saw in `X-Echo-Meta`.

use std::io::Write;

use serde_json::Value;

use crate::support::{RawResponse, Server, echo_apps, meta, wsgi_echo_apps};

/// A JSON string holding a PEP 3333 native string, back as the bytes it stands for.
fn native_bytes(value: &Value) -> Vec<u8> {
    value
        .as_str()
        .unwrap()
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("latin-1 code point"))
        .collect()
}

#[test]
fn every_pep3333_variable_reaches_the_app() {
    for echo in wsgi_echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &["--workers", "2"]);
        let mut stream = server.connect();
        let client_port = stream.local_addr().unwrap().port();
        stream
            .write_all(
                b"POST /a%20b/c%2Fd?x=1&y=%20 HTTP/1.1\r\n\
              Host: example.test:8080\r\n\
              X-Echo-Environ: 1\r\n\
              Content-Type: text/plain\r\n\
              X-Repeat: one\r\n\
              x-repeat: two\r\n\
              X_Underscore: sneaky\r\n\
              Content-Length: 5\r\n\r\nhello",
            )
            .unwrap();
        let response = RawResponse::read(&mut std::io::BufReader::new(stream), false);
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hello");
        let meta = meta(&response);
        let environ = meta["environ"].as_object().expect("environ object");
        let expect = |key: &str, value: &str| {
            assert_eq!(
                environ.get(key).and_then(Value::as_str),
                Some(value),
                "{key}"
            );
        };
        expect("REQUEST_METHOD", "POST");
        expect("SCRIPT_NAME", "");
        expect("PATH_INFO", "/a b/c/d");
        expect("QUERY_STRING", "x=1&y=%20");
        expect("CONTENT_TYPE", "text/plain");
        expect("CONTENT_LENGTH", "5");
        expect("SERVER_NAME", "example.test");
        expect("SERVER_PORT", "8080");
        expect("SERVER_PROTOCOL", "HTTP/1.1");
        expect("REMOTE_ADDR", "127.0.0.1");
        expect("REMOTE_PORT", &client_port.to_string());
        expect("RAW_URI", "/a%20b/c%2Fd?x=1&y=%20");
        expect("REQUEST_URI", "/a%20b/c%2Fd?x=1&y=%20");
        expect("wsgi.version", "(1, 0)");
        expect("wsgi.url_scheme", "http");
        expect("wsgi.multithread", "True");
        expect("wsgi.multiprocess", "False");
        expect("wsgi.run_once", "False");
        expect("wsgi.input_terminated", "True");
        expect("HTTP_HOST", "example.test:8080");
        expect("HTTP_X_REPEAT", "one,two");
        expect("HTTP_X_ECHO_ENVIRON", "1");
        assert!(
            !environ.contains_key("HTTP_CONTENT_TYPE"),
            "Content-Type only as CONTENT_TYPE"
        );
        assert!(!environ.contains_key("HTTP_CONTENT_LENGTH"));
        assert!(
            !environ
                .keys()
                .any(|key| key.starts_with("HTTP_X_UNDERSCORE")),
            "a header named with _ must not pose as one named with -"
        );

        assert_eq!(meta["method"], "POST");
        assert_eq!(meta["path"], "/a b/c/d");
        assert_eq!(meta["query"], "x=1&y=%20");
        assert_eq!(meta["raw_uri"], "/a%20b/c%2Fd?x=1&y=%20");
        assert_eq!(meta["version"], "HTTP/1.1");
        assert_eq!(meta["body_len"], 5);
        let names: Vec<&str> = meta["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| pair[0].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Host",
                "X-Echo-Environ",
                "Content-Type",
                "X-Repeat",
                "x-repeat",
                "X_Underscore",
                "Content-Length"
            ],
            "raw headers keep their order, case and repeats"
        );
    }
}

#[test]
fn latin1_header_bytes_round_trip() {
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let high: Vec<u8> = (0x80..=0xFF).collect();
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Latin: caf".to_vec();
        request.extend_from_slice(&high);
        request.extend_from_slice(b"\r\n\r\n");
        let response = server.raw(&request);
        assert_eq!(response.status, 200);
        let meta = meta(&response);
        let latin = meta["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|pair| {
                pair[0]
                    .as_str()
                    .is_some_and(|name| name.eq_ignore_ascii_case("X-Latin"))
            })
            .expect("X-Latin reported");
        let mut expected = b"caf".to_vec();
        expected.extend_from_slice(&high);
        assert_eq!(native_bytes(&latin[1]), expected);
    }
}

#[test]
fn binary_body_echoes_exactly() {
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let mut request = format!(
            "PUT /bin HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let response = server.raw(&request);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-length"), Some("100000"));
        assert!(response.body == body, "body differs");
        assert_eq!(meta(&response)["body_len"], 100_000);
    }
}

#[test]
fn a_keep_alive_request_sees_nothing_of_the_one_before() {
    for echo in wsgi_echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let mut reader = std::io::BufReader::new(server.connect());
        // The server refills one request's strings for the next on the same connection.
        reader
            .get_mut()
            .write_all(
                b"POST /first/path?x=1 HTTP/1.1\r\nHost: first.test:81\r\nX-Echo-Environ: 1\r\n\
                  Content-Type: text/plain\r\nX-Only-First: yes\r\nContent-Length: 2\r\n\r\nhi",
            )
            .unwrap();
        let first = meta(&RawResponse::read(&mut reader, false));
        assert_eq!(first["environ"]["CONTENT_TYPE"], "text/plain");
        reader
            .get_mut()
            .write_all(b"GET /2 HTTP/1.1\r\nHost: b\r\nX-Echo-Environ: 1\r\n\r\n")
            .unwrap();
        let second = meta(&RawResponse::read(&mut reader, false));
        let environ = second["environ"].as_object().expect("environ object");
        for key in ["CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_ONLY_FIRST"] {
            assert!(!environ.contains_key(key), "{key} of the first request");
        }
        assert_eq!(environ["REQUEST_METHOD"], "GET");
        assert_eq!(environ["PATH_INFO"], "/2");
        assert_eq!(environ["QUERY_STRING"], "");
        assert_eq!(environ["SERVER_NAME"], "b");
        assert_eq!(environ["SERVER_PORT"], "80");
        assert_eq!(second["headers"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn a_fragment_is_dropped_and_a_higher_minor_version_is_served_as_1_1() {
    let server = Server::start("echo", &[]);
    let response = server.raw(
        b"GET /forums/1/topics/2375?page=1#posts-17408 HTTP/1.2\r\nHost: a\r\nX-Echo-Environ: 1\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let meta = meta(&response);
    let environ = &meta["environ"];
    assert_eq!(environ["PATH_INFO"], "/forums/1/topics/2375");
    assert_eq!(environ["QUERY_STRING"], "page=1");
    // RAW_URI keeps the target as sent, fragment and all.
    assert_eq!(
        environ["RAW_URI"],
        "/forums/1/topics/2375?page=1#posts-17408"
    );
    assert_eq!(environ["SERVER_PROTOCOL"], "HTTP/1.1");
}

/// The REMOTE_ADDR and wsgi.url_scheme an echo server reports for a request with
/// `forwarding` headers.
fn seen_through(server: &Server, forwarding: &str) -> (String, String) {
    let request = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Echo-Environ: 1\r\n{forwarding}\r\n");
    let response = server.raw(request.as_bytes());
    assert_eq!(response.status, 200);
    let meta = meta(&response);
    let environ = &meta["environ"];
    (
        environ["REMOTE_ADDR"].as_str().unwrap().to_owned(),
        environ["wsgi.url_scheme"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn forwarding_headers_count_only_from_trusted_proxies() {
    let headers = "X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Forwarded-Proto: https\r\n";
    // The test's loopback address is a trusted proxy by default: the rightmost hop it
    // forwarded for is the client.
    let trusting = Server::start("echo", &[]);
    assert_eq!(
        seen_through(&trusting, headers),
        ("203.0.113.7".to_owned(), "https".to_owned())
    );
    let rfc = "Forwarded: for=192.0.2.60;proto=https\r\n";
    assert_eq!(
        seen_through(&trusting, rfc),
        ("192.0.2.60".to_owned(), "https".to_owned())
    );
    // A server that trusts another proxy leaves the headers as they are.
    let wary = Server::start("echo", &["--forwarded-allow-ips", "10.0.0.0/8"]);
    assert_eq!(
        seen_through(&wary, headers),
        ("127.0.0.1".to_owned(), "http".to_owned())
    );
}
