//! `--kv sqlite:PATH`, the default: one database file in WAL mode, which lets readers and
//! the one writer of the moment work at once. Each worker has its own connection. Writes of
//! one process queue in order; other processes sharing the file queue on SQLite's lock for
//! up to [`BUSY_TIMEOUT`].
//!
//! Writes that arrive while a transaction is being written share the next one and its fsync
//! ([`GroupCommit`]). Every app shares the one writer, so no transaction holds it for long:
//! a batch is written in parts of at most [`TRANSACTION_KEYS`] keys and
//! [`TRANSACTION_BYTES`], and other writes may go between them. A batch stops at its
//! request's deadline.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::commit::{GroupCommit, Size, TRANSACTION_BYTES, TRANSACTION_KEYS};
use super::{
    Backend, BucketId, Connection, Error, KeyPage, PAGE_SIZE, Quota, Result, Swap, Usage,
    incremented, past_deadline,
};

/// How long a write waits for another worker's write to finish before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// synchronous=FULL: a write has reached the disk when it returns, so an acknowledged
/// request survives a power cut as well as a `kill -9`.
const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    CREATE TABLE IF NOT EXISTS kv (
        namespace TEXT NOT NULL,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (namespace, bucket, key)
    ) WITHOUT ROWID;
";

/// Version 1 of the schema: what each namespace holds, kept by triggers in the same
/// transaction as every write, and counted from the data already there.
const USAGE_SCHEMA: &str = "
    CREATE TABLE usage (
        namespace TEXT PRIMARY KEY,
        keys INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO usage
        SELECT namespace, count(*), sum(length(CAST(key AS BLOB)) + length(value)) FROM kv
        GROUP BY namespace;
    CREATE TRIGGER kv_inserted AFTER INSERT ON kv BEGIN
        INSERT INTO usage VALUES (NEW.namespace, 1, length(CAST(NEW.key AS BLOB)) + length(NEW.value))
        ON CONFLICT (namespace) DO UPDATE SET keys = keys + 1, bytes = bytes + excluded.bytes;
    END;
    CREATE TRIGGER kv_updated AFTER UPDATE ON kv BEGIN
        UPDATE usage SET bytes = bytes - length(OLD.value) + length(NEW.value)
        WHERE namespace = NEW.namespace;
    END;
    CREATE TRIGGER kv_deleted AFTER DELETE ON kv BEGIN
        UPDATE usage SET keys = keys - 1, bytes = bytes - length(CAST(OLD.key AS BLOB)) - length(OLD.value)
        WHERE namespace = OLD.namespace;
    END;
    PRAGMA user_version = 1;
";

/// Brings a database of an older schema up to date, once, whichever worker comes first.
fn migrate(connection: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    let version = || -> rusqlite::Result<i64> {
        connection.query_row("PRAGMA user_version", [], |row| row.get(0))
    };
    if version()? >= 1 {
        return Ok(());
    }
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < 1 {
        transaction.execute_batch(USAGE_SCHEMA)?;
    }
    transaction.commit()
}

/// What `namespace` holds, within whatever transaction `connection` is in.
fn usage(connection: &rusqlite::Connection, namespace: &str) -> rusqlite::Result<Usage> {
    connection
        .prepare_cached("SELECT keys, bytes FROM usage WHERE namespace = ?1")?
        .query_row(params![namespace], |row| {
            Ok(Usage {
                keys: row.get(0)?,
                bytes: row.get(1)?,
            })
        })
        .optional()
        .map(Option::unwrap_or_default)
}

pub struct Sqlite {
    path: PathBuf,
    /// SQLite's own lock makes a waiting writer poll with growing sleeps, so under load one
    /// could lose the race again and again: POSTs took up to 1.6 s, and some failed with
    /// "database is locked" after BUSY_TIMEOUT. Writes of this process queue here instead,
    /// in order, and share transactions.
    writers: Arc<GroupCommit>,
    /// How long a write waits for a transaction to take it.
    patience: Duration,
}

impl Sqlite {
    pub fn new(path: PathBuf) -> Sqlite {
        Sqlite {
            path,
            writers: Arc::default(),
            patience: BUSY_TIMEOUT,
        }
    }
}

impl Backend for Sqlite {
    fn connect(&self, quota: Quota) -> Result<Box<dyn Connection>> {
        if let Some(dir) = self.path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            // App data is nobody else's business: directories we create are private.
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| {
                    Error::Backend(format!("cannot create {}: {error}", dir.display()))
                })?;
        }
        let connection = rusqlite::Connection::open(&self.path)
            .and_then(|mut connection| {
                connection.busy_timeout(BUSY_TIMEOUT)?;
                connection.execute_batch(SCHEMA)?;
                migrate(&mut connection)?;
                Ok(connection)
            })
            .map_err(|error| {
                Error::Backend(format!("cannot open {}: {error}", self.path.display()))
            })?;
        Ok(Box::new(SqliteConnection {
            connection,
            writers: self.writers.clone(),
            patience: self.patience,
            quota,
            deadline: None,
            lock_wait: Duration::ZERO,
        }))
    }
}

