"""The embedded backend: one SQLite file in WAL mode.

Concurrency.  Each thread of each process has its own connection (SQLite connections must not
be shared across threads mid-statement, nor carried across ``fork``).  WAL lets readers run
while one writer writes; writers queue on SQLite's write lock.  Every write transaction starts
with ``BEGIN IMMEDIATE``, which takes the write lock up front: a deferred transaction that
reads and then writes can fail with SQLITE_BUSY_SNAPSHOT (someone committed in between), which
no amount of waiting fixes, while an immediate one just waits its turn.  Waiting is SQLite's
busy handler (``timeout``), and if a BUSY still comes back, whole operations are retried with
jittered backoff until the store's ``timeout``; only then does ``StoreBusyError`` say which
store stayed locked.  "database is locked" never reaches the user under ordinary contention.

Durability.  ``synchronous=NORMAL`` (the default) in WAL mode: a commit is in the WAL before
the call returns, so a crashed or SIGKILLed *process* loses nothing it committed; a crash of
the *machine* (power loss, kernel panic) may lose the last transactions before the next
checkpoint, and never corrupts the file.  ``synchronous="FULL"`` fsyncs the WAL on every
commit, for machine-crash durability, at the price of one fsync per write.

Layout (``name`` defaults to "default"; one file can hold several stores)::

    store_<name>          key BLOB PRIMARY KEY, nbuf INTEGER, value BLOB
    store_<name>_buffers  key, idx, readonly, data     -- out-of-band buffers, nbuf per key
    mason_meta            name TEXT PRIMARY KEY, value -- format version

Both are rowid tables (a WITHOUT ROWID table keeps large rows in its index pages, and was
three to four times slower on 100 KB values), and ``value`` / ``data`` come last in their rows,
so reading ``nbuf`` never walks a large value's overflow pages.  Reads go through a memory
map of the file (``mmap_size``), which saves a system call per page of a large value.

A key's buffers are written in the same transaction as its row, overwriting the old ones in
place; triggers delete the buffers a row no longer has (fewer buffers, or the row deleted)
inside the same statement, so a value and its buffers can never disagree.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Iterator

from ._fs import is_network_fs
from .errors import NetworkFilesystemError, StoreBusyError, StoreError

__all__ = ["SQLiteBackend"]

FORMAT = 1
_PAGE = 512  # rows per page when iterating
_MMAP_SIZE = 1 << 30 if sys.maxsize > 2 ** 32 else 0  # address space, not memory

# SQLite primary result codes that mean "someone else holds a lock: try again later".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_BUSY_MESSAGES = ("database is locked", "database table is locked", "database schema is locked",
                  "database is busy")

# Connections opened before a fork belong to the parent.  The child must neither use nor
# close them (closing can checkpoint or delete the parent's WAL), so it forgets them here.
_fork_generation = 0
_abandoned: list = []


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _is_busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and str(exc) in _BUSY_MESSAGES


class _Holder:
    """A thread's connection; when the thread ends, its thread-local holder is collected and
    the connection closed (sqlite3.Connection itself takes no weak references)."""

    __slots__ = ("conn", "generation", "depth", "__weakref__")

    def __init__(self, conn, generation):
        self.conn = conn
        self.generation = generation
        self.depth = 0  # transaction nesting: 0 outside, 1 in BEGIN, n > 1 in savepoints


def _close_quietly(conns: dict, key: int) -> None:
    entry = conns.pop(key, None)
    if entry is None:
        return
    conn, pid = entry
    if pid != os.getpid():
        # Collected in a forked child (CPython frees the other threads' locals there): the
        # connection is the parent's, and closing it here could disturb the parent's WAL.
        _abandoned.append(conn)
        return
    try:
        conn.close()
    except Exception:
        pass


class SQLiteBackend:
    kind = "sqlite"

    def __init__(self, path, *, name: str = "default", timeout: float = 60.0,
                 synchronous: str = "NORMAL", allow_network_fs: bool = False):
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path in ("", ":memory:") or path.startswith("file:"):
            raise StoreError(
                f"Store({path!r}): a store needs a file path (every thread and process opens "
                "it by name); for a throwaway store use a file in tempfile.mkdtemp()")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
            raise ValueError(f"store name must be 1-64 letters, digits or '_', not {name!r}")
        synchronous = synchronous.upper()
        if synchronous not in ("NORMAL", "FULL", "EXTRA", "OFF"):
            raise ValueError("synchronous must be 'NORMAL', 'FULL', 'EXTRA' or 'OFF'")
        self.path = os.path.abspath(path)
        self.name = name
        self.timeout = float(timeout)
        self.synchronous = synchronous
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise StoreError(f"cannot create the store {self.path}: folder {folder} does not "
                             "exist")
        if not allow_network_fs:
            fstype = is_network_fs(folder)
            if fstype:
                raise NetworkFilesystemError(
                    f"{self.path} is on a network file system ({fstype}), where SQLite's "
                    "locking is unreliable: concurrent writers can corrupt the store. Put the "
                    "store on a local disk, share it between machines with "
                    "Store('redis://host:port/db'), or, if only one machine ever opens it, "
                    "pass allow_network_fs=True.", self.path, fstype)
        table = f"store_{name}"
        self._t = f'"{table}"'
        self._b = f'"{table}_buffers"'
        self._sql_get = f"SELECT nbuf, value FROM {self._t} WHERE key = ?"
        self._sql_get_all = (
            f"SELECT m.nbuf, m.value, b.readonly, b.data FROM {self._t} AS m "
            f"LEFT JOIN {self._b} AS b ON b.key = m.key WHERE m.key = ? ORDER BY b.idx")
        self._sql_has = f"SELECT 1 FROM {self._t} WHERE key = ?"
        self._sql_put = (f"INSERT INTO {self._t} (key, value, nbuf) VALUES (?, ?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                         "nbuf = excluded.nbuf")
        self._sql_put0 = (f"INSERT INTO {self._t} (key, value, nbuf) VALUES (?, ?, 0) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value, nbuf = 0")
        self._sql_buf = (f"INSERT INTO {self._b} (key, idx, readonly, data) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(key, idx) DO UPDATE SET readonly = excluded.readonly, "
                         "data = excluded.data")
        self._sql_del = f"DELETE FROM {self._t} WHERE key = ?"
        self._lock = threading.Lock()
        self._conns: dict[int, tuple[sqlite3.Connection, int]] = {}
        self._local = threading.local()
        self._closed = False
        self._conn()  # open now: a bad path or a foreign file fails here, not on first use

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        try:
            holder = self._local.holder
            if holder.generation == _fork_generation and not self._closed:
                return holder.conn
        except AttributeError:
            pass
        if self._closed:
            raise ValueError(f"operation on a closed store ({self.path})")
        return self._connect().conn

    def _holder(self) -> _Holder:
        self._conn()
        return self._local.holder

    def _connect(self) -> _Holder:
        old = getattr(self._local, "holder", None)
        if old is not None and old.generation != _fork_generation:
            me = os.getpid()
            with self._lock:  # in a forked child: forget the parent's connections
                for key, (conn, pid) in list(self._conns.items()):
                    if pid != me:
                        _abandoned.append(conn)
                        del self._conns[key]
        try:
            conn = sqlite3.connect(self.path, timeout=min(self.timeout, 5.0),
                                   isolation_level=None, check_same_thread=False,
                                   cached_statements=64)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        holder = _Holder(conn, _fork_generation)
        with self._lock:
            self._conns[id(holder)] = (conn, os.getpid())
        weakref.finalize(holder, _close_quietly, self._conns, id(holder))
        self._local.holder = holder
        return holder

    def _setup(self, conn: sqlite3.Connection) -> None:
        try:
            # The schema is trusted to do nothing but what we put there.
            conn.execute("PRAGMA trusted_schema = OFF")
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {self.path} to WAL mode (got {mode!r}): is it "
                                 "read-only, or opened by a program that forbids WAL?")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA mmap_size = {_MMAP_SIZE}")
            t, b = self._t, self._b
            exists = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                (t.strip('"'),)).fetchone()[0]
            if not exists:
                self._retry(lambda: self._create(conn))
            meta = conn.execute(
                "SELECT value FROM mason_meta WHERE name = 'format'").fetchone()
            if meta is None or int(meta[0]) > FORMAT:
                raise StoreError(
                    f"{self.path} was written by a newer mason (store format {meta and meta[0]}"
                    f", this one reads {FORMAT}): upgrade mason to open it")
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise StoreBusyError(f"{self.path} stayed locked for {self.timeout:g} s while "
                                     f"opening: {exc}") from exc
            raise StoreError(f"{self.path} is not a usable mason store: {exc}") from exc

    def _create(self, conn: sqlite3.Connection) -> None:
        t, b = self._t, self._b
        trig = self._t[:-1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS mason_meta "
                         "(name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
            conn.execute("INSERT OR IGNORE INTO mason_meta VALUES ('format', ?)", (str(FORMAT),))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {t} (key BLOB PRIMARY KEY NOT NULL, "
                         "nbuf INTEGER NOT NULL DEFAULT 0, value BLOB NOT NULL)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {b} (key BLOB NOT NULL, "
                         "idx INTEGER NOT NULL, readonly INTEGER NOT NULL, data BLOB NOT NULL, "
                         "PRIMARY KEY (key, idx))")
            conn.execute(f'CREATE TRIGGER IF NOT EXISTS {trig}_replaced" AFTER UPDATE OF nbuf, '
                         f"value ON {t} WHEN old.nbuf > new.nbuf BEGIN "
                         f"DELETE FROM {b} WHERE key = old.key AND idx >= new.nbuf; END")
            conn.execute(f'CREATE TRIGGER IF NOT EXISTS {trig}_deleted" AFTER DELETE '
                         f"ON {t} WHEN old.nbuf > 0 BEGIN "
                         f"DELETE FROM {b} WHERE key = old.key; END")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _retry(self, operation):
        """Run ``operation`` (a whole transaction or one autocommit statement), retrying it
        while SQLite reports the database locked, until the store's timeout."""
        deadline = None
        delay = 0.001
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.timeout
                if now >= deadline:
                    raise StoreBusyError(
                        f"the store {self.path} stayed locked by other writers for "
                        f"{self.timeout:g} s ({exc}); a transaction elsewhere may be held open "
                        "(raise Store(..., timeout=) if that is expected)") from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)

    def _write(self, conn: sqlite3.Connection, body) -> None:
        """Run ``body(conn)`` as one write transaction: joined to the caller's transaction
        if one is open in this thread, else its own BEGIN IMMEDIATE ... COMMIT, retried."""
        if conn.in_transaction:
            body(conn)
            return

        def once():
            conn.execute("BEGIN IMMEDIATE")
            try:
                body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._retry(once)

    # -- the mapping ---------------------------------------------------------------------------

    def get(self, key: bytes):
        """``(pickle, buffers)`` for ``key``, or None."""
        conn = self._conn()
        try:
            row = conn.execute(self._sql_get, (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            row = self._retry(lambda: conn.execute(self._sql_get, (key,)).fetchone())
        if row is None:
            return None
        if not row[0]:
            if row[1].__class__ is not bytes:
                raise self._damaged(f"a value is stored as {type(row[1]).__name__}, not a blob")
            return row[1], None
        # The value has out-of-band buffers: read it again with them, in one statement (one
        # snapshot), so a writer replacing it in between cannot pair it with other buffers.
        return self._get_with_buffers(conn, key)

    def _get_with_buffers(self, conn, key: bytes):
        rows = self._retry(lambda: conn.execute(self._sql_get_all, (key,)).fetchall())
        if not rows:
            return None
        nbuf, value = rows[0][0], rows[0][1]
        if value.__class__ is not bytes or any(
                data is not None and data.__class__ is not bytes for *_, data in rows):
            raise self._damaged("a value or one of its buffers is not stored as a blob")
        buffers = [data if readonly else bytearray(data)
                   for _, _, readonly, data in rows if data is not None]
        if len(buffers) != nbuf:
            raise self._damaged(f"a value has {len(buffers)} of its {nbuf} out-of-band buffers")
        return value, buffers

    def _damaged(self, what: str) -> StoreError:
        return StoreError(f"the store {self.path} is damaged: {what} (was the file written by "
                          "something other than mason?)")

    def contains(self, key: bytes) -> bool:
        conn = self._conn()
        return self._retry(lambda: conn.execute(self._sql_has, (key,)).fetchone()) is not None

    def set(self, key: bytes, data: bytes, buffers) -> None:
        conn = self._conn()
        if not buffers:
            if conn.in_transaction:
                conn.execute(self._sql_put0, (key, data))
                return
            try:
                conn.execute(self._sql_put0, (key, data))
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self._retry(lambda: conn.execute(self._sql_put0, (key, data)))
            return
        self._write(conn, lambda c: self._put_with_buffers(c, key, data, buffers))

    def _put_with_buffers(self, conn, key, data, buffers) -> None:
        conn.execute(self._sql_put, (key, data, len(buffers)))
        # The old value's buffers are overwritten in place (same pages when the sizes match),
        # and the trigger removed those beyond the new count.
        conn.executemany(self._sql_buf, [(key, i, int(view.readonly), view)
                                         for i, view in enumerate(buffers)])

    def set_many(self, items) -> None:
        """Write ``(key, pickle, buffers)`` items in one transaction."""
        items = list(items)

        def body(conn):
            plain = [(k, d) for k, d, bufs in items if not bufs]
            if plain:
                conn.executemany(self._sql_put0, plain)
            for k, d, bufs in items:
                if bufs:
                    self._put_with_buffers(conn, k, d, bufs)

        self._write(self._conn(), body)

    def delete(self, key: bytes) -> bool:
        conn = self._conn()
        if conn.in_transaction:
            return conn.execute(self._sql_del, (key,)).rowcount > 0
        return self._retry(lambda: conn.execute(self._sql_del, (key,)).rowcount) > 0

    def clear(self) -> None:
        def body(conn):
            conn.execute(f"DELETE FROM {self._b}")
            # The buffers are gone already: drop the rows without firing a trigger per row.
            conn.execute(f"UPDATE {self._t} SET nbuf = 0 WHERE nbuf > 0")
            conn.execute(f"DELETE FROM {self._t}")

        self._write(self._conn(), body)

    def count(self) -> int:
        conn = self._conn()
        return self._retry(lambda: conn.execute(f"SELECT count(*) FROM {self._t}").fetchone()[0])

    def last_key(self) -> bytes | None:
        conn = self._conn()
        row = self._retry(lambda: conn.execute(
            f"SELECT key FROM {self._t} ORDER BY key DESC LIMIT 1").fetchone())
        return None if row is None else row[0]

    def iter_keys(self) -> Iterator[bytes]:
        """Every key, in key order, a page at a time: no read transaction stays open while the
        caller works (inside ``transaction()`` all pages come from its snapshot)."""
        conn_sql_first = f"SELECT key FROM {self._t} ORDER BY key LIMIT {_PAGE}"
        conn_sql_next = f"SELECT key FROM {self._t} WHERE key > ? ORDER BY key LIMIT {_PAGE}"
        last = None
        while True:
            conn = self._conn()
            if last is None:
                rows = self._retry(lambda: conn.execute(conn_sql_first).fetchall())
            else:
                rows = self._retry(lambda: conn.execute(conn_sql_next, (last,)).fetchall())
            for (key,) in rows:
                yield key
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def iter_items(self) -> Iterator[tuple[bytes, bytes, list | None]]:
        """Every ``(key, pickle, buffers)``, in key order, a page at a time."""
        sql_first = f"SELECT key, value, nbuf FROM {self._t} ORDER BY key LIMIT {_PAGE}"
        sql_next = (f"SELECT key, value, nbuf FROM {self._t} WHERE key > ? ORDER BY key "
                    f"LIMIT {_PAGE}")
        last = None
        while True:
            conn = self._conn()
            if last is None:
                rows = self._retry(lambda: conn.execute(sql_first).fetchall())
            else:
                rows = self._retry(lambda: conn.execute(sql_next, (last,)).fetchall())
            for key, value, nbuf in rows:
                if not nbuf:
                    if value.__class__ is not bytes:
                        raise self._damaged(f"a value is stored as {type(value).__name__}, "
                                            "not a blob")
                    yield key, value, None
                    continue
                found = self._get_with_buffers(conn, key)
                if found is not None:  # deleted since the page was read: skip it
                    yield key, found[0], found[1]
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def transaction(self):
        holder = self._holder()
        conn = holder.conn
        if holder.depth == 0:
            if conn.in_transaction:  # left open by a failure we could not roll back
                conn.execute("ROLLBACK")
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            holder.depth = 1
            try:
                yield
            except BaseException:
                holder.depth = 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            holder.depth = 0
            try:
                self._retry(lambda: conn.execute("COMMIT"))
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return
        # Nested: a savepoint, so an inner block that fails undoes only its own writes.
        name = f"mason_sp{holder.depth}"
        conn.execute(f"SAVEPOINT {name}")
        holder.depth += 1
        try:
            yield
        except BaseException:
            holder.depth -= 1
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        holder.depth -= 1
        conn.execute(f"RELEASE {name}")

    def in_transaction(self) -> bool:
        try:
            return self._local.holder.depth > 0
        except AttributeError:
            return False

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            conns = list(self._conns.items())
        for key, _ in conns:
            _close_quietly(self._conns, key)  # leaves a parent's connections alone

    def describe(self) -> str:
        return self.path
