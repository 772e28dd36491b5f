//! Key-value storage that guests reach through `wasi:keyvalue`: the backends, and the store
//! an app sees through them, with its namespace and limits.
//!
//! A backend stores `(namespace, bucket, key) -> value`. Every worker holds its own
//! [`Connection`], made when it first needs one and dropped after a backend error, so that
//! the next operation connects again and a backend that comes back is used with no restart.

mod commit;
pub mod guest;
mod memory;
mod redis;
mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most keys one `list-keys` page returns: at the default key limit, 256 KiB.
pub const PAGE_SIZE: usize = 1000;

/// Most keys one `get-many`, `set-many` or `delete-many` may name: one call is one short
/// stretch of work, never minutes of it.
pub const MAX_BATCH_KEYS: usize = 1000;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest asked for something the store refuses: a key past the limit, an increment
    /// of a value that is not an integer. Its fault, and the connection is fine.
    #[error("{0}")]
    Refused(String),
    /// The backend failed: down, unreachable, locked, out of space. Retrying later may work.
    #[error("the key-value backend failed: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A bucket of one app: the unit every backend operation names.
#[derive(Clone, Copy, Debug)]
pub struct BucketId<'a> {
    pub namespace: &'a str,
    pub bucket: &'a str,
}

/// One page of keys, and where the next one starts.
pub struct KeyPage {
    pub keys: Vec<String>,
    pub cursor: Option<String>,
}

/// Where key-value data lives.
pub trait Backend: Send + Sync {
    /// Opens a connection for one worker of an app whose namespace holds `quota` at most.
    fn connect(&self, quota: Quota) -> Result<Box<dyn Connection>>;
}

/// The most an app's namespace may hold: keys, and bytes of keys and values together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub keys: u64,
    pub bytes: u64,
}

/// What a namespace holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub keys: i64,
    pub bytes: i64,
}

impl Quota {
    /// Whether a write that takes a namespace from `before` to `after` is refused: it leaves
    /// the namespace past its quota, and holding more than it did. Writes that shrink a
    /// namespace past its quota (the operator lowered it) go through.
    pub fn check(&self, before: Usage, after: Usage) -> Result<()> {
        let over_keys = after.keys > before.keys && after.keys as u64 > self.keys;
        let over_bytes = after.bytes > before.bytes && after.bytes as u64 > self.bytes;
        if over_keys || over_bytes {
            return Err(quota_exceeded(self));
        }
        Ok(())
    }
}

/// The refusal of a write past the quota; the SDKs know it by its start.
pub fn quota_exceeded(quota: &Quota) -> Error {
    Error::Refused(format!(
        "the app's key-value quota is used up: it holds at most {} keys and {} bytes \
         (--kv-quota-keys, --kv-quota-bytes); delete some first",
        quota.keys, quota.bytes
    ))
}

/// What a pair adds to a namespace: one key, and its bytes.
pub fn pair_bytes(key: &str, value: &[u8]) -> i64 {
    (key.len() + value.len()) as i64
}

/// One worker's connection to a backend. Each operation is complete when it returns: a
/// write that returned `Ok` has been committed.
pub trait Connection: Send {
    /// The operations that follow must end by `deadline`, the app time their request has
    /// left; waiting for another worker's write does not count.
    fn set_deadline(&mut self, deadline: Instant);
    /// How long the last operation waited for other workers' writes: no app's own time.
    fn take_lock_wait(&mut self) -> Duration {
        Duration::ZERO
    }

    fn get(&mut self, bucket: BucketId, key: &str) -> Result<Option<Vec<u8>>>;
    fn set(&mut self, bucket: BucketId, key: &str, value: &[u8]) -> Result<()>;
    fn delete(&mut self, bucket: BucketId, key: &str) -> Result<()>;
    fn exists(&mut self, bucket: BucketId, key: &str) -> Result<bool>;
    /// Up to [`PAGE_SIZE`] keys after `cursor`, which is what a previous page returned.
    fn list_keys(&mut self, bucket: BucketId, cursor: Option<&str>) -> Result<KeyPage>;
    /// Adds `delta` to the decimal integer stored at `key` (0 if unset) and returns the sum.
    fn increment(&mut self, bucket: BucketId, key: &str, delta: i64) -> Result<i64>;
    /// Sets `key` to `value` if it still holds `expected` (`None`: unset).
    fn compare_and_swap(
        &mut self,
        bucket: BucketId,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Swap>;
    fn get_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;
    fn set_many(&mut self, bucket: BucketId, pairs: &[(String, Vec<u8>)]) -> Result<()>;
    fn delete_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<()>;
}

/// How a compare-and-swap went: swapped, or not, with what the key holds now.
pub type Swap = std::result::Result<(), Option<Vec<u8>>>;

/// The sum an increment stores, or why there is none.
fn incremented(current: Option<&[u8]>, delta: i64) -> Result<i64> {
    let current = match current {
        None => 0,
        Some(bytes) => parse_integer(bytes)
            .ok_or_else(|| Error::Refused("the value is not a decimal integer".into()))?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| Error::Refused("the increment overflows a 64-bit integer".into()))
}

/// A decimal integer as Redis spells one, so that every backend takes the same values: an
/// optional minus, and no plus sign, spaces or leading zeros.
fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [b'0'] => bytes.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    canonical
        .then(|| std::str::from_utf8(bytes).ok()?.parse().ok())
        .flatten()
}

