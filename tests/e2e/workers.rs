//! The worker model: instance lifecycles and connections that never pin a worker.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use crate::support::{RawResponse, Server, client};

/// How many requests the instance that answers has served, itself included.
fn served(server: &Server) -> u64 {
    let mut response = client().get(server.url("/served")).call().unwrap();
    response
        .body_mut()
        .read_to_string()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn worker_isolation_keeps_state_and_request_isolation_does_not() {
    let kept = Server::start("faulty", &["--workers", "1"]);
    assert_eq!([served(&kept), served(&kept), served(&kept)], [1, 2, 3]);

    let fresh = Server::start("faulty", &["--workers", "1", "--isolation", "request"]);
    assert_eq!(
        [served(&fresh), served(&fresh), served(&fresh)],
        [1, 1, 1],
        "no state may leak from one request to the next"
    );
}

#[test]
fn instances_are_recycled_after_max_requests() {
    let server = Server::start("faulty", &["--workers", "1", "--max-requests", "3"]);
    assert_eq!(
        [served(&server), served(&server), served(&server)],
        [1, 2, 3]
    );
    // That was the third request: the next one gets a new instance, with new memory.
    assert_eq!(served(&server), 1);
    server.wait_for_log(&["instance replaced", "reason=\"max-requests\""]);
}

#[test]
fn idle_connections_never_hold_a_worker() {
    // Room for the thousand idle connections and the fresh one.
    let server = Server::start(
        "hello",
        &[
            "--workers",
            "1",
            "--keep-alive",
            "60",
            "--max-connections",
            "1001",
        ],
    );
    let (before, _) = server.memory();
    let mut idle: Vec<_> = (0..1000).map(|_| idle_connection(&server)).collect();
    // An idle connection holds no read buffer (16 KiB): the thousand take little memory.
    let (after, _) = server.memory();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 8 << 20,
        "1,000 idle connections took {growth} bytes"
    );
    // One worker, a thousand idle keep-alive connections: a new client is still served.
    let mut response = client().get(server.url("/?name=fresh")).call().unwrap();
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        "Hello, fresh!\n"
    );
    // And the idle ones are all still open.
    for reader in &mut idle {
        assert_served_again(reader);
    }
}

/// A keep-alive connection that has had one response.
fn idle_connection(server: &Server) -> BufReader<TcpStream> {
    let mut stream = server.connect();
    stream
        .write_all(b"GET /?name=idle HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(RawResponse::read(&mut reader, false).status, 200);
    reader
}

fn assert_served_again(idle: &mut BufReader<TcpStream>) {
    idle.get_mut()
        .write_all(b"GET /?name=again HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(RawResponse::read(idle, false).text(), "Hello, again!\n");
}

/// The server process's thread count.
fn threads(server: &Server) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("Threads:"))
        .unwrap();
    line["Threads:".len()..].trim().parse().unwrap()
}

