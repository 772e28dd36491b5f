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

/// A socket timeout this close to the one wanted is left alone, saving a syscall.
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);

/// How long a body may take in either direction: `patience`, plus a second for every
/// `min_rate` bytes moved, as Apache's mod_reqtimeout does for requests. A peer trickling a
/// byte a second is cut off; a large transfer that keeps moving is not.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub patience: Duration,
    /// Bytes per second.
    pub min_rate: u64,
}

impl Pace {
    /// When a transfer that began at `started` and has moved `bytes` must have moved more.
    pub fn deadline(&self, started: Instant, bytes: u64) -> Instant {
        started + self.patience + Duration::from_secs(bytes / self.min_rate.max(1))
    }
}

/// A socket timeout and when it was last set, to skip setting it again.
#[derive(Default)]
struct SocketTimeout(Option<Duration>);

impl SocketTimeout {
    /// Whether `wanted` is far enough from the current timeout to be worth a syscall.
    fn needs(&self, wanted: Duration) -> bool {
        self.0.is_none_or(|current| {
            current > wanted + TIMEOUT_SLACK || current + TIMEOUT_SLACK < wanted
        })
    }
}

/// A connection's socket and its read buffer.
pub struct Io {
    stream: TcpStream,
    /// Zeroed once; reads land in `buf[end..]`.
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    read_timeout: SocketTimeout,
    write_timeout: SocketTimeout,
    /// How fast responses must drain, and when the current response's first write began and
    /// how much it has written.
    write_pace: Pace,
    response_started: Option<Instant>,
    response_bytes: u64,
}

impl Io {
    pub fn new(stream: TcpStream, write_pace: Pace) -> Io {
        Io {
            stream,
            buf: vec![0; READ_CHUNK],
            pos: 0,
            end: 0,
            read_timeout: SocketTimeout::default(),
            write_timeout: SocketTimeout::default(),
            write_pace,
            response_started: None,
            response_bytes: 0,
        }
    }

    /// Resets the write clock for a new response. It starts with the response's first write:
    /// a client that then reads too slowly is cut off, so that it can't hold a worker.
    pub fn start_response(&mut self) {
        self.response_started = None;
        self.response_bytes = 0;
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
            if self.read_timeout.needs(left) {
                self.stream.set_read_timeout(Some(left))?;
                self.read_timeout.0 = Some(left);
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
        let started = *self.response_started.get_or_insert_with(Instant::now);
        while !remaining.is_empty() {
            let deadline = self.write_pace.deadline(started, self.response_bytes);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            if self.write_timeout.needs(left) {
                self.stream.set_write_timeout(Some(left))?;
                self.write_timeout.0 = Some(left);
            }
            let written = match self.stream.write_vectored(remaining) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                // The timeout may be a little shorter than the deadline; look again.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(error) => return Err(error),
            };
            self.response_bytes += written as u64;
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
