//! Key-value storage that every worker shares and that outlives the instance: the host's
//! `wasi:keyvalue`, with the operator's choice of SQLite, Redis or memory behind it.
//!
//! Each app sees only its own namespace. Keys are strings (256 bytes at most by default) and
//! values are bytes (1 MiB at most by default); the `json` feature stores any serde type.
//!
//! ```no_run
//! use wasm_gw_sdk::kv::Bucket;
//!
//! # fn main() -> Result<(), wasm_gw_sdk::kv::Error> {
//! let bucket = Bucket::open("default")?;
//! bucket.set("greeting", "hello")?;
//! let visits = bucket.increment("visits", 1)?;
//! assert_eq!(bucket.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! # let _ = visits;
//! # Ok(())
//! # }
//! ```

use std::fmt;

use crate::bindings::wasi::keyvalue::atomics::{self, Cas, CasError};
use crate::bindings::wasi::keyvalue::batch;
/// One page of keys, and the cursor for the next page if there is one.
pub use crate::bindings::wasi::keyvalue::store::KeyResponse as KeyPage;
use crate::bindings::wasi::keyvalue::store::{self, Error as WitError};

/// How wasm-gw begins the message of an error that is the backend's, not the caller's.
const BACKEND_FAILED: &str = "the key-value backend failed";

/// How wasm-gw begins the message of a write refused for the app's quota.
const QUOTA_EXCEEDED: &str = "the app's key-value quota is used up";

/// How many times [`Bucket::update`] retries when other writers keep changing the value.
const MAX_UPDATE_ATTEMPTS: usize = 100;

/// Most keys wasm-gw takes in one batch call; the batch methods split longer ones.
pub const MAX_BATCH_KEYS: usize = 1000;

/// Why a key-value operation failed.
#[derive(Debug)]
pub enum Error {
    /// The host has no bucket by that name: names are 1 to 64 letters, digits, `-`, `_`
    /// or `.`.
    NoSuchBucket,
    /// The app may not use this bucket.
    AccessDenied,
    /// The store refused the operation: a key or value past its limit, an increment of a
    /// value that is not an integer. Trying again will not help.
    Refused(String),
    /// The store's backend failed (down, unreachable, locked); later may work.
    Unavailable(String),
    /// Other writers changed the value every time [`Bucket::update`] tried.
    Contended,
    /// A stored value is not the JSON the app expected, or a value would not serialize.
    #[cfg(feature = "json")]
    Json(serde_json::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchBucket => f.write_str("no such bucket"),
            Error::AccessDenied => f.write_str("access to the bucket is denied"),
            Error::Refused(why) | Error::Unavailable(why) => f.write_str(why),
            Error::Contended => write!(
                f,
                "the value kept changing; gave up after {MAX_UPDATE_ATTEMPTS} attempts"
            ),
            #[cfg(feature = "json")]
            Error::Json(why) => write!(f, "JSON: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Whether the store refused a write because the app holds all its quota allows: the
    /// app may delete some of its keys, or its operator raise the quota.
    pub fn is_quota_exceeded(&self) -> bool {
        matches!(self, Error::Refused(why) if why.starts_with(QUOTA_EXCEEDED))
    }
}

impl From<WitError> for Error {
    fn from(error: WitError) -> Error {
        match error {
            WitError::NoSuchStore => Error::NoSuchBucket,
            WitError::AccessDenied => Error::AccessDenied,
            // wasm-gw's convention: a backend failure says so first.
            WitError::Other(why) if why.starts_with(BACKEND_FAILED) => Error::Unavailable(why),
            WitError::Other(why) => Error::Refused(why),
        }
    }
}

#[cfg(feature = "json")]
impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        Error::Json(error)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A named collection of key-value pairs in the app's namespace.
pub struct Bucket(store::Bucket);

impl Bucket {
    /// Opens the bucket `name`; it needs no creating.
    pub fn open(name: &str) -> Result<Bucket> {
        Ok(Bucket(store::open(name)?))
    }

    /// The value of `key`, or `None` if it is not set.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key)?)
    }

    /// Sets `key` to `value`. When this returns, the write is committed.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        Ok(self.0.set(key, value.as_ref())?)
    }

