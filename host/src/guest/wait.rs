//! The guest's waits, held to its deadline.
//!
//! The epoch deadline interrupts Wasm code only: a guest blocked inside a host call never
//! reaches an epoch check. Of the WASI calls a sandboxed guest can make, the ones that can
//! wait without end are `wasi:io/poll`'s `poll` and `pollable.block`: a sleep is a
//! `subscribe-duration` and a block, and `subscribe-duration(u64::MAX)` would never return.
//! Here those two wait at most the app time the request has left, and then fail with
//! [`DeadlinePassed`], which ends the request with 504 and replaces the instance.
//!
//! The other blocking WASI calls, on streams, wait only on what the sandbox can reach: the
//! host log, which is always ready, an empty stdin, and files, which are as fast as the
//! disk. wasm-gw's own calls that wait on the client run off the app's clock and are held to
//! the body pace instead; key-value calls hold their own deadline (see [`crate::kv`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;

/// A guest's wait outlasted the app time its request had left.
#[derive(Debug, thiserror::Error)]
#[error("the app waited in a host call past its deadline")]
pub struct DeadlinePassed;

/// What `wasi:io/poll` works on: the guest's resources, and how long it may still wait.
pub struct Waits<'a> {
    pub table: &'a mut ResourceTable,
    /// The app time the request has left.
    pub left: Duration,
    /// Another thread's time on the client for this request: a wait gets longer by what
    /// that grows while it lasts, since the guest may have waited on it.
    pub client: &'a ClientTime,
}

/// The time another thread spends on the client for a guest's request (a `wasi:http`
/// request's body reads and response writes), which the guest may be waiting on: its clock,
/// and its waits, leave it out.
#[derive(Debug, Default)]
pub struct ClientTime {
    /// Nanoseconds spent so far.
    spent: AtomicU64,
    /// Whether the other thread is on the client now.
    busy: AtomicBool,
}

impl ClientTime {
    /// Runs `io`, which waits on the client, and counts its time.
    pub fn on_client<R>(&self, io: impl FnOnce() -> R) -> R {
        self.busy.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let result = io();
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.spent.fetch_add(spent, Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
        result
    }

    /// The time spent so far.
    pub fn spent(&self) -> Duration {
        Duration::from_nanos(self.spent.load(Ordering::Relaxed))
    }
}

/// How often a wait past its budget looks again while the client is being waited on.
const CLIENT_RECHECK: Duration = Duration::from_millis(50);

struct WaitsData;

impl HasData for WaitsData {
    type Data<'a> = Waits<'a>;
}

/// Replaces wasmtime-wasi's `wasi:io/poll` in `linker` (which must hold it already) with
/// one whose waits end at the deadline.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Waits<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = sync_poll::add_to_linker::<T, WaitsData>(linker, view);
    linker.allow_shadowing(false);
    added
}

/// Runs `wait` for at most `left`, and for as long again as `client` spends on the client
/// meanwhile.
fn bounded<R>(
    left: Duration,
    client: &ClientTime,
    wait: impl Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    // The timer is made inside the runtime that `in_tokio` enters: it needs its clock.
    in_tokio(async move {
        let mut wait = std::pin::pin!(wait);
        let mut budget = left;
        let mut counted = client.spent();
        loop {
            match tokio::time::timeout(budget, wait.as_mut()).await {
                Ok(result) => return result,
                Err(_) => {
                    let spent = client.spent();
                    budget = if spent > counted {
                        spent - counted
                    } else if client.busy.load(Ordering::Relaxed) {
                        CLIENT_RECHECK
                    } else {
                        return Err(wasmtime::Error::new(DeadlinePassed));
                    };
                    counted = spent;
                }
            }
        }
    })
}

impl sync_poll::Host for Waits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        bounded(
            self.left,
            self.client,
            async_poll::Host::poll(&mut *self.table, pollables),
        )
    }
}

impl sync_poll::HostPollable for Waits<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Looks without waiting.
        in_tokio(async_poll::HostPollable::ready(&mut *self.table, pollable))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        bounded(
            self.left,
            self.client,
            async_poll::HostPollable::block(&mut *self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}
