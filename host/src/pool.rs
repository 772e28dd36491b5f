//! The pool of app workers, and the queue of requests waiting for one. A connection holds a
//! worker only while a request runs, so idle keep-alive connections and slow clients never
//! pin one.
//!
//! A request that finds every worker busy waits in the queue without a thread: the pool
//! keeps a [`Waiter`] for it, and a returned worker goes to the one that has waited longest.
//! The queue is bounded in length, and the server holds each waiting request to the queue
//! timeout, so that an app whose instances are all stuck turns requests away with 503
//! rather than piling up connections that other apps need.
//!
//! The pool keeps its warm workers for good. While requests queue and some of its workers
//! wait on something other than the CPU (a slow client, the key-value store's disk, an
//! outbound request: [`crate::waiting`]), fewer than the warm count can run, and a keeper
//! thread makes more, up to the pool's most. Those go again once a whole
//! [`SPARE_LIFETIME`] has passed in which none of them was needed.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, Weak};
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

/// How many workers a pool keeps, and how many it may have while some of them wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Made at the start and kept: as many as may run at once.
    pub warm: usize,
    /// Most alive at once, the warm ones included.
    pub most: usize,
}

pub struct Pool {
    state: Mutex<State>,
    /// Wakes the keeper when a worker is wanted.
    wanted: Arc<Signal>,
    queue: QueuePolicy,
    gauges: Arc<PoolGauges>,
    size: Size,
    /// Makes the workers beyond the warm ones; none for a pool that never grows.
    factory: Option<Arc<dyn AppFactory>>,
    /// Workers of this pool in a wait on something other than the CPU, now.
    blocked: AtomicUsize,
    /// How long workers beyond the warm ones stay unneeded before they go.
    spare_lifetime: Duration,
}

struct State {
    /// Free workers; the last in is the first out, so that the first ones stay unused
    /// while fewer are needed, and can go.
    idle: Vec<Box<dyn App>>,
    /// Requests waiting for a worker, the longest-waiting first, by ticket.
    waiting: VecDeque<(u64, Box<dyn Waiter>, Instant)>,
    next_ticket: u64,
    /// Workers alive: free and lent.
    live: usize,
    /// Workers lent to requests.
    lent: usize,
    /// Workers asked of the keeper and not made yet.
    making: usize,
    /// Whether a keeper thread runs.
    keeper: bool,
    /// The fewest free workers since `low_since`: as many went unused all that time.
    low: usize,
    low_since: Instant,
    /// When the keeper last failed to make a worker: it waits before it tries again.
    failed_at: Option<Instant>,
}

/// How long workers beyond the warm ones stay when none of them is needed.
pub const SPARE_LIFETIME: Duration = Duration::from_secs(10);

