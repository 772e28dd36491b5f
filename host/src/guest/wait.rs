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
//! disk; and, for a `wasi:http` app, its response body, which [`Streams`] empties to the
//! client before any wait and otherwise holds to the deadline too. wasm-gw's own calls that
//! wait on the client run off the app's clock and are held to the body pace instead;
//! key-value calls hold their own deadline (see [`crate::kv`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::p2::bindings::sync::io::streams as sync_streams;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams as async_streams;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamError, StreamResult};

use super::http::ConnectionSide;

/// A guest's wait outlasted the app time its request had left.
#[derive(Debug, thiserror::Error)]
#[error("the app waited in a host call past its deadline")]
pub struct DeadlinePassed;

/// What the guest's waits work on: its resources, how long it may still wait, and the
/// response to write out before it waits, for a `wasi:http` request.
pub struct Waits<'a> {
    pub table: &'a mut ResourceTable,
    /// The app time the request has left.
    pub left: Duration,
    pub side: Option<&'a Mutex<ConnectionSide>>,
}

impl Waits<'_> {
    /// Writes out what the guest has produced of its response, which may be what it is
    /// about to wait for room after.
    fn pump(&self) {
        if let Some(side) = self.side {
            super::http::pump(side);
        }
    }
}

/// Time spent on the client during a guest's call (a `wasi:http` request's body reads and
/// response writes), which the guest's clock leaves out.
#[derive(Debug, Default)]
pub struct ClientTime {
    /// Nanoseconds spent so far.
    spent: AtomicU64,
}

impl ClientTime {
    /// Runs `io`, which waits on the client, and counts its time.
    pub fn on_client<R>(&self, io: impl FnOnce() -> R) -> R {
        let started = Instant::now();
        let result = io();
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.spent.fetch_add(spent, Ordering::Relaxed);
        result
    }

    /// The time spent so far.
    pub fn spent(&self) -> Duration {
        Duration::from_nanos(self.spent.load(Ordering::Relaxed))
    }
}

struct WaitsData;

impl HasData for WaitsData {
    type Data<'a> = Waits<'a>;
}

/// Replaces wasmtime-wasi's `wasi:io/poll` and `wasi:io/streams` in `linker` (which must
/// hold them already) with ones whose waits end at the deadline, and whose blocking calls
/// first write out a `wasi:http` guest's response.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Waits<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = sync_poll::add_to_linker::<T, WaitsData>(linker, view)
        .and_then(|()| sync_streams::add_to_linker::<T, WaitsData>(linker, view));
    linker.allow_shadowing(false);
    added
}

/// Runs `work` for at most `left`, and for as long again as `client` spends on the client
/// meanwhile; `None` if it ran out of time.
pub async fn within<R>(
    left: Duration,
    client: &ClientTime,
    work: impl Future<Output = R>,
) -> Option<R> {
    let mut work = std::pin::pin!(work);
    let mut budget = left;
    let mut counted = client.spent();
    loop {
        match tokio::time::timeout(budget, work.as_mut()).await {
            Ok(result) => return Some(result),
            Err(_) => {
                let spent = client.spent();
                if spent <= counted {
                    return None;
                }
                budget = spent - counted;
                counted = spent;
            }
        }
    }
}

/// Runs `wait` for at most `left`, counted as a wait: an outbound request's, or a sleep.
fn bounded<R>(
    left: Duration,
    wait: impl Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    // The timer is made inside the runtime that `in_tokio` enters: it needs its clock.
    crate::waiting::counted(|| {
        in_tokio(async move {
            match tokio::time::timeout(left, wait).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::Error::new(DeadlinePassed)),
            }
        })
    })
}

/// Runs a blocking stream operation for at most `left`.
fn bounded_stream<R>(
    left: Duration,
    wait: impl Future<Output = StreamResult<R>>,
) -> StreamResult<R> {
    in_tokio(async move {
        match tokio::time::timeout(left, wait).await {
            Ok(result) => result,
            Err(_) => Err(StreamError::Trap(wasmtime::Error::new(DeadlinePassed))),
        }
    })
}

impl sync_poll::Host for Waits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        self.pump();
        bounded(
            self.left,
            async_poll::Host::poll(&mut *self.table, pollables),
        )
    }
}

impl sync_poll::HostPollable for Waits<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Looks without waiting; a guest that looks in a loop sees its response leave.
        self.pump();
        in_tokio(async_poll::HostPollable::ready(&mut *self.table, pollable))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        self.pump();
        bounded(
            self.left,
            async_poll::HostPollable::block(&mut *self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

impl sync_streams::Host for Waits<'_> {
    fn convert_stream_error(
        &mut self,
        error: StreamError,
    ) -> wasmtime::Result<sync_streams::StreamError> {
        sync_streams::Host::convert_stream_error(&mut *self.table, error)
    }
}

impl sync_streams::HostOutputStream for Waits<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        sync_streams::HostOutputStream::drop(&mut *self.table, stream)
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        let room = sync_streams::HostOutputStream::check_write(
            &mut *self.table,
            Resource::new_borrow(stream.rep()),
        )?;
        if room > 0 {
            return Ok(room);
        }
        // Full: what is queued leaves first, which may make room.
        self.pump();
        sync_streams::HostOutputStream::check_write(&mut *self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        sync_streams::HostOutputStream::write(&mut *self.table, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        self.pump();
        bounded_stream(
            self.left,
            async_streams::HostOutputStream::blocking_write_and_flush(
                &mut *self.table,
                stream,
                bytes,
            ),
        )
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        self.pump();
        bounded_stream(
            self.left,
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(
                &mut *self.table,
                stream,
                len,
            ),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostOutputStream::subscribe(&mut *self.table, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        sync_streams::HostOutputStream::write_zeroes(&mut *self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        sync_streams::HostOutputStream::flush(&mut *self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        self.pump();
        bounded_stream(
            self.left,
            async_streams::HostOutputStream::blocking_flush(&mut *self.table, stream),
        )
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        sync_streams::HostOutputStream::splice(&mut *self.table, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        self.pump();
        bounded_stream(
            self.left,
            async_streams::HostOutputStream::blocking_splice(&mut *self.table, dst, src, len),
        )
    }
}

impl sync_streams::HostInputStream for Waits<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        sync_streams::HostInputStream::drop(&mut *self.table, stream)
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        // A read of the request body may wait on the client, who may wait for the response.
        self.pump();
        sync_streams::HostInputStream::read(&mut *self.table, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        self.pump();
        bounded_stream(
            self.left,
            async_streams::HostInputStream::blocking_read(&mut *self.table, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        self.pump();
        sync_streams::HostInputStream::skip(&mut *self.table, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        self.pump();
        bounded_stream(
            self.left,
            async_streams::HostInputStream::blocking_skip(&mut *self.table, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostInputStream::subscribe(&mut *self.table, stream)
    }
}
