//! The listener and the threads that serve it. The accept loop parks each new connection
//! in the idle set. A few threads take connections from there as they become readable, serve
//! what has arrived, and park them again: a connection waiting for its client holds no
//! thread, and a busy server's threads go from one ready connection to the next without
//! sleeping.
//!
//! A watchdog thread enforces the parked connections' deadlines, and adds a thread when
//! ready connections wait while threads are blocked, for example on slow uploads.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::connection::{Connection, ConnectionConfig, Next};
use crate::idle::{IdleSet, Member, Membership, Wakeup};
use crate::lifecycle::{IDLE_GRACE, Lifecycle};
use crate::listener::{self, Listener};
use crate::pool::{Lease, Waiter};
use crate::router::CurrentRouter;

/// Accepts connections on every listener until the server stops; the serving threads go
/// on with the open ones.
pub fn run(
    listeners: Vec<Listener>,
    router: Arc<CurrentRouter>,
    config: ConnectionConfig,
    max_connections: usize,
    lifecycle: Arc<Lifecycle>,
) -> anyhow::Result<()> {
    let idle = IdleSet::new().context("cannot create the set of idle connections")?;
    let threads = Arc::new(ServingThreads {
        idle,
        router,
        config,
        running: AtomicUsize::new(0),
        lifecycle: lifecycle.clone(),
        min_threads: thread::available_parallelism().map_or(2, usize::from),
        max_threads: max_connections.clamp(1, MAX_THREADS),
    });
    for _ in 0..threads.min_threads {
        threads.start_one()?;
    }
    let watched = threads.clone();
    thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || watched.watch())
        .context("cannot start the watchdog thread")?;

    anyhow::ensure!(!listeners.is_empty(), "no socket to listen on");
    let open = Arc::new(ConnectionSlots::new(max_connections));
    let mut next = 0;
    let mut failed_accepts = FailedAccepts::default();
    loop {
        // At the limit, a new client waiting to be accepted gets room: the connections
        // that cost least to lose are closed. If none can be, it waits in the backlog until
        // a slot frees.
        let make_room = || {
            if !listener::any_ready(&listeners) {
                return false;
            }
            let evicted = threads
                .idle
                .evict(EVICT_BATCH, |client| client.connection.eviction_rank());
            if !evicted.is_empty() {
                tracing::debug!(
                    "closed {} waiting connections to make room for new ones",
                    evicted.len()
                );
            }
            !evicted.is_empty()
        };
        if !open.acquire(&lifecycle, make_room) {
            return Ok(());
        }
        let slot = SlotGuard(open.clone());
        if lifecycle.is_stopping() {
            return Ok(());
        }
        // Under load a connection is usually waiting already: an accept that doesn't wait,
        // on each listener in turn, saves the poll; only when it finds none does the loop
        // wait on every listener at once.
        let turn = next % listeners.len();
        let tried = listeners[turn].accept();
        let (index, accepted) = match tried {
            Ok(None) => {
                let ready = listener::wait_for_any(&listeners, lifecycle.stop_signal(), next)
                    .context("cannot wait for new connections")?;
                let Some(index) = ready else {
                    return Ok(());
                };
                (index, listeners[index].accept())
            }
            tried => (turn, tried),
        };
        // The next look starts at the other listeners.
        next = index + 1;
        let listener = &listeners[index];
        let (socket, peer) = match accepted {
            Ok(Some(accepted)) => accepted,
            // Another process sharing the socket took it, or the client left already.
            Ok(None) => continue,
            Err(error) => {
                failed_accepts.note(&error, listener);
                // Out of file descriptors, most likely: give connections time to close.
                drop(slot);
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(local) = listener.local_of(&socket) else {
            continue;
        };
        if let Next::Wait(connection, deadline) =
            Connection::open(socket, peer, local, &threads.config, &lifecycle)
            && let Err(error) = threads.idle.add(deadline, |membership| Client {
                connection,
                slot,
                membership,
            })
        {
            tracing::warn!("cannot wait for a new connection's request: {error}");
        }
    }
}

/// Failed accepts, reported at most once a second: a listener that fails every time (out of
/// file descriptors for long, or a socket that died) must not flood the log.
#[derive(Default)]
struct FailedAccepts {
    reported: Option<Instant>,
    since: u64,
}

impl FailedAccepts {
    fn note(&mut self, error: &std::io::Error, listener: &Listener) {
        self.since += 1;
        if self
            .reported
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            "accept failed on {}: {error} ({} failures since the last report)",
            listener.describe("tcp"),
            self.since
        );
        self.reported = Some(Instant::now());
        self.since = 0;
    }
}

/// A connection, its place under the limit, and its slot in the idle set.
struct Client {
    connection: Connection,
    slot: SlotGuard,
    membership: Membership,
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.connection.as_fd()
    }
}

impl Member for Client {
    fn membership(&self) -> &Membership {
        &self.membership
    }
}

