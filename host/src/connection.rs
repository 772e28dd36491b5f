//! One client connection: read a request head, hand the request to a worker, answer for
//! whatever went wrong, and keep the connection alive or close it.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::access_log;
use crate::app::{Failure, Request};
use crate::bindings::wasm_gw::wsgi::request::Environ;
use crate::environ::{self, ConnectionInfo, HeaderLines};
use crate::http::Exchange;
use crate::http::Limits;
use crate::http::body::{BodyDecoder, BodyError};
use crate::http::error::RequestError;
use crate::http::io::{Io, Pace};
use crate::http::request::{self, BodyKind, Framing};
use crate::http::response::write_server_response;
use crate::lifecycle::{Lifecycle, Registration};
use crate::metrics::metrics;
use crate::router::{CurrentRouter, Route};

/// Header slots kept on the stack; a larger `--limit-request-fields` uses the heap.
const INLINE_HEADER_SLOTS: usize = 128;

/// Unread body bytes the server reads and discards to keep a connection alive; past this it
/// closes the connection instead.
const MAX_DRAIN: u64 = 256 * 1024;

/// Ids for requests, unique within the process, for tagging log lines.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// How long each phase of a connection may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// An idle keep-alive connection waits this long for its next request.
    pub keep_alive: Duration,
    /// The whole request head must arrive within this, however slowly it trickles.
    pub head: Duration,
}

pub struct ConnectionConfig {
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// How fast request bodies must arrive and responses drain.
    pub body_pace: Pace,
    pub multithread: bool,
}

/// Serves requests on `stream` until the client leaves, the connection must close, or the
/// server stops.
pub fn serve(
    stream: TcpStream,
    router: &CurrentRouter,
    config: &ConnectionConfig,
    lifecycle: &Arc<Lifecycle>,
) {
    let Some(registration) = lifecycle.register(&stream) else {
        return;
    };
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let info = ConnectionInfo::new(local, peer, config.multithread);
    // Responses are written whole or in large pieces; Nagle's delay only adds latency.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "cannot configure connection: {error}");
        return;
    }
    let mut io = Io::new(stream, config.body_pace);
    let mut first = true;
    loop {
        let idle_wait = if first {
            config.timeouts.head
        } else {
            config.timeouts.keep_alive
        };
        first = false;
        // Whatever answers this request, its writes run on a clock of their own.
        io.start_response();
        let (mut environ, headers, framing) = match read_head(&mut io, config, &info, idle_wait) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(HeadError::Invalid(error)) => {
                let (code, reason) = error.status();
                tracing::warn!(%peer, "rejected request with {code}: {error}");
                let _ = write_server_response(
                    &mut io,
                    code,
                    reason,
                    &format!("{reason}\n"),
                    None,
                    false,
                );
                return io.close_gracefully();
            }
            Err(HeadError::TimedOut) => {
                tracing::debug!(%peer, "request head not received in time");
                let _ = write_server_response(
                    &mut io,
                    408,
                    "Request Timeout",
                    "Request Timeout\n",
                    None,
                    false,
                );
                return io.close_gracefully();
            }
            Err(HeadError::Io(error)) => {
                tracing::debug!(%peer, "connection failed: {error}");
                return;
            }
        };
        if !registration.begin_request() {
            let body = "Service Unavailable: the server is stopping\n";
            let _ = write_server_response(
                &mut io,
                503,
                "Service Unavailable",
                body,
                Some(framing),
                false,
            );
            return io.close_gracefully();
        }
        let router = router.get();
        let Some((mount, route)) = router.route(&environ.server_name, &environ.path_info) else {
            let refusal = (
                404,
                "Not Found",
                "Not Found: no app is mounted at this path\n",
            );
            return turn_away(io, &environ, framing, refusal, &registration);
        };
        // The app's own limit, known only now that the route is; chunked bodies are held
        // to it as they arrive.
        if let BodyKind::Length(length) = framing.body
            && route.max_body.is_some_and(|max| length > max)
        {
            tracing::warn!(%peer, "rejected request with 413: a body of {length} bytes is over the app's limit");
            let refusal = (413, "Content Too Large", "Content Too Large\n");
            return turn_away(io, &environ, framing, refusal, &registration);
        }
        // WSGI's split: the mount prefix is SCRIPT_NAME, the rest PATH_INFO. At the root,
        // the usual case, there is nothing to split and nothing to allocate.
        if mount > 0 {
            let rest = environ.path_info.split_off(mount);
            environ.script_name = std::mem::replace(&mut environ.path_info, rest);
        }
        let (kept, reusable) = handle(io, environ, headers, framing, route, config);
        if !(reusable && registration.end_request()) {
            return kept.close_gracefully();
        }
        io = kept;
    }
}

