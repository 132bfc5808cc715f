"""Persistent, concurrent, safe-by-default mapping of keys to pickled values.

``Store(path)`` keeps the mapping in an SQLite file (WAL mode); ``Store("redis://...")`` in a
Redis hash shared by several machines.  See ``mason.store.store.Store`` and docs/store.md.
"""

from .errors import NetworkFilesystemError, StoreBusyError, StoreError, TransactionLostError
from .store import Store

__all__ = ["NetworkFilesystemError", "Store", "StoreBusyError", "StoreError",
           "TransactionLostError"]
