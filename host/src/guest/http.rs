//! The connection's side of a `wasi:http` request, as the guest's host calls reach it: the
//! request body, read from the client when the guest reads it, and the response, written to
//! the client whenever the guest would otherwise wait on it and when its handler returns.
//!
//! The guest runs on the connection's thread, as a WSGI app does; there is no thread to hand
//! the request to and take the response from. wasmtime-wasi-http queues the body the guest
//! writes in a channel of a few chunks: [`ConnectionSide::pump`] empties it into the
//! [`Exchange`] before every wait of the guest's (`wasi:io/poll` and the blocking stream
//! writes, see [`super::wait`]), so that a guest never waits on a channel only its own
//! thread could empty.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use wasmtime_wasi_http::WasiBody;

use super::wait::ClientTime;
use crate::app::Failure;
use crate::http::Exchange;
use crate::http::body::BodyError;

/// The most request body bytes one read of the guest's brings.
const BODY_READ: usize = 64 * 1024;

/// What the guest's host calls and the connection share during one request.
pub type SharedSide = Arc<Mutex<ConnectionSide>>;

/// Locks `side`; a panic elsewhere while it was held leaves nothing half-done that matters.
pub fn lock(side: &Mutex<ConnectionSide>) -> std::sync::MutexGuard<'_, ConnectionSide> {
    side.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection's side of one `wasi:http` request.
pub struct ConnectionSide {
    /// The connection's exchange, until the request ends.
    exchange: Option<Exchange>,
    /// The response the guest set, or the error it answered with, not yet started.
    response: Option<Result<http::Response<WasiBody>, String>>,
    /// Whether the guest set a response at all.
    answered: bool,
    /// The body being written to the client.
    body: Option<WasiBody>,
    /// The body is all out (or the response has none to send).
    complete: bool,
    /// The response's end is written.
    ended: bool,
    /// The first failure of the response.
    failure: Option<Failure>,
    /// When the response must have ended: `--stream-timeout` after its head.
    until: Option<Instant>,
    stream_limit: Duration,
    /// Where time on the client is counted, off the app's clock.
    client: Arc<ClientTime>,
}

impl ConnectionSide {
    pub fn new(exchange: Exchange, stream_limit: Duration, client: Arc<ClientTime>) -> SharedSide {
        Arc::new(Mutex::new(ConnectionSide {
            exchange: Some(exchange),
            response: None,
            answered: false,
            body: None,
            complete: false,
            ended: false,
            failure: None,
            until: None,
            stream_limit,
            client,
        }))
    }

    /// The response the guest set, or the error code it answered with, as text.
    pub fn answer(&mut self, response: Result<http::Response<WasiBody>, String>) {
        if !self.answered {
            self.answered = true;
            self.response = Some(response);
        }
    }

    /// The next request body bytes, read from the client: empty at the end.
    fn read_body(&mut self) -> Result<Bytes, wasmtime_wasi_http::Error> {
        let Some(exchange) = self.exchange.as_mut() else {
            // A body kept past its request.
            return Err(wasmtime_wasi_http::Error::ConnectionTerminated);
        };
        match self.client.on_client(|| exchange.read_body(BODY_READ)) {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            // The exchange keeps the reason, and the connection answers it (400, 408, 413,
            // 431) in place of the guest's response.
            Err(_) => Err(match exchange.body_failed() {
                Some(BodyError::Io(error))
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    wasmtime_wasi_http::Error::ConnectionReadTimeout
                }
                Some(BodyError::Invalid(_)) => wasmtime_wasi_http::Error::HttpProtocolError,
                _ => wasmtime_wasi_http::Error::ConnectionTerminated,
            }),
        }
    }

    /// Starts the response the guest set, if it is not out yet, and takes its body out to
    /// be polled, unless there is no more of it to write.
    fn next_body(&mut self) -> Option<WasiBody> {
        let exchange = self.exchange.as_mut()?;
        if let Some(response) = self.response.take() {
            let response = match response {
                Ok(response) => response,
                Err(code) => {
                    self.fail(Failure::Application(format!(
                        "the app answered with an error: {code}"
                    )));
                    return None;
                }
            };
            // The request body could not be read: the client gets the server's answer to
            // that (400, 408, 413, 431), not the guest's reaction to a failed read.
            if exchange.body_failed().is_some() {
                return None;
            }
            let (parts, body) = response.into_parts();
            let status = parts.status;
            let status_line = format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        crate::environ::latin1(value.as_bytes()),
                    )
                })
                .collect();
            // A head the exchange refuses is recorded as a violation (500); the body is let
            // go, and the guest's writes to it fail.
            if exchange.start(&status_line, &headers, false).is_err() {
                return None;
            }
            self.body = Some(body);
            self.until = Some(Instant::now() + self.stream_limit);
        }
        self.body.as_ref()?;
        if exchange.body_failed().is_some() {
            // The request body failed after the head was set: the server's answer goes out
            // in place of the head if it can, else the response is cut.
            self.body = None;
            return None;
        }
        if !exchange.wants_body() {
            // HEAD, 204, 304: nothing of the body goes out, whatever the guest writes or
            // declares; after a violation, nothing more at all.
            self.complete = exchange.violation().is_none();
            self.body = None;
            return None;
        }
        if self.until.is_some_and(|until| Instant::now() >= until) {
            self.body = None;
            self.fail(Failure::StreamTimeout(self.stream_limit));
            return None;
        }
        self.body.take()
    }

    /// What came of polling the body [`ConnectionSide::next_body`] took out.
    fn polled(
        &mut self,
        body: WasiBody,
        frame: Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>,
    ) {
        match frame {
            None => self.complete = true,
            Some(Err(_)) => self.fail(Failure::Application(
                "the app's response body failed".into(),
            )),
            Some(Ok(frame)) => {
                let Some(exchange) = self.exchange.as_mut() else {
                    return;
                };
                // Trailers: HTTP/1.1 responses of wasm-gw carry none.
                if let Ok(data) = frame.into_data() {
                    // A failed write is the exchange's to record; the body is let go, and
                    // the guest's next write to it fails.
                    if self.client.on_client(|| exchange.write(&data)).is_err() {
                        return;
                    }
                }
                self.body = Some(body);
            }
        }
    }

    fn fail(&mut self, failure: Failure) {
        self.failure.get_or_insert(failure);
    }

    /// Ends the response early, once it is all out, for a guest whose tasks go on.
    fn end_response(&mut self) {
        if self.complete
            && !self.ended
            && self.failure.is_none()
            && let Some(exchange) = self.exchange.as_mut()
            && exchange.body_failed().is_none()
        {
            self.ended = true;
            let _ = self.client.on_client(|| exchange.finish());
        }
    }
}

