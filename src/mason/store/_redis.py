"""The shared backend: one Redis hash, for several machines using one store.

Layout (``name`` defaults to "default")::

    mason:{<name>}        a hash: field = the key's stable encoding, value = the frame below
    mason:{<name>}:lock   the transaction lock: a random token, with a time to live

(The braces are a Redis Cluster hash tag: both keys live in one slot.)  A frame is the value's
pickle as it is when the value has no out-of-band buffers (a protocol 5 pickle starts with
0x80), and otherwise::

    0x01, nbuf: u32, nbuf x (readonly: u8, length: u64), the pickle, the buffers back to back

so a read slices the buffers out of the reply without copying the read-only ones.

Transactions.  Redis has no read-your-writes transaction with locking reads, so a store
transaction takes the store's lock (``SET lock token NX PX ttl``), keeps its writes in memory
(reads inside it see them), and commits them in one Lua script that first checks the lock is
still its own: all or nothing.  Every write outside a transaction also runs as a script that
refuses while another client holds the lock, and waits; so ``with store.transaction(): store[k]
+= 1`` from many machines loses no update, as with SQLite's ``BEGIN IMMEDIATE``.  Readers
never wait, and never see a transaction half applied.  A client that dies holding the lock
holds it for at most ``lock_ttl`` seconds; its writes were never sent.  A transaction that
outlives ``lock_ttl`` without touching the store (the lock is renewed on every operation)
fails at commit with ``TransactionLostError``, having written nothing.

Durability is the server's: configure Redis persistence (AOF with ``appendfsync everysec`` or
``always``) for a store that must survive a server restart.
"""

from __future__ import annotations

import os
import random
import re
import struct
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .errors import StoreBusyError, StoreError, TransactionLostError

__all__ = ["RedisBackend"]

_CHUNK = 256  # fields per HMGET when iterating values
_FRAME = 0x01
_HEAD = struct.Struct("<BI")
_ENTRY = struct.Struct("<BQ")
_SMALL = 1 << 16  # frames under this are sliced into bytes; larger ones are viewed in place

_LOCKED = -1

