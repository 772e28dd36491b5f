//! `--kv redis://HOST:PORT/DB`: state that several wasm-gw processes share. Each bucket is
//! one Redis hash, `wasm-gw:NAMESPACE:BUCKET`, so a namespace can never reach past its own
//! hashes.

use std::time::{Duration, Instant};

use super::{Backend, BucketId, Connection, Error, KeyPage, PAGE_SIZE, Result, Swap};

/// How long connecting may take; loopback or LAN answers in far less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take before the worker gives up on the server.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle this long is checked with a PING before use: Redis may have restarted,
/// or closed it, meanwhile. Busy connections skip the round trip.
const IDLE_CHECK: Duration = Duration::from_millis(100);

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

/// HSCAN that returns only the fields: the values stay on the server. (HSCAN's NOVALUES
/// needs Redis 7.4.) ARGV: the cursor, the page size. Returns {next cursor, fields}.
const LIST_KEYS: &str = r"
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = {}
for i = 1, #page[2], 2 do fields[#fields + 1] = page[2][i] end
return {page[1], fields}
";

pub struct Redis {
    client: redis::Client,
}

impl Redis {
    pub fn new(url: &str) -> anyhow::Result<Redis> {
        let client =
            redis::Client::open(url).map_err(|error| anyhow::anyhow!("--kv {url}: {error}"))?;
        Ok(Redis { client })
    }
}

fn connect(client: &redis::Client) -> Result<redis::Connection> {
    client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .and_then(|connection| {
            connection.set_read_timeout(Some(COMMAND_TIMEOUT))?;
            connection.set_write_timeout(Some(COMMAND_TIMEOUT))?;
            Ok(connection)
        })
        .map_err(backend)
}

impl Backend for Redis {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        Ok(Box::new(RedisConnection {
            connection: connect(&self.client)?,
            client: self.client.clone(),
            last_used: Instant::now(),
            compare_and_swap: redis::Script::new(COMPARE_AND_SWAP),
            list_keys: redis::Script::new(LIST_KEYS),
        }))
    }
}

struct RedisConnection {
    connection: redis::Connection,
    client: redis::Client,
    last_used: Instant,
    compare_and_swap: redis::Script,
    list_keys: redis::Script,
}

fn backend(error: redis::RedisError) -> Error {
    Error::Backend(error.to_string())
}

/// Whether the connection itself failed, rather than the server refusing the command.
fn connection_lost(error: &redis::RedisError) -> bool {
    !error.is_timeout()
        && (error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal())
}

fn hash(bucket: BucketId) -> String {
    format!("wasm-gw:{}:{}", bucket.namespace, bucket.bucket)
}

impl RedisConnection {
    /// Runs `act` on a live connection. One that sat idle is checked first; if `act` is
    /// idempotent and the connection turns out dead, it runs once more on a new one.
    fn run<T>(
        &mut self,
        idempotent: bool,
        act: impl Fn(&mut Self) -> redis::RedisResult<T>,
    ) -> Result<T> {
        if self.last_used.elapsed() > IDLE_CHECK
            && redis::cmd("PING")
                .query::<()>(&mut self.connection)
                .is_err()
        {
            self.connection = connect(&self.client)?;
        }
        let result = match act(self) {
            Err(error) if idempotent && connection_lost(&error) => {
                self.connection = connect(&self.client)?;
                act(self)
            }
            other => other,
        };
        self.last_used = Instant::now();
        result.map_err(backend)
    }

    fn query<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> Result<T> {
        self.run(true, |this| command.query(&mut this.connection))
    }
}

/// A bulk string, or nothing: nil in RESP2, false in RESP3.
fn optional_bytes(value: redis::Value) -> Result<Option<Vec<u8>>> {
    match value {
        redis::Value::Nil | redis::Value::Boolean(false) => Ok(None),
        value => redis::from_redis_value(value)
            .map(Some)
            .map_err(|error| Error::Backend(error.to_string())),
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
        let (next, fields): (String, Vec<Vec<u8>>) = self.run(true, |this| {
            this.list_keys
                .key(hash(bucket))
                .arg(cursor.unwrap_or("0"))
                .arg(PAGE_SIZE)
                .invoke(&mut this.connection)
        })?;
        let keys = fields
            .iter()
            .map(|field| String::from_utf8_lossy(field).into_owned())
            .collect();
        let cursor = (next != "0").then_some(next);
        Ok(KeyPage { keys, cursor })
    }

    fn increment(&mut self, bucket: BucketId, key: &str, delta: i64) -> Result<i64> {
        // Not retried: the first try may have counted before the connection failed.
        let command = redis::cmd("HINCRBY")
            .arg(hash(bucket))
            .arg(key)
            .arg(delta)
            .clone();
        let result = self.run(false, |this| command.query(&mut this.connection));
        match result {
            Err(Error::Backend(why))
                if why.contains("not an integer") || why.contains("overflow") =>
            {
                // The value's fault, not the server's.
                Err(Error::Refused(why))
            }
            other => other,
        }
    }

    fn compare_and_swap(
        &mut self,
        bucket: BucketId,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Swap> {
        // Not retried: the first try may have swapped before the connection failed.
        let (swapped, current): (i64, redis::Value) = self.run(false, |this| {
            this.compare_and_swap
                .key(hash(bucket))
                .arg(key)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(value)
                .invoke(&mut this.connection)
        })?;
        if swapped == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(optional_bytes(current)?))
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
