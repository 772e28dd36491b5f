//! `--admin HOST:PORT`: `/health` and `/metrics` on a listener of their own, apart from the
//! public one, so that they can stay off the internet and answer when the apps do not.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::metrics::{Health, metrics};

/// How long one admin client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait after a failed accept before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The most of a request head the admin endpoint reads.
const MAX_HEAD: usize = 8 * 1024;

/// Binds `address`, before the server gives up root for `--user`.
pub fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .map_err(|error| anyhow::anyhow!("cannot listen on --admin {address}: {error}"))
}

/// Serves the admin endpoint on `listener`, on a thread of its own; returns its address.
pub fn serve(listener: TcpListener) -> anyhow::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    thread::Builder::new().name("admin".into()).spawn(move || {
        // One client at a time: scrapes are rare and quick, and each is bounded in time.
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    if let Err(error) = answer(stream) {
                        tracing::debug!("admin client: {error}");
                    }
                }
                // Out of file descriptors, say: wait rather than spin.
                Err(_) => thread::sleep(ACCEPT_BACKOFF),
            }
        }
    })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream) -> io::Result<()> {
    // One deadline for the whole exchange, so that a client trickling its request cannot
    // hold the endpoint longer than that.
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let left = || {
        Some(deadline.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the client was too slow"))
    };
    let mut head = Vec::new();
    let mut buffer = [0; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        stream.set_read_timeout(Some(left()?))?;
        let read = stream.read(&mut buffer)?;
        if read == 0 || head.len() + read > MAX_HEAD {
            return bad_request(&mut stream);
        }
        head.extend_from_slice(&buffer[..read]);
    }
    stream.set_write_timeout(Some(left()?))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(target)) =
        (request.parse(&head), request.method, request.path)
    else {
        return bad_request(&mut stream);
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let status = "405 Method Not Allowed";
            return respond(&mut stream, status, "text/plain", "use GET\n", false);
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/health" => {
            let (healthy, body) = health();
            let status = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(&mut stream, status, "application/json", &body, head_only)
        }
        "/metrics" => respond(
            &mut stream,
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            &metrics().encode(),
            head_only,
        ),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "the admin endpoint serves /health and /metrics\n",
            head_only,
        ),
    }
}

/// Whether every app can make instances, and the JSON that says how each app is doing. An
/// app that is degraded (its queue full, its instances all stuck) leaves the server healthy:
/// the others still serve, and a balancer that took the server out would fail them too.
fn health() -> (bool, String) {
    let apps = metrics().health();
    let healthy = !apps.is_empty()
        && apps
            .iter()
            .all(|(_, health)| *health != Health::Unavailable);
    let degraded = apps
        .iter()
        .any(|(_, health)| matches!(health, Health::Degraded(_)));
    let mut body = String::from("{\"status\":");
    body.push_str(match (healthy, degraded) {
        (false, _) => "\"unavailable\"",
        (true, true) => "\"degraded\"",
        (true, false) => "\"ok\"",
    });
    body.push_str(",\"apps\":{");
    for (index, (app, health)) in apps.iter().enumerate() {
        let separator = if index == 0 { "" } else { "," };
        let _ = write!(body, "{separator}{}:", json_string(app));
        let _ = match health {
            Health::Ok => write!(body, "{{\"status\":\"ok\"}}"),
            Health::Unavailable => write!(body, "{{\"status\":\"cannot instantiate\"}}"),
            Health::Degraded(why) => write!(
                body,
                "{{\"status\":\"degraded\",\"reason\":{}}}",
                json_string(why)
            ),
        };
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

fn bad_request(stream: &mut TcpStream) -> io::Result<()> {
    respond(
        stream,
        "400 Bad Request",
        "text/plain",
        "bad request\n",
        false,
    )
}

/// Writes a response, without its body for HEAD; the connection then closes.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