#[test]
fn waiting_connections_hold_no_thread() {
    let server = Server::start("hello", &["--max-connections", "1001"]);
    assert_eq!(server.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").status, 200);
    let before = threads(&server);
    // Five hundred idle keep-alive connections, and five hundred halfway through a head.
    let mut idle = Vec::new();
    let mut halfway = Vec::new();
    for _ in 0..500 {
        idle.push(idle_connection(&server));
        let mut stream = server.connect();
        stream.write_all(b"GET /?name=late HTTP/1.1\r\nHo").unwrap();
        halfway.push(stream);
    }
    // A thread per connection would be a thousand more; a few may come and go with load.
    let added = threads(&server).saturating_sub(before);
    assert!(
        added < 50,
        "{added} threads more for 1,000 waiting connections"
    );
    // Every one of them is still served.
    for stream in &mut halfway {
        stream.write_all(b"st: a\r\n\r\n").unwrap();
    }
    for stream in halfway {
        let response = RawResponse::read(&mut BufReader::new(stream), false);
        assert_eq!(response.text(), "Hello, late!\n");
    }
    for reader in &mut idle {
        assert_served_again(reader);
    }
}

#[test]
fn threads_blocked_on_slow_uploads_do_not_stall_other_clients() {
    // More stalled uploads than the server keeps threads (one per core), each holding a
    // thread and an instance in a body read that would wait a minute.
    let stalled_count = std::thread::available_parallelism().map_or(2, usize::from) + 2;
    let workers = (stalled_count + 1).to_string();
    let server = Server::start("stream", &["--workers", &workers, "--body-timeout", "60"]);
    let mut stalled = Vec::new();
    for _ in 0..stalled_count {
        let mut stream = server.connect();
        stream
            .write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nslow")
            .unwrap();
        stalled.push(stream);
    }
    // The server adds a thread for clients that are ready while all of its threads wait.
    let mut fresh = server.connect();
    fresh
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    fresh
        .write_all(b"GET /count?n=3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let response = RawResponse::read(&mut BufReader::new(fresh), false);
    assert_eq!(response.text(), "1\n2\n3\n");
    // The stalled uploads finish too once their bodies arrive.
    for stream in &mut stalled {
        stream.write_all(&[b'x'; 999_996]).unwrap();
    }
    for stream in stalled {
        let response = RawResponse::read(&mut BufReader::new(stream), false);
        assert_eq!(response.text(), "1000000\n");
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_its_timeout() {
    let server = Server::start("hello", &["--keep-alive", "1"]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(RawResponse::read(&mut reader, false).status, 200);
    // Nothing more is sent: the server closes, well within the read timeout.
    let mut rest = Vec::new();
    let read = reader.read_to_end(&mut rest).unwrap();
    assert_eq!(read, 0, "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_silent_connection_is_closed_after_the_header_timeout() {
    let server = Server::start("hello", &["--header-timeout", "1"]);
    let mut stream = server.connect();
    // A head that starts but never ends.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let response = RawResponse::read(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 408);
}

#[test]
fn a_head_trickling_in_is_cut_off_at_the_header_timeout() {
    let server = Server::start("hello", &["--header-timeout", "1"]);
    let stream = server.connect();
    let mut trickle = stream.try_clone().unwrap();
    // A byte every 50 ms, of a header that never ends: each one arrives in time, the head
    // as a whole does not.
    let writer = std::thread::spawn(move || {
        trickle
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .unwrap();
        while trickle.write_all(b"a").is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    let response = RawResponse::read(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 408);
    writer.join().unwrap();
}

#[test]
fn a_trickling_body_is_cut_off() {
    let server = Server::start(
        "stream",
        &["--body-timeout", "1", "--body-min-rate", "100000"],
    );
    let mut stream = server.connect();
    // A body that starts and then stalls far below the minimum rate.
    stream
        .write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nslow")
        .unwrap();
    let response = RawResponse::read(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 408);
    server.wait_for_log(&["request body not received"]);
}

#[test]
fn a_client_that_stops_reading_cannot_hold_a_worker() {
    let server = Server::start(
        "stream",
        &[
            "--workers",
            "1",
            "--body-timeout",
            "1",
            "--body-min-rate",
            "1000000",
        ],
    );
    // It asks for an endless stream and never reads: the socket buffers fill, and the one
    // worker blocks writing to it until the pace runs out.
    let mut stalled = server.connect();
    stalled
        .write_all(b"GET /count?n=1000000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let response = server.raw(b"GET /count?n=3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "1\n2\n3\n");
    server.wait_for_log(&["count stream closed after", "of 1000000000 lines"]);
    drop(stalled);
}

#[test]
fn a_client_that_reads_nothing_is_cut_off_whatever_the_kernel_buffered() {
    let server = Server::start("stream", &["--workers", "1", "--body-timeout", "2"]);
    // At the default pace of 500 bytes a second, the megabytes the kernel takes into its
    // buffers must buy nothing: only what the client takes counts.
    let mut stalled = server.connect_with_receive_buffer(4096);
    stalled
        .write_all(b"GET /count?n=10000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // Its stream has begun, on the one instance: then it reads no more.
    let mut start = [0; 12];
    stalled.read_exact(&mut start).unwrap();
    assert_eq!(&start, b"HTTP/1.1 200");
    let started = std::time::Instant::now();
    let response = server.raw(b"GET /count?n=3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "1\n2\n3\n");
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(2 + 5),
        "the second client waited {waited:?}"
    );
    drop(stalled);
}

#[test]
fn each_response_has_its_own_write_clock() {
    let server = Server::start(
        "hello",
        &[
            "--keep-alive",
            "10",
            "--body-timeout",
            "1",
            "--body-min-rate",
            "1000000",
        ],
    );
    let stream = server.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream)
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(RawResponse::read(&mut reader, false).status, 200);
    // An idle client, longer than a response may take: the next answer is still written.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    (&stream).write_all(b"NOT HTTP\r\n\r\n").unwrap();
    assert_eq!(RawResponse::read(&mut reader, false).status, 400);
}

#[test]
fn a_slow_upload_holds_no_instance_until_its_body_is_in() {
    let server = Server::start("echo", &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let admin = crate::admin::admin_address(&server);
    // Half a megabyte, at a trickle: it is read whole before the one instance is taken.
    let total = 512 * 1024;
    let mut slow = server.connect();
    write!(
        slow,
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\nfirst"
    )
    .unwrap();
    wait_until_in_flight(admin);
    let asked = std::time::Instant::now();
    let response = server.raw(b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 200);
    let took = asked.elapsed();
    assert!(
        took < std::time::Duration::from_millis(500),
        "the GET took {took:?}"
    );
    // The upload then arrives whole, and the app sees all of it.
    slow.write_all(&vec![b'x'; total - 5]).unwrap();
    let response = RawResponse::read(&mut BufReader::new(slow), false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), total);
}

#[test]
fn an_upload_stalled_on_the_only_instance_does_not_hold_up_other_clients() {
    // Every body streams to the app as it comes, so the stalled upload holds the one warm
    // instance in a body read that would wait a minute.
    let server = Server::start(
        "stream",
        &[
            "--workers",
            "1",
            "--client-body-buffer-size",
            "0",
            "--body-timeout",
            "60",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = crate::admin::admin_address(&server);
    let mut stalled = server.connect();
    stalled
        .write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nslow")
        .unwrap();
    wait_until_in_flight(admin);
    // Another client is served by an instance added for it, while the upload still waits.
    let response = server.raw(b"GET /count?n=3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.text(), "1\n2\n3\n");
    let created = crate::admin::metric(
        admin,
        "wasm_gw_instances_created_total",
        &[("app", "stream")],
    );
    assert_eq!(created, 2.0);
    // The upload was waiting all along: the rest of its body is what it counts.
    stalled.write_all(&[b'x'; 99_996]).unwrap();
    let response = RawResponse::read(&mut BufReader::new(stalled), false);
    assert_eq!(response.text(), "100000\n");
}

/// Waits until a request is in flight on the server whose admin endpoint is `admin`: an
/// upload has taken an instance.
fn wait_until_in_flight(admin: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + crate::support::IO_TIMEOUT;
    while crate::admin::metric(admin, "wasm_gw_requests_in_flight", &[]) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never began"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Raises this test process's limit of open files to its maximum, for clients by the
/// thousand.
fn raise_own_file_limit() {
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

#[test]
fn five_thousand_silent_connections_never_lock_a_client_out() {
    raise_own_file_limit();
    let server = Server::start("hello", &[]);
    server.wait_for_log(&["open files limit", "connections by default"]);
    let silent: Vec<TcpStream> = (0..5000).map(|_| server.connect()).collect();
    let asked = std::time::Instant::now();
    let response = server.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.status, 200);
    let took = asked.elapsed();
    assert!(
        took < std::time::Duration::from_secs(1),
        "the client waited {took:?}"
    );
    drop(silent);
}

#[test]
fn at_the_connection_limit_the_cheapest_connections_make_room() {
    let server = Server::start("hello", &["--max-connections", "40", "--keep-alive", "60"]);
    // Twenty idle keep-alive connections, then twenty silent ones: the server is full.
    let mut idle: Vec<_> = (0..20).map(|_| idle_connection(&server)).collect();
    let silent: Vec<TcpStream> = (0..20).map(|_| server.connect()).collect();
    // A new client is served at once: an idle keep-alive connection made room for it.
    for _ in 0..5 {
        let asked = std::time::Instant::now();
        let response = server.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(response.status, 200);
        let took = asked.elapsed();
        assert!(
            took < std::time::Duration::from_secs(1),
            "the client waited {took:?}"
        );
    }
    // The idle keep-alive connections went first (their clients see the close, which came
    // before the new clients were served); the silent ones, which cost more to lose, are
    // all still open.
    let closed = |stream: &mut TcpStream| {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0];
        match stream.read(&mut byte) {
            Ok(0) => true,
            Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => panic!("nothing was asked"),
        }
    };
    let evicted = idle
        .iter_mut()
        .map(|idle| closed(idle.get_mut()))
        .filter(|&gone| gone)
        .count();
    assert!(evicted >= 1, "no idle connection was closed");
    for mut stream in silent {
        assert!(
            !closed(&mut stream),
            "a silent connection was closed before the idle ones"
        );
    }
}
