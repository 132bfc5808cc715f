"""Pickler, dumps and dump: pickle's dumper on CPython's C engine, plus functions and classes
by value.

mason writes standard pickles.  Whatever pickle can pickle, mason writes byte-for-byte as
pickle does (same protocol); what pickle cannot, mason pickles by value where it can (lambdas,
nested functions, local classes, everything defined in ``__main__``; see ``mason.byvalue``),
and where nothing can, it raises a ``PicklingError`` that gives the path to the offending
object, says why and what to do (``mason.dumperrors``).  ``by_value=False`` turns by value off:
mason then refuses exactly what pickle refuses.  The default protocol is 5.

How ``dumps`` runs, cheapest first (``dump`` and a Pickler's first ``dump`` likewise):

1. the plain C pickler, exactly as pickle.  Ordinary data never meets any Python code of
   mason's.  Where pickle would write a reference to ``__main__`` or to a module registered
   by value, the pickle must be made by value instead: ``dumps``, a compiled callable
   (``mason._entry``), searches the output for those names (16 bytes at a time); ``dump``
   and the Python ``dumps`` make the C pickler's own import of that module fail (see
   ``_refusing_import`` at the end of this module);
2. if that raised or found such a name, the pickle is made again with mason's Pickler, whose
   ``reducer_override`` pickles by value what cannot be imported by name (a Pickler kept per
   thread: making one costs more than pickling a lambda).  A function at the top goes
   straight to this step (a failed plain attempt costs an exception);
3. if that fails too, the error is explained: a walk of the object graph finds the path to
   the object that cannot be pickled (errors only: the walk costs nothing otherwise).

A Pickler with ``by_value`` (the default) pays one Python call per object that is not of a
builtin value type, after its first ``dump``; ``by_value=False`` is pickle's Pickler.

``key=`` wraps the pickle in a signed envelope (``mason.signing``).
"""

from __future__ import annotations

import _pickle
import builtins
import copyreg
import inspect
import io
import os
import pickle
import sys
import threading
import types
import weakref
from typing import Any, Callable

from . import byvalue
from .dumperrors import EXPLAINED, explain

__all__ = ["Pickler", "dumps", "dump", "DEFAULT_PROTOCOL", "HIGHEST_PROTOCOL"]

DEFAULT_PROTOCOL = 5
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL

_FunctionType = types.FunctionType
_c_dumps = _pickle.dumps
_CPickler = _pickle.Pickler
_needs_by_value = byvalue.needs_by_value


def _protocol(protocol: int | None) -> int:
    return DEFAULT_PROTOCOL if protocol is None else protocol


class Pickler(_pickle.Pickler):
    """pickle.Pickler with mason's default protocol (5), and functions and classes by value.

    Same arguments and hooks as pickle's: ``persistent_id``, ``dispatch_table``,
    ``reducer_override``, ``buffer_callback``; plus ``by_value`` (default ``True``):
    ``False`` makes the Pickler refuse exactly what pickle refuses.

    A subclass may define ``reducer_override`` as with pickle: it is consulted first, and
    by value applies to what it returns ``NotImplemented`` for.
    """

    def __init__(self, file, protocol: int | None = None, *, fix_imports: bool = True,
                 buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
                 by_value: bool = True):
        super().__init__(file, _protocol(protocol), fix_imports=fix_imports,
                         buffer_callback=buffer_callback)
        if buffer_callback is not None and _protocol(protocol) >= 5 \
                and not isinstance(getattr(type(self), "dispatch_table", None), dict):
            # The caller takes buffers: arrays in any layout and torch tensors go out of
            # band too (mason.arrays), not only what numpy puts there itself.
            from .arrays import dispatch_table
            self.dispatch_table = dispatch_table(protocol=_protocol(protocol),
                                                 numpy_native=True)
        self._mason = state = _State(_protocol(protocol), by_value, file)
        if by_value:
            # The context refers to the pickler weakly: no cycle keeps either alive.
            self._by_value_ctx = ctx = byvalue._Context(self)
            own = getattr(type(self), "reducer_override", None)
            if own is None:
                self.reducer_override = byvalue.make_hook(self, ctx=ctx)
                # The first pickle may go through the C pickler alone, as dumps does: a
                # callback would see buffers twice if that had to be redone.
                state.plain_first = buffer_callback is None
            else:
                # A weak method: the hook must not keep the pickler alive (nor what it pickled).
                method = weakref.WeakMethod(getattr(self, "reducer_override"))
                self.reducer_override = byvalue.make_hook(
                    self, user_hook=lambda obj: method()(obj), ctx=ctx)

    def clear_memo(self) -> None:
        """Forget the objects pickled so far (as pickle's), and what by value recorded of them."""
        super().clear_memo()
        ctx = getattr(self, "_by_value_ctx", None)
        if ctx is not None:
            ctx.reset()
        state = getattr(self, "_mason", None)
        if state is not None:
            state.memo_empty = True

    def dump(self, obj: Any) -> None:
        """Write the pickle of ``obj`` to the file."""
        state = getattr(self, "_mason", None)
        if state is not None and state.plain_first and state.memo_empty \
                and type(obj) is not _FunctionType and _pickler_dump_plain(self, obj):
            state.memo_empty = False
            return
        try:
            super().dump(obj)
        except RecursionError:
            raise
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            if isinstance(exc, EXPLAINED):
                raise
            protocol, by_value = (state.protocol, state.by_value) if state is not None \
                else (DEFAULT_PROTOCOL, True)
            raise explain(exc, obj, protocol, by_value, pickler=self) from exc
        finally:
            if state is not None:
                state.memo_empty = False


