//! `--kv redis://HOST:PORT/DB`: state that several wasm-gw processes share. Each bucket is
//! one Redis hash, `wasm-gw:NAMESPACE:BUCKET`, so a namespace can never reach past its own
//! hashes. What a namespace holds is kept in `wasm-gw-usage:NAMESPACE` (no bucket's name
//! can spell it), updated by the same Lua script as each write, which refuses a write past
//! the quota. Data written before usage was kept is not counted: counting it would read
//! every value of the namespace, and block Redis for every other app meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Backend, BucketId, Connection, Error, KeyPage, PAGE_SIZE, Quota, Result, Swap, past_deadline,
    quota_exceeded,
};

/// How long connecting may take; loopback or LAN answers in far less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take before the worker gives up on the server.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// A socket timeout this close to the one wanted is left alone, saving two syscalls.
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);
/// Most pairs, and value bytes, one write script sets: a few milliseconds of Redis.
const SCRIPT_KEYS: usize = 128;
const SCRIPT_BYTES: usize = 4 << 20;
/// A connection idle this long is checked with a PING before use: Redis may have restarted,
/// or closed it, meanwhile. Busy connections skip the round trip.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// The start of every writing script: KEYS are the bucket's hash and the namespace's usage,
/// ARGV starts with the quota's keys and bytes. `judge` tells whether setting a field
/// (`old_length` nil if it is not set) to `length` bytes stays within the quota, and the
/// usage after it; `save_usage` writes the usage back. A script runs with nothing else
/// between its reads and its writes.
macro_rules! usage_script {
    ($body:literal) => {
        concat!(
            r"
local max_keys, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local function judge(field, old_length, length)
    local new_keys, new_bytes = keys, bytes + length
    if old_length then
        new_bytes = new_bytes - old_length
    else
        new_keys = keys + 1
        new_bytes = new_bytes + #field
    end
    local over = (new_keys > keys and new_keys > max_keys)
        or (new_bytes > bytes and new_bytes > max_bytes)
    return not over, new_keys, new_bytes
end
local function length_of(field)
    if redis.call('HEXISTS', KEYS[1], field) == 1 then
        return redis.call('HSTRLEN', KEYS[1], field)
    end
    return nil
end
local function save_usage()
    redis.call('HSET', KEYS[2], 'keys', keys, 'bytes', bytes)
end
",
            $body
        )
    };
}

