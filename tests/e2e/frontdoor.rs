//! The front door: listeners in every `--bind` form, TLS, and the PROXY protocol.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use base64::Engine;
use serde_json::Value;

use crate::startup::{assert_one_error_line, serve_exits};
use crate::support::{IO_TIMEOUT, RawResponse, Scratch, Server, guest};

/// The environ the echo app saw for `response`, to a request with `X-Echo-Environ: 1`.
fn meta(response: &RawResponse) -> Value {
    let encoded = response.header("x-echo-meta").expect("X-Echo-Meta header");
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let meta: Value = serde_json::from_slice(&json).unwrap();
    meta["environ"].clone()
}

const ECHO_ENVIRON: &[u8] = b"GET /e HTTP/1.1\r\nHost: gw.test\r\nX-Echo-Environ: 1\r\n\r\n";

/// Sends `request` on `stream` and reads the response.
fn exchange<S: std::io::Read + Write>(mut stream: S, request: &[u8]) -> RawResponse {
    stream.write_all(request).unwrap();
    RawResponse::read(&mut BufReader::new(stream), false)
}

fn unix_client(path: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

#[test]
fn every_bind_form_serves_the_same_apps() {
    let dir = Scratch::new("bind");
    let socket = dir.path().join("gw.sock");
    let unix = format!("unix:{}", socket.display());
    // Bound by the test, as a supervisor would, and inherited as descriptor 3.
    let inherited = TcpListener::bind("127.0.0.1:0").unwrap();
    let inherited_address = inherited.local_addr().unwrap();
    let args = [
        "--bind",
        "127.0.0.1:0",
        "-b",
        &unix,
        "--bind",
        "fd://3",
        "--umask",
        "007",
    ];
    let mut server = Server::start_with_fd3("echo", &args, &inherited);
    server.wait_for_log(&[&format!("listening on {unix}")]);
    server.wait_for_log(&[&format!("listening on http://{inherited_address}")]);

    let tcp = exchange(server.connect(), ECHO_ENVIRON);
    assert_eq!(tcp.status, 200);
    assert_eq!(meta(&tcp)["REMOTE_ADDR"], "127.0.0.1");

    let local = exchange(unix_client(&socket), ECHO_ENVIRON);
    assert_eq!(local.status, 200);
    let environ = meta(&local);
    // A Unix socket's peer has no address, as under Gunicorn.
    assert_eq!(environ["REMOTE_ADDR"], "");
    assert_eq!(environ["SERVER_NAME"], "gw.test");
    assert_eq!(environ["wsgi.url_scheme"], "http");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o770, "--umask 007 leaves owner and group");

    let passed = TcpStream::connect(inherited_address).unwrap();
    passed.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(exchange(passed, ECHO_ENVIRON).status, 200);

    server.signal("TERM");
    assert_eq!(server.wait_for_exit(), Some(0));
    assert!(!socket.exists(), "the socket file outlived the server");
}

#[test]
fn a_socket_file_left_by_a_killed_server_is_replaced() {
    let dir = Scratch::new("stale");
    let socket = dir.path().join("gw.sock");
    let unix = format!("unix:{}", socket.display());
    let args = ["--bind", "127.0.0.1:0", "--bind", &unix];
    let killed = Server::start("hello", &args);
    drop(killed); // SIGKILL: the file stays behind, with no one listening.
    assert!(socket.exists());
    let server = Server::start("hello", &args);
    server.wait_for_log(&["removing the stale socket file"]);
    let response = exchange(
        unix_client(&socket),
        b"GET /?name=unix HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(response.text(), "Hello, unix!\n");
    // While it listens, a second server must not take the file from it.
    let second = serve_exits(&guest("hello"), &["--bind", &unix]);
    assert_one_error_line(&second, &["another server is listening on"]);
    assert_eq!(
        exchange(unix_client(&socket), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").status,
        200
    );
}