class _State:
    """What mason keeps of a Pickler's arguments."""

    __slots__ = ("protocol", "by_value", "file", "plain_first", "memo_empty")

    def __init__(self, protocol, by_value, file):
        self.protocol = protocol
        self.by_value = by_value
        self.file = file
        self.plain_first = False
        self.memo_empty = True


def _pickler_dump_plain(pickler, obj) -> bool:
    """A by-value Pickler's first dump through the C pickler alone (the reducer_override
    hook set aside), as ``dumps`` does; False, with the file and the memo as they were, when
    it must be made by value.  Runs with the hooked builtins (see _refusing_import)."""
    file = pickler._mason.file
    seekable = getattr(file, "seekable", None)
    if seekable is None or not seekable():
        return False
    start = file.tell()
    if file.seek(0, 2) != start:
        file.seek(start)
        return False
    hook = pickler.__dict__.pop("reducer_override")
    try:
        _CPickler.dump(pickler, obj)
    except Exception:
        _CPickler.clear_memo(pickler)  # it was empty: as it was
        file.seek(start)
        file.truncate()
        return False
    finally:
        pickler.reducer_override = hook
    return True


def _dumps_options(obj: Any, protocol: int | None = None, *, fix_imports: bool = True,
                   buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
                   by_value: bool = True, key=None) -> bytes:
    """Return the pickle of ``obj`` as bytes (protocol 5 unless given).

    ``by_value=False``: refuse what pickle refuses (no function or class by value).
    ``key``: sign the pickle (HMAC-SHA256); ``mason.loads(data, key=...)`` verifies it and
    loads it trusted.
    """
    proto = DEFAULT_PROTOCOL if protocol is None else protocol
    if by_value and key is None and buffer_callback is None and fix_imports is True \
            and type(obj) is _FunctionType:
        return _dumps_by_value(obj, proto, True, None)
    return _dumps(obj, proto, fix_imports, buffer_callback, by_value, key)


def dumps(obj, protocol=None, **options):
    # The hot path for ordinary data: one C call, nothing else.  Its signature is pickle's
    # (see __signature__ below); keyword arguments, which a call rarely passes, cost more
    # to receive one by one than as one dict, so they take the other path.  And this
    # function runs with builtins whose __import__ makes the C call fail for __main__
    # (see _refusing_import).
    if not options and type(obj) is not _FunctionType:
        proto = DEFAULT_PROTOCOL if protocol is None else protocol
        try:
            return _c_dumps(obj, proto)
        except Exception:
            return _dumps_by_value(obj, proto, True, None)
    return _dumps_options(obj, protocol, **options)


dumps.__doc__ = _dumps_options.__doc__
dumps.__signature__ = inspect.signature(_dumps_options)
_dumps_options.__qualname__ = _dumps_options.__name__ = "dumps"


