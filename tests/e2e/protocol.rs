//! HTTP/1.1 on raw sockets: keep-alive, pipelining, chunked coding, HEAD, 100-continue,
//! and malformed requests.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use crate::support::{RawResponse, Server, echo_apps, hello_apps, read_to_close};

#[test]
fn keep_alive_serves_three_requests_on_one_socket() {
    for hello in hello_apps() {
        eprintln!("hello app: {}", hello.display());
        let server = Server::start_path(&hello, &[]);
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        for name in ["one", "two", "three"] {
            write!(writer, "GET /?name={name} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let response = RawResponse::read(&mut reader, false);
            assert_eq!(response.status, 200);
            assert_eq!(
                response.header("connection"),
                None,
                "1.1 keeps alive without saying so"
            );
            assert_eq!(response.text(), format!("Hello, {name}!\n"));
        }
    }
}

#[test]
fn http10_keeps_alive_only_on_request() {
    for hello in hello_apps() {
        eprintln!("hello app: {}", hello.display());
        let server = Server::start_path(&hello, &[]);
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(b"GET /?name=a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.header("connection"), Some("keep-alive"));
        writer.write_all(b"GET /?name=b HTTP/1.0\r\n\r\n").unwrap();
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.text(), "Hello, b!\n");
        assert_eq!(response.header("connection"), Some("close"));
        assert!(read_to_close(reader.get_mut()).is_empty());
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let mut pipeline = Vec::new();
        for index in 0..5 {
            let body = format!("body number {index}");
            pipeline.extend_from_slice(
                format!(
                    "POST /{index} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        pipeline.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        writer.write_all(&pipeline).unwrap();
        let mut reader = BufReader::new(stream);
        for index in 0..5 {
            let response = RawResponse::read(&mut reader, false);
            assert_eq!(response.text(), format!("body number {index}"));
        }
        let last = RawResponse::read(&mut reader, false);
        assert_eq!(last.status, 200);
        assert_eq!(last.header("connection"), Some("close"));
        assert!(read_to_close(reader.get_mut()).is_empty());
    }
}

#[test]
fn a_refused_connection_closes_without_a_reset() {
    for hello in hello_apps() {
        eprintln!("hello app: {}", hello.display());
        let server = Server::start_path(&hello, &[]);
        let stream = server.connect();
        // A malformed head, then more than the server reads before it answers. Closing with
        // input unread would make the kernel reset the connection, which can destroy the
        // answer on its way; the server reads on until the client closes instead.
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\nNo colon here\r\n\r\n".to_vec();
        request.resize(request.len() + 64 * 1024, b'x');
        (&stream).write_all(&request).unwrap();
        let mut reader = BufReader::new(stream);
        assert_eq!(RawResponse::read(&mut reader, false).status, 400);
        assert_ends_without_a_reset(reader.get_mut());
    }
}

/// Asserts that the server's output has ended, and that the client can still send and then
/// close, all without a reset: the server reads on until the client closes.
fn assert_ends_without_a_reset(stream: &mut TcpStream) {
    assert_eq!(
        stream.read(&mut [0; 1]).unwrap(),
        0,
        "the answer ends the output"
    );
    stream.write_all(&[b'x'; 64 * 1024]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(stream.read(&mut [0; 1]).unwrap(), 0);
}

#[test]
fn input_after_a_close_the_client_asked_for_is_drained_without_a_reset() {
    for hello in hello_apps() {
        eprintln!("hello app: {}", hello.display());
        let server = Server::start_path(&hello, &[]);
        let stream = server.connect();
        // The server closes at once after a request that asked for the close, unless input
        // followed it all the same: closing on unread input would be a reset.
        let mut request =
            b"GET /?name=close HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec();
        request.resize(request.len() + 64 * 1024, b'x');
        (&stream).write_all(&request).unwrap();
        let mut reader = BufReader::new(stream);
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "Hello, close!\n");
        assert_ends_without_a_reset(reader.get_mut());
    }
}

#[test]
fn input_arriving_while_a_closing_request_runs_is_drained_without_a_reset() {
    let server = Server::start("faulty", &[]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /sleep?ms=100 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The head is read by now; what follows waits in the kernel, not in the server's buffer.
    server.wait_for_log(&["sleeping 100 ms"]);
    stream.write_all(&[b'x'; 64 * 1024]).unwrap();
    let mut reader = BufReader::new(stream);
    let response = RawResponse::read(&mut reader, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slept\n");
    assert_ends_without_a_reset(reader.get_mut());
}

#[test]
fn a_request_trickled_byte_by_byte_parses() {
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let mut stream = server.connect();
        stream.set_nodelay(true).unwrap();
        let request = b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for byte in request {
            stream.write_all(&[*byte]).unwrap();
        }
        let response = RawResponse::read(&mut BufReader::new(stream), false);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "abc");
    }
}

#[test]
fn chunked_request_body_is_decoded() {
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let response = server.raw(
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n",
        );
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "hello 0123456789");
    }
}

#[test]
fn malformed_chunked_body_gets_400() {
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let mut stream = server.connect();
        stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
        let mut reader = BufReader::new(stream);
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.status, 400);
        assert!(
            read_to_close(reader.get_mut()).is_empty(),
            "the connection closes"
        );
    }
}

