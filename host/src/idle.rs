//! Connections waiting for their next bytes: parked in epoll with a deadline, holding no
//! thread, until they become readable or the deadline passes.
//!
//! Each connection is armed for one wakeup (`EPOLLONESHOT`), so that exactly one of the
//! threads waiting here takes it; it is armed again when it is parked again.
//!
//! A connection whose request waits in its app's queue is parked too, woken only if its
//! client hangs up, and taken out by its token when a worker is handed to it; it then goes
//! to the threads through a queue of its own, which an eventfd in the epoll set signals.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

/// Readable, or the peer closed its side (which reads as the end of input).
const WAKE_ON: EventFlags = EventFlags::IN
    .union(EventFlags::RDHUP)
    .union(EventFlags::ONESHOT);

/// For a request waiting in a queue: only a hang-up. Body bytes arriving meanwhile wait in
/// the kernel for the app.
const WAKE_ON_HANGUP: EventFlags = EventFlags::RDHUP.union(EventFlags::ONESHOT);

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

/// What the threads see when they wait.
pub enum Wakeup<T> {
    /// A connection that became readable.
    Ready(T),
    /// Nothing became readable in time.
    TimedOut,
    /// A wakeup for a connection that had already left the set; wait again.
    Stale,
}

/// The connections in slots; a token names a slot and which of its occupants it means.
struct Parked<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
    /// No deadline comes before this; the set is searched for expired ones only then.
    earliest: Option<Instant>,
    /// Threads waiting for the set to be occupied; waking them is a syscall, so only done
    /// when there are some.
    sleepers: usize,
    /// How many parked connections have been taken out to be served, ever.
    taken: u64,
    /// Connections taken out by token and handed to the threads.
    handed: VecDeque<T>,
}

struct Slot<T> {
    generation: u32,
    occupant: Option<(T, Instant)>,
    /// Whether the occupant waits for input, which, once arrived, outlives its deadline.
    waits_for_input: bool,
}

impl<T: AsFd> IdleSet<T> {
    pub fn new() -> io::Result<IdleSet<T>> {
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
        Ok(IdleSet {
            epoll,
            handed_signal,
            parked: Mutex::new(Parked {
                slots: Vec::new(),
                free: Vec::new(),
                len: 0,
                earliest: None,
                sleepers: 0,
                taken: 0,
                handed: VecDeque::new(),
            }),
            no_longer_empty: Condvar::new(),
        })
    }

    /// Parks a connection this set has not seen before, until it is readable or `deadline`.
    pub fn add(&self, connection: T, deadline: Instant) -> io::Result<()> {
        self.insert(connection, deadline, true, |epoll, fd, token| {
            epoll::add(epoll, fd, token, WAKE_ON)
        })
        .map(drop)
    }

    /// Parks a connection that was taken from this set, until it is readable or `deadline`.
    pub fn park(&self, connection: T, deadline: Instant) -> io::Result<()> {
        self.insert(connection, deadline, true, |epoll, fd, token| {
            epoll::modify(epoll, fd, token, WAKE_ON)
        })
        .map(drop)
    }

    /// Parks a connection that was taken from this set, and whose request waits for
    /// something else than its client: until its client hangs up, `deadline` passes, or it
    /// is taken out by the token returned.
    pub fn park_waiting(&self, connection: T, deadline: Instant) -> io::Result<u64> {
        self.insert(connection, deadline, false, |epoll, fd, token| {
            epoll::modify(epoll, fd, token, WAKE_ON_HANGUP)
        })
    }

