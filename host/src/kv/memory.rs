//! `--kv memory`: one map in the process, shared by every worker and gone at exit.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Backend, BucketId, Connection, KeyPage, PAGE_SIZE, Result, Swap, incremented};

type Buckets = HashMap<String, BTreeMap<String, Vec<u8>>>;

#[derive(Default)]
pub struct Memory {
    buckets: Arc<Mutex<Buckets>>,
}

impl Backend for Memory {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        Ok(Box::new(MemoryConnection {
            buckets: self.buckets.clone(),
        }))
    }
}

struct MemoryConnection {
    buckets: Arc<Mutex<Buckets>>,
}

impl MemoryConnection {
    /// The bucket's map, created empty if need be. Each operation holds the one lock for its
    /// whole length, which makes every operation atomic.
    fn with<R>(
        &mut self,
        bucket: BucketId,
        act: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> R,
    ) -> R {
        let mut buckets: MutexGuard<Buckets> =
            self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let name = format!("{}/{}", bucket.namespace, bucket.bucket);
        act(buckets.entry(name).or_default())
    }
}

impl Connection for MemoryConnection {
    fn get(&mut self, bucket: BucketId, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.with(bucket, |map| map.get(key).cloned()))
    }

    fn set(&mut self, bucket: BucketId, key: &str, value: &[u8]) -> Result<()> {
        self.with(bucket, |map| map.insert(key.to_owned(), value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, bucket: BucketId, key: &str) -> Result<()> {
        self.with(bucket, |map| map.remove(key));
        Ok(())
    }

    fn exists(&mut self, bucket: BucketId, key: &str) -> Result<bool> {
        Ok(self.with(bucket, |map| map.contains_key(key)))
    }

    fn list_keys(&mut self, bucket: BucketId, cursor: Option<&str>) -> Result<KeyPage> {
        Ok(self.with(bucket, |map| {
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
        self.with(bucket, |map| {
            let sum = incremented(map.get(key).map(Vec::as_slice), delta)?;
            map.insert(key.to_owned(), sum.to_string().into_bytes());
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
        Ok(self.with(bucket, |map| {
            let current = map.get(key);
            if current.map(Vec::as_slice) != expected {
                return Err(current.cloned());
            }
            map.insert(key.to_owned(), value.to_vec());
            Ok(())
        }))
    }

    fn get_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self.with(bucket, |map| {
            keys.iter().map(|key| map.get(key).cloned()).collect()
        }))
    }

    fn set_many(&mut self, bucket: BucketId, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        self.with(bucket, |map| {
            for (key, value) in pairs {
                map.insert(key.clone(), value.clone());
            }
        });
        Ok(())
    }

    fn delete_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<()> {
        self.with(bucket, |map| {
            for key in keys {
                map.remove(key);
            }
        });
        Ok(())
    }
}
