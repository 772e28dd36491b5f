//! Tenant isolation: a hostile app, mounted beside well-behaved ones, can hurt only itself.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin::{admin_address, metric};
use crate::support::{IO_TIMEOUT, RawResponse, Redis, Server, client, guest, status_of};

/// The hostile `faulty` app at `/`, `hello` at `/hello`, with a 2 s deadline and two
/// instances each unless `extra` says otherwise, and no more while some wait: these tests
/// are about instances that are all taken.
fn hostile_beside_hello(extra: &[&str]) -> Server {
    let faulty = format!("/={}", guest("faulty").display());
    let hello = format!("/hello={}", guest("hello").display());
    let mut args = vec!["--mount", &faulty, "--mount", &hello];
    let workers = extra
        .iter()
        .position(|arg| *arg == "--workers")
        .map_or("2", |at| extra[at + 1]);
    if !extra.contains(&"--workers") {
        args.extend(["--workers", workers]);
    }
    if !extra.contains(&"--max-workers") {
        args.extend(["--max-workers", workers]);
    }
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", "2"]);
    }
    args.extend_from_slice(extra);
    Server::start_mounts(&args)
}

/// Waits until `count` log lines hold `needle`.
fn wait_for_lines(server: &Server, needle: &str, count: usize) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while server.log_lines_with(needle) < count {
        assert!(
            Instant::now() < deadline,
            "fewer than {count} lines with {needle:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asks the app beside at `/hello/` twenty times, on one connection kept alive: it answers
/// at once. The median is what isolation promises; the largest allows for a test machine
/// that runs other tests at once.
fn assert_hello_answers_at_once(server: &Server) {
    let agent = client();
    let hello: Vec<Duration> = (0..20)
        .map(|_| {
            let asked = Instant::now();
            let response = agent.get(server.url("/hello/")).call().unwrap();
            assert_eq!(response.status().as_u16(), 200);
            asked.elapsed()
        })
        .collect();
    let (median, slowest) = median_and_max(hello);
    assert!(
        median < Duration::from_millis(100),
        "hello's median {median:?}"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "hello's slowest {slowest:?}"
    );
}

/// The median and the largest of `durations`.
fn median_and_max(mut durations: Vec<Duration>) -> (Duration, Duration) {
    durations.sort();
    (
        durations[durations.len() / 2],
        durations[durations.len() - 1],
    )
}

#[test]
fn a_guest_waiting_in_a_host_call_gets_504_at_its_deadline() {
    let server = hostile_beside_hello(&[]);
    // A sleep past the deadline, and waits that would never end, through poll and block.
    for (done, path) in ["/sleep?ms=10000", "/wait-forever", "/block-forever"]
        .into_iter()
        .enumerate()
    {
        let started = Instant::now();
        assert_eq!(status_of(&server, path), 504, "{path}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{path} took {took:?}");
        wait_for_lines(&server, "exceeding the 2s deadline", done + 1);
    }
    server.wait_for_log(&["instance replaced", "reason=\"timeout\""]);
    // Both instances serve again, and the app beside never noticed.
    for _ in 0..4 {
        assert_eq!(status_of(&server, "/ok"), 200);
        assert_eq!(status_of(&server, "/hello/"), 200);
    }
}

/// Sends `GET path` on a new connection, without waiting for the answer.
fn send(server: &Server, path: &str) -> TcpStream {
    let mut stream = server.connect();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    stream
}

/// Holds what is written to `stream` until it is shut down or uncorked (`TCP_CORK`).
fn cork(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this test owns, with a live int of the size given.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "TCP_CORK");
}

/// The status of the response on `stream`, and how long after `sent` it came.
fn answer(stream: TcpStream, sent: Instant) -> (u16, Duration, Option<String>) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let response = RawResponse::read(&mut BufReader::new(stream), false);
    let retry = response.header("retry-after").map(str::to_owned);
    (response.status, sent.elapsed(), retry)
}

