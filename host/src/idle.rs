//! Connections waiting for their next bytes: parked in epoll with a deadline, holding no
//! thread, until they become readable or the deadline passes.
//!
//! Each connection is registered once, edge-triggered (`EPOLLET`), under a token that names
//! its slot for as long as it is open: parking it again after a response is no syscall, where
//! re-arming a one-shot registration was one of the four a keep-alive request cost. Edges
//! are only seen once, so the slot remembers one that comes while its connection is out
//! being served, and the connection is served again rather than parked; so is one whose last
//! read filled the buffer it was given, and one whose client's FIN came with the wakeup that
//! took it out (see [`IdleSet::park`]). A thread woken for a
//! connection that another has taken out finds it out, and waits again.
//!
//! A connection whose request waits in its app's queue is parked too, woken only if its
//! client hangs up, and taken out by its token when a worker is handed to it; it then goes
//! to the threads through a queue of its own, which an eventfd in the epoll set signals.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

/// Readable, or the peer closed its side (which reads as the end of input): each time more
/// arrives.
const WAKE_ON: EventFlags = EventFlags::IN
    .union(EventFlags::RDHUP)
    .union(EventFlags::ET);

/// A hang-up, in an event's flags: what wakes a request parked in its app's queue (body
/// bytes arriving meanwhile wait in the kernel for the app), and what a connection taken out
/// has still to read the end of.
const HANGUP: EventFlags = EventFlags::RDHUP
    .union(EventFlags::HUP)
    .union(EventFlags::ERR);

/// The token of the eventfd that signals connections handed over: no slot has it.
const HANDED_TOKEN: u64 = u64::MAX;

/// The set of parked connections, shared by the threads that serve them.
pub struct IdleSet<T> {
    epoll: OwnedFd,
    /// Readable while connections wait in `Parked::handed`, one count each.
    handed_signal: OwnedFd,
    parked: Mutex<Parked<T>>,
    /// Signalled when the set stops being empty.
    no_longer_empty: Condvar,
}

/// What the set's connections carry: the membership that names their slot.
pub trait Member {
    fn membership(&self) -> &Membership;
}

/// A connection's slot in the set, from [`IdleSet::add`] until the connection is dropped,
/// which frees it.
pub struct Membership {
    set: Weak<dyn Release>,
    token: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(set) = self.set.upgrade() {
            set.release(self.token);
        }
    }
}

/// Frees a slot whose connection is gone.
trait Release: Send + Sync {
    fn release(&self, token: u64);
}

/// What the threads see when they wait.
pub enum Wakeup<T> {
    /// A connection that became readable.
    Ready(T),
    /// Nothing became readable in time.
    TimedOut,
    /// A wakeup for a connection that is out being served, or gone; wait again.
    Stale,
}

/// The connections in slots; a token names a slot and which of its occupants it means.
struct Parked<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// How many connections are parked (not out being served).
    len: usize,
    /// No deadline comes before this; the set is searched for expired ones only then.
    earliest: Option<Instant>,
    /// Threads waiting for the set to be occupied; waking them is a syscall, so only done
    /// when there are some.
    sleepers: usize,
    /// How many parked connections have been taken out to be served, ever.
    taken: u64,
    /// How many wakeups found their connection out being served, ever.
    stale: u64,
    /// Connections taken out by token and handed to the threads.
    handed: VecDeque<T>,
}

struct Slot<T> {
    generation: u32,
    state: State<T>,
    /// Counts the times a connection in this slot was parked to wait in a queue, so that a
    /// key from an earlier wait never takes it out of a later one, or out of another state.
    waits: u32,
}

enum State<T> {
    /// No connection.
    Free,
    /// Waiting here until its deadline.
    Parked {
        connection: T,
        deadline: Instant,
        /// Input came that no thread was woken for (it waits for something else).
        woken: bool,
        /// Which of the slot's waits in a queue this is; 0 for a connection waiting for input.
        wait: u32,
    },
    /// Taken out, being served; `woken` once input arrives meanwhile, `hung_up` once its
    /// client's FIN or an error has been seen (for good: the end stays to be read).
    Out { woken: bool, hung_up: bool },
}

