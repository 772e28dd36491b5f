//! The listener and the accept loop: one thread per connection, up to a limit, all sharing
//! the router to the apps' worker pools. Threads outlive their connection for a while, to take the next.

use std::collections::VecDeque;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::connection::{self, ConnectionConfig};
use crate::lifecycle::Lifecycle;
use crate::router::CurrentRouter;

/// Binds the listening socket with SO_REUSEADDR, so that a restarted server can bind while
/// old connections sit in TIME_WAIT, and a listen queue of `backlog`.
pub fn bind(host: &str, port: u16, backlog: i32) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let address = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such address"))?;
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(backlog)?;
        Ok(socket.into())
    };
    listen().with_context(|| format!("cannot listen on {host}:{port}"))
}

/// Accepts connections, serving each on its own thread, until the server stops.
pub fn run(
    listener: TcpListener,
    router: Arc<CurrentRouter>,
    config: ConnectionConfig,
    max_connections: usize,
    lifecycle: Arc<Lifecycle>,
) {
    let shared = Arc::new((router, config));
    let open = Arc::new(ConnectionSlots::new(max_connections));
    let idle = Arc::new(IdleThreads::default());
    loop {
        // Past the limit, new connections wait in the kernel's backlog.
        if !open.acquire(&lifecycle) {
            return;
        }
        let accepted = listener.accept();
        if lifecycle.is_stopping() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                open.release();
                tracing::warn!("accept failed: {error}");
                // Out of file descriptors, most likely: give connections time to close.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some((stream, slot)) = idle.offer((stream, SlotGuard(open.clone()))) else {
            continue;
        };
        let (shared, lifecycle, idle) = (shared.clone(), lifecycle.clone(), idle.clone());
        let spawned = thread::Builder::new()
            .name("connection".into())
            .spawn(move || {
                let (router, config) = &*shared;
                let mut next = Some((stream, slot));
                while let Some((stream, slot)) = next {
                    connection::serve(stream, router, config, &lifecycle);
                    drop(slot);
                    next = idle.next();
                }
            });
        if let Err(error) = spawned {
            tracing::error!("cannot start a connection thread: {error}");
        }
    }
}

/// A connection and its place under the limit.
type Job = (TcpStream, SlotGuard);

/// How often an accept loop held at the connection limit looks for a stop.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How long a connection thread with nothing to do waits for another connection.
const IDLE_THREAD_LIFETIME: Duration = Duration::from_secs(30);

/// Connection threads whose connection ended wait here for the next one, so that short
/// connections don't each pay for a thread's creation.
#[derive(Default)]
struct IdleThreads {
    handoff: Mutex<Handoff>,
    arrived: Condvar,
}

#[derive(Default)]
struct Handoff {
    waiting: usize,
    queued: VecDeque<Job>,
}

impl IdleThreads {
    /// Hands `job` to a waiting thread, or gives it back when none is free.
    fn offer(&self, job: Job) -> Option<Job> {
        let mut handoff = self.handoff.lock().unwrap_or_else(PoisonError::into_inner);
        if handoff.waiting > handoff.queued.len() {
            handoff.queued.push_back(job);
            self.arrived.notify_one();
            None
        } else {
            Some(job)
        }
    }

    /// Waits for the next job; `None` once the thread has idled long enough to end.
    fn next(&self) -> Option<Job> {
        let deadline = Instant::now() + IDLE_THREAD_LIFETIME;
        let mut handoff = self.handoff.lock().unwrap_or_else(PoisonError::into_inner);
        handoff.waiting += 1;
        loop {
            if let Some(job) = handoff.queued.pop_front() {
                handoff.waiting -= 1;
                return Some(job);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                handoff.waiting -= 1;
                return None;
            }
            handoff = self
                .arrived
                .wait_timeout(handoff, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
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

    /// Waits for a free slot; false if the server stops first.
    fn acquire(&self, lifecycle: &Lifecycle) -> bool {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            if lifecycle.is_stopping() {
                return false;
            }
            free = self
                .freed
                .wait_timeout(free, STOP_CHECK_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *free -= 1;
        true
    }

    fn release(&self) {
        *self.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.freed.notify_one();
    }
}

/// Frees a connection slot when its thread ends, however it ends.
struct SlotGuard(Arc<ConnectionSlots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}