fn health(admin: SocketAddr) -> (u16, Value) {
    let mut response = client()
        .get(format!("http://{admin}/health"))
        .call()
        .unwrap();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

#[test]
fn a_stuck_app_queues_a_bounded_few_and_the_app_beside_it_never_waits() {
    let server = hostile_beside_hello(&[
        "--queue-timeout",
        "3",
        "--max-connections",
        "1000",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_address(&server);
    // Two requests take both instances until their deadline; a thousand more wait behind
    // them, each stuck in turn if it gets an instance. Two apps share the 1,000 connections,
    // so the hostile app's queue holds 500 of them.
    let stuck: Vec<_> = (0..2).map(|_| send(&server, "/wait-forever")).collect();
    let started = Instant::now();
    let queued: Vec<_> = (0..1000)
        .map(|_| (send(&server, "/wait-forever"), Instant::now()))
        .collect();
    let deadline = Instant::now() + IO_TIMEOUT;
    while metric(admin, "wasm_gw_queue_length", &[("app", "faulty")]) < 500.0 {
        assert!(Instant::now() < deadline, "the queue never filled");
        thread::sleep(Duration::from_millis(10));
    }
    let (status, health) = health(admin);
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["apps"]["faulty"]["status"], "degraded", "{health}");
    assert_eq!(health["apps"]["hello"]["status"], "ok", "{health}");

    // Meanwhile the app beside answers at once.
    assert_hello_answers_at_once(&server);

    for stream in stuck {
        assert_eq!(answer(stream, started).0, 504);
    }
    let mut statuses = std::collections::BTreeMap::new();
    for (stream, sent) in queued {
        let (status, _, retry) = answer(stream, sent);
        *statuses.entry(status).or_insert(0) += 1;
        match status {
            // Turned away at once or after the queue timeout, with a hint to come back.
            503 => assert_eq!(retry.as_deref(), Some("1")),
            // Got an instance when the stuck ones ended, and hit its own deadline.
            504 => {}
            other => panic!("a queued request got {other}"),
        }
    }
    assert!(statuses[&503] >= 990, "{statuses:?}");
    server.wait_for_log(&["WARN", "turned a request away with 503: its queue is full"]);
    server.wait_for_log(&["WARN", "no instance came free within the queue timeout"]);
    // Each 503 went out within the 3 s queue timeout of its request's arrival: the access
    // line's last field is the seconds from the head to the answer.
    let latest = server
        .log_lines()
        .iter()
        .filter(|line| line.contains("\"GET /wait-forever HTTP/1.1\" 503 "))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        latest > 2.5 && latest < 3.5,
        "the latest 503 came after {latest} s"
    );
    assert_eq!(
        metric(admin, "wasm_gw_queue_length", &[("app", "faulty")]),
        0.0
    );
    assert!(metric(admin, "wasm_gw_queue_refused_total", &[("reason", "full")]) >= 490.0);
    assert!(
        metric(
            admin,
            "wasm_gw_queue_refused_total",
            &[("reason", "timeout")]
        ) >= 490.0
    );
}

#[test]
fn instances_are_added_while_others_wait_up_to_max_workers_and_go_when_unneeded() {
    let server = hostile_beside_hello(&[
        "--workers",
        "1",
        "--max-workers",
        "2",
        "--timeout",
        "10",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_address(&server);
    let created = || {
        metric(
            admin,
            "wasm_gw_instances_created_total",
            &[("app", "faulty")],
        )
    };
    assert_eq!(created(), 1.0);
    // The one instance sleeps: a request behind it gets a second instance, and both sleep
    // at once.
    let first = send(&server, "/sleep?ms=5000");
    wait_for_lines(&server, "sleeping 5000 ms", 1);
    let second = send(&server, "/sleep?ms=5000");
    wait_for_lines(&server, "sleeping 5000 ms", 2);
    assert_eq!(created(), 2.0);
    let in_flight = metric(admin, "wasm_gw_requests_in_flight", &[]);
    assert!(in_flight >= 2.0, "{in_flight} requests in flight");
    // The app beside keeps its own instances meanwhile.
    assert_eq!(status_of(&server, "/hello/"), 200);
    // Both wait, but there are as many as --max-workers: the next request waits for one.
    let third = send(&server, "/served");
    let deadline = Instant::now() + IO_TIMEOUT;
    while metric(admin, "wasm_gw_queue_length", &[("app", "faulty")]) < 1.0 {
        assert!(Instant::now() < deadline, "the request never queued");
        thread::sleep(Duration::from_millis(10));
    }
    let now = Instant::now();
    for stream in [first, second, third] {
        assert_eq!(answer(stream, now).0, 200);
    }
    assert_eq!(created(), 2.0);
    // Unneeded for 10 s, the added instance goes, and the first stays.
    let retired = || {
        metric(
            admin,
            "wasm_gw_instances_retired_total",
            &[("app", "faulty"), ("reason", "idle")],
        )
    };
    let deadline = Instant::now() + IO_TIMEOUT;
    while retired() < 1.0 {
        assert!(Instant::now() < deadline, "the added instance never went");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(admin, "wasm_gw_instances_live", &[("app", "faulty")]),
        1.0
    );
    assert_eq!(status_of(&server, "/ok"), 200);
    assert_eq!(created(), 2.0);
}

#[test]
fn a_stuck_app_at_the_defaults_grows_to_its_most_and_no_further_and_the_app_beside_never_waits() {
    // Not the helper: its --max-workers is pinned. Two instances grow to 8 × 2 by default.
    let faulty = format!("/={}", guest("faulty").display());
    let hello = format!("/hello={}", guest("hello").display());
    let server = Server::start_mounts(&[
        "--mount",
        &faulty,
        "--mount",
        &hello,
        "--workers",
        "2",
        "--timeout",
        "5",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_address(&server);
    let live = || metric(admin, "wasm_gw_instances_live", &[("app", "faulty")]);
    let queued = || metric(admin, "wasm_gw_queue_length", &[("app", "faulty")]);
    // Each waits forever in a poll: sixteen take an instance each, the rest queue.
    let stuck: Vec<_> = (0..40).map(|_| send(&server, "/wait-forever")).collect();
    let deadline = Instant::now() + IO_TIMEOUT;
    while live() < 16.0 || queued() < 24.0 {
        assert!(
            Instant::now() < deadline,
            "{} instances, {} queued",
            live(),
            queued()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_hello_answers_at_once(&server);
    assert_eq!(live(), 16.0, "no instance past --max-workers");
    assert_eq!(
        metric(admin, "wasm_gw_instances_live", &[("app", "hello")]),
        2.0
    );
    // Each stuck one ends at its deadline or, still queued, at the queue's.
    let now = Instant::now();
    for stream in stuck {
        let status = answer(stream, now).0;
        assert!(status == 504 || status == 503, "{status}");
    }
}

#[test]
fn a_request_whose_client_left_while_queued_never_runs() {
    let server = hostile_beside_hello(&["--workers", "1", "--admin", "127.0.0.1:0"]);
    let admin = admin_address(&server);
    let stuck = send(&server, "/sleep?ms=1000");
    wait_for_lines(&server, "sleeping 1000 ms", 1);
    // Waits behind it, then leaves: its /served must never run.
    let gone = send(&server, "/served");
    let deadline = Instant::now() + IO_TIMEOUT;
    while metric(admin, "wasm_gw_queue_length", &[("app", "faulty")]) < 1.0 {
        assert!(Instant::now() < deadline, "the request never queued");
        thread::sleep(Duration::from_millis(10));
    }
    drop(gone);
    server.wait_for_log(&["client left while its request waited for an instance"]);
    assert_eq!(answer(stuck, Instant::now()).0, 200);
    // The one instance served the sleep, and now this: the request that left never ran.
    let mut response = client().get(server.url("/served")).call().unwrap();
    assert_eq!(response.body_mut().read_to_string().unwrap(), "2");
    assert_eq!(
        metric(admin, "wasm_gw_queue_refused_total", &[("reason", "gone")]),
        1.0
    );
}

#[test]
fn a_request_whose_client_shut_down_with_it_is_dropped_at_once_not_when_a_worker_frees() {
    let server = hostile_beside_hello(&["--workers", "1", "--timeout", "30"]);
    let stuck = send(&server, "/sleep?ms=5000");
    wait_for_lines(&server, "sleeping 5000 ms", 1);
    // The request and its client's FIN in one segment (corked, so the FIN rides on the
    // data): no later wakeup tells of the FIN, so it must be remembered from the one that
    // came with the request.
    let mut gone = server.connect();
    cork(&gone);
    gone.write_all(b"GET /served HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    gone.shutdown(std::net::Shutdown::Write).unwrap();
    server.wait_for_log(&["client left while its request waited for an instance"]);
    // Dropped while the one instance still sleeps, seconds before it answers; dropped when
    // the instance came free, it would be the same moment.
    let dropped = Instant::now();
    let (status, _, _) = answer(stuck, dropped);
    assert_eq!(status, 200);
    let still_asleep_for = dropped.elapsed();
    assert!(
        still_asleep_for > Duration::from_secs(1),
        "dropped only {still_asleep_for:?} before the instance came free"
    );
    let mut response = client().get(server.url("/served")).call().unwrap();
    assert_eq!(response.body_mut().read_to_string().unwrap(), "2");
}

#[test]
fn a_guest_flooding_its_output_is_held_to_its_rate_and_cannot_forge_lines() {
    // Writing 50 MiB through an unoptimized test build takes a second or two of the app's
    // time, more on a loaded machine: the deadline is not what this test is about.
    let server = hostile_beside_hello(&["--admin", "127.0.0.1:0", "--timeout", "30"]);
    let admin = admin_address(&server);
    let started = Instant::now();
    assert_eq!(status_of(&server, "/flood?mb=50"), 200);
    let took = started.elapsed();
    server.wait_for_log(&["WARN", "dropped", "bytes of the app's output past its rate"]);
    let logged: usize = server
        .log_lines()
        .iter()
        .filter(|line| line.contains("stream=\"stdout\"") && line.contains("xxxxxxxx"))
        .map(String::len)
        .sum();
    // The burst, and the rate for as long as the flood ran, with room for the lines' tags.
    let allowed = (1 << 20) + (64 << 10) * (took.as_secs() as usize + 1);
    assert!(logged <= allowed * 2, "{logged} bytes logged in {took:?}");
    // Each line of 1,024 bytes costs 1,124 of the budget, 100 for its tags: the burst admits
    // 932 of them, and a release build floods in well under a second, earning little more.
    let burst_lines = (1 << 20) / (1024 + 100);
    assert!(
        logged >= burst_lines * 1024,
        "the burst should pass: {logged} bytes logged"
    );
    let dropped = metric(
        admin,
        "wasm_gw_app_log_dropped_bytes_total",
        &[("app", "faulty")],
    );
    assert!(dropped >= (48 << 20) as f64, "{dropped} bytes dropped");

    assert_eq!(status_of(&server, "/forge"), 200);
    let forged = server.wait_for_log(&["forged line"]);
    assert!(
        forged.contains(r"innocent\rINFO wasm_gw: forged line\0 end"),
        "{forged:?}"
    );
    for line in server.log_lines() {
        assert!(
            !line.contains(['\r', '\0', '\x07']),
            "a raw control character reached the log: {line:?}"
        );
    }
}

#[test]
fn one_apps_flood_of_writes_leaves_anothers_writes_quick() {
    let kv = format!("/kv={}", guest("kv").display());
    let server = hostile_beside_hello(&["--mount", &kv]);
    // A million keys, filled a request at a time within the 2 s deadline.
    let started = Instant::now();
    let mut start = 0;
    while start < 1_000_000 {
        let path = format!("/store/fill?start={start}&count=20000");
        match status_of(&server, &path) {
            200 => start += 20_000,
            // Past the deadline part way: the same keys again.
            504 => {}
            other => panic!("{path}: {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "filling took too long"
        );
    }
    // One call past the batch limit is refused, whole.
    let mut refused = client()
        .get(server.url("/store/delete?count=1000000&whole=1"))
        .call()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let why = refused.body_mut().read_to_string().unwrap();
    assert!(why.contains("past the limit of 1000"), "{why}");

    // Both hostile instances delete the million, a thousand at a time, until their
    // deadline; meanwhile the other app's writes wait their turn, briefly.
    thread::scope(|scope| {
        let deleting: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| status_of(&server, "/store/delete?count=1000000")))
            .collect();
        let agent = client();
        let writes: Vec<Duration> = (0..50)
            .map(|n| {
                let asked = Instant::now();
                let response = agent
                    .put(server.url(&format!("/kv/b/key-{n}")))
                    .send("value")
                    .unwrap();
                assert_eq!(response.status().as_u16(), 204);
                asked.elapsed()
            })
            .collect();
        // Each write waits for a short transaction at most; the largest allows for an fsync
        // that a loaded disk makes slow.
        let (median, slowest) = median_and_max(writes);
        assert!(
            median < Duration::from_millis(100),
            "the median write {median:?}"
        );
        assert!(
            slowest < Duration::from_secs(1),
            "the slowest write {slowest:?}"
        );
        // Each ends at its deadline: stopped (504), or told so by the store (the app's 400).
        for deleting in deleting {
            assert!(matches!(deleting.join().unwrap(), 200 | 400 | 504));
        }
    });
}

/// GETs `path`: the status and the body.
fn fetch(server: &Server, path: &str) -> (u16, String) {
    let mut response = client().get(server.url(path)).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

#[test]
fn a_store_fill_stops_at_the_quota_on_every_backend() {
    let redis = Redis::start();
    let redis_url = redis.url();
    for kv in ["sqlite", "memory", redis_url.as_str()] {
        let mut args = vec!["--kv-quota-keys", "1000", "--kv-quota-bytes", "64KiB"];
        if kv != "sqlite" {
            args.extend(["--kv", kv]);
        }
        let server = Server::start("faulty", &args);
        // A thousand keys fit; the next hundred do not, and none of them is stored.
        for start in (0..1000).step_by(100) {
            let (status, said) = fetch(&server, &format!("/store/fill?start={start}&count=100"));
            assert_eq!(status, 200, "{kv}: {said}");
        }
        let (status, said) = fetch(&server, "/store/fill?start=1000&count=100");
        assert_eq!(status, 507, "{kv}: {said}");
        assert!(said.contains("key-value quota is used up"), "{kv}: {said}");
        // Deleting makes room; then the bytes run out before the keys do.
        assert_eq!(fetch(&server, "/store/delete?count=1100").0, 200);
        assert_eq!(
            fetch(&server, "/store/fill?start=0&count=1&size=40000").0,
            200,
            "{kv}"
        );
        let (status, said) = fetch(&server, "/store/fill?start=1&count=1&size=40000");
        assert_eq!(status, 507, "{kv}: {said}");
        // A write that holds no more than before still goes through.
        assert_eq!(
            fetch(&server, "/store/fill?start=0&count=1&size=30000").0,
            200,
            "{kv}"
        );
    }
}

#[test]
fn a_store_in_memory_holds_the_host_to_its_quota() {
    let server = Server::start(
        "faulty",
        &[
            "--kv",
            "memory",
            "--kv-quota-bytes",
            "32MiB",
            "--workers",
            "1",
        ],
    );
    let (before, _) = server.memory();
    // 64 KiB values until the quota says no, and then some more.
    let mut refused = 0;
    for start in (0..2000).step_by(50) {
        match fetch(
            &server,
            &format!("/store/fill?start={start}&count=50&size=65536"),
        )
        .0
        {
            200 => {}
            507 => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert!(refused > 20, "only {refused} fills were refused");
    let (after, _) = server.memory();
    // The quota's 32 MiB, what a request copies on its way in, and the map's own keep.
    let growth = after.saturating_sub(before) >> 20;
    assert!(growth < 96, "host RSS grew by {growth} MiB");
}
