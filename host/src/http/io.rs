//! Buffered reads and writes on one client connection, over TCP or a Unix socket, in TLS
//! or in the clear.
//!
//! Bytes read past the end of one request stay in the buffer for the next, so pipelined
//! requests are never lost.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};
use socket2::Socket;

use crate::tls::TlsFacts;

/// How much one read from the socket asks for.
const READ_CHUNK: usize = 16 * 1024;

/// Read buffers each thread keeps for the connections it wakes next.
const SPARE_BUFFERS_KEPT: usize = 64;
/// Parts of one write that need no allocation: a head, a body chunk and its framing.
const FEW_PARTS: usize = 8;

thread_local! {
    /// Buffers given up by connections that went idle: a connection that waits holds none,
    /// and the next one a thread serves takes one without allocating or zeroing.
    static SPARE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

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

/// A connection's socket, its TLS session if it has one, and its read buffer.
pub struct Io {
    wire: Wire,
    /// On a TLS listener: the session that bytes go through both ways.
    tls: Option<Box<Tls>>,
    /// Reads skip the TLS session until [`Io::end_preamble`]: a PROXY header comes in the
    /// clear before the handshake.
    preamble: bool,
    /// Zeroed once; reads land in `buf[end..]`. Empty while the connection waits with
    /// nothing buffered. On TLS, what it holds is decrypted.
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
}

/// The socket and the clocks of its reads and writes.
struct Wire {
    stream: Socket,
    read_timeout: SocketTimeout,
    write_timeout: SocketTimeout,
    /// How fast responses must drain, and when the current response's first write began and
    /// how much it has written.
    write_pace: Pace,
    response_started: Option<Instant>,
    /// When the client was last seen to have taken its share of the response, and how
    /// much it had taken then.
    drained: Option<(Instant, u64)>,
    /// Bytes written on the socket in all, and when the current response began.
    sent: u64,
    sent_before_response: u64,
    /// The last read filled all the room it was given: more may have arrived with it, which
    /// no edge-triggered wakeup will tell of (see [`crate::idle`]).
    filled: bool,
}

/// A connection's TLS session.
struct Tls {
    session: rustls::ServerConnection,
    /// The first byte the client sent: a letter, where a handshake starts with 0x16, is a
    /// plain HTTP request on the TLS port.
    first_byte: Option<u8>,
    /// Decrypted bytes waiting in the session, as its last look at new records found.
    plaintext: usize,
    /// The client sent its close_notify, or closed the socket.
    closed: bool,
    /// What the handshake settled, once it is done.
    facts: Option<TlsFacts>,
    /// Bytes read before the session began (after a PROXY header), for it to take first.
    early: Vec<u8>,
}

/// The error a TLS connection's read fails with when the client speaks plain HTTP: the
/// connection then speaks plain HTTP too, to say so.
#[derive(Debug, thiserror::Error)]
#[error("a plain HTTP request on a TLS port")]
pub struct PlainHttpOnTlsPort;

impl Io {
    /// `tls` is the session for a connection on a TLS listener; with `preamble`, reads
    /// bypass it until [`Io::end_preamble`].
    pub fn new(
        stream: Socket,
        write_pace: Pace,
        tls: Option<rustls::ServerConnection>,
        preamble: bool,
    ) -> Io {
        Io {
            wire: Wire {
                stream,
                read_timeout: SocketTimeout::default(),
                write_timeout: SocketTimeout::default(),
                write_pace,
                response_started: None,
                drained: None,
                sent: 0,
                sent_before_response: 0,
                filled: false,
            },
            tls: tls.map(|session| {
                Box::new(Tls {
                    session,
                    first_byte: None,
                    plaintext: 0,
                    closed: false,
                    facts: None,
                    early: Vec::new(),
                })
            }),
            preamble,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    /// Resets the write clock for a new response. It starts with the response's first write:
    /// a client that then reads too slowly is cut off, so that it can't hold a worker.
    pub fn start_response(&mut self) {
        self.wire.response_started = None;
        self.wire.drained = None;
        self.wire.sent_before_response = self.wire.sent;
    }

    /// The TLS session that writes go through, and the wire under it: none on a plain
    /// connection, nor while the preamble is read, whose answers go in the clear.
    fn session(&mut self) -> Option<(&mut Tls, &mut Wire)> {
        if self.preamble {
            return None;
        }
        Some((self.tls.as_deref_mut()?, &mut self.wire))
    }

    /// Ends the bytes read in the clear: on a TLS connection, what is buffered after the
    /// preamble goes to the session, as the start of the handshake.
    pub fn end_preamble(&mut self) {
        self.preamble = false;
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.early.extend_from_slice(&self.buf[self.pos..self.end]);
            (self.pos, self.end) = (0, 0);
        }
    }

    /// What the TLS handshake settled, on a TLS connection whose handshake is done.
    pub fn tls(&self) -> Option<&TlsFacts> {
        self.tls.as_ref()?.facts.as_ref()
    }

    /// The bytes read from the socket and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Makes room to hold `bytes` unconsumed bytes in all, growing the buffer to exactly
    /// that if it is smaller.
    pub fn reserve(&mut self, bytes: usize) {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() < bytes {
            self.buf.resize(bytes, 0);
        }
    }

    /// The bytes read and not consumed yet, to rewrite in place.
    pub fn buffered_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.pos..self.end]
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
        loop {
            if let Some(read) = self.fill_until(Some(deadline))? {
                return Ok(read);
            }
        }
    }

    /// Reads what has already arrived, without waiting. `None` means nothing has: the
    /// caller parks the connection until something does.
    pub fn fill_ready(&mut self) -> io::Result<Option<usize>> {
        self.fill_until(None)
    }

    /// Reads into the buffer, waiting until `deadline` if there is one.
    fn fill_until(&mut self, deadline: Option<Instant>) -> io::Result<Option<usize>> {
        self.make_room();
        if self.tls.is_some() && !self.preamble {
            return self.fill_tls(deadline);
        }
        let read = self.wire.read(&mut self.buf[self.end..], deadline)?;
        if let Some(read) = read {
            self.end += read;
        }
        Ok(read)
    }

    /// Reads TLS records until some plaintext comes of them, answering the handshake on
    /// the way. Every decrypted byte goes to the buffer at once, so that a connection parked
    /// until its socket is readable never leaves any in the session.
    fn fill_tls(&mut self, deadline: Option<Instant>) -> io::Result<Option<usize>> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(None);
        };
        loop {
            if tls.plaintext > 0 {
                let wanted = self.end + tls.plaintext;
                if self.buf.len() < wanted {
                    self.buf.resize(wanted, 0);
                }
                let mut read = 0;
                loop {
                    match tls.session.reader().read(&mut self.buf[self.end + read..]) {
                        Ok(0) => break,
                        Ok(more) => read += more,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => return Err(error),
                    }
                }
                tls.plaintext = 0;
                self.end += read;
                if read > 0 {
                    return Ok(Some(read));
                }
            }
            if tls.closed {
                return Ok(Some(0));
            }
            // The handshake's replies, alerts and key updates go out before waiting on more.
            tls.flush(&mut self.wire)?;
            let read = if tls.early.is_empty() {
                let mut reader = WireReader {
                    wire: &mut self.wire,
                    deadline,
                    first_byte: &mut tls.first_byte,
                };
                tls.session.read_tls(&mut reader)
            } else {
                tls.first_byte.get_or_insert(tls.early[0]);
                let read = tls.session.read_tls(&mut &tls.early[..]);
                if let Ok(taken) = read {
                    tls.early.drain(..taken);
                }
                // Not the end of input: the socket has the rest.
                read.map(|taken| taken.max(1))
            };
            match read {
                // The socket closed, with or without a close_notify: the end of input,
                // which the framing of a request cut short tells apart.
                Ok(0) => tls.closed = true,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) => return Err(error),
            }
            match tls.session.process_new_packets() {
                Ok(state) => {
                    tls.plaintext = state.plaintext_bytes_to_read();
                    tls.closed |= state.peer_has_closed();
                }
                Err(error) => {
                    if tls.first_byte.is_some_and(|byte| byte.is_ascii_uppercase()) {
                        // From now on the connection speaks plain HTTP, to answer so; the
                        // alert the session has queued would only garble that.
                        self.tls = None;
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            PlainHttpOnTlsPort,
                        ));
                    }
                    // The alert that says why, if the client still listens.
                    let _ = tls.flush(&mut self.wire);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                }
            }
            if tls.facts.is_none() && !tls.session.is_handshaking() {
                tls.facts = Some(TlsFacts::of(&tls.session));
            }
        }
    }

    /// Like [`Io::fill_ready`], but throws away what it reads, and what was buffered: on a
    /// TLS connection, undecrypted.
    pub fn discard_ready(&mut self) -> io::Result<Option<usize>> {
        self.pos = 0;
        self.end = 0;
        self.make_room();
        self.wire.read(&mut self.buf, None)
    }

    /// Whether input waits: buffered, or arrived in the kernel.
    pub fn input_waiting(&self) -> bool {
        if !self.buffered().is_empty() {
            return true;
        }
        let mut fds = [PollFd::new(&self.wire.stream, PollFlags::IN)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&now)).is_ok_and(|ready| ready > 0)
    }

    /// Whether the client has closed the connection, or reset it, seen without reading.
    /// Like nginx, a client that shut down its sending side counts as gone, whatever it
    /// sent before: HTTP/1.1 clients keep it open while they wait for the response. This is
    /// what wakes a request parked in a queue (`EPOLLRDHUP`), so both agree.
    pub fn peer_gone(&self) -> bool {
        let mut fds = [PollFd::new(&self.wire.stream, PollFlags::RDHUP)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => true,
        }
    }

    /// Whether input may wait in the socket that no wakeup will tell of: the last read
    /// filled all the room it had.
    pub fn maybe_unread(&self) -> bool {
        self.wire.filled
    }

    /// Gives up the read buffer if nothing is in it, before the connection waits.
    pub fn release_buffer(&mut self) {
        if self.pos < self.end || self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        (self.pos, self.end) = (0, 0);
        // One grown for a long head goes back to the allocator.
        if buf.len() == READ_CHUNK {
            SPARE_BUFFERS.with_borrow_mut(|spare| {
                if spare.len() < SPARE_BUFFERS_KEPT {
                    spare.push(buf);
                }
            });
        }
    }

    /// Ensures free space after the buffered bytes: moves them to the front, and grows the
    /// buffer only when it is full of one unfinished head.
    fn make_room(&mut self) {
        if self.buf.is_empty() {
            self.buf = SPARE_BUFFERS
                .with_borrow_mut(Vec::pop)
                .unwrap_or_else(|| vec![0; READ_CHUNK]);
        }
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
        if let Some((tls, wire)) = self.session() {
            // Before the handshake ends there is no one to answer: a 408 for a handshake
            // that timed out would only wait in the session.
            if tls.session.is_handshaking() {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS handshake is not done",
                ));
            }
            for part in parts {
                let mut rest = *part;
                while !rest.is_empty() {
                    let taken = tls.session.writer().write(rest)?;
                    rest = &rest[taken..];
                    // The session holds as much as it will: send it on to make room.
                    if !rest.is_empty() {
                        if taken == 0 && !tls.session.wants_write() {
                            return Err(io::ErrorKind::WriteZero.into());
                        }
                        tls.flush(wire)?;
                    }
                }
            }
            return tls.flush(wire);
        }
        // A response is a few parts, which fit on the stack; more go to the heap.
        let mut few = [io::IoSlice::new(&[]); FEW_PARTS];
        let mut many = Vec::new();
        let mut nonempty = parts.iter().filter(|part| !part.is_empty());
        let mut remaining = if parts.len() <= FEW_PARTS {
            let count = few
                .iter_mut()
                .zip(&mut nonempty)
                .map(|(slot, part)| *slot = io::IoSlice::new(part))
                .count();
            &mut few[..count]
        } else {
            many.extend(nonempty.map(|part| io::IoSlice::new(part)));
            &mut many[..]
        };
        while !remaining.is_empty() {
            let written = self.wire.send(remaining)?;
            io::IoSlice::advance_slices(&mut remaining, written);
        }
        Ok(())
    }

    /// Stops writing: the client sees the end of the response. Closing a socket with
    /// unread input makes the kernel send a reset, which can destroy the response before the
    /// client reads it; so the connection then discards input until the client closes too.
    pub fn shut_write(&mut self) -> io::Result<()> {
        self.close_notify();
        self.wire.stream.shutdown(Shutdown::Write)
    }

    /// On TLS, tells the client the connection ends here (close_notify), so that it can tell
    /// a response that ends with the connection from one cut short.
    pub fn close_notify(&mut self) {
        if let Some((tls, wire)) = self.session()
            && !tls.session.is_handshaking()
        {
            tls.session.send_close_notify();
            let _ = tls.flush(wire);
        }
    }
}