/// Answers a request that no app sees with `(code, reason, body)`, and closes: its body,
/// unread, rules out keeping the connection.
fn turn_away(
    mut io: Io,
    environ: &Environ,
    framing: Framing,
    (code, reason, body): (u16, &str, &str),
    registration: &Registration,
) {
    access_log::record(environ, Some(code), 0, Duration::ZERO);
    let _ = write_server_response(&mut io, code, reason, body, Some(framing), false);
    registration.end_request();
    io.close_gracefully();
}

enum HeadError {
    Invalid(RequestError),
    TimedOut,
    Io(io::Error),
}

/// Reads the next request head. `Ok(None)` means the client closed or idled out cleanly
/// between requests.
fn read_head(
    io: &mut Io,
    config: &ConnectionConfig,
    info: &ConnectionInfo,
    idle_wait: Duration,
) -> Result<Option<(Environ, HeaderLines, Framing)>, HeadError> {
    let idle_deadline = Instant::now() + idle_wait;
    // The head deadline starts with its first byte; until then the connection is idle.
    let mut head_deadline = None;
    let mut scanned = 0;
    loop {
        let buffered = io.buffered();
        if !buffered.is_empty() {
            head_deadline.get_or_insert_with(|| Instant::now() + config.timeouts.head);
            if worth_parsing(buffered, scanned, &config.limits) {
                let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADER_SLOTS];
                let mut heap = Vec::new();
                let slots = if config.limits.fields <= INLINE_HEADER_SLOTS {
                    &mut inline[..config.limits.fields]
                } else {
                    heap.resize(config.limits.fields, httparse::EMPTY_HEADER);
                    &mut heap[..]
                };
                let parsed =
                    request::parse(buffered, slots, &config.limits).map_err(HeadError::Invalid)?;
                if let Some((head, len)) = parsed {
                    let (environ, headers) = environ::build(&head, info);
                    let request = (environ, headers, head.framing);
                    io.consume(len);
                    return Ok(Some(request));
                }
            }
            scanned = buffered.len();
        }
        match io.fill(head_deadline.unwrap_or(idle_deadline)) {
            Ok(0) if io.buffered().is_empty() => return Ok(None),
            Ok(0) => {
                return Err(HeadError::Invalid(RequestError::Malformed(
                    "incomplete request head",
                )));
            }
            Ok(_) => {}
            Err(error) if is_timeout(&error) && io.buffered().is_empty() => return Ok(None),
            Err(error) if is_timeout(&error) => return Err(HeadError::TimedOut),
            Err(error) => return Err(HeadError::Io(error)),
        }
    }
}

/// Whether the bytes past `scanned` could end the head or break a limit. Parsing only then
/// keeps a head trickled in byte by byte from costing quadratic time.
fn worth_parsing(buffered: &[u8], scanned: usize, limits: &Limits) -> bool {
    let fresh = &buffered[scanned.saturating_sub(2)..];
    let head_may_end = memchr::memchr_iter(b'\n', fresh).any(|at| {
        let after = &fresh[at + 1..];
        after.starts_with(b"\n") || after.starts_with(b"\r\n")
    });
    let line_limit = limits.request_line + 2;
    head_may_end
        || (scanned <= line_limit && buffered.len() > line_limit)
        || buffered.len() > limits.max_head_bytes()
}

