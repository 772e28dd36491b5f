"""Key-value storage for Python apps on wasm-gw: the host's wasi:keyvalue, shared by every
worker and kept across restarts, in the app's own namespace.

    from wasm_gw_kv import Bucket

    tasks = Bucket.open("tasks")
    tasks.set_json("1", {"title": "write docs"})
    next_id = Bucket.open("counters").increment("tasks")
"""

import json

from componentize_py_types import Err
from wit_world.imports import atomics, batch
# Named by package: the world imports wasi:config's `store` too.
from wit_world.imports import wasi_keyvalue_store as store

# How wasm-gw begins the message of an error that is the backend's, not the caller's.
_BACKEND_FAILED = "the key-value backend failed"
# How many times update() retries when other writers keep changing the value.
_MAX_UPDATE_ATTEMPTS = 100
# Most keys wasm-gw takes in one batch call; the batch methods split longer ones.
MAX_BATCH_KEYS = 1000


class StoreError(Exception):
    """The store refused the operation: a key or value past its limit, say."""


class Unavailable(StoreError):
    """The store's backend failed (down, unreachable, locked); later may work."""


def _error(error):
    value = error.value
    if isinstance(value, store.Error_NoSuchStore):
        return StoreError("no such bucket")
    if isinstance(value, store.Error_AccessDenied):
        return StoreError("access to the bucket is denied")
    message = value.value
    if message.startswith(_BACKEND_FAILED):
        return Unavailable(message)
    return StoreError(message)


def _bytes(value):
    # bytes(5) would be five NULs: only bytes-like values are stored.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"values must be bytes, not {type(value).__name__}")


def _call(function, *args):
    try:
        return function(*args)
    except Err as error:
        raise _error(error) from None


class Bucket:
    """A named collection of key-value pairs; values are bytes."""

    def __init__(self, bucket):
        self._bucket = bucket

    @classmethod
    def open(cls, name):
        return cls(_call(store.open, name))

    def get(self, key):
        return _call(self._bucket.get, key)

    def set(self, key, value):
        _call(self._bucket.set, key, _bytes(value))

    def delete(self, key):
        _call(self._bucket.delete, key)

    def exists(self, key):
        return _call(self._bucket.exists, key)

    def keys(self):
        """Every key, in no particular order; one written meanwhile may be listed twice."""
        keys = []
        cursor = None
        while True:
            page = _call(self._bucket.list_keys, cursor)
            keys.extend(page.keys)
            cursor = page.cursor
            if cursor is None:
                return keys

    def increment(self, key, delta=1):
        """Atomically adds `delta` to the integer at `key` (0 if unset); returns the sum."""
        return _call(atomics.increment, self._bucket, key, delta)

    def update(self, key, change):
        """Sets `key` to change(current) by compare-and-swap, retrying if another writer
        got there first. `change` gets bytes or None; returning None leaves the value."""
        cas = _call(atomics.Cas.new, self._bucket, key)
        for _ in range(_MAX_UPDATE_ATTEMPTS):
            new = change(_call(cas.current))
            if new is None:
                return None
            try:
                atomics.swap(cas, _bytes(new))
                return new
            except Err as error:
                if isinstance(error.value, atomics.CasError_CasFailed):
                    cas = error.value.value
                    continue
                raise _error(Err(error.value.value)) from None
        raise StoreError(f"the value kept changing; gave up after {_MAX_UPDATE_ATTEMPTS} tries")

    def get_many(self, keys):
        """The values of `keys` in the same order, None for each that is not set."""
        keys = list(keys)
        values = []
        for start in range(0, len(keys), MAX_BATCH_KEYS):
            pairs = _call(batch.get_many, self._bucket, keys[start:start + MAX_BATCH_KEYS])
            values.extend(pair[1] if pair is not None else None for pair in pairs)
        return values

    def set_many(self, pairs):
        pairs = [(key, _bytes(value)) for key, value in pairs]
        for start in range(0, len(pairs), MAX_BATCH_KEYS):
            _call(batch.set_many, self._bucket, pairs[start:start + MAX_BATCH_KEYS])

    def delete_many(self, keys):
        keys = list(keys)
        for start in range(0, len(keys), MAX_BATCH_KEYS):
            _call(batch.delete_many, self._bucket, keys[start:start + MAX_BATCH_KEYS])

    def get_json(self, key):
        value = self.get(key)
        return None if value is None else json.loads(value)

    def set_json(self, key, value):
        self.set(key, json.dumps(value).encode())

    def update_json(self, key, change):
        def change_bytes(current):
            new = change(None if current is None else json.loads(current))
            return None if new is None else json.dumps(new).encode()

        written = self.update(key, change_bytes)
        return None if written is None else json.loads(written)
