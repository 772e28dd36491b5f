//! One client connection: read a request head, hand the request to a worker, answer for
//! whatever went wrong, and keep the connection alive or close it.
//!
//! A connection runs only while it has bytes to act on. When it would wait, for the next
//! request or the rest of a head or the client's close, it hands itself back with a
//! deadline, and the server parks it without a thread.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::access_log;
use crate::app::{Failure, Request};
use crate::environ::{self, ConnectionInfo, Proxies, RequestHead};
use crate::http::Exchange;
use crate::http::Limits;
use crate::http::body::{BodyDecoder, BodyError};
use crate::http::error::ErrorResponse;
use crate::http::error::RequestError;
use crate::http::exchange::Outcome;
use crate::http::io::{Io, Pace, PlainHttpOnTlsPort};
use crate::http::proxy;
use crate::http::request::{self, BodyKind, Framing};
use crate::http::response::write_error;
use crate::lifecycle::{IDLE_GRACE, Lifecycle, Registration};
use crate::listener::Peer;
use crate::metrics::metrics;
use crate::pool::{Lease, Pool, Refusal, Ticket};
use crate::router::{CurrentRouter, Route};

/// Header slots kept on the stack; a larger `--limit-request-fields` uses the heap.
const INLINE_HEADER_SLOTS: usize = 128;

/// How long, and for how many bytes, a closing connection keeps reading what the client
/// still sends.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

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
    /// Request bodies of this many bytes or fewer, with a Content-Length, are read whole
    /// before the request takes an instance.
    pub body_buffer: u64,
    pub multithread: bool,
    /// The proxies whose forwarding headers are believed.
    pub proxies: Arc<Proxies>,
    /// On TLS listeners, the configuration new connections get.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Which PROXY protocol headers a connection may start with, and from whom.
    pub proxy_protocol: proxy::Mode,
    pub proxy_allow: Arc<Proxies>,
}

/// A client connection, between the moments it has something to do.
pub struct Connection {
    /// Boxed, as the state is: it moves with every request, into the exchange and back.
    io: Box<Io>,
    /// Boxed: a connection moves from step to step of its state machine, and through the
    /// idle set, several times a request; inline, each move copied its 700 bytes (with the
    /// socket's side, 2.4k instructions of memcpy a keep-alive request, 8%, measured with
    /// callgrind).
    state: Box<State>,
}

/// Everything of a connection but its socket, which requests borrow while they run.
struct State {
    peer: Peer,
    info: ConnectionInfo,
    registration: Registration,
    phase: Phase,
    /// The last request's strings, for the next request to refill.
    spare: Option<RequestHead>,
    /// A PROXY protocol header may come before the first request.
    preamble: bool,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.recycle();
        }
    }
}

enum Phase {
    /// Waiting for a request head, or for the rest of one.
    Head(HeadProgress),
    /// The last response is out and the write side shut; input is read and thrown away
    /// until the client closes, `until` at most.
    Closing { until: Instant, discarded: usize },
    /// A request waits in its app's queue for a worker.
    Queued(Box<Queued>),
    /// A request's small body is arriving, to be read whole before the request takes an
    /// instance, so that a slow upload never holds one.
    Body(Box<Buffering>),
}

/// A request whose body is being read whole before it goes to its app.
struct Buffering {
    request: Routed,
    /// When the body last came a window's worth further, and how much had arrived then:
    /// a trickle must keep up the pace in every window, with no credit banked.
    checkpoint: (Instant, u64),
    /// When the rest must have arrived, at the body's pace.
    until: Instant,
    /// Its share of the bodies being read whole, given back when it is dropped.
    _budget: BodyBudget,
}

/// Bytes of request bodies being read whole at once, across all connections: past
/// [`BUFFERED_BODIES`], bodies stream to their app as they arrive instead, so that slow
/// uploads cannot make the server hold gigabytes.
static BUFFERED: AtomicU64 = AtomicU64::new(0);

/// The most bytes of request bodies read whole at once.
const BUFFERED_BODIES: u64 = 256 << 20;

/// A body's share of [`BUFFERED_BODIES`].
struct BodyBudget(u64);

