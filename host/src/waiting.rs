//! Threads that wait on something other than the CPU: a peer's socket, the key-value store's
//! disk, an outbound request. The server counts them to know how many of its threads can
//! run, and adds a thread when too few can ([`crate::server`]); an app's pool counts those of
//! its instances, and adds an instance when too few can run ([`crate::pool`]).

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

static WAITING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whose instance this thread runs, if it runs one: its waits are that owner's too.
    static CURRENT: Current = const {
        Current {
            owner: RefCell::new(None),
            active: Cell::new(false),
            waits: Cell::new(0),
        }
    };
}

/// The owner whose instance the thread ran last, kept while the thread runs other
/// instances of it, so that a request costs no reference count: held weakly, so that a
/// reloaded app's old pool goes with its last request.
struct Current {
    owner: RefCell<Option<Weak<dyn Owner>>>,
    /// Whether the thread runs an instance of `owner` now.
    active: Cell<bool>,
    /// How many waits the thread is in, one inside another: a guest's poll on its request
    /// body waits in the body's read. Only the outermost counts.
    waits: Cell<usize>,
}

/// What counts the waits of the instances it lends: an app's pool.
pub trait Owner: Send + Sync {
    /// One of its instances begins to wait.
    fn began(self: Arc<Self>);
    /// That wait is over.
    fn ended(&self);
}

/// How many threads are in a call that may wait, now.
pub fn threads() -> usize {
    WAITING.load(Ordering::Relaxed)
}

/// Runs `call`, which may wait on a peer or a disk, counted in [`threads`].
pub fn counted<R>(call: impl FnOnce() -> R) -> R {
    let _waiting = Waiting::begin();
    call()
}

/// While held, this thread runs an instance of an owner: its waits are counted for the
/// owner as well.
pub struct OnBehalf {
    was_active: bool,
}

impl OnBehalf {
    pub fn of<O: Owner + 'static>(owner: &Arc<O>) -> OnBehalf {
        CURRENT.with(|current| {
            let mut kept = current.owner.borrow_mut();
            // The weak reference keeps the owner's allocation, so no other owner can have
            // its address.
            let same = kept
                .as_ref()
                .is_some_and(|kept| std::ptr::addr_eq(kept.as_ptr(), Arc::as_ptr(owner)));
            if !same {
                let owner: Weak<dyn Owner> = Arc::downgrade(owner) as Weak<dyn Owner>;
                *kept = Some(owner);
            }
            OnBehalf {
                was_active: current.active.replace(true),
            }
        })
    }
}

impl Drop for OnBehalf {
    fn drop(&mut self) {
        CURRENT.with(|current| current.active.set(self.was_active));
    }
}

/// A thread counted in [`threads`], and for its instance's owner, until dropped, however its
/// call ends. A wait inside another counts nothing more.
pub struct Waiting {
    counted: bool,
    owner: Option<Arc<dyn Owner>>,
    /// Ends on the thread it began on, whose count of waits it keeps.
    _on_this_thread: PhantomData<*const ()>,
}

impl Waiting {
    pub fn begin() -> Waiting {
        let (outermost, owner) = CURRENT.with(|current| {
            let waits = current.waits.get();
            current.waits.set(waits + 1);
            let owner = (waits == 0 && current.active.get())
                .then(|| current.owner.borrow().as_ref().and_then(Weak::upgrade))
                .flatten();
            (waits == 0, owner)
        });
        if outermost {
            WAITING.fetch_add(1, Ordering::Relaxed);
        }
        let waiting = Waiting {
            counted: outermost,
            owner,
            _on_this_thread: PhantomData,
        };
        if let Some(owner) = &waiting.owner {
            owner.clone().began();
        }
        waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        CURRENT.with(|current| current.waits.set(current.waits.get().saturating_sub(1)));
        if self.counted {
            WAITING.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(owner) = &self.owner {
            owner.ended();
        }
    }
}
