"""Pickler, dumps and dump: pickle's dumper on CPython's C engine, plus functions and classes
by value.

mason writes standard pickles.  Whatever pickle can pickle, mason writes byte-for-byte as
pickle does (same protocol); what pickle cannot, mason pickles by value where it can (lambdas,
nested functions, local classes, everything defined in ``__main__``; see ``mason.byvalue``),
and where nothing can, it raises a ``PicklingError`` that gives the path to the offending
object, says why and what to do (``mason.dumperrors``).  ``by_value=False`` turns by value off:
mason then refuses exactly what pickle refuses.  The default protocol is 5.

How ``dumps`` runs, cheapest first:

1. the plain C function ``_pickle.dumps``, exactly as pickle.  Ordinary data never meets any
   Python code of mason's;
2. if that raised, or its output names ``__main__`` or a module registered by value (a fast
   substring search: pickle would have written those by reference), the pickle is made
   again with mason's Pickler, whose ``reducer_override`` pickles by value what cannot be
   imported by name.  Functions and classes at the top go straight to this step;
3. if that fails too, the error is explained: a walk of the object graph finds the path to
   the object that cannot be pickled (errors only: the walk costs nothing otherwise).

``key=`` wraps the pickle in a signed envelope (``mason.signing``).
"""

from __future__ import annotations

import _pickle
import io
import os
import pickle
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
        self._mason = (_protocol(protocol), by_value)
        if by_value:
            own = getattr(type(self), "reducer_override", None)
            if own is None:
                self.reducer_override = byvalue.make_hook(self)
            else:
                # A weak method: the hook must not keep the pickler alive (nor what it pickled).
                method = weakref.WeakMethod(getattr(self, "reducer_override"))
                self.reducer_override = byvalue.make_hook(
                    self, user_hook=lambda obj: method()(obj))

    def dump(self, obj: Any) -> None:
        """Write the pickle of ``obj`` to the file."""
        try:
            super().dump(obj)
        except RecursionError:
            raise
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            if isinstance(exc, EXPLAINED):
                raise
            protocol, by_value = getattr(self, "_mason", (DEFAULT_PROTOCOL, True))
            raise explain(exc, obj, protocol, by_value, pickler=self) from exc


def dumps(obj: Any, protocol: int | None = None, *, fix_imports: bool = True,
          buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
          by_value: bool = True, key=None) -> bytes:
    """Return the pickle of ``obj`` as bytes (protocol 5 unless given).

    ``by_value=False``: refuse what pickle refuses (no function or class by value).
    ``key``: sign the pickle (HMAC-SHA256); ``mason.loads(data, key=...)`` verifies it and
    loads it trusted.
    """
    proto = _protocol(protocol)
    data = None
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
        # The plain C path first, unless a callback would see buffers twice (it may have
        # side effects) or the object is itself a function or class (by value, likely).
        if buffer_callback is None and type(obj) is not _FunctionType \
                and not isinstance(obj, type):
            try:
                data = _c_dumps(obj, proto, fix_imports=fix_imports)
            except Exception:
                data = None
            else:
                if _needs_by_value(data):
                    data = None
        if data is None:
            file = io.BytesIO()
            Pickler(file, proto, fix_imports=fix_imports,
                    buffer_callback=buffer_callback).dump(obj)
            data = file.getvalue()
    if key is not None:
        from .signing import seal
        data = seal(data, key)
    return data


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
    Pickler(file, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback,
            by_value=by_value).dump(obj)
