"""Pickler, dumps and dump: pickle's dumper on CPython's C engine.

mason writes standard pickles: what it writes for ordinary objects is byte-for-byte what
``pickle`` writes with the same protocol.  The default protocol is 5 (out-of-band buffers).
"""

from __future__ import annotations

import _pickle
import io
import pickle
from typing import Any, Callable

from .errors import PicklingError

__all__ = ["Pickler", "dumps", "dump", "DEFAULT_PROTOCOL", "HIGHEST_PROTOCOL"]

DEFAULT_PROTOCOL = 5
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _protocol(protocol: int | None) -> int:
    return DEFAULT_PROTOCOL if protocol is None else protocol


class Pickler(_pickle.Pickler):
    """pickle.Pickler with mason's default protocol (5).  Same arguments and hooks:
    ``persistent_id``, ``dispatch_table``, ``reducer_override``, ``buffer_callback``."""

    def __init__(self, file, protocol: int | None = None, *, fix_imports: bool = True,
                 buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None):
        super().__init__(file, _protocol(protocol), fix_imports=fix_imports,
                         buffer_callback=buffer_callback)

    def dump(self, obj: Any) -> None:
        try:
            super().dump(obj)
        except PicklingError:
            raise
        except pickle.PicklingError as exc:
            raise PicklingError(str(exc)) from exc


def dumps(obj: Any, protocol: int | None = None, *, fix_imports: bool = True,
          buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None) -> bytes:
    """Return the pickle of ``obj`` as bytes (protocol 5 unless given)."""
    try:
        return _pickle.dumps(obj, _protocol(protocol), fix_imports=fix_imports,
                             buffer_callback=buffer_callback)
    except PicklingError:
        raise
    except pickle.PicklingError as exc:
        raise PicklingError(str(exc)) from exc


def dump(obj: Any, file, protocol: int | None = None, *, fix_imports: bool = True,
         buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None) -> None:
    """Write the pickle of ``obj`` to the binary file ``file``."""
    Pickler(file, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback).dump(obj)
