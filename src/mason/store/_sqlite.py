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

Checkpoints (copying the WAL back into the database, with two fsyncs) run on a thread of the
store's own, woken every ``_CHECKPOINT_EVERY`` writes, instead of inside whichever write
happens to cross SQLite's threshold: a write then costs its own commit and nothing more, and
readers soon find the database file current, which they read through its memory map instead
of looking each page up in the WAL (100 KB gets after a burst of puts measured 1.6 times
faster).  The writers' connections keep SQLite's automatic checkpoint as a backstop, at a
higher threshold.

Layout (``name`` defaults to "default"; one file can hold several stores)::

    store_<name>   key BLOB PRIMARY KEY, ext, size, nonce, nbuf, value
    mason_meta     name TEXT PRIMARY KEY, value -- format version, uid (see _space)

Large values live beside the database.  A value whose pickle is under ``INLINE_MAX`` bytes
and has no out-of-band buffer is the row's ``value``.  Any other goes to the values file
(``<path>-values``, after its first ``_space.REGION`` bytes, which hold the map of its free
space): one extent, page-aligned, holding ``nonce | pickle | buffers... | nonce``,
written with one ``pwritev`` straight from the pickle and the buffers' own memory; the row
keeps its offset (``ext``), allocated length (``size``), the ``nonce`` and, in ``value``, the
lengths of the pickle and of each buffer.  Why not rows: SQLite writes a large value twice
(to the WAL, then at the checkpoint) and frees and reallocates its overflow pages on every
overwrite: a 100 KB put cost six times as much that way as it does now.

Extents are reused, so that an overwrite writes into pages the file (and the page cache)
already has, instead of growing the file:

* The extent is taken from the space map and written *before* the row that points to it
  commits, inside the same write transaction; after the commit, the row and its bytes are both
  there.  No committed extent is ever written to.
* The extent a row lets go of (overwritten or deleted) goes back on the map only after the
  commit, by the next write transaction of the same process (``_space`` says why that order
  keeps the map exact, and how it is rebuilt when it cannot be trusted).  So a transaction
  never reuses what it freed itself, which other readers still see; and a put's commit changes
  one page of the database, its row's.
* A reader reads the row, then the extent, then checks that the row still has the same nonce:
  an extent is reused only after the commit that freed it, so if the row is unchanged after
  the read, the bytes read were the value's.  (Inside its own write transaction a thread needs
  no check: nobody else can write.)  The nonce at both ends of the extent catches a values file
  that lost writes (a power loss under ``synchronous=NORMAL``, which does not fsync it) or that
  something else wrote: the read fails with ``StoreError`` instead of returning other bytes.
* Free extents are best fit, split when larger than needed, and merged with their neighbours
  when the file would otherwise grow.  The file does not shrink.  A process killed between a
  commit and its next write leaves what it freed unused until the map's next rebuild.

Under ``synchronous="FULL"`` the values file is fsynced before the row commits.

