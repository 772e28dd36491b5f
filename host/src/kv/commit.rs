//! Group commit for SQLite: the writes of one process's workers that arrive while a
//! transaction is being written wait for it to end and then share the next transaction, and
//! its one fsync. Each write runs in a savepoint of its own, so one that fails (a quota
//! refused) leaves the others of its batch as they were, and each is acknowledged only once
//! the transaction that holds it has committed: synchronous=FULL stays what it promised.
//!
//! There is no writer thread: whichever waiting worker finds no batch being written writes the
//! next one, everyone's writes, on its own connection. Writes are taken in the order they
//! came, so a worker that writes again and again cannot keep another waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Error, Result};

/// Most keys written in one transaction: a few milliseconds of another app's wait.
pub const TRANSACTION_KEYS: usize = 128;
/// Most value bytes written in one transaction.
pub const TRANSACTION_BYTES: usize = 4 << 20;

/// How much a write writes, to bound a transaction: keys and bytes.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub keys: usize,
    pub bytes: usize,
}

#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    /// Signalled when a batch has been written.
    written: Condvar,
}

#[derive(Default)]
struct State {
    /// Writes waiting for a batch, in the order they came.
    queue: VecDeque<Queued>,
    /// Whether a batch is being written now.
    writing: bool,
    next: u64,
    /// Batches written, for tests.
    #[cfg(test)]
    batches: u64,
}

struct Queued {
    id: u64,
    size: Size,
    write: Box<dyn Pending>,
}

/// A write waiting in a batch, its result held until the batch's transaction ends.
trait Pending: Send {
    /// Runs the write within the batch's transaction; whether it succeeded.
    fn run(&mut self, connection: &rusqlite::Connection) -> bool;
    /// Hands its waiter the write's result if the transaction committed, else why not.
    /// `started` is when its batch began, which ends its wait.
    fn finish(self: Box<Self>, committed: Result<(), &str>, started: Instant);
}

/// What a waiter whose write was dropped unfinished is told: a batch that never ended (a
/// panic on the writing thread) must not leave it waiting for good.
const ABANDONED: &str = "the write was abandoned by the worker writing its batch";

/// Where a write's waiter finds its result, and when its batch began.
type Slot<R> = Arc<Mutex<Option<(Result<R>, Instant)>>>;

struct Write<R, F> {
    act: Option<F>,
    result: Option<Result<R>>,
    slot: Slot<R>,
    finished: bool,
}

impl<R, F> Write<R, F> {
    fn new(act: F, slot: Slot<R>) -> Write<R, F> {
        Write {
            act: Some(act),
            result: None,
            slot,
            finished: false,
        }
    }
}

impl<R, F> Drop for Write<R, F> {
    fn drop(&mut self) {
        if !self.finished {
            let abandoned = Err(Error::Backend(ABANDONED.into()));
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((abandoned, Instant::now()));
        }
    }
}

impl<R, F> Pending for Write<R, F>
where
    R: Send,
    F: FnOnce(&rusqlite::Connection) -> Result<R> + Send,
{
    fn run(&mut self, connection: &rusqlite::Connection) -> bool {
        let Some(act) = self.act.take() else {
            return false;
        };
        let result = act(connection);
        let succeeded = result.is_ok();
        self.result = Some(result);
        succeeded
    }

    fn finish(mut self: Box<Self>, committed: Result<(), &str>, started: Instant) {
        self.finished = true;
        let result = match (self.result.take(), committed) {
            // A write that failed says why, whatever became of the rest.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(why)) => Err(Error::Backend(why.to_owned())),
            (None, Ok(())) => Err(Error::Backend("the write was never run".into())),
        };
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((result, started));
    }
}

