"""The store's exceptions, under ``mason.MasonError``.

    MasonError
    └── StoreError                 a store could not be opened or used as asked
        ├── NetworkFilesystemError    the SQLite file is on NFS / SMB, whose locks are unreliable
        ├── StoreBusyError            (also TimeoutError) other writers held the store too long
        └── TransactionLostError      a Redis transaction's lock expired before it committed

Values that the store's policy refuses raise the loader's own errors
(``mason.UnsafeGlobalError`` and the rest of the ``UnpicklingError`` family), so the same
``except`` works for ``mason.loads`` and for ``store[key]``.
"""

from __future__ import annotations

from ..errors import MasonError

__all__ = ["StoreError", "NetworkFilesystemError", "StoreBusyError", "TransactionLostError"]


class StoreError(MasonError):
    """A store could not be opened, or an operation on it could not be done."""


class NetworkFilesystemError(StoreError):
    """The store's file is on a network file system, where SQLite's locking is unreliable.

    ``path`` is the file, ``fstype`` the file system type found (``nfs4``, ``cifs``...).
    """

    def __init__(self, message: str, path: str = "", fstype: str = ""):
        super().__init__(message)
        self.path = path
        self.fstype = fstype


class StoreBusyError(StoreError, TimeoutError):
    """Other writers kept the store locked for longer than the store's ``timeout``."""


class TransactionLostError(StoreError):
    """A Redis transaction's lock expired (``lock_ttl``) before it committed: nothing of it
    was written, because another writer may have changed what it read."""
