//! The listener and the accept loop: one thread per connection, up to a limit, all sharing
//! one pool of app workers.

use std::net::{TcpListener, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::connection::{self, ConnectionConfig};
use crate::lifecycle::Lifecycle;
use crate::pool::CurrentPool;

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
    pool: Arc<CurrentPool>,
    config: ConnectionConfig,
    max_connections: usize,
    lifecycle: Arc<Lifecycle>,
) {
    let shared = Arc::new((pool, config));
    let open = Arc::new(ConnectionSlots::new(max_connections));
    loop {
        // Past the limit, new connections wait in the kernel's backlog.
        open.acquire();
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
        let shared = shared.clone();
        let lifecycle = lifecycle.clone();
        let slot = SlotGuard(open.clone());
        let spawned = thread::Builder::new()
            .name("connection".into())
            .spawn(move || {
                let _slot = slot;
                let (pool, config) = &*shared;
                connection::serve(stream, pool, config, &lifecycle);
            });
        if let Err(error) = spawned {
            tracing::error!("cannot start a connection thread: {error}");
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

    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
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
