//! The admin endpoint: /health and /metrics on their own listener.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{IO_TIMEOUT, Server, client};

/// The admin address from the startup log.
pub fn admin_address(server: &Server) -> SocketAddr {
    let line = server.wait_for_log(&["admin endpoint on http://"]);
    let address = line.split("http://").nth(1).unwrap();
    address.split_whitespace().next().unwrap().parse().unwrap()
}

fn get(url: &str) -> (u16, String, String) {
    let mut response = client().get(url).call().unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let status = response.status().as_u16();
    (
        status,
        content_type,
        response.body_mut().read_to_string().unwrap(),
    )
}

/// /metrics once every request answered so far has been counted: a request is counted just
/// after its response is written, so a scrape may overtake the last one.
fn settled_scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let (status, content_type, text) = get(&format!("http://{admin}/metrics"));
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
        if sample(&scrape, "wasm_gw_requests_in_flight", &[]) == 0.0 {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "requests stayed in flight:\n{text}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The samples of `name` on `admin`'s /metrics now whose labels include every pair of
/// `labels`, summed.
pub fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    sample(&scrape, name, labels)
}

/// The samples of `metric` whose labels include every pair of `labels`, summed.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| {
            labels
                .iter()
                .all(|(name, value)| sample.labels.get(name) == Some(value))
        })
        .map(|sample| match &sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => *value,
            other => panic!("{metric} is not a single value: {other:?}"),
        })
        .sum()
}

#[test]
fn health_and_metrics_count_what_was_served() {
    let server = Server::start(
        "faulty",
        &["--workers", "2", "--kv", "memory", "--admin", "127.0.0.1:0"],
    );
    let admin = admin_address(&server);
    assert_ne!(
        admin, server.addr,
        "the admin endpoint has a listener of its own"
    );

    let (status, content_type, body) = get(&format!("http://{admin}/health"));
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ok", "apps": {"faulty": {"status": "ok"}}})
    );

    let http = client();
    for _ in 0..5 {
        assert_eq!(http.get(server.url("/")).call().unwrap().status(), 200);
    }
    assert_eq!(
        http.post(server.url("/"))
            .send("twelve bytes")
            .unwrap()
            .status(),
        200
    );
    assert_eq!(http.get(server.url("/trap")).call().unwrap().status(), 500);
    // The trapped instance is replaced when it is next needed: use both workers.
    for _ in 0..2 {
        assert_eq!(http.get(server.url("/")).call().unwrap().status(), 200);
    }
    server.wait_for_log(&["instance replaced", "reason=\"trap\""]);

    let scrape = settled_scrape(admin);
    let app = ("app", "faulty");
    let requests = "wasm_gw_requests_total";
    assert_eq!(
        sample(
            &scrape,
            requests,
            &[app, ("method", "GET"), ("status", "2xx")]
        ),
        7.0
    );
    assert_eq!(
        sample(
            &scrape,
            requests,
            &[app, ("method", "POST"), ("status", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            requests,
            &[app, ("method", "GET"), ("status", "5xx")]
        ),
        1.0
    );
    assert_eq!(sample(&scrape, "wasm_gw_instances_live", &[app]), 2.0);
    assert_eq!(
        sample(&scrape, "wasm_gw_instances_created_total", &[app]),
        3.0
    );
    assert_eq!(
        sample(
            &scrape,
            "wasm_gw_instances_retired_total",
            &[app, ("reason", "trap")]
        ),
        1.0
    );
    assert_eq!(
        sample(&scrape, "wasm_gw_request_body_bytes_total", &[app]),
        12.0
    );
    let latency = scrape
        .samples
        .iter()
        .find(|sample| sample.metric == "wasm_gw_request_duration_seconds")
        .expect("the latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &latency.value else {
        panic!("the latency is a histogram");
    };
    assert_eq!(
        buckets.last().unwrap().count,
        9.0,
        "every request is in +Inf"
    );

    let (status, _, _) = get(&format!("http://{admin}/nothing"));
    assert_eq!(status, 404);
    // HEAD gets the head alone.
    let mut head = std::net::TcpStream::connect(admin).unwrap();
    std::io::Write::write_all(&mut head, b"HEAD /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let answer = crate::support::read_to_close(&mut head);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n"),
        "no body after the head: {answer}"
    );
    // The public listener does not serve the admin paths.
    let (_, _, body) = get(&server.url("/metrics"));
    assert!(!body.contains("wasm_gw_requests_total"));
}

#[test]
fn key_value_operations_are_counted_by_outcome() {
    let server = Server::start(
        "kv",
        &[
            "--kv",
            "memory",
            "--kv-max-key",
            "8",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = admin_address(&server);
    let http = client();
    assert_eq!(
        http.put(server.url("/b/key")).send("v").unwrap().status(),
        204
    );
    assert_eq!(http.get(server.url("/b/key")).call().unwrap().status(), 200);
    assert_eq!(
        http.post(server.url("/b/key?increment=1"))
            .send("")
            .unwrap()
            .status(),
        400
    );
    let scrape = settled_scrape(admin);
    let namespace = ("namespace", "kv");
    let operations = "wasm_gw_kv_operations_total";
    assert_eq!(
        sample(&scrape, operations, &[namespace, ("outcome", "ok")]),
        2.0
    );
    assert_eq!(
        sample(&scrape, operations, &[namespace, ("outcome", "refused")]),
        1.0
    );
}