impl BodyBudget {
    fn take(bytes: u64) -> Option<BodyBudget> {
        BUFFERED
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes)
                    .filter(|&total| total <= BUFFERED_BODIES)
            })
            .ok()
            .map(|_| BodyBudget(bytes))
    }
}

impl Drop for BodyBudget {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// A request routed to its app and waiting for one of its workers.
struct Queued {
    request: Routed,
    pool: Arc<Pool>,
    /// The request's place in the queue.
    ticket: Arc<Ticket>,
    /// The worker handed to it, when one is.
    lease: Option<Lease>,
}

/// A request on its way to an app: everything the connection parsed and the route chose.
struct Routed {
    id: u64,
    started: Instant,
    head: RequestHead,
    framing: Framing,
    route: Route,
}

struct HeadProgress {
    /// When the connection began to wait for this head.
    idle_since: Instant,
    /// A connection that sends nothing may wait until then.
    idle_until: Instant,
    /// Set by the head's first byte: the whole head must be in by then.
    head_deadline: Option<Instant>,
    /// Buffered bytes already known not to end the head.
    scanned: usize,
}

/// What a connection needs next.
pub enum Next {
    /// To wait until it is readable, or until the deadline passes.
    Wait(Connection, Instant),
    /// To wait in its app's queue for a worker (see [`Connection::queue`]), until the
    /// deadline passes.
    Queue(Connection, Instant),
    Closed,
}

impl Connection {
    /// Takes on a new client connection, which then waits for its first request. `local` is
    /// the address it arrived on; `None` on a Unix socket.
    pub fn open(
        socket: socket2::Socket,
        peer: Peer,
        local: Option<SocketAddr>,
        config: &ConnectionConfig,
        lifecycle: &Arc<Lifecycle>,
    ) -> Next {
        let session = match config
            .tls
            .as_deref()
            .map(crate::tls::Tls::session)
            .transpose()
        {
            Ok(session) => session,
            Err(error) => {
                tracing::error!("cannot start a TLS session: {error}");
                return Next::Closed;
            }
        };
        let Some(registration) = lifecycle.register() else {
            return Next::Closed;
        };
        let scheme = if session.is_some() { "https" } else { "http" };
        let preamble = config.proxy_protocol != proxy::Mode::Off;
        let state = Box::new(State {
            peer,
            info: ConnectionInfo::new(local, peer, scheme, config.multithread, &config.proxies),
            registration,
            phase: Phase::Head(HeadProgress::idle_for(config.timeouts.head)),
            spare: None,
            preamble,
        });
        Connection {
            io: Box::new(Io::new(socket, config.body_pace, session, preamble)),
            state,
        }
        .wait()
    }

    /// Does what the connection's input allows: serves the requests in it, or reads on
    /// towards the close.
    pub fn on_readable(self, router: &CurrentRouter, config: &ConnectionConfig) -> Next {
        match self.state.phase {
            Phase::Head(_) => self.serve(router, config),
            Phase::Closing { .. } => self.linger(),
            Phase::Queued(_) => self.resume(router, config),
            Phase::Body(_) => match self.buffer_body(config) {
                Ran::KeepAlive(connection) => connection.serve(router, config),
                Ran::Ended(next) => next,
            },
        }
    }

    /// Whether input may wait in the socket that no wakeup will tell of (see
    /// [`crate::idle::IdleSet::park`]).
    pub fn maybe_unread(&self) -> bool {
        self.io.maybe_unread()
    }

    /// Whether a passed deadline owes the client an answer, which takes a write.
    pub fn owes_answer_at_deadline(&self) -> bool {
        matches!(
            self.state.phase,
            Phase::Head(HeadProgress {
                head_deadline: Some(_),
                ..
            }) | Phase::Queued(_)
                | Phase::Body(_)
        )
    }

    /// How little is lost by closing this connection to make room for a new one: 0 for an
    /// idle keep-alive connection, whose client reconnects as a matter of course, 1 for one
    /// that has not sent a whole head; `None` for one with a request under way, or
    /// closing. Ties go to the connection whose wait ends first.
    pub fn eviction_rank(&self) -> Option<u8> {
        // One whose input has arrived has a request on its way: closing it now would reset
        // it. A thread will take it, at its deadline if not before (see
        // [`crate::idle::IdleSet::expired`]).
        if self.io.input_waiting() {
            return None;
        }
        match &self.state.phase {
            Phase::Head(progress)
                if progress.head_deadline.is_none() && self.state.spare.is_some() =>
            {
                Some(0)
            }
            Phase::Head(_) => Some(1),
            // A body being read whole that has stalled holds memory and a slot: it goes
            // last, but it goes.
            Phase::Body(_) => Some(2),
            Phase::Closing { .. } | Phase::Queued(_) => None,
        }
    }