impl AsFd for Io {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wire.stream.as_fd()
    }
}

impl Tls {
    /// Sends what the session has to send: records, handshake messages, alerts.
    fn flush(&mut self, wire: &mut Wire) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(wire)?;
        }
        Ok(())
    }
}

impl Wire {
    /// Reads what has arrived into `into`; with a deadline, waits for something until
    /// then, and fails with `TimedOut` past it. `None` if nothing has arrived, without one.
    fn read(&mut self, into: &mut [u8], deadline: Option<Instant>) -> io::Result<Option<usize>> {
        let read = self.read_once(into, deadline);
        // A read that failed has left nothing to read later: a connection parked after it
        // (to close, say) waits for its next edge.
        self.filled = matches!(read, Ok(Some(read)) if read > 0 && read == into.len());
        read
    }

    fn read_once(
        &mut self,
        into: &mut [u8],
        deadline: Option<Instant>,
    ) -> io::Result<Option<usize>> {
        if let Some(read) = receive_ready(&self.stream, into)? {
            return Ok(Some(read));
        }
        let Some(deadline) = deadline else {
            return Ok(None);
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            if self.read_timeout.needs(left) {
                self.stream.set_read_timeout(Some(left))?;
                self.read_timeout.0 = Some(left);
            }
            match crate::waiting::counted(|| (&self.stream).read(into)) {
                Ok(read) => return Ok(Some(read)),
                // The timeout may be a little shorter than the deadline; look again.
                Err(error) if is_retry(&error) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes some of `parts`, at least one byte, waiting for the client to take its share
    /// when the socket's buffer is full, at the response's pace.
    fn send(&mut self, parts: &[io::IoSlice]) -> io::Result<usize> {
        let started = *self.response_started.get_or_insert_with(Instant::now);
        loop {
            let sent = match send_ready(&self.stream, parts)? {
                Some(sent) => Ok(sent),
                None => {
                    // The kernel's buffer is full: the client must have taken its share.
                    let deadline = self.drain_deadline(started);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    if self.write_timeout.needs(left) {
                        self.stream.set_write_timeout(Some(left))?;
                        self.write_timeout.0 = Some(left);
                    }
                    crate::waiting::counted(|| (&self.stream).write_vectored(parts))
                }
            };
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.sent += written as u64;
                    return Ok(written);
                }
                // The timeout may be a little shorter than the deadline; look again.
                Err(error) if is_retry(&error) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// When a response blocked on a full socket must have moved on. The client's progress
    /// is what it has taken, not what the kernel took into its buffers on its behalf, and it
    /// must take `min_rate × patience` bytes in every `patience`: credit is not banked, or
    /// the megabytes a fast start or the kernel's buffers account for would buy a client
    /// that then reads nothing hours at 500 bytes a second (nginx's `send_timeout` is the
    /// same rule, with a window and no minimum).
    fn drain_deadline(&mut self, started: Instant) -> Instant {
        // The kernel's queue may still hold the end of an earlier response on this
        // connection: only what the client took beyond that is this response's.
        let delivered = self
            .sent
            .saturating_sub(unacknowledged(&self.stream))
            .saturating_sub(self.sent_before_response);
        let window = self.write_pace.patience;
        let step = self
            .write_pace
            .min_rate
            .saturating_mul(window.as_secs().max(1));
        let (since, taken) = *self.drained.get_or_insert((started, 0));
        if delivered >= taken.saturating_add(step) {
            let now = Instant::now();
            self.drained = Some((now, delivered));
            return now + window;
        }
        since + window
    }
}

/// The TLS session's way out to the socket.
impl Write for Wire {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.send(&[io::IoSlice::new(bytes)])
    }

    fn write_vectored(&mut self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.send(parts)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The TLS session's way in from the socket: `WouldBlock` when nothing has arrived and
/// there is no deadline to wait until.
struct WireReader<'a> {
    wire: &'a mut Wire,
    deadline: Option<Instant>,
    first_byte: &'a mut Option<u8>,
}

impl Read for WireReader<'_> {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        match self.wire.read(into, self.deadline)? {
            Some(read) => {
                if self.first_byte.is_none() && read > 0 {
                    *self.first_byte = Some(into[0]);
                }
                Ok(read)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Bytes written to `stream` that its peer has not acknowledged yet (`SIOCOUTQ`): still in
/// the kernel's send queue, or on their way. 0 if the kernel won't say.
fn unacknowledged(stream: &Socket) -> u64 {
    /// `SIOCOUTQ`, which Linux spells `TIOCOUTQ` for sockets too.
    const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;
    // SAFETY: SIOCOUTQ writes one C int, which is what the getter reserves and reads.
    let queued = unsafe {
        rustix::ioctl::ioctl(
            stream,
            rustix::ioctl::Getter::<SIOCOUTQ, std::ffi::c_int>::new(),
        )
    };
    queued.map_or(0, |queued| u64::try_from(queued).unwrap_or(0))
}

/// Whether a socket call that waited with a timeout should just be made again: it timed
/// out a little before the deadline, or a signal interrupted it.
fn is_retry(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// One write that doesn't wait, whatever the socket's mode; `None` if the socket's buffer
/// is full.
fn send_ready(stream: &Socket, parts: &[io::IoSlice]) -> io::Result<Option<usize>> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    without_waiting(|| {
        rustix::net::sendmsg(stream, parts, &mut SendAncillaryBuffer::default(), flags)
    })
}

/// One read that doesn't wait, whatever the socket's mode; `None` if nothing has arrived.
fn receive_ready(stream: &Socket, into: &mut [u8]) -> io::Result<Option<usize>> {
    without_waiting(|| {
        rustix::net::recv(stream, &mut *into, RecvFlags::DONTWAIT).map(|(read, _)| read)
    })
}

/// Runs a socket call made with MSG_DONTWAIT: `None` where it would have waited.
fn without_waiting(
    mut call: impl FnMut() -> rustix::io::Result<usize>,
) -> io::Result<Option<usize>> {
    loop {
        match call() {
            Ok(moved) => return Ok(Some(moved)),
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}