_SET = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_DEL = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# ARGV: token ('' for a one-shot batch that holds no lock), clear ('1' or '0'), the number of
# fields to set, then field, value pairs, then the fields to delete.
_COMMIT = """
if ARGV[1] == '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
elseif redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
if ARGV[1] ~= '' then redis.call('DEL', KEYS[2]) end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def make_frame(data: bytes, buffers) -> bytes:
    if not buffers:
        return data
    parts = [_HEAD.pack(_FRAME, len(buffers))]
    parts.extend(_ENTRY.pack(int(view.readonly), view.nbytes) for view in buffers)
    parts.append(data)
    parts.extend(buffers)
    return b"".join(parts)


def split_frame(frame: bytes):
    """``(pickle, buffers)`` of a stored frame."""
    if not frame or frame[0] != _FRAME:
        return frame, None
    try:
        _, nbuf = _HEAD.unpack_from(frame, 0)
        pos = _HEAD.size
        entries = []
        for _ in range(nbuf):
            entries.append(_ENTRY.unpack_from(frame, pos))
            pos += _ENTRY.size
    except struct.error:
        raise StoreError("a stored value is damaged: its buffer table is truncated") from None
    total = sum(length for _, length in entries)
    end = len(frame) - total
    if end < pos:
        raise StoreError("a stored value is damaged: its buffers are truncated")
    view = memoryview(frame)
    data = frame[pos:end] if end - pos < _SMALL else view[pos:end]
    buffers = []
    for readonly, length in entries:
        piece = view[end:end + length]
        buffers.append(piece if readonly else bytearray(piece))
        end += length
    return data, buffers


class _Txn:
    __slots__ = ("token", "pending", "cleared", "saved", "renewed", "lost")

    def __init__(self, token: bytes):
        self.token = token
        self.pending: dict[bytes, bytes | None] = {}  # field -> frame, or None: deleted
        self.cleared = False
        self.saved: list[tuple[dict, bool]] = []  # savepoints of nested transactions
        self.renewed = time.monotonic()
        self.lost = False


class RedisBackend:
    kind = "redis"

    def __init__(self, url: str, *, name: str = "default", timeout: float = 60.0,
                 lock_ttl: float = 30.0):
        try:
            import redis
        except ImportError:
            raise StoreError(f"Store({url!r}) needs the Redis client: pip install redis "
                             "(or the mason[redis] extra)") from None
        if not re.fullmatch(r"[A-Za-z0-9_:.\-]{1,128}", name):
            raise ValueError(f"store name must be 1-128 letters, digits or '_:.-', not {name!r}")
        if lock_ttl <= 0:
            raise ValueError("lock_ttl must be positive (seconds)")
        self.url = url
        self.name = name
        self.timeout = float(timeout)
        self.lock_ttl_ms = int(lock_ttl * 1000)
        self._redis = redis
        try:
            self._r = redis.Redis.from_url(url)
            self._r.ping()
        except (redis.RedisError, ValueError, OSError) as exc:
            raise StoreError(f"cannot reach the Redis server of the store {url}: {exc}") from exc
        self._hash = f"mason:{{{name}}}".encode()
        self._lock = self._hash + b":lock"
        self._keys = [self._hash, self._lock]
        self._set = self._r.register_script(_SET)
        self._del = self._r.register_script(_DEL)
        self._commit = self._r.register_script(_COMMIT)
        self._release = self._r.register_script(_RELEASE)
        self._renew = self._r.register_script(_RENEW)
        self._local = threading.local()
        self._closed = False

    # -- helpers -----------------------------------------------------------------------------

    def _txn(self) -> _Txn | None:
        if self._closed:
            raise ValueError(f"operation on a closed store ({self.url})")
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            self._keep_lock(txn)
        return txn

    def _keep_lock(self, txn: _Txn) -> None:
        if txn.lost:
            raise TransactionLostError(f"this transaction on {self.url} lost its lock")
        now = time.monotonic()
        if (now - txn.renewed) * 1000 < self.lock_ttl_ms / 3:
            return
        if not self._renew(keys=[self._lock], args=[txn.token, self.lock_ttl_ms]):
            txn.lost = True
            raise TransactionLostError(
                f"this transaction on {self.url} held the store's lock for more than "
                f"lock_ttl={self.lock_ttl_ms / 1000:g} s without touching the store, and the "
                "lock expired: nothing of it was written (raise Store(..., lock_ttl=) for "
                "longer transactions)")
        txn.renewed = now

    def _wait_unlocked(self, attempt) -> object:
        """Run ``attempt()`` until it does not report the store locked, or time out."""
        result = attempt()
        if result != _LOCKED:
            return result
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)
            result = attempt()
            if result != _LOCKED:
                return result
            if time.monotonic() >= deadline:
                raise StoreBusyError(
                    f"the store {self.url} ({self.name}) stayed locked by another client's "
                    f"transaction for {self.timeout:g} s (raise Store(..., timeout=) if that is "
                    "expected)")

    # -- the mapping ---------------------------------------------------------------------------

    def get(self, key: bytes):
        txn = self._txn()
        if txn is not None:
            if key in txn.pending:
                frame = txn.pending[key]
                return None if frame is None else split_frame(frame)
            if txn.cleared:
                return None
        frame = self._r.hget(self._hash, key)
        if frame is None:
            return None
        if not frame or frame[0] != _FRAME:
            return frame, None
        return split_frame(frame)

    def contains(self, key: bytes) -> bool:
        txn = self._txn()
        if txn is not None:
            if key in txn.pending:
                return txn.pending[key] is not None
            if txn.cleared:
                return False
        return bool(self._r.hexists(self._hash, key))

    def set(self, key: bytes, data: bytes, buffers) -> None:
        frame = make_frame(data, buffers)
        txn = self._txn()
        if txn is not None:
            txn.pending[key] = frame
            return
        self._wait_unlocked(lambda: self._set(keys=self._keys, args=[key, frame]))

    def set_many(self, items) -> None:
        txn = self._txn()
        frames = [(key, make_frame(data, buffers)) for key, data, buffers in items]
        if txn is not None:
            txn.pending.update(frames)
            return
        args = [b"", b"0", len(frames)]
        for key, frame in frames:
            args.append(key)
            args.append(frame)
        self._wait_unlocked(lambda: self._commit(keys=self._keys, args=args))

    def delete(self, key: bytes) -> bool:
        txn = self._txn()
        if txn is not None:
            present = self.contains(key)
            if present:
                txn.pending[key] = None
            return present
        return self._wait_unlocked(lambda: self._del(keys=self._keys, args=[key])) == 1

    def clear(self) -> None:
        txn = self._txn()
        if txn is not None:
            txn.pending.clear()
            txn.cleared = True
            return
        self._wait_unlocked(lambda: self._commit(keys=self._keys, args=[b"", b"1", 0]))

    def count(self) -> int:
        txn = self._txn()
        if txn is None:
            return self._r.hlen(self._hash)
        if txn.cleared:
            return sum(1 for frame in txn.pending.values() if frame is not None)
        fields = list(txn.pending)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.hlen(self._hash)
            for field in fields:
                pipe.hexists(self._hash, field)
            total, *present = pipe.execute()
        for field, on_server in zip(fields, present):
            if txn.pending[field] is None:
                total -= bool(on_server)
            else:
                total += not on_server
        return total

    def last_key(self) -> bytes | None:
        txn = self._txn()
        if txn is not None:
            for field, frame in reversed(txn.pending.items()):
                if frame is not None:
                    return field
            if txn.cleared:
                return None
        for field in self._r.hrandfield(self._hash, 8) or ():
            if txn is None or field not in txn.pending:
                return field
        for field in self.iter_keys():
            return field
        return None

    def _server_keys(self, txn: _Txn | None) -> list[bytes]:
        if txn is not None and txn.cleared:
            return []
        return self._r.hkeys(self._hash)

    def iter_keys(self) -> Iterator[bytes]:
        txn = self._txn()
        fields = self._server_keys(txn)
        if txn is None:
            yield from fields
            return
        pending = dict(txn.pending)
        for field in fields:
            if pending.get(field, b"") is not None:
                yield field
        on_server = set(fields)
        for field, frame in pending.items():
            if frame is not None and field not in on_server:
                yield field

    def iter_items(self) -> Iterator[tuple[bytes, bytes, list | None]]:
        txn = self._txn()
        pending = dict(txn.pending) if txn is not None else {}
        fields = [f for f in self._server_keys(txn) if f not in pending]
        for start in range(0, len(fields), _CHUNK):
            chunk = fields[start:start + _CHUNK]
            for field, frame in zip(chunk, self._r.hmget(self._hash, chunk)):
                if frame is not None:  # deleted since the keys were listed: skip it
                    yield (field, *split_frame(frame))
        for field, frame in pending.items():
            if frame is not None:
                yield (field, *split_frame(frame))

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def transaction(self):
        txn = self._txn()
        if txn is not None:
            # Nested: a savepoint of the pending writes, restored if the inner block fails.
            txn.saved.append((dict(txn.pending), txn.cleared))
            try:
                yield
            except BaseException:
                txn.pending, txn.cleared = txn.saved.pop()
                raise
            txn.saved.pop()
            return
        token = os.urandom(16).hex().encode()
        self._wait_unlocked(lambda: _LOCKED if not self._r.set(
            self._lock, token, nx=True, px=self.lock_ttl_ms) else 1)
        txn = _Txn(token)
        self._local.txn = txn
        try:
            yield
        except BaseException:
            self._local.txn = None
            self._release_quietly(token)
            raise
        self._local.txn = None
        if txn.lost:
            raise TransactionLostError(f"this transaction on {self.url} lost its lock: "
                                       "nothing of it was written")
        sets = [(f, v) for f, v in txn.pending.items() if v is not None]
        deletes = [f for f, v in txn.pending.items() if v is None]
        args = [token, b"1" if txn.cleared else b"0", len(sets)]
        for field, frame in sets:
            args.append(field)
            args.append(frame)
        args.extend(deletes)
        try:
            done = self._commit(keys=self._keys, args=args)
        except BaseException:
            self._release_quietly(token)
            raise
        if done != 1:
            raise TransactionLostError(
                f"this transaction on {self.url} held the store's lock for more than "
                f"lock_ttl={self.lock_ttl_ms / 1000:g} s and the lock expired before it "
                "committed: nothing of it was written (raise Store(..., lock_ttl=) for longer "
                "transactions)")

    def _release_quietly(self, token: bytes) -> None:
        # On the way out of a failed transaction: the error that brought us here is the one
        # to report; if the server cannot be told, the lock expires after lock_ttl anyway.
        try:
            self._release(keys=[self._lock], args=[token])
        except self._redis.RedisError:
            pass

    def in_transaction(self) -> bool:
        return getattr(self._local, "txn", None) is not None

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._r.close()
        except Exception:
            pass

    def describe(self) -> str:
        return self.url
