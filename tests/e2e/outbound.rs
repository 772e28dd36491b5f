//! Outbound HTTP from guests: allowed per app by pattern, checked where the server connects.

use std::net::TcpListener;
use std::sync::Arc;

use crate::support::{Scratch, Server, Upstream, guest};

/// A server on loopback that accepts connections and never answers; its port, and how
/// many connections it has accepted.
fn silent_upstream() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        // Held open, unanswered, for as long as the test process lives.
        let mut kept = Vec::new();
        for connection in listener.incoming().flatten() {
            kept.push(connection);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (port, accepted)
}

fn outbound(server: &Server, url: &str) -> String {
    server.get_text(&format!("/outbound?url={url}"))
}

#[test]
fn an_allowed_destination_answers_and_gets_exactly_the_checked_authority() {
    let upstream = Upstream::start();
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    let server = Server::start(
        "http_faulty",
        &["--allow-outbound", &allowed, "--admin", "127.0.0.1:0"],
    );
    assert_eq!(
        // A Host header of the guest's own, naming another host, changes nothing.
        outbound(&server, &format!("{allowed}/greeting?x=1&host=evil.test")),
        "200 upstream says hi"
    );
    assert_eq!(
        outbound(&server, "http://elsewhere.test/"),
        "ErrorCode::HttpRequestDenied"
    );
    let admin = crate::admin::admin_address(&server);
    // The destination is told by the pattern that allowed it: a value the operator chose.
    let destination = allowed.clone();
    let counted = |host: &str, outcome: &str| {
        crate::admin::metric(
            admin,
            "wasm_gw_outbound_requests_total",
            &[("app", "http_faulty"), ("host", host), ("outcome", outcome)],
        )
    };
    assert_eq!(counted(&destination, "ok"), 1.0);
    assert_eq!(counted("-", "denied"), 1.0);
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /greeting?x=1 HTTP/1.1\r\n"),
        "{heads:?}"
    );
    assert!(!heads[0].contains("evil.test"), "{heads:?}");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains(&format!("host: 127.0.0.1:{}\r\n", upstream.port)),
        "{heads:?}"
    );
}

#[test]
fn destinations_no_pattern_names_are_refused_logged_and_never_reached() {
    let upstream = Upstream::start();
    let port = upstream.port;
    let cases: [(&[&str], String, &str); 4] = [
        // Nothing is allowed by default.
        (
            &[],
            format!("http://127.0.0.1:{port}/"),
            "no --allow-outbound pattern allows",
        ),
        // Another port of the same host.
        (
            &["--allow-outbound", "http://127.0.0.1:1"],
            format!("http://127.0.0.1:{port}/"),
            "no --allow-outbound pattern allows",
        ),
        // A name the list allows, which resolves to loopback: the pattern does not name
        // that address.
        (
            &["--allow-outbound", "http://localhost:*"],
            format!("http://localhost:{port}/"),
            "which is loopback, and no pattern names it",
        ),
        // A network pattern written as IPv4-mapped IPv6 allows that network alone.
        (
            &["--allow-outbound", "http://[::ffff:10.1.2.3]:*"],
            format!("http://127.0.0.1:{port}/"),
            "no --allow-outbound pattern allows",
        ),
    ];
    for (args, url, why) in cases {
        let server = Server::start("http_faulty", args);
        // A query, which may hold a secret, is never logged.
        let url = format!("{url}?token=never-logged-4f1c");
        assert_eq!(
            outbound(&server, &url),
            "ErrorCode::HttpRequestDenied",
            "{url}"
        );
        server.wait_for_log(&[
            "WARN",
            "app=\"http_faulty\"",
            "denied an outbound HTTP request",
            why,
        ]);
        assert_eq!(server.log_lines_with("never-logged-4f1c"), 0);
    }
    assert!(
        upstream.heads.lock().unwrap().is_empty(),
        "the upstream was reached"
    );
}

