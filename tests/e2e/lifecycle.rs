//! Stopping gracefully.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::thread;

use crate::support::{RawResponse, Server, client, read_to_close};

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let mut server = Server::start("faulty", &["--workers", "2"]);
    // An idle keep-alive connection, which the shutdown must close.
    let idle = server.connect();
    let mut idle_reader = BufReader::new(idle.try_clone().unwrap());
    (&idle)
        .write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(RawResponse::read(&mut idle_reader, false).status, 200);

    let mut slow = server.connect();
    slow.write_all(b"GET /sleep?ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let slow = thread::spawn(move || RawResponse::read(&mut BufReader::new(slow), false));
    server.wait_for_log(&["sleeping 1500 ms"]);

    server.signal("TERM");
    // The slow request is in flight; the idle connection's may still be finishing its tail
    // (logging, metrics) when the signal lands, so the count is 1 or 2.
    let line = server.wait_for_log(&["shutting down:", "requests in flight"]);
    assert!(
        line.contains("shutting down: 1 requests") || line.contains("shutting down: 2 requests"),
        "{line}"
    );
    // The listener closes at once: a new client is refused while the slow request runs on,
    // rather than left in a backlog no one accepts from.
    let deadline = std::time::Instant::now() + crate::support::IO_TIMEOUT;
    while TcpStream::connect(server.addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still listening");
        thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!slow.is_finished(), "refused only once the request ended");
    assert!(
        read_to_close(idle_reader.get_mut()).is_empty(),
        "the idle connection closes"
    );
    let finished = slow.join().unwrap();
    assert_eq!(finished.status, 200);
    assert_eq!(finished.text(), "slept\n");
    assert_eq!(server.wait_for_exit(), Some(0));
    server.wait_for_log(&["all requests finished"]);
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "no longer listening"
    );
}

#[test]
fn a_second_sigint_exits_at_once() {
    let mut server = Server::start("faulty", &[]);
    let mut slow = server.connect();
    slow.write_all(b"GET /sleep?ms=20000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    server.wait_for_log(&["sleeping 20000 ms"]);
    server.signal("INT");
    server.wait_for_log(&["shutting down"]);
    server.signal("INT");
    assert_eq!(server.wait_for_exit(), Some(130));
}

#[test]
fn a_closed_log_pipe_costs_log_lines_not_requests_or_shutdown() {
    let mut server = Server::start("hello", &[]);
    server.close_log();
    let http = client();
    for _ in 0..20 {
        let mut response = http.get(server.url("/?name=unlogged")).call().unwrap();
        assert_eq!(
            response.body_mut().read_to_string().unwrap(),
            "Hello, unlogged!\n"
        );
    }
    // The shutdown's log line fails to write; the shutdown goes on.
    server.signal("TERM");
    assert_eq!(server.wait_for_exit(), Some(0));
}

/// Reads one response's status off `reader`, its body skipped; `None` if the connection
/// ended first.
fn read_status(reader: &mut BufReader<TcpStream>) -> Option<u16> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(status)
}

#[test]
fn sigterm_under_keep_alive_load_answers_every_request_it_reads() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut server = Server::start("hello", &["--workers", "2"]);
    let (answered, lost) = (AtomicUsize::new(0), AtomicUsize::new(0));
    thread::scope(|scope| {
        // Eight clients, each on one keep-alive connection, asking again as soon as they
        // are answered, until the server says it is stopping.
        for _ in 0..8 {
            let stream = server.connect();
            let (answered, lost) = (&answered, &lost);
            scope.spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    if writer
                        .write_all(b"GET /?name=load HTTP/1.1\r\nHost: a\r\n\r\n")
                        .is_err()
                    {
                        lost.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    match read_status(&mut reader) {
                        Some(200) => answered.fetch_add(1, Ordering::SeqCst),
                        Some(503) => {
                            answered.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Some(other) => panic!("answered {other}"),
                        None => {
                            lost.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                }
            });
        }
        while answered.load(Ordering::SeqCst) < 1000 {
            thread::yield_now();
        }
        server.signal("TERM");
    });
    assert_eq!(server.wait_for_exit(), Some(0));
    assert_eq!(lost.load(Ordering::SeqCst), 0, "requests went unanswered");
    // Every response sent is in the access log, the 503s of the shutdown included; the log
    // is written out before the last line.
    server.wait_for_log(&["all requests finished"]);
    let logged = server.log_lines_with("\"GET /?name=load HTTP/1.1\" 200 ")
        + server.log_lines_with("\"GET /?name=load HTTP/1.1\" 503 ");
    assert_eq!(logged, answered.load(Ordering::SeqCst));
    assert_eq!(
        server.log_lines_with("\"GET /?name=load HTTP/1.1\" 503 "),
        8
    );
}

#[test]
fn the_pid_file_names_the_server_while_it_serves() {
    let dir = crate::support::Scratch::new("pid");
    let pid_file = dir.path().join("wasm-gw.pid");
    let mut server = Server::start("hello", &["-w", "1", "--pid", pid_file.to_str().unwrap()]);
    // Written before the startup line that Server::start waits for.
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), server.pid().to_string());
    server.signal("TERM");
    assert_eq!(server.wait_for_exit(), Some(0));
    assert!(!pid_file.exists(), "the pid file outlived the server");
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = crate::support::Scratch::short("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(crate::support::IO_TIMEOUT))
        .unwrap();
    let next = || {
        let mut message = [0; 256];
        let length = socket.recv(&mut message).unwrap();
        String::from_utf8_lossy(&message[..length]).into_owned()
    };
    let mut server = Server::start_with_env("hello", &[], &[("NOTIFY_SOCKET", &socket_path)]);
    assert_eq!(next(), "READY=1\n");
    server.signal("HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1\n");
    server.signal("TERM");
    assert_eq!(next(), "STOPPING=1\n");
    assert_eq!(server.wait_for_exit(), Some(0));
}

#[test]
fn a_socket_systemd_passes_is_served() {
    // The test binds it, as systemd would for a .socket unit, and passes it as descriptor 3.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = Server::start_on_listener("hello", &listener);
    assert_eq!(
        server.addr, address,
        "the server listens on the socket it was given"
    );
    server.wait_for_log(&["serving on the socket systemd passed"]);
    let response = server.raw(b"GET /?name=systemd HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "Hello, systemd!\n");
}
