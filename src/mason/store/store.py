"""``Store``: a persistent dict that survives crashes, concurrency and more than one machine.

shelve is the standard library's persistent dict; it corrupts under concurrent writers, depends
on whichever dbm the platform has, and loads whatever its file holds.  A ``Store`` is the same
``MutableMapping`` with none of that:

* values are pickled with mason and loaded under the store's policy (safe by default);
* the embedded backend is SQLite in WAL mode (``Store("data.db")``); the shared one is a Redis
  hash (``Store("redis://host:6379/0")``), for several machines on one store;
* many threads and processes may read and write at once, ``with store.transaction():``
  commits all or nothing, and a process killed mid-write loses only what it had not committed.

Keys are ``str``, ``bytes``, ``int`` and tuples of those (see ``mason.store._keys``).
"""

from __future__ import annotations

import os
from collections.abc import ItemsView, Iterable, KeysView, Mapping, MutableMapping, ValuesView
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import UnpicklingError, UnsafeGlobalError
from ..limits import Limits
from ..policy import Policy
from ._keys import decode_key, encode_key
from ._values import Codec, make_policy
from .errors import StoreError

__all__ = ["Store"]

_MISSING = object()
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _note(exc: BaseException, key, where: str) -> None:
    # Python 3.11+: say which key failed without changing the exception users catch.
    if hasattr(exc, "add_note"):
        exc.add_note(f"(loading the value of key {key!r} from the store {where}; a Store takes "
                     "the same allow= / policy= / trusted= as mason.loads)")