/// How long the keeper waits after it failed to make a worker.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Pool {
    /// Creates `size.warm` workers up front, so that a broken app fails at startup, not on
    /// the first request. They are made on every core at once: an instance of a big app,
    /// such as a Python one, copies tens of megabytes of initial memory.
    pub fn new(
        factory: Arc<dyn AppFactory>,
        size: Size,
        queue: QueuePolicy,
        gauges: Arc<PoolGauges>,
    ) -> anyhow::Result<Pool> {
        let cores = thread::available_parallelism().map_or(1, usize::from);
        let left = AtomicUsize::new(size.warm);
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
            let helpers: Vec<_> = (1..cores.min(size.warm))
                .map(|_| scope.spawn(make))
                .collect();
            let mut batches = vec![make()];
            batches.extend(helpers.into_iter().map(|helper| {
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }));
            batches
        });
        let mut idle = Vec::with_capacity(size.warm);
        for batch in batches {
            idle.extend(batch?);
        }
        let mut pool = Pool::with_workers(idle, queue, gauges);
        pool.size.most = size.most.max(size.warm);
        pool.factory = Some(factory);
        Ok(pool)
    }

    /// A pool of these workers, which never grows.
    fn with_workers(idle: Vec<Box<dyn App>>, queue: QueuePolicy, gauges: Arc<PoolGauges>) -> Pool {
        let live = idle.len();
        Pool {
            state: Mutex::new(State {
                idle,
                waiting: VecDeque::new(),
                next_ticket: 0,
                live,
                lent: 0,
                making: 0,
                keeper: false,
                low: live,
                low_since: Instant::now(),
                failed_at: None,
            }),
            wanted: Arc::default(),
            queue,
            gauges,
            size: Size {
                warm: live,
                most: live,
            },
            factory: None,
            blocked: AtomicUsize::new(0),
            spare_lifetime: SPARE_LIFETIME,
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
        if !state.waiting.is_empty() || !self.may_lend(&state) {
            return None;
        }
        let worker = state.lend()?;
        self.report(&state);
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
        if state.waiting.is_empty()
            && self.may_lend(&state)
            && let Some(worker) = state.lend()
        {
            self.report(&state);
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
        drop(place);
        if state.idle.is_empty() {
            self.grow_if_starved(&mut state);
        } else {
            // Free, but held back by the gate: lent when it opens, to the longest waiting.
            self.dispatch(state);
        }
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
            on_behalf: None,
        }
    }

    /// Gives a worker back: to the request that has waited longest, if any still waits.
    fn give_back(self: &Arc<Self>, worker: Box<dyn App>) {
        self.offer(worker, true);
    }

    /// Keeps `worker`, given back (`returned`) or new, and lends a free worker to the
    /// request that has waited longest if one waits and the gate allows.
    fn offer(self: &Arc<Self>, worker: Box<dyn App>, returned: bool) {
        let mut state = self.lock();
        if returned {
            debug_assert!(state.lent > 0, "a worker given back was lent");
            state.lent -= 1;
        }
        state.idle.push(worker);
        self.dispatch(state);
    }

    /// Lends a free worker to the request that has waited longest, if one waits and fewer
    /// than the warm count would then run; on to the next if that one has left meanwhile.
    fn dispatch<'a>(self: &'a Arc<Self>, mut state: MutexGuard<'a, State>) {
        loop {
            if state.waiting.is_empty() || state.idle.is_empty() || !self.may_lend(&state) {
                self.report(&state);
                return;
            }
            let (Some((_, waiter, since)), Some(worker)) =
                (state.waiting.pop_front(), state.lend())
            else {
                unreachable!("a request waits and a worker is free");
            };
            self.report(&state);
            self.gauges.dequeued(state.waiting.len(), self.queue.limit);
            // Handed over outside the lock: the waiter takes locks of its own.
            drop(state);
            self.gauges.waited(since.elapsed());
            let Err(mut lease) = waiter.hand(self.lease(worker)) else {
                return;
            };
            let worker = lease.worker.take().expect("leased until dropped");
            state = self.lock();
            state.lent -= 1;
            state.idle.push(worker);
        }
    }

    /// Tells /health whether a request would have to wait now.
    fn report(&self, state: &State) {
        if state.idle.is_empty() || !self.may_lend(state) {
            self.gauges.saturated();
        } else {
            self.gauges.unsaturated();
        }
    }

    /// Whether another worker may be lent: fewer than the warm count are lent and not
    /// waiting on something other than the CPU. Workers beyond the warm ones stand in for
    /// those that wait; they never make more run at once.
    fn may_lend(&self, state: &State) -> bool {
        state
            .lent
            .saturating_sub(self.blocked.load(Ordering::Relaxed))
            < self.size.warm
    }

    /// Asks the keeper for another worker if requests wait while fewer workers than the
    /// warm count can run, the others waiting on something other than the CPU; up to the
    /// pool's most.
    fn grow_if_starved(self: &Arc<Self>, state: &mut State) {
        if self.factory.is_none() || state.waiting.is_empty() {
            return;
        }
        let coming = state.live + state.making;
        let able = coming.saturating_sub(self.blocked.load(Ordering::Relaxed));
        if coming >= self.size.most || able >= self.size.warm {
            return;
        }
        // After a failure the keeper asks again once its pause is over.
        let failed = state.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER);
        if !failed {
            state.making += 1;
        }
        if state.keeper {
            if !failed {
                self.wanted.raise();
            }
            return;
        }
        let (pool, wanted) = (Arc::downgrade(self), self.wanted.clone());
        let started = thread::Builder::new()
            .name("pool-keeper".into())
            .spawn(move || keep(&pool, &wanted));
        match started {
            Ok(_) => state.keeper = true,
            Err(error) => {
                if !failed {
                    state.making -= 1;
                }
                tracing::warn!("cannot start a thread to add an instance: {error}");
            }
        }
    }

    /// One turn of the keeper: makes a worker asked for, asks again for one that could not
    /// be made, or lets spare ones go. Returns how long to wait for the next request for a
    /// worker before the next turn, or `None` once there is nothing left to keep.
    fn keep_once(self: &Arc<Self>) -> Option<Duration> {
        let factory = self.factory.as_ref()?;
        let mut state = self.lock();
        if state.making > 0 {
            drop(state);
            // A panic making it is a failure like any other, not the keeper's end.
            let made = std::panic::catch_unwind(AssertUnwindSafe(|| factory.new_worker()))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("making it panicked")));
            let mut state = self.lock();
            state.making -= 1;
            match made {
                Ok(worker) => {
                    state.live += 1;
                    state.failed_at = None;
                    drop(state);
                    self.offer(worker, false);
                }
                Err(error) => {
                    // Asked for again after a pause, if requests still wait.
                    state.making = 0;
                    state.failed_at = Some(Instant::now());
                    drop(state);
                    tracing::warn!("cannot add an instance while others wait: {error:#}");
                }
            }
            return Some(Duration::ZERO);
        }
        let mut wait = self
            .spare_lifetime
            .saturating_sub(state.low_since.elapsed());
        let retrying = state.failed_at.is_some() && !state.waiting.is_empty();
        if let Some(failed_at) = state.failed_at.filter(|_| retrying) {
            let pause = RETRY_AFTER.saturating_sub(failed_at.elapsed());
            if pause.is_zero() {
                state.failed_at = None;
                self.grow_if_starved(&mut state);
                return Some(Duration::ZERO);
            }
            wait = wait.min(pause);
        }
        let mut spare = Vec::new();
        if state.low_since.elapsed() >= self.spare_lifetime {
            // The first `low` free workers went unused all this time: the extra ones go.
            let extra = state.live.saturating_sub(self.size.warm);
            let unused = state.low.min(extra);
            spare.extend(state.idle.drain(..unused));
            state.live -= unused;
            state.low = state.idle.len();
            state.low_since = Instant::now();
            wait = wait.min(self.spare_lifetime);
            self.report(&state);
        }
        let keeping = state.live > self.size.warm || retrying;
        if !keeping {
            state.keeper = false;
        }
        drop(state);
        for worker in spare {
            worker.retire("idle");
        }
        keeping.then_some(wait)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The keeper, if any, finds the pool gone and ends.
        self.wanted.raise();
    }
}

