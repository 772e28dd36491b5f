//! A guest's stdout and stderr, which go to the host log line by line, tagged with the
//! request id ([wsgi.errors]), at a rate the operator sets for each app.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A partial line longer than this is logged without waiting for its end, and a longer line
/// is logged in pieces of this size.
const MAX_LOG_LINE: usize = 8 * 1024;

/// A guest's stdout or stderr: each line goes to the host log, tagged with the request id
/// ([wsgi.errors]). Writes are joined into whole lines first, because a guest's formatted
/// print often arrives in several writes.
#[derive(Clone)]
pub struct GuestLog {
    stream: &'static str,
    request_id: Arc<AtomicU64>,
    partial_line: Arc<Mutex<Vec<u8>>>,
    limit: Arc<OutputLimit>,
}

/// How fast an app's output may go to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputRate {
    /// Bytes a second, on average; 0 for no limit.
    pub rate: u64,
    /// Bytes that may come at once, after a quiet while.
    pub burst: u64,
}

/// An app's output budget, shared by all its instances: a token bucket of bytes. Lines
/// past it are dropped, counted in `/metrics`, and reported in the log at most once a
/// second, so that no app can flood the log, or slow the server writing it.
pub struct OutputLimit {
    app: Arc<str>,
    rate: OutputRate,
    bucket: Mutex<Bucket>,
    dropped_total: Counter,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Bytes dropped since the last report.
    dropped: u64,
    reported: Option<Instant>,
}

/// What a line costs besides its own bytes: the time, level, request id and stream that
/// tag it in the log. Without it, a guest writing one-byte lines would fill the log 50 times
/// faster than its rate says.
const LINE_COST: usize = 100;

/// How often drops are reported, at most.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

impl OutputLimit {
    /// `dropped_total` counts the bytes dropped.
    /// The app whose output this is.
    pub fn app(&self) -> &Arc<str> {
        &self.app
    }

    pub fn new(app: Arc<str>, rate: OutputRate, dropped_total: Counter) -> OutputLimit {
        // A line is logged whole or not at all: a burst smaller than the longest line would
        // drop every long one.
        let rate = OutputRate {
            burst: rate.burst.max((MAX_LOG_LINE + LINE_COST) as u64),
            ..rate
        };
        OutputLimit {
            app,
            rate,
            bucket: Mutex::new(Bucket {
                tokens: rate.burst as f64,
                refilled: Instant::now(),
                dropped: 0,
                reported: None,
            }),
            dropped_total,
        }
    }

    /// Takes a line of `bytes` from the budget: whether it may be logged, and the bytes
    /// dropped before it, if it is time to report them.
    fn admit(&self, bytes: usize) -> (bool, Option<u64>) {
        if self.rate.rate == 0 {
            return (true, None);
        }
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.duration_since(bucket.refilled).as_secs_f64() * self.rate.rate as f64;
        bucket.tokens = (bucket.tokens + earned).min(self.rate.burst as f64);
        bucket.refilled = now;
        let admitted = bucket.tokens >= bytes as f64;
        if admitted {
            bucket.tokens -= bytes as f64;
        } else {
            bucket.dropped += bytes as u64;
            self.dropped_total.inc_by(bytes as u64);
        }
        (admitted, self.due_report(&mut bucket, now))
    }

    /// Whether a line of `bytes` that the host logs for the app, such as a refusal of what
    /// it asked, fits in its budget: the app's output and such lines share it, so that no
    /// app can flood the log through the host either.
    pub fn allows(&self, bytes: usize) -> bool {
        self.admit(bytes + LINE_COST).0
    }

    /// The bytes dropped since the last report, if there are any and a report is due.
    fn due_report(&self, bucket: &mut Bucket, now: Instant) -> Option<u64> {
        let due = bucket.dropped > 0
            && bucket
                .reported
                .is_none_or(|reported| now.duration_since(reported) >= REPORT_INTERVAL);
        due.then(|| {
            bucket.reported = Some(now);
            std::mem::take(&mut bucket.dropped)
        })
    }

    fn report(&self, request: u64, dropped: u64) {
        tracing::warn!(
            app = %self.app,
            request,
            "dropped {dropped} bytes of the app's output past its rate of {} bytes/s \
             (--app-log-rate)",
            self.rate.rate
        );
    }
}

impl GuestLog {
    /// The app's output budget.
    pub fn limit(&self) -> &OutputLimit {
        &self.limit
    }

    pub fn new(
        stream: &'static str,
        request_id: Arc<AtomicU64>,
        limit: Arc<OutputLimit>,
    ) -> GuestLog {
        GuestLog {
            stream,
            request_id,
            partial_line: Arc::default(),
            limit,
        }
    }

    fn emit(&self, bytes: &[u8]) {
        let mut partial = self
            .partial_line
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        partial.extend_from_slice(bytes);
        let complete = match partial.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if partial.len() > MAX_LOG_LINE => partial.len(),
            None => return,
        };
        self.log_lines(&partial[..complete]);
        partial.drain(..complete);
    }

    /// Logs a line the guest left unfinished at the end of a request.
    pub fn flush_partial(&self) {
        let mut partial = self
            .partial_line
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.log_lines(&partial);
        partial.clear();
        drop(partial);
        let mut bucket = self
            .limit
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = self.limit.due_report(&mut bucket, Instant::now());
        drop(bucket);
        if let Some(dropped) = due {
            self.limit
                .report(self.request_id.load(Ordering::Relaxed), dropped);
        }
    }

    /// Logs each line, within the app's budget. Control characters in them are escaped
    /// where every log line is written (see [`crate::serve::init_logging`]).
    fn log_lines(&self, bytes: &[u8]) {
        let request = self.request_id.load(Ordering::Relaxed);
        let lines = bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty());
        for line in lines.flat_map(|line| line.chunks(MAX_LOG_LINE)) {
            let (admitted, report) = self.limit.admit(line.len() + LINE_COST);
            if let Some(dropped) = report {
                self.limit.report(request, dropped);
            }
            if admitted {
                let line = String::from_utf8_lossy(line);
                tracing::info!(target: "wasm_gw::guest", request, stream = self.stream, "{}", line.trim_end());
            }
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.emit(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.emit(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