The file is only bytes to the loader: every pickle read from it is loaded under the store's
policy like any other.
"""

from __future__ import annotations

import atexit
import mmap
import os
import random
import re
import sqlite3
import stat
import struct
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Iterator

from ._fs import is_network_fs
from ._space import SpaceMap, boot_id
from .errors import NetworkFilesystemError, StoreBusyError, StoreError

try:  # the compiled lean connection, only if it shares the sqlite3 module's SQLite library
    import _sqlite3

    from . import _statements
    if not _statements.same_library(_sqlite3.__file__):
        _statements = None
except (ImportError, AttributeError, OSError):
    _statements = None

__all__ = ["SQLiteBackend", "INLINE_MAX"]

FORMAT = 3
_PAGE = 512  # rows per page when iterating
_MMAP_SIZE = 1 << 30 if sys.maxsize > 2 ** 32 else 0  # address space, not memory
INLINE_MAX = 16 * 1024  # a pickle this long, or with buffers, goes to the values file
_PAGE_SIZE = 1024  # of a new database; see _setup
_ALIGN = 4096  # extents are whole pages: an overwrite never reads a page it half-covers
# Writes between two wakes of the checkpoint thread: a put adds one WAL page, so about 2 MB
# (waking it every 512 made 100 KB puts about 4% slower: its fsyncs stall the writes beside).
_CHECKPOINT_EVERY = 2048
# The writers' own checkpoint, in WAL pages (about 10 MB at 1 KiB a page): a backstop that
# also lets the WAL start again from its beginning, which the thread's passive checkpoints,
# racing with writers, rarely can.
_AUTOCHECKPOINT = 10_000
_NONCE = struct.Struct("<Q")
_LENGTHS = struct.Struct("<Q")  # the pickle's length, then each buffer's (low bit: writable)
_BOOT = boot_id()

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


class _LeanCursor:
    """What the write paths use of a sqlite3 cursor, over a ``_statements.Connection``:
    ``execute`` prepares each SQL text once and runs it by index."""

    __slots__ = ("conn", "index", "rows")

    def __init__(self, conn):
        self.conn = conn
        self.index: dict[str, tuple[int, bool]] = {}
        self.rows: list = []

    def prepared(self, sql: str) -> int:
        """The index of ``sql``'s statement, prepared once."""
        return self._known(sql)[0]

    def _known(self, sql: str) -> tuple[int, bool]:
        known = self.index.get(sql)
        if known is None:
            known = self.index[sql] = (self.conn.prepare(sql), sql.lstrip().startswith("SELECT"))
        return known

    def execute(self, sql: str, params=()):
        known = self._known(sql)
        if known[1]:
            self.rows = self.conn.run(known[0], params, True)
        else:
            row = self.conn.run(known[0], params)
            self.rows = [] if row is None else [row]
        return self

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list:
        return self.rows

    @property
    def rowcount(self) -> int:
        return self.conn.changes()


class _Holder:
    """A thread's connection and cursor (and its lean twin for writes outside transactions);
    when the thread ends, its thread-local holder is collected and the connections closed
    (sqlite3.Connection takes no weak references)."""

    __slots__ = ("conn", "cur", "lean", "put", "fast_put", "extent", "fast_extent",
                 "generation", "depth", "gen", "taken", "freed", "released", "saves",
                 "__weakref__")

    def __init__(self, conn, lean, put_sql: str, extent_sql: tuple, generation):
        self.conn = conn
        self.cur = conn.cursor()  # one cursor reused: conn.execute makes one per call
        # A write outside a transaction runs on the lean connection: the same statements at a
        # fraction of the sqlite3 module's cost per call.  Inside one, everything runs on
        # conn, which holds the transaction.
        self.lean = None if lean is None else _LeanCursor(lean)
        # The one-statement put, and the statements of a large value's put in one call.
        self.put = None if lean is None else self.lean.prepared(put_sql)
        self.fast_put = None if lean is None else lean.put
        self.extent = None if lean is None else tuple(map(self.lean.prepared, extent_sql))
        self.fast_extent = None if lean is None else lean.put_extent
        self.generation = generation
        self.depth = 0  # transaction nesting: 0 outside, 1 in BEGIN, n > 1 in savepoints
        # The open write transaction's extents (see SQLiteBackend._begin): the space map's
        # generation, extents taken, extents its rows let go, extents free whatever happens,
        # and (len(taken), len(freed)) at each open savepoint.
        self.gen = 0
        self.taken: list = []
        self.freed: list = []
        self.released: list = []
        self.saves: list = []

    def writer(self):
        """The cursor for a write: the lean one unless a transaction is open on conn."""
        lean = self.lean
        return lean if lean is not None and not self.conn.in_transaction else self.cur


def _close_quietly(conns: dict, key: int) -> None:
    entry = conns.pop(key, None)
    if entry is None:
        return
    conn, lean, pid = entry
    if pid != os.getpid():
        # Collected in a forked child (CPython frees the other threads' locals there): the
        # connection is the parent's, and closing it here could disturb the parent's WAL.
        _abandoned.append(conn)
        return
    for each in (lean, conn):
        try:
            if each is not None:
                each.close()
        except Exception:
            pass


# -- the values file ---------------------------------------------------------------------------

_IOV = 512  # parts per system call, under every platform's IOV_MAX
_fdatasync = getattr(os, "fdatasync", os.fsync)

if hasattr(os, "pwritev"):
    def _pwritev(fd: int, parts: list, offset: int) -> None:
        for i in range(0, len(parts), _IOV):
            chunk = parts[i:i + _IOV]
            total = sum(memoryview(p).nbytes for p in chunk)
            done = os.pwritev(fd, chunk, offset)
            if done < total:  # a short write: finish it (a full disk raises on the way)
                rest = memoryview(b"".join(chunk))[done:]
                while rest:
                    n = os.pwrite(fd, rest, offset + done)
                    rest, done = rest[n:], done + n
            offset += total

