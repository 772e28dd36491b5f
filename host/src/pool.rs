//! The pool of app workers. A connection holds a worker only while a request runs, so idle
//! keep-alive connections and slow clients never pin one.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread;

use crate::app::{App, AppFactory};

pub struct Pool {
    idle: Mutex<Idle>,
    returned: Condvar,
}

struct Idle {
    workers: Vec<Box<dyn App>>,
    /// Requests waiting for a worker; a returned worker wakes one, and only then, since a
    /// wakeup is a syscall even when nobody waits.
    waiting: usize,
}

impl Pool {
    /// Creates `size` workers up front, so that a broken app fails at startup, not on the
    /// first request. They are made on every core at once: an instance of a big app, such
    /// as a Python one, copies tens of megabytes of initial memory.
    pub fn new(factory: &dyn AppFactory, size: usize) -> anyhow::Result<Pool> {
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
        let mut workers = Vec::with_capacity(size);
        for batch in batches {
            workers.extend(batch?);
        }
        Ok(Pool {
            idle: Mutex::new(Idle {
                workers,
                waiting: 0,
            }),
            returned: Condvar::new(),
        })
    }

    /// Waits for a free worker.
    pub fn checkout(&self) -> Lease<'_> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(worker) = idle.workers.pop() {
                return Lease {
                    pool: self,
                    worker: Some(worker),
                };
            }
            idle.waiting += 1;
            idle = self
                .returned
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
            idle.waiting -= 1;
        }
    }
}

/// A worker on loan to one request; it goes back to the pool when dropped.
pub struct Lease<'p> {
    pool: &'p Pool,
    worker: Option<Box<dyn App>>,
}

impl Deref for Lease<'_> {
    type Target = dyn App;
    fn deref(&self) -> &Self::Target {
        self.worker.as_deref().expect("leased until dropped")
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.worker.as_deref_mut().expect("leased until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            idle.workers.push(worker);
            if idle.waiting > 0 {
                self.pool.returned.notify_one();
            }
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
