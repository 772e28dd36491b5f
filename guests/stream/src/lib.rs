//! Streaming both ways:
//! - `GET /count?n=N` streams the lines `1` to `N` with no Content-Length;
//! - `GET /write?n=N` sends N lines through WSGI's legacy `write` callable;
//! - `POST /sink` counts the bytes of a body of any size without holding it;
//! - `POST /lines` reads the body line by line, at most 64 bytes a read, and reports the
//!   number of reads and the longest.

use std::fmt::Write as _;

use wasm_gw_sdk::{App, BodyStream, Request, Response, Result, start_response, write};

/// Lines sent per chunk, about 16 KiB: small enough to stream, large enough that a chunk's
/// call and write are not paid per line.
const LINES_PER_CHUNK: u64 = 2048;

/// Body bytes read per call while sinking.
const SINK_READ: usize = 256 * 1024;

/// The longest line `/lines` reads at once.
const LINE_LIMIT: usize = 64;

#[derive(Default)]
struct Stream;

impl App for Stream {
    fn handle(&mut self, mut request: Request) -> Result<Response> {
        match (request.method(), request.path()) {
            ("GET" | "HEAD", "/count") => {
                let Some(total) = request.query_param("n").and_then(|n| n.parse().ok()) else {
                    return Ok(Response::text(400, "n must be a whole number\n"));
                };
                Ok(Response::new(200)
                    .header("Content-Type", "text/plain")
                    .stream(Counter { next: 1, total }))
            }
            ("GET", "/write") => {
                let lines: u64 = request
                    .query_param("n")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                start_response(
                    "200 OK",
                    &[("Content-Type".into(), "text/plain".into())],
                    None,
                )
                .map_err(|error| format!("{error:?}"))?;
                for line in 1..=lines {
                    write(format!("written {line}\n").as_bytes())
                        .map_err(|error| format!("{error:?}"))?;
                }
                Ok(Response::written())
            }
            ("POST", "/lines") => {
                let (mut reads, mut longest) = (0, 0);
                loop {
                    let line = request.body().read_line(LINE_LIMIT)?;
                    if line.is_empty() {
                        break;
                    }
                    reads += 1;
                    longest = longest.max(line.len());
                }
                Ok(Response::text(
                    200,
                    format!("reads={reads} longest={longest}\n"),
                ))
            }
            ("POST" | "PUT", "/sink") => {
                let mut received: u64 = 0;
                loop {
                    let chunk = request.body().read_chunk(SINK_READ)?;
                    if chunk.is_empty() {
                        break;
                    }
                    received += chunk.len() as u64;
                }
                Ok(Response::text(200, format!("{received}\n")))
            }
            _ => Ok(Response::text(404, "not found\n")),
        }
    }
}

/// Yields the lines `1\n` to `total\n`.
struct Counter {
    next: u64,
    total: u64,
}

impl BodyStream for Counter {
    fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.next > self.total {
            return None;
        }
        let last = self.total.min(self.next + LINES_PER_CHUNK - 1);
        let mut chunk = String::with_capacity(16 * 1024);
        for line in self.next..=last {
            let _ = writeln!(chunk, "{line}");
        }
        self.next = last + 1;
        Some(chunk.into_bytes())
    }

    fn close(&mut self) {
        eprintln!(
            "count stream closed after {} of {} lines",
            self.next - 1,
            self.total
        );
    }
}

wasm_gw_sdk::export_app!(Stream);