/// How often the watchdog looks at the parked connections: how late a deadline may be
/// enforced, and how long ready connections wait before a thread is added.
const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// How many connections one look at the limit closes at most: a few, so that a flood of
/// new clients does not cost a scan of every connection each, nor one new client many
/// closes.
const EVICT_BATCH: usize = 4;

/// Most connection threads, however many connections: threads beyond the cores serve
/// connections blocked on slow peers, and each costs a stack.
const MAX_THREADS: usize = 1024;

/// How many file descriptors the server keeps for itself beyond its connections: the
/// listener, epoll, databases, compiled code, the log.
const RESERVED_FILES: u64 = 100;

/// The default `--max-connections`, where the file limit allows it.
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;

/// Raises the limit of open files to what the system allows this process, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: many systems start processes at 1,024, which
/// would cap connections there.
pub fn raise_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // No maximum is no limit, which the kernel caps at its own (fs.nr_open).
    let maximum = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|current| current < maximum) {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the limit of open files: {error}");
        }
    }
    tracing::info!(
        "open files limit {}: up to {} connections by default",
        open_files(),
        default_max_connections()
    );
}

fn open_files() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The most connections the limit of open files leaves room for, up to 10,000.
pub fn default_max_connections() -> usize {
    let connections = open_files()
        .saturating_sub(RESERVED_FILES)
        .clamp(16, DEFAULT_MAX_CONNECTIONS);
    usize::try_from(connections).unwrap_or(usize::MAX)
}

/// How often an accept loop held at the connection limit looks for a stop, and for new
/// clients to make room for.
const ROOM_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// How long a thread beyond the minimum waits for a ready connection before it ends.
const IDLE_THREAD_LIFETIME: Duration = Duration::from_secs(30);

/// The threads that serve ready connections, and what they serve them with.
struct ServingThreads {
    idle: Arc<IdleSet<Client>>,
    router: Arc<CurrentRouter>,
    config: ConnectionConfig,
    running: AtomicUsize,
    lifecycle: Arc<Lifecycle>,
    /// As many threads as cores are kept even when idle, and kept able to run: more are added
    /// while some wait on clients, up to one per open connection.
    min_threads: usize,
    max_threads: usize,
}

impl ServingThreads {
    fn start_one(self: &Arc<Self>) -> std::io::Result<()> {
        self.running.fetch_add(1, Ordering::Relaxed);
        let threads = self.clone();
        thread::Builder::new()
            .name("connection".into())
            .spawn(move || threads.serve())
            .map(drop)
            .inspect_err(|_| {
                self.running.fetch_sub(1, Ordering::Relaxed);
            })
    }