impl<T: AsFd + Member + Send + 'static> IdleSet<T> {
    pub fn new() -> io::Result<Arc<IdleSet<T>>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // One count per connection handed over: each thread woken takes one.
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE;
        let handed_signal = rustix::event::eventfd(0, flags)?;
        epoll::add(
            &epoll,
            &handed_signal,
            EventData::new_u64(HANDED_TOKEN),
            EventFlags::IN,
        )?;
        Ok(Arc::new(IdleSet {
            epoll,
            handed_signal,
            parked: Mutex::new(Parked {
                slots: Vec::new(),
                free: Vec::new(),
                len: 0,
                earliest: None,
                sleepers: 0,
                taken: 0,
                stale: 0,
                handed: VecDeque::new(),
            }),
            no_longer_empty: Condvar::new(),
        }))
    }

    /// Gives a new connection its slot, made by `connect` from its membership, and parks
    /// it until it is readable or `deadline`. Input that arrived before is seen at once.
    pub fn add(
        self: &Arc<Self>,
        deadline: Instant,
        connect: impl FnOnce(Membership) -> T,
    ) -> io::Result<()> {
        let set: Weak<dyn Release> = Arc::downgrade(self) as Weak<dyn Release>;
        let mut parked = self.lock();
        let index = match parked.free.pop() {
            Some(index) => index,
            None => {
                parked.slots.push(Slot {
                    generation: 0,
                    state: State::Free,
                    waits: 0,
                });
                u32::try_from(parked.slots.len() - 1).expect("fewer than 2^32 connections")
            }
        };
        let generation = parked.slots[index as usize].generation;
        let token = u64::from(generation) << 32 | u64::from(index);
        let connection = connect(Membership { set, token });
        // Member while the lock is held: a thread woken for it waits until it is in its
        // slot. Once for the connection's life.
        let registered = epoll::add(&self.epoll, &connection, EventData::new_u64(token), WAKE_ON);
        if let Err(errno) = registered {
            // Out, so that dropping it (not under the lock) frees the slot.
            parked.slots[index as usize].state = State::Out {
                woken: false,
                hung_up: false,
            };
            drop(parked);
            drop(connection);
            return Err(errno.into());
        }
        parked.settle(index, connection, deadline, false, 0);
        self.announce(&parked);
        Ok(())
    }

    /// Parks a connection that was taken from this set, until it is readable or `deadline`;
    /// or gives it back to be served at once, if input may be waiting that no wakeup will
    /// tell of: some came while it was out (its edge has passed), its client's end has come
    /// and is still to be read, or `unread`, because its last read filled all the room it had.
    pub fn park(&self, connection: T, deadline: Instant, unread: bool) -> Option<T> {
        let mut parked = self.lock();
        let index = parked.out_slot(connection.membership().token);
        let State::Out { woken, hung_up } = parked.slots[index as usize].state else {
            unreachable!("out_slot finds a connection out");
        };
        if woken || hung_up || unread {
            parked.slots[index as usize].state = State::Out {
                woken: false,
                hung_up,
            };
            return Some(connection);
        }
        parked.settle(index, connection, deadline, false, 0);
        self.announce(&parked);
        None
    }

    /// Parks a connection that was taken from this set, and whose request waits for
    /// something else than its client: until its client hangs up, `deadline` passes, or it
    /// is taken out by the key returned ([`IdleSet::take_waiting`]). A connection whose
    /// client has hung up already is given back instead: its request is to be dropped.
    pub fn park_waiting(&self, connection: T, deadline: Instant) -> Result<u64, T> {
        let mut parked = self.lock();
        let index = parked.out_slot(connection.membership().token);
        let State::Out { woken, hung_up } = parked.slots[index as usize].state else {
            unreachable!("out_slot finds a connection out");
        };
        if hung_up {
            return Err(connection);
        }
        let slot = &mut parked.slots[index as usize];
        slot.waits = slot.waits.wrapping_add(1).max(1);
        let wait = slot.waits;
        parked.settle(index, connection, deadline, woken, wait);
        self.announce(&parked);
        Ok(u64::from(wait) << 32 | u64::from(index))
    }

    /// Takes out the connection parked to wait in a queue under `key`, if it still waits
    /// there.
    pub fn take_waiting(&self, key: u64) -> Option<T> {
        let (index, wait) = ((key & u64::from(u32::MAX)) as u32, (key >> 32) as u32);
        let mut parked = self.lock();
        let waits_here = parked.slots.get(index as usize).is_some_and(|slot| {
            matches!(slot.state, State::Parked { wait: parked_wait, .. } if parked_wait == wait)
        });
        waits_here.then(|| parked.take_out(index))
    }

    /// Hands a connection to the threads, as though it had become readable.
    pub fn hand(&self, connection: T) -> io::Result<()> {
        let mut parked = self.lock();
        parked.handed.push_back(connection);
        // The watchdog adds a thread when connections wait for one; it sleeps while the set
        // is empty.
        if parked.sleepers > 0 {
            self.no_longer_empty.notify_all();
        }
        drop(parked);
        rustix::io::write(&self.handed_signal, &1u64.to_ne_bytes())?;
        Ok(())
    }

    /// Wakes the watchdog when the set has just stopped being empty.
    fn announce(&self, parked: &Parked<T>) {
        if parked.len == 1 && parked.sleepers > 0 {
            self.no_longer_empty.notify_all();
        }
    }

    /// Waits up to `timeout` for a parked connection to become readable, and takes it out.
    pub fn wait(&self, timeout: Duration) -> io::Result<Wakeup<T>> {
        let mut events = [epoll::Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0),
        }];
        // A timeout too long to express is no timeout.
        let timeout = Timespec::try_from(timeout).ok();
        // One event at a time: a thread serves what it takes, and the others take the rest.
        let woken = loop {
            match epoll::wait(&self.epoll, &mut events, timeout.as_ref()) {
                Err(rustix::io::Errno::INTR) => {}
                woken => break woken?,
            }
        };
        if woken == 0 {
            return Ok(Wakeup::TimedOut);
        }
        let (token, flags) = (events[0].data.u64(), events[0].flags);
        if token == HANDED_TOKEN {
            return self.take_handed();
        }
        let hang_up = flags.intersects(HANGUP);
        let mut parked = self.lock();
        let Some(index) = parked.current(token) else {
            parked.stale += 1;
            return Ok(Wakeup::Stale);
        };
        match &mut parked.slots[index as usize].state {
            State::Parked { wait, woken, .. } if *wait != 0 && !hang_up => *woken = true,
            State::Parked { .. } => {
                let connection = parked.take_out(index);
                // The client's FIN came with this wakeup, and no later edge will tell of it.
                if hang_up {
                    parked.slots[index as usize].state = State::Out {
                        woken: true,
                        hung_up: true,
                    };
                }
                parked.taken += 1;
                return Ok(Wakeup::Ready(connection));
            }
            State::Out { woken, hung_up } => {
                *woken = true;
                *hung_up |= hang_up;
            }
            State::Free => {}
        }
        parked.stale += 1;
        Ok(Wakeup::Stale)
    }

    /// Takes one connection handed over, if another thread has not taken it first.
    fn take_handed(&self) -> io::Result<Wakeup<T>> {
        let mut count = [0; 8];
        match rustix::io::read(&self.handed_signal, &mut count) {
            Ok(_) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(Wakeup::Stale),
            Err(errno) => return Err(errno.into()),
        }
        let mut parked = self.lock();
        let Some(connection) = parked.handed.pop_front() else {
            return Ok(Wakeup::Stale);
        };
        parked.taken += 1;
        Ok(Wakeup::Ready(connection))
    }

    /// Takes out every connection whose deadline has passed by `now`, but those that wait
    /// for input and are readable: their bytes came in time, and they are handed to the
    /// threads, whether or not a wakeup is on its way (none is for bytes behind TCP's urgent
    /// mark, which a read stops at).
    pub fn expired(&self, now: Instant) -> Vec<T> {
        let mut parked = self.lock();
        if parked.earliest.is_none_or(|earliest| earliest > now) {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut handed = 0u64;
        let mut earliest = None;
        for index in 0..parked.slots.len() {
            let State::Parked {
                connection,
                deadline,
                wait,
                ..
            } = &parked.slots[index].state
            else {
                continue;
            };
            let deadline = *deadline;
            if deadline > now {
                if earliest.is_none_or(|earliest| deadline < earliest) {
                    earliest = Some(deadline);
                }
                continue;
            }
            let readable = *wait == 0 && is_readable(connection);
            let connection = parked.take_out(index as u32);
            if readable {
                parked.handed.push_back(connection);
                handed += 1;
            } else {
                expired.push(connection);
            }
        }
        parked.earliest = earliest;
        drop(parked);
        if handed > 0
            && let Err(error) = rustix::io::write(&self.handed_signal, &handed.to_ne_bytes())
        {
            tracing::error!("cannot hand ready connections to the threads: {error}");
        }
        expired
    }

    /// Blocks while nothing is parked, or handed over.
    pub fn wait_until_occupied(&self) {
        let mut parked = self.lock();
        while parked.len == 0 && parked.handed.is_empty() {
            parked.sleepers += 1;
            parked = self
                .no_longer_empty
                .wait(parked)
                .unwrap_or_else(PoisonError::into_inner);
            parked.sleepers -= 1;
        }
    }

    /// Takes out up to `most` parked connections to close, to make room for new ones:
    /// those `rank` ranks lowest, by rank and then by deadline, oldest first; `None` ranks
    /// a connection that must not be closed.
    pub fn evict(&self, most: usize, rank: impl Fn(&T) -> Option<u8>) -> Vec<T> {
        let mut parked = self.lock();
        let mut candidates: Vec<(u8, Instant, u32)> = parked
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let State::Parked {
                    connection,
                    deadline,
                    ..
                } = &slot.state
                else {
                    return None;
                };
                Some((rank(connection)?, *deadline, u32::try_from(index).ok()?))
            })
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .take(most)
            .map(|(_, _, index)| parked.take_out(index))
            .collect()
    }

    /// Whether a wakeup waits for a thread: a connection became readable, or one out being
    /// served got more input (which a thread finds stale).
    pub fn has_ready(&self) -> bool {
        is_readable(&self.epoll)
    }

    /// How many connections have been taken out to be served so far.
    pub fn taken(&self) -> u64 {
        self.lock().taken
    }

    /// How many wakeups threads have handled so far, stale ones included: whether they keep
    /// up with [`IdleSet::has_ready`].
    pub fn wakeups(&self) -> u64 {
        let parked = self.lock();
        parked.taken + parked.stale
    }

    fn lock(&self) -> MutexGuard<'_, Parked<T>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Send> Release for IdleSet<T> {
    fn release(&self, token: u64) {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = parked.current(token) {
            let slot = &mut parked.slots[index as usize];
            // A parked connection holds its own membership: it cannot be dropped while
            // parked, only once taken out.
            debug_assert!(!matches!(slot.state, State::Parked { .. }));
            slot.state = State::Free;
            slot.generation = slot.generation.wrapping_add(1);
            parked.free.push(index);
        }
    }
}

