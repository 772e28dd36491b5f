//! `--kv sqlite:PATH`, the default: one database file in WAL mode, which lets readers and
//! the one writer of the moment work at once. Each worker has its own connection. Writers
//! of one process take turns on a mutex; other processes sharing the file queue on SQLite's
//! lock for up to [`BUSY_TIMEOUT`].

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Backend, BucketId, Connection, Error, KeyPage, PAGE_SIZE, Result, Swap, incremented};

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

pub struct Sqlite {
    path: PathBuf,
    /// SQLite's own lock makes a waiting writer poll with growing sleeps, so under load one
    /// could lose the race again and again: POSTs took up to 1.6 s, and some failed with
    /// "database is locked" after BUSY_TIMEOUT. A mutex hands the turn over at once.
    writers: Arc<Mutex<()>>,
}

impl Sqlite {
    pub fn new(path: PathBuf) -> Sqlite {
        Sqlite {
            path,
            writers: Arc::default(),
        }
    }
}

impl Backend for Sqlite {
    fn connect(&self) -> Result<Box<dyn Connection>> {
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
            .and_then(|connection| {
                connection.busy_timeout(BUSY_TIMEOUT)?;
                connection.execute_batch(SCHEMA)?;
                Ok(connection)
            })
            .map_err(|error| {
                Error::Backend(format!("cannot open {}: {error}", self.path.display()))
            })?;
        Ok(Box::new(SqliteConnection {
            connection,
            writers: self.writers.clone(),
        }))
    }
}

struct SqliteConnection {
    connection: rusqlite::Connection,
    writers: Arc<Mutex<()>>,
}

/// Waits for this process's turn to write.
fn writers_turn(writers: &Mutex<()>) -> MutexGuard<'_, ()> {
    writers.lock().unwrap_or_else(PoisonError::into_inner)
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

impl SqliteConnection {
    /// Runs `act` in a write transaction, taken at once so that a read inside it cannot be
    /// outdated by another worker's write before this one commits.
    fn write_transaction<R>(
        &mut self,
        act: impl FnOnce(&rusqlite::Connection) -> Result<R>,
    ) -> Result<R> {
        let _turn = writers_turn(&self.writers);
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let result = act(&transaction)?;
        transaction.commit().map_err(backend)?;
        Ok(result)
    }
}

impl Connection for SqliteConnection {
    fn get(&mut self, bucket: BucketId, key: &str) -> Result<Option<Vec<u8>>> {
        read(&self.connection, bucket, key).map_err(backend)
    }

    fn set(&mut self, bucket: BucketId, key: &str, value: &[u8]) -> Result<()> {
        let _turn = writers_turn(&self.writers);
        write(&self.connection, bucket, key, value).map_err(backend)
    }

    fn delete(&mut self, bucket: BucketId, key: &str) -> Result<()> {
        let _turn = writers_turn(&self.writers);
        remove(&self.connection, bucket, key).map_err(backend)
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
        self.write_transaction(|connection| {
            let current = read(connection, bucket, key).map_err(backend)?;
            let sum = incremented(current.as_deref(), delta)?;
            write(connection, bucket, key, sum.to_string().as_bytes()).map_err(backend)?;
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
        self.write_transaction(|connection| {
            let current = read(connection, bucket, key).map_err(backend)?;
            if current.as_deref() != expected {
                return Ok(Err(current));
            }
            write(connection, bucket, key, value).map_err(backend)?;
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
        self.write_transaction(|connection| {
            pairs
                .iter()
                .try_for_each(|(key, value)| write(connection, bucket, key, value).map_err(backend))
        })
    }

    fn delete_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<()> {
        self.write_transaction(|connection| {
            keys.iter()
                .try_for_each(|key| remove(connection, bucket, key).map_err(backend))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    #[test]
    fn a_writer_waits_its_turn_past_sqlites_busy_timeout() {
        let dir = std::env::temp_dir().join(format!("wasm-gw-sqlite-turns-{}", std::process::id()));
        let sqlite = Sqlite::new(dir.join("kv.sqlite"));
        let mut waiting = sqlite.connect().unwrap();
        // Another worker of this process, in the middle of a write that outlasts
        // BUSY_TIMEOUT, as an fsync on a loaded disk can.
        let busy = rusqlite::Connection::open(&sqlite.path).unwrap();
        let turn = writers_turn(&sqlite.writers);
        busy.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (started, writing) = mpsc::channel();
        let bucket = BucketId {
            namespace: "test",
            bucket: "b",
        };
        let writer = thread::spawn(move || {
            started.send(()).unwrap();
            waiting.set(bucket, "key", b"value")
        });
        writing.recv().unwrap();
        thread::sleep(BUSY_TIMEOUT + Duration::from_secs(1));
        busy.execute_batch("COMMIT").unwrap();
        drop(turn);
        let written = writer.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(written.is_ok(), "{:?}", written.err());
    }
}