/// The keeper of a pool: runs while the pool has workers beyond its warm ones, or is asked
/// for one, and while the pool is alive, which it holds only for a turn: a reload's old
/// pool goes away with its last request.
fn keep(pool: &Weak<Pool>, wanted: &Signal) {
    while let Some(wait) = pool.upgrade().and_then(|pool| pool.keep_once()) {
        wanted.wait(wait);
    }
}

/// Wakes the keeper early: a worker is wanted, or the pool is gone.
#[derive(Default)]
struct Signal {
    raised: Mutex<bool>,
    changed: Condvar,
}

impl Signal {
    fn raise(&self) {
        *self.raised.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_one();
    }

    /// Waits up to `timeout` to be raised, and lowers the signal.
    fn wait(&self, timeout: Duration) {
        let raised = self.raised.lock().unwrap_or_else(PoisonError::into_inner);
        let mut raised = self
            .changed
            .wait_timeout_while(raised, timeout, |raised| !*raised)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        *raised = false;
    }
}

impl State {
    /// Takes the free worker that was last given back.
    fn take_idle(&mut self) -> Option<Box<dyn App>> {
        let worker = self.idle.pop()?;
        self.low = self.low.min(self.idle.len());
        Some(worker)
    }

    /// Takes the free worker that was last given back, to lend it.
    fn lend(&mut self) -> Option<Box<dyn App>> {
        let worker = self.take_idle()?;
        self.lent += 1;
        Some(worker)
    }
}