else:  # Windows: no positional I/O in os; one lock serialises seek-then-transfer
    _io_lock = threading.Lock()

    def _pwritev(fd: int, parts: list, offset: int) -> None:
        with _io_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            for part in parts:
                view = memoryview(part).cast("B")
                while view:
                    view = view[os.write(fd, view):]


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _open_values(path: str) -> int:
    """Open (creating) the values file: never following a link, never blocking on a FIFO."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)  # the umask applies, as to SQLite's own files
    except OSError as exc:
        raise StoreError(f"cannot open the store's values file {path}: {exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"the store's values file {path} is not a regular file")
    return fd


class _Checkpointer:
    """A thread that runs passive WAL checkpoints when writers wake it.

    A passive checkpoint never blocks writers or readers; the fsyncs it needs happen on this
    thread, not inside somebody's write.  The thread belongs to the process that started it:
    after a fork the child starts its own on its first wake.
    """

    def __init__(self, path: str):
        self.path = path
        self.event = threading.Event()
        self.pid = 0
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def wake(self) -> None:
        if self.pid != os.getpid():
            with self.lock:
                if self.pid != os.getpid() and not self.stopping:
                    self.event = threading.Event()
                    self.thread = threading.Thread(target=self._run, args=(self.event,),
                                                   name="mason-store-checkpoint", daemon=True)
                    self.pid = os.getpid()
                    self.thread.start()
                    _running.add(self)
        self.event.set()

    def _run(self, event: threading.Event) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the writers' own automatic checkpoint still bounds the WAL
        try:
            while True:
                event.wait()
                event.clear()
                if self.stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # busy or closing: the next wake tries again
        finally:
            conn.close()

    def stop(self, wait: bool = True) -> None:
        self.stopping = True
        thread = self.thread
        if thread is not None and self.pid == os.getpid():
            self.event.set()
            if wait and thread is not threading.current_thread():
                thread.join(10)
        _running.discard(self)


_running: set = set()


@atexit.register
def _stop_checkpointers() -> None:
    # At exit: let a checkpoint in progress finish rather than leave it to the daemon rule.
    for checkpointer in list(_running):
        checkpointer.stop()


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
        self.values_path = self.path + "-values"
        self.name = name
        self.timeout = float(timeout)
        self.synchronous = synchronous
        self._fsync_values = synchronous in ("FULL", "EXTRA")
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
        self._t = t = f'"{table}"'
        self._sql_get = f"SELECT value, ext, size, nonce, nbuf FROM {t} WHERE key = ?"
        self._sql_nonce = f"SELECT nonce FROM {t} WHERE key = ?"
        self._sql_has = f"SELECT 1 FROM {t} WHERE key = ?"
        # Changes nothing (rowcount 0) when the row holds an extent: see _put_row.
        self._sql_put = (f"INSERT INTO {t} (key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                         "UPDATE SET value = excluded.value WHERE ext IS NULL")
        self._sql_replace = (f"UPDATE {t} SET value = ?, ext = NULL, size = 0, nonce = 0, "
                             "nbuf = 0 WHERE key = ?")
        self._sql_extent = f"SELECT ext, size FROM {t} WHERE key = ?"
        self._sql_put_ext = (f"INSERT INTO {t} (key, ext, size, nonce, nbuf, value) "
                             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                             "ext = excluded.ext, size = excluded.size, nonce = excluded.nonce, "
                             "nbuf = excluded.nbuf, value = excluded.value")
        self._sql_del = f"DELETE FROM {t} WHERE key = ?"
        self._lock = threading.Lock()
        self._conns: dict[int, tuple[sqlite3.Connection, int]] = {}
        self._local = threading.local()
        self._closed = False
        self._writes = 0
        self._pending: list[tuple[int, int, int]] = []  # freed extents waiting: see _space
        self._pending_fork = _fork_generation
        self._space = None
        self._map = None  # see _mapping
        self._checkpointer = _Checkpointer(self.path)
        # A store dropped without close() still ends its thread.
        weakref.finalize(self, self._checkpointer.stop, False)
        conn = self._conn()  # open now: a bad path or a foreign file fails here, not later
        try:
            self._uid = self._read_uid(conn)
            self._fd = _open_values(self.values_path)
        except BaseException:
            self.close()
            raise
        # Closed once, by close() or when the store is collected (never a reused number).
        self._close_values = weakref.finalize(self, _close_fd, self._fd)
        try:
            self._space = SpaceMap(self._fd)
        except (OSError, ValueError) as exc:
            self.close()
            raise StoreError(f"cannot map the store's values file {self.values_path}: "
                             f"{exc}") from exc

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        return self._holder().conn

    def _holder(self) -> _Holder:
        try:
            holder = self._local.holder
            if holder.generation == _fork_generation and not self._closed:
                return holder
        except AttributeError:
            pass
        if self._closed:
            raise ValueError(f"operation on a closed store ({self.path})")
        return self._connect()

    def _connect(self) -> _Holder:
        if self._pending_fork != _fork_generation:
            # A forked child's first use: what the parent freed is the parent's to give back.
            with self._lock:
                self._pending, self._pending_fork = [], _fork_generation
        old = getattr(self._local, "holder", None)
        if old is not None and old.generation != _fork_generation:
            me = os.getpid()
            with self._lock:  # in a forked child: forget the parent's connections
                for key, (conn, _, pid) in list(self._conns.items()):
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
        lean = self._open_lean()
        holder = _Holder(conn, lean, self._sql_put, (
            "BEGIN IMMEDIATE", self._sql_extent, self._sql_put_ext, "COMMIT", "ROLLBACK"),
            _fork_generation)
        with self._lock:
            self._conns[id(holder)] = (conn, lean, os.getpid())
        weakref.finalize(holder, _close_quietly, self._conns, id(holder))
        self._local.holder = holder
        return holder

    def _read_uid(self, conn: sqlite3.Connection) -> bytes:
        row = conn.execute("SELECT value FROM mason_meta WHERE name = 'uid'").fetchone()
        try:
            uid = bytes.fromhex(row[0])
        except (TypeError, ValueError):
            uid = b""
        if len(uid) != 16:
            raise self._damaged("its uid (in mason_meta) is missing or not 16 bytes of hex")
        return uid

    def _open_lean(self):
        """The thread's lean connection (after _setup made the file), or None without one."""
        if _statements is None:
            return None
        try:
            lean = _statements.Connection(self.path, int(min(self.timeout, 5.0) * 1000))
            for pragma in self._pragmas():
                lean.run(lean.prepare(pragma), ())
        except sqlite3.Error:
            return None  # an optimisation only: the thread writes through its sqlite3 one
        return lean

    def _pragmas(self) -> list[str]:
        """What every connection sets for itself (the journal mode belongs to the file)."""
        # The schema is trusted to do nothing but what we put there.
        return ["PRAGMA trusted_schema = OFF", f"PRAGMA synchronous = {self.synchronous}",
                f"PRAGMA mmap_size = {_MMAP_SIZE}",
                f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT}"]

    def _setup(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute(self._pragmas()[0])
            # Small pages for a new database (an existing one keeps its own): a commit writes
            # each page it changed to the WAL, and a put changes one leaf, so a 1 KiB page
            # makes every commit cheaper (about a fifth on 100k small records); values large
            # enough to want big pages live in the values file.
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {self.path} to WAL mode (got {mode!r}): is it "
                                 "read-only, or opened by a program that forbids WAL?")
            for pragma in self._pragmas()[1:]:
                conn.execute(pragma)
            exists = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                (self._t.strip('"'),)).fetchone()[0]
            if not exists:
                self._retry(lambda: self._create(conn))
            meta = conn.execute(
                "SELECT value FROM mason_meta WHERE name = 'format'").fetchone()
            if meta is None or int(meta[0]) != FORMAT:
                found = meta and meta[0]
                newer = found is not None and int(found) > FORMAT
                raise StoreError(
                    f"{self.path} is a mason store of format {found}, and this mason reads "
                    f"format {FORMAT}: " + ("upgrade mason to open it" if newer else
                                            "it was written by a development version before "
                                            "the first release; write it again"))
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise StoreBusyError(f"{self.path} stayed locked for {self.timeout:g} s while "
                                     f"opening: {exc}") from exc
            raise StoreError(f"{self.path} is not a usable mason store: {exc}") from exc

    def _create(self, conn: sqlite3.Connection) -> None:
        t = self._t
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS mason_meta "
                         "(name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
            conn.execute("INSERT OR IGNORE INTO mason_meta VALUES ('format', ?)", (str(FORMAT),))
            # Names this database to its values file's space map (see _space).
            conn.execute("INSERT OR IGNORE INTO mason_meta VALUES ('uid', ?)",
                         (os.urandom(16).hex(),))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {t} (key BLOB PRIMARY KEY NOT NULL, "
                         "ext INTEGER, size INTEGER NOT NULL DEFAULT 0, "
                         "nonce INTEGER NOT NULL DEFAULT 0, nbuf INTEGER NOT NULL DEFAULT 0, "
                         "value BLOB NOT NULL)")
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

    def _wrote(self, due: bool = False) -> None:
        """Count a write; every _CHECKPOINT_EVERY (or when the lean connection says it is
        due), wake the checkpoint thread."""
        self._writes += 1
        if due or self._writes >= _CHECKPOINT_EVERY:
            self._writes = 0
            self._checkpointer.wake()

    def _write(self, holder: _Holder, body) -> None:
        """Run ``body(cur)`` as one write transaction: joined to the caller's transaction
        if one is open in this thread, else its own BEGIN IMMEDIATE ... COMMIT, retried."""
        if holder.conn.in_transaction:
            body(holder.cur)
            return
        cur = holder.writer()
        owner = holder.conn if cur is holder.cur else cur.conn

        def once():
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._begin(holder, cur)
                body(cur)
                cur.execute("COMMIT")
            except BaseException:
                if owner.in_transaction:
                    cur.execute("ROLLBACK")
                self._end(holder, committed=False)
                raise
            self._end(holder, committed=True)

        self._retry(once)
        self._wrote()

    # -- the values file's space ---------------------------------------------------------------

    def _begin(self, holder: _Holder, cur) -> None:
        """At the start of a write transaction (the write lock held): a space map to trust,
        the extents this process freed since its last one put back, and fresh bookkeeping."""
        space = self._space
        if not space.valid(self._uid, _BOOT):
            space.rebuild(self._live_extents(cur), self._uid, _BOOT)
        if self._pending:
            with self._lock:
                pending, self._pending = self._pending, []
            space.give(pending)
        holder.gen = space.gen()
        holder.taken, holder.freed, holder.released, holder.saves = [], [], [], []

    def _end(self, holder: _Holder, committed: bool) -> None:
        """After COMMIT or ROLLBACK: what the transaction made free waits for the next one
        (an extent is reused only after the commit that freed it is in)."""
        free = holder.freed if committed else holder.taken
        gen = holder.gen
        if free or holder.released:
            with self._lock:
                self._pending.extend((off, size, gen) for off, size in free)
                self._pending.extend((off, size, gen) for off, size in holder.released)
        holder.taken, holder.freed, holder.released, holder.saves = [], [], [], []

    def _live_extents(self, cur) -> list[tuple[int, int]]:
        """Every extent a row holds, in every store of the file."""
        tables = [name for (name,) in cur.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'store_*'"
        ).fetchall()]
        live: list[tuple[int, int]] = []
        for table in tables:
            live.extend(cur.execute(f'SELECT ext, size FROM "{table}" WHERE ext IS NOT NULL')
                        .fetchall())
        return live

    def _let_go(self, holder: _Holder, cur, key: bytes) -> None:
        """Before a write transaction replaces or deletes ``key``'s row: its extent, if any,
        becomes free when the transaction commits."""
        row = cur.execute(self._sql_extent, (key,)).fetchone()
        if row is not None and row[0] is not None:
            holder.freed.append(row)

    @staticmethod
    def _extent_of(data: bytes, buffers) -> tuple[list, bytes, int]:
        """``(parts, layout, need)``: what an extent holds between its nonces, the row's
        description of it, and its whole length in bytes."""
        views = [memoryview(b) for b in buffers]
        lengths = [len(data) << 1] + [(v.nbytes << 1) | (not v.readonly) for v in views]
        total = 16 + len(data) + sum(v.nbytes for v in views)
        layout = b"".join(_LENGTHS.pack(n) for n in lengths)
        return [data, *views], layout, (total + _ALIGN - 1) // _ALIGN * _ALIGN

    def _put_extent(self, holder: _Holder, cur, key: bytes, data: bytes, buffers) -> None:
        parts, layout, need = self._extent_of(data, buffers)
        off = self._space.take(need)
        holder.taken.append((off, need))
        nonce = random.getrandbits(63)
        tag = _NONCE.pack(nonce)
        _pwritev(self._fd, [tag, *parts, tag], off)
        if self._fsync_values:
            _fdatasync(self._fd)
        self._let_go(holder, cur, key)
        cur.execute(self._sql_put_ext, (key, off, need, nonce, len(parts) - 1, layout))

    def _put_extent_at_once(self, holder: _Holder, key: bytes, data: bytes, buffers) -> bool:
        """A large value's put outside a transaction as one call of the lean connection (what
        _write with _put_extent does); False, having done nothing, if the space map needs a
        rebuild first."""
        # The call gives self._pending back and empties it while it holds SQLite's write lock
        # and the GIL: no _begin can swap the list meanwhile, nor an append slip in.
        try:
            done = holder.fast_extent(holder.extent, key, data, buffers, self._space.map,
                                      self._uid, _BOOT, self._fd, self._fsync_values,
                                      self._pending)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            done = self._retry(lambda: holder.fast_extent(
                holder.extent, key, data, buffers, self._space.map, self._uid, _BOOT,
                self._fd, self._fsync_values, self._pending))
        if done is None:
            return False
        if done[1] is not None:
            self._pending.append((done[1], done[2], done[0]))  # atomic under the GIL
        self._writes += 1
        if self._writes >= _CHECKPOINT_EVERY:
            self._wrote()
        return True

    def _read_extent(self, holder: _Holder, key: bytes, row):
        """``(pickle, buffers)`` of an extent row, or None if the row changed meanwhile."""
        layout, off, size, nonce, nbuf = row
        if layout.__class__ is not bytes or len(layout) != 8 * (nbuf + 1) or off < 0:
            raise self._damaged("a value's row does not describe its extent")
        if nbuf:
            lengths = [n for (n,) in _LENGTHS.iter_unpack(layout)]
            total = 16 + sum(n >> 1 for n in lengths)
        else:
            total = 16 + (_LENGTHS.unpack(layout)[0] >> 1)
        if total > size:
            raise self._damaged("a value is longer than its extent")
        tag = _NONCE.pack(nonce)
        mapped = self._mapping(off + total)
        if mapped is None:  # shorter than the row says
            ok, data, buffers = False, b"", None
        elif not nbuf:
            raw = mapped[off:off + total]  # a copy: a later put cannot change it
            ok = raw[:8] == tag and raw[-8:] == tag
            data, buffers = memoryview(raw)[8:-8], None
        else:
            # Each piece copied once: a writable buffer into a bytearray of its own (the
            # array comes back writable, as with pickle), a read-only one into bytes.
            view = memoryview(mapped)
            ok = view[off:off + 8] == tag and view[off + total - 8:off + total] == tag
            pos = off + 8 + (lengths[0] >> 1)
            data = mapped[off + 8:pos]
            buffers = []
            for n in lengths[1:]:
                end = pos + (n >> 1)
                buffers.append(bytearray(view[pos:end]) if n & 1 else mapped[pos:end])
                pos = end
            view.release()
        if not holder.conn.in_transaction:
            # Unchanged since the read: the extent was not freed, so not reused, meanwhile.
            cur = holder.cur
            try:
                now = cur.execute(self._sql_nonce, (key,)).fetchone()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = self._retry(lambda: cur.execute(self._sql_nonce, (key,)).fetchone())
            if now is None or now[0] != nonce:
                return None
        if not ok:
            raise self._damaged(
                "a value's bytes in the values file are not the ones its row expects (the "
                "file was written by something else, or lost writes in a power failure)")
        return data, buffers

    def _mapping(self, end: int):
        """A read-only memory map of the values file covering ``[0, end)``, or None if the
        file is shorter.  Reads copy out of it: no system call per read, and no page that a
        later write can change is handed out.  (Like SQLite's own ``mmap_size``, it assumes
        that nothing but mason truncates the file.)"""
        mapped = self._map
        if mapped is not None and len(mapped) >= end:
            return mapped
        with self._lock:
            mapped = self._map
            if mapped is None or len(mapped) < end:
                size = os.fstat(self._fd).st_size
                if size < end:
                    return None
                mapped = self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
        return mapped

    # -- the mapping ---------------------------------------------------------------------------

    def get(self, key: bytes):
        """``(pickle, buffers)`` for ``key``, or None."""
        holder = self._holder()
        cur = holder.cur
        while True:
            try:
                row = cur.execute(self._sql_get, (key,)).fetchone()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                row = self._retry(lambda: cur.execute(self._sql_get, (key,)).fetchone())
            if row is None:
                return None
            if row[1] is None:
                if row[0].__class__ is not bytes or row[4]:
                    raise self._damaged(f"a value is stored as {type(row[0]).__name__}, "
                                        "not a blob")
                return row[0], None
            found = self._read_extent(holder, key, row)
            if found is not None:
                return found
            # Overwritten while we read it: read the new value.

    def _damaged(self, what: str) -> StoreError:
        return StoreError(f"the store {self.path} is damaged: {what} (was the file written by "
                          "something other than mason?)")

    def contains(self, key: bytes) -> bool:
        cur = self._holder().cur
        return self._retry(lambda: cur.execute(self._sql_has, (key,)).fetchone()) is not None

    def set(self, key: bytes, data: bytes, buffers) -> None:
        try:  # _holder(), inline: a put is short enough that a call shows
            holder = self._local.holder
        except AttributeError:
            holder = self._holder()
        if holder.generation != _fork_generation or self._closed:
            holder = self._holder()
        if buffers or len(data) >= INLINE_MAX:
            if holder.depth or holder.fast_extent is None \
                    or not self._put_extent_at_once(holder, key, data, buffers):
                self._write(holder, lambda cur: self._put_extent(holder, cur, key, data,
                                                                 buffers))
            return
        # The path of most puts, kept short: one autocommit statement, which changes nothing
        # if the row holds an extent (freeing that takes a transaction: _put_row).
        if holder.depth:
            self._put_row(holder, holder.cur, key, data)
            return
        try:
            done = self._put_once(holder, key, data)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            done = self._retry(lambda: self._put_once(holder, key, data))
        if not done:
            self._write(holder, lambda cur: self._put_row(holder, cur, key, data))
            return
        if done == 2 or holder.lean is None:
            self._wrote(done == 2)

    def _put_once(self, holder: _Holder, key: bytes, data: bytes) -> int:
        """The one-statement put, autocommitted: 0 if it changed nothing (the row holds an
        extent), else 1, or 2 when the lean connection says a checkpoint is due."""
        if holder.fast_put is not None:
            return holder.fast_put(holder.put, key, data, _CHECKPOINT_EVERY)
        return holder.cur.execute(self._sql_put, (key, data)).rowcount

    def _put_row(self, holder: _Holder, cur, key: bytes, data: bytes) -> None:
        """Inside a write transaction: ``key``'s value in its row."""
        if not cur.execute(self._sql_put, (key, data)).rowcount:
            self._let_go(holder, cur, key)  # the row holds an extent
            cur.execute(self._sql_replace, (data, key))

    def set_many(self, items) -> None:
        """Write ``(key, pickle, buffers)`` items in one transaction."""
        items = list(items)
        holder = self._holder()

        def body(cur):
            for k, d, bufs in items:
                if bufs or len(d) >= INLINE_MAX:
                    self._put_extent(holder, cur, k, d, bufs)
                else:
                    self._put_row(holder, cur, k, d)

        self._write(holder, body)

    def delete(self, key: bytes) -> bool:
        holder = self._holder()
        deleted = []

        def body(cur):
            self._let_go(holder, cur, key)
            deleted.append(cur.execute(self._sql_del, (key,)).rowcount > 0)

        self._write(holder, body)
        return deleted[-1]

    def clear(self) -> None:
        holder = self._holder()

        def body(cur):
            holder.freed.extend(cur.execute(f"SELECT ext, size FROM {self._t} "
                                            "WHERE ext IS NOT NULL").fetchall())
            cur.execute(f"DELETE FROM {self._t}")

        self._write(holder, body)

    def count(self) -> int:
        cur = self._holder().cur
        return self._retry(lambda: cur.execute(f"SELECT count(*) FROM {self._t}").fetchone()[0])

    def last_key(self) -> bytes | None:
        cur = self._holder().cur
        row = self._retry(lambda: cur.execute(
            f"SELECT key FROM {self._t} ORDER BY key DESC LIMIT 1").fetchone())
        return None if row is None else row[0]

    def iter_keys(self) -> Iterator[bytes]:
        """Every key, in key order, a page at a time: no read transaction stays open while the
        caller works (inside ``transaction()`` all pages come from its snapshot)."""
        sql_first = f"SELECT key FROM {self._t} ORDER BY key LIMIT {_PAGE}"
        sql_next = f"SELECT key FROM {self._t} WHERE key > ? ORDER BY key LIMIT {_PAGE}"
        last = None
        while True:
            conn = self._conn()
            if last is None:
                rows = self._retry(lambda: conn.execute(sql_first).fetchall())
            else:
                rows = self._retry(lambda: conn.execute(sql_next, (last,)).fetchall())
            for (key,) in rows:
                yield key
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def iter_items(self) -> Iterator[tuple[bytes, bytes, list | None]]:
        """Every ``(key, pickle, buffers)``, in key order, a page at a time."""
        sql_first = f"SELECT key, value, ext FROM {self._t} ORDER BY key LIMIT {_PAGE}"
        sql_next = (f"SELECT key, value, ext FROM {self._t} WHERE key > ? ORDER BY key "
                    f"LIMIT {_PAGE}")
        last = None
        while True:
            conn = self._conn()
            if last is None:
                rows = self._retry(lambda: conn.execute(sql_first).fetchall())
            else:
                rows = self._retry(lambda: conn.execute(sql_next, (last,)).fetchall())
            for key, value, ext in rows:
                if ext is None:
                    if value.__class__ is not bytes:
                        raise self._damaged(f"a value is stored as {type(value).__name__}, "
                                            "not a blob")
                    yield key, value, None
                    continue
                found = self.get(key)
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

            def begin():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._begin(holder, holder.cur)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

            self._retry(begin)
            holder.depth = 1
            try:
                yield
            except BaseException:
                holder.depth = 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._end(holder, committed=False)
                raise
            holder.depth = 0
            try:
                self._retry(lambda: conn.execute("COMMIT"))
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._end(holder, committed=False)
                raise
            self._end(holder, committed=True)
            self._wrote()
            return
        # Nested: a savepoint, so an inner block that fails undoes only its own writes.
        name = f"mason_sp{holder.depth}"
        conn.execute(f"SAVEPOINT {name}")
        holder.depth += 1
        holder.saves.append((len(holder.taken), len(holder.freed)))
        try:
            yield
        except BaseException:
            holder.depth -= 1
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            # Its rows are undone: what it took is free whatever happens next, and what it
            # let go is held again.
            taken, freed = holder.saves.pop()
            holder.released.extend(holder.taken[taken:])
            del holder.taken[taken:], holder.freed[freed:]
            raise
        holder.depth -= 1
        holder.saves.pop()
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
        if self._pending and self._space is not None:
            self._give_back()
        self._closed = True
        self._checkpointer.stop()
        with self._lock:
            conns = list(self._conns.items())
        for key, _ in conns:
            _close_quietly(self._conns, key)  # leaves a parent's connections alone
        if self._space is not None:
            self._space.close()
        closer = getattr(self, "_close_values", None)
        if closer is not None:
            closer()

    def _give_back(self) -> None:
        """Before closing: put what this process freed back on the space map (otherwise it
        stays unused until the map's next rebuild).  One try, within the connection's busy
        timeout: a close does not wait out another writer's long transaction."""
        try:
            holder = self._holder()
            conn = holder.conn
            if holder.depth or conn.in_transaction:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._begin(holder, holder.cur)  # gives the pending extents back
            finally:
                conn.execute("ROLLBACK")  # nothing was written in the database
                self._end(holder, committed=False)
        except (sqlite3.Error, StoreError, ValueError, OSError):
            pass

    def free_extents(self) -> list[tuple[int, int]]:
        """``(offset, length)`` of the values file's free extents, and ``(end, 0)`` for where
        it ends (a check of the space map: see _space)."""
        return self._space.free_extents() + [(self._space.end(), 0)]

    def describe(self) -> str:
        return self.path
