//! One request and its response on a connection: what an app reads from and writes to.

use super::body::{BodyDecoder, BodyError};
use super::error::ErrorResponse;
use super::io::Io;
use super::request::Framing;
use super::response::{Response, ResponseError, write_error};

/// Unread body bytes the server reads and discards to keep a connection alive; past this it
/// closes the connection instead.
const MAX_DRAIN: u64 = 256 * 1024;

/// The body reader and the one response writer for one request, holding the connection
/// while the app runs: an app's response, or the server's in its place, goes out through it,
/// and it decides how the connection goes on. The connection takes it back at the end.
pub struct Exchange {
    io: Box<Io>,
    body: BodyDecoder,
    response: Response,
    /// The request's framing, for the server's own answer.
    framing: Framing,
    /// The interim `100 Continue` is owed and goes out on the first body read.
    continue_owed: bool,
    /// Set when the body could not be read: the connection must close afterwards.
    body_failed: Option<BodyError>,
    /// The first contract violation of the app, which turns its response into a 500.
    violation: Option<ResponseError>,
    /// A body the app returned whole, written by the connection once the worker is free, so
    /// a slow reader never holds a worker.
    whole_body: Option<Vec<Vec<u8>>>,
}

impl Exchange {
    pub fn new(io: Box<Io>, framing: Framing, body: BodyDecoder) -> Exchange {
        Exchange {
            io,
            body,
            response: Response::new(framing),
            framing,
            continue_owed: framing.expect_continue,
            body_failed: None,
            violation: None,
            whole_body: None,
        }
    }

    /// Reads up to `max` body bytes; fewer only at the end of the body. An error is the
    /// reason the body cannot be read, for the app.
    pub fn read_body(&mut self, max: usize) -> Result<Vec<u8>, String> {
        self.read_with(max, BodyDecoder::read)
    }

    /// Reads body bytes through the next `\n`, at most `max` of them.
    pub fn read_body_line(&mut self, max: usize) -> Result<Vec<u8>, String> {
        self.read_with(max, BodyDecoder::read_line)
    }

    fn read_with(
        &mut self,
        max: usize,
        read: fn(&mut BodyDecoder, &mut Io, &mut Vec<u8>, usize) -> Result<(), BodyError>,
    ) -> Result<Vec<u8>, String> {
        if self.body_failed.is_none()
            && let Err(error) = self.send_continue()
        {
            self.body_failed = Some(error);
        }
        if let Some(error) = &self.body_failed {
            return Err(error.to_string());
        }
        // Small reads are common (read-line, 8 KiB buffers); don't reserve a huge `max`.
        let mut out = Vec::with_capacity(max.min(64 * 1024));
        match read(&mut self.body, &mut self.io, &mut out, max) {
            Ok(()) => Ok(out),
            Err(error) => Err(self.body_failed.insert(error).to_string()),
        }
    }

    /// RFC 9110 §10.1.1: a server that receives `100-continue` "ought to" send the interim
    /// response before reading the body; sending it only when the app reads lets an app refuse
    /// a large upload without receiving it.
    fn send_continue(&mut self) -> Result<(), BodyError> {
        // Once the response has started, an interim response would land inside it; the
        // connection closes after this exchange instead.
        if std::mem::take(&mut self.continue_owed)
            && !self.body.is_done()
            && !self.response.head_sent()
        {
            self.io
                .write_all_vectored(&[b"HTTP/1.1 100 Continue\r\n\r\n"])?;
            // The final response has its own write clock, however long the body takes.
            self.io.start_response();
        }
        Ok(())
    }

    /// Starts the app's response; an app that replaces its response after an error
    /// (`exc_info`) may start it again while nothing is sent.
    pub fn start(
        &mut self,
        status: &str,
        headers: &[(String, String)],
        replacing: bool,
    ) -> Result<(), ResponseError> {
        let started = self.response.start(status, headers, replacing);
        self.recorded(started)
    }