    /// Whether the connection may be closed as the server stops: it has waited for its next
    /// request for the whole grace, and nothing of one has arrived (`Some`, for
    /// [`crate::idle::IdleSet::evict`]). The grace runs from its last response, so that a
    /// client answered late in the shutdown may still ask again and get its 503.
    pub fn idle_at_stop(&self) -> Option<u8> {
        match &self.state.phase {
            Phase::Head(progress)
                if progress.head_deadline.is_none()
                    && progress.idle_since.elapsed() >= IDLE_GRACE
                    && !self.io.input_waiting() =>
            {
                Some(0)
            }
            _ => None,
        }
    }

    /// The queue a request waits in, and the cell its ticket goes in, for the server to
    /// queue it with a [`Waiter`] of its own.
    pub fn queue(&self) -> Option<(Arc<Pool>, Arc<Ticket>)> {
        match &self.state.phase {
            Phase::Queued(queued) => Some((queued.pool.clone(), queued.ticket.clone())),
            _ => None,
        }
    }

    /// Gives a waiting request the worker it waited for; it runs when the connection is
    /// next served. A connection whose request does not wait gives it back.
    pub fn hand(&mut self, lease: Lease) -> Result<(), Lease> {
        match &mut self.state.phase {
            Phase::Queued(queued) if queued.lease.is_none() => {
                queued.lease = Some(lease);
                Ok(())
            }
            _ => Err(lease),
        }
    }

    /// Answers a request that found its app's queue full, and closes.
    pub fn refuse_queue_full(self) -> Next {
        self.refuse_queued(Refusal::QueueFull)
    }

    /// Ends a wait whose deadline has passed: a 408 for a head that began, a 503 for a
    /// request that waited in its queue too long, silence for an idle connection.
    pub fn on_deadline(mut self) -> Next {
        if let Phase::Queued(queued) = &self.state.phase {
            queued.pool.withdraw(&queued.ticket, Refusal::QueueTimeout);
            return self.refuse_queued(Refusal::QueueTimeout);
        }
        if let Phase::Body(_) = &self.state.phase {
            return self.end_buffering(
                Some(ErrorResponse::Timeout),
                "the body did not arrive in time",
            );
        }
        if !self.owes_answer_at_deadline() {
            return Next::Closed;
        }
        tracing::debug!(peer = %self.state.peer, "request head not received in time");
        self.io.start_response();
        let _ = write_error(&mut self.io, &ErrorResponse::Timeout, None);
        self.close()
    }