/// Runs one request through a worker and finishes its response. Returns the connection, and
/// whether it can carry another request.
fn handle(
    io: Io,
    environ: Environ,
    headers: HeaderLines,
    framing: Framing,
    route: &Route,
    config: &ConnectionConfig,
) -> (Io, bool) {
    let request_id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    metrics().request_started();
    let body = BodyDecoder::new(
        framing.body,
        config.limits,
        route.max_body,
        config.body_pace,
    );
    let request = Request {
        id: request_id,
        environ,
        headers,
        exchange: Exchange::new(io, framing, body),
    };
    // The worker goes back to the pool at the end of this statement, before the connection
    // writes a whole body to a client that may be slow.
    let (app, (request, result)) = {
        let pool = route.pool.get();
        let mut worker = pool.checkout();
        (worker.name(), worker.call(request))
    };
    let Request {
        environ,
        mut exchange,
        ..
    } = request;
    exchange.finish_whole_body();

    let request = RequestLog {
        app: &app,
        id: request_id,
        ran_for: started.elapsed(),
    };
    let error_status = error_response(&request, &exchange, result);
    let code = match error_status {
        Some((code, reason)) if !exchange.response.head_sent() => {
            let body = format!("{reason}\n");
            let sent =
                write_server_response(&mut exchange.io, code, reason, &body, Some(framing), false);
            sent.is_ok().then_some(code)
        }
        _ => exchange.response.code(),
    };
    access_log::record(
        &environ,
        code,
        exchange.response.body_bytes(),
        started.elapsed(),
    );

    let reusable = error_status.is_none()
        && exchange.response.allows_keep_alive()
        && exchange.body_failed.is_none()
        && !exchange.body_unsent()
        && exchange
            .body
            .skip(&mut exchange.io, MAX_DRAIN)
            .unwrap_or(false);
    route.metrics.request_finished(
        &environ.request_method,
        code.unwrap_or(0),
        started.elapsed(),
        exchange.body.consumed(),
        exchange.response.body_bytes(),
    );
    (exchange.io, reusable)
}

/// Which request a log line is about.
struct RequestLog<'a> {
    app: &'a str,
    id: u64,
    ran_for: Duration,
}

/// Logs what went wrong with a request, if anything, and picks the status that answers it.
fn error_response(
    request: &RequestLog,
    exchange: &Exchange,
    result: Result<(), Failure>,
) -> Option<(u16, &'static str)> {
    let RequestLog { app, id, ran_for } = *request;
    if let Some(BodyError::Invalid(error)) = &exchange.body_failed {
        tracing::warn!(app, request = id, "bad request body: {error}");
        return Some(error.status());
    }
    let failure = result.err();
    if let Some(
        failure @ (Failure::Trap(_)
        | Failure::Timeout(_)
        | Failure::MemoryCap(_)
        | Failure::Unavailable(_)),
    ) = &failure
    {
        tracing::error!(app, request = id, ?ran_for, "app {failure}");
        return Some(failure.status());
    }
    if let Some(violation) = &exchange.violation {
        tracing::error!(
            app,
            request = id,
            "app broke the WSGI contract: {violation}"
        );
        return Some((500, "Internal Server Error"));
    }
    if let Some(error) = &exchange.body_failed {
        // The app's own error, if any, only followed from the missing body.
        tracing::info!(app, request = id, "request body not received: {error}");
        return Some(match error {
            BodyError::Io(error) if is_timeout(error) => (408, "Request Timeout"),
            _ => (400, "Bad Request"),
        });
    }
    if let Some(failure) = &failure {
        tracing::error!(app, request = id, "app {failure}");
        return Some(failure.status());
    }
    if !exchange.response.head_sent() {
        // The app returned without any response; the guest bindings prevent this, but a
        // native app might not.
        tracing::error!(app, request = id, "app returned without a response");
        return Some((500, "Internal Server Error"));
    }
    None
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