/// Writes what the guest has produced of its response, without waiting for more: the head
/// once it is set, then every body frame queued.
pub fn pump(side: &Mutex<ConnectionSide>) {
    let _ = poll_pump(side, &mut Context::from_waker(Waker::noop()));
}

/// [`pump`], ready once the body is all out or has failed, and pending, with `cx` woken,
/// while the guest is still to write more of it. The body is polled with `side` unlocked:
/// a 0.3 guest may answer with its request's own body, which reads through `side`.
pub fn poll_pump(side: &Mutex<ConnectionSide>, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        let Some(mut body) = lock(side).next_body() else {
            return Poll::Ready(());
        };
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending => {
                lock(side).body = Some(body);
                return Poll::Pending;
            }
            Poll::Ready(frame) => lock(side).polled(body, frame),
        }
    }
}

/// Ends the response once it is all out, before the guest's remaining tasks end, so the
/// client does not wait on them.
pub fn end_response(side: &Mutex<ConnectionSide>) {
    lock(side).end_response();
}

/// Ends the request once the guest's handler returned `handled`: writes the rest of the
/// response, and gives back the exchange and the request's outcome.
pub fn finish(
    side: &Mutex<ConnectionSide>,
    handled: Result<(), Failure>,
) -> (Exchange, Result<(), Failure>) {
    if handled.is_ok() {
        pump(side);
    }
    let mut side = lock(side);
    let outcome = match handled {
        // A guest that failed after starting its response has it cut off, not ended.
        Err(failure) => Err(failure),
        Ok(()) => match side.failure.take() {
            Some(failure) => Err(failure),
            None if !side.answered => Err(Failure::Application(
                "the app returned without setting a response".into(),
            )),
            // Nothing can write to the body once the handler has returned.
            None if side.body.is_some() => Err(Failure::Application(
                "the app returned without finishing its response body".into(),
            )),
            None => Ok(()),
        },
    };
    side.body = None;
    if outcome.is_ok() {
        side.end_response();
    }
    let exchange = side
        .exchange
        .take()
        .expect("a request's exchange is taken back once");
    (exchange, outcome)
}

/// The request body as the guest sees it: each frame is read from the client when the guest
/// asks for it, so a body is never held whole, and `--max-body-size` and the body pace apply
/// as for a WSGI app.
pub struct StreamedBody {
    side: SharedSide,
    ended: bool,
}

impl StreamedBody {
    pub fn new(side: SharedSide) -> StreamedBody {
        StreamedBody { side, ended: false }
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // The guest waits for its body on the connection's thread, as a WSGI app does.
        let read = lock(&self.side).read_body();
        Poll::Ready(match read {
            Ok(bytes) if !bytes.is_empty() => Some(Ok(Frame::data(bytes))),
            Ok(_) => {
                self.ended = true;
                None
            }
            Err(error) => {
                self.ended = true;
                Some(Err(error))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