    /// Serves requests until the connection must wait or close.
    fn serve(self, router: &CurrentRouter, config: &ConnectionConfig) -> Next {
        let Connection { mut io, mut state } = self;
        let peer = state.peer;
        loop {
            let Phase::Head(progress) = &mut state.phase else {
                unreachable!("only a connection waiting for a head serves requests");
            };
            // Whatever answers this request, its writes run on a clock of their own.
            io.start_response();
            let read = match state.preamble {
                true => read_preamble(&mut io, progress, config, &mut state.peer),
                false => Preamble::Done(None),
            };
            let read = match read {
                Preamble::Done(client) => {
                    if let Some((client, reached)) = client {
                        state.info = state.info.for_client(reached, client, &config.proxies);
                    }
                    state.preamble = false;
                    read_head(&mut io, progress, config, &state.info, &mut state.spare)
                }
                Preamble::Head(read) => read,
            };
            let (mut head, framing) = match read {
                HeadRead::Complete(request) => request,
                HeadRead::Pending => return Connection { io, state }.wait(),
                HeadRead::Closed => return Next::Closed,
                HeadRead::Invalid(error) => {
                    let (code, _) = error.status();
                    tracing::warn!(%peer, "rejected request with {code}: {error}");
                    let _ = write_error(&mut io, &ErrorResponse::Request(error), None);
                    return Connection { io, state }.close();
                }
                HeadRead::Failed(error) => {
                    tracing::debug!(%peer, "connection failed: {error}");
                    return Next::Closed;
                }
            };
            if !state.registration.begin_request() {
                let answer = ErrorResponse::Stopping;
                let sent = write_error(&mut io, &answer, Some(framing));
                let code = sent.is_ok().then_some(answer.status().0);
                access_log::record(&head, code, 0, Duration::ZERO);
                return Connection { io, state }.close();
            }
            let router = router.get();
            let Some((mount, route)) = router.route(&head.server_name, &head.path) else {
                let refusal = ErrorResponse::NoApp;
                return turn_away(Connection { io, state }, &head, framing, &refusal);
            };
            // The app's own limit, known only now that the route is; chunked bodies are held
            // to it as they arrive.
            if let BodyKind::Length(length) = framing.body
                && route.max_body.is_some_and(|max| length > max)
            {
                let limit = route.max_body.unwrap_or_default();
                tracing::warn!(%peer, "rejected request with 413: a body of {length} bytes is over the limit of {limit} bytes for this app (its max-body-size, or --max-body-size)");
                let refusal = ErrorResponse::Request(RequestError::BodyTooLarge);
                return turn_away(Connection { io, state }, &head, framing, &refusal);
            }
            head.mount = mount;
            let request = Routed {
                id: NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed),
                started: Instant::now(),
                head,
                framing,
                route: route.clone(),
            };
            metrics().request_started();
            match (Connection { io, state }).dispatch(request, config) {
                Ran::KeepAlive(Connection {
                    io: kept,
                    state: kept_state,
                }) => (io, state) = (kept, kept_state),
                Ran::Ended(next) => return next,
            }
            // Pipelined requests are served at once; otherwise a read now would find nothing.
            if io.buffered().is_empty() {
                return Connection { io, state }.wait();
            }
        }
    }

    /// Sends a routed request on its way: reads its small body first, then runs it on a free
    /// worker, or queues it for one.
    fn dispatch(self, request: Routed, config: &ConnectionConfig) -> Ran {
        let Connection { mut io, mut state } = self;
        if let BodyKind::Length(length) = request.framing.body
            && (1..=config.body_buffer).contains(&length)
            && (io.buffered().len() as u64) < length
            && let Some(budget) = BodyBudget::take(length)
        {
            let mut request = request;
            // The client waits for this before it sends the body; the app will not have to.
            if request.framing.expect_continue {
                request.framing.expect_continue = false;
                if io
                    .write_all_vectored(&[b"HTTP/1.1 100 Continue\r\n\r\n"])
                    .is_err()
                {
                    let connection = Connection { io, state };
                    return Ran::Ended(connection.abandon(&request));
                }
                io.start_response();
            }
            // Room for the whole body at once, rather than doubling towards it.
            io.reserve(usize::try_from(length).unwrap_or(usize::MAX));
            let since = Instant::now();
            state.phase = Phase::Body(Box::new(Buffering {
                request,
                checkpoint: (since, 0),
                until: since + config.body_pace.patience,
                _budget: budget,
            }));
            return Connection { io, state }.buffer_body(config);
        }
        let pool = request.route.pool.get();
        let Some(lease) = pool.checkout() else {
            // Every worker is busy: wait for one without holding this thread.
            let deadline = Instant::now() + pool.queue_policy().timeout;
            state.phase = Phase::Queued(Box::new(Queued {
                request,
                pool,
                ticket: Arc::default(),
                lease: None,
            }));
            return Ran::Ended(Next::Queue(Connection { io, state }, deadline));
        };
        drop(pool);
        Connection { io, state }.run(request, lease, config)
    }

