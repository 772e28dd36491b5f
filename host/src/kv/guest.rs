//! The host side of `wasi:keyvalue`: the guest's bucket and CAS handles, checked against the
//! limits and carried out on the worker's connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{BucketId, Connection, Error, MAX_BATCH_KEYS, Store, check_name};
use crate::bindings::wasi::keyvalue::atomics::{self, CasError};
use crate::bindings::wasi::keyvalue::batch;
use crate::bindings::wasi::keyvalue::store::{self, Error as WitError, KeyResponse};
use crate::metrics::metrics;

/// Most bucket handles a guest may hold at once: each costs the host a little memory.
const MAX_BUCKETS: usize = 10_000;
/// Most compare-and-swap handles a guest may hold at once: each holds a copy of a value.
const MAX_SWAPS: usize = 64;
/// Most value bytes one `get-many` gathers, unless one value may be larger: the guest could
/// name the same large key a million times.
const MAX_BATCH_BYTES: usize = 64 << 20;
/// Keys `get-many` reads at a time, between checks of the running total.
const BATCH_CHUNK: usize = 64;

/// An open bucket, as the guest holds it.
pub struct Bucket {
    name: String,
}

/// A compare-and-swap in progress: the key, and the value it held when the handle was made.
pub struct Cas {
    bucket: String,
    key: String,
    current: Option<Vec<u8>>,
}

/// One worker's use of the app's store: the connection lives as long as the worker, across
/// instance replacements, and is dropped after a backend error so the next use reconnects.
pub struct Session {
    store: Arc<Store>,
    connection: Option<Box<dyn Connection>>,
    /// Open handles of each kind, held to [`MAX_BUCKETS`] and [`MAX_SWAPS`].
    buckets: usize,
    swaps: usize,
}

impl Session {
    pub fn new(store: Arc<Store>, connection: Option<Box<dyn Connection>>) -> Session {
        Session {
            store,
            connection,
            buckets: 0,
            swaps: 0,
        }
    }

    /// Gives up the connection, for the worker's next instance.
    pub fn take_connection(&mut self) -> Option<Box<dyn Connection>> {
        self.connection.take()
    }
}

/// What the `wasi:keyvalue` functions work on: borrowed from the guest's state.
pub struct KeyValue<'a> {
    pub table: &'a mut ResourceTable,
    pub session: &'a mut Session,
    /// The request being served, for the log.
    pub request_id: u64,
    /// When the request's app time runs out: no operation goes on past it.
    pub deadline: Instant,
    /// Time the operations waited for other workers' writes, which is no app's own: it is
    /// taken off the request's clock.
    pub waited: &'a mut Duration,
}

/// Marks [`KeyValue`] as the data the `wasi:keyvalue` host functions get.
pub struct KeyValueData;

impl HasData for KeyValueData {
    type Data<'a> = KeyValue<'a>;
}

/// Adds the `wasi:keyvalue` imports to `linker`, reaching their state through `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, KeyValueData>(linker, view)?;
    atomics::add_to_linker::<T, KeyValueData>(linker, view)?;
    batch::add_to_linker::<T, KeyValueData>(linker, view)
}

impl KeyValue<'_> {
    /// Runs `act` on the connection, connecting first if there is none.
    fn run<R>(
        &mut self,
        bucket: &str,
        act: impl FnOnce(&mut dyn Connection, BucketId) -> super::Result<R>,
    ) -> Result<R, WitError> {
        let session = &mut *self.session;
        let bucket = BucketId {
            namespace: &session.store.namespace,
            bucket,
        };
        let deadline = self.deadline;
        let waited = &mut *self.waited;
        let act = |connection: &mut dyn Connection| {
            connection.set_deadline(deadline);
            let result = act(connection, bucket);
            *waited += connection.take_lock_wait();
            result
        };
        let result = match &mut session.connection {
            Some(connection) => act(connection.as_mut()),
            None => session
                .store
                .connect()
                .and_then(|connection| act(session.connection.insert(connection).as_mut())),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::Refused(_)) => "refused",
            Err(Error::Backend(_)) => "failed",
        };
        metrics().kv_operation(&session.store.namespace, outcome);
        result.map_err(|error| {
            if let Error::Backend(why) = &error {
                session.connection = None;
                tracing::warn!(
                    request = self.request_id,
                    namespace = %session.store.namespace,
                    store = %session.store.url,
                    "key-value operation failed: {why}"
                );
            }
            WitError::Other(error.to_string())
        })
    }

    fn bucket_name(&self, bucket: &Resource<Bucket>) -> Result<String, WitError> {
        self.table
            .get(bucket)
            .map(|bucket| bucket.name.clone())
            .map_err(|error| WitError::Other(error.to_string()))
    }

    fn check_key(&self, key: &str) -> Result<(), WitError> {
        self.session.store.check_key(key).map_err(refused)
    }

    fn check_value(&self, value: &[u8]) -> Result<(), WitError> {
        self.session.store.check_value(value).map_err(refused)
    }

    /// A batch names at most [`MAX_BATCH_KEYS`] keys.
    fn check_batch(&self, keys: usize) -> Result<(), WitError> {
        if keys > MAX_BATCH_KEYS {
            return Err(refused(Error::Refused(format!(
                "a batch of {keys} keys is past the limit of {MAX_BATCH_KEYS}; split it"
            ))));
        }
        Ok(())
    }

    fn push_bucket(&mut self, bucket: Bucket) -> Result<Resource<Bucket>, WitError> {
        if self.session.buckets >= MAX_BUCKETS {
            return Err(refused(Error::Refused(format!(
                "{MAX_BUCKETS} buckets are open already; drop some"
            ))));
        }
        let bucket = self.table.push(bucket).map_err(table_error)?;
        self.session.buckets += 1;
        Ok(bucket)
    }

    fn push_cas(&mut self, cas: Cas) -> Result<Resource<Cas>, WitError> {
        if self.session.swaps >= MAX_SWAPS {
            return Err(refused(Error::Refused(format!(
                "{MAX_SWAPS} compare-and-swap handles are open already; drop some"
            ))));
        }
        let cas = self.table.push(cas).map_err(table_error)?;
        self.session.swaps += 1;
        Ok(cas)
    }

    fn release_cas(&mut self, cas: Resource<Cas>) -> wasmtime::Result<Cas> {
        let cas = self.table.delete(cas)?;
        self.session.swaps -= 1;
        Ok(cas)
    }
}