/// Whether reading `fd` would return at once; an epoll instance is readable while it holds
/// events not yet taken.
fn is_readable(fd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|ready| ready > 0)
}

impl<T> Parked<T> {
    /// The slot `token` names, if it still belongs to the connection the token was made for.
    fn current(&self, token: u64) -> Option<u32> {
        let (index, generation) = ((token & u64::from(u32::MAX)) as u32, (token >> 32) as u32);
        self.slots
            .get(index as usize)
            .is_some_and(|slot| slot.generation == generation)
            .then_some(index)
    }

    /// The slot of a connection taken out, by its token.
    fn out_slot(&self, token: u64) -> u32 {
        match self.current(token) {
            Some(index) if matches!(self.slots[index as usize].state, State::Out { .. }) => index,
            _ => unreachable!("a connection taken from the set has its slot until it is dropped"),
        }
    }

    /// Puts `connection` in its slot, parked: for input, or (`wait` not 0) in a queue.
    fn settle(&mut self, index: u32, connection: T, deadline: Instant, woken: bool, wait: u32) {
        self.slots[index as usize].state = State::Parked {
            connection,
            deadline,
            woken,
            wait,
        };
        self.len += 1;
        if self.earliest.is_none_or(|earliest| deadline < earliest) {
            self.earliest = Some(deadline);
        }
    }