impl crate::waiting::Owner for Pool {
    /// One fewer worker can run: a free one goes to the request that has waited longest,
    /// or, if none is free, one is asked of the keeper.
    fn began(self: Arc<Self>) {
        let mut state = self.lock();
        self.blocked.fetch_add(1, Ordering::Relaxed);
        if state.waiting.is_empty() {
            self.report(&state);
        } else if state.idle.is_empty() {
            self.grow_if_starved(&mut state);
        } else {
            self.dispatch(state);
        }
    }

    fn ended(&self) {
        self.blocked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker on loan to one request; it goes back to the pool when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    worker: Option<Box<dyn App>>,
    /// Set once the worker has served on this thread: the thread's waits count as the
    /// pool's until the lease ends.
    on_behalf: Option<crate::waiting::OnBehalf>,
}

impl Lease {
    /// The worker is about to serve on this thread: the thread's waits count as the
    /// pool's until the lease ends. (Not a guard around the call, whose request and result,
    /// 900 bytes, would then be copied once more each.)
    pub fn serve_here(&mut self) {
        if self.on_behalf.is_none() {
            self.on_behalf = Some(crate::waiting::OnBehalf::of(&self.pool));
        }
    }
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
        drop(self.on_behalf.take());
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

    /// Makes counters, and counts them.
    #[derive(Default)]
    struct Counters(AtomicUsize);

    impl AppFactory for Counters {
        fn new_worker(&self) -> anyhow::Result<Box<dyn App>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(Box::new(Counter))
        }
    }

    /// A pool of `size` that may grow, whose spare workers go after `spare_lifetime`.
    fn growing(size: Size, spare_lifetime: Duration) -> (Arc<Pool>, Arc<Counters>) {
        growing_with(Arc::new(Counters::default()), size, spare_lifetime)
    }