    /// Writes some of the app's response body, the head first if it is not out yet.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ResponseError> {
        let written = self.response.write(&mut self.io, data);
        self.recorded(written)
    }

    /// Ends the app's response.
    pub fn finish(&mut self) -> Result<(), ResponseError> {
        let finished = self.response.finish(&mut self.io);
        self.recorded(finished)
    }

    /// Whether the app's response is still to be written: no violation has ended it, and
    /// it has a body to send (not for HEAD, 204 or 304).
    pub fn wants_body(&self) -> bool {
        self.violation.is_none() && self.response.wants_body()
    }

    /// Whether the app broke the contract, which turns its response into a 500.
    pub fn violation(&self) -> Option<&ResponseError> {
        self.violation.as_ref()
    }

    /// Why the request body could not be read, if it could not.
    pub fn body_failed(&self) -> Option<&BodyError> {
        self.body_failed.as_ref()
    }

    /// Whether any of the app's response is out.
    pub fn head_sent(&self) -> bool {
        self.response.head_sent()
    }

    /// Whether the app has set a head, sent or not.
    pub fn head_set(&self) -> bool {
        self.response.head_set()
    }

    /// Records the app's first contract violation in `result`, which goes back to the app.
    fn recorded(&mut self, result: Result<(), ResponseError>) -> Result<(), ResponseError> {
        if let Err(error) = &result
            && self.violation.is_none()
            && *error != ResponseError::Disconnected
        {
            self.violation = Some(error.clone());
        }
        result
    }

    /// Keeps a body the app returned whole, to be written by [`Exchange::end`] once the
    /// worker is free, so that a slow reader never holds a worker.
    pub fn set_whole_body(&mut self, chunks: Vec<Vec<u8>>) {
        self.whole_body = Some(chunks);
    }

    /// Writes the body the app returned whole, unless the app already broke the contract.
    fn finish_whole_body(&mut self) {
        let Some(chunks) = self.whole_body.take() else {
            return;
        };
        if self.violation.is_none() {
            let parts: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let finished = self.response.finish_with(&mut self.io, &parts);
            let _ = self.recorded(finished);
        }
    }

    /// Ends the exchange: writes the body the app returned whole, then decides, with
    /// `failed` (what the server answers in the app's place, if anything), whether the
    /// connection goes on. Returns the connection and how it goes on.
    pub fn end(mut self, failed: impl FnOnce(&Exchange) -> Option<ErrorResponse>) -> Ended {
        self.finish_whole_body();
        let failed = failed(&self);
        let status = match &failed {
            Some(answer) if !self.response.head_sent() => {
                let sent = write_error(&mut self.io, answer, Some(self.framing));
                sent.is_ok().then_some(answer.status().0)
            }
            _ => self.response.code(),
        };
        let clean = failed.is_none() && self.body_failed.is_none() && !self.body_unsent();
        let outcome = if !clean {
            Outcome::Close
        } else if self.response.allows_keep_alive() {
            match self.body.skip(&mut self.io, MAX_DRAIN) {
                Ok(true) => Outcome::KeepAlive,
                _ => Outcome::Close,
            }
        } else if self.response.is_complete_for_closing_client() && self.body.is_done() {
            Outcome::Ended
        } else {
            Outcome::Close
        };
        Ended {
            status,
            body_bytes_read: self.body.consumed(),
            body_bytes_sent: self.response.body_bytes(),
            outcome,
            io: self.io,
        }
    }

    /// Whether the client is still owed a body it never got to send: after an unanswered
    /// `100-continue` it may or may not send it, so the connection cannot be reused.
    fn body_unsent(&self) -> bool {
        self.continue_owed && !self.body.is_done()
    }
}

/// An exchange that has ended: what went out, and how the connection goes on.
pub struct Ended {
    /// The status the client got, if any got out.
    pub status: Option<u16>,
    pub body_bytes_read: u64,
    pub body_bytes_sent: u64,
    pub outcome: Outcome,
    pub io: Box<Io>,
}

/// How a connection goes on after an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Another request may follow.
    KeepAlive,
    /// The client asked to close and sent its whole request.
    Ended,
    /// Closing, though the client may still be sending.
    Close,
}
