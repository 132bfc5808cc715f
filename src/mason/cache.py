"""Persistent memoization: ``Memory(location).cache`` and ``@mason.cache``.

::

    memory = mason.Memory("~/.cache/myproject", max_size="2 GB", max_age=7 * 86400)

    @memory.cache(ignore=["verbose"])
    def features(table, window=5, verbose=False): ...

    @mason.cache                      # the user's cache directory (see default_location)
    def fit(x, y): ...

A call of a cached function looks its result up on disk, under a key made of:

* the function's identity (module and qualified name) and, unless ``track_code=False``,
  what its code does: the digest of its bytecode, constants, names and nested code (not line
  numbers, comments, docstrings or formatting; see ``mason.hashing.code_digest``), of the
  functions and classes of the same module that it reads as globals (transitively, so
  editing a helper invalidates its callers), and of its closure;
* the arguments, bound to the signature (``f(1, b=2)`` and ``f(1, 2)`` are one call, and
  defaults count), without those named in ``ignore``, hashed canonically by
  ``mason.hash`` (``key=`` replaces them by what a function of the same arguments returns).

On a hit, the stored result is loaded and returned; on a miss, the function runs and its
result is stored.  Results of another code version stay on disk until evicted; they are never
returned for the new code.

Safety: entries are signed, and loaded only if they verify
----------------------------------------------------------
A cache directory is a place where anyone who can write files could plant a pickle, and a
pickle runs code when loaded.  Safe-policy loading would refuse the classes that cached
results are made of, so mason authenticates instead: every entry is a mason container
(``mason.files``) signed with a per-user secret key, that is, an HMAC-SHA256 of its table,
which holds the SHA-256 of the pickle and of every buffer.  A load checks the signature, then
every part's digest, and only then unpickles (trusted: the bytes are known to be the user's
own); the entry must then name the call that asked for it (an entry copied from another
call's place is refused).  An entry that fails any check is a miss: the function runs, its
result replaces the entry, and a ``CacheWarning`` says so.

The key comes from, in order: ``Memory(key=...)``; the ``MASON_CACHE_KEY`` environment
variable (at least 16 bytes); the file ``$XDG_CONFIG_HOME/mason/cache.key`` (by default
``~/.config/mason/cache.key``, or ``$MASON_CACHE_KEY_FILE``), which is created on first use
with 32 random bytes and permissions 0600.  It is kept outside the cache directory, so write
access to the cache is not enough to forge an entry; a key file that others can read or write,
or that belongs to someone else, is refused.  Sharing a cache between users means sharing a
key (``key=``, or the variable).

Concurrency and crashes
-----------------------
An entry is one file, written under a temporary name in its directory and renamed into place
(``os.replace``, atomic on POSIX and Windows): a reader sees the old entry, the new one, or
none, never half of one.  Several processes that miss the same call at once all compute it,
and the last rename wins; every version is complete and verified.  A process killed while
writing leaves only its temporary file (ignored, and removed by ``clear`` and eviction once
an hour old).  Entries are not fsynced: after a power loss an entry may be empty or torn,
which its digests detect, so it is recomputed rather than loaded wrong.

A process verifies an entry once, when it first loads it, and remembers it: a small entry
as its value pickled again, in memory; a large one by keeping the file open (see
``_Verified``).  Loading it again checks that the path still names that file, and skips the
verification: repeated hits cost a ``stat`` and an unpickle.

Size and age
------------
``max_age`` (seconds or a ``timedelta``): older entries are misses, and eviction deletes
them.  ``max_size`` (bytes, or "500 MB"): when a store takes the cache over it, the least
recently used entries are deleted until it holds at most 90% of it.  "Used" is the file's
modification time, which a hit refreshes (at most once a second per entry).

Values
------
Results are written by ``mason.files`` (protocol 5, so functions and classes from
``__main__`` work, with every large buffer, numpy arrays first, out of band and 64-byte
aligned in the same file).  Entries of 1 MiB and more are memory-mapped when loaded
(``mmap=True``, the default): their arrays are read-only views of the file, not copies;
``Memory(mmap=False)`` reads them into writable memory instead.  ``_write_entry`` and
``_read_entry`` are the two places that know what an entry file is.
"""

from __future__ import annotations

import _pickle
import datetime
import functools
import hashlib
import inspect
import io
import os
import re
import secrets
import stat
import sys
import threading
import time
import types
import warnings
import weakref
from typing import Any, Callable, Iterable

from . import files, hashing
from .errors import MasonError, SignatureError
from .pickler import Pickler

__all__ = ["Memory", "CachedFunction", "cache", "CacheWarning", "CacheKeyError",
           "default_location", "key_file_path"]

# --------------------------------------------------------------------------------------------
# Constants of the format

_ENTRY_VERSION = 1
_OOB_MIN = 16 * 1024             # buffers at least this large go out of band
_MMAP_MIN = 1 << 20              # entries at least this large are memory-mapped
_SMALL = 64 * 1024               # entries up to this size are remembered in memory
_SUFFIX = ".mason"
_TMP = ((".mason-", ".tmp"),)    # how mason.files names a file it is writing
_STALE_TMP = 3600.0              # a temporary file this old belongs to a dead writer
_TOUCH_EVERY = 1.0               # a hit refreshes the entry's mtime at most this often
_RESCAN_EVERY = 60.0             # the size estimate is redone from disk at least this often
_EVICT_TO = 0.9                  # eviction stops at this fraction of max_size
_MISS = object()
_AGAIN = object()
_MISSING = object()
_TAG = sys.implementation.cache_tag or "python"