impl GroupCommit {
    /// Runs `act` in a transaction, alone or with other workers' writes, on `connection` or
    /// another worker's, and returns its result once the transaction has committed, with how
    /// long it waited for its batch to begin. Gives up if no batch takes it within
    /// `patience`. The thread counts as waiting meanwhile, so that the server adds threads
    /// to serve others: the more writers wait, the more share each transaction.
    pub fn write<R, F>(
        &self,
        connection: &mut rusqlite::Connection,
        patience: Duration,
        size: Size,
        act: F,
    ) -> (Result<R>, Duration)
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<R> + Send + 'static,
    {
        let _waiting = crate::waiting::Waiting::begin();
        let asked = Instant::now();
        let until = asked + patience;
        let slot: Slot<R> = Arc::default();
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.queue.push_back(Queued {
            id,
            size,
            write: Box::new(Write::new(act, slot.clone())),
        });
        loop {
            if let Some((result, started)) =
                slot.lock().unwrap_or_else(PoisonError::into_inner).take()
            {
                return (result, started.saturating_duration_since(asked));
            }
            if !state.writing && state.queue.is_empty() {
                // Neither queued nor being written, and no result: none would ever come.
                return (Err(Error::Backend(ABANDONED.into())), asked.elapsed());
            }
            if !state.writing {
                // This worker's write, or writes that came before it.
                state.writing = true;
                let batch = take_batch(&mut state.queue);
                drop(state);
                let writing = Writing(self);
                let not_begun = write_batch(connection, batch);
                if let Some((why, batch)) = not_begun {
                    // The fault may be this worker's connection's: the writes go back to
                    // the front for another worker to write, all but this one's own, which
                    // fails, so that this worker stops writing batches.
                    let mut requeued = self.lock();
                    for queued in batch.into_iter().rev() {
                        requeued.queue.push_front(queued);
                    }
                    let mine = requeued.queue.iter().position(|queued| queued.id == id);
                    let mine = mine.and_then(|at| requeued.queue.remove(at));
                    drop(requeued);
                    drop(writing);
                    if let Some(mine) = mine {
                        mine.write.finish(Err(&why), Instant::now());
                    }
                    state = self.lock();
                    continue;
                }
                drop(writing);
                state = self.lock();
                continue;
            }
            let left = until.saturating_duration_since(Instant::now());
            let queued = state.queue.iter().position(|queued| queued.id == id);
            state = match queued {
                Some(at) if left.is_zero() => {
                    state.queue.remove(at);
                    let error = Error::Backend(format!(
                        "no turn to write within {patience:?}: other workers' writes held it"
                    ));
                    return (Err(error), asked.elapsed());
                }
                Some(_) => self.wait(state, Some(left)),
                // In the batch being written: its result comes when the batch ends.
                None => self.wait(state, None),
            };
        }
    }

    /// Whether no batch is being written, for tests.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        !self.lock().writing
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        match timeout {
            Some(timeout) => {
                self.written
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => self
                .written
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
        }
    }
}

/// A batch being written: when it ends, however it ends, the next one may begin.
struct Writing<'a>(&'a GroupCommit);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.writing = false;
        #[cfg(test)]
        {
            state.batches += 1;
        }
        self.0.written.notify_all();
    }
}

/// The writes of `queue` that one transaction may hold, in order: the first, whatever its
/// size, and each after it that still fits, so that a small write (another app's, say)
/// need not wait behind a large one.
fn take_batch(queue: &mut VecDeque<Queued>) -> Vec<Queued> {
    let (mut keys, mut bytes) = (0, 0);
    let mut batch = Vec::new();
    let mut rest = VecDeque::with_capacity(queue.len());
    for queued in queue.drain(..) {
        let fits = keys + queued.size.keys <= TRANSACTION_KEYS
            && bytes + queued.size.bytes <= TRANSACTION_BYTES;
        if batch.is_empty() || fits {
            keys += queued.size.keys;
            bytes += queued.size.bytes;
            batch.push(queued);
        } else {
            rest.push_back(queued);
        }
    }
    *queue = rest;
    batch
}