    /// Takes out the connection parked under `token`, if it is still there.
    pub fn take(&self, token: u64) -> Option<T> {
        self.lock().take(token)
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

    fn insert(
        &self,
        connection: T,
        deadline: Instant,
        waits_for_input: bool,
        arm: impl FnOnce(&OwnedFd, &T, EventData) -> rustix::io::Result<()>,
    ) -> io::Result<u64> {
        let mut parked = self.lock();
        let index = match parked.free.pop() {
            Some(index) => index,
            None => {
                parked.slots.push(Slot {
                    generation: 0,
                    occupant: None,
                    waits_for_input: true,
                });
                u32::try_from(parked.slots.len() - 1).expect("fewer than 2^32 connections")
            }
        };
        let slot = &mut parked.slots[index as usize];
        slot.waits_for_input = waits_for_input;
        let token = EventData::new_u64(u64::from(slot.generation) << 32 | u64::from(index));
        // Armed while the lock is held: a thread woken for it waits until it is in its slot.
        let (connection, _) = slot.occupant.insert((connection, deadline));
        let armed = arm(&self.epoll, connection, token);
        parked.len += 1;
        if let Err(errno) = armed {
            let unparked = parked.vacate(index);
            // Closing it takes other locks; not under this one.
            drop(parked);
            drop(unparked);
            return Err(errno.into());
        }
        if parked.earliest.is_none_or(|earliest| deadline < earliest) {
            parked.earliest = Some(deadline);
        }
        if parked.len == 1 && parked.sleepers > 0 {
            self.no_longer_empty.notify_all();
        }
        Ok(token.u64())
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
        let token = events[0].data.u64();
        if token == HANDED_TOKEN {
            return self.take_handed();
        }
        let mut parked = self.lock();
        let Some(connection) = parked.take(token) else {
            return Ok(Wakeup::Stale);
        };
        parked.taken += 1;
        Ok(Wakeup::Ready(connection))
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
    /// for input and are readable: their bytes came in time, and a thread will take them.
    pub fn expired(&self, now: Instant) -> Vec<T> {
        let mut parked = self.lock();
        if parked.earliest.is_none_or(|earliest| earliest > now) {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut earliest = None;
        for index in 0..parked.slots.len() {
            let Some((connection, deadline)) = &parked.slots[index].occupant else {
                continue;
            };
            let deadline = *deadline;
            let waits_for_input = parked.slots[index].waits_for_input;
            if deadline <= now && !(waits_for_input && is_readable(connection)) {
                expired.push(parked.vacate(index as u32).0);
            } else if earliest.is_none_or(|earliest| deadline < earliest) {
                earliest = Some(deadline);
            }
        }
        parked.earliest = earliest;
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
                let (connection, deadline) = slot.occupant.as_ref()?;
                Some((rank(connection)?, *deadline, u32::try_from(index).ok()?))
            })
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .take(most)
            .map(|(_, _, index)| parked.vacate(index).0)
            .collect()
    }

    /// Whether a parked connection is readable and no thread has taken it yet.
    pub fn has_ready(&self) -> bool {
        is_readable(&self.epoll)
    }

    /// How many connections have been taken out to be served so far.
    pub fn taken(&self) -> u64 {
        self.lock().taken
    }

    fn lock(&self) -> MutexGuard<'_, Parked<T>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// Takes out the occupant `token` names, if the slot still holds it.
    fn take(&mut self, token: u64) -> Option<T> {
        let (index, generation) = ((token & u64::from(u32::MAX)) as u32, (token >> 32) as u32);
        let current = self
            .slots
            .get(index as usize)
            .is_some_and(|slot| slot.generation == generation && slot.occupant.is_some());
        current.then(|| self.vacate(index).0)
    }

    /// Empties an occupied slot; its token goes stale.
    fn vacate(&mut self, index: u32) -> (T, Instant) {
        let slot = &mut self.slots[index as usize];
        let occupant = slot.occupant.take().expect("an occupied slot");
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        occupant
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    const SOON: Duration = Duration::from_secs(5);

    fn woken(set: &IdleSet<UnixStream>) -> Option<UnixStream> {
        match set.wait(SOON).unwrap() {
            Wakeup::Ready(stream) => Some(stream),
            Wakeup::TimedOut | Wakeup::Stale => None,
        }
    }

    #[test]
    fn a_connection_is_taken_once_when_readable_and_again_after_parking() {
        let set = IdleSet::new().unwrap();
        let (parked, mut peer) = UnixStream::pair().unwrap();
        let later = Instant::now() + SOON;
        set.add(parked, later).unwrap();
        assert!(matches!(
            set.wait(Duration::from_millis(10)).unwrap(),
            Wakeup::TimedOut
        ));
        assert!(!set.has_ready());

        peer.write_all(b"x").unwrap();
        assert!(set.has_ready());
        let taken = woken(&set).expect("readable");
        assert_eq!(set.taken(), 1);
        // Taken out, it is not handed to a second thread, readable as it still is.
        assert!(matches!(
            set.wait(Duration::from_millis(10)).unwrap(),
            Wakeup::TimedOut
        ));
        // Parked again unread, it is readable at once.
        set.park(taken, later).unwrap();
        assert!(woken(&set).is_some());
        assert_eq!(set.taken(), 2);
    }

    #[test]
    fn expired_takes_out_only_what_is_past_its_deadline() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (due, _due_peer) = UnixStream::pair().unwrap();
        let (waiting, _waiting_peer) = UnixStream::pair().unwrap();
        set.add(due, now).unwrap();
        set.add(waiting, now + SOON).unwrap();
        assert_eq!(set.expired(now).len(), 1);
        assert!(set.expired(now).is_empty());
        assert_eq!(set.expired(now + SOON).len(), 1);
    }

    #[test]
    fn a_readable_connection_outlives_its_deadline_until_taken() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (sent_in_time, mut peer) = UnixStream::pair().unwrap();
        set.add(sent_in_time, now).unwrap();
        peer.write_all(b"x").unwrap();
        assert!(set.expired(now).is_empty());
        assert!(woken(&set).is_some());
    }