# An entry is opened without following a symbolic link and without blocking (a FIFO planted
# where an entry should be must not hang the caller); then it must be a regular file.
_open_flags = (os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
_create_flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))
_blake2b = hashlib.blake2b
_sha256 = hashlib.sha256


class CacheWarning(UserWarning):
    """A cache entry could not be stored or was not loaded (the call still returns its
    result): it failed verification, could not be pickled, or the disk refused it."""


class CacheKeyError(MasonError):
    """The per-user key of the cache is missing, unreadable or unsafe to use."""


# --------------------------------------------------------------------------------------------
# Where things live

def default_location() -> str:
    """The directory ``@mason.cache`` uses: ``$MASON_CACHE_DIR``, else the user's cache
    directory (``$XDG_CACHE_HOME/mason`` or ``~/.cache/mason``; ``~/Library/Caches/mason``
    on macOS; ``%LOCALAPPDATA%\\mason\\cache`` on Windows)."""
    env = os.environ.get("MASON_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "mason", "cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/mason")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "mason")


def key_file_path() -> str:
    """Where the per-user cache key is kept: ``$MASON_CACHE_KEY_FILE``, else
    ``$XDG_CONFIG_HOME/mason/cache.key`` (``~/.config/mason/cache.key``; on Windows
    ``%APPDATA%\\mason\\cache.key``)."""
    env = os.environ.get("MASON_CACHE_KEY_FILE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or os.path.expanduser("~\\AppData\\Roaming")
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "mason", "cache.key")


def _key_bytes(key, where: str) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"a cache key is bytes or str, not {type(key).__name__}")
    key = bytes(key)
    if len(key) < 16:
        raise CacheKeyError(f"the cache key from {where} is {len(key)} bytes long; it must "
                            "be at least 16 (use e.g. secrets.token_hex(32))")
    return key


def _user_key() -> tuple[bytes, str]:
    """The per-user key and where it came from: the environment, or the key file (created
    on first use)."""
    env = os.environ.get("MASON_CACHE_KEY")
    if env:
        return _key_bytes(env, "MASON_CACHE_KEY"), "MASON_CACHE_KEY"
    path = key_file_path()
    for _ in range(50):
        try:
            return _read_key_file(path), path
        except FileNotFoundError:
            pass
        try:
            _create_key_file(path)
        except FileExistsError:
            time.sleep(0.01)   # another process created it at the same moment: read theirs
    return _read_key_file(path), path


def _read_key_file(path: str) -> bytes:
    fd = os.open(path, _open_flags)
    try:
        st = os.fstat(fd)
        if os.name == "posix":
            if st.st_uid != os.getuid():
                raise CacheKeyError(
                    f"the cache key file {path} belongs to user id {st.st_uid}, not to you "
                    f"({os.getuid()}): whoever owns it can forge cache entries. Remove it "
                    "(a new one is made), or set MASON_CACHE_KEY")
            if st.st_mode & 0o077:
                raise CacheKeyError(
                    f"the cache key file {path} is readable or writable by others (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}): anyone who can read it can forge "
                    f"cache entries. Fix it with: chmod 600 {path}")
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise CacheKeyError(f"the cache key file {path} does not hold a hex key; remove it "
                            "and a new one is made") from None
    return _key_bytes(key, path)


