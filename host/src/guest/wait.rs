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

use std::time::Duration;

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
}

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

/// Runs `wait` for at most `left`.
fn bounded<R>(
    left: Duration,
    wait: impl Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    // The timer is made inside the runtime that `in_tokio` enters: it needs its clock.
    in_tokio(async move {
        match tokio::time::timeout(left, wait).await {
            Ok(result) => result,
            Err(_) => Err(wasmtime::Error::new(DeadlinePassed)),
        }
    })
}

impl sync_poll::Host for Waits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        bounded(
            self.left,
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
            async_poll::HostPollable::block(&mut *self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}