struct SqliteConnection {
    connection: rusqlite::Connection,
    writers: Arc<GroupCommit>,
    patience: Duration,
    quota: Quota,
    /// When the current operation must end; later by the time it waits for its transactions.
    deadline: Option<Instant>,
    /// How long the current operation waited for its transactions to begin.
    lock_wait: Duration,
}

fn backend(error: rusqlite::Error) -> Error {
    Error::Backend(error.to_string())
}

/// Reads `key` within whatever transaction `connection` is in.
fn read(
    connection: &rusqlite::Connection,
    bucket: BucketId,
    key: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    connection
        .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key = ?3")?
        .query_row(params![bucket.namespace, bucket.bucket, key], |row| {
            row.get(0)
        })
        .optional()
}

fn write(
    connection: &rusqlite::Connection,
    bucket: BucketId,
    key: &str,
    value: &[u8],
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO kv (namespace, bucket, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO UPDATE SET value = excluded.value",
        )?
        .execute(params![bucket.namespace, bucket.bucket, key, value])?;
    Ok(())
}

fn remove(connection: &rusqlite::Connection, bucket: BucketId, key: &str) -> rusqlite::Result<()> {
    connection
        .prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key = ?3")?
        .execute(params![bucket.namespace, bucket.bucket, key])?;
    Ok(())
}

/// A bucket's names, owned, for a write that another worker may run.
struct Owned {
    namespace: String,
    bucket: String,
}

impl Owned {
    fn new(bucket: BucketId) -> Owned {
        Owned {
            namespace: bucket.namespace.to_owned(),
            bucket: bucket.bucket.to_owned(),
        }
    }

    fn id(&self) -> BucketId<'_> {
        BucketId {
            namespace: &self.namespace,
            bucket: &self.bucket,
        }
    }
}

impl SqliteConnection {
    /// Runs `act` in a write transaction, taken at once so that a read inside it cannot be
    /// outdated by another worker's write before this one commits; maybe with other workers'
    /// writes, each in a savepoint of its own. The wait for the transaction to begin is off
    /// the app's clock: the deadline moves by it.
    fn write_transaction<R: Send + 'static>(
        &mut self,
        size: Size,
        act: impl FnOnce(&rusqlite::Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        if self
            .deadline
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            return Err(past_deadline());
        }
        let (result, waited) = self
            .writers
            .write(&mut self.connection, self.patience, size, act);
        self.lock_wait += waited;
        if let Some(deadline) = &mut self.deadline {
            *deadline += waited;
        }
        result
    }

    /// Runs `act`, which may add to `bucket`'s namespace, in a write transaction that is
    /// rolled back if it leaves the namespace past its quota.
    fn write_within_quota<R: Send + 'static>(
        &mut self,
        bucket: BucketId,
        size: Size,
        act: impl FnOnce(&rusqlite::Connection, BucketId) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let quota = self.quota;
        let bucket = Owned::new(bucket);
        self.write_transaction(size, move |connection| {
            let namespace = &bucket.namespace;
            let before = usage(connection, namespace).map_err(backend)?;
            let result = act(connection, bucket.id())?;
            let after = usage(connection, namespace).map_err(backend)?;
            quota.check(before, after)?;
            Ok(result)
        })
    }

    /// Writes `items` with `write` in short transactions, which other writes may go between,
    /// until all are written or the deadline passes.
    fn write_in_parts<T: Clone + Send + 'static>(
        &mut self,
        bucket: BucketId,
        items: &[T],
        bytes: impl Fn(&T) -> usize,
        write: fn(&rusqlite::Connection, BucketId, &T) -> rusqlite::Result<()>,
    ) -> Result<()> {
        let mut rest = items;
        while !rest.is_empty() {
            let mut size = 0;
            let count = rest
                .iter()
                .take(TRANSACTION_KEYS)
                .take_while(|item| {
                    size += bytes(item);
                    size <= TRANSACTION_BYTES
                })
                .count()
                .max(1);
            let (now, later) = rest.split_at(count);
            let size = Size {
                keys: count,
                bytes: now.iter().map(&bytes).sum(),
            };
            let now = now.to_vec();
            self.write_within_quota(bucket, size, move |connection, bucket| {
                now.iter()
                    .try_for_each(|item| write(connection, bucket, item).map_err(backend))
            })?;
            rest = later;
        }
        Ok(())
    }
}

