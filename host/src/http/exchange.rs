//! One request and its response on a connection: what an app reads from and writes to.

use super::body::{BodyDecoder, BodyError};
use super::io::Io;
use super::request::Framing;
use super::response::{Response, ResponseError};

/// The body reader and response writer for one request, holding the connection while the app
/// runs. The connection takes it back when the app returns.
pub struct Exchange {
    pub io: Io,
    pub body: BodyDecoder,
    pub response: Response,
    /// The interim `100 Continue` is owed and goes out on the first body read.
    continue_owed: bool,
    /// Set when the body could not be read: the connection must close afterwards.
    pub body_failed: Option<BodyError>,
    /// The first contract violation of the app, which turns its response into a 500.
    pub violation: Option<ResponseError>,
    /// A body the app returned whole, written by the connection once the worker is free, so
    /// a slow reader never holds a worker.
    whole_body: Option<Vec<Vec<u8>>>,
}

impl Exchange {
    pub fn new(io: Io, framing: Framing, body: BodyDecoder) -> Exchange {
        Exchange {
            io,
            body,
            response: Response::new(framing),
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

    /// Records the app's first contract violation and hands the error back for the app.
    pub fn violated(&mut self, error: ResponseError) -> ResponseError {
        if self.violation.is_none() && error != ResponseError::Disconnected {
            self.violation = Some(error.clone());
        }
        error
    }

    /// Keeps a body the app returned whole, to be written by [`Exchange::finish_whole_body`].
    pub fn set_whole_body(&mut self, chunks: Vec<Vec<u8>>) {
        self.whole_body = Some(chunks);
    }

    /// Writes the body the app returned whole, unless the app already broke the contract.
    pub fn finish_whole_body(&mut self) {
        let Some(chunks) = self.whole_body.take() else {
            return;
        };
        if self.violation.is_none() {
            let parts: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            if let Err(error) = self.response.finish_with(&mut self.io, &parts) {
                self.violated(error);
            }
        }
    }

    /// Whether the client is still owed a body it never got to send: after an unanswered
    /// `100-continue` it may or may not send it, so the connection cannot be reused.
    pub fn body_unsent(&self) -> bool {
        self.continue_owed && !self.body.is_done()
    }
}