/// Sets field, value pairs (ARGV[3..]) in order until one would pass the quota. Returns how
/// many it set.
const SET_MANY: &str = usage_script!(
    r"
local set = 0
for i = 3, #ARGV, 2 do
    local allowed, new_keys, new_bytes = judge(ARGV[i], length_of(ARGV[i]), #ARGV[i + 1])
    if not allowed then break end
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    keys, bytes, set = new_keys, new_bytes, set + 1
end
save_usage()
return set
"
);

/// Deletes the fields ARGV[3..].
const DELETE_MANY: &str = usage_script!(
    r"
for i = 3, #ARGV do
    local old_length = length_of(ARGV[i])
    if old_length then
        keys, bytes = keys - 1, bytes - #ARGV[i] - old_length
        redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
save_usage()
return 0
"
);

/// Adds ARGV[4] to the integer in field ARGV[3]. Returns {1, the sum as text}, or {0, nil}
/// if the sum would pass the quota; HINCRBY's own errors (not an integer, overflow) stand.
const INCREMENT: &str = usage_script!(
    r"
local field = ARGV[3]
local old = redis.call('HGET', KEYS[1], field)
redis.call('HINCRBY', KEYS[1], field, ARGV[4])
local sum = redis.call('HGET', KEYS[1], field)
local allowed, new_keys, new_bytes = judge(field, old and #old or nil, #sum)
if not allowed then
    if old then redis.call('HSET', KEYS[1], field, old) else redis.call('HDEL', KEYS[1], field) end
    return {0, false}
end
keys, bytes = new_keys, new_bytes
save_usage()
return {1, sum}
"
);

/// Compare-and-swap. ARGV[3..]: field, whether a value is expected ("1"/"0"), the expected
/// value, the new value. Returns {1, nil} if it swapped, {0, the current value or nil} if
/// the field held something else, or {2, nil} if the new value would pass the quota.
const COMPARE_AND_SWAP: &str = usage_script!(
    r"
local field = ARGV[3]
local current = redis.call('HGET', KEYS[1], field)
local unchanged
if ARGV[4] == '1' then unchanged = (current == ARGV[5]) else unchanged = (current == false) end
if not unchanged then return {0, current} end
local allowed, new_keys, new_bytes = judge(field, current and #current or nil, #ARGV[6])
if not allowed then return {2, false} end
redis.call('HSET', KEYS[1], field, ARGV[6])
keys, bytes = new_keys, new_bytes
save_usage()
return {1, false}
"
);

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
    scripts: Arc<Scripts>,
}

/// The Lua scripts, with their hashes, shared by every connection.
struct Scripts {
    set_many: redis::Script,
    delete_many: redis::Script,
    increment: redis::Script,
    compare_and_swap: redis::Script,
    list_keys: redis::Script,
}

impl Redis {
    pub fn new(url: &str) -> anyhow::Result<Redis> {
        let client =
            redis::Client::open(url).map_err(|error| anyhow::anyhow!("--kv {url}: {error}"))?;
        let scripts = Arc::new(Scripts {
            set_many: redis::Script::new(SET_MANY),
            delete_many: redis::Script::new(DELETE_MANY),
            increment: redis::Script::new(INCREMENT),
            compare_and_swap: redis::Script::new(COMPARE_AND_SWAP),
            list_keys: redis::Script::new(LIST_KEYS),
        });
        Ok(Redis { client, scripts })
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
    fn connect(&self, quota: Quota) -> Result<Box<dyn Connection>> {
        Ok(Box::new(RedisConnection {
            connection: connect(&self.client)?,
            timeout: COMMAND_TIMEOUT,
            deadline: None,
            quota,
            client: self.client.clone(),
            last_used: Instant::now(),
            scripts: self.scripts.clone(),
        }))
    }
}

struct RedisConnection {
    connection: redis::Connection,
    /// The connection's read and write timeout now.
    timeout: Duration,
    /// When the current operation must end.
    deadline: Option<Instant>,
    quota: Quota,
    client: redis::Client,
    last_used: Instant,
    scripts: Arc<Scripts>,
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

fn usage_key(namespace: &str) -> String {
    format!("wasm-gw-usage:{namespace}")
}

impl RedisConnection {
    /// Runs `act` on a live connection. One that sat idle is checked first; if `act` is
    /// idempotent and the connection turns out dead, it runs once more on a new one. The
    /// thread counts as waiting meanwhile.
    fn run<T>(
        &mut self,
        idempotent: bool,
        act: impl Fn(&mut Self) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let _waiting = crate::waiting::Waiting::begin();
        self.hold_to_deadline()?;
        if self.last_used.elapsed() > IDLE_CHECK
            && redis::cmd("PING")
                .query::<()>(&mut self.connection)
                .is_err()
        {
            self.reconnect()?;
        }
        let result = match act(self) {
            Err(error) if idempotent && connection_lost(&error) => {
                self.reconnect()?;
                act(self)
            }
            other => other,
        };
        self.last_used = Instant::now();
        result.map_err(backend)
    }

    fn reconnect(&mut self) -> Result<()> {
        self.connection = connect(&self.client)?;
        self.timeout = COMMAND_TIMEOUT;
        self.hold_to_deadline()
    }

    /// Sets the socket's timeouts so that a command ends by the deadline: a frozen server
    /// costs the request its remaining time, not [`COMMAND_TIMEOUT`] per command.
    fn hold_to_deadline(&mut self) -> Result<()> {
        let left = match self.deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => COMMAND_TIMEOUT,
        };
        if left.is_zero() {
            return Err(past_deadline());
        }
        let wanted = left.min(COMMAND_TIMEOUT);
        if wanted.abs_diff(self.timeout) > TIMEOUT_SLACK {
            self.connection
                .set_read_timeout(Some(wanted))
                .and_then(|()| self.connection.set_write_timeout(Some(wanted)))
                .map_err(backend)?;
            self.timeout = wanted;
        }
        Ok(())
    }

    fn query<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> Result<T> {
        self.run(true, |this| command.query(&mut this.connection))
    }

    /// Runs a writing script on `bucket` with the quota first, then `args`.
    fn write<T: redis::FromRedisValue>(
        &mut self,
        script: fn(&Scripts) -> &redis::Script,
        bucket: BucketId,
        idempotent: bool,
        args: impl Fn(&mut redis::ScriptInvocation),
    ) -> Result<T> {
        let (hash, usage) = (hash(bucket), usage_key(bucket.namespace));
        let (quota, scripts) = (self.quota, self.scripts.clone());
        self.run(idempotent, |this| {
            let mut invocation = script(&scripts).key(&hash);
            invocation.key(&usage).arg(quota.keys).arg(quota.bytes);
            args(&mut invocation);
            invocation.invoke(&mut this.connection)
        })
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
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    fn get(&mut self, bucket: BucketId, key: &str) -> Result<Option<Vec<u8>>> {
        self.query(redis::cmd("HGET").arg(hash(bucket)).arg(key))
    }

    fn set(&mut self, bucket: BucketId, key: &str, value: &[u8]) -> Result<()> {
        let set: usize = self.write(
            |scripts| &scripts.set_many,
            bucket,
            true,
            |script| {
                script.arg(key).arg(value);
            },
        )?;
        if set == 0 {
            return Err(quota_exceeded(&self.quota));
        }
        Ok(())
    }

    fn delete(&mut self, bucket: BucketId, key: &str) -> Result<()> {
        self.write(
            |scripts| &scripts.delete_many,
            bucket,
            true,
            |script| {
                script.arg(key);
            },
        )
    }

    fn exists(&mut self, bucket: BucketId, key: &str) -> Result<bool> {
        self.query(redis::cmd("HEXISTS").arg(hash(bucket)).arg(key))
    }

    fn list_keys(&mut self, bucket: BucketId, cursor: Option<&str>) -> Result<KeyPage> {
        // HSCAN may list a key twice if the hash grows meanwhile; the interface allows that.
        let (next, fields): (String, Vec<Vec<u8>>) = self.run(true, |this| {
            this.scripts
                .list_keys
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
        let result: Result<(i64, Option<String>)> = self.write(
            |scripts| &scripts.increment,
            bucket,
            false,
            |script| {
                script.arg(key).arg(delta);
            },
        );
        match result {
            Ok((1, Some(sum))) => sum
                .parse()
                .map_err(|_| Error::Backend(format!("HINCRBY left {sum:?}"))),
            Ok(_) => Err(quota_exceeded(&self.quota)),
            Err(Error::Backend(why))
                if why.contains("not an integer") || why.contains("overflow") =>
            {
                // The value's fault, not the server's.
                Err(Error::Refused(why))
            }
            Err(other) => Err(other),
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
        let (swapped, current): (i64, redis::Value) = self.write(
            |scripts| &scripts.compare_and_swap,
            bucket,
            false,
            |script| {
                script
                    .arg(key)
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or_default())
                    .arg(value);
            },
        )?;
        match swapped {
            1 => Ok(Ok(())),
            2 => Err(quota_exceeded(&self.quota)),
            _ => Ok(Err(optional_bytes(current)?)),
        }
    }

    fn get_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query(redis::cmd("HMGET").arg(hash(bucket)).arg(keys))
    }

    fn set_many(&mut self, bucket: BucketId, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        // In short scripts, as SQLite writes short transactions: Redis serves no one else
        // while one runs, and the deadline is checked between them.
        let mut rest = pairs;
        while !rest.is_empty() {
            let mut size = 0;
            let count = rest
                .iter()
                .take(SCRIPT_KEYS)
                .take_while(|(key, value)| {
                    size += key.len() + value.len();
                    size <= SCRIPT_BYTES
                })
                .count()
                .max(1);
            let (now, later) = rest.split_at(count);
            let set: usize = self.write(
                |scripts| &scripts.set_many,
                bucket,
                true,
                |script| {
                    for (key, value) in now {
                        script.arg(key).arg(value);
                    }
                },
            )?;
            if set < now.len() {
                return Err(quota_exceeded(&self.quota));
            }
            rest = later;
        }
        Ok(())
    }

    fn delete_many(&mut self, bucket: BucketId, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(
            |scripts| &scripts.delete_many,
            bucket,
            true,
            |script| {
                script.arg(keys);
            },
        )
    }
}