    /// Serves ready connections until this thread has idled long enough to end.
    fn serve(&self) {
        let _counted = LeavesCountIfPanicking(&self.running);
        loop {
            match self.idle.wait(IDLE_THREAD_LIFETIME) {
                Ok(Wakeup::Ready(client)) => self.serve_client(client),
                Ok(Wakeup::Stale) => {}
                Ok(Wakeup::TimedOut) if self.retire() => return,
                Ok(Wakeup::TimedOut) => {}
                Err(error) => {
                    tracing::error!("waiting for ready connections failed: {error}");
                    self.running.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Serves a ready connection, and again for as long as the set gives it back: input may
    /// be there that no wakeup will tell of.
    fn serve_client(&self, mut client: Client) {
        loop {
            let Client {
                connection,
                slot,
                membership,
            } = client;
            let next = connection.on_readable(&self.router, &self.config);
            match self.park(next, slot, membership) {
                Some(again) => client = again,
                None => return,
            }
        }
    }

    /// [`ServingThreads::park`] for a connection that was not just served: one given back
    /// is served here.
    fn park_or_serve(&self, next: Next, slot: SlotGuard, membership: Membership) {
        if let Some(client) = self.park(next, slot, membership) {
            self.serve_client(client);
        }
    }

    /// Parks the connection, queues its request, or lets it go, as `next` says. Returns
    /// the connection if it is to be served again at once.
    fn park(&self, next: Next, slot: SlotGuard, membership: Membership) -> Option<Client> {
        match next {
            Next::Wait(connection, deadline) => {
                let unread = connection.maybe_unread();
                let client = Client {
                    connection,
                    slot,
                    membership,
                };
                self.idle.park(client, deadline, unread)
            }
            Next::Queue(connection, deadline) => {
                self.queue(connection, slot, membership, deadline);
                None
            }
            Next::Closed => None,
        }
    }

    /// Parks a connection whose request waits for a worker, and queues it with its app,
    /// which hands it a worker through the idle set when one comes free.
    fn queue(
        &self,
        connection: Connection,
        slot: SlotGuard,
        membership: Membership,
        deadline: Instant,
    ) {
        let Some((pool, ticket)) = connection.queue() else {
            return;
        };
        let client = Client {
            connection,
            slot,
            membership,
        };
        let key = match self.idle.park_waiting(client, deadline) {
            Ok(key) => key,
            // Its client hung up already: served now, the request is dropped unqueued.
            Err(client) => return self.serve_client(client),
        };
        let waiter = Box::new(Handoff {
            idle: self.idle.clone(),
            key,
        });
        // The queue is full: unless its client has hung up meanwhile, the request is still
        // parked, and is turned away.
        if pool.enqueue(waiter, &ticket).is_err()
            && let Some(client) = self.idle.take_waiting(key)
        {
            let Client {
                connection,
                slot,
                membership,
            } = client;
            self.park_or_serve(connection.refuse_queue_full(), slot, membership);
        }
    }

    /// Ends this thread's count if more than the minimum are running.
    fn retire(&self) -> bool {
        self.running
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |running| {
                (running > self.min_threads).then(|| running - 1)
            })
            .is_ok()
    }

    /// Enforces the parked connections' deadlines, and adds a thread when ready connections
    /// have waited a whole interval while fewer threads than cores could run, or while none
    /// took any (they may all wait on something else, such as a busy app).
    fn watch(self: Arc<Self>) {
        let mut ready_at_taken = None;
        loop {
            self.idle.wait_until_occupied();
            thread::sleep(WATCH_INTERVAL);
            let (owing, quiet): (Vec<Client>, Vec<Client>) = self
                .idle
                .expired(Instant::now())
                .into_iter()
                .partition(|client| client.connection.owes_answer_at_deadline());
            drop(quiet);
            if !owing.is_empty() {
                self.answer_expired(owing);
            }
            // Stopping: connections still idle after the grace are closed.
            if self
                .lifecycle
                .stopped_for()
                .is_some_and(|stopped| stopped >= IDLE_GRACE)
            {
                drop(
                    self.idle
                        .evict(usize::MAX, |client| client.connection.idle_at_stop()),
                );
            }

            // Wakeups handled, stale ones included: input for a connection being served wakes
            // a thread too, and threads that keep up with it are not stuck.
            let taken = self.idle.wakeups();
            if !self.idle.has_ready() {
                ready_at_taken = None;
                continue;
            }
            let Some(taken_before) = ready_at_taken.replace(taken) else {
                continue;
            };
            let running = self.running.load(Ordering::Relaxed);
            let able_to_run = running.saturating_sub(crate::waiting::threads());
            if (taken == taken_before || able_to_run < self.min_threads)
                && running < self.max_threads
                && let Err(error) = self.start_one()
            {
                tracing::error!("cannot start a connection thread: {error}");
            }
        }
    }

    /// Answers timed-out heads with 408 on a thread of its own: a client that doesn't read
    /// could block the write, and the watchdog must not wait on a client.
    fn answer_expired(self: &Arc<Self>, owing: Vec<Client>) {
        let threads = self.clone();
        let answer = move || {
            for Client {
                connection,
                slot,
                membership,
            } in owing
            {
                threads.park_or_serve(connection.on_deadline(), slot, membership);
            }
        };
        if let Err(error) = thread::Builder::new().name("timeouts".into()).spawn(answer) {
            tracing::error!("cannot answer timed-out requests: {error}");
        }
    }
}

/// How a worker reaches a request parked in the idle set while it waits in the queue.
struct Handoff {
    idle: Arc<IdleSet<Client>>,
    /// This wait's key: a connection that stopped waiting, and waits again, has another.
    key: u64,
}

impl Waiter for Handoff {
    fn hand(self: Box<Self>, lease: Lease) -> Result<(), Lease> {
        // Gone if its client hung up, or the queue timeout passed, meanwhile.
        let Some(mut client) = self.idle.take_waiting(self.key) else {
            return Err(lease);
        };
        client.connection.hand(lease)?;
        if let Err(error) = self.idle.hand(client) {
            tracing::error!("cannot hand a worker to a queued request: {error}");
        }
        Ok(())
    }
}

/// Takes a serving thread that panics out of the count, which would otherwise keep fewer
/// threads than it says.
struct LeavesCountIfPanicking<'a>(&'a AtomicUsize);

impl Drop for LeavesCountIfPanicking<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counts open connections against the limit.
struct ConnectionSlots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl ConnectionSlots {
    fn new(limit: usize) -> ConnectionSlots {
        ConnectionSlots {
            free: Mutex::new(limit.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot, calling `make_room` while there is none (it says whether it
    /// freed any); false if the server stops first.
    fn acquire(&self, lifecycle: &Lifecycle, make_room: impl Fn() -> bool) -> bool {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            if lifecycle.is_stopping() {
                return false;
            }
            drop(free);
            // Connections it closed free their slots as they are dropped.
            let made = make_room();
            free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            if made || *free > 0 {
                continue;
            }
            free = self
                .freed
                .wait_timeout(free, ROOM_CHECK_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *free -= 1;
        true
    }

    fn release(&self) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        *free += 1;
        // The accept loop, the one waiter, waits only while no slot is free; a wake costs a
        // syscall.
        if *free == 1 {
            self.freed.notify_one();
        }
    }
}

/// Frees a connection slot when its connection ends, however it ends.
struct SlotGuard(Arc<ConnectionSlots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}
