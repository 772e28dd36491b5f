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
///
/// ```no_run
/// # let keys: Vec<String> = Vec::new();
/// // `Bucket::get_many` on these keys takes this many calls to the host:
/// let calls = keys.len().div_ceil(wasm_gw_sdk::kv::MAX_BATCH_KEYS);
/// ```
pub const MAX_BATCH_KEYS: usize = 1000;

/// Why a key-value operation failed.
///
/// ```no_run
/// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) {
/// use wasm_gw_sdk::kv::Error;
/// match bucket.set("draft", "text") {
///     Ok(()) => {}
///     Err(Error::Unavailable(why)) => eprintln!("not saved, try again later: {why}"),
///     Err(error) => eprintln!("not saved: {error}"),
/// }
/// # }
/// ```
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
    ///
    /// ```no_run
    /// # fn save(bucket: &wasm_gw_sdk::kv::Bucket, data: &[u8]) -> wasm_gw_sdk::Result<()> {
    /// match bucket.set("upload", data) {
    ///     Err(error) if error.is_quota_exceeded() => Err("storage full".into()),
    ///     result => Ok(result?),
    /// }
    /// # }
    /// ```
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

/// The result of a key-value operation.
///
/// ```no_run
/// fn next_order_number(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<i64> {
///     bucket.increment("orders", 1)
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A named collection of key-value pairs in the app's namespace.
///
/// ```no_run
/// # fn demo() -> wasm_gw_sdk::kv::Result<()> {
/// let sessions = wasm_gw_sdk::kv::Bucket::open("sessions")?;
/// sessions.set("session:42", "alice")?;
/// # Ok(()) }
/// ```
pub struct Bucket(store::Bucket);

impl Bucket {
    /// Opens the bucket `name`; it needs no creating.
    ///
    /// ```no_run
    /// # fn demo() -> wasm_gw_sdk::kv::Result<()> {
    /// let bucket = wasm_gw_sdk::kv::Bucket::open("default")?;
    /// # Ok(()) }
    /// ```
    pub fn open(name: &str) -> Result<Bucket> {
        Ok(Bucket(store::open(name)?))
    }

    /// The value of `key`, or `None` if it is not set.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// if let Some(bytes) = bucket.get("greeting")? {
    ///     println!("{}", String::from_utf8_lossy(&bytes));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key)?)
    }

    /// Sets `key` to `value`. When this returns, the write is committed.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// bucket.set("greeting", "hello")?;
    /// bucket.set("avatar", vec![0x89, b'P', b'N', b'G'])?;
    /// # Ok(()) }
    /// ```
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        Ok(self.0.set(key, value.as_ref())?)
    }

    /// Deletes `key`; deleting a key that is not set does nothing.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// bucket.delete("session:42")?;
    /// # Ok(()) }
    /// ```
    pub fn delete(&self, key: &str) -> Result<()> {
        Ok(self.0.delete(key)?)
    }

    /// Whether `key` is set.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// if !bucket.exists("setup-done")? {
    ///     bucket.set("setup-done", "1")?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.0.exists(key)?)
    }

    /// One page of the bucket's keys: the first if `cursor` is `None`, else the one that
    /// starts where the page that returned `cursor` ended.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let page = bucket.list_keys(None)?;
    /// println!("first keys: {:?}", page.keys);
    /// if let Some(cursor) = page.cursor.as_deref() {
    ///     let next_page = bucket.list_keys(Some(cursor))?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list_keys(&self, cursor: Option<&str>) -> Result<KeyPage> {
        Ok(self.0.list_keys(cursor)?)
    }

    /// Every key in the bucket, in no particular order; a key written meanwhile may be
    /// missing or listed twice.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let keys = bucket.keys()?;
    /// let sessions = keys.iter().filter(|key| key.starts_with("session:")).count();
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let order_number = bucket.increment("orders", 1)?;
    /// # Ok(()) }
    /// ```
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        Ok(atomics::increment(&self.0, key, delta)?)
    }

    /// Replaces the value of `key` with `change(current)`, atomically: if another writer
    /// changes the value meanwhile, `change` runs again on the new one. `change` returning
    /// `None` leaves the value as it is. Returns what was written.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// // Appends to the log even while other workers append too.
    /// bucket.update("log", |current| {
    ///     let mut log = current.unwrap_or_default().to_vec();
    ///     log.extend_from_slice(b"visited\n");
    ///     Some(log)
    /// })?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let keys = ["cart:1".to_owned(), "cart:2".to_owned()];
    /// let carts = bucket.get_many(&keys)?;
    /// let found = carts.iter().filter(|cart| cart.is_some()).count();
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// bucket.set_many(&[
    ///     ("color".to_owned(), b"blue".to_vec()),
    ///     ("size".to_owned(), b"L".to_vec()),
    /// ])?;
    /// # Ok(()) }
    /// ```
    pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        for pairs in pairs.chunks(MAX_BATCH_KEYS) {
            batch::set_many(&self.0, pairs)?;
        }
        Ok(())
    }

    /// Deletes every key, [`MAX_BATCH_KEYS`] a call. Not atomic: if it fails, some keys may
    /// have been deleted.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let mut stale = bucket.keys()?;
    /// stale.retain(|key| key.starts_with("cache:"));
    /// bucket.delete_many(&stale)?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let tags = bucket.get_json::<Vec<String>>("tags")?.unwrap_or_default();
    /// # Ok(()) }
    /// ```
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value` as JSON.
    ///
    /// ```no_run
    /// # use wasm_gw_sdk::serde_json;
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let profile = serde_json::json!({"name": "Ada", "langs": ["en", "fr"]});
    /// bucket.set_json("profile:7", &profile)?;
    /// # Ok(()) }
    /// ```
    pub fn set_json<T: serde::Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.set(key, serde_json::to_vec(value)?)
    }

    /// [`Bucket::update`] on JSON values.
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// bucket.update_json("recent", |list: Option<Vec<String>>| {
    ///     let mut list = list.unwrap_or_default();
    ///     list.push("new entry".to_owned());
    ///     Some(list)
    /// })?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # fn demo(bucket: &wasm_gw_sdk::kv::Bucket) -> wasm_gw_sdk::kv::Result<()> {
    /// let keys = ["price:apple".to_owned(), "price:pear".to_owned()];
    /// let prices = bucket.get_many_json::<f64>(&keys)?;
    /// # Ok(()) }
    /// ```
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
