//! Threads that wait on something other than the CPU: a peer's socket, the key-value store's
//! disk. The server counts them to know how many of its threads can run, and adds a thread
//! when too few can ([`crate::server`]).

use std::sync::atomic::{AtomicUsize, Ordering};

static WAITING: AtomicUsize = AtomicUsize::new(0);

/// How many threads are in a call that may wait, now.
pub fn threads() -> usize {
    WAITING.load(Ordering::Relaxed)
}

/// Runs `call`, which may wait on a peer or a disk, counted in [`threads`].
pub fn counted<R>(call: impl FnOnce() -> R) -> R {
    let _waiting = Waiting::begin();
    call()
}

/// A thread counted in [`threads`] until dropped, however its call ends.
pub struct Waiting;

impl Waiting {
    pub fn begin() -> Waiting {
        WAITING.fetch_add(1, Ordering::Relaxed);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
}
