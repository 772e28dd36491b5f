//! `--kv redis://HOST:PORT/DB`: state that several wasm-gw processes share. Each bucket is
//! one Redis hash, `wasm-gw:NAMESPACE:BUCKET`, so a namespace can never reach past its own
//! hashes.

use std::time::Duration;

use super::{Backend, BucketId, Connection, Error, KeyPage, PAGE_SIZE, Result};

/// How long connecting may take; loopback or LAN answers in far less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take before the worker gives up on the server.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Compare-and-swap in one step on the server: a Lua script runs with nothing else between
/// its read and its write. ARGV: field, whether a value is expected ("1"/"0"), the expected
/// value, the new value. Returns {1, nil} if it swapped, or {0, the current value or nil}.
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
local unchanged
if ARGV[2] == '1' then unchanged = (current == ARGV[3]) else unchanged = (current == false) end
if unchanged then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
    return {1, false}
end
return {0, current}
";

pub struct Redis {
    client: redis::Client,
    script: redis::Script,
}

impl Redis {
    pub fn new(url: &str) -> anyhow::Result<Redis> {
        let client =
            redis::Client::open(url).map_err(|error| anyhow::anyhow!("--kv {url}: {error}"))?;
        Ok(Redis {
            client,
            script: redis::Script::new(COMPARE_AND_SWAP),
        })
    }
}

impl Backend for Redis {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let connection = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|connection| {
                connection.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                connection.set_write_timeout(Some(COMMAND_TIMEOUT))?;
                Ok(connection)
            })
            .map_err(backend)?;
        Ok(Box::new(RedisConnection {
            connection,
            script: self.script.clone(),
        }))
    }
}

struct RedisConnection {
    connection: redis::Connection,
    script: redis::Script,
}

fn backend(error: redis::RedisError) -> Error {
    Error::Backend(error.to_string())
}

fn hash(bucket: BucketId) -> String {
    format!("wasm-gw:{}:{}", bucket.namespace, bucket.bucket)
}

impl RedisConnection {
    fn query<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> Result<T> {
        command.query(&mut self.connection).map_err(backend)
    }
}

impl Connection for RedisConnection {
    fn get(&mut self, bucket: BucketId, key: &str) -> Result<Option<Vec<u8>>> {
        self.query(redis::cmd("HGET").arg(hash(bucket)).arg(key))
    }

    fn set(&mut self, bucket: BucketId, key: &str, value: &[u8]) -> Result<()> {
        self.query(redis::cmd("HSET").arg(hash(bucket)).arg(key).arg(value))
    }

    fn delete(&mut self, bucket: BucketId, key: &str) -> Result<()> {
        self.query(redis::cmd("HDEL").arg(hash(bucket)).arg(key))
    }

    fn exists(&mut self, bucket: BucketId, key: &str) -> Result<bool> {
        self.query(redis::cmd("HEXISTS").arg(hash(bucket)).arg(key))
    }

    fn list_keys(&mut self, bucket: BucketId, cursor: Option<&str>) -> Result<KeyPage> {
        // HSCAN may list a key twice if the hash grows meanwhile; the interface allows that.
        let (next, fields_and_values): (String, Vec<Vec<u8>>) = self.query(
            redis::cmd("HSCAN")
                .arg(hash(bucket))
                .arg(cursor.unwrap_or("0"))
                .arg("COUNT")
                .arg(PAGE_SIZE),
        )?;
        let keys = fields_and_values
            .iter()
            .step_by(2)
            .map(|field| String::from_utf8_lossy(field).into_owned())
            .collect();
        let cursor = (next != "0").then_some(next);
        Ok(KeyPage { keys, cursor })
    }

    fn increment(&mut self, bucket: BucketId, key: &str, delta: i64) -> Result<i64> {
        redis::cmd("HINCRBY")
            .arg(hash(bucket))
            .arg(key)
            .arg(delta)
            .query(&mut self.connection)
            .map_err(|error| match error.kind() {
                // Not an integer, or an overflow: the value's fault, not the server's.
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => Error::Refused(
                    error
                        .detail()
                        .unwrap_or("the value is not a decimal integer")
                        .to_owned(),
                ),
                _ => backend(error),
            })
    }

    fn compare_and_swap(
        &mut self,
        bucket: BucketId,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Result<(), Option<Vec<u8>>>> {
        let (swapped, current): (i64, Option<Vec<u8>>) = self
            .script
            .key(hash(bucket))
            .arg(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value)
            .invoke(&mut self.connection)
            .map_err(backend)?;
        Ok(if swapped == 1 { Ok(()) } else { Err(current) })
    }

    fn get_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query(redis::cmd("HMGET").arg(hash(bucket)).arg(keys))
    }

    fn set_many(&mut self, bucket: BucketId, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut command = redis::cmd("HSET");
        command.arg(hash(bucket));
        for (key, value) in pairs {
            command.arg(key).arg(value);
        }
        self.query(&command)
    }

    fn delete_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.query(redis::cmd("HDEL").arg(hash(bucket)).arg(keys))
    }
}