class Store(MutableMapping):
    """A persistent mapping of keys to pickled values, safe to load and safe to share.

    ``location``: a file path (SQLite, the embedded default) or a ``redis://host:port/db``
    URL (also ``rediss://`` and ``unix://``).

    Loading: ``allow``, ``preset``, ``policy``, ``trusted`` and ``limits`` as for
    ``mason.loads``; by default only plain data loads, and a value naming anything else raises
    ``mason.UnsafeGlobalError`` without running it.

    ``name``: which store in the file or server (one file or Redis database may hold several).
    ``timeout``: seconds to wait for other writers before ``StoreBusyError``.

    SQLite only: ``synchronous`` ("NORMAL": a killed process loses nothing committed, a power
    loss may lose the last commits; "FULL": fsync on every commit), and ``allow_network_fs``
    (a file on NFS / SMB is refused unless this is true: SQLite's locking is unreliable there).

    Redis only: ``lock_ttl``, how long a transaction's lock outlives a client that died
    holding it (renewed while the transaction uses the store).
    """

    def __init__(self, location, *, allow: Iterable[str] | None = None, preset=None,
                 policy: Policy | None = None, trusted: bool = False,
                 limits: Limits | None = None, name: str = "default", timeout: float = 60.0,
                 synchronous: str | None = None, allow_network_fs: bool | None = None,
                 lock_ttl: float | None = None):
        self._codec = Codec(make_policy(allow, preset, policy, trusted), limits)
        if isinstance(location, os.PathLike):
            location = os.fspath(location)
        if isinstance(location, bytes):
            location = os.fsdecode(location)
        if not isinstance(location, str):
            raise TypeError(f"Store location must be a path or a redis:// URL, not "
                            f"{type(location).__name__}")
        self.location = location
        if location.startswith(_REDIS_SCHEMES):
            if synchronous is not None or allow_network_fs is not None:
                raise TypeError("synchronous= and allow_network_fs= apply to SQLite stores; a "
                                "Redis store's durability is the server's configuration")
            from ._redis import RedisBackend

            self._backend = RedisBackend(location, name=name, timeout=timeout,
                                         lock_ttl=30.0 if lock_ttl is None else lock_ttl)
        else:
            if lock_ttl is not None:
                raise TypeError("lock_ttl= applies to Redis stores")
            from ._sqlite import SQLiteBackend

            self._backend = SQLiteBackend(location, name=name, timeout=timeout,
                                          synchronous=synchronous or "NORMAL",
                                          allow_network_fs=bool(allow_network_fs))
        # Bound once: a put is short enough that two attribute lookups show.
        self._pack = self._codec.pack
        self._set = self._backend.set

    # -- the mapping ---------------------------------------------------------------------------

    def __getitem__(self, key):
        found = self._backend.get(encode_key(key))
        if found is None:
            raise KeyError(key)
        try:
            return self._codec.load(found[0], found[1])
        except UnpicklingError as exc:
            _note(exc, key, self._backend.describe())
            raise

    def get(self, key, default=None):
        try:
            kb = encode_key(key)
        except TypeError:
            return default
        found = self._backend.get(kb)
        if found is None:
            return default
        try:
            return self._codec.load(found[0], found[1])
        except UnpicklingError as exc:
            _note(exc, key, self._backend.describe())
            raise

    def __setitem__(self, key, value) -> None:
        # A str key inline (encode_key's first case): this is the path of every put.
        kb = b"s" + key.encode("utf-8", "surrogatepass") if key.__class__ is str \
            else encode_key(key)
        data, buffers = self._pack(value)
        self._set(kb, data, buffers)

    def __delitem__(self, key) -> None:
        if not self._backend.delete(encode_key(key)):
            raise KeyError(key)

    def __contains__(self, key) -> bool:
        try:
            kb = encode_key(key)
        except TypeError:
            return False  # a key the store cannot hold is not in it
        return self._backend.contains(kb)

    def __len__(self) -> int:
        return self._backend.count()

    def __iter__(self) -> Iterator:
        for kb in self._backend.iter_keys():
            yield decode_key(kb)

    def keys(self) -> KeysView:
        return KeysView(self)

    def values(self) -> ValuesView:
        return _Values(self)

    def items(self) -> ItemsView:
        return _Items(self)

    def _iter_items(self):
        load = self._codec.load
        for kb, data, buffers in self._backend.iter_items():
            key = decode_key(kb)
            try:
                value = load(data, buffers)
            except UnpicklingError as exc:
                _note(exc, key, self._backend.describe())
                raise
            yield key, value

    def pop(self, key, default=_MISSING):
        """Remove ``key`` and return its value; the value is loaded (under the policy) before
        anything is removed, so a refused value stays in the store."""
        kb = encode_key(key)
        with self._backend.transaction():
            found = self._backend.get(kb)
            if found is None:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            try:
                value = self._codec.load(found[0], found[1])
            except UnpicklingError as exc:
                _note(exc, key, self._backend.describe())
                raise
            self._backend.delete(kb)
        return value

    def popitem(self):
        """Remove and return some ``(key, value)`` (the greatest key in SQLite's order; any key
        on Redis).  ``KeyError`` when the store is empty."""
        with self._backend.transaction():
            kb = self._backend.last_key()
            if kb is None:
                raise KeyError("popitem(): the store is empty")
            key = decode_key(kb)
            found = self._backend.get(kb)
            try:
                value = self._codec.load(found[0], found[1])
            except UnpicklingError as exc:
                _note(exc, key, self._backend.describe())
                raise
            self._backend.delete(kb)
        return key, value

    def setdefault(self, key, default=None):
        kb = encode_key(key)
        with self._backend.transaction():
            found = self._backend.get(kb)
            if found is not None:
                try:
                    return self._codec.load(found[0], found[1])
                except UnpicklingError as exc:
                    _note(exc, key, self._backend.describe())
                    raise
            data, buffers = self._codec.pack(default)
            self._backend.set(kb, data, buffers)
        return default

    def update(self, other=(), /, **kwargs) -> None:
        """As ``dict.update``, in one transaction: every value is pickled first, then all are
        written at once (a value that cannot be pickled writes nothing)."""
        if isinstance(other, Mapping):
            pairs = list(other.items())
        elif hasattr(other, "keys"):
            pairs = [(key, other[key]) for key in other.keys()]
        else:
            pairs = list(other)
        pairs.extend(kwargs.items())
        pack = self._codec.pack
        items = []
        for key, value in pairs:
            data, buffers = pack(value)
            items.append((encode_key(key), data, buffers))
        if items:
            self._backend.set_many(items)

    def clear(self) -> None:
        self._backend.clear()

    # -- beyond dict ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self):
        """All the block's writes commit together when it ends, or none if it raises.

        Inside, this thread's reads see its own writes, and other writers wait (readers see
        the store as it was before).  Nested blocks are savepoints: an inner block that raises
        undoes only its own writes.  A transaction belongs to the thread that opened it, and
        also makes a batch of writes much faster than one commit per write.
        """
        with self._backend.transaction():
            yield self

    def sync(self) -> None:
        """Nothing to do: every write is committed when it returns (kept for shelve code)."""

    def close(self) -> None:
        """Close the store's connections; using it afterwards raises ``ValueError``."""
        self._backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = self._backend
        return f"<mason.Store {backend.kind} {backend.describe()!r} name={backend.name!r}>"

    def __reduce__(self):
        raise TypeError("a Store cannot be pickled: pass its location to the other process and "
                        "open it there (every process opens its own connection)")

    # -- import ---------------------------------------------------------------------------------

    @classmethod
    def from_shelve(cls, path, location=None, *, keyencoding: str = "utf-8",
                    **options: Any) -> Store:
        """Import the shelve file ``path`` into a store and return the store.

        ``location`` defaults to ``path + ".sqlite"``; ``options`` are ``Store``'s.  The shelf's
        values are loaded under the store's policy, never with pickle: if any is refused,
        nothing is imported, and the error lists every refused key and the ``allow=`` that
        would admit them.  The import is one transaction.
        """
        import dbm

        path = os.fsdecode(os.fspath(path))
        kind = dbm.whichdb(path)
        if kind is None:
            raise StoreError(f"{path} is not a shelve file: no dbm database found there (a "
                             "shelf named 'data' is the files data.db, data.dat/.dir, or data)")
        if kind == "":
            raise StoreError(f"{path} is a database of a kind the dbm module does not know")
        try:
            db = dbm.open(path, "r")
        except ImportError as exc:
            raise StoreError(f"{path} is a {kind} database, and this Python has no {kind} "
                             f"module to read it with ({exc})") from exc
        except dbm.error as exc:  # a tuple: dbm's own error and OSError
            raise StoreError(f"cannot open the shelf {path}: {exc}") from exc
        store = None
        try:
            store = cls(location if location is not None else path + ".sqlite", **options)
            refused: dict[str, list[str]] = {}
            broken: list[str] = []
            with store.transaction():
                for raw_key in db.keys():
                    key = raw_key.decode(keyencoding)
                    try:
                        value = store._codec.load(db[raw_key])
                    except UnsafeGlobalError as exc:
                        refused[key] = exc.names
                        continue
                    except UnpicklingError as exc:
                        broken.append(f"  {key!r}: {exc}")
                        continue
                    if not refused and not broken:
                        store[key] = value
                if refused or broken:
                    raise _import_error(path, refused, broken)
        except BaseException:
            if store is not None:
                store.close()
            raise
        finally:
            db.close()
        return store


def _import_error(path: str, refused: dict[str, list[str]], broken: list[str]):
    lines = [f"nothing was imported from the shelf {path}:"]
    names = sorted({name for found in refused.values() for name in found})
    if refused:
        lines.append(f"{len(refused)} value(s) name globals the policy does not allow:")
        lines.extend(f"  {key!r}: {', '.join(found)}" for key, found in refused.items())
    if broken:
        lines.append(f"{len(broken)} value(s) are not valid pickles:")
        lines.extend(broken)
    if names:
        lines.append("Loading them runs their code. If you trust this shelf, import it with\n"
                     f"  Store.from_shelve({path!r}, allow={names!r})\nor trusted=True.")
    message = "\n".join(lines)
    if broken:
        return StoreError(message)
    return UnsafeGlobalError(message, [(name, None) for name in names])


class _Items(ItemsView):
    """``store.items()``: one query per page of rows, not one per key."""

    def __iter__(self):
        return self._mapping._iter_items()


class _Values(ValuesView):
    def __iter__(self):
        for _, value in self._mapping._iter_items():
            yield value