#[test]
fn https_upstreams_are_verified_and_outbound_ca_adds_a_root() {
    let pki = crate::frontdoor::Pki::new();
    // wasm-gw itself, over TLS with a certificate of the test's CA, is the upstream.
    let upstream = pki.serve("hello", "upstream", &[]);
    let allow = format!("https://127.0.0.1:{}", upstream.addr.port());
    let url = format!("{allow}/?name=tls");
    let untrusting = Server::start("http_faulty", &["--allow-outbound", &allow]);
    assert_eq!(
        outbound(&untrusting, &url),
        "ErrorCode::TlsCertificateError"
    );
    untrusting.wait_for_log(&["outbound TLS failed"]);
    let ca = pki.path("ca.pem");
    let trusting = Server::start(
        "http_faulty",
        &["--allow-outbound", &allow, "--outbound-ca", &ca],
    );
    assert_eq!(outbound(&trusting, &url), "200 Hello, tls!\n");
}

#[test]
fn an_upstream_that_never_answers_times_out_in_the_guest_or_at_the_deadline() {
    let (port, _) = silent_upstream();
    let allowed = format!("http://127.0.0.1:{port}");
    let server = Server::start(
        "http_faulty",
        &[
            "--allow-outbound",
            &allowed,
            "--timeout",
            "2",
            "--workers",
            "1",
        ],
    );
    // The guest's own first-byte timeout: an error it can handle (the code wasmtime gives).
    assert_eq!(
        outbound(&server, &format!("{allowed}/&timeout_ms=300")),
        "ErrorCode::ConnectionReadTimeout"
    );
    // No timeout of its own: the request's deadline ends the wait, with 504.
    let response =
        server.raw(format!("GET /outbound?url={allowed}/ HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    assert_eq!(response.status, 504);
    server.wait_for_log(&["stopped after exceeding the 2s deadline"]);
}

#[test]
fn a_wsgi_app_calls_out_through_the_sdk_under_the_same_rules() {
    let upstream = Upstream::start();
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    let server = Server::start("faulty", &["--allow-outbound", &allowed]);
    let fetch = |url: &str| server.get_text(&format!("/fetch?url={url}"));
    assert_eq!(
        fetch(&format!("{allowed}/from-wsgi")),
        "200 upstream says hi"
    );
    assert_eq!(
        fetch("http://localhost:1/"),
        "outbound request denied: its destination is not allowed"
    );
    server.wait_for_log(&["app=\"faulty\"", "denied an outbound HTTP request"]);
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /from-wsgi HTTP/1.1\r\n"),
        "{heads:?}"
    );
}

#[test]
fn outbound_limits_hold_per_app() {
    // A response body over --outbound-max-response-size fails in the guest.
    let upstream = Upstream::start();
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    let capped = Server::start(
        "http_faulty",
        &[
            "--allow-outbound",
            &allowed,
            "--outbound-max-response-size",
            "8",
        ],
    );
    let answer = outbound(&capped, &format!("{allowed}/"));
    assert!(
        answer.starts_with("200 ")
            && answer.contains("(then HTTP response body size exceeds limit"),
        "{answer}"
    );

    // A request past --outbound-max-concurrent fails at once, while another is open.
    let (port, accepted) = silent_upstream();
    let silent = format!("http://127.0.0.1:{port}");
    let server = Arc::new(Server::start(
        "http_faulty",
        &[
            "--allow-outbound",
            &silent,
            "--outbound-max-concurrent",
            "1",
            "--workers",
            "2",
        ],
    ));
    let first = {
        let server = server.clone();
        // Long enough that the second request surely comes while this one waits.
        let url = format!("{silent}/&timeout_ms=5000");
        std::thread::spawn(move || outbound(&server, &url))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        outbound(&server, &format!("{silent}/")),
        "ErrorCode::ConnectionLimitReached"
    );
    server.wait_for_log(&["--outbound-max-concurrent"]);
    assert_eq!(first.join().unwrap(), "ErrorCode::ConnectionReadTimeout");
}

#[test]
fn the_tasks_example_imports_a_list_from_an_allowed_service() {
    let upstream = Upstream::serving(
        r#"[{"title": "from upstream"}, {"title": "done already", "done": true}]"#,
    );
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    let server = Server::start("tasks", &["--allow-outbound", &allowed, "--kv", "memory"]);
    let import = |url: &str| {
        let body = format!(r#"{{"url": "{url}"}}"#);
        server.raw(
            format!(
                "POST /tasks/import HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let imported = import(&format!("{allowed}/tasks.json"));
    assert_eq!(imported.status, 201, "{}", imported.text());
    let imported: serde_json::Value = serde_json::from_slice(&imported.body).unwrap();
    assert_eq!(imported["imported"], 2);
    let listed = server.raw(b"GET /tasks HTTP/1.1\r\nHost: a\r\n\r\n");
    let listed: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
    assert_eq!(listed[1]["title"], "done already");
    assert_eq!(listed[1]["done"], true);
    // Anywhere else: the server's refusal, which the app turns into its own 403.
    assert_eq!(import("http://127.0.0.1:1/tasks.json").status, 403);
}

#[test]
fn each_app_has_its_own_allow_list_and_limits_in_the_config() {
    let upstream = Upstream::start();
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    let dir = Scratch::new("outbound-config");
    let config = crate::config::write_config(
        &dir,
        &format!(
            r#"
[[app]]
name = "capped"
component = "{faulty}"
route = "/capped"
allow-outbound = ["{allowed}"]
outbound-max-response-size = 8

[[app]]
name = "open"
component = "{faulty}"
route = "/open"
allow-outbound = ["{allowed}"]

[[app]]
name = "closed"
component = "{faulty}"
route = "/closed"
"#,
            faulty = guest("http_faulty").display(),
        ),
    );
    let server = Server::start_mounts(&["--config", &config]);
    let fetch = |app: &str| {
        server
            .raw(
                format!("GET /{app}/outbound?url={allowed}/ HTTP/1.1\r\nHost: a\r\n\r\n")
                    .as_bytes(),
            )
            .text()
    };
    assert_eq!(fetch("open"), "200 upstream says hi");
    let capped = fetch("capped");
    assert!(capped.contains("body size exceeds limit"), "{capped}");
    assert_eq!(fetch("closed"), "ErrorCode::HttpRequestDenied");
    server.wait_for_log(&["app=\"closed\"", "denied an outbound HTTP request"]);
}

#[test]
fn a_chunked_upstream_body_streams_through_whole() {
    let lines: String = (1..=200).map(|n| format!("line {n}\n")).collect();
    let chunked: String = lines
        .as_bytes()
        .chunks(100)
        .map(|chunk| {
            format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                String::from_utf8_lossy(chunk)
            )
        })
        .collect();
    let upstream = Upstream::answering(format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked}0\r\n\r\n"
    ));
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    let server = Server::start("http_faulty", &["--allow-outbound", &allowed]);
    assert_eq!(
        outbound(&server, &format!("{allowed}/")),
        format!("200 {lines}")
    );
}

#[test]
fn a_wasi_http_0_3_component_calls_out_through_its_client_under_the_same_rules() {
    let upstream = Upstream::start();
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    let server = Server::start("http_hello_p3", &["--allow-outbound", &allowed]);
    let fetch = |url: &str| server.get_text(&format!("/fetch?url={url}"));
    assert_eq!(fetch(&format!("{allowed}/from-p3")), "200 upstream says hi");
    assert_eq!(fetch("http://localhost:1/"), "ErrorCode::HttpRequestDenied");
    server.wait_for_log(&["app=\"http_hello_p3\"", "denied an outbound HTTP request"]);
    let heads = upstream.heads.lock().unwrap().clone();
    assert!(
        heads[0].starts_with("GET /from-p3 HTTP/1.1\r\n"),
        "{heads:?}"
    );
}