    #[test]
    fn a_wakeup_for_a_connection_that_left_is_stale() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (expiring, mut peer) = UnixStream::pair().unwrap();
        set.add(expiring, now).unwrap();
        let [expired] = <[UnixStream; 1]>::try_from(set.expired(now)).unwrap();
        // Still armed in epoll, under a token that no longer names it.
        peer.write_all(b"x").unwrap();
        assert!(matches!(set.wait(SOON).unwrap(), Wakeup::Stale));
        // Its slot's next occupant is not mistaken for it.
        let (next, mut next_peer) = UnixStream::pair().unwrap();
        set.add(next, now + SOON).unwrap();
        next_peer.write_all(b"y").unwrap();
        assert!(woken(&set).is_some());
        drop(expired);
    }

    #[test]
    fn a_waiting_connection_is_taken_by_token_and_handed_to_the_threads() {
        let set = IdleSet::new().unwrap();
        let now = Instant::now();
        let (waiting, mut peer) = UnixStream::pair().unwrap();
        set.add(waiting, now + SOON).unwrap();
        peer.write_all(b"x").unwrap();
        let waiting = woken(&set).unwrap();
        // Parked to wait for something else, unread input does not wake it, nor keep it
        // past its deadline.
        let token = set.park_waiting(waiting, now).unwrap();
        assert!(matches!(
            set.wait(Duration::from_millis(10)).unwrap(),
            Wakeup::TimedOut
        ));
        let waiting = set.take(token).expect("still parked");
        assert!(set.take(token).is_none());
        set.hand(waiting).unwrap();
        assert!(set.has_ready());
        let mut handed = woken(&set).expect("handed to a thread");
        assert_eq!(set.taken(), 2);
        let mut input = [0];
        std::io::Read::read_exact(&mut handed, &mut input).unwrap();
        assert_eq!(&input, b"x");

        let token = set.park_waiting(handed, now).unwrap();
        assert_eq!(set.expired(now).len(), 1);
        assert!(set.take(token).is_none());
    }

    #[test]
    fn a_waiting_connection_wakes_when_its_client_hangs_up() {
        let set = IdleSet::new().unwrap();
        let (waiting, peer) = UnixStream::pair().unwrap();
        set.add(waiting, Instant::now() + SOON).unwrap();
        drop(peer);
        let waiting = woken(&set).unwrap();
        let token = set.park_waiting(waiting, Instant::now() + SOON).unwrap();
        assert!(woken(&set).is_some());
        assert!(set.take(token).is_none());
    }
}