def _dumps(obj, proto, fix_imports, buffer_callback, by_value, key) -> bytes:
    if not by_value:
        try:
            data = _c_dumps(obj, proto, fix_imports=fix_imports,
                            buffer_callback=buffer_callback)
        except RecursionError:
            raise
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            if isinstance(exc, EXPLAINED):
                raise
            raise explain(exc, obj, proto, False) from exc
    else:
        data = None
        # The plain C path first, unless a callback would see buffers twice (it may have
        # side effects) or the object is itself a function (by value, likely).
        if buffer_callback is None and type(obj) is not _FunctionType:
            try:
                data = _c_dumps(obj, proto, fix_imports=fix_imports)
            except Exception:
                data = None
            else:
                if _needs_by_value(data, len(data)):
                    data = None
        if data is None:
            data = _dumps_by_value(obj, proto, fix_imports, buffer_callback)
    if key is not None:
        from .signing import seal
        data = seal(data, key)
    return data


class _Reusable:
    """A by-value Pickler kept per thread and protocol: making one costs more than pickling
    a small function with it."""

    __slots__ = ("file", "pickler", "busy")

    def __init__(self, proto):
        self.file = io.BytesIO()
        self.pickler = Pickler(self.file, proto)
        self.pickler._mason.plain_first = False  # dumps tried the plain path already
        self.busy = False


_local = threading.local()


def _dumps_by_value(obj, proto, fix_imports, buffer_callback) -> bytes:
    if fix_imports is not True or buffer_callback is not None:
        file = io.BytesIO()
        Pickler(file, proto, fix_imports=fix_imports,
                buffer_callback=buffer_callback).dump(obj)
        return file.getvalue()
    cache = getattr(_local, "picklers", None)
    if cache is None:
        cache = _local.picklers = {}
    reusable = cache.get(proto)
    if reusable is None:
        reusable = cache[proto] = _Reusable(proto)
    elif reusable.busy:  # a __reduce__ pickling by value in the middle of a dump
        reusable = _Reusable(proto)
    reusable.busy = True
    file = reusable.file
    try:
        reusable.pickler.dump(obj)
        return file.getvalue()
    finally:
        reusable.pickler.clear_memo()  # drops what was pickled, and the by-value records
        file.seek(0)
        file.truncate()
        reusable.busy = False


def dump(obj: Any, file, protocol: int | None = None, *, fix_imports: bool = True,
         buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
         by_value: bool = True, key=None, compress: str | None = None) -> None:
    """Write the pickle of ``obj`` to the binary file ``file``.

    Arguments as for ``dumps``.  With ``key``, the signed envelope is written.

    Given a path (str or os.PathLike) instead of a file, writes a mason container: the
    pickle and its large buffers (arrays, tensors) aligned for memory-mapping, with
    checksums (``mason.files``); ``compress="zstd"`` compresses it, ``key`` signs it.
    """
    if isinstance(file, (str, os.PathLike)):
        if buffer_callback is not None:
            raise ValueError("a container takes the buffers itself: drop buffer_callback")
        from .files import dump as dump_path
        dump_path(obj, file, DEFAULT_PROTOCOL if protocol is None else protocol,
                  compress=compress, key=key, fix_imports=fix_imports, by_value=by_value)
        return
    if compress is not None:
        raise ValueError("compress= applies to a path (a mason container), not a file")
    if key is not None:
        file.write(dumps(obj, protocol, fix_imports=fix_imports,
                         buffer_callback=buffer_callback, by_value=by_value, key=key))
        return
    if by_value and buffer_callback is None and fix_imports is True \
            and type(obj) is not _FunctionType \
            and _dump_plain(obj, file, DEFAULT_PROTOCOL if protocol is None else protocol):
        return
    Pickler(file, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback,
            by_value=by_value).dump(obj)


def _dump_plain(obj, file, proto) -> bool:
    """The plain C pickler into ``file``, as in ``dumps``; False when the pickle must be
    made by value (or anything failed), with the file as it was.  Only at the end of a
    seekable file: the C pickler writes large payloads as it goes, and a failure must be
    undone."""
    seekable = getattr(file, "seekable", None)
    if seekable is None or not seekable():
        return False
    start = file.tell()
    if file.seek(0, 2) != start:  # not at the end: a failure could not be undone safely
        file.seek(start)
        return False
    try:
        _CPickler(file, proto).dump(obj)
    except Exception:
        file.seek(start)
        file.truncate()
        return False
    return True


