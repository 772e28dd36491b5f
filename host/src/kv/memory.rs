//! `--kv memory`: one map in the process, shared by every worker and gone at exit. Each
//! namespace's usage is kept beside it, so its quota holds as on the other backends: the
//! map holds at most the sum of the apps' `--kv-quota-bytes`, plus its own overhead.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{
    Backend, BucketId, Connection, KeyPage, PAGE_SIZE, Quota, Result, Swap, Usage, incremented,
    pair_bytes,
};

#[derive(Default)]
struct Data {
    buckets: HashMap<String, BTreeMap<String, Vec<u8>>>,
    usage: HashMap<String, Usage>,
}

#[derive(Default)]
pub struct Memory {
    data: Arc<Mutex<Data>>,
}

impl Backend for Memory {
    fn connect(&self, quota: Quota) -> Result<Box<dyn Connection>> {
        Ok(Box::new(MemoryConnection {
            data: self.data.clone(),
            quota,
        }))
    }
}

struct MemoryConnection {
    data: Arc<Mutex<Data>>,
    quota: Quota,
}

/// One bucket, and the usage of its namespace, under the lock.
struct Held<'a> {
    map: &'a mut BTreeMap<String, Vec<u8>>,
    usage: &'a mut Usage,
    quota: Quota,
}

impl Held<'_> {
    /// Sets `key`, unless that takes the namespace past its quota.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let old = self.map.get(key).map(|old| pair_bytes(key, old));
        let after = Usage {
            keys: self.usage.keys + i64::from(old.is_none()),
            bytes: self.usage.bytes + pair_bytes(key, value) - old.unwrap_or(0),
        };
        self.quota.check(*self.usage, after)?;
        *self.usage = after;
        self.map.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.usage.keys -= 1;
            self.usage.bytes -= pair_bytes(key, &old);
        }
    }
}

impl MemoryConnection {
    /// Reads the bucket's map, empty if there is none: a read creates nothing, so that
    /// reads of made-up bucket names cannot grow the host outside the quota.
    fn read<R>(
        &mut self,
        bucket: BucketId,
        act: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> R,
    ) -> R {
        let data: MutexGuard<Data> = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let name = format!("{}/{}", bucket.namespace, bucket.bucket);
        match data.buckets.get(&name) {
            Some(map) => act(map),
            None => act(&BTreeMap::new()),
        }
    }

    /// The bucket's map, created empty if need be, and gone again if it stays empty. Each
    /// operation holds the one lock for its whole length, which makes every operation
    /// atomic.
    fn with<R>(&mut self, bucket: BucketId, act: impl FnOnce(&mut Held) -> R) -> R {
        let mut data: MutexGuard<Data> = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let Data { buckets, usage } = &mut *data;
        let name = format!("{}/{}", bucket.namespace, bucket.bucket);
        let usage = match usage.get_mut(bucket.namespace) {
            Some(usage) => usage,
            None => usage.entry(bucket.namespace.to_owned()).or_default(),
        };
        let map = buckets.entry(name.clone()).or_default();
        let result = act(&mut Held {
            map,
            usage,
            quota: self.quota,
        });
        // A write the quota refused leaves no empty bucket behind.
        if buckets.get(&name).is_some_and(BTreeMap::is_empty) {
            buckets.remove(&name);
        }
        result
    }
}

impl Connection for MemoryConnection {
    /// Every operation takes microseconds: a thousand keys at most, under one lock.
    fn set_deadline(&mut self, _deadline: std::time::Instant) {}

    fn get(&mut self, bucket: BucketId, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read(bucket, |map| map.get(key).cloned()))
    }

    fn set(&mut self, bucket: BucketId, key: &str, value: &[u8]) -> Result<()> {
        self.with(bucket, |held| held.set(key, value))
    }

    fn delete(&mut self, bucket: BucketId, key: &str) -> Result<()> {
        self.delete_many(bucket, std::slice::from_ref(&key.to_owned()))
    }

    fn exists(&mut self, bucket: BucketId, key: &str) -> Result<bool> {
        Ok(self.read(bucket, |map| map.contains_key(key)))
    }

    fn list_keys(&mut self, bucket: BucketId, cursor: Option<&str>) -> Result<KeyPage> {
        Ok(self.read(bucket, |map| {
            let start = cursor.map_or(Bound::Unbounded, Bound::Excluded);
            let keys: Vec<String> = map
                .range::<str, _>((start, Bound::Unbounded))
                .take(PAGE_SIZE)
                .map(|(key, _)| key.clone())
                .collect();
            let cursor = (keys.len() == PAGE_SIZE).then(|| keys[PAGE_SIZE - 1].clone());
            KeyPage { keys, cursor }
        }))
    }

    fn increment(&mut self, bucket: BucketId, key: &str, delta: i64) -> Result<i64> {
        self.with(bucket, |held| {
            let sum = incremented(held.map.get(key).map(Vec::as_slice), delta)?;
            held.set(key, sum.to_string().as_bytes())?;
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
        self.with(bucket, |held| {
            let current = held.map.get(key);
            if current.map(Vec::as_slice) != expected {
                return Ok(Err(current.cloned()));
            }
            held.set(key, value)?;
            Ok(Ok(()))
        })
    }

    fn get_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self.read(bucket, |map| {
            keys.iter().map(|key| map.get(key).cloned()).collect()
        }))
    }

    fn set_many(&mut self, bucket: BucketId, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        self.with(bucket, |held| {
            pairs
                .iter()
                .try_for_each(|(key, value)| held.set(key, value))
        })
    }

    fn delete_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<()> {
        let mut data: MutexGuard<Data> = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let Data { buckets, usage } = &mut *data;
        let name = format!("{}/{}", bucket.namespace, bucket.bucket);
        // A delete creates nothing either, and a bucket emptied goes away.
        let (Some(map), Some(usage)) = (buckets.get_mut(&name), usage.get_mut(bucket.namespace))
        else {
            return Ok(());
        };
        let mut held = Held {
            map,
            usage,
            quota: self.quota,
        };
        keys.iter().for_each(|key| held.delete(key));
        if held.map.is_empty() {
            buckets.remove(&name);
        }
        Ok(())
    }
}