    /// Reads what has arrived of a body being buffered; once it is whole, sends the request
    /// on, and until then waits for more without a thread.
    fn buffer_body(mut self, config: &ConnectionConfig) -> Ran {
        loop {
            let Phase::Body(buffering) = &mut self.state.phase else {
                unreachable!("only a connection reading a body buffers it");
            };
            let BodyKind::Length(length) = buffering.request.framing.body else {
                unreachable!("only bodies of a known length are buffered");
            };
            let arrived = self.io.buffered().len() as u64;
            if arrived >= length {
                let phase = std::mem::replace(
                    &mut self.state.phase,
                    Phase::Head(HeadProgress::idle_for(Duration::ZERO)),
                );
                let Phase::Body(buffering) = phase else {
                    unreachable!("checked above");
                };
                return self.dispatch(buffering.request, config);
            }
            let window = config.body_pace.patience;
            let step = config
                .body_pace
                .min_rate
                .saturating_mul(window.as_secs().max(1));
            if arrived >= buffering.checkpoint.1.saturating_add(step) {
                buffering.checkpoint = (Instant::now(), arrived);
            }
            buffering.until = buffering.checkpoint.0 + window;
            match self.io.fill_ready() {
                Ok(Some(0)) | Err(_) => {
                    return Ran::Ended(self.end_buffering(None, "the client left mid-body"));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ran::Ended(self.wait()),
            }
        }
    }

    /// Ends a request whose body did not arrive whole: answers `status`, if there is one,
    /// and closes.
    fn end_buffering(mut self, status: Option<ErrorResponse>, why: &str) -> Next {
        let phase = std::mem::replace(
            &mut self.state.phase,
            Phase::Head(HeadProgress::idle_for(Duration::ZERO)),
        );
        let Phase::Body(buffering) = phase else {
            unreachable!("only a connection reading a body ends it");
        };
        let request = buffering.request;
        tracing::info!(app = %request.route.metrics.app().0, request = request.id, "request body not received: {why}");
        let Some(answer) = status else {
            return self.abandon(&request);
        };
        self.io.start_response();
        let sent = write_error(&mut self.io, &answer, Some(request.framing));
        finish_refused(&request, sent.is_ok().then_some(answer.status().0));
        self.state.registration.end_request();
        self.close()
    }

    /// Drops a request whose client has gone, with nothing to answer.
    fn abandon(mut self, request: &Routed) -> Next {
        finish_refused(request, None);
        self.state.registration.end_request();
        Next::Closed
    }

    /// Runs a request on the worker it got, and readies the connection for the next
    /// request, or closes it.
    fn run(self, request: Routed, lease: Lease, config: &ConnectionConfig) -> Ran {
        let Connection { io, mut state } = self;
        let (io, after, strings) = handle(io, request, lease, config);
        // For the next request, or, once the connection is dropped, the thread's next new
        // connection.
        state.spare = Some(strings);
        match after {
            // A stopping server keeps the connection too: the client may have sent its next
            // request already, which then gets 503 and `Connection: close` rather than a
            // close that loses it. An idle one is closed after the grace.
            Outcome::KeepAlive => state.registration.end_request(),
            Outcome::Ended => return Ran::Ended(Connection { io, state }.close_ended()),
            Outcome::Close => return Ran::Ended(Connection { io, state }.close()),
        }
        state.phase = Phase::Head(HeadProgress::idle_for(config.timeouts.keep_alive));
        Ran::KeepAlive(Connection { io, state })
    }

    /// Goes on with a queued request: runs it on the worker handed to it, or, woken without
    /// one, drops it, since its client hung up.
    fn resume(mut self, router: &CurrentRouter, config: &ConnectionConfig) -> Next {
        let phase = std::mem::replace(
            &mut self.state.phase,
            Phase::Head(HeadProgress::idle_for(Duration::ZERO)),
        );
        let Phase::Queued(queued) = phase else {
            unreachable!("only a queued connection resumes");
        };
        let Queued {
            request,
            pool,
            ticket,
            lease,
        } = *queued;
        match lease {
            Some(lease) if !self.io.peer_gone() => {
                return match self.run(request, lease, config) {
                    Ran::KeepAlive(connection) => connection.serve(router, config),
                    Ran::Ended(next) => next,
                };
            }
            // A worker came, but the client had left: it goes to the next request.
            Some(lease) => {
                drop(lease);
                pool.refused(Refusal::ClientGone);
            }
            // Woken by the client hanging up: out of the queue, unless a worker is on its
            // way, which will find the request gone and go on to the next.
            None => pool.withdraw(&ticket, Refusal::ClientGone),
        }
        let app = &request.route.metrics.app().0;
        tracing::info!(%app, request = request.id, "client left while its request waited for an instance");
        finish_refused(&request, None);
        Next::Closed
    }

    /// Answers a queued request that gets no worker, and closes.
    fn refuse_queued(mut self, refusal: Refusal) -> Next {
        let phase = std::mem::replace(
            &mut self.state.phase,
            Phase::Head(HeadProgress::idle_for(Duration::ZERO)),
        );
        let Phase::Queued(queued) = phase else {
            unreachable!("only a queued connection is refused");
        };
        let request = queued.request;
        let why = match refusal {
            Refusal::QueueFull => "its queue is full",
            _ => "no instance came free within the queue timeout",
        };
        let app = &request.route.metrics.app().0;
        tracing::warn!(%app, request = request.id, "turned a request away with 503: {why}");
        self.io.start_response();
        let answer = ErrorResponse::Busy;
        let sent = write_error(&mut self.io, &answer, Some(request.framing));
        finish_refused(&request, sent.is_ok().then_some(answer.status().0));
        self.state.registration.end_request();
        // A request without a body was read whole: the connection closes at once unless more
        // came, rather than lingering for a client that may not read its 503 for a while,
        // with a connection slot that other apps' clients need.
        if matches!(request.framing.body, BodyKind::Length(0)) {
            self.close_ended()
        } else {
            self.close()
        }
    }

    /// Waits for what the phase waits for, until its deadline. A head trickling in is
    /// answered at once past its deadline, so it can't outlast it between two of the
    /// server's checks; the other deadlines were just set.
    fn wait(mut self) -> Next {
        self.io.release_buffer();
        let deadline = match &self.state.phase {
            Phase::Head(progress) => progress.head_deadline.unwrap_or(progress.idle_until),
            Phase::Closing { until, .. } => *until,
            Phase::Body(buffering) => buffering.until,
            Phase::Queued(_) => unreachable!("a queued request waits in its queue"),
        };
        if self.owes_answer_at_deadline() && deadline <= Instant::now() {
            return self.on_deadline();
        }
        Next::Wait(self, deadline)
    }

    /// Closes the connection without losing the last response: stops writing, then waits for
    /// the client to close (see [`Io::shut_write`]).
    fn close(mut self) -> Next {
        if self.io.shut_write().is_err() {
            return Next::Closed;
        }
        self.state.phase = Phase::Closing {
            until: Instant::now() + LINGER_TIME,
            discarded: 0,
        };
        self.wait()
    }

    /// Closes a connection whose client asked for the close and sent its whole request: at
    /// once, since nothing more should come. Input that has come all the same sends it to the
    /// lingering close instead, so that this close isn't a reset that loses the response.
    fn close_ended(mut self) -> Next {
        if self.io.buffered().is_empty() && matches!(self.io.discard_ready(), Ok(None | Some(0))) {
            self.io.close_notify();
            self.io.release_buffer();
            return Next::Closed;
        }
        self.close()
    }

    /// Throws away what the closing client still sends, until it closes.
    fn linger(mut self) -> Next {
        let Phase::Closing { discarded, .. } = &mut self.state.phase else {
            unreachable!("only a closing connection lingers");
        };
        loop {
            match self.io.discard_ready() {
                Ok(Some(0)) | Err(_) => return Next::Closed,
                Ok(Some(read)) => {
                    *discarded += read;
                    if *discarded >= LINGER_BYTES {
                        return Next::Closed;
                    }
                }
                Ok(None) => return self.wait(),
            }
        }
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl HeadProgress {
    fn idle_for(wait: Duration) -> HeadProgress {
        let now = Instant::now();
        HeadProgress {
            idle_since: now,
            idle_until: now + wait,
            head_deadline: None,
            scanned: 0,
        }
    }
}

/// A connection after its request ran: ready for the next one, or done with.
enum Ran {
    KeepAlive(Connection),
    Ended(Next),
}

/// Answers a request that no app sees with `refusal`, and closes: its body, unread, rules
/// out keeping the connection.
fn turn_away(
    mut connection: Connection,
    head: &RequestHead,
    framing: Framing,
    refusal: &ErrorResponse,
) -> Next {
    access_log::record(head, Some(refusal.status().0), 0, Duration::ZERO);
    let _ = write_error(&mut connection.io, refusal, Some(framing));
    connection.state.registration.end_request();
    connection.close()
}

/// How reading a connection's PROXY header went.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per connection, and moved into the head's result at once"
)]
enum Preamble {
    /// It is read, or there is none; with the client and the address it reached, if the
    /// header names them.
    Done(Option<(SocketAddr, SocketAddr)>),
    /// What to do instead of reading the head.
    Head(HeadRead),
}

/// Reads the PROXY protocol header a connection may start with (Gunicorn's rules: it may
/// be left out, and only `--proxy-allow-from` peers may send one), without waiting for
/// more than has arrived.
fn read_preamble(
    io: &mut Io,
    progress: &mut HeadProgress,
    config: &ConnectionConfig,
    peer: &mut Peer,
) -> Preamble {
    let allowed = match *peer {
        Peer::Ip(address) => config.proxy_allow.trusts(address.ip()),
        // As for forwarding headers: a Unix socket's mode says who may connect.
        Peer::Local => true,
    };
    loop {
        if !io.buffered().is_empty() {
            // The header is part of the head: its first byte starts the head's clock.
            progress
                .head_deadline
                .get_or_insert_with(|| Instant::now() + config.timeouts.head);
        }
        let found = match proxy::parse(io.buffered(), config.proxy_protocol, allowed) {
            proxy::Preamble::Started => {
                return Preamble::Head(HeadRead::Invalid(RequestError::ForbiddenProxyHeader));
            }
            proxy::Preamble::Invalid(why) => {
                return Preamble::Head(HeadRead::Invalid(RequestError::InvalidProxyHeader(why)));
            }
            proxy::Preamble::Absent => None,
            proxy::Preamble::Header { length, addresses } => {
                io.consume(length);
                Some(addresses)
            }
            proxy::Preamble::NeedMore => match io.fill_ready() {
                Ok(Some(0)) => return Preamble::Head(HeadRead::Closed),
                Ok(Some(_)) => continue,
                Ok(None) => return Preamble::Head(HeadRead::Pending),
                Err(error) => return Preamble::Head(HeadRead::Failed(error)),
            },
        };
        io.end_preamble();
        let client = found.flatten();
        if let Some((client, _)) = client {
            *peer = Peer::Ip(client);
        }
        return Preamble::Done(client);
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request; boxing would allocate each time"
)]
enum HeadRead {
    Complete((RequestHead, Framing)),
    /// The head has not (all) arrived yet.
    Pending,
    /// The client closed between requests.
    Closed,
    Invalid(RequestError),
    Failed(io::Error),
}

/// Reads the next request head from what has arrived, without waiting for more.
fn read_head(
    io: &mut Io,
    progress: &mut HeadProgress,
    config: &ConnectionConfig,
    info: &ConnectionInfo,
    spare: &mut Option<RequestHead>,
) -> HeadRead {
    loop {
        let arrived = io.buffered().len();
        if arrived > 0 {
            progress
                .head_deadline
                .get_or_insert_with(|| Instant::now() + config.timeouts.head);
            if worth_parsing(io.buffered(), progress.scanned, &config.limits) {
                request::serve_higher_minor_as_1_1(io.buffered_mut());
                let buffered = io.buffered();
                let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADER_SLOTS];
                let mut heap = Vec::new();
                let slots = if config.limits.fields <= INLINE_HEADER_SLOTS {
                    &mut inline[..config.limits.fields]
                } else {
                    heap.resize(config.limits.fields, httparse::EMPTY_HEADER);
                    &mut heap[..]
                };
                match request::parse(buffered, slots, &config.limits) {
                    Err(error) => return HeadRead::Invalid(error),
                    Ok(Some((head, len))) => {
                        let request = environ::build(&head, info, io.tls(), spare.take());
                        let request = (request, head.framing);
                        io.consume(len);
                        return HeadRead::Complete(request);
                    }
                    Ok(None) => {}
                }
            }
            progress.scanned = arrived;
        }
        match io.fill_ready() {
            Ok(Some(0)) if io.buffered().is_empty() => return HeadRead::Closed,
            Ok(Some(0)) => {
                // The client left before its head was whole: nothing to answer, nothing
                // refused (Gunicorn's NoMoreData).
                tracing::debug!("client closed the connection before its request head ended");
                return HeadRead::Closed;
            }
            Ok(Some(_)) => {}
            Ok(None) => return HeadRead::Pending,
            Err(error)
                if error
                    .get_ref()
                    .is_some_and(|why| why.is::<PlainHttpOnTlsPort>()) =>
            {
                return HeadRead::Invalid(RequestError::PlainHttpOnTlsPort);
            }
            Err(error) => return HeadRead::Failed(error),
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

/// Runs one request through a worker and finishes its response. Returns the connection, how
/// it goes on, and the request's strings for reuse.
fn handle(
    io: Box<Io>,
    request: Routed,
    lease: Lease,
    config: &ConnectionConfig,
) -> (Box<Io>, Outcome, RequestHead) {
    let Routed {
        id: request_id,
        started,
        head,
        framing,
        route,
    } = request;
    let route = &route;
    let body = BodyDecoder::new(
        framing.body,
        config.limits,
        route.max_body,
        config.body_pace,
    );
    let request = Request {
        id: request_id,
        head,
        exchange: Exchange::new(io, framing, body),
    };
    // The worker goes back to the pool at the end of this statement, before the connection
    // writes a whole body to a client that may be slow.
    let (app, (request, result)) = {
        let mut worker = lease;
        worker.serve_here();
        (worker.name(), worker.call(request))
    };
    let Request { head, exchange, .. } = request;
    let request = RequestLog {
        app: &app,
        id: request_id,
        ran_for: started.elapsed(),
    };
    let ended = exchange.end(|exchange| error_response(&request, exchange, result));
    access_log::record(
        &head,
        ended.status,
        ended.body_bytes_sent,
        started.elapsed(),
    );
    route.metrics.request_finished(
        &head.method,
        ended.status.unwrap_or(0),
        started.elapsed(),
        ended.body_bytes_read,
        ended.body_bytes_sent,
    );
    (ended.io, ended.outcome, head)
}

/// Logs and counts a request that got no worker: `code` is what it was answered, if
/// anything.
fn finish_refused(request: &Routed, code: Option<u16>) {
    access_log::record(&request.head, code, 0, request.started.elapsed());
    request.route.metrics.request_finished(
        &request.head.method,
        code.unwrap_or(0),
        request.started.elapsed(),
        0,
        0,
    );
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
) -> Option<ErrorResponse> {
    let RequestLog { app, id, ran_for } = *request;
    if let Some(BodyError::Invalid(error)) = exchange.body_failed() {
        tracing::warn!(app, request = id, "bad request body: {error}");
        return Some(ErrorResponse::Request(error.clone()));
    }
    let failure = result.err();
    if let Some(
        failure @ (Failure::Trap(_)
        | Failure::Timeout(_)
        | Failure::StreamTimeout(_)
        | Failure::MemoryCap(_)
        | Failure::Unavailable(_)),
    ) = &failure
    {
        tracing::error!(app, request = id, ?ran_for, "app {failure}");
        return Some(failure.response());
    }
    if let Some(violation) = exchange.violation() {
        tracing::error!(
            app,
            request = id,
            "app broke the WSGI contract: {violation}"
        );
        return Some(ErrorResponse::AppFailed);
    }
    if let Some(error) = exchange.body_failed() {
        // The app's own error, if any, only followed from the missing body.
        tracing::info!(app, request = id, "request body not received: {error}");
        return match error {
            BodyError::Io(error) if is_timeout(error) => Some(ErrorResponse::Timeout),
            // The client closed its side mid-body: it is gone, and gets nothing (the access
            // line's status is `-`).
            BodyError::Truncated => None,
            _ => Some(ErrorResponse::BadBody),
        };
    }
    if let Some(failure) = &failure {
        tracing::error!(app, request = id, "app {failure}");
        return Some(failure.response());
    }
    if !exchange.head_sent() {
        // The app returned without any response; the guest bindings prevent this, but a
        // native app might not.
        tracing::error!(app, request = id, "app returned without a response");
        return Some(ErrorResponse::AppFailed);
    }
    None
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    /// A connection moves through its state machine and the idle set by value, several times
    /// a request: it stays two pointers, not its whole state.
    #[test]
    fn a_connection_is_cheap_to_move() {
        assert!(std::mem::size_of::<super::Connection>() <= 16);
        assert!(std::mem::size_of::<super::Next>() <= 256);
    }
}