# --------------------------------------------------------------------------------------------
# Finding __main__ in the plain path, at no cost
#
# A pickle that the plain C pickler would write with a reference to __main__ (or to a module
# registered by value) must be made by value instead.  Scanning its output for those names
# costs on every call; instead, the C pickler tells us.  To save a global it imports the
# global's module with PyImport_Import, which calls the __import__ of the builtins of the
# *current Python frame's globals* (documented in the C API).  During the plain call in
# ``dumps`` that frame is ``dumps`` itself, so ``dumps`` runs with builtins whose __import__
# refuses __main__ and the registered modules: the C call fails, and ``dumps`` falls back
# to the by-value Pickler.  Every other function here keeps the real builtins (with
# by_value=False, or in the Pickler, __main__ must stay importable by name).
#
# Should an interpreter not route the pickler's imports through that hook, a probe at
# import finds out and ``dumps`` checks the output instead (``_dumps_checking``).

class _ByValueNeeded(Exception):
    """Raised by the import hook of the plain path: this pickle must be made by value."""


_refusals = 0
_real_import = builtins.__import__
_modules = sys.modules
_registered = byvalue._BY_VALUE_MODULES  # a set, updated in place by register_by_value
_is_registered = byvalue._is_registered


def _refusing_import(name, *_):
    # PyImport_Import discards what __import__ returns and takes the module from
    # sys.modules: importing the name (and so its parents) is all that is asked for, and
    # nothing at all when it is imported already.
    if name == "__main__" or _registered and _is_registered(name):
        global _refusals
        _refusals += 1
        raise _ByValueNeeded(name)
    if name not in _modules:
        _real_import(name)


def _with_builtins(func, builtins_dict):
    namespace = dict(globals())
    namespace["__builtins__"] = builtins_dict
    clone = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__,
                               func.__closure__)
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__annotations__ = func.__annotations__
    clone.__doc__ = func.__doc__
    clone.__qualname__ = func.__qualname__
    clone.__module__ = func.__module__
    clone.__dict__.update(func.__dict__)  # __signature__
    return clone


def _dumps_checking(obj, protocol=None, **options):
    """``dumps`` where the import hook does not fire: the plain output is searched."""
    if not options and type(obj) is not _FunctionType:
        options = {"fix_imports": True}  # the checking path
    return _dumps_options(obj, protocol, **options)


def _probe(hooked):
    """Whether the plain call of the hooked dumps reaches the import hook: pickling a class
    that names __main__ as its module must."""
    class Probe:
        pass
    Probe.__module__ = "__main__"
    Probe.__qualname__ = "_mason_probe_of_the_import_hook"
    before = _refusals
    try:
        hooked(Probe)
    except Exception:
        pass
    return _refusals > before


_hooked_builtins = {**builtins.__dict__, "__import__": _refusing_import}
hooked = _with_builtins(dumps, _hooked_builtins)
if _probe(hooked):
    dumps = hooked
    _dump_plain = _with_builtins(_dump_plain, _hooked_builtins)
    _pickler_dump_plain = _with_builtins(_pickler_dump_plain, _hooked_builtins)
else:  # pragma: no cover - an interpreter whose pickler imports another way
    _dumps_checking.__doc__ = dumps.__doc__
    _dumps_checking.__signature__ = dumps.__signature__
    dumps = _dumps_checking

    def _dump_plain(obj, file, proto):
        return False

    def _pickler_dump_plain(pickler, obj):
        return False
del hooked


def _dumps_declined(obj, protocol=None):
    """``dumps(obj[, protocol])`` that the C pickler alone could not make: by value."""
    return _dumps_by_value(obj, DEFAULT_PROTOCOL if protocol is None else protocol, True, None)


try:
    from ._entry import Entry as _Entry, configure_dumps as _configure_dumps, \
        dumps_plain as _dumps_plain
except ImportError:  # not built: dumps stays the Python function above, with the same results
    pass
else:
    # dumps as a compiled callable: a call with positional arguments only goes to the C
    # pickler, whose output is searched for __main__ and the modules registered by value
    # (the import hook above needs a Python frame of ours); when it declines, by value; any
    # other call to _dumps_options.  It saves the Python call, a tenth of the time of
    # pickling a small object.
    _configure_dumps(_c_dumps, DEFAULT_PROTOCOL, byvalue._BY_VALUE_NEEDLES,
                     copyreg._extension_registry)
    dumps = _Entry(_dumps_plain, _dumps_declined, _dumps_options, 2, dumps)