    /// Takes a parked connection out of its slot, which stays its own until it is dropped.
    fn take_out(&mut self, index: u32) -> T {
        let slot = &mut self.slots[index as usize];
        let State::Parked {
            connection, woken, ..
        } = std::mem::replace(
            &mut slot.state,
            State::Out {
                woken: false,
                hung_up: false,
            },
        )
        else {
            unreachable!("only a parked connection is taken out");
        };
        slot.state = State::Out {
            woken,
            hung_up: false,
        };
        self.len -= 1;
        connection
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::BorrowedFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    const SOON: Duration = Duration::from_secs(5);

    /// A socket as the set holds it.
    struct Conn {
        stream: UnixStream,
        membership: Membership,
    }

    impl AsFd for Conn {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.stream.as_fd()
        }
    }

    impl Member for Conn {
        fn membership(&self) -> &Membership {
            &self.membership
        }
    }

    fn add(set: &Arc<IdleSet<Conn>>, stream: UnixStream, deadline: Instant) {
        set.add(deadline, |membership| Conn { stream, membership })
            .unwrap();
    }

    fn woken(set: &IdleSet<Conn>) -> Option<Conn> {
        match set.wait(SOON).unwrap() {
            Wakeup::Ready(conn) => Some(conn),
            Wakeup::TimedOut | Wakeup::Stale => None,
        }
    }

