//! A faulty guest never takes the server down: each fault gets its status, a log line with
//! the request id and the reason, and the next request succeeds.

use std::io::{BufRead, BufReader, Read, Write};

use crate::support::{RawResponse, Server, status_of};

#[test]
fn each_fault_gets_500_and_the_server_keeps_serving() {
    let server = Server::start("faulty", &["--workers", "1", "--max-memory", "32MiB"]);
    let faults = [
        ("/trap", "trapped"),
        ("/panic", "trapped"),
        ("/no-start", "body written before start_response"),
        ("/double-start", "start_response called again"),
        ("/bad-header", "invalid header"),
        ("/hop-header", "hop-by-hop header \"Connection\""),
        ("/alloc", "ran out of memory: the app needed"),
        ("/wrong-length", "does not match Content-Length 10"),
        ("/big-header", "past the limit of 65536"),
    ];
    for (path, reason) in faults {
        assert_eq!(status_of(&server, path), 500, "{path}");
        let logged = server.wait_for_log(&["ERROR", reason]);
        assert!(logged.contains("request="), "{logged}");
        // One worker: the same instance slot must serve again, replaced if it trapped.
        assert_eq!(status_of(&server, "/ok"), 200, "after {path}");
    }
    server.wait_for_log(&["instance replaced", "reason=\"trap\""]);
    server.wait_for_log(&["instance replaced", "reason=\"memory\""]);
}

#[test]
fn the_input_of_an_ended_request_is_stale_not_another_requests() {
    let server = Server::start("faulty", &["--workers", "1"]);
    assert_eq!(status_of(&server, "/keep-input"), 200);
    // This request has a body of its own, which the kept handle must not read.
    let response =
        server.raw(b"POST /kept-input HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nsecret");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "stale");
}

#[test]
fn the_500_never_leaks_what_the_app_meant_to_send() {
    let server = Server::start("faulty", &[]);
    let response = server.raw(b"GET /bad-header HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 500);
    assert!(response.header("set-cookie").is_none());
    assert!(response.header("x-injected").is_none());
    assert_eq!(response.text(), "Internal Server Error\n");
}

#[test]
fn a_request_past_its_deadline_gets_504() {
    let server = Server::start("faulty", &["--workers", "1", "--timeout", "1"]);
    assert_eq!(status_of(&server, "/loop"), 504);
    server.wait_for_log(&["exceeding the 1s deadline"]);
    assert_eq!(status_of(&server, "/ok"), 200);
    server.wait_for_log(&["instance replaced", "reason=\"timeout\""]);
}

#[test]
fn clients_that_vanish_mid_exchange_harm_nothing() {
    let server = Server::start("stream", &["--workers", "1"]);
    // Mid-request: the body never arrives in full.
    let mut stream = server.connect();
    stream
        .write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\npartial")
        .unwrap();
    drop(stream);
    // Mid-response: a long stream read for a moment, then dropped.
    let mut stream = server.connect();
    stream
        .write_all(b"GET /count?n=100000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut start = [0; 4096];
    stream.read_exact(&mut start).unwrap();
    drop(stream);
    server.wait_for_log(&["\"GET /count?n=100000000 HTTP/1.1\" 200"]);
    // The body stream's close ran although the client left.
    server.wait_for_log(&["count stream closed after", "of 100000000 lines", "stderr"]);

    let response = server.raw(b"GET /count?n=3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "1\n2\n3\n");
    let mut stream = server.connect();
    stream
        .write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n12345")
        .unwrap();
    assert_eq!(
        RawResponse::read(&mut BufReader::new(stream), false).text(),
        "5\n"
    );
}

#[test]
fn a_streamed_body_never_breaks_its_content_length() {
    let server = Server::start("faulty", &[]);
    for (path, expected) in [("/short-write", "12345"), ("/long-write", "123")] {
        let mut stream = server.connect();
        // A second request rides along: it must not be answered on a connection whose
        // framing the app broke.
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            reader.read_line(&mut head).unwrap();
        }
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let declared = if path == "/short-write" { "10" } else { "3" };
        assert!(
            head.contains(&format!("Content-Length: {declared}\r\n")),
            "{head}"
        );
        let mut body = Vec::new();
        reader.read_to_end(&mut body).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&body),
            expected,
            "{path}: the rest is cut off by a close"
        );
    }
    server.wait_for_log(&["ERROR", "does not match Content-Length"]);
}

#[test]
fn a_slow_client_does_not_spend_the_apps_deadline() {
    // Every body streams to the app as it arrives, none is read whole first.
    let server = Server::start(
        "stream",
        &[
            "--workers",
            "1",
            "--timeout",
            "1",
            "--client-body-buffer-size",
            "0",
        ],
    );
    let response = crate::support::post_slowly(&server);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "10\n");
}

#[test]
fn exc_info_replaces_a_response_only_before_it_is_sent() {
    let server = Server::start("faulty", &[]);
    let response = server.raw(b"GET /exc-info HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 503);
    assert_eq!(response.text(), "handled\n");
    server.wait_for_log(&["replacing its response: ValueError: the database is down"]);

    // An error page from the start: the error logged once, by its last line.
    let response = server.raw(b"GET /error-page HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        (response.status, response.text().as_str()),
        (500, "sorry\n")
    );
    server.wait_for_log(&[
        "WARN",
        "answered with its error page: ZeroDivisionError: division by zero",
    ]);
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|line| line.contains("most recent call last")),
        "the traceback is for --log-level debug"
    );

    // Too late: the 200 head and 7 bytes are out; the response ends by closing.
    let mut stream = server.connect();
    stream
        .write_all(b"GET /late-exc-info HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("7\r\npartial\r\n"),
        "no end of the chunked body: {answer}"
    );
    server.wait_for_log(&[
        "ERROR",
        "start_response called again after the headers were set",
    ]);
    // Refused and logged as such, not also as a replacement that never happened.
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|line| line.contains("ValueError: too late")),
        "{:?}",
        server.log_lines()
    );
}

#[test]
fn a_reason_phrase_goes_out_in_latin1() {
    let server = Server::start("faulty", &[]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /latin1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200 Caf\xe9\r\n"),
        "{answer:?}"
    );
}