#[test]
fn streamed_response_is_chunked_for_http11() {
    let server = Server::start("stream", &[]);
    let response = server.raw(b"GET /count?n=1000 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(response.chunked);
    assert_eq!(response.header("content-length"), None);
    let expected: String = (1..=1000).map(|n| format!("{n}\n")).collect();
    assert_eq!(response.text(), expected);
}

#[test]
fn the_write_callable_streams_at_once() {
    let server = Server::start("stream", &[]);
    let response = server.raw(b"GET /write?n=3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(
        response.chunked,
        "written bytes leave before the app returns, so no length"
    );
    assert_eq!(response.text(), "written 1\nwritten 2\nwritten 3\n");
}

#[test]
fn streamed_response_is_close_delimited_for_http10() {
    let server = Server::start("stream", &[]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /count?n=300 HTTP/1.0\r\n\r\n")
        .unwrap();
    let response = RawResponse::read(&mut BufReader::new(stream), false);
    assert!(!response.chunked);
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("connection"), Some("close"));
    let expected: String = (1..=300).map(|n| format!("{n}\n")).collect();
    assert_eq!(response.text(), expected);
}

#[test]
fn head_gets_headers_and_no_body() {
    for hello in hello_apps() {
        eprintln!("hello app: {}", hello.display());
        let server = Server::start_path(&hello, &[]);
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(b"HEAD /?name=WSGI HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let head = RawResponse::read(&mut reader, true);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some("13"));
        // Had the body been sent, this response would be read from its bytes instead.
        writer
            .write_all(b"GET /?name=after HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let next = RawResponse::read(&mut reader, false);
        assert_eq!(next.text(), "Hello, after!\n");
    }
}

#[test]
fn head_never_pulls_a_streamed_body() {
    let server = Server::start("stream", &["--timeout", "5"]);
    let stream = server.connect();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    writer
        .write_all(b"HEAD /count?n=1000000000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let head = RawResponse::read(&mut reader, true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), None);
    server.wait_for_log(&["count stream closed after 0 of 1000000000000 lines"]);
    writer
        .write_all(b"GET /count?n=2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(RawResponse::read(&mut reader, false).text(), "1\n2\n");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    for echo in echo_apps() {
        eprintln!("echo app: {}", echo.display());
        let server = Server::start_path(&echo, &[]);
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n",
            )
            .unwrap();
        let mut interim = [0; 25];
        reader.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        writer.write_all(b"payload").unwrap();
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "payload");
    }
}

#[test]
fn garbage_gets_400_and_the_connection_closes() {
    for hello in hello_apps() {
        eprintln!("hello app: {}", hello.display());
        let server = Server::start_path(&hello, &[]);
        for garbage in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            let mut stream = server.connect();
            stream.write_all(garbage).unwrap();
            // A request pipelined after the bad one must never be served.
            stream
                .write_all(b"GET /?name=smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            let mut reader = BufReader::new(stream);
            let response = RawResponse::read(&mut reader, false);
            assert_eq!(response.status, 400, "{}", String::from_utf8_lossy(garbage));
            assert_eq!(response.header("connection"), Some("close"));
            assert!(read_to_close(reader.get_mut()).is_empty());
        }
        server.wait_for_log(&["rejected request with 400"]);
    }
}

#[test]
fn unsupported_versions_and_codings_get_their_status() {
    for hello in hello_apps() {
        eprintln!("hello app: {}", hello.display());
        let server = Server::start_path(&hello, &[]);
        let cases: [(&[u8], u16); 3] = [
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br, chunked\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n",
                417,
            ),
        ];
        for (request, status) in cases {
            assert_eq!(
                server.raw(request).status,
                status,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }
}

#[test]
fn a_request_behind_tcp_urgent_data_is_served_by_the_keep_alive_deadline() {
    use std::os::fd::AsRawFd;
    // A read stops at TCP's urgent mark with bytes still queued behind it, and no wakeup
    // will come for them. Both requests, and the mark between them, are in the kernel
    // before the server starts: the first read takes the first request only, and the
    // connection waits for its next one with the second unread. It is served at its
    // keep-alive deadline at the latest.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(crate::support::IO_TIMEOUT))
        .unwrap();
    stream
        .write_all(b"GET /?name=first HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // SAFETY: a one-byte send on a socket this test owns, from a live buffer.
    let sent = unsafe { libc::send(stream.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(sent, 1);
    stream
        .write_all(b"GET /?name=second HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let _server = Server::start_with_fd3(
        "hello",
        &["--bind", "fd://3", "--keep-alive", "1"],
        &listener,
    );
    let mut reader = BufReader::new(stream);
    for name in ["first", "second"] {
        let response = RawResponse::read(&mut reader, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("Hello, {name}!\n"));
    }
}