    /// The next connection ready, past stale wakeups.
    fn next_ready(set: &IdleSet<Conn>) -> Option<Conn> {
        for _ in 0..4 {
            match set.wait(SOON).unwrap() {
                Wakeup::Ready(conn) => return Some(conn),
                Wakeup::TimedOut => return None,
                Wakeup::Stale => {}
            }
        }
        None
    }

    fn times_out(set: &IdleSet<Conn>) -> bool {
        matches!(
            set.wait(Duration::from_millis(10)).unwrap(),
            Wakeup::TimedOut
        )
    }

    #[test]
    fn a_connection_is_taken_once_when_readable_and_again_when_more_comes() {
        let set = IdleSet::new().unwrap();
        let (parked, mut peer) = UnixStream::pair().unwrap();
        let later = Instant::now() + SOON;
        add(&set, parked, later);
        assert!(times_out(&set));
        assert!(!set.has_ready());

        peer.write_all(b"x").unwrap();
        assert!(set.has_ready());
        let taken = woken(&set).expect("readable");
        assert_eq!(set.taken(), 1);
        // Taken out, it is not handed to a second thread, readable as it still is.
        assert!(times_out(&set));
        // Parked again with nothing new, it waits; more input wakes it.
        assert!(set.park(taken, later, false).is_none());
        assert!(times_out(&set));
        peer.write_all(b"y").unwrap();
        let taken = woken(&set).expect("woken by more input");
        assert_eq!(set.taken(), 2);
        drop(taken);
    }

    #[test]
    fn input_that_came_while_out_or_was_left_unread_gives_the_connection_back() {
        let set = IdleSet::new().unwrap();
        let (parked, mut peer) = UnixStream::pair().unwrap();
        let later = Instant::now() + SOON;
        add(&set, parked, later);
        peer.write_all(b"x").unwrap();
        let taken = woken(&set).unwrap();
        // More comes while it is served: the thread woken for it finds it out.
        peer.write_all(b"y").unwrap();
        assert!(matches!(set.wait(SOON).unwrap(), Wakeup::Stale));
        let taken = set.park(taken, later, false).expect("given back");
        // Once: parked again with nothing new, it waits.
        assert!(set.park(taken, later, false).is_none());
        assert!(times_out(&set));
        // A read that filled its buffer may have left input in the socket.
        peer.write_all(b"z").unwrap();
        let taken = woken(&set).unwrap();
        let taken = set.park(taken, later, true).expect("given back");
        assert!(set.park(taken, later, false).is_none());
    }