def _create_key_file(path: str) -> None:
    """Write a new random key, atomically: it appears whole, or not at all (link() refuses
    to replace a key another process made in the meantime)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".cache.key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, _create_flags, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except (AttributeError, NotImplementedError, PermissionError):  # pragma: no cover
        if os.path.exists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# Sizes and ages given as text or timedelta

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3,
          "tib": 1024 ** 4}


def _parse_size(size) -> int | None:
    if size is None:
        return None
    if isinstance(size, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", size)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"max_size: cannot read {size!r} as a size (e.g. 500MB, 2 GiB)")
        size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    size = int(size)
    if size <= 0:
        raise ValueError("max_size must be positive")
    return size


def _parse_age(age) -> float | None:
    if age is None:
        return None
    if isinstance(age, datetime.timedelta):
        age = age.total_seconds()
    age = float(age)
    if age <= 0:
        raise ValueError("max_age must be positive")
    return age


# --------------------------------------------------------------------------------------------
# Values in and out of an entry: the one place that knows what an entry file is.
#
# An entry is a mason container (mason.files): the pickle of ``(meta, value)`` with the
# value's large buffers beside it, 64-byte aligned, signed with the cache key (an HMAC-SHA256
# of the container's table, which holds the SHA-256 of the pickle and of every buffer).
# ``meta`` says which call the entry answers (``key``) and when it was made (``created``).

def _write_entry(path: str, secret: bytes, value, meta: dict) -> None:
    """Write the entry at ``path`` atomically (the container is written beside it and
    renamed into place).  Raises what pickling raises."""
    files.dump((meta, value), path, key=secret)


def _read_entry(fd: int, size: int, secret: bytes, key: str, use_mmap: bool):
    """``(meta, value)`` of the open entry ``fd``, verified: the container's signature and
    every part's digest are checked before anything is unpickled, and the meta must name the
    call asked for.  Raises ``_Invalid`` otherwise."""
    try:
        loaded = files.load_container(fd, size, mmap=use_mmap and size >= _MMAP_MIN,
                                      verify=True, key=secret, options={})
    except SignatureError as exc:
        raise _Invalid(f"its signature does not verify with this user's cache key (it was "
                       f"written by someone else, or altered): {exc}") from None
    except (MasonError, OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise _Invalid(f"it is damaged, or not a mason cache entry ({type(exc).__name__}: "
                       f"{exc})") from None
    except Exception as exc:  # noqa: BLE001 - verified, but it no longer loads here
        raise _Invalid(f"it no longer loads ({type(exc).__name__}: {exc})") from None
    return _checked(loaded, key)


def _reload_entry(fd: int, size: int, key: str, use_mmap: bool):
    """``(meta, value)`` of an entry this process verified before and kept open (see
    ``_Verified``): loaded again without checking it again."""
    try:
        loaded = files.load_container(fd, size, mmap=use_mmap and size >= _MMAP_MIN,
                                      verify=False, key=None, options={"trusted": True})
    except Exception as exc:  # noqa: BLE001
        raise _Invalid(f"it no longer loads ({type(exc).__name__}: {exc})") from None
    return _checked(loaded, key)


def _checked(loaded, key: str):
    if not (type(loaded) is tuple and len(loaded) == 2 and type(loaded[0]) is dict
            and loaded[0].get("v") == _ENTRY_VERSION):
        raise _Invalid("it is not a mason cache entry of this version")
    if loaded[0].get("key") != key:
        raise _Invalid("it holds the entry of another call (it was moved or copied here)")
    return loaded


def _pack_value(value) -> tuple[bytes, list[bytes]]:
    """The protocol 5 pickle of ``value`` and its out-of-band buffers, as bytes: what a small
    verified entry is remembered as."""
    buffers: list[bytes] = []

    def take(buf):
        try:
            view = buf.raw()
        except BufferError:   # not contiguous: in band
            return True
        if view.nbytes < _OOB_MIN:
            return True
        buffers.append(bytes(view))
        return False

    file = io.BytesIO()
    Pickler(file, 5, buffer_callback=take).dump(value)
    return file.getvalue(), buffers


class _Invalid(Exception):
    """An entry that must not be loaded: altered, foreign, truncated, or for another call."""


class _Verified:
    """An entry this process has verified, remembered so that loading it again costs no
    second verification.  Two kinds:

    * small entries (``pickle`` set): the value, pickled again from what was verified and
      kept in memory, valid while the file's inode, size, mtime and ctime are unchanged.
      Reloading uses only these bytes, so even a file changed in a way this check missed
      could not be loaded unverified;
    * large entries (``fd`` set): the file kept open.  An open file's inode cannot be
      reused, so while ``stat(path)`` gives that device and inode, the path still names the
      very file that was verified; entries are written by their owner only (mode 0600) and
      never in place, so its bytes are those that were checked (and its mtime and ctime say
      so).  Each load reads or maps it again, without checking it again.
    """

    __slots__ = ("sig", "meta", "pickle", "buffers", "fd", "size")

    def __init__(self, sig, meta, pickle=None, buffers=(), fd=None, size=0):
        self.sig = sig
        self.meta = meta
        self.pickle = pickle
        self.buffers = buffers
        self.fd = fd
        self.size = size

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _small_sig(st) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _large_sig(st) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_MAX_OPEN = 32            # large verified entries kept open, per Memory
_MAX_OPEN_BYTES = 4 << 30  # ... holding at most this much disk (cleared files stay until closed)
_MAX_SMALL = 2048          # small verified entries kept in memory, per Memory


# --------------------------------------------------------------------------------------------
# What a function is: identity and code

def _unwrap(obj):
    for _ in range(100):
        if isinstance(obj, CachedFunction):
            obj = obj.func
        elif isinstance(obj, functools.partial):
            obj = obj.func
        elif isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        elif isinstance(obj, property):
            return obj.fget
        elif isinstance(obj, types.FunctionType) or not hasattr(obj, "__wrapped__"):
            return obj
        else:
            obj = obj.__wrapped__
    return obj


def _function_name(func) -> tuple[str, str]:
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) \
        or type(func).__qualname__
    if module == "__main__":
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if main:
            module = f"__main__:{os.path.abspath(main)}"
    return module, qualname


class _Tracker:
    """The digest of a function's code and of the same module's functions and classes it
    reads as globals, transitively; and the globals to watch for a change."""

    def __init__(self):
        self.watch: list[tuple[dict, str, Any]] = []
        self.seen: dict[int, str] = {}

    def function(self, func: types.FunctionType) -> bytes:
        self.seen[id(func)] = func.__qualname__
        parts = [hashing.code_digest(func.__code__)]
        module = func.__module__
        glb = func.__globals__
        for name in hashing.global_names(func.__code__):
            value = glb.get(name, _MISSING)
            if value is _MISSING:
                continue   # a builtin, or not defined (yet)
            target = _unwrap(value)
            if getattr(target, "__module__", None) != module:
                continue   # other modules are not tracked
            if isinstance(target, types.FunctionType):
                self.watch.append((glb, name, value))
                parts.append(b"function " + name.encode() + b" " + self._function(target))
            elif isinstance(target, type):
                self.watch.append((glb, name, value))
                parts.append(b"class " + name.encode() + b" " + self.cls(target))
        for i, cell in enumerate(func.__closure__ or ()):
            parts.append(b"cell %d " % i + self.cell(cell))
        return _blake2b(b"\n".join(parts), digest_size=16).digest()

    def _function(self, func) -> bytes:
        if id(func) in self.seen:
            return b"(recursive " + self.seen[id(func)].encode() + b")"
        return self.function(func)

    def cls(self, cls: type) -> bytes:
        if id(cls) in self.seen:
            return b"(recursive " + cls.__qualname__.encode() + b")"
        self.seen[id(cls)] = cls.__qualname__
        parts = [cls.__qualname__.encode()]
        for name in sorted(vars(cls)):
            target = _unwrap(vars(cls)[name])
            if isinstance(target, types.FunctionType):
                parts.append(name.encode() + b" " + self._function(target))
        return _blake2b(b"\n".join(parts), digest_size=16).digest()

    def cell(self, cell) -> bytes:
        try:
            value = cell.cell_contents
        except ValueError:
            return b"empty"
        target = _unwrap(value)
        if isinstance(target, types.FunctionType):
            return self._function(target)
        if isinstance(target, type):
            return self.cls(target)
        try:
            return hashing.digest(value)
        except hashing.HashError:
            # A closure over something unhashable (a logger, a connection): its type stands
            # for it.  Changing what it holds later is not noticed.
            return b"type " + type(value).__qualname__.encode()


class _Identity:
    """A function's identity digest, remembered with what it was computed from."""

    __slots__ = ("code", "watch", "digest")

    def __init__(self, code, watch, digest):
        self.code = code
        self.watch = watch
        self.digest = digest