/// The size of a write of one `key` and `value`.
fn one(key: &str, value: &[u8]) -> Size {
    Size {
        keys: 1,
        bytes: key.len() + value.len(),
    }
}

impl Connection for SqliteConnection {
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
        self.lock_wait = Duration::ZERO;
    }

    fn take_lock_wait(&mut self) -> Duration {
        std::mem::take(&mut self.lock_wait)
    }

    fn get(&mut self, bucket: BucketId, key: &str) -> Result<Option<Vec<u8>>> {
        read(&self.connection, bucket, key).map_err(backend)
    }

    fn set(&mut self, bucket: BucketId, key: &str, value: &[u8]) -> Result<()> {
        let size = one(key, value);
        let (key, value) = (key.to_owned(), value.to_vec());
        self.write_within_quota(bucket, size, move |connection, bucket| {
            write(connection, bucket, &key, &value).map_err(backend)
        })
    }

    fn delete(&mut self, bucket: BucketId, key: &str) -> Result<()> {
        let size = one(key, &[]);
        let (bucket, key) = (Owned::new(bucket), key.to_owned());
        self.write_transaction(size, move |connection| {
            remove(connection, bucket.id(), &key).map_err(backend)
        })
    }

    fn exists(&mut self, bucket: BucketId, key: &str) -> Result<bool> {
        self.connection
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key = ?3)",
            )
            .and_then(|mut statement| {
                statement.query_row(params![bucket.namespace, bucket.bucket, key], |row| {
                    row.get(0)
                })
            })
            .map_err(backend)
    }

    fn list_keys(&mut self, bucket: BucketId, cursor: Option<&str>) -> Result<KeyPage> {
        // Keys come in order, so the last key of a full page is where the next one starts.
        let keys = self
            .connection
            .prepare_cached(
                "SELECT key FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key > ?3
                 ORDER BY key LIMIT ?4",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(
                        params![
                            bucket.namespace,
                            bucket.bucket,
                            cursor.unwrap_or(""),
                            PAGE_SIZE as i64
                        ],
                        |row| row.get(0),
                    )?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(backend)?;
        let cursor = (keys.len() == PAGE_SIZE).then(|| keys[PAGE_SIZE - 1].clone());
        Ok(KeyPage { keys, cursor })
    }

    fn increment(&mut self, bucket: BucketId, key: &str, delta: i64) -> Result<i64> {
        let size = one(key, &[0; 20]);
        let key = key.to_owned();
        self.write_within_quota(bucket, size, move |connection, bucket| {
            let current = read(connection, bucket, &key).map_err(backend)?;
            let sum = incremented(current.as_deref(), delta)?;
            write(connection, bucket, &key, sum.to_string().as_bytes()).map_err(backend)?;
            Ok(sum)
        })
    }

    fn compare_and_swap(
        &mut self,
        bucket: BucketId,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Swap> {
        let size = one(key, value);
        let (key, expected, value) = (key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.write_within_quota(bucket, size, move |connection, bucket| {
            let current = read(connection, bucket, &key).map_err(backend)?;
            if current != expected {
                return Ok(Err(current));
            }
            write(connection, bucket, &key, &value).map_err(backend)?;
            Ok(Ok(()))
        })
    }

    fn get_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let transaction = self.connection.transaction().map_err(backend)?;
        keys.iter()
            .map(|key| read(&transaction, bucket, key).map_err(backend))
            .collect()
    }

    fn set_many(&mut self, bucket: BucketId, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        self.write_in_parts(
            bucket,
            pairs,
            |(key, value)| key.len() + value.len(),
            |connection, bucket, (key, value)| write(connection, bucket, key, value),
        )
    }

    fn delete_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<()> {
        self.write_in_parts(bucket, keys, String::len, |connection, bucket, key| {
            remove(connection, bucket, key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_waits_its_turn_off_the_clock_and_gives_up_in_time() {
        let dir = std::env::temp_dir().join(format!("wasm-gw-sqlite-turns-{}", std::process::id()));
        let sqlite = Sqlite {
            patience: Duration::from_millis(300),
            ..Sqlite::new(dir.join("kv.sqlite"))
        };
        let quota = Quota {
            keys: 10,
            bytes: 1000,
        };
        let mut waiting = sqlite.connect(quota).unwrap();
        let bucket = BucketId {
            namespace: "test",
            bucket: "b",
        };
        // Another worker's write holds the transaction past the patience of this one.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let holder = {
            let writers = sqlite.writers.clone();
            let mut connection = rusqlite::Connection::open(dir.join("kv.sqlite")).unwrap();
            std::thread::spawn(move || {
                let size = one("held", b"");
                let hold = move |_: &rusqlite::Connection| held.recv().map_err(|_| past_deadline());
                writers
                    .write(&mut connection, Duration::from_secs(60), size, hold)
                    .0
            })
        };
        while sqlite.writers.is_idle() {
            std::thread::yield_now();
        }
        waiting.set_deadline(Instant::now() + Duration::from_secs(60));
        let refused = waiting.set(bucket, "key", b"value");
        assert!(
            matches!(&refused, Err(Error::Backend(why)) if why.contains("no turn to write")),
            "{:?}",
            refused.err()
        );
        assert!(waiting.take_lock_wait() >= Duration::from_millis(300));
        release.send(()).unwrap();
        holder.join().unwrap().unwrap();
        waiting.set_deadline(Instant::now() + Duration::from_secs(60));
        assert!(waiting.set(bucket, "key", b"value").is_ok());
        // A deadline already past stops a batch before it writes anything.
        waiting.set_deadline(Instant::now());
        let late = waiting.set_many(bucket, &[("other".into(), b"value".to_vec())]);
        assert!(late.is_err());
        assert_eq!(waiting.get(bucket, "other").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_namespace_is_held_to_its_quota_and_an_older_database_is_counted() {
        let dir = std::env::temp_dir().join(format!("wasm-gw-sqlite-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kv.sqlite");
        // A database from before usage was kept: three keys of 10 bytes each.
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        for key in ["k1", "k2", "k3"] {
            old.execute(
                "INSERT INTO kv VALUES ('app', 'b', ?1, ?2)",
                params![key, b"12345678".to_vec()],
            )
            .unwrap();
        }
        drop(old);
        let quota = Quota {
            keys: 5,
            bytes: 100,
        };
        let mut app = Sqlite::new(path).connect(quota).unwrap();
        let bucket = BucketId {
            namespace: "app",
            bucket: "b",
        };
        app.set_deadline(Instant::now() + Duration::from_secs(60));
        app.set_many(
            bucket,
            &[
                ("k4".into(), b"12345678".to_vec()),
                ("k5".into(), b"x".to_vec()),
            ],
        )
        .unwrap();
        let refused = |result: Result<()>| matches!(result, Err(Error::Refused(why)) if why.contains("quota is used up"));
        // A sixth key is one too many; so are 60 more bytes.
        assert!(refused(app.set(bucket, "k6", b"x")));
        assert!(refused(app.set(bucket, "k5", &[b'x'; 60])));
        assert_eq!(app.get(bucket, "k5").unwrap().unwrap(), b"x");
        // A write that holds no more than before goes through, and a delete makes room.
        app.set(bucket, "k4", b"87654321").unwrap();
        app.delete(bucket, "k1").unwrap();
        app.set(bucket, "k6", b"x").unwrap();
        assert!(refused(app.increment(bucket, "counter", 1).map(drop)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