    #[test]
    fn expired_takes_out_only_what_is_past_its_deadline() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (due, _due_peer) = UnixStream::pair().unwrap();
        let (waiting, _waiting_peer) = UnixStream::pair().unwrap();
        add(&set, due, now);
        add(&set, waiting, now + SOON);
        assert_eq!(set.expired(now).len(), 1);
        assert!(set.expired(now).is_empty());
        assert_eq!(set.expired(now + SOON).len(), 1);
    }

    #[test]
    fn a_readable_connection_outlives_its_deadline_until_taken() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (sent_in_time, mut peer) = UnixStream::pair().unwrap();
        add(&set, sent_in_time, now);
        peer.write_all(b"x").unwrap();
        // Handed to the threads, whether a wakeup is on its way or not.
        assert!(set.expired(now).is_empty());
        assert!(next_ready(&set).is_some());
        assert!(times_out(&set));
    }

    #[test]
    fn a_wakeup_for_a_connection_that_left_is_stale() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (expiring, mut peer) = UnixStream::pair().unwrap();
        add(&set, expiring, now);
        let mut expired = set.expired(now);
        assert_eq!(expired.len(), 1);
        let expired = expired.pop();
        // Out, and then closed: its slot is freed for the next connection.
        peer.write_all(b"x").unwrap();
        assert!(matches!(set.wait(SOON).unwrap(), Wakeup::Stale));
        drop(expired);
        let (next, mut next_peer) = UnixStream::pair().unwrap();
        add(&set, next, now + SOON);
        next_peer.write_all(b"y").unwrap();
        let next = woken(&set).expect("the slot's next occupant");
        let mut input = [0];
        std::io::Read::read_exact(&mut &next.stream, &mut input).unwrap();
        assert_eq!(&input, b"y");
    }

    #[test]
    fn a_waiting_connection_is_taken_by_token_and_handed_to_the_threads() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (waiting, mut peer) = UnixStream::pair().unwrap();
        add(&set, waiting, now + SOON);
        peer.write_all(b"x").unwrap();
        let waiting = woken(&set).unwrap();
        // Parked to wait for something else, input does not wake it, nor keep it past its
        // deadline.
        let Ok(key) = set.park_waiting(waiting, now) else {
            panic!("its client is there");
        };
        peer.write_all(b"y").unwrap();
        assert!(matches!(set.wait(SOON).unwrap(), Wakeup::Stale));
        assert!(times_out(&set));
        let waiting = set.take_waiting(key).expect("still parked");
        assert!(set.take_waiting(key).is_none());
        set.hand(waiting).unwrap();
        assert!(set.has_ready());
        let handed = woken(&set).expect("handed to a thread");
        assert_eq!(set.taken(), 2);
        let mut input = [0; 2];
        std::io::Read::read_exact(&mut &handed.stream, &mut input).unwrap();
        assert_eq!(&input, b"xy");
        // The input that came while it waited is remembered: parked for input, it is given
        // back rather than left waiting for an edge that passed.
        let handed = set.park(handed, now + SOON, false).expect("given back");

        let Ok(key) = set.park_waiting(handed, now) else {
            panic!("its client is there");
        };
        let mut expired = set.expired(now);
        assert_eq!(expired.len(), 1);
        assert!(set.take_waiting(key).is_none());
        // Parked again, to wait for input, a key from its wait in the queue does not take it.
        let expired = expired.pop().unwrap();
        assert!(set.park(expired, now + SOON, false).is_none());
        assert!(set.take_waiting(key).is_none());
    }

    #[test]
    fn a_waiting_connection_wakes_when_its_client_hangs_up() {
        let set = IdleSet::new().unwrap();
        let (waiting, mut peer) = UnixStream::pair().unwrap();
        add(&set, waiting, Instant::now() + SOON);
        peer.write_all(b"x").unwrap();
        let waiting = woken(&set).unwrap();
        let Ok(key) = set.park_waiting(waiting, Instant::now() + SOON) else {
            panic!("its client is there");
        };
        drop(peer);
        assert!(woken(&set).is_some());
        assert!(set.take_waiting(key).is_none());
    }

    #[test]
    fn a_client_that_hung_up_before_its_request_waits_is_given_back() {
        let set = IdleSet::new().unwrap();
        let (waiting, mut peer) = UnixStream::pair().unwrap();
        add(&set, waiting, Instant::now() + SOON);
        peer.write_all(b"request").unwrap();
        let taken = woken(&set).unwrap();
        // Its FIN comes while the request is dispatched, before it is parked to wait.
        drop(peer);
        assert!(matches!(set.wait(SOON).unwrap(), Wakeup::Stale));
        assert!(set.park_waiting(taken, Instant::now() + SOON).is_err());
    }

    #[test]
    fn a_hang_up_that_came_with_the_input_gives_the_connection_back() {
        let set = IdleSet::new().unwrap();
        let (parked, mut peer) = UnixStream::pair().unwrap();
        add(&set, parked, Instant::now() + SOON);
        // A request and its client's FIN, before any thread looks.
        peer.write_all(b"x").unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let taken = woken(&set).unwrap();
        let mut input = [0];
        std::io::Read::read_exact(&mut &taken.stream, &mut input).unwrap();
        // Its input read, the end of it is still to be read, and no wakeup will come for it.
        assert!(set.park(taken, Instant::now() + SOON, false).is_some());
    }

    #[test]
    fn a_dropped_connection_frees_its_slot() {
        let set = IdleSet::new().unwrap();
        let (first, mut peer) = UnixStream::pair().unwrap();
        add(&set, first, Instant::now() + SOON);
        peer.write_all(b"x").unwrap();
        drop(woken(&set).unwrap());
        let (second, _second_peer) = UnixStream::pair().unwrap();
        add(&set, second, Instant::now() + SOON);
        assert_eq!(set.lock().slots.len(), 1, "the first slot is reused");
    }
}