fn refused(error: Error) -> WitError {
    WitError::Other(error.to_string())
}

fn table_error(error: wasmtime::component::ResourceTableError) -> WitError {
    WitError::Other(error.to_string())
}

impl store::Host for KeyValue<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, WitError> {
        if let Err(why) = check_name(&identifier) {
            tracing::debug!(request = self.request_id, "no such bucket: {why}");
            return Err(WitError::NoSuchStore);
        }
        self.push_bucket(Bucket { name: identifier })
    }
}

impl store::HostBucket for KeyValue<'_> {
    fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, WitError> {
        self.check_key(&key)?;
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| connection.get(bucket, &key))
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), WitError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| {
            connection.set(bucket, &key, &value)
        })
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), WitError> {
        self.check_key(&key)?;
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| connection.delete(bucket, &key))
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, WitError> {
        self.check_key(&key)?;
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| connection.exists(bucket, &key))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Result<KeyResponse, WitError> {
        let name = self.bucket_name(&bucket)?;
        let page = self.run(&name, |connection, bucket| {
            connection.list_keys(bucket, cursor.as_deref())
        })?;
        Ok(KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.session.buckets -= 1;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, WitError> {
        self.check_key(&key)?;
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| {
            connection.increment(bucket, &key, delta)
        })
    }

    fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Result<(), CasError> {
        // The guest gave the handle up with this call, whatever happens next.
        let cas = self
            .release_cas(cas)
            .map_err(|error| CasError::StoreError(WitError::Other(error.to_string())))?;
        self.check_value(&value).map_err(CasError::StoreError)?;
        let swapped = self
            .run(&cas.bucket, |connection, bucket| {
                connection.compare_and_swap(bucket, &cas.key, cas.current.as_deref(), &value)
            })
            .map_err(CasError::StoreError)?;
        match swapped {
            Ok(()) => Ok(()),
            Err(current) => {
                let retry = Cas { current, ..cas };
                Err(match self.push_cas(retry) {
                    Ok(retry) => CasError::CasFailed(retry),
                    Err(error) => CasError::StoreError(error),
                })
            }
        }
    }
}

impl atomics::HostCas for KeyValue<'_> {
    fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>, WitError> {
        self.check_key(&key)?;
        let name = self.bucket_name(&bucket)?;
        let current = self.run(&name, |connection, bucket| connection.get(bucket, &key))?;
        self.push_cas(Cas {
            bucket: name,
            key,
            current,
        })
    }

    fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, WitError> {
        self.table
            .get(&cas)
            .map(|cas| cas.current.clone())
            .map_err(|error| WitError::Other(error.to_string()))
    }

    fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.release_cas(cas).map(drop)
    }
}

impl batch::Host for KeyValue<'_> {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, WitError> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let name = self.bucket_name(&bucket)?;
        let budget = MAX_BATCH_BYTES.max(self.session.store.limits.max_value);
        let mut values = Vec::with_capacity(keys.len());
        let mut gathered = 0;
        for chunk in keys.chunks(BATCH_CHUNK) {
            let chunk = self.run(&name, |connection, bucket| {
                connection.get_many(bucket, chunk)
            })?;
            gathered += chunk.iter().flatten().map(Vec::len).sum::<usize>();
            if gathered > budget {
                return Err(refused(Error::Refused(format!(
                    "the values come to more than {budget} bytes; get fewer at a time"
                ))));
            }
            values.extend(chunk);
        }
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| value.map(|value| (key, value)))
            .collect())
    }

    fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), WitError> {
        self.check_batch(pairs.len())?;
        for (key, value) in &pairs {
            self.check_key(key)?;
            self.check_value(value)?;
        }
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| {
            connection.set_many(bucket, &pairs)
        })
    }

    fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<(), WitError> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| {
            connection.delete_many(bucket, &keys)
        })
    }
}
