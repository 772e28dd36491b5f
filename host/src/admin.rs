//! `--admin HOST:PORT`: `/health` and `/metrics` on a listener of their own, apart from the
//! public one, so that they can stay off the internet and answer when the apps do not.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::metrics::metrics;

/// How long one admin client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request head the admin endpoint reads.
const MAX_HEAD: usize = 8 * 1024;

/// Binds `address` and serves the admin endpoint on a thread of its own; returns the bound
/// address.
pub fn start(address: &str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(address)
        .map_err(|error| anyhow::anyhow!("cannot listen on --admin {address}: {error}"))?;
    let bound = listener.local_addr()?;
    thread::Builder::new().name("admin".into()).spawn(move || {
        // One client at a time: scrapes are rare and quick, and each is bounded in time.
        for stream in listener.incoming().flatten() {
            if let Err(error) = answer(stream) {
                tracing::debug!("admin client: {error}");
            }
        }
    })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buffer = [0; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer)?;
        if read == 0 || head.len() + read > MAX_HEAD {
            return respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "bad request\n",
            );
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(target)) =
        (request.parse(&head), request.method, request.path)
    else {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        );
    };
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n",
        );
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/health" => {
            let (healthy, body) = health();
            let status = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(&mut stream, status, "application/json", &body)
        }
        "/metrics" => respond(
            &mut stream,
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            &metrics().encode(),
        ),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "the admin endpoint serves /health and /metrics\n",
        ),
    }
}

/// Whether every app can make instances, and the JSON that says so app by app.
fn health() -> (bool, String) {
    let apps = metrics().health();
    let healthy = !apps.is_empty() && apps.iter().all(|(_, worked)| *worked);
    let mut body = String::from("{\"status\":");
    body.push_str(if healthy { "\"ok\"" } else { "\"unavailable\"" });
    body.push_str(",\"apps\":{");
    for (index, (app, worked)) in apps.iter().enumerate() {
        let separator = if index == 0 { "" } else { "," };
        let status = if *worked { "ok" } else { "cannot instantiate" };
        let _ = write!(
            body,
            "{separator}{}:{{\"status\":\"{status}\"}}",
            json_string(app)
        );
    }
    body.push_str("}}\n");
    (healthy, body)
}

/// `text` as a JSON string: app names are file stems, which may hold anything.
fn json_string(text: &str) -> String {
    let mut json = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(json, "\\u{:04x}", u32::from(c));
            }
            c => json.push(c),
        }
    }
    json.push('"');
    json
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
