//! The pool of app workers, and the queue of requests waiting for one. A connection holds a
//! worker only while a request runs, so idle keep-alive connections and slow clients never
//! pin one.
//!
//! A request that finds every worker busy waits in the queue without a thread: the pool
//! keeps a [`Waiter`] for it, and a returned worker goes to the one that has waited longest.
//! The queue is bounded in length, and the server holds each waiting request to the queue
//! timeout, so that an app whose instances are all stuck turns requests away with 503
//! rather than piling up connections that other apps need.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::app::{App, AppFactory};
use crate::metrics::PoolGauges;

/// How many requests may wait for an instance, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePolicy {
    pub limit: usize,
    pub timeout: Duration,
}

/// Why a request got no worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// As many requests as the queue holds were waiting already.
    QueueFull,
    /// No worker came free within the queue timeout.
    QueueTimeout,
    /// The client closed its connection while the request waited.
    ClientGone,
}

impl Refusal {
    /// The refusal's reason in metrics, one of [`crate::metrics::REFUSALS`].
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "full",
            Refusal::QueueTimeout => "timeout",
            Refusal::ClientGone => "gone",
        }
    }
}

/// A queued request's place in the queue, shared by its connection and the pool under the
/// pool's lock, so that a request that stops waiting (its client hung up, its time ran out)
/// before it joined the queue never joins it.
#[derive(Default)]
pub struct Ticket(Mutex<Place>);

#[derive(Clone, Copy, Default)]
enum Place {
    #[default]
    Unqueued,
    Queued(u64),
    /// It stopped waiting, or was turned away, and is counted.
    Withdrawn,
}

/// A request waiting in the queue, as the pool sees it.
pub trait Waiter: Send {
    /// Hands `lease` to the waiting request, or gives it back if the request has stopped
    /// waiting meanwhile (it timed out, or its client left).
    fn hand(self: Box<Self>, lease: Lease) -> Result<(), Lease>;
}

pub struct Pool {
    state: Mutex<State>,
    queue: QueuePolicy,
    gauges: Arc<PoolGauges>,
}

struct State {
    idle: Vec<Box<dyn App>>,
    /// Requests waiting for a worker, the longest-waiting first, by ticket.
    waiting: VecDeque<(u64, Box<dyn Waiter>, Instant)>,
    next_ticket: u64,
}