def _identity(func, track_code: bool) -> _Identity:
    module, qualname = _function_name(func)
    parts = [b"mason cache 1", _TAG.encode(), module.encode(), qualname.encode()]
    code = getattr(func, "__code__", None)
    watch: list = []
    if not track_code:
        parts.append(b"code not tracked")
    elif isinstance(func, types.FunctionType):
        tracker = _Tracker()
        parts.append(tracker.function(func))
        watch = tracker.watch
    else:
        # A callable object (a partial, an instance with __call__): its value stands for its
        # code.
        parts.append(hashing.digest(func))
    return _Identity(code, tuple(watch), _blake2b(b"\n".join(parts), digest_size=16).digest())


def _dir_name(module: str, qualname: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{module.rpartition(':')[0] or module}."
                      f"{qualname}")[:80].strip(".") or "function"
    tag = _blake2b(f"{module}\0{qualname}".encode("utf-8", "surrogatepass"),
                   digest_size=5).hexdigest()
    return f"{readable}-{tag}"


# --------------------------------------------------------------------------------------------
# Arguments

class _Binder:
    """Turns ``(args, kwargs)`` into the tuple of the function's parameters, in order, with
    defaults applied and ignored parameters left out, so that every way of spelling one call
    gives the same tuple."""

    def __init__(self, func, ignore: Iterable[str]):
        try:
            self.signature = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None
        ignore = list(ignore or ())
        params = list(self.signature.parameters.values()) if self.signature else []
        names = [p.name for p in params]
        unknown = [name for name in ignore if name not in names]
        if unknown:
            raise ValueError(f"ignore={ignore!r}: {', '.join(map(repr, unknown))} "
                             f"{'is' if len(unknown) == 1 else 'are'} not a parameter of "
                             f"{getattr(func, '__qualname__', func)!r} (its parameters: "
                             f"{', '.join(names) or 'none'})")
        self.names = names
        self.ignored = tuple(ignore)
        self.keep = tuple(i for i, name in enumerate(names) if name not in ignore)
        self.all_kept = len(self.keep) == len(names)
        # The fast path: only positional-or-keyword parameters, called positionally.
        simple = bool(params) and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self.n = len(params) if simple else -1
        defaults = [p.default for p in params if p.default is not p.empty] if simple else []
        self.defaults = tuple(defaults)
        self.first_default = len(params) - len(defaults)

    def __call__(self, args: tuple, kwargs: dict) -> tuple:
        n = len(args)
        if not kwargs and self.first_default <= n <= self.n:
            values = args if n == self.n else args + self.defaults[n - self.first_default:]
        elif self.signature is None:
            return (args, kwargs)
        else:
            bound = self.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            values = tuple(arguments[name] for name in self.names)
        if self.all_kept:
            return values
        return tuple(values[i] for i in self.keep)


# --------------------------------------------------------------------------------------------
# Memory

