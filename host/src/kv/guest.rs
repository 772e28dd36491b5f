//! The host side of `wasi:keyvalue`: the guest's bucket and CAS handles, checked against the
//! limits and carried out on the worker's connection.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{BucketId, Connection, Error, Store, check_name};
use crate::bindings::wasi::keyvalue::atomics::{self, CasError};
use crate::bindings::wasi::keyvalue::batch;
use crate::bindings::wasi::keyvalue::store::{self, Error as WitError, KeyResponse};

/// Most bucket and CAS handles a guest may hold at once, so that a guest cannot grow the
/// host's handle table without bound.
const MAX_HANDLES: usize = 10_000;

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
    handles: usize,
}

impl Session {
    pub fn new(store: Arc<Store>, connection: Option<Box<dyn Connection>>) -> Session {
        Session {
            store,
            connection,
            handles: 0,
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
        let result = match &mut session.connection {
            Some(connection) => act(connection.as_mut(), bucket),
            None => session
                .store
                .connect()
                .and_then(|connection| act(session.connection.insert(connection).as_mut(), bucket)),
        };
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

    fn push<H: Send + 'static>(&mut self, handle: H) -> Result<Resource<H>, WitError> {
        if self.session.handles >= MAX_HANDLES {
            return Err(WitError::Other(format!(
                "more than {MAX_HANDLES} key-value handles are open; drop some"
            )));
        }
        let handle = self
            .table
            .push(handle)
            .map_err(|error| WitError::Other(error.to_string()))?;
        self.session.handles += 1;
        Ok(handle)
    }

    fn release<H: 'static>(&mut self, handle: Resource<H>) -> wasmtime::Result<H> {
        let handle = self.table.delete(handle)?;
        self.session.handles -= 1;
        Ok(handle)
    }
}

fn refused(error: Error) -> WitError {
    WitError::Other(error.to_string())
}

impl store::Host for KeyValue<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, WitError> {
        if let Err(why) = check_name(&identifier) {
            tracing::debug!(request = self.request_id, "no such bucket: {why}");
            return Err(WitError::NoSuchStore);
        }
        self.push(Bucket { name: identifier })
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
        self.release(bucket).map(drop)
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
        self.check_value(&value).map_err(CasError::StoreError)?;
        let cas = self
            .release(cas)
            .map_err(|error| CasError::StoreError(WitError::Other(error.to_string())))?;
        let swapped = self
            .run(&cas.bucket, |connection, bucket| {
                connection.compare_and_swap(bucket, &cas.key, cas.current.as_deref(), &value)
            })
            .map_err(CasError::StoreError)?;
        match swapped {
            Ok(()) => Ok(()),
            Err(current) => {
                let retry = Cas { current, ..cas };
                Err(match self.push(retry) {
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
        self.push(Cas {
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
        self.release(cas).map(drop)
    }
}

impl batch::Host for KeyValue<'_> {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, WitError> {
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let name = self.bucket_name(&bucket)?;
        let values = self.run(&name, |connection, bucket| {
            connection.get_many(bucket, &keys)
        })?;
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
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let name = self.bucket_name(&bucket)?;
        self.run(&name, |connection, bucket| {
            connection.delete_many(bucket, &keys)
        })
    }
}
