//! Buffered reads and writes on one TCP connection.
//!
//! Bytes read past the end of one request stay in the buffer for the next, so pipelined
//! requests are never lost.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// How much one read from the socket asks for.
const READ_CHUNK: usize = 16 * 1024;

/// How long, and for how many bytes, a closing connection keeps reading what the client
/// still sends.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// A connection's socket and its read buffer.
pub struct Io {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
}

impl Io {
    pub fn new(stream: TcpStream) -> Io {
        Io {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
        }
    }

    /// The bytes read from the socket and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` buffered bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes from the socket into the buffer, waiting at most `timeout`.
    /// Returns how many arrived; 0 means the peer closed its side.
    pub fn fill(&mut self, timeout: Duration) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.capacity() / 2 {
            // Keep the buffer from creeping forward forever under pipelining.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let result = self.stream.read(&mut self.buf[len..]);
        self.buf.truncate(len + *result.as_ref().unwrap_or(&0));
        result
    }

    /// Like [`Io::fill`], but against an absolute deadline, failing with `TimedOut` once it
    /// has passed.
    pub fn fill_before(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.fill(left)
    }

    /// Writes all of `parts` in order, with as few syscalls as the kernel allows.
    pub fn write_all_vectored(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice> = parts
            .iter()
            .filter(|part| !part.is_empty())
            .map(|part| io::IoSlice::new(part))
            .collect();
        let mut remaining = &mut slices[..];
        while !remaining.is_empty() {
            let written = self.stream.write_vectored(remaining)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            io::IoSlice::advance_slices(&mut remaining, written);
        }
        Ok(())
    }

    /// Closes the connection without losing the last response. Closing a socket with unread
    /// input makes the kernel send a reset, which can destroy the response before the client
    /// reads it; so stop writing, then read and discard until the client closes too.
    pub fn close_gracefully(mut self) {
        if self.stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut discarded = 0;
        let mut sink = [0; 8192];
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(read) => discarded += read,
            }
        }
    }
}
