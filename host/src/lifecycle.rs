//! Graceful shutdown: stop accepting, close idle connections, let requests in flight finish.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long connections that are idle when the server stops may still send a request, to be
/// answered 503 rather than closed while it is on its way: a client under keep-alive load
/// sends its next request within microseconds of its last response.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The server's run state, shared by the accept loop, the connections and the signal thread.
/// Connections and requests are counted, not listed: a connection's registration cost a
/// lock, a map entry and an allocation, a tenth of a one-request connection's instructions.
pub struct Lifecycle {
    stopping: AtomicBool,
    /// Readable once the server stops: the accept loop waits on it beside the listeners.
    stop_signal: OwnedFd,
    stopped_at: Mutex<Option<Instant>>,
    /// Connections open, and requests in flight.
    open: AtomicUsize,
    in_flight: AtomicUsize,
    /// Held to wait for the last connection, and to tell of it.
    last: Mutex<()>,
    /// Signalled when the last connection of a stopping server ends.
    ended: Condvar,
}

/// A connection's registration, counted until it is dropped.
pub struct Registration {
    lifecycle: Arc<Lifecycle>,
    /// A request is in flight; shutting down waits for it.
    busy: bool,
}

impl Lifecycle {
    pub fn new() -> std::io::Result<Lifecycle> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        Ok(Lifecycle {
            stopping: AtomicBool::new(false),
            stop_signal: rustix::event::eventfd(0, flags)?,
            stopped_at: Mutex::default(),
            open: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            last: Mutex::default(),
            ended: Condvar::new(),
        })
    }

    /// Readable once the server has begun to stop.
    pub fn stop_signal(&self) -> BorrowedFd<'_> {
        self.stop_signal.as_fd()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Tracks a new connection, or returns `None` when the server is stopping.
    pub fn register(self: &Arc<Self>) -> Option<Registration> {
        // Counted first, so that a stop that follows sees it; dropped, it tells a waiter.
        let registration = Registration {
            lifecycle: self.clone(),
            busy: false,
        };
        self.open.fetch_add(1, Ordering::SeqCst);
        (!self.is_stopping()).then_some(registration)
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
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(error) = rustix::io::write(&self.stop_signal, &1u64.to_ne_bytes()) {
            tracing::error!("cannot wake the accept loop to stop: {error}");
        }
        // A request that began before it saw `stopping` is counted here: each side writes
        // its own flag before it reads the other's, in one order for all (SeqCst).
        self.in_flight.load(Ordering::SeqCst)
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
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let open = self.open.load(Ordering::SeqCst);
            let left = deadline.saturating_duration_since(Instant::now());
            if open == 0 || left.is_zero() {
                return open;
            }
            last = self
                .ended
                .wait_timeout(last, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Registration {
    /// Marks a request as in flight. Returns false if the server is stopping and the
    /// connection should close instead.
    pub fn begin_request(&mut self) -> bool {
        if self.busy {
            return true;
        }
        self.lifecycle.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.lifecycle.is_stopping() {
            self.lifecycle.in_flight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        self.busy = true;
        true
    }

    /// Marks the request as done.
    pub fn end_request(&mut self) {
        if std::mem::take(&mut self.busy) {
            self.lifecycle.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.end_request();
        let lifecycle = &self.lifecycle;
        // Only a stopping server waits for connections to end, and it waits only once it
        // has seen `stopping`, which was set before; a wake costs a syscall. Told under the
        // lock the waiter holds from its look at the count to its wait, so it cannot miss it.
        if lifecycle.open.fetch_sub(1, Ordering::SeqCst) == 1 && lifecycle.is_stopping() {
            let _last = lifecycle
                .last
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lifecycle.ended.notify_all();
        }
    }
}