/// Writes `batch` in one transaction, each write in a savepoint, and hands each its result;
/// or gives it back, with why, if the transaction could not begin.
fn write_batch(
    connection: &mut rusqlite::Connection,
    batch: Vec<Queued>,
) -> Option<(String, Vec<Queued>)> {
    if !connection.is_autocommit() {
        // Left in a transaction by a failure before: nothing of it was acknowledged.
        let _ = connection.execute_batch("ROLLBACK");
    }
    // Waiting for another process's lock is waiting, off the app's clock.
    if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
        return Some((error.to_string(), batch));
    }
    let started = Instant::now();
    let mut writes: Vec<Box<dyn Pending>> = batch.into_iter().map(|queued| queued.write).collect();
    let written = (|| {
        for write in &mut writes {
            connection.execute_batch("SAVEPOINT write")?;
            if write.run(connection) {
                connection.execute_batch("RELEASE write")?;
            } else {
                connection.execute_batch("ROLLBACK TO write; RELEASE write")?;
            }
        }
        connection.execute_batch("COMMIT")
    })();
    let why = written.err().map(|error| {
        if !connection.is_autocommit() {
            // What failed is already reported; a rollback that fails too leaves the
            // connection to SQLite's own recovery.
            let _ = connection.execute_batch("ROLLBACK");
        }
        error.to_string()
    });
    for write in writes {
        write.finish(why.as_deref().map_or(Ok(()), Err), started);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn database(name: &str) -> (std::path::PathBuf, rusqlite::Connection) {
        let dir =
            std::env::temp_dir().join(format!("wasm-gw-commit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let connection = rusqlite::Connection::open(dir.join("db.sqlite")).unwrap();
        connection
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        (dir, connection)
    }

    fn insert(value: i64) -> impl FnOnce(&rusqlite::Connection) -> Result<i64> + Send + 'static {
        move |connection| {
            connection
                .execute("INSERT INTO t VALUES (?1)", [value])
                .map_err(|error| Error::Backend(error.to_string()))?;
            Ok(value)
        }
    }

    const ONE: Size = Size { keys: 1, bytes: 8 };

    /// What the table holds, in order.
    fn values(connection: &rusqlite::Connection) -> Vec<i64> {
        connection
            .prepare("SELECT v FROM t ORDER BY v")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(|v| v.unwrap())
            .collect()
    }

    /// Starts a write, on a thread of its own, that holds its batch until `release` is sent
    /// on; returns once the batch is being written.
    fn hold(
        group: &Arc<GroupCommit>,
        dir: &std::path::Path,
    ) -> (mpsc::Sender<()>, std::thread::JoinHandle<i64>) {
        let (release, held) = mpsc::channel::<()>();
        let holder = {
            let group = group.clone();
            let path = dir.join("db.sqlite");
            std::thread::spawn(move || {
                let mut connection = rusqlite::Connection::open(path).unwrap();
                let act = move |c: &rusqlite::Connection| {
                    held.recv().unwrap();
                    insert(0)(c)
                };
                let (result, _) = group.write(&mut connection, Duration::from_secs(30), ONE, act);
                result.unwrap()
            })
        };
        while !group.lock().writing {
            std::thread::yield_now();
        }
        (release, holder)
    }

    #[test]
    fn writes_that_wait_share_a_transaction_and_a_failed_one_is_undone_alone() {
        let (dir, mut first) = database("batch");
        let group = Arc::new(GroupCommit::default());
        // A write that holds the batch being written until told to end.
        let (release, holder) = hold(&group, &dir);
        // Three writes queue behind it, the second one refused by the app's own check.
        let waiters: Vec<_> = (1..=3)
            .map(|value| {
                let mine = group.clone();
                let path = dir.join("db.sqlite");
                let waiter = std::thread::spawn(move || {
                    let mut connection = rusqlite::Connection::open(path).unwrap();
                    let act = move |c: &rusqlite::Connection| {
                        let inserted = insert(value)(c)?;
                        if value == 2 {
                            return Err(Error::Refused("two is refused".into()));
                        }
                        Ok(inserted)
                    };
                    mine.write(&mut connection, Duration::from_secs(30), ONE, act)
                        .0
                });
                while group.lock().queue.len() < value as usize {
                    std::thread::yield_now();
                }
                waiter
            })
            .collect();
        let before = group.lock().batches;
        release.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), 0);
        let results: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(results[0].as_ref().unwrap(), &1);
        assert!(matches!(&results[1], Err(Error::Refused(why)) if why == "two is refused"));
        assert_eq!(results[2].as_ref().unwrap(), &3);
        // The holder's batch, then one for the three.
        assert_eq!(group.lock().batches, before + 2);
        assert_eq!(values(&first), [0, 1, 3]);
        // The writer of a batch can be any of them: this connection writes the next alone.
        assert_eq!(
            group
                .write(&mut first, Duration::from_secs(1), ONE, insert(4))
                .0
                .unwrap(),
            4
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_no_batch_takes_in_time_gives_up_and_is_never_written() {
        let (dir, mut connection) = database("patience");
        let group = Arc::new(GroupCommit::default());
        let (release, holder) = hold(&group, &dir);
        let (refused, waited) =
            group.write(&mut connection, Duration::from_millis(200), ONE, insert(1));
        assert!(
            matches!(&refused, Err(Error::Backend(why)) if why.contains("no turn to write")),
            "{:?}",
            refused.err()
        );
        assert!(waited >= Duration::from_millis(200));
        assert!(group.lock().queue.is_empty());
        release.send(()).unwrap();
        holder.join().unwrap();
        // The holder's write went in, the withdrawn one never did.
        assert_eq!(values(&connection), [0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_holds_no_more_than_a_transaction_may() {
        let mut queue: VecDeque<Queued> = (0..3)
            .map(|id| Queued {
                id,
                size: Size {
                    keys: TRANSACTION_KEYS / 2,
                    bytes: 1,
                },
                write: Box::new(Write::new(insert(0), Arc::default())),
            })
            .collect();
        assert_eq!(take_batch(&mut queue).len(), 2);
        // One write bigger than a transaction is written alone.
        queue.push_back(Queued {
            id: 9,
            size: Size {
                keys: 1,
                bytes: TRANSACTION_BYTES * 2,
            },
            write: Box::new(Write::new(insert(0), Arc::default())),
        });
        assert_eq!(take_batch(&mut queue).len(), 1);
        assert_eq!(take_batch(&mut queue).len(), 1);
        assert!(queue.is_empty());
        // A small write behind one that does not fit rides along with the first.
        for (id, keys) in [(1, 100), (2, 100), (3, 1)] {
            queue.push_back(Queued {
                id,
                size: Size { keys, bytes: 1 },
                write: Box::new(Write::new(insert(0), Arc::default())),
            });
        }
        let ids = |batch: Vec<Queued>| batch.iter().map(|queued| queued.id).collect::<Vec<_>>();
        assert_eq!(ids(take_batch(&mut queue)), [1, 3]);
        assert_eq!(ids(take_batch(&mut queue)), [2]);
    }

    #[test]
    fn a_write_dropped_unfinished_tells_its_waiter() {
        let slot: Slot<i64> = Arc::default();
        drop(Write::new(insert(0), slot.clone()));
        let told = slot.lock().unwrap().take().unwrap().0;
        assert!(matches!(told, Err(Error::Backend(why)) if why == ABANDONED));
    }

    #[test]
    fn a_transaction_that_cannot_begin_fails_the_write_and_the_store_goes_on() {
        let (dir, other) = database("begin");
        let group = GroupCommit::default();
        // Another process holds SQLite's write lock, and this worker does not wait for it.
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut impatient = rusqlite::Connection::open(dir.join("db.sqlite")).unwrap();
        impatient.busy_timeout(Duration::ZERO).unwrap();
        let (locked, _) = group.write(&mut impatient, Duration::from_secs(1), ONE, insert(1));
        assert!(
            matches!(&locked, Err(Error::Backend(why)) if why.contains("locked")),
            "{locked:?}"
        );
        assert!(group.lock().queue.is_empty() && !group.lock().writing);
        other.execute_batch("COMMIT").unwrap();
        let (written, _) = group.write(&mut impatient, Duration::from_secs(1), ONE, insert(2));
        assert_eq!(written.unwrap(), 2);
        assert_eq!(values(&other), [2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
