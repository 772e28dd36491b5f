//! Graceful shutdown: stop accepting, close idle connections, let requests in flight finish.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long connections that are idle when the server stops may still send a request, to be
/// answered 503 rather than closed while it is on its way: a client under keep-alive load
/// sends its next request within microseconds of its last response.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The server's run state, shared by the accept loop, the connections and the signal thread.
pub struct Lifecycle {
    stopping: AtomicBool,
    /// Readable once the server stops: the accept loop waits on it beside the listeners.
    stop_signal: OwnedFd,
    stopped_at: Mutex<Option<Instant>>,
    next_connection: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<Tracked>>>,
    /// Signalled when a connection ends.
    ended: Condvar,
}

/// An open connection, as the shutdown sees it.
struct Tracked {
    /// A request is in flight; shutting down waits for it.
    busy: Mutex<bool>,
}

/// A connection's registration, removed when it is dropped.
pub struct Registration {
    lifecycle: Arc<Lifecycle>,
    id: u64,
    tracked: Arc<Tracked>,
}

impl Lifecycle {
    pub fn new() -> std::io::Result<Lifecycle> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        Ok(Lifecycle {
            stopping: AtomicBool::new(false),
            stop_signal: rustix::event::eventfd(0, flags)?,
            stopped_at: Mutex::default(),
            next_connection: AtomicU64::new(0),
            connections: Mutex::default(),
            ended: Condvar::new(),
        })
    }

    /// Readable once the server has begun to stop.
    pub fn stop_signal(&self) -> BorrowedFd<'_> {
        self.stop_signal.as_fd()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Tracks a new connection, or returns `None` when the server is stopping.
    pub fn register(self: &Arc<Self>) -> Option<Registration> {
        let tracked = Arc::new(Tracked {
            busy: Mutex::new(false),
        });
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let mut connections = self.lock();
        if self.is_stopping() {
            return None;
        }
        connections.insert(id, tracked.clone());
        Some(Registration {
            lifecycle: self.clone(),
            id,
            tracked,
        })
    }

    /// Stops the server: from now on no connection takes a new request; a request that
    /// arrives gets 503 and its connection closes, and connections that stay idle are
    /// closed by the server's watchdog after [`IDLE_GRACE`]. Returns how many requests are
    /// still in flight.
    pub fn stop(&self) -> usize {
        *self
            .stopped_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.stopping.store(true, Ordering::Release);
        if let Err(error) = rustix::io::write(&self.stop_signal, &1u64.to_ne_bytes()) {
            tracing::error!("cannot wake the accept loop to stop: {error}");
        }
        self.lock()
            .values()
            .filter(|tracked| *tracked.busy.lock().unwrap_or_else(PoisonError::into_inner))
            .count()
    }

    /// How long ago the server began to stop, if it has.
    pub fn stopped_for(&self) -> Option<Duration> {
        if !self.is_stopping() {
            return None;
        }
        let stopped_at = *self
            .stopped_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stopped_at.map(|at| at.elapsed())
    }

    /// Waits until every connection has ended, or `timeout` has passed since the stop.
    /// Returns how many connections are still open.
    pub fn wait_for_connections(&self, timeout: Duration) -> usize {
        let stopped_at = *self
            .stopped_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let deadline = stopped_at.unwrap_or_else(Instant::now) + timeout;
        let mut connections = self.lock();
        while !connections.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return connections.len();
            }
            connections = self
                .ended
                .wait_timeout(connections, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Registration {
    /// Marks a request as in flight. Returns false if the server is stopping and the
    /// connection should close instead.
    pub fn begin_request(&self) -> bool {
        let mut busy = self
            .tracked
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.lifecycle.is_stopping() {
            return false;
        }
        *busy = true;
        true
    }

    /// Marks the request as done.
    pub fn end_request(&self) {
        *self
            .tracked
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut connections = self.lifecycle.lock();
        connections.remove(&self.id);
        // Only a stopping server waits for connections to end, and it waits only once it
        // has seen `stopping`, which was set before; a wake costs a syscall.
        if self.lifecycle.is_stopping() {
            self.lifecycle.ended.notify_all();
        }
    }
}