impl Pool {
    /// Creates `size` workers up front, so that a broken app fails at startup, not on the
    /// first request. They are made on every core at once: an instance of a big app, such
    /// as a Python one, copies tens of megabytes of initial memory.
    pub fn new(
        factory: &dyn AppFactory,
        size: usize,
        queue: QueuePolicy,
        gauges: Arc<PoolGauges>,
    ) -> anyhow::Result<Pool> {
        let cores = thread::available_parallelism().map_or(1, usize::from);
        let left = AtomicUsize::new(size);
        let make = || {
            let mut made = Vec::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                made.push(factory.new_worker()?);
            }
            anyhow::Ok(made)
        };
        let batches = thread::scope(|scope| {
            let helpers: Vec<_> = (1..cores.min(size)).map(|_| scope.spawn(make)).collect();
            let mut batches = vec![make()];
            batches.extend(helpers.into_iter().map(|helper| {
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }));
            batches
        });
        let mut idle = Vec::with_capacity(size);
        for batch in batches {
            idle.extend(batch?);
        }
        Ok(Pool::with_workers(idle, queue, gauges))
    }

    fn with_workers(idle: Vec<Box<dyn App>>, queue: QueuePolicy, gauges: Arc<PoolGauges>) -> Pool {
        Pool {
            state: Mutex::new(State {
                idle,
                waiting: VecDeque::new(),
                next_ticket: 0,
            }),
            queue,
            gauges,
        }
    }

    /// A pool with no workers and a queue of one, for routing tests and benchmarks, which
    /// never check a worker out.
    pub fn empty() -> Pool {
        let queue = QueuePolicy {
            limit: 1,
            timeout: Duration::ZERO,
        };
        Pool::with_workers(
            Vec::new(),
            queue,
            Arc::new(PoolGauges::detached(Duration::ZERO)),
        )
    }

    /// How many requests may wait, and how long.
    pub fn queue_policy(&self) -> QueuePolicy {
        self.queue
    }

    /// What the pool reports.
    pub fn gauges(&self) -> &Arc<PoolGauges> {
        &self.gauges
    }

    /// Takes a free worker, if there is one, and if no request waits for it already.
    pub fn checkout(self: &Arc<Self>) -> Option<Lease> {
        let mut state = self.lock();
        let worker = state.idle.pop()?;
        if state.idle.is_empty() {
            self.gauges.saturated();
        }
        drop(state);
        Some(self.lease(worker))
    }

    /// Queues `waiter` for the next free worker, or hands it one at once if one came free
    /// since [`Pool::checkout`]; `ticket` records its place. Gives the waiter back if the
    /// queue is full (the request is counted as refused).
    pub fn enqueue(
        self: &Arc<Self>,
        waiter: Box<dyn Waiter>,
        ticket: &Ticket,
    ) -> Result<(), Box<dyn Waiter>> {
        let mut state = self.lock();
        if let Some(worker) = state.idle.pop() {
            if state.idle.is_empty() {
                self.gauges.saturated();
            }
            drop(state);
            if let Err(lease) = waiter.hand(self.lease(worker)) {
                drop(lease);
            }
            return Ok(());
        }
        let mut place = ticket.0.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*place, Place::Withdrawn) {
            return Ok(());
        }
        if state.waiting.len() >= self.queue.limit {
            *place = Place::Withdrawn;
            drop((place, state));
            self.gauges
                .refused(Refusal::QueueFull.label(), self.queue.limit);
            return Err(waiter);
        }
        let number = state.next_ticket;
        state.next_ticket += 1;
        *place = Place::Queued(number);
        state.waiting.push_back((number, waiter, Instant::now()));
        self.gauges.queued(state.waiting.len(), self.queue.limit);
        Ok(())
    }

    /// Takes the request of `ticket` out of the queue, or keeps it from joining, because it
    /// stopped waiting for `why`; counts it once. A worker already on its way to it finds
    /// it gone and goes on to the next.
    pub fn withdraw(&self, ticket: &Ticket, why: Refusal) {
        let mut place = ticket.0.lock().unwrap_or_else(PoisonError::into_inner);
        let was = std::mem::replace(&mut *place, Place::Withdrawn);
        drop(place);
        match was {
            Place::Withdrawn => return,
            Place::Unqueued => {}
            Place::Queued(number) => {
                let mut state = self.lock();
                let found = state
                    .waiting
                    .iter()
                    .position(|(queued, ..)| *queued == number);
                if let Some((_, waiter, since)) = found.and_then(|at| state.waiting.remove(at)) {
                    self.gauges.dequeued(state.waiting.len(), self.queue.limit);
                    drop(state);
                    drop(waiter);
                    self.gauges.waited(since.elapsed());
                }
            }
        }
        self.gauges.refused(why.label(), self.queue.limit);
    }

    /// Counts a request that got no worker for `why` outside the queue's own bookkeeping:
    /// one whose client had left when a worker came.
    pub fn refused(&self, why: Refusal) {
        self.gauges.refused(why.label(), self.queue.limit);
    }

    fn lease(self: &Arc<Self>, worker: Box<dyn App>) -> Lease {
        Lease {
            pool: self.clone(),
            worker: Some(worker),
        }
    }

    /// Gives a worker back: to the request that has waited longest, if any still waits.
    fn give_back(self: &Arc<Self>, worker: Box<dyn App>) {
        let mut worker = worker;
        loop {
            let mut state = self.lock();
            let Some((_, waiter, since)) = state.waiting.pop_front() else {
                if state.idle.is_empty() {
                    self.gauges.unsaturated();
                }
                state.idle.push(worker);
                return;
            };
            self.gauges.dequeued(state.waiting.len(), self.queue.limit);
            // Handed over outside the lock: the waiter takes locks of its own.
            drop(state);
            self.gauges.waited(since.elapsed());
            match waiter.hand(self.lease(worker)) {
                Ok(()) => return,
                Err(mut lease) => {
                    worker = lease.worker.take().expect("leased until dropped");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A worker on loan to one request; it goes back to the pool when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    worker: Option<Box<dyn App>>,
}

impl Deref for Lease {
    type Target = dyn App;
    fn deref(&self) -> &Self::Target {
        self.worker.as_deref().expect("leased until dropped")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.worker.as_deref_mut().expect("leased until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.pool.give_back(worker);
        }
    }
}

/// The pool that takes new requests. A reload swaps in a new one; requests in flight finish
/// on the old one, which goes away with its last lease.
pub type CurrentPool = Current<Pool>;

/// The version of something that new requests get, swapped whole while older versions
/// finish the requests that hold them.
pub struct Current<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Current<T> {
    pub fn new(value: T) -> Current<T> {
        Current {
            current: RwLock::new(Arc::new(value)),
        }
    }

    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, value: T) {
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            Arc::new(value),
        );
        // Dropped outside the lock: the last reference may tear down a whole pool.
        drop(old);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::app::{Failure, Request};

    struct Counter;

    impl App for Counter {
        fn name(&self) -> Arc<str> {
            "counter".into()
        }
        fn call(&mut self, request: Request) -> (Request, Result<(), Failure>) {
            (request, Ok(()))
        }
    }

    /// A waiting request that takes what it is handed, unless it has left.
    struct Waiting {
        id: u32,
        left: bool,
        handed: mpsc::Sender<(u32, Lease)>,
    }

    impl Waiter for Waiting {
        fn hand(self: Box<Self>, lease: Lease) -> Result<(), Lease> {
            if self.left {
                return Err(lease);
            }
            self.handed.send((self.id, lease)).unwrap();
            Ok(())
        }
    }

    fn pool(workers: usize, limit: usize) -> Arc<Pool> {
        let queue = QueuePolicy {
            limit,
            timeout: Duration::from_secs(1),
        };
        let gauges = Arc::new(PoolGauges::detached(Duration::from_secs(30)));
        let idle = (0..workers)
            .map(|_| Box::new(Counter) as Box<dyn App>)
            .collect();
        Arc::new(Pool::with_workers(idle, queue, gauges))
    }

    #[test]
    fn workers_go_to_the_longest_waiting_and_never_to_one_that_left() {
        let pool = pool(1, 8);
        let (handed, received) = mpsc::channel();
        let held = pool.checkout().unwrap();
        assert!(pool.checkout().is_none());
        for id in 0..4 {
            let waiter = Waiting {
                id,
                left: id == 1,
                handed: handed.clone(),
            };
            assert!(pool.enqueue(Box::new(waiter), &Ticket::default()).is_ok());
        }
        drop(held);
        let mut order = Vec::new();
        for _ in 0..3 {
            let (id, lease) = received.try_recv().unwrap();
            order.push(id);
            drop(lease);
        }
        assert_eq!(order, [0, 2, 3]);
        assert!(received.try_recv().is_err());
        // The worker is free again.
        assert!(pool.checkout().is_some());
    }

    #[test]
    fn a_full_queue_refuses_and_a_withdrawn_request_gets_nothing() {
        let pool = pool(1, 1);
        let (handed, received) = mpsc::channel();
        let waiter = |id| {
            Box::new(Waiting {
                id,
                left: false,
                handed: handed.clone(),
            })
        };
        let held = pool.checkout().unwrap();
        let first = Ticket::default();
        assert!(pool.enqueue(waiter(0), &first).is_ok());
        assert!(pool.enqueue(waiter(1), &Ticket::default()).is_err());
        pool.withdraw(&first, Refusal::QueueTimeout);
        assert!(pool.lock().waiting.is_empty());
        // A request that stopped waiting before it joined the queue never joins it.
        let early = Ticket::default();
        pool.withdraw(&early, Refusal::ClientGone);
        assert!(pool.enqueue(waiter(3), &early).is_ok());
        assert!(pool.lock().waiting.is_empty());
        drop(held);
        assert!(received.try_recv().is_err());
        // A worker free when the request queues is handed over at once.
        assert!(pool.enqueue(waiter(2), &Ticket::default()).is_ok());
        assert_eq!(received.try_recv().unwrap().0, 2);
    }
}
