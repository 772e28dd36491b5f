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

/// A read timeout this close to the one wanted is left alone, saving a syscall per read.
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);

/// A connection's socket and its read buffer.
pub struct Io {
    stream: TcpStream,
    /// Zeroed once; reads land in `buf[end..]`.
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// The socket's read timeout as last set.
    read_timeout: Option<Duration>,
}

impl Io {
    pub fn new(stream: TcpStream) -> Io {
        Io {
            stream,
            buf: vec![0; READ_CHUNK],
            pos: 0,
            end: 0,
            read_timeout: None,
        }
    }

    /// The bytes read from the socket and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Marks `n` buffered bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.end);
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes from the socket into the buffer, waiting until `deadline` at most.
    /// Returns how many arrived; 0 means the peer closed its side. Fails with `TimedOut`
    /// once the deadline has passed.
    pub fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        self.make_room();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let stale = self.read_timeout.is_none_or(|current| {
                current > left + TIMEOUT_SLACK || current + TIMEOUT_SLACK < left
            });
            if stale {
                self.stream.set_read_timeout(Some(left))?;
                self.read_timeout = Some(left);
            }
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(read) => {
                    self.end += read;
                    return Ok(read);
                }
                // The timeout may be a little shorter than the deadline; look again.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Ensures free space after the buffered bytes: moves them to the front, and grows the
    /// buffer only when it is full of one unfinished head.
    fn make_room(&mut self) {
        if self.end < self.buf.len() {
            return;
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        } else {
            self.buf.resize(self.buf.len() * 2, 0);
        }
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