    /// [`growing`], with workers made by `factory`.
    fn growing_with<F: AppFactory + 'static>(
        factory: Arc<F>,
        size: Size,
        spare_lifetime: Duration,
    ) -> (Arc<Pool>, Arc<F>) {
        let queue = QueuePolicy {
            limit: 8,
            timeout: Duration::from_secs(30),
        };
        let gauges = Arc::new(PoolGauges::detached(Duration::from_secs(30)));
        let mut pool = Pool::new(factory.clone(), size, queue, gauges).unwrap();
        pool.spare_lifetime = spare_lifetime;
        (Arc::new(pool), factory)
    }

    /// A waiting request that hands what it gets to the test.
    fn waiter(id: u32, handed: &mpsc::Sender<(u32, Lease)>) -> Box<dyn Waiter> {
        Box::new(Waiting {
            id,
            left: false,
            handed: handed.clone(),
        })
    }

    /// Runs `during` while a worker of `pool` waits, as one blocked on a slow peer does.
    fn while_blocked<R>(pool: &Arc<Pool>, during: impl FnOnce() -> R) -> R {
        let _on_behalf = crate::waiting::OnBehalf::of(pool);
        let _waiting = crate::waiting::Waiting::begin();
        during()
    }

    #[test]
    fn a_pool_grows_only_while_its_workers_wait_and_never_past_its_most() {
        let (pool, made) = growing(Size { warm: 1, most: 2 }, Duration::from_secs(60));
        let (handed, received) = mpsc::channel();
        let busy = pool.checkout().unwrap();
        // Busy on the CPU: a request queues, and no worker is made.
        assert!(pool.enqueue(waiter(0, &handed), &Ticket::default()).is_ok());
        assert_eq!(made.0.load(Ordering::Relaxed), 1);
        assert!(received.try_recv().is_err());
        // Once the busy worker waits, one is made for the queued request.
        let (id, second) = while_blocked(&pool, || received.recv_timeout(Duration::from_secs(10)))
            .expect("a worker made for the queued request");
        assert_eq!((id, made.0.load(Ordering::Relaxed)), (0, 2));
        // Both wait: the pool is at its most, and the next request waits for one.
        let (release, hold) = mpsc::channel::<()>();
        let (entered, has_entered) = mpsc::channel();
        let other = {
            let pool = pool.clone();
            thread::spawn(move || {
                while_blocked(&pool, || {
                    entered.send(()).unwrap();
                    hold.recv().unwrap();
                })
            })
        };
        has_entered.recv().unwrap();
        while_blocked(&pool, || {
            assert_eq!(pool.blocked.load(Ordering::Relaxed), 2);
            assert!(pool.enqueue(waiter(1, &handed), &Ticket::default()).is_ok());
            // None was asked for, and none is on its way.
            assert_eq!(pool.lock().making, 0, "no worker past the pool's most");
        });
        release.send(()).unwrap();
        other.join().unwrap();
        assert_eq!(made.0.load(Ordering::Relaxed), 2);
        assert!(received.try_recv().is_err());
        // One still runs, as many as the warm count: the request waits for it to end.
        drop(busy);
        assert!(received.try_recv().is_err());
        drop(second);
        assert_eq!(received.try_recv().unwrap().0, 1);
        assert_eq!(pool.lock().live, 2);
    }

    #[test]
    fn workers_beyond_the_warm_ones_stand_in_for_waiting_ones_and_never_add_to_those_running() {
        let (pool, _) = growing(Size { warm: 1, most: 2 }, Duration::from_secs(60));
        let (handed, received) = mpsc::channel();
        let first = pool.checkout().unwrap();
        let second = while_blocked(&pool, || {
            // A wait inside a wait (a poll on the body, which reads it) counts once.
            let _inner = crate::waiting::Waiting::begin();
            assert_eq!(pool.blocked.load(Ordering::Relaxed), 1);
            assert!(pool.enqueue(waiter(0, &handed), &Ticket::default()).is_ok());
            received.recv_timeout(Duration::from_secs(10)).unwrap().1
        });
        assert_eq!(pool.blocked.load(Ordering::Relaxed), 0);
        // The first's wait is over and both run: the next request waits, and the one given
        // back is kept free rather than make two run again.
        assert!(pool.enqueue(waiter(1, &handed), &Ticket::default()).is_ok());
        drop(second);
        assert!(received.try_recv().is_err());
        assert_eq!(pool.lock().idle.len(), 1);
        assert!(pool.checkout().is_none());
        // Once the first waits again, the free one goes to the waiting request.
        while_blocked(&pool, || {
            assert_eq!(received.try_recv().unwrap().0, 1);
        });
        drop(first);
    }

    /// Makes counters, but panics making the one after the first.
    #[derive(Default)]
    struct PanicsOnce(AtomicUsize);

    impl AppFactory for PanicsOnce {
        fn new_worker(&self) -> anyhow::Result<Box<dyn App>> {
            assert_ne!(
                self.0.fetch_add(1, Ordering::Relaxed),
                1,
                "the second panics"
            );
            Ok(Box::new(Counter))
        }
    }

    #[test]
    fn a_worker_that_could_not_be_made_is_asked_for_again_while_requests_wait() {
        let (pool, factory) = growing_with(
            Arc::new(PanicsOnce::default()),
            Size { warm: 1, most: 2 },
            Duration::from_secs(60),
        );
        let (handed, received) = mpsc::channel();
        let busy = pool.checkout().unwrap();
        // The busy worker waits until a worker comes for the queued request: the first try
        // panics, and the keeper tries again after its pause, with nothing else happening.
        let (id, _made) = while_blocked(&pool, || {
            assert!(pool.enqueue(waiter(0, &handed), &Ticket::default()).is_ok());
            received.recv_timeout(Duration::from_secs(10))
        })
        .expect("a worker made at the second try");
        assert_eq!((id, factory.0.load(Ordering::Relaxed)), (0, 3));
        assert_eq!(pool.lock().live, 2);
        drop(busy);
    }

    #[test]
    fn workers_beyond_the_warm_ones_go_once_unneeded() {
        let (pool, made) = growing(Size { warm: 1, most: 4 }, Duration::from_millis(50));
        let (handed, received) = mpsc::channel();
        let first = pool.checkout().unwrap();
        let second = while_blocked(&pool, || {
            assert!(pool.enqueue(waiter(0, &handed), &Ticket::default()).is_ok());
            received.recv_timeout(Duration::from_secs(10)).unwrap().1
        });
        assert_eq!(made.0.load(Ordering::Relaxed), 2);
        drop((first, second));
        // Neither is needed now: the one beyond the warm count goes, and the keeper ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.lock().live > 1 || pool.lock().keeper {
            assert!(Instant::now() < deadline, "the spare worker never went");
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.lock().idle.len(), 1);
        assert!(pool.checkout().is_some());
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