class Memory:
    """A directory of cached results: ``memory.cache`` decorates the functions to memoize.

    ``location``: the directory (created if needed); ``None`` means ``default_location()``.
    ``track_code``: when true (the default), a change to what a cached function's code does
    (or a helper's of the same module) makes its old entries misses; false: entries depend on
    the function's name and arguments only.
    ``max_size``: bytes (int) or text ("500 MB", "2 GiB"); least recently used entries go
    first.  ``max_age``: seconds or a ``timedelta``.
    ``mmap``: load entries of 1 MiB and more by memory-mapping them (default true): their
    arrays are read-only views of the file; false reads them into writable memory.
    ``key``: the secret that authenticates entries (bytes or str, 16 bytes or more); by
    default the per-user key (see the module's documentation).
    """

    def __init__(self, location=None, *, track_code: bool = True, max_size=None,
                 max_age=None, mmap: bool = True, key=None):
        self.location = os.path.abspath(os.path.expanduser(
            os.fspath(location) if location is not None else default_location()))
        self._default_location = location is None
        self.track_code = bool(track_code)
        self.max_size = _parse_size(max_size)
        self.max_age = _parse_age(max_age)
        self.mmap = bool(mmap)
        self._given_key = None if key is None else _key_bytes(key, "key=")
        self._key = None
        self._key_source = "key=" if key is not None else None
        self._lock = threading.Lock()
        self._size_estimate: int | None = None
        self._scanned_at = 0.0
        self._ready = False
        self._touched: dict[str, float] = {}
        self._recent: dict[str, _Verified] = {}
        self._open_paths: list[str] = []
        self._open_bytes = 0
        weakref.finalize(self, _close_all, self._recent)

    def __getstate__(self) -> dict:
        # What makes the Memory, not what it remembers in this process (nor its lock).
        return {"location": self.location, "track_code": self.track_code,
                "max_size": self.max_size, "max_age": self.max_age, "mmap": self.mmap,
                "key": self._given_key, "default": self._default_location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"], track_code=state["track_code"],
                      max_size=state["max_size"], max_age=state["max_age"],
                      mmap=state["mmap"], key=state["key"])
        self._default_location = state["default"]

    def __repr__(self) -> str:
        limits = []
        if self.max_size:
            limits.append(f"max_size={self.max_size}")
        if self.max_age:
            limits.append(f"max_age={self.max_age:g}")
        if not self.track_code:
            limits.append("track_code=False")
        return f"Memory({self.location!r}{''.join(', ' + x for x in limits)})"

    # -- decorating -------------------------------------------------------------------------

    def cache(self, func: Callable | None = None, *, ignore: Iterable[str] | None = None,
              key: Callable | None = None, track_code: bool | None = None):
        """Memoize ``func`` in this directory.  ``@memory.cache``, or with options:
        ``@memory.cache(ignore=["verbose"], key=None, track_code=None)``.

        ``ignore``: names of parameters that do not change the result (left out of the key).
        ``key``: a function called with the same arguments, whose result (hashed with
        ``mason.hash``) replaces the arguments in the key.
        ``track_code``: this function's own choice (default: the Memory's).
        """
        if func is None:
            return lambda f: self.cache(f, ignore=ignore, key=key, track_code=track_code)
        return CachedFunction(func, self, ignore=ignore, key=key, track_code=track_code)

    # -- the key and the files --------------------------------------------------------------

    def _secret(self) -> bytes:
        secret = self._key
        if secret is None:
            with self._lock:
                if self._key is None:
                    if self._given_key is not None:
                        secret = self._given_key
                    else:
                        secret, self._key_source = _user_key()
                    self._check_key_outside()
                    self._key = secret
                secret = self._key
        return secret

    def _check_key_outside(self) -> None:
        if self._key_source in (None, "key=", "MASON_CACHE_KEY"):
            return
        key_path = os.path.realpath(self._key_source)
        here = os.path.realpath(self.location)
        if os.path.commonpath([key_path, here]) == here:
            raise CacheKeyError(f"the cache key file {key_path} is inside the cache directory "
                                f"{here}: whoever can write the cache could replace it. Keep "
                                "it elsewhere (MASON_CACHE_KEY_FILE)")

    def _prepare(self) -> None:
        if self._ready:
            return
        os.makedirs(self.location, mode=0o700 if self._default_location else 0o777,
                    exist_ok=True)
        tag = os.path.join(self.location, "CACHEDIR.TAG")
        if not os.path.exists(tag):
            try:
                with open(tag + f".{os.getpid()}", "w", encoding="ascii") as f:
                    f.write("Signature: 8a477f597d28d172789f06886806bc55\n"
                            "# This directory holds cached results of mason.Memory.\n"
                            "# Backup tools that honour CACHEDIR.TAG skip it.\n")
                os.replace(tag + f".{os.getpid()}", tag)
            except OSError:
                pass
        self._ready = True

    def _load(self, path: str, key: str):
        """``(meta, value)`` of the entry at ``path``, or ``_MISS``."""
        known = self._recent.get(path)
        if known is not None:
            loaded = self._load_known(path, known, key)
            if loaded is not _AGAIN:
                return loaded
        try:
            fd = os.open(path, _open_flags)
        except (FileNotFoundError, NotADirectoryError):
            return _MISS
        except OSError as exc:   # a symbolic link, a file we may not read...
            self._warn(path, _Invalid(f"it cannot be opened ({exc.strerror})"))
            return _MISS
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Invalid("it is not a regular file")
            meta, value = _read_entry(fd, st.st_size, self._secret(), key, self.mmap)
            if st.st_size <= _SMALL:
                try:
                    data, buffers = _pack_value(value)
                except Exception:  # noqa: BLE001 - not remembered, still returned
                    pass
                else:
                    self._remember(path, _Verified(_small_sig(st), meta, data, buffers))
            else:
                self._remember(path, _Verified(_large_sig(st), meta, fd=os.dup(fd),
                                               size=st.st_size))
            if self._expired(meta):
                return _MISS
            self._touch(fd, path)
            return meta, value
        except _Invalid as exc:
            self._forget(path)
            self._warn(path, exc)
            return _MISS
        finally:
            os.close(fd)

    def _load_known(self, path: str, known: _Verified, key: str):
        """Load an entry verified before, if the file is still that one; ``_AGAIN`` if not."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._forget(path)
            return _MISS
        small = known.fd is None
        if (_small_sig(st) if small else _large_sig(st)) != known.sig or \
                known.meta.get("key") != key:
            self._forget(path)
            return _AGAIN
        meta = known.meta
        if self._expired(meta):
            return _MISS
        fd = None
        try:
            if small:
                try:
                    value = _pickle.loads(known.pickle,
                                          buffers=[bytearray(b) for b in known.buffers])
                except Exception as exc:  # noqa: BLE001
                    raise _Invalid(f"it no longer loads ({type(exc).__name__}: {exc})") \
                        from None
            else:
                # A descriptor of our own: another thread may close the remembered one (and
                # its number be reused for another file) while this one reads it.
                with self._lock:
                    if known.fd is None:
                        return _AGAIN
                    fd = os.dup(known.fd)
                meta, value = _reload_entry(fd, known.size, key, self.mmap)
            self._touch(fd, path)
            return meta, value
        except _Invalid as exc:
            self._forget(path)
            self._warn(path, exc)
            return _MISS
        finally:
            if fd is not None:
                os.close(fd)

    def _expired(self, meta: dict) -> bool:
        return self.max_age is not None and time.time() - meta["created"] > self.max_age

    def _remember(self, path: str, verified: _Verified) -> None:
        with self._lock:
            self._drop(path)
            if verified.fd is not None:
                self._open_bytes += verified.size
                self._open_paths.append(path)
                while len(self._open_paths) > _MAX_OPEN or \
                        self._open_bytes > _MAX_OPEN_BYTES and len(self._open_paths) > 1:
                    self._drop(self._open_paths[0])
            elif len(self._recent) >= _MAX_SMALL:
                for gone in [p for p, v in self._recent.items() if v.fd is None]:
                    del self._recent[gone]
            self._recent[path] = verified

    def _forget(self, path: str) -> None:
        with self._lock:
            self._drop(path)

    def _drop(self, path: str) -> None:
        verified = self._recent.pop(path, None)
        if verified is not None and verified.fd is not None:
            verified.close()
            self._open_bytes -= verified.size
            self._open_paths.remove(path)

    def _forget_all(self) -> None:
        """Close the remembered files (so that deleted entries free their disk space)."""
        with self._lock:
            for path in list(self._recent):
                self._drop(path)

    @staticmethod
    def _warn(path: str, exc: Exception) -> None:
        warnings.warn(CacheWarning(f"mason cache: not loading {path}: {exc}. Computing the "
                                   "result again; it replaces this entry."), stacklevel=5)

    def _touch(self, fd: int | None, path: str) -> None:
        """Mark the entry used now (its mtime), for least-recently-used eviction; at most
        once every _TOUCH_EVERY seconds per entry and process, as hits must stay cheap."""
        now = time.time()
        if now - self._touched.get(path, 0.0) < _TOUCH_EVERY:
            return
        if len(self._touched) > 4096:
            self._touched.clear()
        self._touched[path] = now
        try:
            st = os.fstat(fd) if fd is not None else os.stat(path)
            if st.st_mtime < now - _TOUCH_EVERY:
                if fd is not None and os.utime in os.supports_fd:
                    os.utime(fd)
                    st = os.fstat(fd)
                else:
                    os.utime(path)
                    st = os.stat(path)
                known = self._recent.get(path)
                if known is not None:
                    # Our own touch: what was verified is still the file's content.
                    known.sig = _small_sig(st) if known.fd is None else _large_sig(st)
        except OSError:
            pass   # a read-only cache still serves hits

    def _store(self, directory: str, path: str, value, meta: dict) -> None:
        self._prepare()
        secret = self._secret()
        for attempt in range(20):
            try:
                _write_entry(path, secret, value, meta)
                break
            except FileNotFoundError:
                # The function's first entry, or a clear() removed the empty directory (it
                # may do so again between makedirs and the write: retry).  Once the
                # temporary file is in it, the directory cannot be removed, so the rename
                # into place finds it.
                if attempt == 19:
                    raise
                os.makedirs(directory, exist_ok=True)
        if self.max_size is not None:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:   # evicted or cleared already
                return
            self._account(size, path)

    # -- size -------------------------------------------------------------------------------

    def _account(self, size: int, just_written: str) -> None:
        with self._lock:
            if self._size_estimate is None or \
                    time.monotonic() - self._scanned_at > _RESCAN_EVERY:
                self._size_estimate = None
            else:
                self._size_estimate += size
            estimate = self._size_estimate
        if estimate is None or estimate > self.max_size:
            self.reduce_size(keep=just_written)

    def _entries(self):
        """``(path, size, mtime)`` of every entry, and the paths of stale temporary files."""
        entries, stale = [], []
        now = time.time()
        try:
            tops = list(os.scandir(self.location))
        except FileNotFoundError:
            return entries, stale
        for top in tops:
            if not top.is_dir(follow_symlinks=False):
                continue
            try:
                items = list(os.scandir(top.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for item in items:
                name = item.name
                try:
                    if name.endswith(_SUFFIX):
                        st = item.stat(follow_symlinks=False)
                        entries.append((item.path, st.st_size, st.st_mtime))
                    elif _is_temporary(name):
                        st = item.stat(follow_symlinks=False)
                        if now - st.st_mtime > _STALE_TMP:
                            stale.append(item.path)
                except FileNotFoundError:
                    continue
        return entries, stale

    def reduce_size(self, *, keep: str | None = None) -> int:
        """Apply the limits now: delete expired entries, temporary files of dead writers,
        and, over ``max_size``, the least recently used entries down to 90% of it.
        Returns the number of entries deleted."""
        entries, stale = self._entries()
        for path in stale:
            _unlink(path)
        removed = 0
        now = time.time()
        if self.max_age is not None:
            fresh = []
            for entry in entries:
                # Last used longer ago than max_age: certainly created longer ago too.
                if now - entry[2] > self.max_age and entry[0] != keep:
                    removed += _unlink(entry[0])
                else:
                    fresh.append(entry)
            entries = fresh
        total = sum(size for _, size, _ in entries)
        if self.max_size is not None and total > self.max_size:
            target = self.max_size * _EVICT_TO
            for path, size, _ in sorted(entries, key=lambda e: e[2]):
                if total <= target:
                    break
                if path == keep:
                    continue
                if _unlink(path):
                    removed += 1
                total -= size
        with self._lock:
            self._size_estimate = total
            self._scanned_at = time.monotonic()
        return removed

    # -- management -------------------------------------------------------------------------

    def clear(self) -> int:
        """Delete every entry of every function in this directory (and temporary files of
        dead writers).  Returns the number of entries deleted.  Only mason's own files are
        touched."""
        self._forget_all()
        return _clear_dirs(self.location, None)

    def info(self) -> dict:
        """What the cache holds: ``{"location", "entries", "size", "functions": {name:
        {"entries", "size", "last_used"}}, "max_size", "max_age", "track_code", "key"}``
        (sizes in bytes, ``last_used`` a Unix time; ``key`` says where the key comes
        from: ``"key="``, ``"MASON_CACHE_KEY"`` or the key file's path)."""
        entries, _ = self._entries()
        functions: dict[str, dict] = {}
        for path, size, mtime in entries:
            name = os.path.basename(os.path.dirname(path))
            record = functions.setdefault(name, {"entries": 0, "size": 0, "last_used": 0.0})
            record["entries"] += 1
            record["size"] += size
            record["last_used"] = max(record["last_used"], mtime)
        if self._given_key is not None:
            key = "key="
        elif os.environ.get("MASON_CACHE_KEY"):
            key = "MASON_CACHE_KEY"
        else:
            key = key_file_path()
        return {"location": self.location, "entries": len(entries),
                "size": sum(size for _, size, _ in entries), "functions": functions,
                "max_size": self.max_size, "max_age": self.max_age,
                "track_code": self.track_code, "key": key}


def _is_temporary(name: str) -> bool:
    return any(name.startswith(head) and name.endswith(tail) for head, tail in _TMP)


def _close_all(recent: dict) -> None:
    for verified in list(recent.values()):
        verified.close()


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


def _clear_dirs(location: str, only: str | None) -> int:
    removed = 0
    now = time.time()
    try:
        tops = [only] if only else [e.path for e in os.scandir(location)
                                    if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    for top in tops:
        try:
            items = list(os.scandir(top))
        except (FileNotFoundError, NotADirectoryError):
            continue
        ours = False
        for item in items:
            if item.name.endswith(_SUFFIX):
                removed += _unlink(item.path)
                ours = True
            elif _is_temporary(item.name):
                ours = True
                try:
                    if now - item.stat(follow_symlinks=False).st_mtime > _STALE_TMP:
                        _unlink(item.path)
                except FileNotFoundError:
                    pass
        if ours:
            try:
                os.rmdir(top)   # only if empty: a writer's file in flight keeps it
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------------------------------
# The decorated function

class CachedFunction:
    """A function whose results are kept on disk.  Call it as the function itself.

    ``clear()`` deletes its entries (of every code version); ``check_call_in_cache(*args,
    **kwargs)`` says whether a call would be a hit; ``cache_key(*args, **kwargs)`` gives the
    key of a call; ``info()`` counts its entries.  ``func`` is the function.
    """

    def __init__(self, func: Callable, memory: Memory | None, *,
                 ignore: Iterable[str] | None = None, key: Callable | None = None,
                 track_code: bool | None = None):
        if not callable(func):
            raise TypeError(f"cache() decorates a function, not {type(func).__name__}")
        if key is not None and ignore:
            raise ValueError("key= replaces the arguments in the cache key: ignore= would "
                             "have no effect; give one or the other")
        if key is not None and not callable(key):
            raise TypeError("key= takes a function of the same arguments")
        self.func = func
        self._memory = memory
        self._track_code = track_code
        self._key_func = key
        self._binder = _Binder(func, ignore) if key is None else None
        self._ident: _Identity | None = None
        module, qualname = _function_name(func)
        self._name = f"{module}.{qualname}"
        self._dir_name = _dir_name(module, qualname)
        self._dir: str | None = None
        functools.update_wrapper(self, func)

    # Methods: bind like a function does.
    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return types.MethodType(self, instance)

    def __repr__(self) -> str:
        where = self._memory.location if self._memory is not None else "the user's cache"
        return f"<cached function {self._name} in {where}>"

    def __reduce__(self):
        # Decorated at module level, the wrapper is what the module holds under the
        # function's name: pickle it by that name, as pickle does a function.
        module = sys.modules.get(getattr(self, "__module__", None) or "")
        owner = module
        for part in (getattr(self, "__qualname__", "") or "").split("."):
            owner = getattr(owner, part, None)
        if owner is self:
            return self.__qualname__
        # Another wrapper of a function that its module holds wrapped: the function is
        # reachable (and picklable by reference) only through that wrapper.
        func = self.func
        if isinstance(owner, CachedFunction) and owner.func is func:
            func = owner
        return (_rebuild_cached, (func, self._memory, self._binder.ignored
                                  if self._binder else None, self._key_func,
                                  self._track_code))

    @property
    def memory(self) -> Memory:
        memory = self._memory
        if memory is None:
            memory = self._memory = _default_memory()
        return memory

    @property
    def directory(self) -> str:
        """The directory holding this function's entries."""
        directory = self._dir
        if directory is None:
            directory = self._dir = os.path.join(self.memory.location, self._dir_name)
        return directory

    def _identity(self) -> bytes:
        ident = self._ident
        func = self.func
        if ident is not None and getattr(func, "__code__", None) is ident.code:
            for glb, name, value in ident.watch:
                if glb.get(name, _MISSING) is not value:
                    break
            else:
                return ident.digest
        track = self.memory.track_code if self._track_code is None else self._track_code
        ident = self._ident = _identity(func, track)
        return ident.digest

    def cache_key(self, *args, **kwargs) -> str:
        """The key of this call: 32 hex digits, the name of its entry."""
        ident = self._identity()
        if self._key_func is not None:
            material = self._key_func(*args, **kwargs)
        else:
            material = self._binder(args, kwargs)
        return _blake2b(ident + hashing.encode(material), digest_size=16).hexdigest()

    def __call__(self, *args, **kwargs):
        key = self.cache_key(*args, **kwargs)
        directory = self._dir or self.directory
        path = f"{directory}{os.sep}{key}{_SUFFIX}"
        memory = self._memory or self.memory
        loaded = memory._load(path, key)
        if loaded is not _MISS:
            return loaded[1]
        started = time.perf_counter()
        result = self.func(*args, **kwargs)
        meta = {"v": _ENTRY_VERSION, "key": key, "created": time.time(),
                "function": self._name, "duration": time.perf_counter() - started}
        try:
            memory._store(directory, path, result, meta)
        except CacheKeyError:
            raise   # misconfigured: say so now, not on every call in a warning
        except (OSError, MasonError, TypeError, AttributeError, ValueError,
                RecursionError) as exc:
            warnings.warn(CacheWarning(f"mason cache: the result of {self._name} was not "
                                       f"stored ({type(exc).__name__}: {exc})"), stacklevel=2)
        return result

    def check_call_in_cache(self, *args, **kwargs) -> bool:
        """Whether this call would be a hit: it has an entry, written with this user's key,
        intact, for this code, not expired.  Runs nothing of the function; verifies (and
        loads) the entry, so that the call that follows finds it verified already."""
        key = self.cache_key(*args, **kwargs)
        path = os.path.join(self.directory, key + _SUFFIX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheWarning)
            return self.memory._load(path, key) is not _MISS

    def clear(self) -> int:
        """Delete this function's entries (every code version).  Returns how many."""
        self.memory._forget_all()
        return _clear_dirs(self.memory.location, self.directory)

    def info(self) -> dict:
        """``{"entries", "size", "last_used", "directory"}`` of this function's entries."""
        record = self.memory.info()["functions"].get(
            self._dir_name, {"entries": 0, "size": 0, "last_used": None})
        return dict(record, directory=self.directory)


def _rebuild_cached(func, memory, ignore, key, track_code) -> CachedFunction:
    if isinstance(func, CachedFunction):
        func = func.func
    return CachedFunction(func, memory, ignore=ignore or None, key=key,
                          track_code=track_code)


# --------------------------------------------------------------------------------------------
# @mason.cache

_DEFAULT: Memory | None = None
_DEFAULT_LOCK = threading.Lock()


def _default_memory() -> Memory:
    global _DEFAULT
    if _DEFAULT is None or _DEFAULT.location != default_location():
        with _DEFAULT_LOCK:
            if _DEFAULT is None or _DEFAULT.location != default_location():
                _DEFAULT = Memory(None)
    return _DEFAULT


def cache(func: Callable | None = None, *, ignore: Iterable[str] | None = None,
          key: Callable | None = None, track_code: bool | None = None):
    """Memoize ``func`` on disk in the user's cache directory (``default_location()``).

    ``@mason.cache`` or ``@mason.cache(ignore=[...], key=..., track_code=...)``, as
    ``Memory.cache``.  The directory is chosen (and created) at the first call, not at
    import.
    """
    if func is None:
        return lambda f: cache(f, ignore=ignore, key=key, track_code=track_code)
    return CachedFunction(func, None, ignore=ignore, key=key, track_code=track_code)