/// The `--kv` setting: which backend, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendUrl {
    Memory,
    Sqlite(PathBuf),
    Redis(String),
}

impl BackendUrl {
    /// The default: SQLite in `state_dir`.
    pub fn in_state_dir(state_dir: &Path) -> BackendUrl {
        BackendUrl::Sqlite(state_dir.join("kv.sqlite"))
    }

    /// Opens the backend. Nothing connects yet: a Redis server that is down at startup only
    /// fails the requests that need it.
    pub fn open(&self) -> anyhow::Result<Arc<dyn Backend>> {
        Ok(match self {
            BackendUrl::Memory => Arc::new(memory::Memory::default()),
            BackendUrl::Sqlite(path) => Arc::new(sqlite::Sqlite::new(path.clone())),
            BackendUrl::Redis(url) => Arc::new(redis::Redis::new(url)?),
        })
    }
}

impl std::str::FromStr for BackendUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<BackendUrl, String> {
        if text == "memory" {
            Ok(BackendUrl::Memory)
        } else if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite: needs a path, as in sqlite:data/kv.sqlite".into());
            }
            Ok(BackendUrl::Sqlite(path.into()))
        } else if text.starts_with("redis://") {
            Ok(BackendUrl::Redis(text.to_owned()))
        } else {
            Err(format!(
                "{text:?} is not a key-value store: use memory, sqlite:PATH or redis://HOST:PORT/DB"
            ))
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendUrl::Memory => f.write_str("memory"),
            BackendUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            BackendUrl::Redis(url) => f.write_str(url),
        }
    }
}

/// How big keys and values may be, and how much an app may store.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key: usize,
    pub max_value: usize,
    pub quota: Quota,
}

/// What one app gets: a backend, seen through its own namespace and within limits.
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Where the data lives, for logs.
    pub url: BackendUrl,
    pub namespace: Arc<str>,
    pub limits: Limits,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The namespace is checked when an app that uses the store loads, not here: an app that
    /// never uses it may have any file name.
    pub fn new(
        backend: Arc<dyn Backend>,
        url: BackendUrl,
        namespace: &str,
        limits: Limits,
    ) -> Store {
        Store {
            backend,
            url,
            namespace: namespace.into(),
            limits,
        }
    }

    pub fn connect(&self) -> Result<Box<dyn Connection>> {
        self.backend.connect(self.limits.quota)
    }

    pub fn check_key(&self, key: &str) -> Result<()> {
        match key.len() {
            0 => Err(Error::Refused("the key is empty".into())),
            len if len > self.limits.max_key => Err(Error::Refused(format!(
                "the key is {len} bytes, past the limit of {}",
                self.limits.max_key
            ))),
            _ => Ok(()),
        }
    }

    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.limits.max_value {
            return Err(Error::Refused(format!(
                "the value is {} bytes, past the limit of {}",
                value.len(),
                self.limits.max_value
            )));
        }
        Ok(())
    }
}

/// Why an operation stopped at its deadline.
pub fn past_deadline() -> Error {
    Error::Backend("the request's deadline passed during the operation".into())
}

/// Longest namespace or bucket name.
const MAX_NAME: usize = 64;

/// Namespaces and bucket names become part of Redis keys and SQLite rows: keeping them to
/// letters, digits, `-`, `_` and `.` keeps one app's names from ever spelling another's.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(allowed) {
        return Err(format!(
            "{name:?} must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!("memory".parse(), Ok(BackendUrl::Memory));
        assert_eq!(
            "sqlite:data/kv.sqlite".parse(),
            Ok(BackendUrl::Sqlite("data/kv.sqlite".into()))
        );
        assert_eq!(
            "sqlite:///tmp/kv.sqlite".parse(),
            Ok(BackendUrl::Sqlite("/tmp/kv.sqlite".into()))
        );
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse(),
            Ok(BackendUrl::Redis("redis://127.0.0.1:6379/2".into()))
        );
        assert!("sqlite:".parse::<BackendUrl>().is_err());
        assert!("postgres://x".parse::<BackendUrl>().is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("tasks").is_ok());
        assert!(check_name("my-app.v2_1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a:b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn increments() {
        assert_eq!(incremented(None, 5).unwrap(), 5);
        assert_eq!(incremented(Some(b"-3"), 5).unwrap(), 2);
        assert!(matches!(incremented(Some(b"x"), 1), Err(Error::Refused(_))));
        assert!(matches!(
            incremented(Some(i64::MAX.to_string().as_bytes()), 1),
            Err(Error::Refused(_))
        ));
        assert_eq!(incremented(Some(b"0"), -1).unwrap(), -1);
        for odd in [&b"+5"[..], b"007", b" 5", b"-0", b"-", b""] {
            assert!(incremented(Some(odd), 1).is_err(), "{odd:?}");
        }
    }
}