    /// Deletes `key`; deleting a key that is not set does nothing.
    pub fn delete(&self, key: &str) -> Result<()> {
        Ok(self.0.delete(key)?)
    }

    /// Whether `key` is set.
    pub fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.0.exists(key)?)
    }

    /// One page of the bucket's keys: the first if `cursor` is `None`, else the one that
    /// starts where the page that returned `cursor` ended.
    pub fn list_keys(&self, cursor: Option<&str>) -> Result<KeyPage> {
        Ok(self.0.list_keys(cursor)?)
    }

    /// Every key in the bucket, in no particular order; a key written meanwhile may be
    /// missing or listed twice.
    pub fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.list_keys(cursor.as_deref())?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Atomically adds `delta` to the integer at `key` (0 if unset) and returns the result:
    /// every caller, on every worker, gets a different value.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        Ok(atomics::increment(&self.0, key, delta)?)
    }

    /// Replaces the value of `key` with `change(current)`, atomically: if another writer
    /// changes the value meanwhile, `change` runs again on the new one. `change` returning
    /// `None` leaves the value as it is. Returns what was written.
    pub fn update(
        &self,
        key: &str,
        mut change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        let mut cas = Cas::new(&self.0, key)?;
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let current = cas.current()?;
            let Some(new) = change(current.as_deref()) else {
                return Ok(None);
            };
            match atomics::swap(cas, &new) {
                Ok(()) => return Ok(Some(new)),
                Err(CasError::CasFailed(retry)) => cas = retry,
                Err(CasError::StoreError(error)) => return Err(error.into()),
            }
        }
        Err(Error::Contended)
    }

    /// The values of `keys`, in the same order, `None` for each key that is not set. More
    /// than [`MAX_BATCH_KEYS`] keys take several calls.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values = Vec::with_capacity(keys.len());
        for keys in keys.chunks(MAX_BATCH_KEYS) {
            let pairs = batch::get_many(&self.0, keys)?;
            values.extend(pairs.into_iter().map(|pair| pair.map(|(_, value)| value)));
        }
        Ok(values)
    }

    /// Sets every pair, [`MAX_BATCH_KEYS`] a call. Not atomic: if it fails, some pairs may
    /// have been set.
    pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        for pairs in pairs.chunks(MAX_BATCH_KEYS) {
            batch::set_many(&self.0, pairs)?;
        }
        Ok(())
    }

    /// Deletes every key, [`MAX_BATCH_KEYS`] a call. Not atomic: if it fails, some keys may
    /// have been deleted.
    pub fn delete_many(&self, keys: &[String]) -> Result<()> {
        for keys in keys.chunks(MAX_BATCH_KEYS) {
            batch::delete_many(&self.0, keys)?;
        }
        Ok(())
    }
}

#[cfg(feature = "json")]
impl Bucket {
    /// The value of `key`, parsed from JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value` as JSON.
    pub fn set_json<T: serde::Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.set(key, serde_json::to_vec(value)?)
    }

    /// [`Bucket::update`] on JSON values.
    pub fn update_json<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<T>) -> Option<T>,
    ) -> Result<Option<T>> {
        // A value that is not JSON ends the update with that error, not a panic.
        let mut failure = None;
        let written = self.update(key, |current| {
            let current = match current.map(serde_json::from_slice).transpose() {
                Ok(current) => current,
                Err(error) => {
                    failure = Some(error);
                    return None;
                }
            };
            let new = change(current)?;
            match serde_json::to_vec(&new) {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    failure = Some(error);
                    None
                }
            }
        })?;
        if let Some(error) = failure {
            return Err(error.into());
        }
        Ok(written
            .map(|bytes| serde_json::from_slice(&bytes))
            .transpose()?)
    }

    /// The values of `keys` parsed from JSON, in the same order.
    pub fn get_many_json<T: serde::de::DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<T>>> {
        self.get_many(keys)?
            .into_iter()
            .map(|value| {
                value
                    .map(|bytes| serde_json::from_slice(&bytes))
                    .transpose()
                    .map_err(Error::from)
            })
            .collect()
    }
}
